//! `walbrook sink <target>`: the consumers. Each applies the change stream of a source
//! database to a target through the runner of `walbrook-client` (docs/sinks.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use walbrook_client::runner::{RetryPolicy, Runner, RunnerMetrics, RunnerOptions, Sink, partition};
use walbrook_client::{Client, ClientOptions, Credentials, Start};

/// Options every sink shares: where the change stream is and how it is consumed.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS server URLs, comma-separated.
    #[arg(long, env = "WALBROOK_NATS_URL", value_delimiter = ',')]
    nats_url: Vec<String>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "WALBROOK_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "WALBROOK_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "WALBROOK_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// NATS credentials file.
    #[arg(long, env = "WALBROOK_NATS_CREDS")]
    nats_creds: Option<std::path::PathBuf>,
    /// NATS NKey seed (`SU…`).
    #[arg(long, env = "WALBROOK_NATS_NKEY", hide_env_values = true)]
    nats_nkey: Option<String>,
    /// CA certificate for TLS to NATS.
    #[arg(long, env = "WALBROOK_NATS_TLS_CA")]
    nats_tls_ca: Option<std::path::PathBuf>,
    /// The producer's subject root.
    #[arg(long, env = "WALBROOK_ROOT", default_value = "WALBROOK")]
    root: String,
    /// The source database name (as the producer publishes it).
    #[arg(long, env = "WALBROOK_SINK_SOURCE_DB")]
    source_db: String,
    /// Consumer name: durable JetStream consumer, checkpoint, dead-letter subject.
    #[arg(long, env = "WALBROOK_SINK_CONSUMER")]
    consumer: String,
    /// Source tables, comma-separated: `schema.table`, `schema.*` or `*`.
    #[arg(
        long,
        env = "WALBROOK_SINK_TABLES",
        value_delimiter = ',',
        default_value = "*"
    )]
    tables: Vec<String>,
    /// Where a new consumer starts: `beginning`, `new`, or a commit LSN (`0/16B3F20`).
    #[arg(long, env = "WALBROOK_SINK_START", default_value = "beginning")]
    start: String,
    /// Bootstrap a new consumer from snapshots: one per table (explicit
    /// `schema.table` names), applied in full, then the changes from the first snapshot's
    /// position on — no gap, no double (docs/sinks.md). A consumer that has run before (a
    /// checkpoint in the target, or a durable consumer) resumes instead, after a snapshot of
    /// each table added to `--tables` since its durable consumer was created.
    #[arg(long, env = "WALBROOK_SINK_SNAPSHOT")]
    snapshot: bool,
    /// Most events per batch (default: 10000 for `postgres`, whose batches shrink as changes
    /// to the same keys collapse and which commits once per batch; 500 for the others).
    /// A batch also ends after --batch-wait, so a quiet source is not delayed.
    #[arg(long, env = "WALBROOK_SINK_BATCH_EVENTS")]
    batch_events: Option<usize>,
    /// `postgres`: a source transaction is applied in one target transaction up to this
    /// many events (it bounds the events the sink holds); a larger one is split, with a
    /// warning.
    #[arg(
        long,
        env = "WALBROOK_SINK_TRANSACTION_EVENTS",
        default_value_t = 32_000
    )]
    transaction_events: usize,
    /// Most payload bytes per batch.
    #[arg(long, env = "WALBROOK_SINK_BATCH_BYTES", default_value_t = 4 << 20)]
    batch_bytes: usize,
    /// Longest wait for a batch to fill (`50ms`, `1s`).
    #[arg(long, env = "WALBROOK_SINK_BATCH_WAIT", default_value = "50ms", value_parser = humantime::parse_duration)]
    batch_wait: Duration,
    /// Longest retry delay of a transient failure.
    #[arg(long, env = "WALBROOK_SINK_RETRY_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    retry_max: Duration,
    /// Dead-letter a batch after this many failed attempts (default: retry until it works).
    #[arg(long, env = "WALBROOK_SINK_MAX_ATTEMPTS")]
    max_attempts: Option<u32>,
    /// Scale-out: this instance's number (0-based) of --instances. Tables are assigned to
    /// instances by a stable hash of their name; each instance uses the consumer name
    /// `<consumer>-<instance>`. Needs explicit tables (no wildcards).
    #[arg(long, env = "WALBROOK_SINK_INSTANCE", default_value_t = 0)]
    instance: usize,
    /// Scale-out: how many instances share the tables.
    #[arg(long, env = "WALBROOK_SINK_INSTANCES", default_value_t = 1)]
    instances: usize,
    /// Serve `/metrics` and `/healthz` on this address.
    #[arg(long, env = "WALBROOK_SINK_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

