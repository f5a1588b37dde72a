//! Helpers shared by the CLI's process tests: SQL connections, an in-process producer,
//! waiting for it to stream, and killing child processes (also when a test panics).

#![allow(dead_code)]

use std::process::Child;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use walbrook_harness::TestDb;
use walbrook_producer::config::RawConfig;

/// A SQL connection (its connection task runs in the background).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (sql, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sql
}

/// Runs a producer in-process for `tables` under subject root `root` until `shutdown`.
pub fn start_producer(
    db: &TestDb<'_>,
    nats_url: &str,
    root: &str,
    tables: &str,
    shutdown: CancellationToken,
) {
    start_producer_with(db, nats_url, root, tables, &[], shutdown);
}

/// [`start_producer`] with more producer settings (`WALBROOK_*` names and values).
pub fn start_producer_with(
    db: &TestDb<'_>,
    nats_url: &str,
    root: &str,
    tables: &str,
    extra_env: &[(&str, &str)],
    shutdown: CancellationToken,
) {
    let mut raw = RawConfig::default();
    raw.apply_env([
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats_url.to_string()),
        ("WALBROOK_TABLES", tables.to_string()),
        ("WALBROOK_SLOT", db.slot_name()),
        ("WALBROOK_PUBLICATION", db.publication_name()),
        ("WALBROOK_ROOT", root.to_string()),
        ("WALBROOK_HEARTBEAT_INTERVAL", "1s".to_string()),
    ])
    .unwrap();
    raw.apply_env(extra_env.iter().map(|(k, v)| (*k, v.to_string())))
        .unwrap();
    let config = raw.validate().unwrap();
    tokio::spawn(async move {
        // Stopped by the test's end; the result does not matter then.
        let _ = walbrook_producer::pipeline::run(config, shutdown).await;
    });
}

/// Waits (up to 30 s) until the producer streams from `slot`: changes committed before
/// that are not captured.
pub async fn wait_until_streaming(sql: &tokio_postgres::Client, slot: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if active == 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the producer never streamed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the file at `path` (a child's log) holds `needle` at least `count` times;
/// panics after `timeout`, naming what it found.
pub async fn wait_for_log(path: &std::path::Path, needle: &str, count: usize, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = std::fs::read_to_string(path)
            .unwrap_or_default()
            .matches(needle)
            .count();
        if found >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {found} of {count} lines with {needle:?} after {timeout:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills the process it names if the test ends early (a panic), so none outlives the test.
pub struct Reaper(pub Option<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// SIGKILLs a child and reaps it.
pub fn sigkill(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

/// The first column of every row of `query`, as text.
pub async fn table_text(sql: &tokio_postgres::Client, query: &str) -> Vec<String> {
    sql.query(query, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// SIGKILL cycles of the sink chaos tests: `TEST_SINK_CHAOS_CYCLES`, else `default` (the
/// test command's short run; `make chaos` sets more). The tests scale their load with it so
/// every kill lands while changes still flow.
pub fn sink_kill_cycles(default: usize) -> usize {
    std::env::var("TEST_SINK_CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}
