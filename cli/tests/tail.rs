//! `walbrook tail` and `walbrook schema` as processes against a real PostgreSQL, nats-server
//! and producer.

use std::process::Output;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walbrook_harness::{NatsServer, PgServer, TestDb};
use walbrook_producer::config::RawConfig;

const ROOT: &str = "WBTAIL";

fn walbrook(db: &TestDb<'_>, nats: &NatsServer, args: &[&str]) -> Output {
    walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"))
        .args(args)
        .args(["--database", db.name(), "--root", ROOT])
        .env("WALBROOK_NATS_URL", nats.url())
        .env_remove("WALBROOK_PG_URL")
        .output()
        .unwrap()
}

async fn run(db: &TestDb<'static>, nats: &NatsServer, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (db_name, url) = (db.name().to_string(), nats.url());
    tokio::task::spawn_blocking(move || {
        walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"))
            .args(&args)
            .args(["--database", &db_name, "--root", ROOT])
            .env("WALBROOK_NATS_URL", url)
            .env_remove("WALBROOK_PG_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn wait_until_streaming(db: &TestDb<'_>, sql: &tokio_postgres::Client, nats: &NatsServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    loop {
        let active: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&db.slot_name()],
            )
            .await
            .unwrap()
            .get(0);
        let stream = js.get_stream(format!("{ROOT}_{}_WAL", db.name())).await;
        if active == 1 && stream.is_ok() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "producer not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_events_from_any_position_and_schema_prints_versions() {
    let db = PgServer::shared().fresh_database("tail");
    let nats = NatsServer::start().unwrap();
    let (sql, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, amount numeric(10,2), note text, tags text[])",
    )
    .await
    .unwrap();
    let mut raw = RawConfig::default();
    raw.apply_env([
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats.url()),
        ("WALBROOK_TABLES", "public.t".to_string()),
        ("WALBROOK_SLOT", db.slot_name()),
        ("WALBROOK_PUBLICATION", db.publication_name()),
        ("WALBROOK_ROOT", ROOT.to_string()),
    ])
    .unwrap();
    let shutdown = CancellationToken::new();
    let producer = tokio::spawn(walbrook_producer::pipeline::run(
        raw.validate().unwrap(),
        shutdown.clone(),
    ));
    wait_until_streaming(&db, &sql, &nats).await;
    for statement in [
        "INSERT INTO t VALUES (1, 12.50, 'first', '{a,b}')",
        "INSERT INTO t VALUES (2, -0.01, NULL, '{}')",
        "UPDATE t SET note = 'changed' WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
    ] {
        sql.batch_execute(statement).await.unwrap();
    }

    // Piped output: JSON lines, from the beginning.
    let all = json_lines(
        &run(
            &db,
            &nats,
            &["tail", "public.t", "--from", "beginning", "--limit", "4"],
        )
        .await,
    );
    let ops: Vec<&str> = all.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["insert", "insert", "update", "delete"]);
    assert_eq!(
        all[0]["after"],
        serde_json::json!({"id": 1, "amount": "12.50", "note": "first",
            "tags": {"dims": [{"lower": 1, "length": 2}], "elements": ["a", "b"]}})
    );
    assert_eq!(all[1]["after"]["amount"], "-0.01");
    assert_eq!(all[1]["after"]["note"], serde_json::Value::Null);
    assert_eq!(all[2]["after"]["note"], "changed");
    assert_eq!(all[3]["before"], serde_json::json!({"id": 2}));
    assert_eq!(all[3]["source"]["table"], "t");

    // From a commit position: the update's.
    let update_lsn = all[2]["source"]["commit_lsn"].as_str().unwrap().to_string();
    let from_update = json_lines(
        &run(
            &db,
            &nats,
            &["tail", "*", "--from", &update_lsn, "--idle-exit", "2"],
        )
        .await,
    );
    let ops: Vec<&str> = from_update
        .iter()
        .map(|e| e["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["update", "delete"]);

    // New events only: nothing has happened since, so it idles out with no output.
    let new = run(
        &db,
        &nats,
        &["tail", "public.*", "--from", "new", "--idle-exit", "1"],
    )
    .await;
    assert!(json_lines(&new).is_empty());

    // Pretty output.
    let (pretty, _) = text(
        &run(
            &db,
            &nats,
            &[
                "tail",
                "public.t",
                "--from",
                "beginning",
                "--limit",
                "1",
                "--format",
                "pretty",
            ],
        )
        .await,
    );
    assert!(pretty.starts_with("insert public.t  commit "), "{pretty}");
    assert!(pretty.contains("  after   id = 1\n"), "{pretty}");
    assert!(
        pretty.contains("          amount = \"12.50\"\n"),
        "{pretty}"
    );

    // A durable reader acknowledges what it printed; the next run resumes after it.
    let durable = [
        "tail",
        "public.t",
        "--from",
        "beginning",
        "--durable",
        "tailer",
    ];
    let first = json_lines(&run(&db, &nats, &[&durable[..], &["--limit", "2"]].concat()).await);
    let second = json_lines(&run(&db, &nats, &[&durable[..], &["--limit", "2"]].concat()).await);
    let seqs = |events: &[serde_json::Value]| -> Vec<u64> {
        events
            .iter()
            .map(|e| e["stream_sequence"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&first), seqs(&all[..2]));
    assert_eq!(seqs(&second), seqs(&all[2..]));

    // A garbage message on the change subject is reported with its sequence, not skipped
    // silently, and the events after it are still printed.
    let nats_client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(nats_client.clone())
        .publish(
            format!("{ROOT}.{}.wal.public.t", db.name()),
            "garbage".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    sql.batch_execute("INSERT INTO t VALUES (3, 1, 'after garbage', NULL)")
        .await
        .unwrap();
    let output = run(
        &db,
        &nats,
        &["tail", "public.t", "--from", "beginning", "--limit", "5"],
    )
    .await;
    let (_, stderr) = text(&output);
    let events = json_lines(&output);
    assert_eq!(events[4]["after"]["note"], "after garbage", "{stderr}");
    assert!(
        stderr.contains("walbrook tail: decode: not an Avro single-object message (message 5 on "),
        "{stderr}"
    );

    // walbrook schema: by table (latest announcement) and by fingerprint.
    let fingerprint = all[0]["fingerprint"].as_str().unwrap();
    let by_table = json_lines(&run(&db, &nats, &["schema", "public.t"]).await);
    assert_eq!(by_table[0]["fingerprint"], fingerprint);
    assert_eq!(by_table[0]["table"], "public.t");
    let columns: Vec<(&str, &str, bool)> = by_table[0]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["type"].as_str().unwrap(),
                c["key"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("id", "integer", true),
            ("amount", "numeric(10,2)", false),
            ("note", "text", false),
            ("tags", "text[]", false)
        ]
    );
    assert_eq!(by_table[0]["schema"]["fields"][0]["name"], "op");
    let by_fingerprint = json_lines(&run(&db, &nats, &["schema", fingerprint]).await);
    assert_eq!(by_fingerprint, by_table);

    let unknown = run(&db, &nats, &["schema", "0123456789abcdef"]).await;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).1.contains("schema not found"),
        "{:?}",
        text(&unknown)
    );
    let no_table = run(&db, &nats, &["schema", "public.nosuch"]).await;
    assert!(!no_table.status.success());
    assert!(
        text(&no_table)
            .1
            .contains("no schema announced for public.nosuch"),
        "{:?}",
        text(&no_table)
    );
    let wildcard = walbrook(&db, &nats, &["schema", "public.*"]);
    assert!(
        text(&wildcard).1.contains("name one table"),
        "{:?}",
        text(&wildcard)
    );

    shutdown.cancel();
    producer.await.unwrap().unwrap();
}
