//! The search sink against the harness's OpenSearch (real, or osmem-server when Java is
//! missing: the test prints which).

#[path = "../../pg-client/tests/common/mod.rs"]
mod common;
#[path = "../../client/tests/sink_conformance/mod.rs"]
mod sink_conformance;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walbrook_client::runner::{Runner, RunnerOptions};
use walbrook_es_client::{SearchOptions, SearchSink};
use walbrook_harness::{HIGH_WAL_START, NatsServer, PgServer, SearchServer};

use common::Setup;
use sink_conformance::{Observe, State};

struct Index {
    url: String,
    index: String,
    http: reqwest::Client,
}

impl Index {
    async fn documents(&self) -> Vec<serde_json::Value> {
        let _ = self
            .http
            .post(format!("{}/{}/_refresh", self.url, self.index))
            .send()
            .await;
        let Ok(response) = self
            .http
            .post(format!("{}/{}/_search", self.url, self.index))
            .json(&serde_json::json!({"size": 10000, "query": {"match_all": {}}, "version": true}))
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        body["hits"]["hits"].as_array().cloned().unwrap_or_default()
    }
}

impl Observe for Index {
    async fn state(&self) -> State {
        self.documents()
            .await
            .iter()
            .map(|hit| {
                (
                    hit["_id"].as_str().unwrap().parse::<i64>().unwrap(),
                    hit["_source"]["note"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_sink_conforms() {
    let search = SearchServer::start().unwrap();
    println!("search engine: {}", search.engine());
    let mut setup = Setup::start("conf_es", sink_conformance::DDL, sink_conformance::TABLE).await;
    let url = search.url().to_owned();
    let options = SearchOptions::new(url.clone());
    let index = Index {
        url: url.clone(),
        index: options.index(setup.db.name(), "public", "conf"),
        http: reqwest::Client::new(),
    };
    let make = move || {
        let mut options = SearchOptions::new(url.clone());
        options.create_mapping = true;
        async move { SearchSink::new(options).unwrap() }
    };
    sink_conformance::run(&setup, make, &index).await;
    // Documents carry the external version derived from the commit position.
    let docs = index.documents().await;
    assert!(
        docs.iter()
            .all(|d| d["_version"].as_i64().unwrap() > 1 << 20)
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_changes_never_regress_a_document_and_types_map() {
    let search = SearchServer::start().unwrap();
    println!("search engine: {}", search.engine());
    let mut setup = Setup::start(
        "es_order",
        "CREATE TABLE t (id int PRIMARY KEY, note text, amount numeric(20,8), big text, tags text[]);
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;",
        "public.t",
    )
    .await;
    setup
        .exec(&[
            "INSERT INTO t VALUES (1, 'first', 12345678901.12345678, repeat('z', 5000), '{a,b}')",
            "UPDATE t SET note = 'second' WHERE id = 1",
            "UPDATE t SET note = 'third', amount = -1 WHERE id = 1",
            "INSERT INTO t VALUES (2, 'two', 0, '', '{}')",
            "TRUNCATE t",
            "INSERT INTO t VALUES (3, 'three', 3, 'x', NULL)",
        ])
        .await;
    let client = setup.client().await;
    let mut options = SearchOptions::new(search.url());
    options.create_mapping = true;
    let index = Index {
        url: search.url().to_owned(),
        index: options.index(setup.db.name(), "public", "t"),
        http: reqwest::Client::new(),
    };
    let sink = SearchSink::new(options).unwrap();
    // Read the events, apply the newest update first, then all of them in order: the older
    // ones are refused by version and the document ends at the newest state.
    let mut stream = client
        .subscribe(walbrook_client::Subscription::table("public.t"))
        .await
        .unwrap();
    let events = common::events(&mut stream, 3).await;
    use walbrook_client::runner::Sink;
    sink.apply("x", &events[2..3]).await.unwrap();
    let applied = sink.apply("x", &events[0..3]).await.unwrap();
    assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
    let docs = index.documents().await;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["_source"]["note"], "third");
    assert_eq!(
        docs[0]["_source"]["amount"], "-1.00000000",
        "numeric digits kept"
    );
    assert_eq!(
        docs[0]["_source"]["big"].as_str().unwrap().len(),
        5000,
        "TOAST value kept"
    );

    // The whole stream through the runner: truncate, then row 3 only.
    let mut runner = Runner::new(client, sink, RunnerOptions::new("es", ["public.t"]));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = index.state().await;
        if state.len() == 1 && state.get(&3).map(String::as_str) == Some("three") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "index holds {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mapping: serde_json::Value =
        reqwest::get(format!("{}/{}/_mapping", search.url(), index.index))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let properties = &mapping[&index.index]["mappings"]["properties"];
    assert_eq!(properties["id"]["type"], "integer", "{mapping}");
    assert_eq!(properties["amount"]["type"], "keyword");
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}

/// A database that has written more than 8 TiB of WAL (its positions start past `800/0`):
/// insert, update, update, then delete of one key. Each change must reach the index (a
/// version of LSN × 2^20 saturated there, so the updates came back 409 and were counted as
/// applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_past_wal_position_800_0_all_reach_the_index() {
    let search = SearchServer::start().unwrap();
    println!("search engine: {}", search.engine());
    let mut setup = Setup::start_on(
        PgServer::shared_high_lsn(),
        "es_high",
        "CREATE TABLE t (id int PRIMARY KEY, note text)",
        "public.t",
        NatsServer::start().unwrap(),
        &[],
    )
    .await;
    let position: String = setup
        .sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let lsn: walbrook_client::Lsn = position.parse().unwrap();
    assert!(lsn.0 > HIGH_WAL_START, "the source's WAL is at {position}");

    let options = SearchOptions::new(search.url());
    let index = Index {
        url: search.url().to_owned(),
        index: options.index(setup.db.name(), "public", "t"),
        http: reqwest::Client::new(),
    };
    let client = setup.client().await;
    let mut runner = Runner::new(
        client,
        SearchSink::new(options).unwrap(),
        RunnerOptions::new("es_high", ["public.t"]),
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(stop).await.unwrap() });
    let wait_for = |expected: State| {
        let index = &index;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let state = index.state().await;
                if state == expected {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "index holds {state:?}, the source {expected:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    setup
        .exec(&[
            "INSERT INTO t VALUES (1, 'inserted'), (2, 'other')",
            "UPDATE t SET note = 'updated once' WHERE id = 1",
            "UPDATE t SET note = 'updated twice' WHERE id = 1",
        ])
        .await;
    wait_for(State::from([
        (1, "updated twice".to_owned()),
        (2, "other".to_owned()),
    ]))
    .await;
    let docs = index.documents().await;
    assert!(
        docs.iter()
            .all(|d| d["_version"].as_i64().unwrap() > HIGH_WAL_START as i64),
        "versions are the commit positions: {docs:?}"
    );
    setup.exec(&["DELETE FROM t WHERE id = 1"]).await;
    wait_for(State::from([(2, "other".to_owned())])).await;
    shutdown.cancel();
    task.await.unwrap();
    setup.stop().await;
}
