//! The PostgreSQL sink passes the sink conformance suite.

mod common;
#[path = "../../client/tests/sink_conformance/mod.rs"]
mod sink_conformance;

use walbrook_harness::PgServer;
use walbrook_pg_client::{PgSink, PgSinkOptions};

use common::{Setup, connect};
use sink_conformance::{Observe, State};

struct Target(tokio_postgres::Client);

impl Observe for Target {
    async fn state(&self) -> State {
        match self.0.query("SELECT id::bigint, note FROM conf", &[]).await {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, i64>(0),
                        r.get::<_, Option<String>>(1).unwrap_or_default(),
                    )
                })
                .collect(),
            Err(_) => State::new(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_sink_conforms() {
    let mut setup = Setup::start("conf_pg", sink_conformance::DDL, sink_conformance::TABLE).await;
    let target_db = PgServer::shared().fresh_database("conf_pg_target");
    let target = Target(connect(&target_db.url()).await);
    let url = target_db.url();
    let make = move || {
        let url = url.clone();
        async move { PgSink::connect(PgSinkOptions::new(url)).await.unwrap() }
    };
    sink_conformance::run(&setup, make, &target).await;
    setup.stop().await;
}
