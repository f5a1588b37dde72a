//! Two `walbrook sink postgres` instances share the tables of one sink (`--instances 2`):
//! together they reproduce the source; each owns its tables, checkpoint and consumer; the
//! metrics and health endpoints answer.

use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use walbrook_client::runner::partition::owns_table;
use walbrook_harness::{NatsServer, PgServer, TestDb, free_port};
use walbrook_producer::config::RawConfig;

const ROOT: &str = "SCALE";
const TABLES: [&str; 6] = ["t0", "t1", "t2", "t3", "t4", "t5"];

async fn connect(url: &str) -> tokio_postgres::Client {
    let (sql, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sql
}

struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

fn spawn(source: &TestDb<'_>, target: &str, nats: &str, instance: usize, metrics: u16) -> Child {
    let tables: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"))
        .args(["sink", "postgres", "--instances", "2", "--instance"])
        .arg(instance.to_string())
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{metrics}"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WALBROOK_NATS_URL", nats)
        .env("WALBROOK_ROOT", ROOT)
        .env("WALBROOK_SINK_SOURCE_DB", source.name())
        .env("WALBROOK_SINK_CONSUMER", "shared")
        .env("WALBROOK_SINK_TABLES", tables.join(","))
        .env("WALBROOK_SINK_TARGET_URL", target)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_tables_of_one_sink() {
    for instance in 0..2 {
        assert!(
            TABLES.iter().any(|t| owns_table("public", t, instance, 2)),
            "instance {instance} owns no table: pick other names"
        );
    }
    let pg = PgServer::shared();
    let source_db = pg.fresh_database("scale_src");
    let target_db = pg.fresh_database("scale_dst");
    let nats = NatsServer::start().unwrap();
    let source = connect(&source_db.url()).await;
    let target = connect(&target_db.url()).await;
    for t in TABLES {
        source
            .batch_execute(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text)"))
            .await
            .unwrap();
    }
    let mut raw = RawConfig::default();
    let tables: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    raw.apply_env([
        ("WALBROOK_PG_URL", source_db.url()),
        ("WALBROOK_NATS_URL", nats.url()),
        ("WALBROOK_TABLES", tables.join(",")),
        ("WALBROOK_SLOT", source_db.slot_name()),
        ("WALBROOK_PUBLICATION", source_db.publication_name()),
        ("WALBROOK_ROOT", ROOT.to_string()),
    ])
    .unwrap();
    let config = raw.validate().unwrap();
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(walbrook_producer::pipeline::run(config, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active: i64 = source
            .query_one(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&source_db.slot_name()],
            )
            .await
            .unwrap()
            .get(0);
        if active == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the producer never streamed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ports = [free_port().unwrap(), free_port().unwrap()];
    let mut reaper = Reaper(vec![
        spawn(&source_db, &target_db.url(), &nats.url(), 0, ports[0]),
        spawn(&source_db, &target_db.url(), &nats.url(), 1, ports[1]),
    ]);
    for round in 0..20 {
        for t in TABLES {
            source
                .batch_execute(&format!(
                    "INSERT INTO {t} VALUES ({round}, 'r{round}');
                     UPDATE {t} SET v = v || '+' WHERE id = {round} / 2;"
                ))
                .await
                .unwrap();
        }
    }
    source
        .batch_execute("DELETE FROM t1 WHERE id % 3 = 0")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for t in TABLES {
        let query = format!("SELECT t::text FROM {t} t ORDER BY id");
        loop {
            let a: Vec<String> = source
                .query(&query, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let b: Vec<String> = match target.query(&query, &[]).await {
                Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
                Err(_) => Vec::new(),
            };
            if a == b {
                break;
            }
            for child in &mut reaper.0 {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "an instance exited: {:?}",
                    child.try_wait()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{t}: {a:?} != {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Each instance keeps its own checkpoint.
    let consumers: Vec<String> = target
        .query("SELECT consumer FROM walbrook_checkpoint ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(consumers, ["shared-0", "shared-1"]);
    for port in ports {
        let (status, body) = http_get(port, "/healthz").await.expect("healthz answers");
        assert_eq!(status, 200, "{body}");
        let (status, metrics) = http_get(port, "/metrics").await.expect("metrics answer");
        assert_eq!(status, 200);
        let applied: f64 = metrics
            .lines()
            .find(|l| l.starts_with("walbrook_sink_applied_events_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no applied counter in {metrics}"));
        assert!(applied > 0.0, "{metrics}");
        assert!(metrics.contains("walbrook_sink_lag_seconds"), "{metrics}");
        assert!(metrics.contains("consumer=\"shared-"), "{metrics}");
    }
    for child in &mut reaper.0 {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        assert!(child.wait().unwrap().success());
    }
    reaper.0.clear();
    shutdown.cancel();
    let _ = producer.await;
}