impl CommonArgs {
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        let Some((first, rest)) = self.nats_url.split_first() else {
            bail!("--nats-url (WALBROOK_NATS_URL) is required");
        };
        let mut options =
            ClientOptions::new(first.clone(), self.source_db.clone()).root(&self.root);
        for server in rest {
            options = options.server(server.clone());
        }
        let credentials = match (
            &self.nats_user,
            &self.nats_password,
            &self.nats_token,
            &self.nats_creds,
            &self.nats_nkey,
        ) {
            (Some(user), Some(password), None, None, None) => Credentials::UserPassword {
                user: user.clone(),
                password: password.clone(),
            },
            (None, None, Some(token), None, None) => Credentials::Token(token.clone()),
            (None, None, None, Some(path), None) => Credentials::CredsFile(path.clone()),
            (None, None, None, None, Some(seed)) => Credentials::NKey(seed.clone()),
            (None, None, None, None, None) => Credentials::None,
            _ => {
                bail!("give one NATS authentication: user+password, token, creds file or NKey seed")
            }
        };
        options = options.credentials(credentials);
        if let Some(ca) = &self.nats_tls_ca {
            options = options.tls_ca(ca.clone());
        }
        Ok(Client::connect(options).await?)
    }

    /// The consumer name and tables of this instance.
    pub(crate) fn assignment(&self) -> anyhow::Result<(String, Vec<String>)> {
        // JetStream refuses such durable names; found at subscription time that looked
        // like a transient error and was retried for ever.
        if self.consumer.is_empty()
            || self.consumer.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
            })
        {
            bail!(
                "--consumer {:?}: a consumer name must be non-empty and hold no whitespace, \
                 '.', '*', '>', '/' or '\\' (it names a JetStream durable consumer)",
                self.consumer
            );
        }
        if self.instances == 0 {
            bail!("--instances must be at least 1");
        }
        if self.instance >= self.instances {
            bail!(
                "--instance {} must be below --instances {}",
                self.instance,
                self.instances
            );
        }
        if self.instances == 1 {
            return Ok((self.consumer.clone(), self.tables.clone()));
        }
        let mut mine = Vec::new();
        for pattern in &self.tables {
            let Some((schema, table)) = pattern.split_once('.') else {
                bail!("scale-out needs explicit schema.table names, got {pattern:?}");
            };
            if table == "*" || pattern == "*" {
                bail!("scale-out needs explicit tables, not the wildcard {pattern:?}");
            }
            if partition::owns_table(schema, table, self.instance, self.instances) {
                mine.push(pattern.clone());
            }
        }
        if mine.is_empty() {
            bail!(
                "instance {} of {} owns none of the tables {:?}",
                self.instance,
                self.instances,
                self.tables
            );
        }
        Ok((format!("{}-{}", self.consumer, self.instance), mine))
    }

    /// The runner's options for the sink named `sink` ([`Sink::name`]).
    pub(crate) fn runner_options(&self, sink: &str) -> anyhow::Result<RunnerOptions> {
        let (consumer, tables) = self.assignment()?;
        let mut options = RunnerOptions::new(consumer, tables);
        options.start = match self.start.as_str() {
            "beginning" => Start::Beginning,
            "new" => Start::New,
            lsn => Start::CommitPosition(
                lsn.parse()
                    .with_context(|| format!("--start {lsn:?}: beginning, new or an LSN"))?,
            ),
        };
        let default_events = if sink == "postgres" { 10_000 } else { 500 };
        options.max_batch_events = self.batch_events.unwrap_or(default_events).max(1);
        options.max_transaction_events = self.transaction_events.max(1);
        options.max_batch_bytes = self.batch_bytes.max(1);
        options.max_batch_wait = self.batch_wait;
        options.retry = RetryPolicy {
            max: self.retry_max,
            dead_letter_after: self.max_attempts,
            ..RetryPolicy::default()
        };
        Ok(options)
    }
}

