//! `walbrook produce`: the producer appliance.

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use walbrook_producer::config::RawConfig;
use walbrook_producer::pipeline;

/// Options of `walbrook produce`.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// TOML configuration file; `WALBROOK_*` environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Start although the replication slot is missing or invalidated while the change stream
    /// holds events (a gap: changes in between are lost). Creates the slot and publishes a
    /// gap marker on every table's subject, which stops consumers that read across it
    /// (re-bootstrap them from a snapshot first). Without it the producer refuses to start,
    /// naming the positions (docs/protocol.md §3.8).
    #[arg(long)]
    accept_gap: bool,
}

/// Loads the configuration: the file (if any), then the environment, then validation.
pub fn load_config(
    path: Option<&PathBuf>,
) -> anyhow::Result<walbrook_producer::config::ProducerConfig> {
    let mut raw = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            RawConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => RawConfig::default(),
    };
    raw.apply_env(std::env::vars())?;
    Ok(raw.validate()?)
}

/// Runs the producer until SIGINT or SIGTERM.
pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_ref()).context("invalid configuration")?;
    config.accept_gap = args.accept_gap;
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: draining");
        signal_token.cancel();
    });
    // On a runtime worker thread rather than the main thread: the replication transport's
    // task then hands each decoded message over without a cross-thread wake-up.
    tokio::spawn(pipeline::run(config, shutdown))
        .await
        .context("the producer task panicked")??;
    Ok(())
}
