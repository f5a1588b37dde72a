//! `walbrook-bench`: pipeline benchmarks against the physical reference, measured on
//! the same machine in the same run.
//!
//! ```text
//! walbrook-bench [--rows N] [--rows-per-tx M] [--out DIR] [--latency-rate R] [--latency-seconds S]
//! ```
//!
//! Backlog drain: fills an N-row backlog behind two logical slots, then times
//! (a) `pg_recvlogical` draining one slot (the physical reference: pgoutput bytes to
//! /dev/null) and (b) `walbrook produce` draining the other into JetStream (file
//! storage, every event acked), and reports the throughput ratio (b)/(a) and the
//! producer's peak RSS. Results go to `DIR/backlog.json` (default `results/`).
//!
//! Snapshot: on the same table, times (d) `COPY (SELECT …) TO STDOUT` through psql to
//! /dev/null (the reference) and (e) a Walbrook snapshot of the table, from the RPC
//! request until the producer has stored the `end` message in JetStream (every row
//! acked), and reports rows/s of both and their ratio (e)/(d) in `DIR/snapshot.json`.
//!
//! Latency: (f) `walbrook produce` streams a table written at a steady R changes/s (100
//! transactions/s of R/100 rows, one connection); a JetStream subscriber in this process
//! records, for every change, the time from its transaction's COMMIT returning to the
//! writer until the event arrives (same clock), and reports p50, p99 and max in
//! `DIR/latency.json` (the first 2 s are warm-up and not counted).
//!
//! The `walbrook` binary must sit next to this one (`cargo build --release -p
//! walbrook-cli -p walbrook-harness`); `make bench` does that.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walbrook_harness::{NatsServer, PgServer};

struct Args {
    rows: u64,
    rows_per_tx: u64,
    out: std::path::PathBuf,
    latency_rate: u64,
    latency_seconds: u64,
    only: Vec<String>,
    apply_changes: u64,
    memory_rows: u64,
    sink_events: u64,
}

impl Args {
    /// Whether the benchmark `part` runs (`--only` lists the parts; default all).
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// `walbrook-bench --help`.
const USAGE: &str =
    "walbrook-bench: Walbrook against the physical references, same machine, same run
(docs/testing.md, Benchmarks). Results as JSON in --out, with summary.txt and chart.png.

