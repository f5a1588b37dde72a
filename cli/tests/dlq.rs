//! `walbrook dlq list|replay` against a real target refusal: a CHECK constraint in the target
//! rejects a row, the sink dead-letters it and goes on; `dlq list` shows it; once the
//! constraint is dropped, `dlq replay postgres …` applies it and empties the subject.

mod common;

use common::{Reaper, connect, wait_until_streaming};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use walbrook_harness::{NatsServer, PgServer, TestDb};
use walbrook_producer::config::RawConfig;

const ROOT: &str = "DLQCLI";

fn walbrook(source: &TestDb<'_>, nats: &str, target: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_walbrook"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WALBROOK_NATS_URL", nats)
        .env("WALBROOK_ROOT", ROOT)
        .env("WALBROOK_SINK_SOURCE_DB", source.name())
        .env("WALBROOK_SINK_CONSUMER", "checked")
        .env("WALBROOK_SINK_TABLES", "public.c")
        .env("WALBROOK_SINK_TARGET_URL", target)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_from_the_command_line() {
    let pg = PgServer::shared();
    let source_db = pg.fresh_database("dlqcli_src");
    let target_db = pg.fresh_database("dlqcli_dst");
    let nats = NatsServer::start().unwrap();
    let source = connect(&source_db.url()).await;
    let target = connect(&target_db.url()).await;
    source
        .batch_execute("CREATE TABLE c (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    target
        .batch_execute(
            "CREATE TABLE c (id int PRIMARY KEY, note text CONSTRAINT no_poison CHECK (note <> 'poison'))",
        )
        .await
        .unwrap();
    let mut raw = RawConfig::default();
    raw.apply_env([
        ("WALBROOK_PG_URL", source_db.url()),
        ("WALBROOK_NATS_URL", nats.url()),
        ("WALBROOK_TABLES", "public.c".to_string()),
        ("WALBROOK_SLOT", source_db.slot_name()),
        ("WALBROOK_PUBLICATION", source_db.publication_name()),
        ("WALBROOK_ROOT", ROOT.to_string()),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(walbrook_producer::pipeline::run(
        raw.validate().unwrap(),
        shutdown.clone(),
    ));
    wait_until_streaming(&source, &source_db.slot_name()).await;
    source
        .batch_execute(
            "BEGIN; INSERT INTO c VALUES (1, 'fine'), (2, 'poison'), (3, 'fine'); COMMIT;
             INSERT INTO c VALUES (4, 'after');",
        )
        .await
        .unwrap();
    let target_url = target_db.url();
    let mut sink = walbrook(&source_db, &nats.url(), &target_url, &["sink", "postgres"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut reaper = Reaper(Some(sink.id()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = target
            .query_one("SELECT count(*) FROM c", &[])
            .await
            .unwrap()
            .get(0);
        if n == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sink did not go on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(Pid::from_raw(sink.id() as i32), Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || sink.wait())
        .await
        .unwrap()
        .unwrap();
    reaper.0 = None;
    assert!(status.success());

    let listed = run(walbrook(
        &source_db,
        &nats.url(),
        &target_url,
        &["dlq", "list"],
    ))
    .await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["sink"], "postgres");
    assert!(
        lines[0]["error"].as_str().unwrap().contains("no_poison"),
        "{}",
        lines[0]["error"]
    );
    assert_eq!(lines[0]["event"]["after"]["note"], "poison");
    assert_eq!(
        lines[0]["subject"],
        format!("{ROOT}.{}.wal.public.c", source_db.name())
    );

    // Still refused: it stays.
    let again = run(walbrook(
        &source_db,
        &nats.url(),
        &target_url,
        &["dlq", "replay", "postgres"],
    ))
    .await;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("replayed 0"),
        "{again:?}"
    );
    target
        .batch_execute("ALTER TABLE c DROP CONSTRAINT no_poison")
        .await
        .unwrap();
    let replayed = run(walbrook(
        &source_db,
        &nats.url(),
        &target_url,
        &["dlq", "replay", "postgres"],
    ))
    .await;
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&replayed.stdout)
            .contains("replayed 1 dead letters of checked; 0 left"),
        "{replayed:?}"
    );
    let note: String = target
        .query_one("SELECT note FROM c WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "poison");
    let listed = run(walbrook(
        &source_db,
        &nats.url(),
        &target_url,
        &["dlq", "list"],
    ))
    .await;
    assert!(listed.stdout.is_empty());
    shutdown.cancel();
    let _ = producer.await;
}
