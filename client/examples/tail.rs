//! Tails tables: prints every change event as one JSON line.
//!
//! ```text
//! cargo run -p walbrook-client --example tail -- <nats-url> <database> <table-pattern> \
//!     [beginning|new|<commit LSN X/X>|<RFC 3339 time>] [durable-name]
//! cargo run -p walbrook-client --example tail -- nats://127.0.0.1:4222 shop 'public.*' new
//! ```
//!
//! `WALBROOK_ROOT` sets the subject root (default `WALBROOK`). With a durable name, events are
//! acknowledged after printing and a restart resumes after the last one. An undecodable
//! message is printed as a JSON error line with its stream sequence, and tailing goes on.

use futures::StreamExt;
use walbrook_client::{Client, ClientOptions, Error, Lsn, Start, Subscription};

fn start(arg: Option<&str>) -> Result<Start, String> {
    Ok(match arg {
        None | Some("beginning") => Start::Beginning,
        Some("new") => Start::New,
        Some(text) if text.contains('/') => {
            Start::CommitPosition(text.parse::<Lsn>().map_err(|e| e.to_string())?)
        }
        Some(text) => Start::Time(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|e| format!("{text:?}: {e}"))?
                .to_utc(),
        ),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, database, pattern, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: tail <nats-url> <database> <table-pattern> \
             [beginning|new|<LSN>|<time>] [durable-name]"
        );
        std::process::exit(2);
    };
    let root = std::env::var("WALBROOK_ROOT").unwrap_or_else(|_| "WALBROOK".into());
    let client = Client::connect(ClientOptions::new(url, database).root(root)).await?;
    let mut subscription =
        Subscription::table(pattern.as_str()).start(start(rest.first().map(String::as_str))?);
    if let Some(name) = rest.get(1) {
        subscription = subscription.durable(name.as_str());
    }
    let mut events = client.subscribe(subscription).await?;
    while let Some(item) = events.next().await {
        match item {
            Ok(event) => {
                println!("{}", serde_json::to_string(&event)?);
                event.ack().await?;
            }
            Err(error) => report(&error)?,
        }
    }
    Ok(())
}

/// Prints an error as a JSON line; stops on errors that retrying cannot fix and that are not
/// about one message.
fn report(error: &Error) -> Result<(), Box<dyn std::error::Error>> {
    let line = serde_json::json!({
        "error": error.kind().to_string(),
        "message": error.to_string(),
        "stream_sequence": error.stream_sequence(),
    });
    println!("{line}");
    if error.message().is_none() && !error.is_retryable() {
        return Err(Box::new(error.clone()));
    }
    Ok(())
}