  --out DIR              where results go (default results)
  --only PARTS           comma-separated: backlog (with the snapshot), latency, apply,
                         apply-inserts, memory, sinks (default all)
  --rows N               backlog and snapshot table rows (default 1000000)
  --rows-per-tx M        rows per source transaction of the backlog (default 1000)
  --latency-rate R       changes/s of the latency run (default 5000)
  --latency-seconds S    its length (default 20)
  --apply-changes N      changes of the apply workloads (default 1000000)
  --memory-rows N        rows of the memory run's one transaction (default 1000000)
  --sink-events N        events of the webhook/search sink runs (default 50000)

Environment: BENCH_SINK_BATCH_EVENTS, BENCH_SINK_RUST_LOG (see docs/testing.md).";

fn parse_args() -> Args {
    let mut args = Args {
        rows: 1_000_000,
        rows_per_tx: 1_000,
        out: "results".into(),
        latency_rate: 5_000,
        latency_seconds: 20,
        only: Vec::new(),
        apply_changes: 1_000_000,
        memory_rows: 1_000_000,
        sink_events: 50_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value\n\n{USAGE}"));
        match flag.as_str() {
            "--rows" => args.rows = value.parse().expect("--rows N"),
            "--rows-per-tx" => args.rows_per_tx = value.parse().expect("--rows-per-tx M"),
            "--out" => args.out = value.into(),
            "--latency-rate" => args.latency_rate = value.parse().expect("--latency-rate R"),
            "--latency-seconds" => {
                args.latency_seconds = value.parse().expect("--latency-seconds S")
            }
            "--only" => {
                args.only = value.split(',').map(|p| p.trim().to_string()).collect();
                for part in &args.only {
                    assert!(
                        PARTS.contains(&part.as_str()),
                        "--only takes {PARTS:?}, not {part:?}"
                    );
                }
            }
            "--apply-changes" => args.apply_changes = value.parse().expect("--apply-changes N"),
            "--memory-rows" => args.memory_rows = value.parse().expect("--memory-rows N"),
            "--sink-events" => args.sink_events = value.parse().expect("--sink-events N"),
            other => panic!("unknown flag {other}\n\n{USAGE}"),
        }
    }
    args
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The benchmark parts `--only` selects from (`backlog` includes the snapshot benchmark,
/// which reads the backlog's table).
const PARTS: &[&str] = &[
    "backlog",
    "latency",
    "apply",
    "apply-inserts",
    "memory",
    "sinks",
];

fn main() {
    let args = parse_args();
    let pg = PgServer::start_with(&[("synchronous_commit", "off")]).expect("PostgreSQL");
    let nats = NatsServer::start().expect("nats-server");
    let walbrook = std::env::current_exe()
        .expect("own path")
        .with_file_name("walbrook");
    std::fs::create_dir_all(&args.out).expect("results dir");
    let _ = RUN.set(run_metadata(&pg, &nats));
    if args.runs("backlog") {
        backlog_bench(&pg, &nats, &walbrook, &args);
    }
    if args.runs("latency") {
        latency_bench(
            &pg,
            &nats.url(),
            &walbrook,
            args.latency_rate,
            args.latency_seconds,
            &args.out,
        );
    }
    for workload in [ApplyWorkload::Mixed, ApplyWorkload::Inserts] {
        if args.runs(workload.name()) {
            apply_bench(
                &pg,
                &nats.url(),
                &walbrook,
                workload,
                args.apply_changes,
                &args.out,
            );
        }
    }
    if args.runs("memory") {
        memory_bench(&pg, &nats.url(), &walbrook, args.memory_rows, &args.out);
    }
    if args.runs("sinks") {
        sinks_bench(&pg, &nats.url(), &walbrook, args.sink_events, &args.out);
    }
    summarize(&args.out);
}

/// (i) Webhook and Elasticsearch/OpenSearch sink throughput: `events` inserts (transactions
/// of 1,000) stored in JetStream by the producer first, then each sink process timed from
/// its start until the target holds every event: the webhook receiver (in this process,
/// answering 200 at once) every distinct event id, the search index every document.
fn sinks_bench(
    pg: &PgServer,
    nats_url: &str,
    walbrook: &std::path::Path,
    events: u64,
    out: &std::path::Path,
) {
    let source = pg.fresh_database("sinks_src");
    // The slot exists before the first insert. The first version of this part let the
    // producer create it while the inserts ran: the transactions committed before the slot
    // existed never reached the stream (18,000 of 20,000 events stored), the sink delivered
    // all it got and the wait for the rest never ended.
    source
        .psql(&format!(
            "CREATE TABLE sink_t (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2));
             CREATE PUBLICATION {} FOR TABLE sink_t",
            source.publication_name(),
        ))
        .expect("schema");
    source
        .psql(&format!(
            "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
            source.slot_name()
        ))
        .expect("slot");
    let mut producer = spawn_producer(
        walbrook,
        &source,
        nats_url,
        "SINKS",
        "public.sink_t",
        &out.join("producer-sinks.log"),
    );
    let mut first = 1;
    while first <= events {
        let last = (first + 999).min(events);
        source
            .psql(&format!(
                "INSERT INTO sink_t SELECT g, 'name-' || g, g / 100.0 FROM generate_series({first}, {last}) g"
            ))
            .expect("insert");
        first = last + 1;
    }
    let end = source
        .psql("SELECT pg_current_wal_lsn()")
        .expect("lsn")
        .trim()
        .to_string();
    wait_confirmed(&source, &source.slot_name(), &end, &mut producer.0);
    let stored = stream_events(nats_url, &format!("SINKS_{}_WAL", source.name()));
    assert_eq!(
        stored, events,
        "the change stream holds {stored} of the {events} inserts: no sink could deliver them all"
    );
    let sink = |kind: &str, env: &[(&str, String)], log: &str| {
        let log = std::fs::File::create(out.join(log)).ok();
        let child = walbrook_harness::product_command(walbrook)
            .args(["sink", kind])
            .env("WALBROOK_NATS_URL", nats_url)
            .env("WALBROOK_ROOT", "SINKS")
            .env("WALBROOK_SINK_SOURCE_DB", source.name())
            .env("WALBROOK_SINK_CONSUMER", format!("bench-{kind}"))
            .env("WALBROOK_SINK_TABLES", "public.sink_t")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", walbrook.display()));
        Reaped(child)
    };
    let limit = Duration::from_secs(1800);

    let receiver = walbrook_harness::WebhookReceiver::start().expect("webhook receiver");
    let started = Instant::now();
    let mut hook = sink(
        "webhook",
        &[
            ("WALBROOK_SINK_WEBHOOK_URL", receiver.url()),
            ("WALBROOK_SINK_WEBHOOK_SECRET", "bench".into()),
        ],
        "sink-webhook.log",
    );
    // Distinct ids (a retried POST repeats one), counted under the receiver's lock
    // without copying 50,000 recorded requests every poll.
    wait_for_target("webhook", &mut hook, events, started + limit, || {
        receiver.distinct_header_values("walbrook-event-id") as u64
    });
    let webhook_secs = started.elapsed().as_secs_f64();
    drop(hook);
    eprintln!("webhook sink: {events} events in {webhook_secs:.2}s");

    // The same with --batch: one POST per batch (a JSON array), counted by the arrays'
    // lengths over distinct batch ids.
    let receiver = walbrook_harness::WebhookReceiver::start().expect("webhook receiver");
    let started = Instant::now();
    let mut hook = sink(
        "webhook",
        &[
            ("WALBROOK_SINK_WEBHOOK_URL", receiver.url()),
            ("WALBROOK_SINK_WEBHOOK_SECRET", "bench".into()),
            ("WALBROOK_SINK_WEBHOOK_BATCH", "true".into()),
            ("WALBROOK_SINK_CONSUMER", "bench-webhook-batch".into()),
        ],
        "sink-webhook-batch.log",
    );
    wait_for_target(
        "webhook --batch",
        &mut hook,
        events,
        started + limit,
        || {
            let mut batches = std::collections::HashMap::new();
            for r in receiver.requests() {
                if let Some(id) = r.header("walbrook-event-id") {
                    let n = serde_json::from_slice::<Vec<serde_json::Value>>(&r.body)
                        .map_or(0, |a| a.len() as u64);
                    batches.insert(id.to_string(), n);
                }
            }
            batches.values().sum()
        },
    );
    let webhook_batch_secs = started.elapsed().as_secs_f64();
    drop(hook);
    eprintln!("webhook sink --batch: {events} events in {webhook_batch_secs:.2}s");

    let search = walbrook_harness::SearchServer::start().expect("search engine");
    let started = Instant::now();
    let mut es = sink(
        "elasticsearch",
        &[
            ("WALBROOK_SINK_SEARCH_URL", search.url().to_string()),
            ("WALBROOK_SINK_INDEX_TEMPLATE", "bench-{table}".into()),
        ],
        "sink-search.log",
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let http = reqwest::Client::new();
    wait_for_target("elasticsearch", &mut es, events, started + limit, || {
        runtime
            .block_on(async {
                let _ = http
                    .post(format!("{}/bench-sink_t/_refresh", search.url()))
                    .send()
                    .await;
                let response = http
                    .get(format!("{}/bench-sink_t/_count", search.url()))
                    .send()
                    .await
                    .ok()?;
                let body: serde_json::Value = response.json().await.ok()?;
                body["count"].as_u64()
            })
            .unwrap_or(0)
    });
    let search_secs = started.elapsed().as_secs_f64();
    drop(es);
    drop(producer);
    eprintln!(
        "search sink ({}): {events} events in {search_secs:.2}s",
        search.engine()
    );
    let result = serde_json::json!({
        "benchmark": "sinks",
        "events": events,
        "webhook_seconds": webhook_secs,
        "webhook_events_per_second": events as f64 / webhook_secs,
        "webhook_batch_seconds": webhook_batch_secs,
        "webhook_batch_events_per_second": events as f64 / webhook_batch_secs,
        "search_engine": search.engine(),
        "elasticsearch_seconds": search_secs,
        "elasticsearch_events_per_second": events as f64 / search_secs,
    });
    let path = out.join("sinks.json");
    write_result(&path, result.clone());
    println!("{}", summary_line("sinks", &result));
}

/// A child process killed and reaped when dropped: a benchmark that panics (a timeout, a
/// short stream) leaves no sink or producer running (two webhook sinks of a failed run
/// outlived it by an hour).
/// A child process killed and reaped when dropped, also when a benchmark part panics.
struct Reaped(std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `delivered` until the target of `walbrook sink <kind>` holds `events` events;
/// panics when the sink exits or `deadline` passes first.
fn wait_for_target(
    kind: &str,
    sink: &mut Reaped,
    events: u64,
    deadline: Instant,
    mut delivered: impl FnMut() -> u64,
) {
    loop {
        let count = delivered();
        if count >= events {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sink {kind}: {count} of {events} events"
        );
        if let Ok(Some(status)) = sink.0.try_wait() {
            panic!("walbrook sink {kind} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many change events the JetStream stream `name` holds: every message counted with
/// its `Walbrook-Events` (protocol §3.6; absent means one).
fn stream_events(nats_url: &str, name: &str) -> u64 {
    use futures::StreamExt;
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.expect("nats"));
            let mut stream = js.get_stream(name).await.expect("the change stream");
            let messages = stream.info().await.expect("stream info").state.messages;
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                .await
                .expect("an ordered consumer");
            let mut delivered = consumer.messages().await.expect("reading the stream");
            let mut events = 0;
            for _ in 0..messages {
                let message = tokio::time::timeout(Duration::from_secs(30), delivered.next())
                    .await
                    .expect("the stream's messages arrive")
                    .expect("a message")
                    .expect("a readable message");
                events += message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Walbrook-Events"))
                    .map_or(1, |n| n.as_str().parse::<u64>().expect("a count"));
            }
            events
        })
}

/// A ratio of the summary: result file, field, label, and the issue's target when set.
const RATIOS: &[(&str, &str, &str, Option<f64>)] = &[
    (
        "backlog",
        "ratio_walbrook_to_pg_recvlogical",
        "produce / pg_recvlogical",
        Some(0.8),
    ),
    (
        "backlog",
        "ratio_walbrook_to_raw_jetstream",
        "produce / raw JetStream",
        None,
    ),
    (
        "snapshot",
        "ratio_snapshot_to_copy",
        "snapshot / COPY",
        Some(0.7),
    ),
    (
        "apply",
        "ratio_walbrook_to_native",
        "sink postgres / native sub.",
        Some(1.5),
    ),
    (
        "apply-inserts",
        "ratio_walbrook_to_native",
        "same, inserts only",
        None,
    ),
];

/// Writes `summary.json` (every result file of `out`, with its run metadata), `summary.txt`
/// (one line per result) and `chart.png` (the ratios, with the issues' targets).
fn summarize(out: &std::path::Path) {
    let mut all = serde_json::Map::new();
    let mut text = String::new();
    for name in [
        "backlog",
        "snapshot",
        "latency",
        "apply",
        "apply-inserts",
        "memory",
        "sinks",
    ] {
        let Ok(body) = std::fs::read_to_string(out.join(format!("{name}.json"))) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        text.push_str(&summary_line(name, &value));
        text.push('\n');
        all.insert(name.into(), value);
    }
    if let Some(run) = RUN.get() {
        text.push_str(&format!(
            "machine: {} cores, {}, {} memory, load at start {}; walbrook {}{}, PostgreSQL {}, \
             nats-server {}, {}\n",
            run["cores"],
            run["cpu_model"].as_str().unwrap_or("?"),
            run["memory_total"].as_str().unwrap_or("?"),
            run["load_average_at_start"].as_str().unwrap_or("?"),
            run["walbrook_git_rev"].as_str().unwrap_or("?"),
            if run["walbrook_tree_modified"] == true {
                " (modified)"
            } else {
                ""
            },
            run["postgres"].as_str().unwrap_or("?"),
            run["nats_server"].as_str().unwrap_or("?"),
            run["rustc"].as_str().unwrap_or("?"),
        ));
    }
    let summary = serde_json::json!({ "current_run": RUN.get(), "results": all });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .expect("write summary");
    std::fs::write(out.join("summary.txt"), &text).expect("write summary");
    let bars: Vec<(String, f64, Option<f64>)> = RATIOS
        .iter()
        .filter_map(|(file, field, label, target)| {
            let v = all.get(*file)?.get(*field)?.as_f64()?;
            Some((label.to_string(), v, *target))
        })
        .collect();
    let chart = out.join("chart.png");
    match draw_chart(&chart, &bars) {
        Ok(()) => println!(
            "summary: {}, {}",
            out.join("summary.txt").display(),
            chart.display()
        ),
        Err(e) => eprintln!("no chart: {e}"),
    }
    print!("{text}");
}

fn summary_line(name: &str, v: &serde_json::Value) -> String {
    let f = |field: &str| v[field].as_f64().unwrap_or(f64::NAN);
    match name {
        "backlog" => format!(
            "backlog drain, {} rows: produce {:.0} rows/s, pg_recvlogical {:.0} rows/s, ratio {:.2} \
             (target 0.8); producer peak RSS {:.0} MiB",
            v["rows"],
            f("walbrook_rows_per_second"),
            f("pg_recvlogical_rows_per_second"),
            f("ratio_walbrook_to_pg_recvlogical"),
            f("walbrook_peak_rss_mib")
        ),
        "snapshot" => format!(
            "snapshot, {} rows: {:.0} rows/s, COPY {:.0} rows/s, ratio {:.2} (target 0.7)",
            v["rows"],
            f("snapshot_rows_per_second"),
            f("copy_rows_per_second"),
            f("ratio_snapshot_to_copy")
        ),
        "latency" => format!(
            "latency at {:.0} changes/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            f("achieved_changes_per_second"),
            f("p50_ms"),
            f("p99_ms"),
            f("max_ms")
        ),
        "apply" | "apply-inserts" => format!(
            "{name}, {} changes: sink postgres {:.0} changes/s, native subscription {:.0} changes/s, \
             ratio {:.2}{}",
            v["changes"],
            f("walbrook_sink_changes_per_second"),
            f("native_subscription_changes_per_second"),
            f("ratio_walbrook_to_native"),
            if name == "apply" { " (target 1.5)" } else { "" }
        ),
        "memory" => format!(
            "memory, one {}-row transaction: producer peak RSS {:.0} MiB (target 100), \
             sink postgres peak RSS {:.0} MiB",
            v["rows_in_one_transaction"],
            f("producer_peak_rss_mib"),
            f("sink_postgres_peak_rss_mib")
        ),
        "sinks" => format!(
            "sinks, {} inserts: webhook {:.0} events/s (one POST per event), {:.0} events/s \
             (--batch), elasticsearch sink {:.0} events/s against {} (no Elasticsearch engine \
             runs here)",
            v["events"],
            f("webhook_events_per_second"),
            f("webhook_batch_events_per_second"),
            f("elasticsearch_events_per_second"),
            v["search_engine"].as_str().unwrap_or("?"),
        ),
        _ => String::new(),
    }
}

/// Fonts tried for the chart's text; without one the chart has bars and lines only.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Bars of `(label, ratio, target)`; a target is a red line across its bar, 1.0 a grey one.
fn draw_chart(
    path: &std::path::Path,
    bars: &[(String, f64, Option<f64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    if bars.is_empty() {
        return Err("no ratios to draw".into());
    }
    let labels = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .is_some_and(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        });
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = bars
        .iter()
        .map(|(_, v, t)| v.max(t.unwrap_or(0.0)))
        .fold(1.0, f64::max)
        * 1.25;
    let n = bars.len() as f64;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(24);
    if labels {
        builder
            .caption(
                "Walbrook / reference, same run (red: target)",
                ("sans-serif", 24),
            )
            .y_label_area_size(48);
    }
    let mut chart = builder.build_cartesian_2d(0.0..n, 0.0..top)?;
    if labels {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("ratio")
            .draw()?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (n, 1.0)],
        RGBColor(150, 150, 150).stroke_width(1),
    )))?;
    for (i, (label, value, target)) in bars.iter().enumerate() {
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.15, 0.0), (x + 0.85, *value)],
            RGBColor(60, 110, 180).filled(),
        )))?;
        if let Some(t) = target {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x + 0.05, *t), (x + 0.95, *t)],
                RED.stroke_width(3),
            )))?;
        }
        if labels {
            let style = ("sans-serif", 16).into_font().color(&BLACK).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Bottom,
                ),
            );
            chart.draw_series(std::iter::once(Text::new(
                format!("{label}: {value:.2}"),
                (x + 0.5, value + top * 0.02),
                style,
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

/// (a)–(e): backlog drain versus pg_recvlogical and raw JetStream, then the snapshot
/// benchmark on the same table.
fn backlog_bench(pg: &PgServer, nats: &NatsServer, walbrook: &std::path::Path, args: &Args) {
    let db = pg.fresh_database("bench");
    let reference_slot = format!("{}_ref", db.name());
    let walbrook_slot = db.slot_name();
    let publication = db.publication_name();
    db.psql(&format!(
        "CREATE TABLE bench (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2),
                             at timestamptz NOT NULL DEFAULT now(), flag boolean);
         CREATE PUBLICATION {publication} FOR TABLE bench WITH (publish_via_partition_root = true);"
    ))
    .expect("schema");
    for slot in [&reference_slot, &walbrook_slot] {
        db.psql(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))
        .expect("slot");
    }
    eprintln!(
        "filling a backlog of {} rows ({} rows per transaction)…",
        args.rows, args.rows_per_tx
    );
    let fill = Instant::now();
    let mut first = 0;
    while first < args.rows {
        let last = (first + args.rows_per_tx).min(args.rows) - 1;
        db.psql(&format!(
            "INSERT INTO bench SELECT g, 'name-' || g, (g % 100000) / 100.0, now(), g % 2 = 0
               FROM generate_series({first}, {last}) g"
        ))
        .expect("insert");
        first = last + 1;
    }
    let end_lsn = db
        .psql("SELECT pg_current_wal_lsn()")
        .expect("lsn")
        .trim()
        .to_string();
    eprintln!(
        "backlog filled in {:.1}s, up to {end_lsn}",
        fill.elapsed().as_secs_f64()
    );

    // (a) pg_recvlogical drains its slot to /dev/null.
    let bin = pg.bin_dir().expect("own cluster").join("pg_recvlogical");
    let started = Instant::now();
    let status = Command::new(&bin)
        .args([
            "-d",
            &db.url(),
            "--slot",
            &reference_slot,
            "--start",
            "--no-loop",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            &format!("publication_names={publication}"),
        ])
        .args(["--endpos", &end_lsn, "-f", "/dev/null"])
        .status()
        .expect("pg_recvlogical");
    assert!(status.success(), "pg_recvlogical failed");
    let reference_secs = started.elapsed().as_secs_f64();
    eprintln!("pg_recvlogical: {reference_secs:.2}s");

    // (b) walbrook produce drains the other slot into JetStream.
    let started = Instant::now();
    let mut producer = spawn_producer(
        walbrook,
        &db,
        &nats.url(),
        "BENCH",
        "public.bench",
        &args.out.join("producer.log"),
    );
    let target: walbrook_producer_lsn::Lsn = end_lsn.parse().expect("lsn");
    let mut peak_kib = 0;
    loop {
        if let Some(kib) = peak_rss_kib(producer.id()) {
            peak_kib = peak_kib.max(kib);
        }
        let confirmed = db
            .psql(&format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{walbrook_slot}'"
            ))
            .ok()
            .and_then(|t| t.trim().parse::<walbrook_producer_lsn::Lsn>().ok());
        if confirmed.is_some_and(|c| c >= target) {
            break;
        }
        if let Ok(Some(status)) = producer.try_wait() {
            panic!("the producer exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let walbrook_secs = started.elapsed().as_secs_f64();
    if let Some(kib) = peak_rss_kib(producer.id()) {
        peak_kib = peak_kib.max(kib);
    }
    let _ = producer.kill();
    let _ = producer.wait();
    eprintln!(
        "walbrook produce: {walbrook_secs:.2}s (peak RSS {} MiB)",
        peak_kib / 1024
    );

    // (c) Raw JetStream: the same number of messages of the producer's average size,
    // each with a Nats-Msg-Id, published pipelined (1024 acks in flight) from one
    // connection into a file-storage stream: the ceiling NATS sets on this machine.
    let (average_bytes, stored_messages) = average_event_bytes(&nats.url(), db.name(), args.rows);
    let span_secs = stored_span_seconds(&nats.url(), db.name());
    eprintln!(
        "walbrook produce, first to last event stored: {span_secs:.2}s ({:.0} rows/s)",
        args.rows as f64 / span_secs
    );
    let raw_secs = raw_jetstream(&nats.url(), args.rows, average_bytes, false);
    eprintln!("raw JetStream publish: {raw_secs:.2}s ({average_bytes} B messages)");
    // (d) The same with the header set Walbrook puts on every event (docs/protocol.md
    // §3.3), including the Nats-Expected-Last-Msg-Id chain: what the headers cost.
    let raw_headers_secs = raw_jetstream(&nats.url(), args.rows, average_bytes, true);
    eprintln!("raw JetStream publish with Walbrook's headers: {raw_headers_secs:.2}s");

    let ratio = reference_secs / walbrook_secs;
    let result = serde_json::json!({
        "benchmark": "backlog_drain",
        "rows": args.rows,
        "rows_per_transaction": args.rows_per_tx,
        "pg_recvlogical_seconds": reference_secs,
        "walbrook_seconds": walbrook_secs,
        "pg_recvlogical_rows_per_second": args.rows as f64 / reference_secs,
        "walbrook_rows_per_second": args.rows as f64 / walbrook_secs,
        "ratio_walbrook_to_pg_recvlogical": ratio,
        "walbrook_first_to_last_stored_seconds": span_secs,
        "walbrook_steady_rows_per_second": args.rows as f64 / span_secs,
        "walbrook_peak_rss_mib": peak_kib as f64 / 1024.0,
        "raw_jetstream_seconds": raw_secs,
        "raw_jetstream_messages_per_second": args.rows as f64 / raw_secs,
        "event_bytes": average_bytes,
        "walbrook_messages": stored_messages,
        "walbrook_events_per_message": args.rows as f64 / stored_messages.max(1) as f64,
        "ratio_walbrook_to_raw_jetstream": raw_secs / walbrook_secs,
        "raw_jetstream_with_walbrook_headers_messages_per_second": args.rows as f64 / raw_headers_secs,
        "ratio_walbrook_to_raw_jetstream_with_headers": raw_headers_secs / walbrook_secs,
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "postgres": db.psql("SHOW server_version").unwrap_or_default().trim(),
        },
    });
    let path = args.out.join("backlog.json");
    write_result(&path, result.clone());
    println!(
        "backlog drain, {} rows: pg_recvlogical {:.0} rows/s, walbrook {:.0} rows/s (ratio {:.2}), \
         raw JetStream publish {:.0} msgs/s (walbrook/raw {:.2}), with Walbrook's headers {:.0} msgs/s \
         (walbrook/that {:.2}), producer peak RSS {:.0} MiB ({})",
        args.rows,
        args.rows as f64 / reference_secs,
        args.rows as f64 / walbrook_secs,
        ratio,
        args.rows as f64 / raw_secs,
        raw_secs / walbrook_secs,
        args.rows as f64 / raw_headers_secs,
        raw_headers_secs / walbrook_secs,
        peak_kib as f64 / 1024.0,
        path.display()
    );

    snapshot_bench(pg, &db, nats, walbrook, args.rows, &args.out);
}

/// (f) Commit → receive latency at a steady rate; see the module docs.
fn latency_bench(
    pg: &PgServer,
    nats_url: &str,
    walbrook: &std::path::Path,
    rate: u64,
    seconds: u64,
    out: &std::path::Path,
) {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
    use futures::StreamExt;

    let db = pg.fresh_database("latency");
    db.psql("CREATE TABLE lat (id bigint PRIMARY KEY, note text NOT NULL)")
        .expect("table");
    let mut producer = spawn_producer(
        walbrook,
        &db,
        nats_url,
        "LAT",
        "public.lat",
        &out.join("producer-latency.log"),
    );
    let rows_per_tx = (rate / 100).max(1);
    let result = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let (sql, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            // The bench cluster runs with synchronous_commit = off (to fill backlogs fast);
            // a walsender sends only flushed WAL, so with it off every commit would wait for
            // the WAL writer (wal_writer_delay, 200 ms) before it could be streamed: that
            // delay, not Walbrook, dominated the first measurements. Writers that care
            // about latency commit synchronously.
            sql.batch_execute("SET synchronous_commit = on")
                .await
                .expect("synchronous commit");
            let js = jetstream::new(async_nats::connect(nats_url).await.expect("nats"));
            let stream_name = format!("LAT_{}_WAL", db.name());
            let deadline = Instant::now() + Duration::from_secs(60);
            let stream = loop {
                let active = db
                    .psql(&format!(
                        "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = '{}'",
                        db.slot_name()
                    ))
                    .unwrap_or_default();
                if active.trim() == "1"
                    && let Ok(stream) = js.get_stream(&stream_name).await
                {
                    break stream;
                }
                assert!(Instant::now() < deadline, "the producer never started");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let consumer = stream
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::New,
                    ..Default::default()
                })
                .await
                .expect("consumer");
            let mut messages = consumer.messages().await.expect("messages");
            let received: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
            let sink = received.clone();
            let reader = tokio::spawn(async move {
                while let Some(Ok(message)) = messages.next().await {
                    let at = Instant::now();
                    // A message may carry several events (docs/protocol.md §3.6), each
                    // with its row marker.
                    let body = String::from_utf8_lossy(&message.payload);
                    for rest in body.split("row-").skip(1) {
                        if let Some(id) = rest
                            .split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|d| d.parse().ok())
                        {
                            sink.lock().unwrap().push((id, at));
                        }
                    }
                }
            });
            let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let started = Instant::now();
            let warm_up = Duration::from_secs(2);
            let mut next_id: i64 = 0;
            let mut written = 0u64;
            while started.elapsed() < Duration::from_secs(seconds) + warm_up {
                ticker.tick().await;
                let first = next_id;
                let last = first + rows_per_tx as i64 - 1;
                sql.execute(
                    "INSERT INTO lat SELECT g, 'row-' || g FROM generate_series($1::bigint, $2::bigint) g",
                    &[&first, &last],
                )
                .await
                .expect("insert");
                let at = Instant::now();
                if started.elapsed() >= warm_up {
                    let mut map = committed.lock().unwrap();
                    for id in first..=last {
                        map.insert(id, at);
                    }
                    written += rows_per_tx;
                }
                next_id = last + 1;
            }
            let measured = started.elapsed() - warm_up;
            tokio::time::sleep(Duration::from_secs(3)).await;
            reader.abort();
            let committed = committed.lock().unwrap();
            let mut latencies: Vec<Duration> = received
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(id, at)| committed.get(id).map(|c| at.saturating_duration_since(*c)))
                .collect();
            latencies.sort();
            let pick = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
            assert!(!latencies.is_empty(), "no event arrived");
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            serde_json::json!({
                "benchmark": "latency",
                "target_changes_per_second": rate,
                "achieved_changes_per_second": written as f64 / measured.as_secs_f64(),
                "rows_per_transaction": rows_per_tx,
                "seconds": measured.as_secs_f64(),
                "changes_measured": latencies.len(),
                "changes_written": written,
                "p50_ms": ms(pick(50)),
                "p99_ms": ms(pick(99)),
                "max_ms": ms(*latencies.last().unwrap()),
            })
        });
    let _ = producer.kill();
    let _ = producer.wait();
    let path = out.join("latency.json");
    write_result(&path, result.clone());
    println!(
        "latency at {:.0} changes/s (target {rate}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} changes ({})",
        result["achieved_changes_per_second"]
            .as_f64()
            .unwrap_or(0.0),
        result["p50_ms"].as_f64().unwrap_or(0.0),
        result["p99_ms"].as_f64().unwrap_or(0.0),
        result["max_ms"].as_f64().unwrap_or(0.0),
        result["changes_measured"],
        path.display()
    );
}