/// A token cancelled on SIGINT or SIGTERM. The handlers are installed before this returns,
/// so a signal that arrives while the sink is still connecting stops it cleanly too.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: stopping (the batch in flight is delivered again)");
        token.cancel();
    });
    Ok(shutdown)
}

/// Runs `sink` until SIGINT/SIGTERM (or replays its dead letters and exits).
pub(crate) async fn run_sink<S: Sink>(
    common: &CommonArgs,
    sink: S,
    replay_dead_letters: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Everything that can be refused without a connection is checked first, so a bad
    // command line fails at once instead of after connecting (or after a bootstrap).
    let options = common.runner_options(sink.name())?;
    let consumer = options.consumer.clone();
    let tables = options.tables.clone();
    if common.snapshot {
        check_snapshot_tables(&tables)?;
    }
    let listener = match common.metrics_addr.filter(|_| !replay_dead_letters) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };
    let client = common.client().await?;
    let mut runner = Runner::new(client.clone(), sink, options);
    if replay_dead_letters {
        let (replayed, left) = runner.replay_dead_letters().await?;
        println!("replayed {replayed} dead letters of {consumer}; {left} left");
        return Ok(());
    }
    if let Some(listener) = listener {
        // Served from the start: /healthz says "not applying" during a bootstrap.
        let metrics = runner.metrics();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, routes(metrics)).await {
                tracing::error!("metrics server: {e}");
            }
        });
    }
    if common.snapshot {
        if runner.needs_bootstrap().await? {
            bootstrap(&client, &mut runner, &tables, &shutdown).await?;
        } else {
            let unseen = runner.unseen_tables().await?;
            if unseen.is_empty() {
                tracing::info!(%consumer, "the consumer has run before: resuming, no snapshot");
            } else {
                bootstrap_added(&client, &mut runner, &unseen, &shutdown).await?;
            }
        }
    }
    tracing::info!(%consumer, sink = runner.sink().name(), "sink running");
    runner.run(shutdown).await?;
    Ok(())
}

/// `--snapshot` needs explicit table names (a pattern cannot be snapshotted).
fn check_snapshot_tables(tables: &[String]) -> anyhow::Result<()> {
    for table in tables {
        if !table.contains('.') || table.ends_with(".*") || table == "*" {
            bail!("--snapshot needs explicit schema.table names, got {table:?}");
        }
    }
    Ok(())
}

/// Snapshots every table in turn and applies the rows, then points the runner at the
/// changes from the first snapshot's position. Later snapshots start later, so that
/// position is the lowest: the changes between it and a later table's own position are
/// applied again over rows that already reflect them, which converges to the source
/// (after images, deletes by key; docs/sinks.md).
async fn bootstrap<S: Sink>(
    client: &walbrook_client::Client,
    runner: &mut Runner<S>,
    tables: &[String],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use walbrook_client::SnapshotRequest;
    let Some((first_table, rest)) = tables.split_first() else {
        return Ok(());
    };
    let first = client
        .snapshot(SnapshotRequest::table(first_table.clone()))
        .await
        .with_context(|| format!("requesting a snapshot of {first_table}"))?;
    let position = first.position()?;
    tracing::info!(table = %first_table, %position, "bootstrapping from snapshots");
    let client = client.clone();
    let later = futures::stream::iter(rest.to_vec())
        .then(move |table| {
            let client = client.clone();
            async move {
                tracing::info!(%table, "snapshot");
                client.snapshot(SnapshotRequest::table(table)).await
            }
        })
        .flat_map(|snapshot| match snapshot {
            Ok(rows) => rows.boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        });
    let rows = first.chain(later);
    let applied = runner.bootstrap(rows, position, shutdown).await?;
    tracing::info!(rows = applied, %position, "snapshots applied; following the changes");
    Ok(())
}

