//! `retain import PATH...`: reads maildir folders, mbox files and `.eml` files and produces each
//! message as an Avro `MailMessage` to the mail topic, keyed by message id.
//!
//! Every delivery is awaited (acks=all, idempotent producer) before the summary is printed, so
//! `produced` counts what the brokers acknowledged. The summary holds counts and file paths
//! only, never an address, subject or body text.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use retain_codec::{Framing, encode_mail_message};
use retain_mail::{MailSource, MailboxRule, MessageContext};
use serde::Serialize;

use crate::output::{BadInput, count, spinner};
use crate::policy_cmd::{Problem, add_warnings, render_read_problems, skip_reason};

/// Deliveries awaited before more are queued (below librdkafka's queue limit).
const MAX_IN_FLIGHT: usize = 50_000;
/// Failed deliveries listed one by one; the rest are only counted.
const MAX_LISTED_DELIVERY_FAILURES: usize = 20;

/// How each message is framed on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FramingArg {
    /// Avro single-object encoding (`C3 01` and the schema fingerprint).
    SingleObject,
    /// Confluent wire format (`00` and a schema registry id; needs `--schema-id`).
    Confluent,
}

/// Output of `retain import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// Lines for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Arguments of `retain import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Maildir folders, mbox files, .eml files or folders of them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Kafka bootstrap servers (`host:port,...`); required unless --dry-run.
    #[arg(long, env = "RETAIN_BROKERS")]
    brokers: Option<String>,
    /// The topic to produce to.
    #[arg(long, default_value = "retain.mail", env = "RETAIN_INPUT_TOPIC")]
    topic: String,
    /// How each message is framed.
    #[arg(
        long,
        value_enum,
        default_value = "single-object",
        env = "RETAIN_FRAMING"
    )]
    framing: FramingArg,
    /// The schema registry id of the MailMessage schema (with `--framing confluent` only).
    #[arg(long, env = "RETAIN_SCHEMA_ID")]
    schema_id: Option<u32>,
    /// Tenant recorded on the messages.
    #[arg(long, default_value = "default", env = "RETAIN_TENANT")]
    tenant: String,
    /// The organisation's own mail domains (decide inbound/outbound/internal).
    #[arg(
        long = "internal-domain",
        env = "RETAIN_INTERNAL_DOMAINS",
        value_delimiter = ','
    )]
    internal_domains: Vec<String>,
    /// Read and encode everything but produce nothing (no brokers needed).
    #[arg(long, env = "RETAIN_DRY_RUN")]
    dry_run: bool,
    /// List every skipped file, not only the counts by reason.
    #[arg(long, env = "RETAIN_LIST_SKIPPED")]
    list_skipped: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", env = "RETAIN_FORMAT")]
    format: ImportFormat,
}

/// What `retain import` did.
#[derive(Debug, Default, Serialize)]
struct ImportSummary {
    paths: Vec<String>,
    topic: String,
    framing: &'static str,
    dry_run: bool,
    /// Messages read and encoded.
    messages: u64,
    /// Messages the brokers acknowledged (0 in a dry run).
    produced: u64,
    /// Encoded bytes of the messages (payloads only).
    bytes: u64,
    /// Files that are not e-mail, by reason.
    skipped: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    skipped_files: Vec<Problem>,
    /// Files or messages that could not be read or encoded, and deliveries that failed
    /// (the first few of those), each with its reason.
    failed: Vec<Problem>,
    /// Deliveries that failed (all of them, listed or not).
    delivery_failed: u64,
    /// Fields left empty because the header was implausible or missing.
    warnings: BTreeMap<String, u64>,
    seconds: f64,
    messages_per_second: f64,
}

/// Runs `retain import`.
pub fn run(a: ImportArgs) -> Result<ExitCode> {
    let framing = match (a.framing, a.schema_id) {
        (FramingArg::SingleObject, None) => Framing::SingleObject,
        (FramingArg::Confluent, Some(schema_id)) => Framing::Confluent { schema_id },
        (FramingArg::Confluent, None) => {
            return Err(BadInput("--framing confluent needs --schema-id N".to_owned()).into());
        }
        (FramingArg::SingleObject, Some(_)) => {
            return Err(
                BadInput("--schema-id goes with --framing confluent only".to_owned()).into(),
            );
        }
    };
    for path in &a.paths {
        if !path.exists() {
            return Err(BadInput(format!("{}: no such file or folder", path.display())).into());
        }
    }
    let producer = if a.dry_run {
        None
    } else {
        let Some(brokers) = a.brokers.as_deref().filter(|b| !b.trim().is_empty()) else {
            return Err(BadInput(
                "no brokers: give --brokers or RETAIN_BROKERS (or --dry-run)".to_owned(),
            )
            .into());
        };
        Some(connect(brokers, &a.topic)?)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let s = runtime.block_on(import(&a, framing, producer.as_ref()))?;
    match a.format {
        ImportFormat::Json => outln!("{}", serde_json::to_string_pretty(&s)?),
        ImportFormat::Table => out!("{}", render(&s)),
    }
    Ok(if s.failed.is_empty() && s.delivery_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// An idempotent producer, after checking the brokers answer and know the topic.
fn connect(brokers: &str, topic: &str) -> Result<FutureProducer> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "100000")
        .create()
        .context("creating the producer")?;
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(15))
        .with_context(|| format!("cannot reach the brokers at {brokers}"))?;
    if let Some(err) = metadata.topics().first().and_then(|t| t.error()) {
        let code = RDKafkaErrorCode::from(err);
        if matches!(
            code,
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
        ) {
            return Err(BadInput(format!(
                "topic {topic} does not exist on {brokers}; create it first"
            ))
            .into());
        }
    }
    Ok(producer)
}