/// (d) and (e): COPY of the table versus a Walbrook snapshot of it into JetStream.
///
/// Both sides must read the same table state. The backlog part leaves `bench` as 1,000
/// freshly committed, never vacuumed transactions; whichever reads it first pays for
/// setting hint bits, and autovacuum (1M inserted rows pass its insert threshold) or a
/// checkpoint may run during one side and not the other. So the timed pairs run on a
/// prepared table: `VACUUM (ANALYZE)`, `CHECKPOINT` and an untimed warm-up COPY, then
/// COPY, snapshot, snapshot, COPY (ABBA: drift in the machine's state favours neither
/// side); the ratio is the sum of both COPY times over the sum of both snapshot times.
/// Before that, one pair runs on the table as the backlog left it (COPY first, then
/// the snapshot, then COPY again: the method of earlier runs), reported as `as_loaded`
/// for comparison. Every step records its CPU use (busy cores of the machine; CPU
/// seconds of the producer and nats-server) and whether autovacuum or a checkpoint ran.
fn snapshot_bench(
    pg: &PgServer,
    db: &walbrook_harness::TestDb<'_>,
    nats: &NatsServer,
    walbrook: &std::path::Path,
    rows: u64,
    out: &std::path::Path,
) {
    let nats_url = nats.url();
    let nats_pid = nats.process_info().map(|p| p.pid);
    let mut producer = spawn_producer_logging(
        walbrook,
        db,
        &nats_url,
        "BENCH",
        "public.bench",
        &out.join("producer-snapshot.log"),
        // The snapshot's own timing of its reader and publisher ("snapshot rows read",
        // "snapshot rows published").
        "warn,walbrook_producer::snapshot=debug",
    );
    let pids = Pids {
        producer: producer.id(),
        nats: nats_pid,
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = runtime.block_on(async {
        let client = async_nats::connect(&nats_url).await.expect("nats");
        let listing = format!("BENCH.{}.rpc.snapshots", db.name());
        while client.request(listing.clone(), "{}".into()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client
    });
    let copy = || measure(pg, db, &pids, || time_copy(pg, db));
    let snapshot = || {
        measure(pg, db, &pids, || {
            runtime.block_on(time_snapshot(&client, db.name(), rows))
        })
    };

    eprintln!("snapshot benchmark, table as the backlog left it: COPY, snapshot, COPY");
    let loaded_copy = copy();
    let loaded_snapshot = snapshot();
    let loaded_copy_again = copy();

    eprintln!("snapshot benchmark: VACUUM (ANALYZE), CHECKPOINT, warm-up COPY");
    let prepare = Instant::now();
    db.psql("VACUUM (ANALYZE) bench").expect("vacuum");
    db.psql("CHECKPOINT").expect("checkpoint");
    time_copy(pg, db);
    let prepare_secs = prepare.elapsed().as_secs_f64();
    eprintln!("snapshot benchmark, prepared table: COPY, snapshot, snapshot, COPY");
    let copy_a = copy();
    let snapshot_a = snapshot();
    let snapshot_b = snapshot();
    let copy_b = copy();
    let peak_kib = peak_rss_kib(pids.producer).unwrap_or(0);
    let _ = producer.kill();
    let _ = producer.wait();

    let copy_secs = (copy_a.seconds + copy_b.seconds) / 2.0;
    let snapshot_secs = (snapshot_a.seconds + snapshot_b.seconds) / 2.0;
    let ratio = copy_secs / snapshot_secs;
    let chunk_size = snapshot_a.detail["chunk_size"].clone();
    let result = serde_json::json!({
        "benchmark": "snapshot",
        "rows": rows,
        "method": "VACUUM (ANALYZE), CHECKPOINT, warm-up COPY; then COPY, snapshot, snapshot, COPY; \
                   ratio = mean COPY seconds / mean snapshot seconds",
        "copy_seconds": copy_secs,
        "copy_rows_per_second": rows as f64 / copy_secs,
        "snapshot_seconds": snapshot_secs,
        "snapshot_rows_per_second": rows as f64 / snapshot_secs,
        "ratio_snapshot_to_copy": ratio,
        "ratio_first_pair": copy_a.seconds / snapshot_a.seconds,
        "ratio_second_pair": copy_b.seconds / snapshot_b.seconds,
        "producer_peak_rss_mib": peak_kib as f64 / 1024.0,
        "chunk_size": chunk_size,
        "steps": {
            "copy_a": copy_a.json(),
            "snapshot_a": snapshot_a.json(),
            "snapshot_b": snapshot_b.json(),
            "copy_b": copy_b.json(),
        },
        "preparation_seconds": prepare_secs,
        "as_loaded": {
            "ratio_snapshot_to_first_copy": loaded_copy.seconds / loaded_snapshot.seconds,
            "ratio_snapshot_to_second_copy": loaded_copy_again.seconds / loaded_snapshot.seconds,
            "copy": loaded_copy.json(),
            "snapshot": loaded_snapshot.json(),
            "copy_again": loaded_copy_again.json(),
        },
    });
    let path = out.join("snapshot.json");
    write_result(&path, result.clone());
    println!(
        "snapshot, {rows} rows (prepared table, COPY/snapshot/snapshot/COPY): COPY {:.0} rows/s, \
         walbrook snapshot into JetStream {:.0} rows/s (ratio {ratio:.2}; pairs {:.2}, {:.2}), \
         producer peak RSS {:.0} MiB; table as loaded: ratio {:.2} ({})",
        rows as f64 / copy_secs,
        rows as f64 / snapshot_secs,
        copy_a.seconds / snapshot_a.seconds,
        copy_b.seconds / snapshot_b.seconds,
        peak_kib as f64 / 1024.0,
        loaded_copy.seconds / loaded_snapshot.seconds,
        path.display()
    );
}

/// Process ids whose CPU time a snapshot benchmark step records.
struct Pids {
    producer: u32,
    nats: Option<u32>,
}

/// One timed step of the snapshot benchmark and what ran on the machine meanwhile.
struct Step {
    seconds: f64,
    /// Average busy cores of the whole machine (from `/proc/stat`).
    busy_cores: f64,
    producer_cpu_seconds: f64,
    nats_cpu_seconds: f64,
    /// Autovacuum or autoanalyze runs on `bench` that finished during the step.
    autovacuum_runs: i64,
    /// Checkpoints that finished during the step.
    checkpoints: i64,
    /// Step-specific fields (the snapshot's id and chunk size).
    detail: serde_json::Value,
}

impl Step {
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "seconds": self.seconds,
            "busy_cores": self.busy_cores,
            "producer_cpu_seconds": self.producer_cpu_seconds,
            "nats_cpu_seconds": self.nats_cpu_seconds,
            "autovacuum_runs": self.autovacuum_runs,
            "checkpoints": self.checkpoints,
        });
        if let (Some(v), Some(detail)) = (v.as_object_mut(), self.detail.as_object()) {
            v.extend(detail.clone());
        }
        v
    }
}

