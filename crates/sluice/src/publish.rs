//! `sluice publish`: publish from a shell through `sluice-client`, one event
//! (`--event-type`, `--payload`) or JSON lines from a file or stdin, one event a line:
//! `{"event_type": "conversation.created", "payload": {...}, "idempotency_key": "..."}`.
//!
//! A line without `idempotency_key` gets one derived from its line number and text, so
//! running the same input again after a crash or a kill delivers nothing twice: the events
//! already accepted are answered as duplicates.

use std::io::BufRead as _;
use std::path::PathBuf;

use anyhow::Context as _;
use sha2::Digest as _;
use sluice_client::{Config, Event, Publisher};

/// Flags of `sluice publish`.
#[derive(Debug, clap::Args, Clone)]
pub struct PublishArgs {
    /// Data-plane endpoints, comma-separated, tried in order (failover).
    #[arg(
        long = "endpoint",
        env = "SLUICE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50052"
    )]
    pub endpoints: Vec<String>,
    /// The workspace's API key.
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// One event's type (with --payload); without it, events are read as JSON lines.
    #[arg(long, requires = "payload")]
    pub event_type: Option<String>,
    /// One event's payload, a JSON object.
    #[arg(long, requires = "event_type")]
    pub payload: Option<String>,
    /// The idempotency key of the one event (default: made up).
    #[arg(long, requires = "event_type")]
    pub idempotency_key: Option<String>,
    /// JSON lines to publish (default: stdin).
    #[arg(long, conflicts_with = "event_type")]
    pub file: Option<PathBuf>,
    /// Events unanswered at most.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
}

/// Runs `sluice publish`.
pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let mut config = Config::new(args.endpoints.clone(), args.api_key.clone());
    config.max_in_flight = args.max_in_flight;
    let publisher = Publisher::new(config)?;
    if let (Some(event_type), Some(payload)) = (&args.event_type, &args.payload) {
        let event = Event {
            event_type: event_type.clone(),
            payload_json: payload.clone(),
            idempotency_key: args.idempotency_key.clone(),
        };
        let answer = publisher.publish(&event).await?;
        println!(
            "{} {}",
            answer.message_id,
            if answer.duplicate {
                "duplicate"
            } else {
                "accepted"
            }
        );
        return Ok(());
    }

    let reader: Box<dyn std::io::BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("{}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    // Lines are read on a blocking thread and handed over through a small channel, so a
    // slow data plane holds the reader back instead of the memory filling up.
    let (lines_tx, mut lines_rx) =
        tokio::sync::mpsc::channel::<anyhow::Result<(usize, String)>>(64);
    let reading = tokio::task::spawn_blocking(move || {
        for (n, line) in reader.lines().enumerate() {
            let item = line.map(|l| (n + 1, l)).map_err(anyhow::Error::from);
            if lines_tx.blocking_send(item).is_err() {
                return;
            }
        }
    });

    // A progress bar for a file (its lines counted first), drawn only on a terminal.
    let bar = match &args.file {
        Some(path) => {
            let lines = std::io::BufReader::new(std::fs::File::open(path)?)
                .lines()
                .count();
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(u64::try_from(lines).unwrap_or(u64::MAX)),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            Some(bar)
        }
        None => None,
    };
    let mut stream = publisher.stream();
    let mut tally = Tally::default();
    let mut sent = 0u64;
    let mut input_done = false;
    loop {
        tokio::select! {
            line = lines_rx.recv(), if !input_done => match line {
                Some(line) => {
                    let (number, text) = line?;
                    if text.trim().is_empty() {
                        continue;
                    }
                    let event = parse_line(number, &text)?;
                    stream.send(event).await?;
                    sent += 1;
                }
                None => {
                    input_done = true;
                    stream.close();
                }
            },
            ack = stream.next_ack() => match ack {
                Some(ack) => {
                    tally.count(ack?);
                    match &bar {
                        Some(bar) => bar.inc(1),
                        None if tally.answered().is_multiple_of(1000) => {
                            eprintln!("{} of {} answered", tally.answered(), sent);
                        }
                        None => {}
                    }
                }
                None => break,
            },
        }
        if input_done && tally.answered() == sent {
            break;
        }
    }
    let _ = reading.await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    println!(
        "{} acks ({} new, {} duplicates), {} refused",
        tally.accepted + tally.duplicates,
        tally.accepted,
        tally.duplicates,
        tally.refused
    );
    anyhow::ensure!(tally.refused == 0, "{} events were refused", tally.refused);
    Ok(())
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    duplicates: u64,
    refused: u64,
}

impl Tally {
    fn count(&mut self, ack: sluice_client::Ack) {
        match ack.result {
            Ok(r) if r.duplicate => self.duplicates += 1,
            Ok(_) => self.accepted += 1,
            Err(e) => {
                self.refused += 1;
                eprintln!(
                    "event {} (key {}) refused: {} {}",
                    ack.sequence, ack.idempotency_key, e.field, e.message
                );
            }
        }
    }

    fn answered(&self) -> u64 {
        self.accepted + self.duplicates + self.refused
    }
}

/// One JSON line as an event; its idempotency key defaults to a digest of its line number
/// and text (the same input published again repeats the same keys).
fn parse_line(number: usize, text: &str) -> anyhow::Result<Event> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("line {number}: not JSON"))?;
    let event_type = value
        .get("event_type")
        .and_then(|v| v.as_str())
        .with_context(|| format!("line {number}: no \"event_type\" string"))?;
    let payload = value
        .get("payload")
        .filter(|p| p.is_object())
        .with_context(|| format!("line {number}: no \"payload\" object"))?;
    let key = match value.get("idempotency_key").and_then(|v| v.as_str()) {
        Some(key) => key.to_owned(),
        None => {
            let digest = sha2::Sha256::digest(format!("{number}\n{text}").as_bytes());
            format!("line_{}", hex::encode(&digest[..16]))
        }
    };
    Ok(Event {
        event_type: event_type.to_owned(),
        payload_json: payload.to_string(),
        idempotency_key: Some(key),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn lines_get_stable_keys_unless_they_carry_one() {
        let line = r#"{"event_type":"a.b","payload":{"n":1}}"#;
        let first = parse_line(3, line).unwrap();
        assert_eq!(first, parse_line(3, line).unwrap());
        assert_ne!(
            first.idempotency_key,
            parse_line(4, line).unwrap().idempotency_key
        );
        assert_eq!(first.payload_json, r#"{"n":1}"#);
        let keyed = parse_line(
            1,
            r#"{"event_type":"a.b","payload":{},"idempotency_key":"k1"}"#,
        )
        .unwrap();
        assert_eq!(keyed.idempotency_key.as_deref(), Some("k1"));
        assert!(parse_line(1, r#"{"event_type":"a.b","payload":[]}"#).is_err());
        assert!(parse_line(1, "not json").is_err());
    }
}
