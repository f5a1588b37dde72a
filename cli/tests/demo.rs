//! `walbrook demo` (what `make demo` runs) works against real servers and shows the
//! decoded events and the metrics.

use walbrook_harness::{NatsServer, PgServer};

#[test]
fn the_demo_shows_decoded_changes_and_metrics() {
    let pg = PgServer::shared();
    let db = pg.fresh_database("demo");
    let nats = NatsServer::start().unwrap();
    let output = walbrook_harness::product_command(env!("CARGO_BIN_EXE_walbrook"))
        .arg("demo")
        .env("WALBROOK_PG_URL", db.url())
        .env("WALBROOK_NATS_URL", nats.url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "INSERT     at",
        "UPDATE_KEY at",
        "before={id: 2}  after={id: 100, customer: \"customer-2\", amount: 20.50",
        "DELETE     at",
        "walbrook_producer_events_total{table=\"public.demo_orders\",op=\"insert\"} 5",
        "stopped cleanly",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