/// Runs `step` (which returns its own timed seconds) and records the machine around it.
fn measure(
    pg: &PgServer,
    db: &walbrook_harness::TestDb<'_>,
    pids: &Pids,
    step: impl FnOnce() -> (f64, serde_json::Value),
) -> Step {
    let counters = || {
        let text = pg
            .psql(
                db.name(),
                "SELECT (SELECT autovacuum_count + autoanalyze_count FROM pg_stat_user_tables
                          WHERE relname = 'bench')
                        || ' ' || (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)",
            )
            .unwrap_or_default();
        let mut it = text
            .split_whitespace()
            .map(|v| v.parse::<i64>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let (vacuums, checkpoints) = counters();
    let machine = machine_ticks();
    let producer = process_ticks(pids.producer);
    let nats = pids.nats.map_or(0, process_ticks);
    let (seconds, detail) = step();
    let machine_after = machine_ticks();
    let producer_after = process_ticks(pids.producer);
    let nats_after = pids.nats.map_or(0, process_ticks);
    // Statistics reach the cumulative views within about a second.
    std::thread::sleep(Duration::from_millis(1200));
    let (vacuums_after, checkpoints_after) = counters();
    let tick = clock_ticks_per_second();
    let total = (machine_after.0 - machine.0) as f64;
    let busy = total - (machine_after.1 - machine.1) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let step = Step {
        seconds,
        busy_cores: if total > 0.0 {
            busy / total * cores
        } else {
            0.0
        },
        producer_cpu_seconds: (producer_after - producer) as f64 / tick,
        nats_cpu_seconds: (nats_after - nats) as f64 / tick,
        autovacuum_runs: vacuums_after - vacuums,
        checkpoints: checkpoints_after - checkpoints,
        detail,
    };
    eprintln!("  {}", step.json());
    step
}

/// (all, idle + iowait) jiffies of the machine.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (fields.iter().sum(), idle)
}

