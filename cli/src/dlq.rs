//! `walbrook dlq list|replay|remove`: inspect, re-drive and discard dead letters.

use crate::sink::{CommonArgs, SinkArgs};

/// `walbrook dlq`.
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// Print the dead letters of a consumer as JSON lines (oldest first): the error, the
    /// sink, the original subject and sequence, and the decoded event.
    List(ListArgs),
    /// Apply the dead letters of a consumer through its sink again (same options as
    /// `walbrook sink <target>`); each one applied is removed from the dead-letter stream.
    Replay(SinkArgs),
    /// Discard dead letters of a consumer without applying them (with their bodies in the
    /// dead-letter bucket): the ones named by `--sequence`, or all with `--all`.
    Remove(RemoveArgs),
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["sequence", "all"]))]
struct RemoveArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// A dead letter to remove, by its `dlq_sequence` in `walbrook dlq list` (repeatable).
    /// Nothing is removed when one of them is not a dead letter of the consumer.
    #[arg(long)]
    sequence: Vec<u64>,
    /// Remove every dead letter of the consumer.
    #[arg(long)]
    all: bool,
}

/// Runs `walbrook dlq …`.
pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List(list) => {
            let client = list.common.client().await?;
            let (consumer, _) = list.common.assignment()?;
            for letter in walbrook_client::runner::list_dead_letters(&client, &consumer).await? {
                println!("{}", serde_json::to_string(&letter)?);
            }
            Ok(())
        }
        DlqCommand::Replay(sink) => crate::sink::replay(sink).await,
        DlqCommand::Remove(remove) => {
            let client = remove.common.client().await?;
            let (consumer, _) = remove.common.assignment()?;
            let which = (!remove.all).then_some(remove.sequence.as_slice());
            let removed =
                walbrook_client::runner::remove_dead_letters(&client, &consumer, which).await?;
            println!("removed {removed} dead letters of {consumer}");
            Ok(())
        }
    }
}
