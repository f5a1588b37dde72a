//! `walbrook check` reports every problem with its fix, and passes when ready.

use walbrook_harness::{NatsServer, PgServer};

fn check(envs: &[(&str, String)]) -> (bool, String) {
    let mut command = walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"));
    command.arg("check");
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn check_reports_problems_with_fixes_and_passes_when_ready() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("check");
    let nats = NatsServer::start().unwrap();
    db.psql("CREATE TABLE good (id int PRIMARY KEY); CREATE TABLE nokey (v text);")
        .unwrap();
    let base = vec![
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats.url()),
        ("WALBROOK_SLOT", db.slot_name()),
    ];

    let mut bad = base.clone();
    bad.push((
        "WALBROOK_TABLES",
        "public.good, public.nokey, public.missing".into(),
    ));
    let (ok, out) = check(&bad);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  table \"public\".\"missing\" does not exist"),
        "{out}"
    );
    assert!(
        out.contains("\"public\".\"nokey\" has no primary key"),
        "{out}"
    );
    assert!(
        out.contains(
            "fix: add a primary key, or ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL"
        ),
        "{out}"
    );
    assert!(out.contains("ok    JetStream enabled"), "{out}");

    let mut invalid = base.clone();
    invalid.push(("WALBROOK_TABLES", "public.good".into()));
    invalid.push(("WALBROOK_MAX_INFLIGHT", "0".into()));
    let (ok, out) = check(&invalid);
    assert!(!ok);
    assert!(
        out.contains("FAIL  configuration: nats.max_inflight: must be between 1 and 100000"),
        "{out}"
    );

    let mut good = base;
    good.push(("WALBROOK_TABLES", "public.good".into()));
    let (ok, out) = check(&good);
    assert!(ok, "{out}");
    assert!(out.contains("all checks passed"), "{out}");
    // Warnings that do not fail the check: the harness's plaintext URL and its unlimited
    // WAL retention.
    assert!(
        out.contains("warn  postgres.url: no TLS") && out.contains("plaintext"),
        "{out}"
    );
    assert!(
        out.contains("warn  max_slot_wal_keep_size is unlimited"),
        "{out}"
    );
    assert!(out.contains("warn  nats: no TLS configured"), "{out}");
    // Nothing was started: no slot exists afterwards.
    let slots = db
        .psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot_name()
        ))
        .unwrap();
    assert_eq!(slots.trim(), "0");
}

/// A change stream whose limits remove changes (set by an operator before the producer
/// ran): `walbrook check` names each, with what it costs, and leaves the stream as it is.
#[test]
fn check_reports_stream_limits_that_remove_changes() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("check_limits");
    let nats = NatsServer::start().unwrap();
    db.psql("CREATE TABLE good (id int PRIMARY KEY);").unwrap();
    let name = format!("WALBROOK_{}_WAL", db.name());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("WALBROOK.{}.wal.>", db.name())],
            max_messages_per_subject: 10,
            max_bytes: 1 << 20,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            duplicate_window: std::time::Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let (ok, out) = check(&[
        ("WALBROOK_PG_URL", db.url()),
        ("WALBROOK_NATS_URL", nats.url()),
        ("WALBROOK_SLOT", db.slot_name()),
        ("WALBROOK_TABLES", "public.good".into()),
    ]);
    assert!(ok, "limits are warnings: {out}");
    for what in [
        "max_msgs_per_subject 10 (config: unlimited)",
        "max_bytes 1048576 (config: unlimited)",
        "discard New (Walbrook expects old)",
    ] {
        assert!(
            out.contains(&format!("warn  stream {name}: {what}")),
            "{what}: {out}"
        );
    }
    assert!(!out.contains("max_msgs -1"), "{out}");
}