/// User + system CPU jiffies of process `pid` (0 when it is gone).
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is field 3, utime 14.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// `getconf CLK_TCK` (the unit of `/proc` CPU times).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Seconds of `COPY (SELECT …) TO STDOUT` of `bench` through psql to /dev/null.
fn time_copy(pg: &PgServer, db: &walbrook_harness::TestDb<'_>) -> (f64, serde_json::Value) {
    let psql = pg.bin_dir().expect("own cluster").join("psql");
    let started = Instant::now();
    let status = Command::new(&psql)
        .args(["-X", "-q", "-d", &db.url(), "-c"])
        .arg("COPY (SELECT id, name, amount, at, flag FROM public.bench) TO STDOUT")
        .stdout(Stdio::null())
        .status()
        .expect("psql");
    assert!(status.success(), "COPY failed");
    let secs = started.elapsed().as_secs_f64();
    eprintln!("COPY TO STDOUT: {secs:.2}s");
    (secs, serde_json::json!({ "step": "copy" }))
}

/// Seconds of one snapshot of `public.bench`: from the RPC request until JetStream
/// stored its `end` message (the stored message's time, so the listing's poll interval
/// does not count).
async fn time_snapshot(
    client: &async_nats::Client,
    database: &str,
    rows: u64,
) -> (f64, serde_json::Value) {
    let rpc = format!("BENCH.{database}.rpc.snapshot");
    let listing = format!("BENCH.{database}.rpc.snapshots");
    let requested = std::time::SystemTime::now();
    let started = Instant::now();
    let reply = client
        .request(rpc, r#"{"schema":"public","table":"bench"}"#.into())
        .await
        .expect("snapshot RPC");
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).expect("accepted");
    let id = info["id"].as_str().expect("snapshot id").to_string();
    loop {
        let answer = client
            .request(listing.clone(), format!(r#"{{"id":"{id}"}}"#).into())
            .await
            .expect("listing");
        let list: serde_json::Value =
            serde_json::from_slice(&answer.payload).expect("listing JSON");
        match list["snapshots"][0]["status"].as_str() {
            Some("done") => {
                assert_eq!(list["snapshots"][0]["rows"], rows, "every row");
                break;
            }
            Some("running") => {}
            other => panic!("snapshot ended {other:?}: {list}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let polled = started.elapsed().as_secs_f64();
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream(info["stream"].as_str().expect("stream"))
        .await
        .expect("snapshot stream");
    let end = stream
        .get_last_raw_message_by_subject(info["subject"].as_str().expect("subject"))
        .await
        .expect("end message");
    assert!(
        end.headers
            .get("Walbrook-Snapshot-Control")
            .is_some_and(|v| v.as_str() == "end"),
        "the snapshot's last message is its end"
    );
    let requested_nanos = requested
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let secs = (end.time.unix_timestamp_nanos() - requested_nanos) as f64 / 1e9;
    eprintln!("walbrook snapshot: {secs:.2}s (done seen after {polled:.2}s)");
    (
        secs,
        serde_json::json!({
            "step": "snapshot",
            "id": id,
            "chunk_size": info["chunk_size"],
            "done_seen_after_seconds": polled,
        }),
    )
}

/// Seconds between JetStream storing the first and the last event: the producer's
/// steady-state drain time, without process start-up and the final slot confirmation.
fn stored_span_seconds(nats_url: &str, database: &str) -> f64 {
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let client = async_nats::connect(nats_url).await.expect("nats");
            let js = async_nats::jetstream::new(client);
            let mut stream = js
                .get_stream(format!("BENCH_{database}_WAL"))
                .await
                .expect("change stream");
            let state = stream.info().await.expect("stream info").state.clone();
            let first = stream
                .get_raw_message(state.first_sequence)
                .await
                .expect("first event");
            let last = stream
                .get_raw_message(state.last_sequence)
                .await
                .expect("last event");
            (last.time - first.time).as_seconds_f64()
        })
}

/// Average stored size per event of the `events` the producer stored, and how many
/// messages carry them (several events may share one, docs/protocol.md §3.6).
fn average_event_bytes(nats_url: &str, database: &str, events: u64) -> (usize, u64) {
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let client = async_nats::connect(nats_url).await.expect("nats");
            let js = async_nats::jetstream::new(client);
            let mut stream = js
                .get_stream(format!("BENCH_{database}_WAL"))
                .await
                .expect("change stream");
            let info = stream.info().await.expect("stream info");
            let bytes = info.state.bytes / events.max(1);
            (usize::try_from(bytes).unwrap_or(256), info.state.messages)
        })
}

/// Seconds to publish `count` messages of `size` bytes with pipelined acks; with
/// `walbrook_headers`, each message carries the headers a Walbrook event carries.
fn raw_jetstream(nats_url: &str, count: u64, size: usize, walbrook_headers: bool) -> f64 {
    use async_nats::jetstream::{self, stream};
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let client = async_nats::connect(nats_url).await.expect("nats");
            let js = jetstream::ContextBuilder::new()
                .max_ack_inflight(2048)
                .build(client);
            let name = if walbrook_headers { "RAWH" } else { "RAW" };
            let subject = if walbrook_headers { "rawh.t" } else { "raw.t" };
            js.create_stream(stream::Config {
                name: name.into(),
                subjects: vec![format!("{subject}.>"), subject.into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("raw stream");
            let payload = bytes::Bytes::from(vec![0x5a; size]);
            let started = Instant::now();
            let mut window = std::collections::VecDeque::new();
            for i in 0..count {
                if window.len() >= 1024 {
                    let ack: async_nats::jetstream::context::PublishAckFuture =
                        window.pop_front().expect("non-empty");
                    ack.await.expect("ack");
                }
                let mut headers = async_nats::HeaderMap::new();
                let id = |i: u64| walbrook_protocol::MessageId::new(walbrook_protocol::Lsn(i), 0);
                headers.insert("Nats-Msg-Id", id(i).to_string().as_str());
                if walbrook_headers {
                    headers.insert("Walbrook-Fingerprint", "0123456789abcdef");
                    headers.insert("Walbrook-Op", "insert");
                    headers.insert("Walbrook-Commit-Lsn", format!("0/{i:X}").as_str());
                    headers.insert("Walbrook-Ordinal", "0");
                    if i > 0 {
                        headers.insert("Nats-Expected-Last-Msg-Id", id(i - 1).to_string().as_str());
                    }
                }
                window.push_back(
                    js.publish_with_headers(subject, headers, payload.clone())
                        .await
                        .expect("publish"),
                );
            }
            for ack in window {
                ack.await.expect("ack");
            }
            let secs = started.elapsed().as_secs_f64();
            // Gone before the snapshot benchmark: for the duplicate window (2 min) a
            // stream keeps every Nats-Msg-Id in memory, and nats-server's garbage
            // collector then scans them all, which cost the snapshot that followed
            // 0.2–0.5 s of nats-server CPU per 1M rows (docs/testing.md).
            js.delete_stream(name).await.expect("delete the raw stream");
            secs
        })
}

/// The LSN text form, parsed without depending on the producer crate.
mod walbrook_producer_lsn {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Lsn(u64);

    impl std::str::FromStr for Lsn {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, Self::Err> {
            let (hi, lo) = s.split_once('/').ok_or_else(|| s.to_string())?;
            let hi = u64::from_str_radix(hi, 16).map_err(|e| e.to_string())?;
            let lo = u64::from_str_radix(lo, 16).map_err(|e| e.to_string())?;
            Ok(Lsn((hi << 32) | lo))
        }
    }
}

/// The apply workload's table, in the source and both targets.
const APPLY_TABLE: &str = "CREATE TABLE apply_t (id bigint PRIMARY KEY, name text NOT NULL,
    amount numeric(12,2), at timestamptz NOT NULL, flag boolean)";

/// Count and checksum of a table's rows, in id order (the same text in equal tables).
fn table_checksum(pg: &PgServer, db: &str, table: &str) -> String {
    pg.psql(
        db,
        &format!(
            "SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) FROM {table} t"
        ),
    )
    .expect("checksum")
    .trim()
    .to_string()
}

/// Starts `walbrook produce` on `db` for `tables`.
fn spawn_producer(
    walbrook: &std::path::Path,
    db: &walbrook_harness::TestDb<'_>,
    nats_url: &str,
    root: &str,
    tables: &str,
    log: &std::path::Path,
) -> Reaped {
    spawn_producer_logging(walbrook, db, nats_url, root, tables, log, "warn")
}

/// [`spawn_producer`] with `RUST_LOG` set to `filter`.
fn spawn_producer_logging(
    walbrook: &std::path::Path,
    db: &walbrook_harness::TestDb<'_>,
    nats_url: &str,
    root: &str,
    tables: &str,
    log: &std::path::Path,
    filter: &str,
) -> Reaped {
    let log = std::fs::File::create(log).ok();
    Reaped(
        walbrook_harness::product_command(walbrook)
            .arg("produce")
            .env("WALBROOK_PG_URL", db.url())
            .env("WALBROOK_NATS_URL", nats_url)
            .env("WALBROOK_TABLES", tables)
            .env("WALBROOK_SLOT", db.slot_name())
            .env("WALBROOK_PUBLICATION", db.publication_name())
            .env("WALBROOK_ROOT", root)
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (build it next to walbrook-bench)",
                    walbrook.display()
                )
            }),
    )
}

