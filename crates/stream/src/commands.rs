//! The disposal-command topic: one `DisposalCommand` per message a disposal disposes of, for
//! the mail system to delete the message itself (Retain keeps no bodies).
//!
//! [`CommandPublisher`] is the [`CommandSink`] `retain dispose execute` hands to the disposal:
//! the commands are published, and every one acknowledged, *before* the rows are deleted from
//! `records`, so a crash between the two loses no command. A re-run publishes the same commands
//! again with the same `command_id` (`<manifest>/<record key>`); the mail system ignores repeats.
//! Keyed by record key (no PHI), so one record's commands stay in one partition, in order.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use retain_codec::{DisposalCommandMessage, Framing, encode_disposal_command};
use retain_govern::{CommandSink, ManifestEntry};
use tracing::{debug, info};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::{consumer_config, partition_count, producer_config};

/// The topic disposal commands go to.
pub const TOPIC_DISPOSAL_COMMANDS: &str = "retain.disposal-commands";

/// Publishes disposal commands to a Kafka topic (which must exist).
pub struct CommandPublisher {
    producer: FutureProducer,
    topic: String,
    framing: Framing,
}

impl std::fmt::Debug for CommandPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandPublisher")
            .field("topic", &self.topic)
            .finish()
    }
}

impl CommandPublisher {
    /// A publisher to `topic` on `kafka`; fails if the broker cannot be reached or the topic
    /// does not exist (checked now, before anything is disposed of).
    pub fn connect(kafka: &KafkaConfig, topic: &str) -> Result<Self> {
        let kafka_error = |operation, source| Error::Kafka {
            operation,
            topic: topic.to_owned(),
            source,
        };
        let producer: FutureProducer = producer_config(kafka)
            .create()
            .map_err(|e| kafka_error("create producer", e))?;
        let probe: BaseConsumer = consumer_config(kafka, "retain-disposal-commands-probe")
            .create()
            .map_err(|e| kafka_error("create metadata client", e))?;
        partition_count(&probe, topic)?;
        Ok(CommandPublisher {
            producer,
            topic: topic.to_owned(),
            framing: Framing::SingleObject,
        })
    }

    /// The topic published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes one command per entry, issued at `issued_at`, and waits until every one is
    /// acknowledged by the broker.
    pub async fn publish_commands(
        &self,
        manifest_id: &str,
        entries: &[ManifestEntry],
        issued_at: DateTime<Utc>,
    ) -> Result<()> {
        let failed = |command_id: &str, reason: String| Error::Command {
            topic: self.topic.clone(),
            command_id: command_id.to_owned(),
            reason,
        };
        let mut pending = Vec::with_capacity(entries.len());
        for e in entries {
            let command = command_for(manifest_id, e, issued_at);
            let payload = encode_disposal_command(&command, self.framing)
                .map_err(|source| failed(&command.command_id, source.to_string()))?;
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic)
                .key(e.record_key.as_str())
                .payload(payload.as_slice());
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        debug!("producer queue full; waiting");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err((source, _)) => {
                        return Err(Error::Kafka {
                            operation: "produce a disposal command",
                            topic: self.topic.clone(),
                            source,
                        });
                    }
                }
            };
            pending.push((command.command_id, delivery));
        }
        for (command_id, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((source, _))) => {
                    return Err(failed(&command_id, format!("not acknowledged: {source}")));
                }
                Err(_) => return Err(failed(&command_id, "delivery cancelled".to_owned())),
            }
        }
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|source| Error::Kafka {
                operation: "flush",
                topic: self.topic.clone(),
                source,
            })?;
        info!(topic = %self.topic, manifest = manifest_id, commands = entries.len(), "disposal commands published");
        Ok(())
    }
}

/// The command for one manifest entry.
pub fn command_for(
    manifest_id: &str,
    e: &ManifestEntry,
    issued_at: DateTime<Utc>,
) -> DisposalCommandMessage {
    DisposalCommandMessage {
        command_id: format!("{manifest_id}/{}", e.record_key),
        manifest_id: manifest_id.to_owned(),
        tenant: e.tenant.clone(),
        mailbox: e.mailbox.clone(),
        message_id: e.message_id.clone(),
        key_hash: e.record_key.clone(),
        category: e.category.clone(),
        rule: e.rule.clone(),
        policy_version: e.policy_version.clone(),
        retain_until: e.retain_until,
        issued_at,
    }
}

#[async_trait::async_trait]
impl CommandSink for CommandPublisher {
    async fn publish(
        &self,
        manifest_id: &str,
        entries: &[ManifestEntry],
    ) -> retain_govern::Result<()> {
        self.publish_commands(manifest_id, entries, Utc::now())
            .await
            .map_err(|e| retain_govern::Error::Query {
                doing: format!("publishing the disposal commands of manifest {manifest_id}"),
                source: Box::new(e),
            })
    }
}