/// Snapshots the tables added to a consumer that has run and applies their rows; the
/// consumer then resumes at its checkpoint, so nothing of the other tables is skipped, and
/// the added tables' changes since the checkpoint converge over their rows (docs/sinks.md).
async fn bootstrap_added<S: Sink>(
    client: &walbrook_client::Client,
    runner: &mut Runner<S>,
    tables: &[String],
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use walbrook_client::SnapshotRequest;
    for table in tables {
        tracing::info!(%table, "a table the consumer has not followed yet: bootstrapping it from a snapshot");
        let rows = client
            .snapshot(SnapshotRequest::table(table.clone()))
            .await
            .with_context(|| format!("requesting a snapshot of {table}"))?;
        let applied = runner.bootstrap_tables(rows, shutdown).await?;
        tracing::info!(%table, rows = applied, "snapshot applied");
        if shutdown.is_cancelled() {
            break;
        }
    }
    Ok(())
}

fn routes(metrics: Arc<RunnerMetrics>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m = metrics.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let m = metrics.clone();
                async move {
                    if m.is_healthy() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not applying")
                    }
                }
            }),
        )
}

/// `walbrook sink <target>`.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    #[command(subcommand)]
    target: Target,
}

#[derive(Debug, clap::Subcommand)]
enum Target {
    /// Apply the changes to PostgreSQL tables, exactly once.
    Postgres(PostgresArgs),
    /// POST the changes as signed JSON to an HTTP endpoint, at least once with stable ids.
    Webhook(WebhookArgs),
    /// Index the rows as documents in Elasticsearch/OpenSearch, versioned by position.
    Elasticsearch(SearchArgs),
}

/// `walbrook sink elasticsearch`.
#[derive(Debug, clap::Args)]
struct SearchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Base URL of the engine.
    #[arg(long, env = "WALBROOK_SINK_SEARCH_URL")]
    url: String,
    /// Index name template (`{database}`, `{schema}`, `{table}`).
    #[arg(
        long,
        env = "WALBROOK_SINK_INDEX_TEMPLATE",
        default_value = "{database}.{schema}.{table}"
    )]
    index_template: String,
    /// Create missing indices with a mapping derived from the columns.
    #[arg(long, env = "WALBROOK_SINK_CREATE_MAPPING")]
    create_mapping: bool,
    /// Basic-auth user.
    #[arg(long, env = "WALBROOK_SINK_SEARCH_USER")]
    user: Option<String>,
    /// Basic-auth password.
    #[arg(long, env = "WALBROOK_SINK_SEARCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl SearchArgs {
    fn sink(&self) -> anyhow::Result<walbrook_es_client::SearchSink> {
        let mut options = walbrook_es_client::SearchOptions::new(self.url.clone());
        options.index_template = self.index_template.clone();
        options.create_mapping = self.create_mapping;
        options.basic_auth = match (&self.user, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => bail!("give both --user and --password"),
        };
        Ok(walbrook_es_client::SearchSink::new(options)?)
    }
}

/// `walbrook sink webhook`.
#[derive(Debug, clap::Args)]
struct WebhookArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The endpoint to POST to.
    #[arg(long, env = "WALBROOK_SINK_WEBHOOK_URL")]
    url: String,
    /// HMAC-SHA256 secret for the `Walbrook-Signature` header.
    #[arg(long, env = "WALBROOK_SINK_WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// POST each batch as one JSON array instead of one request per event.
    #[arg(long, env = "WALBROOK_SINK_WEBHOOK_BATCH")]
    batch: bool,
    /// Timeout of one request. A request that times out, fails or is answered with anything
    /// but 2xx, 400, 413 or 422 is sent again with backoff until it is answered; delivery of
    /// its key waits meanwhile (docs/sinks.md).
    #[arg(long, env = "WALBROOK_SINK_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl WebhookArgs {
    fn sink(&self) -> anyhow::Result<walbrook_webhook_client::WebhookSink> {
        let mut options = walbrook_webhook_client::WebhookOptions::new(self.url.clone());
        options.secret = self.secret.as_ref().map(|s| s.as_bytes().to_vec());
        options.batch = self.batch;
        options.timeout = self.timeout;
        options.retry.max = self.common.retry_max;
        Ok(walbrook_webhook_client::WebhookSink::new(options)?)
    }
}

