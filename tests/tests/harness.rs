//! Self-tests of the real-server harness: every server it starts must really work,
//! survive what the fault tests will do to it, and leave nothing behind.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use walbrook_harness::{
    FaultProxy, HIGH_WAL_START, LOG_TAIL_LINES, NatsCluster, NatsServer, PgServer, ProductProcess,
    SearchServer, ServerProcessInfo, WebhookReceiver, product_command, product_command_from,
};

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the harness PostgreSQL");
    tokio::spawn(connection);
    client
}

fn gone(info: &ServerProcessInfo) -> bool {
    !info.process_alive() && !info.dir.exists()
}

fn wait_until_gone(infos: &[ServerProcessInfo], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !infos.iter().all(gone) {
        assert!(
            Instant::now() < deadline,
            "servers left behind: {:?}",
            infos
                .iter()
                .filter(|i| !gone(i))
                .map(|i| (&i.kind, i.pid, i.process_alive(), i.dir.exists()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn postgres_supports_logical_slots_with_pgoutput() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("slot");
    let client = pg_connect(&db.url()).await;
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_level, "logical");
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text);
             CREATE PUBLICATION {pub_} FOR TABLE t;",
            pub_ = db.publication_name(),
        ))
        .await
        .unwrap();
    // A slot must be created in a transaction of its own, before the writes.
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.slot_name()],
        )
        .await
        .unwrap();
    client
        .execute("INSERT INTO t VALUES (1, 'hello')", &[])
        .await
        .unwrap();
    // pgoutput's binary messages for the transaction: Begin, Relation, Insert, Commit.
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', $2)",
            &[&db.slot_name(), &db.publication_name()],
        )
        .await
        .unwrap();
    let kinds: Vec<u8> = rows.iter().map(|r| r.get::<_, Vec<u8>>(0)[0]).collect();
    assert_eq!(kinds, b"BRIC", "pgoutput message kinds");
    let insert: Vec<u8> = rows[2].get(0);
    assert!(
        insert.windows(5).any(|w| w == b"hello"),
        "the insert carries the row"
    );
}

#[test]
fn every_test_database_is_separate_and_dropped() {
    let pg = PgServer::shared();
    let first = pg.fresh_database("a");
    let second = pg.fresh_database("a");
    assert_ne!(first.name(), second.name());
    assert_ne!(first.slot_name(), second.slot_name());
    assert_ne!(first.publication_name(), second.publication_name());
    first
        .psql(&format!(
            "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
            first.slot_name()
        ))
        .unwrap();
    let name = first.name().to_string();
    drop(first);
    let left = pg
        .psql(
            "postgres",
            &format!(
                "SELECT (SELECT count(*) FROM pg_database WHERE datname = '{name}') + \
                        (SELECT count(*) FROM pg_replication_slots WHERE database = '{name}')"
            ),
        )
        .unwrap();
    assert_eq!(
        left.trim(),
        "0",
        "database and slot are dropped with the TestDb"
    );
}