/// Starts `walbrook sink postgres` reading `source`'s stream into `target_url`.
fn spawn_pg_sink(
    walbrook: &std::path::Path,
    source: &walbrook_harness::TestDb<'_>,
    target_url: &str,
    nats_url: &str,
    root: &str,
    tables: &str,
    log: &std::path::Path,
) -> Reaped {
    let log = std::fs::File::create(log).ok();
    Reaped(
        walbrook_harness::product_command(walbrook)
            .args(["sink", "postgres"])
            .env("WALBROOK_NATS_URL", nats_url)
            .env("WALBROOK_ROOT", root)
            .env("WALBROOK_SINK_SOURCE_DB", source.name())
            .env("WALBROOK_SINK_CONSUMER", "bench")
            .env("WALBROOK_SINK_TABLES", tables)
            .env("WALBROOK_SINK_TARGET_URL", target_url)
            .env(
                "RUST_LOG",
                // Profiling: e.g. walbrook_pg_client=debug,walbrook_client::runner=debug.
                std::env::var("BENCH_SINK_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // Experiments: the sink's --batch-events (default: the sink's own default).
            .envs(
                std::env::var("BENCH_SINK_BATCH_EVENTS")
                    .ok()
                    .map(|n| ("WALBROOK_SINK_BATCH_EVENTS", n)),
            )
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", walbrook.display())),
    )
}

/// Waits until `slot` has confirmed `lsn` (panics when `child` exits first).
fn wait_confirmed(
    db: &walbrook_harness::TestDb<'_>,
    slot: &str,
    lsn: &str,
    child: &mut std::process::Child,
) {
    let target: walbrook_producer_lsn::Lsn = lsn.parse().expect("lsn");
    loop {
        let confirmed = db
            .psql(&format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .ok()
            .and_then(|t| t.trim().parse::<walbrook_producer_lsn::Lsn>().ok());
        if confirmed.is_some_and(|c| c >= target) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the producer exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `sql` (one boolean) on `url` every 20 ms until it is true; panics after
/// `limit` or when `child` exits. Returns the seconds since `started`.
fn wait_true(
    url: &str,
    sql: &str,
    started: Instant,
    limit: Duration,
    mut child: Option<&mut std::process::Child>,
) -> f64 {
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            loop {
                let row = client.query_one(sql, &[]).await.expect("poll");
                if row.get::<_, bool>(0) {
                    return started.elapsed().as_secs_f64();
                }
                assert!(started.elapsed() < limit, "not done after {limit:?}: {sql}");
                if let Some(child) = child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!("the process exited early: {status}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
}

/// The source workloads of the apply benchmark, in transactions of 1,000 changes.
#[derive(Clone, Copy)]
enum ApplyWorkload {
    /// 650 inserts, 50 updates of rows of the same transaction, 200 updates and 100
    /// deletes of the previous transaction's rows.
    Mixed,
    /// 1,000 inserts: nothing for the sink to collapse.
    Inserts,
}

impl ApplyWorkload {
    /// The benchmark part, result file and database name stem.
    fn name(self) -> &'static str {
        match self {
            ApplyWorkload::Mixed => "apply",
            ApplyWorkload::Inserts => "apply-inserts",
        }
    }

    fn description(self) -> &'static str {
        match self {
            ApplyWorkload::Mixed => {
                "per 1,000-change transaction: 650 inserts, 50 updates of its own rows, 200 \
                 updates and 100 deletes of the previous transaction's rows"
            }
            ApplyWorkload::Inserts => "per transaction: 1,000 inserts",
        }
    }

    /// Changes of `transactions` transactions (the marker row not counted).
    fn changes(self, transactions: u64) -> u64 {
        match self {
            ApplyWorkload::Mixed => 700 + (transactions - 1) * 1000,
            ApplyWorkload::Inserts => transactions * 1000,
        }
    }

    /// The body of the workload's loop over `k`.
    fn transaction_sql(self) -> &'static str {
        match self {
            ApplyWorkload::Mixed => {
                "base := k * 650; prev := (k - 1) * 650;
                 INSERT INTO apply_t SELECT g, 'name-' || g, (g % 100000) / 100.0, now(), g % 2 = 0
                   FROM generate_series(base, base + 649) g;
                 UPDATE apply_t SET amount = amount + 1, name = name || '+', flag = NOT flag
                   WHERE id >= base AND id < base + 50;
                 IF k > 0 THEN
                   UPDATE apply_t SET amount = amount + 2, at = at + interval '1 second'
                     WHERE id >= prev AND id < prev + 200;
                   DELETE FROM apply_t WHERE id >= prev + 550 AND id < prev + 650;
                 END IF;"
            }
            ApplyWorkload::Inserts => {
                "base := k * 1000;
                 INSERT INTO apply_t SELECT g, 'name-' || g, (g % 100000) / 100.0, now(), g % 2 = 0
                   FROM generate_series(base, base + 999) g;"
            }
        }
    }
}

/// (g) Apply: PostgreSQL's native logical replication (`CREATE SUBSCRIPTION`) versus
/// `walbrook sink postgres` applying the same workload of `changes` changes (an
/// [`ApplyWorkload`], then one marker row) into an empty copy of the table. The native side is a disabled subscription on its own slot, created before
/// the workload, then enabled and timed until the marker row is in its target; the
/// Walbrook side is the producer's copy of the workload in JetStream (stored before the
/// clock starts), applied by the sink process, timed from its start until the marker row
/// is in its target. Both targets are then compared with the source (count + checksum).
fn apply_bench(
    pg: &PgServer,
    nats_url: &str,
    walbrook: &std::path::Path,
    workload: ApplyWorkload,
    changes: u64,
    out: &std::path::Path,
) {
    let name = workload.name();
    let stem = name.replace('-', "_");
    let source = pg.fresh_database(&format!("{stem}_src"));
    let native = pg.fresh_database(&format!("{stem}_nat"));
    let target = pg.fresh_database(&format!("{stem}_wb"));
    let publication = source.publication_name();
    let native_slot = format!("{}_native", source.name());
    source
        .psql(&format!(
            "{APPLY_TABLE}; CREATE PUBLICATION {publication} FOR TABLE apply_t"
        ))
        .expect("source schema");
    for slot in [&native_slot, &source.slot_name()] {
        source
            .psql(&format!(
                "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
            ))
            .expect("slot");
    }
    native.psql(APPLY_TABLE).expect("native target schema");
    target.psql(APPLY_TABLE).expect("walbrook target schema");
    // The slot exists already: a subscription to the same cluster cannot create its own.
    native
        .psql(&format!(
            "CREATE SUBSCRIPTION bench_sub CONNECTION '{}' PUBLICATION {publication}
               WITH (enabled = false, create_slot = false, slot_name = '{native_slot}',
                     copy_data = false)",
            source.url()
        ))
        .expect("subscription");

    let transactions = changes.div_ceil(1000).max(1);
    let total_changes = workload.changes(transactions) + 1;
    eprintln!("{name} workload: {transactions} transactions, {total_changes} changes…");
    let fill = Instant::now();
    source
        .psql(&format!(
            "DO $$
             DECLARE base bigint; prev bigint;
             BEGIN
               FOR k IN 0..{last} LOOP
                 {body}
                 COMMIT;
               END LOOP;
               INSERT INTO apply_t VALUES (-1, 'end', 0, now(), true);
             END $$",
            last = transactions - 1,
            body = workload.transaction_sql(),
        ))
        .expect("workload");
    let end_lsn = source
        .psql("SELECT pg_current_wal_lsn()")
        .expect("lsn")
        .trim()
        .to_string();
    eprintln!(
        "workload written in {:.1}s, up to {end_lsn}",
        fill.elapsed().as_secs_f64()
    );
    let expected = table_checksum(pg, source.name(), "apply_t");

    // The producer puts the workload in JetStream (not timed); it stays up, idle, for
    // both timings: the sink looks schemas up from it.
    let mut producer = spawn_producer(
        walbrook,
        &source,
        nats_url,
        "APPLY",
        "public.apply_t",
        &out.join(format!("producer-{name}.log")),
    );
    wait_confirmed(&source, &source.slot_name(), &end_lsn, &mut producer);

    let marker = "SELECT EXISTS (SELECT 1 FROM apply_t WHERE id = -1)";
    let limit = Duration::from_secs(1800);
    // (g1) Native logical replication.
    let started = Instant::now();
    native
        .psql("ALTER SUBSCRIPTION bench_sub ENABLE")
        .expect("enable");
    let native_secs = wait_true(&native.url(), marker, started, limit, None);
    native
        .psql("ALTER SUBSCRIPTION bench_sub DISABLE")
        .expect("disable");
    native
        .psql("ALTER SUBSCRIPTION bench_sub SET (slot_name = NONE)")
        .expect("detach");
    native
        .psql("DROP SUBSCRIPTION bench_sub")
        .expect("drop subscription");
    eprintln!("native subscription: {native_secs:.2}s");

    // (g2) walbrook sink postgres.
    let started = Instant::now();
    let mut sink = spawn_pg_sink(
        walbrook,
        &source,
        &target.url(),
        nats_url,
        "APPLY",
        "public.apply_t",
        &out.join(format!("sink-{name}.log")),
    );
    let walbrook_secs = wait_true(&target.url(), marker, started, limit, Some(&mut sink));
    for child in [&mut sink, &mut producer] {
        let _ = child.kill();
        let _ = child.wait();
    }
    eprintln!("walbrook sink postgres: {walbrook_secs:.2}s");

    let native_sum = table_checksum(pg, native.name(), "apply_t");
    let walbrook_sum = table_checksum(pg, target.name(), "apply_t");
    assert_eq!(
        native_sum, expected,
        "the native target differs from the source"
    );
    assert_eq!(
        walbrook_sum, expected,
        "the Walbrook target differs from the source"
    );
    let ratio = native_secs / walbrook_secs;
    let result = serde_json::json!({
        "benchmark": name,
        "changes": total_changes,
        "transactions": transactions + 1,
        "workload": workload.description(),
        "native_subscription_seconds": native_secs,
        "native_subscription_changes_per_second": total_changes as f64 / native_secs,
        "walbrook_sink_seconds": walbrook_secs,
        "walbrook_sink_changes_per_second": total_changes as f64 / walbrook_secs,
        "ratio_walbrook_to_native": ratio,
        "sink_batch_events": std::env::var("BENCH_SINK_BATCH_EVENTS").unwrap_or_else(|_| "default (10000 for sink postgres)".into()),
        "targets_equal_source": expected,
    });
    let path = out.join(format!("{name}.json"));
    write_result(&path, result);
    println!(
        "{name}, {total_changes} changes: native subscription {:.0} changes/s, walbrook sink postgres \
         {:.0} changes/s (ratio {ratio:.2}); both targets equal the source ({})",
        total_changes as f64 / native_secs,
        total_changes as f64 / walbrook_secs,
        path.display()
    );
}

/// (h) Memory: peak RSS (VmHWM) of `walbrook produce` and of `walbrook sink postgres`
/// while one transaction of `rows` inserted rows flows through both.
fn memory_bench(
    pg: &PgServer,
    nats_url: &str,
    walbrook: &std::path::Path,
    rows: u64,
    out: &std::path::Path,
) {
    let source = pg.fresh_database("mem_src");
    let target = pg.fresh_database("mem_dst");
    source.psql(APPLY_TABLE).expect("source schema");
    target.psql(APPLY_TABLE).expect("target schema");
    let mut producer = spawn_producer(
        walbrook,
        &source,
        nats_url,
        "MEM",
        "public.apply_t",
        &out.join("producer-memory.log"),
    );
    let streaming = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r
           ON r.pid = s.active_pid WHERE s.slot_name = '{}')",
        source.slot_name()
    );
    wait_true(
        &source.url(),
        &streaming,
        Instant::now(),
        Duration::from_secs(60),
        Some(&mut producer),
    );
    let mut sink = spawn_pg_sink(
        walbrook,
        &source,
        &target.url(),
        nats_url,
        "MEM",
        "public.apply_t",
        &out.join("sink-memory.log"),
    );
    let baseline = (
        peak_rss_kib(producer.id()).unwrap_or(0),
        peak_rss_kib(sink.id()).unwrap_or(0),
    );
    eprintln!("memory: one transaction of {rows} rows…");
    let started = Instant::now();
    source
        .psql(&format!(
            "INSERT INTO apply_t SELECT g, 'name-' || g, (g % 100000) / 100.0, now(), g % 2 = 0
               FROM generate_series(1, {rows}) g"
        ))
        .expect("insert");
    let committed = started.elapsed().as_secs_f64();
    let (mut producer_kib, mut sink_kib) = baseline;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let done = "SELECT count(*) FROM apply_t";
    loop {
        producer_kib = producer_kib.max(peak_rss_kib(producer.id()).unwrap_or(0));
        sink_kib = sink_kib.max(peak_rss_kib(sink.id()).unwrap_or(0));
        let count: u64 = target
            .psql(done)
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0);
        if count >= rows {
            break;
        }
        for child in [&mut producer, &mut sink] {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("a process exited early: {status}");
            }
        }
        assert!(Instant::now() < deadline, "the rows never arrived");
        std::thread::sleep(Duration::from_millis(200));
    }
    let seconds = started.elapsed().as_secs_f64();
    producer_kib = producer_kib.max(peak_rss_kib(producer.id()).unwrap_or(0));
    sink_kib = sink_kib.max(peak_rss_kib(sink.id()).unwrap_or(0));
    for child in [&mut producer, &mut sink] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(
        table_checksum(pg, target.name(), "apply_t"),
        table_checksum(pg, source.name(), "apply_t"),
        "the target differs from the source"
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let result = serde_json::json!({
        "benchmark": "memory",
        "rows_in_one_transaction": rows,
        "insert_seconds": committed,
        "commit_to_target_complete_seconds": seconds,
        "producer_peak_rss_mib": mib(producer_kib),
        "producer_idle_rss_mib": mib(baseline.0),
        "producer_target_mib": 100,
        "sink_postgres_peak_rss_mib": mib(sink_kib),
        "sink_postgres_idle_rss_mib": mib(baseline.1),
    });
    let path = out.join("memory.json");
    write_result(&path, result);
    println!(
        "memory, one {rows}-row transaction: producer peak RSS {:.0} MiB (target ≤ 100), \
         walbrook sink postgres peak RSS {:.0} MiB, {seconds:.1}s from INSERT to the target \
         holding every row ({})",
        mib(producer_kib),
        mib(sink_kib),
        path.display()
    );
}

/// Writes a result file, with the run's metadata (machine, versions) under `run`.
fn write_result(path: &std::path::Path, mut result: serde_json::Value) {
    if let Some(meta) = RUN.get() {
        result["run"] = meta.clone();
    }
    std::fs::write(path, serde_json::to_string_pretty(&result).unwrap()).expect("write results");
}

/// This run's machine and versions, set once at the start.
static RUN: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();

/// Machine (cores, CPU model, memory, load) and versions (Walbrook git revision,
/// PostgreSQL, nats-server, rustc) of this run.
fn run_metadata(pg: &PgServer, nats: &NatsServer) -> serde_json::Value {
    let command = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let proc_field = |file: &str, field: &str| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into())
    };
    let dirty = command("git", &["status", "--porcelain", "--untracked-files=no"]);
    serde_json::json!({
        "started_at_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": proc_field("/proc/cpuinfo", "model name"),
        "memory_total": proc_field("/proc/meminfo", "MemTotal"),
        "load_average_at_start": std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        "walbrook_git_rev": command("git", &["rev-parse", "HEAD"]),
        "walbrook_tree_modified": dirty != "unknown" && !dirty.is_empty(),
        "postgres": pg.psql("postgres", "SHOW server_version").unwrap_or_default().trim(),
        "nats_server": nats_version(&nats.url()),
        "rustc": command("rustc", &["--version"]),
    })
}

/// The nats-server version, from its INFO.
fn nats_version(url: &str) -> String {
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            match async_nats::connect(url).await {
                Ok(client) => client.server_info().version,
                Err(_) => "unknown".into(),
            }
        })
}
