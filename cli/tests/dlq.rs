//! `walbrook dlq list|replay|remove` against real target refusals: CHECK constraints in the
//! target reject rows, the sink dead-letters them and goes on; `dlq list` shows them; `dlq
//! remove` discards chosen ones (or refuses an unknown sequence); once a constraint is
//! dropped, `dlq replay postgres …` applies its letters; `dlq remove --all` empties the rest.

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
    let mut command = walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"));
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
async fn dead_letters_are_listed_replayed_and_removed_from_the_command_line() {
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
            "CREATE TABLE c (id int PRIMARY KEY,
               note text CONSTRAINT no_poison CHECK (note <> 'poison')
                         CONSTRAINT no_toxic CHECK (note <> 'toxic'))",
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
             INSERT INTO c VALUES (4, 'after');
             INSERT INTO c VALUES (5, 'toxic'), (6, 'toxic');
             INSERT INTO c VALUES (7, 'last');",
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
        if n == 4 {
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

    let dlq =
        |args: &'static [&'static str]| run(walbrook(&source_db, &nats.url(), &target_url, args));
    // The dead letters' `(dlq_sequence, id)`, oldest first.
    let list = || async {
        let listed = dlq(&["dlq", "list"]).await;
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        String::from_utf8(listed.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<serde_json::Value>>()
    };
    let ids = |lines: &[serde_json::Value]| -> Vec<i64> {
        lines
            .iter()
            .map(|l| l["event"]["after"]["id"].as_i64().unwrap())
            .collect()
    };
    let lines = list().await;
    assert_eq!(ids(&lines), [2, 5, 6], "{lines:?}");
    assert_eq!(lines[0]["sink"], "postgres");
    assert!(
        lines[0]["error"].as_str().unwrap().contains("no_poison"),
        "{}",
        lines[0]["error"]
    );
    assert!(lines[1]["error"].as_str().unwrap().contains("no_toxic"));
    assert_eq!(lines[0]["event"]["after"]["note"], "poison");
    assert_eq!(
        lines[0]["subject"],
        format!("{ROOT}.{}.wal.public.c", source_db.name())
    );

    // Removing: an unknown sequence removes nothing; a known one removes that letter only.
    let unknown = dlq(&["dlq", "remove", "--sequence", "999999"]).await;
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no dead letter with DLQ sequence 999999"),
        "{unknown:?}"
    );
    assert_eq!(ids(&list().await), [2, 5, 6]);
    let five = lines[1]["dlq_sequence"].to_string();
    let mut command = walbrook(&source_db, &nats.url(), &target_url, &["dlq", "remove"]);
    command.args(["--sequence", &five]);
    let removed = run(command).await;
    assert!(
        String::from_utf8_lossy(&removed.stdout).contains("removed 1 dead letters of checked"),
        "{removed:?}"
    );
    assert_eq!(ids(&list().await), [2, 6]);

    // Still refused: they stay.
    let again = dlq(&["dlq", "replay", "postgres"]).await;
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
    let replayed = dlq(&["dlq", "replay", "postgres"]).await;
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&replayed.stdout)
            .contains("replayed 1 dead letters of checked; 1 left"),
        "{replayed:?}"
    );
    let note: String = target
        .query_one("SELECT note FROM c WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(note, "poison");
    assert_eq!(ids(&list().await), [6]);

    // The rest is discarded, never applied.
    let all = dlq(&["dlq", "remove", "--all"]).await;
    assert!(
        String::from_utf8_lossy(&all.stdout).contains("removed 1 dead letters of checked"),
        "{all:?}"
    );
    assert!(list().await.is_empty());
    let applied: Vec<i32> = target
        .query("SELECT id FROM c ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, [1, 2, 3, 4, 7]);
    shutdown.cancel();
    let _ = producer.await;
}
