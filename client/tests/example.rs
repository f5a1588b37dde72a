//! The examples against a real producer: `tail` prints events as JSON lines and, with a
//! durable name, acknowledges them; `resume` continues after the saved commit position;
//! `snapshot_then_stream` prints a snapshot's rows and then the changes from its position.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use common::{ROOT, Setup};

/// Builds the example (a no-op after `cargo test --workspace`, which builds examples with the
/// same workspace-wide features) and returns its path.
fn example(name: &str) -> std::path::PathBuf {
    // Test binaries live in <target>/<profile>/deps, examples in <target>/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--example",
            name,
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"));
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "building the {name} example"
    );
    let path = profile_dir.join("examples").join(name);
    assert!(path.is_file(), "{} not built", path.display());
    path
}

#[tokio::test]
async fn the_tail_example_prints_json_lines_and_acks() {
    let tail = example("tail");
    let mut setup = Setup::start(
        "client_example",
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        "public.t",
    )
    .await;
    setup
        .exec(&["INSERT INTO t VALUES (1, 'a')", "UPDATE t SET v = 'b'"])
        .await;
    let mut child = tokio::process::Command::new(&tail)
        .args([
            setup.nats.url().as_str(),
            setup.db.name(),
            "public.t",
            "beginning",
            "example-durable",
        ])
        .env("WALBROOK_ROOT", ROOT)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .expect("the example keeps running");
        events.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    assert_eq!(events[0]["op"], "insert");
    assert_eq!(events[0]["after"], serde_json::json!({"id": 1, "v": "a"}));
    assert_eq!(events[1]["op"], "update");
    assert_eq!(events[1]["after"]["v"], "b");
    assert_eq!(events[1]["source"]["table"], "t");

    // The example acknowledged both events on its durable consumer.
    let client = setup.client().await;
    let js = async_nats::jetstream::new(client.nats().clone());
    let stream = js
        .get_stream(format!("{ROOT}_{}_WAL", setup.db.name()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = stream.consumer_info("example-durable").await.unwrap();
        if info.ack_floor.stream_sequence == 2 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks never recorded: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();
    setup.stop().await;
}

/// Starts an example with `args`, its stdout as lines.
fn spawn(
    path: &std::path::Path,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(path)
        .args(args)
        .env("WALBROOK_ROOT", ROOT)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// The next JSON line, failing after 20 s.
async fn json_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a line within 20 s")
        .unwrap()
        .expect("the example keeps running");
    serde_json::from_str(&line).unwrap()
}

/// Asserts that no line comes for `wait`.
async fn no_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    wait: Duration,
) {
    if let Ok(line) = tokio::time::timeout(wait, lines.next_line()).await {
        panic!("unexpected output: {line:?}");
    }
}

#[tokio::test]
async fn the_resume_example_continues_after_the_saved_position() {
    let resume = example("resume");
    let mut setup = Setup::start(
        "client_resume",
        "CREATE TABLE t (id int PRIMARY KEY)",
        "public.t",
    )
    .await;
    setup
        .exec(&[
            "INSERT INTO t VALUES (1)",
            "BEGIN; INSERT INTO t VALUES (2); INSERT INTO t VALUES (3); COMMIT",
        ])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let position = dir.path().join("t.pos");
    let args = [
        setup.nats.url(),
        setup.db.name().to_string(),
        "public.t".to_string(),
        position.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let (mut child, mut lines) = spawn(&resume, &args);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(json_line(&mut lines).await);
    }
    let ids: Vec<i64> = seen
        .iter()
        .map(|e| e["after"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    let last_commit = seen[2]["source"]["commit_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        seen[1]["source"]["commit_lsn"],
        seen[2]["source"]["commit_lsn"]
    );
    // The position of the last complete transaction is saved.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&position)
        .unwrap_or_default()
        .trim()
        != last_commit
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "position never saved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();

    // Started again: only what came after.
    setup.exec(&["INSERT INTO t VALUES (4)"]).await;
    let (mut child, mut lines) = spawn(&resume, &args);
    let next = json_line(&mut lines).await;
    assert_eq!(next["after"]["id"], 4);
    no_line(&mut lines, Duration::from_secs(1)).await;
    child.kill().await.unwrap();
    setup.stop().await;
}

#[tokio::test]
async fn the_snapshot_then_stream_example_prints_rows_then_changes_from_the_position() {
    let example = example("snapshot_then_stream");
    let mut setup = Setup::start(
        "client_snapshot_example",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3) g;",
        "public.t",
    )
    .await;
    // Changes before the snapshot are in the rows, not again in the stream.
    setup
        .exec(&["UPDATE t SET v = 'changed' WHERE id = 2"])
        .await;
    let args = [
        setup.nats.url(),
        setup.db.name().to_string(),
        "public.t".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, mut lines) = spawn(&example, &args);
    let mut rows = Vec::new();
    for _ in 0..3 {
        let row = json_line(&mut lines).await;
        assert_eq!(row["op"], "read", "{row}");
        rows.push(row["after"].clone());
    }
    rows.sort_by_key(|r| r["id"].as_i64());
    assert_eq!(
        rows,
        [
            serde_json::json!({"id": 1, "v": "v1"}),
            serde_json::json!({"id": 2, "v": "changed"}),
            serde_json::json!({"id": 3, "v": "v3"}),
        ]
    );
    no_line(&mut lines, Duration::from_millis(500)).await;
    setup
        .exec(&[
            "INSERT INTO t VALUES (4, 'after')",
            "DELETE FROM t WHERE id = 1",
        ])
        .await;
    let insert = json_line(&mut lines).await;
    assert_eq!(insert["op"], "insert");
    assert_eq!(insert["after"], serde_json::json!({"id": 4, "v": "after"}));
    let delete = json_line(&mut lines).await;
    assert_eq!(delete["op"], "delete");
    assert_eq!(delete["before"]["id"], 1);
    no_line(&mut lines, Duration::from_millis(500)).await;
    child.kill().await.unwrap();
    setup.stop().await;
}
