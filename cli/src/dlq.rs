//! `walbrook dlq list|replay`: inspect and re-drive dead letters.

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
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    common: CommonArgs,
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
    }
}
