//! Snapshots with `walbrook produce` as a process: SIGKILL mid-snapshot ends it with an
//! explicit failure (never a silently short snapshot), and `walbrook snapshot` writes the
//! rows as JSON lines.

use std::time::Duration;

use futures::StreamExt;
use walbrook_client::{Client, ClientOptions, ErrorKind, SnapshotRequest, SnapshotStatus};
use walbrook_harness::{NatsServer, PgServer, ProductProcess, TestDb};

const ROOT: &str = "SNAPKILL";

/// A `walbrook produce` process (its log's tail is printed when a test fails while it runs).
fn spawn_producer(db: &TestDb<'_>, nats_url: &str, log: &std::path::Path) -> ProductProcess {
    let mut command = walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"));
    command
        .arg("produce")
        .env("WALBROOK_PG_URL", db.url())
        .env("WALBROOK_NATS_URL", nats_url)
        .env("WALBROOK_TABLES", "public.big")
        .env("WALBROOK_SLOT", db.slot_name())
        .env("WALBROOK_PUBLICATION", db.publication_name())
        .env("WALBROOK_ROOT", ROOT)
        .env("WALBROOK_HEARTBEAT_INTERVAL", "500ms")
        // Small chunks and a small window: the snapshot takes long enough to be killed.
        .env("WALBROOK_SNAPSHOT_CHUNK_SIZE", "200")
        .env("WALBROOK_MAX_INFLIGHT", "16")
        .env("RUST_LOG", "info");
    ProductProcess::spawn(command, "walbrook produce", log).unwrap()
}

async fn client_when_ready(
    nats_url: &str,
    db: &str,
    producer: &mut ProductProcess,
    log: &std::path::Path,
) -> Client {
    let client = Client::connect(ClientOptions::new(nats_url, db).root(ROOT))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while client.snapshots("*").await.is_err() {
        if let Ok(Some(status)) = producer.try_wait() {
            panic!(
                "the producer exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot RPC never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
}

#[tokio::test]
async fn a_producer_killed_mid_snapshot_ends_it_with_an_explicit_failure() {
    let db = PgServer::shared().fresh_database("snap_kill");
    let nats = NatsServer::start().unwrap();
    db.psql(
        "CREATE TABLE big (id int PRIMARY KEY, payload text);
         INSERT INTO big SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 200000) i;",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("producer.log");
    let mut producer = spawn_producer(&db, &nats.url(), &log);
    let client = client_when_ready(&nats.url(), db.name(), &mut producer, &log).await;
    let mut snapshot = client
        .snapshot(SnapshotRequest::table("public.big").stall_timeout(Duration::from_secs(90)))
        .await
        .unwrap();
    // Read some rows, then kill the producer.
    for _ in 0..500 {
        tokio::time::timeout(Duration::from_secs(30), snapshot.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    producer.kill();
    let mut restarted = spawn_producer(&db, &nats.url(), &log);
    // The reader drains what was published, then gets the failure the restarted
    // producer publishes for the orphaned snapshot.
    let mut rows = 500u64;
    let failure = loop {
        match tokio::time::timeout(Duration::from_secs(120), snapshot.next())
            .await
            .expect("an explicit end within 120 s")
        {
            Some(Ok(_)) => rows += 1,
            Some(Err(e)) => break e,
            None => panic!("the snapshot ended as complete after {rows} rows"),
        }
    };
    assert_eq!(failure.kind(), ErrorKind::SnapshotFailed, "{failure}");
    assert!(rows < 200_000, "{rows}");
    assert!(snapshot.next().await.is_none(), "nothing after the failure");
    // The restarted producer answers RPCs once it has failed the orphan.
    let client = client_when_ready(&nats.url(), db.name(), &mut restarted, &log).await;
    let listed = client.snapshots("public.big").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, SnapshotStatus::Failed);
    assert!(listed[0].error.as_deref().unwrap().contains("stopped"));
    // Reading it again gives the same explicit failure.
    let mut again = client
        .read_snapshot(&listed[0].id, Duration::from_secs(30))
        .await
        .unwrap();
    let mut reread = 0u64;
    let second = loop {
        match again.next().await {
            Some(Ok(_)) => reread += 1,
            Some(Err(e)) => break e,
            None => panic!("re-read ended as complete"),
        }
    };
    assert_eq!(second.kind(), ErrorKind::SnapshotFailed);
    assert_eq!(reread, rows);

    // The CLI lists it and fails to re-read it.
    let walbrook = |args: &[&str]| {
        walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"))
            .args(args)
            .env("WALBROOK_NATS_URL", nats.url())
            .env("WALBROOK_PG_URL", db.url())
            .env("WALBROOK_ROOT", ROOT)
            .output()
            .unwrap()
    };
    let listing = walbrook(&["snapshot", "public.big", "--list"]);
    assert!(listing.status.success());
    let entry: serde_json::Value =
        serde_json::from_slice(listing.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(entry["status"], "failed");
    assert_eq!(entry["id"], listed[0].id.as_str());
    let reread_cli = walbrook(&["snapshot", "public.big", "--quiet", "--read", &listed[0].id]);
    assert!(!reread_cli.status.success());
    assert!(String::from_utf8_lossy(&reread_cli.stderr).contains("failed"));

    // A new snapshot from the restarted producer is complete; `walbrook snapshot` writes it.
    let jsonl = dir.path().join("rows.jsonl");
    let status = walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"))
        .args(["snapshot", "public.big", "--quiet", "--jsonl"])
        .arg(&jsonl)
        .env("WALBROOK_NATS_URL", nats.url())
        .env("WALBROOK_PG_URL", db.url())
        .env("WALBROOK_ROOT", ROOT)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 200_000);
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["id"], 1);
    assert_eq!(
        first["payload"],
        "c4ca4238a0b923820dcc509a6f75849b".repeat(8)
    );
    // A refused request is an error exit.
    let refused = walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"))
        .args(["snapshot", "public.nope", "--quiet"])
        .env("WALBROOK_NATS_URL", nats.url())
        .env("WALBROOK_PG_URL", db.url())
        .env("WALBROOK_ROOT", ROOT)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not exist"));
    restarted.kill();
}
