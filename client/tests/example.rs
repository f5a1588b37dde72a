//! `examples/tail.rs` against a real producer: it prints events as JSON lines and, with a
//! durable name, acknowledges them.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use common::{ROOT, Setup};

/// Builds the example (a no-op after `cargo test --workspace`, which builds examples with the
/// same workspace-wide features) and returns its path.
fn tail_example() -> std::path::PathBuf {
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
            "tail",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"));
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "building the tail example"
    );
    let path = profile_dir.join("examples/tail");
    assert!(path.is_file(), "{} not built", path.display());
    path
}

#[tokio::test]
async fn the_tail_example_prints_json_lines_and_acks() {
    let tail = tail_example();
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