async fn import(
    a: &ImportArgs,
    framing: Framing,
    producer: Option<&FutureProducer>,
) -> Result<ImportSummary> {
    let started = Instant::now();
    let mut s = ImportSummary {
        paths: a.paths.iter().map(|p| p.display().to_string()).collect(),
        topic: a.topic.clone(),
        framing: framing.name(),
        dry_run: a.dry_run,
        ..Default::default()
    };
    let mut in_flight: VecDeque<(String, DeliveryFuture)> = VecDeque::new();
    let pb = spinner(if a.dry_run { "reading" } else { "importing" });
    for path in &a.paths {
        let ctx = MessageContext::new(
            &a.tenant,
            MailboxRule::FromXOrigin {
                fallback: "unknown".to_owned(),
            },
            chrono::Utc::now(),
        )
        .with_internal_domains(a.internal_domains.iter().cloned());
        for item in MailSource::new(path.clone(), ctx.clone()) {
            match item {
                Ok((at, message)) => {
                    let bytes = match encode_mail_message(&message, framing) {
                        Ok(b) => b,
                        Err(e) => {
                            s.failed.push(Problem {
                                at: at.to_string(),
                                reason: format!("encoding: {e}"),
                            });
                            continue;
                        }
                    };
                    s.messages += 1;
                    s.bytes += bytes.len() as u64;
                    pb.inc(1);
                    let Some(producer) = producer else { continue };
                    if in_flight.len() >= MAX_IN_FLIGHT
                        && let Some((at, d)) = in_flight.pop_front()
                    {
                        settle(&mut s, at, d).await;
                    }
                    let d = send(producer, &a.topic, &message.message_id, &bytes).await?;
                    in_flight.push_back((at.to_string(), d));
                }
                Err(e) if e.is_skip() => {
                    *s.skipped.entry(skip_reason(&e)).or_default() += 1;
                    if a.list_skipped {
                        s.skipped_files.push(Problem {
                            at: e.source_ref().map(|r| r.to_string()).unwrap_or_default(),
                            reason: e.to_string(),
                        });
                    }
                }
                Err(e) => s.failed.push(Problem {
                    at: e.source_ref().map(|r| r.to_string()).unwrap_or_default(),
                    reason: e.to_string(),
                }),
            }
        }
        add_warnings(&ctx, &mut s.warnings);
    }
    pb.set_message("waiting for deliveries");
    while let Some((at, d)) = in_flight.pop_front() {
        settle(&mut s, at, d).await;
    }
    pb.finish_and_clear();
    s.seconds = started.elapsed().as_secs_f64();
    let done = if a.dry_run { s.messages } else { s.produced };
    s.messages_per_second = if s.seconds > 0.0 {
        done as f64 / s.seconds
    } else {
        0.0
    };
    Ok(s)
}

/// Queues one record, waiting a moment while librdkafka's queue is full.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<DeliveryFuture> {
    loop {
        let record = FutureRecord::to(topic).key(key.as_bytes()).payload(payload);
        match producer.send_result(record) {
            Ok(d) => return Ok(d),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((e, _)) => return Err(e).context("queueing a message"),
        }
    }
}

/// Awaits one delivery and counts it as produced or failed.
async fn settle(s: &mut ImportSummary, at: String, d: DeliveryFuture) {
    let reason = match d.await {
        Ok(Ok(_)) => {
            s.produced += 1;
            return;
        }
        Ok(Err((e, _))) => format!("delivery: {e}"),
        Err(_) => "delivery: the producer was dropped".to_owned(),
    };
    s.delivery_failed += 1;
    if (s.delivery_failed as usize) <= MAX_LISTED_DELIVERY_FAILURES {
        s.failed.push(Problem { at, reason });
    }
}

/// The summary for people.
fn render(s: &ImportSummary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if s.dry_run {
        let _ = writeln!(
            out,
            "Dry run: read and encoded {} messages ({} bytes, {} framing) from {} in {:.2} s ({:.0} messages/s); produced nothing",
            count(s.messages),
            count(s.bytes),
            s.framing,
            s.paths.join(", "),
            s.seconds,
            s.messages_per_second
        );
    } else {
        let _ = writeln!(
            out,
            "Produced {} of {} messages ({} bytes, {} framing) to {} from {} in {:.2} s ({:.0} messages/s)",
            count(s.produced),
            count(s.messages),
            count(s.bytes),
            s.framing,
            s.topic,
            s.paths.join(", "),
            s.seconds,
            s.messages_per_second
        );
    }
    render_read_problems(&mut out, &s.warnings, &s.skipped, &s.skipped_files);
    // Delivery failures beyond the first few are counted, not listed.
    let listed = s.delivery_failed.min(MAX_LISTED_DELIVERY_FAILURES as u64);
    let failed = s.failed.len() as u64 - listed + s.delivery_failed;
    let _ = writeln!(out, "failed: {}", count(failed));
    for p in &s.failed {
        let _ = writeln!(out, "  {}: {}", p.at, p.reason);
    }
    if s.delivery_failed > MAX_LISTED_DELIVERY_FAILURES as u64 {
        let _ = writeln!(
            out,
            "  ... {} failed deliveries in all",
            count(s.delivery_failed)
        );
    }
    out
}