#[tokio::test]
async fn jetstream_publish_is_acked() {
    let client = async_nats::connect(NatsServer::shared_url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "HARNESS_ACK".into(),
        subjects: vec!["harness.ack.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let ack = js
        .publish("harness.ack.one", "payload".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "HARNESS_ACK");
    assert_eq!(ack.sequence, 1);
}

#[tokio::test]
async fn nats_restart_keeps_the_port_and_the_stream() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    {
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        js.create_stream(stream::Config {
            name: "KEEP".into(),
            subjects: vec!["keep.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..3 {
            js.publish("keep.x", format!("m{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    server.restart().unwrap();
    assert_eq!(server.port(), port, "restart reuses the port");
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut stream = js.get_stream("KEEP").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 3);

    server.kill();
    assert!(!server.is_running());
    server.start_again().unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut stream = js.get_stream("KEEP").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3,
        "survives SIGKILL"
    );
}

#[tokio::test]
async fn nats_config_file_raises_max_payload() {
    let server = NatsServer::start_with_config("max_payload: 8MB\n").unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, 8 * 1024 * 1024);
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "BIG".into(),
        subjects: vec!["big".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let ack = js
        .publish("big", vec![7u8; 3 * 1024 * 1024].into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 1);
}

#[tokio::test]
async fn nats_config_file_enables_authentication() {
    let server = NatsServer::start_with_config(
        "authorization { users: [ { user: alice, password: s3cret } ] }\n",
    )
    .unwrap();
    let anonymous = async_nats::connect(server.url()).await;
    assert!(
        anonymous.is_err(),
        "a client without credentials is refused"
    );
    let client =
        async_nats::ConnectOptions::with_user_and_password("alice".into(), "s3cret".into())
            .connect(server.url())
            .await
            .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn three_node_cluster_keeps_accepting_r3_writes_with_a_node_down() {
    let mut cluster = NatsCluster::start(3).unwrap();
    assert_eq!(cluster.len(), 3);
    let options = async_nats::ConnectOptions::new().retry_on_initial_connect();
    let client = options.connect(cluster.urls().as_slice()).await.unwrap();
    let js = jetstream::new(client);
    // The JetStream meta leader is elected a moment after the nodes are ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = js
            .create_stream(stream::Config {
                name: "R3".into(),
                subjects: vec!["r3.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("cluster not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("R3 stream never created: {e}"),
        }
    }
    // The stream's own replica group elects its leader after the create answer: until
    // then a publish finds no responder (reported as "stream not found").
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match js.publish("r3.a", "1".into()).await {
            Ok(future) => match future.await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("stream not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("the R3 stream never acked a write: {e}"),
            },
            Err(e) => panic!("publishing: {e}"),
        }
    }
    cluster.node(2).kill();
    // Two of three replicas still form a quorum: writes keep being acked.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ack = loop {
        match js.publish("r3.a", "2".into()).await {
            Ok(future) => match future.await {
                Ok(ack) => break ack,
                Err(e) if Instant::now() < deadline => eprintln!("retrying: {e}"),
                Err(e) => panic!("no ack with one node down: {e}"),
            },
            Err(e) if Instant::now() < deadline => eprintln!("retrying: {e}"),
            Err(e) => panic!("no publish with one node down: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(ack.stream, "R3");
    cluster.node(2).start_again().unwrap();
    assert!(cluster.node(2).is_running());
}

#[tokio::test]
async fn fault_proxy_severs_restores_and_delays() {
    let pg = PgServer::shared();
    let upstream: SocketAddr = format!("{}:{}", pg.host(), pg.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).unwrap();
    let url = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable&connect_timeout=2",
        proxy.port()
    );
    let client = pg_connect(&url).await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(proxy.active_connections(), 1);

    proxy.sever();
    assert!(
        client.query_one("SELECT 1", &[]).await.is_err(),
        "a severed connection fails"
    );
    assert!(
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_err(),
        "new connections are refused while severed"
    );

    proxy.restore();
    let client = pg_connect(&url).await;
    let two: i32 = client.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);

    proxy.set_delay(Duration::from_millis(150));
    let started = Instant::now();
    client.query_one("SELECT 3", &[]).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "request and response are each delayed"
    );
}

#[tokio::test]
async fn search_server_speaks_the_opensearch_rest_api() {
    let server = tokio::task::spawn_blocking(SearchServer::start)
        .await
        .unwrap()
        .unwrap();
    eprintln!("search engine: {}", server.engine());
    let http = reqwest::Client::new();
    let root: serde_json::Value = http
        .get(server.url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(root["version"]["number"].is_string(), "{root}");
    let bulk = "{\"index\":{\"_index\":\"h\",\"_id\":\"1\",\"version\":5,\"version_type\":\"external\"}}\n\
                {\"n\":1}\n\
                {\"index\":{\"_index\":\"h\",\"_id\":\"1\",\"version\":3,\"version_type\":\"external\"}}\n\
                {\"n\":0}\n";
    let response: serde_json::Value = http
        .post(format!("{}/_bulk?refresh=true", server.url()))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["errors"], true);
    assert_eq!(response["items"][0]["index"]["status"], 201);
    assert_eq!(
        response["items"][1]["index"]["status"], 409,
        "stale external version rejected"
    );
    let doc: serde_json::Value = http
        .get(format!("{}/h/_doc/1", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["_source"]["n"], 1);
    assert_eq!(doc["_version"], 5);
}

#[tokio::test]
async fn webhook_receiver_records_requests_and_plays_its_script() {
    let receiver = WebhookReceiver::start().unwrap();
    receiver.push_response(503, &[("retry-after", "1")]);
    let http = reqwest::Client::new();
    let first = http
        .post(format!("{}/hook?x=1", receiver.url()))
        .header("x-walbrook-event-id", "e1")
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 503);
    assert_eq!(first.headers()["retry-after"], "1");
    let second = http
        .post(format!("{}/hook", receiver.url()))
        .body("b")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/hook?x=1");
    assert_eq!(requests[0].header("X-Walbrook-Event-Id"), Some("e1"));
    assert_eq!(requests[0].body, b"{\"a\":1}");
}

#[test]
fn servers_are_cleaned_up_when_a_test_panics() {
    let mut infos = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let pg = PgServer::start().unwrap();
        let nats = NatsServer::start().unwrap();
        infos.push(pg.process_info().unwrap());
        infos.push(nats.process_info().unwrap());
        assert!(infos.iter().all(|i| i.process_alive() && i.dir.exists()));
        panic!("simulated test failure");
    }));
    assert!(result.is_err());
    assert_eq!(infos.len(), 2);
    wait_until_gone(&infos, Duration::from_secs(15));
}

#[test]
fn servers_are_cleaned_up_when_the_test_process_is_killed() {
    // walbrook-sandbox starts PostgreSQL, NATS and the search server, then runs a
    // command that SIGKILLs the sandbox: no destructor runs, only the reapers can help.
    let output = Command::new(env!("CARGO_BIN_EXE_walbrook-sandbox"))
        .args(["--search", "--", "sh", "-c", "kill -9 $PPID"])
        .env("TEST_SEARCH_ENGINE", "osmem")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("walbrook-sandbox: "))
        .unwrap_or_else(|| panic!("no server list in: {stderr}"));
    let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
    let infos: Vec<ServerProcessInfo> = serde_json::from_value(parsed["servers"].clone()).unwrap();
    let kinds: Vec<&str> = infos.iter().map(|i| i.kind.as_str()).collect();
    assert_eq!(kinds, ["postgres", "nats", "search"]);
    assert!(
        infos
            .iter()
            .all(|i| i.dir.starts_with(std::env::temp_dir()))
    );
    wait_until_gone(&infos, Duration::from_secs(20));
    assert!(!Path::new(&infos[0].dir).exists());
}

#[tokio::test]
async fn a_cluster_can_start_with_its_wal_past_800_0() {
    let pg = PgServer::start_with_wal_start(&[], HIGH_WAL_START).unwrap();
    let sql = pg_connect(pg.admin_url()).await;
    // A logical slot created there starts past the requested position.
    sql.batch_execute("SELECT pg_create_logical_replication_slot('high', 'pgoutput')")
        .await
        .unwrap();
    let row = sql
        .query_one(
            "SELECT pg_current_wal_lsn()::text, confirmed_flush_lsn::text, \
                    confirmed_flush_lsn >= '900/0'::pg_lsn \
             FROM pg_replication_slots WHERE slot_name = 'high'",
            &[],
        )
        .await
        .unwrap();
    let (current, confirmed, past): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    assert!(current.starts_with("900/"), "WAL at {current}");
    assert!(past, "the slot starts at {confirmed}");
}

#[test]
fn product_processes_inherit_no_walbrook_variable() {
    let parent = [
        ("WALBROOK_CHAOS_CYCLES".into(), "30".into()),
        ("WALBROOK_PG_URL".into(), "postgresql://elsewhere/x".into()),
        ("PATH".into(), "/usr/bin".into()),
    ];
    let mut command = product_command_from("env", parent);
    command.env("WALBROOK_ROOT", "MEANT");
    let envs: Vec<(String, Option<String>)> = command
        .get_envs()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.map(|v| v.to_string_lossy().into_owned()),
            )
        })
        .collect();
    assert!(
        envs.contains(&("WALBROOK_CHAOS_CYCLES".into(), None)),
        "{envs:?}"
    );
    assert!(envs.contains(&("WALBROOK_PG_URL".into(), None)), "{envs:?}");
    assert!(
        envs.contains(&("WALBROOK_ROOT".into(), Some("MEANT".into()))),
        "{envs:?}"
    );
    assert!(!envs.iter().any(|(k, _)| k == "PATH"), "{envs:?}");
}

#[test]
fn a_product_process_reports_the_tail_of_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("child.log");
    let mut command = product_command("sh");
    command.args([
        "-c",
        "i=1; while [ $i -le 50 ]; do echo line$i; i=$((i+1)); done; echo oops >&2; exit 3",
    ]);
    let mut child = ProductProcess::spawn(command, "a failing child", &log).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    let report = child.report();
    assert!(
        report.contains("a failing child") && report.contains("exited"),
        "{report}"
    );
    let lines: Vec<&str> = report.lines().collect();
    // A header, the last lines of the log, a footer.
    assert_eq!(lines.len(), LOG_TAIL_LINES + 2, "{report}");
    assert_eq!(lines[1], format!("line{}", 52 - LOG_TAIL_LINES), "{report}");
    assert_eq!(
        lines[LOG_TAIL_LINES], "oops",
        "stderr is in the log: {report}"
    );
}
