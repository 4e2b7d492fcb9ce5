//! Kafka plumbing shared by the stages: client settings, dead-letter headers, metadata checks
//! and back-off.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{ClientConfig, ClientContext, Statistics};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::metrics::StageMetrics;

/// Dead-letter header: why the record was dead-lettered (never a value from it).
pub const HEADER_ERROR: &str = "retain.error";
/// Dead-letter header: the topic the record was read from.
pub const HEADER_SOURCE_TOPIC: &str = "retain.source.topic";
/// Dead-letter header: its partition (decimal).
pub const HEADER_SOURCE_PARTITION: &str = "retain.source.partition";
/// Dead-letter header: its offset (decimal).
pub const HEADER_SOURCE_OFFSET: &str = "retain.source.offset";

/// How long a metadata request, seek or similar control call may take.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumer settings: manual commits, offsets stored by the stage, earliest when unknown; a
/// 16 MiB pre-fetch queue (librdkafka's default is 64 MiB: the bound on what a stage holds
/// before it asks for more); statistics every 5 s for the lag metric.
pub(crate) fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("queued.max.messages.kbytes", "16384")
        .set("statistics.interval.ms", "5000");
    for (k, v) in &kafka.settings {
        c.set(k, v);
    }
    c
}

/// Producer settings: every record acknowledged by all in-sync replicas, idempotent and gapless
/// (a failure that could leave a gap in a partition is fatal instead), order kept per partition.
pub(crate) fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("enable.gapless.guarantee", "true")
        .set("message.timeout.ms", "300000")
        .set("linger.ms", "5")
        // 64 MiB of unacknowledged records at most (librdkafka's default is 1 GiB); a full
        // queue makes the classifier wait.
        .set("queue.buffering.max.kbytes", "65536");
    for (k, v) in &kafka.settings {
        c.set(k, v);
    }
    c
}

/// A consumer's context: hands librdkafka's statistics (every `statistics.interval.ms`) to the
/// stage's metrics as consumer lag.
pub(crate) struct StatsContext {
    topic: String,
    metrics: Arc<StageMetrics>,
}

impl StatsContext {
    pub(crate) fn new(topic: &str, metrics: Arc<StageMetrics>) -> Self {
        StatsContext {
            topic: topic.to_owned(),
            metrics,
        }
    }
}

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        self.metrics.record_lag(&self.topic, &statistics);
    }
}

impl ConsumerContext for StatsContext {}

/// The headers of a dead letter read from `topic`/`partition`@`offset`.
pub(crate) fn dead_letter_headers(
    error: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = offset.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: HEADER_ERROR,
            value: Some(error),
        })
        .insert(Header {
            key: HEADER_SOURCE_TOPIC,
            value: Some(topic),
        })
        .insert(Header {
            key: HEADER_SOURCE_PARTITION,
            value: Some(&partition),
        })
        .insert(Header {
            key: HEADER_SOURCE_OFFSET,
            value: Some(&offset),
        })
}

/// How many partitions `topic` has (it must exist).
pub(crate) fn partition_count<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
) -> Result<usize> {
    let metadata = consumer
        .fetch_metadata(Some(topic), CONTROL_TIMEOUT)
        .map_err(|source| Error::Kafka {
            operation: "fetch metadata",
            topic: topic.to_owned(),
            source,
        })?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
        _ => Err(Error::MissingTopic {
            topic: topic.to_owned(),
        }),
    }
}

/// Exponential back-off for retrying an outside system: 100 ms doubling to 10 s.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(10));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn dead_letters_carry_the_four_headers() {
        let h = dead_letter_headers("bad framing", "retain.mail", 2, 41);
        let got: Vec<(String, String)> = h
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (HEADER_ERROR.to_owned(), "bad framing".to_owned()),
                (HEADER_SOURCE_TOPIC.to_owned(), "retain.mail".to_owned()),
                (HEADER_SOURCE_PARTITION.to_owned(), "2".to_owned()),
                (HEADER_SOURCE_OFFSET.to_owned(), "41".to_owned()),
            ]
        );
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays[..3], [100, 200, 400]);
        assert_eq!(delays[9], 10_000);
    }
}