/// `walbrook sink postgres`.
#[derive(Debug, clap::Args)]
struct PostgresArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Target database URL.
    #[arg(long, env = "WALBROOK_SINK_TARGET_URL", hide_env_values = true)]
    target_url: String,
    /// Map a source table to a target table: `source_schema.table=target_schema.table`
    /// (repeatable).
    #[arg(long = "map", env = "WALBROOK_SINK_MAP", value_delimiter = ',')]
    map: Vec<String>,
    /// Put unmapped tables in this target schema (default: the source schema).
    #[arg(long, env = "WALBROOK_SINK_TARGET_SCHEMA")]
    target_schema: Option<String>,
    /// Do not create missing target tables (stop with an error instead).
    #[arg(long)]
    no_create: bool,
    /// Do not add or drop target columns when the source's change.
    #[arg(long)]
    no_follow_schema: bool,
    /// The checkpoint table.
    #[arg(
        long,
        env = "WALBROOK_SINK_CHECKPOINT_TABLE",
        default_value = "public.walbrook_checkpoint"
    )]
    checkpoint_table: String,
}

impl PostgresArgs {
    async fn sink(&self) -> anyhow::Result<walbrook_pg_client::PgSink> {
        use walbrook_pg_client::{PgSink, PgSinkOptions, TableName};
        let mut options = PgSinkOptions::new(self.target_url.clone());
        for m in &self.map {
            let Some((from, to)) = m.split_once('=') else {
                bail!("--map {m:?}: expected source_schema.table=target_schema.table");
            };
            options
                .tables
                .insert(TableName::parse(from.trim()), TableName::parse(to.trim()));
        }
        options.target_schema = self.target_schema.clone();
        options.create_tables = !self.no_create;
        options.follow_schema = !self.no_follow_schema;
        options.checkpoint_table = TableName::parse(&self.checkpoint_table);
        PgSink::connect(options)
            .await
            .context("connecting to the target database")
    }
}

impl SinkArgs {
    async fn run_target(&self, replay: bool) -> anyhow::Result<()> {
        let shutdown = shutdown_on_signals()?;
        match &self.target {
            Target::Postgres(args) => {
                let sink = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    sink = args.sink() => sink?,
                };
                run_sink(&args.common, sink, replay, shutdown).await
            }
            Target::Webhook(args) => run_sink(&args.common, args.sink()?, replay, shutdown).await,
            Target::Elasticsearch(args) => {
                run_sink(&args.common, args.sink()?, replay, shutdown).await
            }
        }
    }
}

/// Prefix of the variables only the sinks and `walbrook dlq` read.
const SINK_VARIABLE_PREFIX: &str = "WALBROOK_SINK_";

/// Refuses a `WALBROOK_SINK_*` variable that no option of `cli` (the whole `walbrook`
/// command tree) reads: a typo must stop the sink, not be ignored. Variables of another
/// sink kind are accepted, so one environment file can serve several sinks.
pub fn refuse_unknown_variables<I>(cli: &clap::Command, vars: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
{
    fn collect(command: &clap::Command, known: &mut std::collections::BTreeSet<String>) {
        for arg in command.get_arguments() {
            if let Some(name) = arg.get_env().and_then(|n| n.to_str())
                && name.starts_with(SINK_VARIABLE_PREFIX)
            {
                known.insert(name.to_string());
            }
        }
        for sub in command.get_subcommands() {
            collect(sub, known);
        }
    }
    let mut known = std::collections::BTreeSet::new();
    collect(cli, &mut known);
    for (name, _) in vars {
        let name = name.to_string_lossy();
        if name.starts_with(SINK_VARIABLE_PREFIX) && !known.contains(name.as_ref()) {
            let list: Vec<&str> = known.iter().map(String::as_str).collect();
            bail!(
                "{name}: unknown WALBROOK_SINK_* variable (the sinks read {})",
                list.join(", ")
            );
        }
    }
    Ok(())
}

/// Runs `walbrook sink …`.
pub async fn run(args: SinkArgs) -> anyhow::Result<()> {
    args.run_target(false).await
}

/// Runs `walbrook dlq replay <target> …`: applies the dead letters through the sink.
pub async fn replay(args: SinkArgs) -> anyhow::Result<()> {
    args.run_target(true).await
}
