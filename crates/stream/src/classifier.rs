//! The classifier stage: `retain.mail` → classify → `retain.classified` (or the dead letters).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use retain_codec::{
    ClassifiedRecord, Lineage, SchemaRegistry, decode_mail_message, encode_classified_record,
};
use retain_policy::Policy;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::config::ClassifierConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::kafka::{
    Backoff, StatsContext, consumer_config, dead_letter_headers, partition_count, producer_config,
};
use crate::metrics::StageMetrics;

type MailConsumer = StreamConsumer<StatsContext>;

/// What a classifier run did (read from its [`StageMetrics`] when it stops).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClassifierStats {
    /// Input records read.
    pub consumed: u64,
    /// Classified records produced and acknowledged.
    pub classified: u64,
    /// Input records dead-lettered (and acknowledged).
    pub dead_lettered: u64,
    /// Offset commits made (one per acknowledged chunk).
    pub commits: u64,
}

impl From<&StageMetrics> for ClassifierStats {
    fn from(m: &StageMetrics) -> Self {
        ClassifierStats {
            consumed: m.consumed.get(),
            classified: m.produced.get(),
            dead_lettered: m.dead_lettered.get(),
            commits: m.commits.get(),
        }
    }
}

/// The classifier stage: consumes `MailMessage`s, produces `ClassifiedRecord`s to the same
/// partition number, commits input offsets only after every produced record is acknowledged.
#[derive(Debug)]
pub struct Classifier {
    config: ClassifierConfig,
    policy: Arc<Policy>,
    registry: SchemaRegistry,
    metrics: Arc<StageMetrics>,
}

/// What one input record becomes.
enum Outgoing {
    Classified(Vec<u8>),
    Dead(String),
}

impl Classifier {
    /// A classifier with `config` classifying by `policy`.
    pub fn new(config: ClassifierConfig, policy: Arc<Policy>) -> Self {
        Classifier {
            config,
            policy,
            registry: SchemaRegistry::new(),
            metrics: Arc::new(StageMetrics::new("classifier")),
        }
    }

    /// The stage's counters, live while it runs (register them to serve `/metrics`).
    pub fn metrics(&self) -> Arc<StageMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until `shutdown` is cancelled (then returns what it did) or a bug or
    /// misconfiguration stops it (then returns the error). Unacknowledged work is not
    /// committed: the next run reads it again.
    pub async fn run(self, shutdown: CancellationToken) -> Result<ClassifierStats> {
        let c = &self.config;
        let kafka = |operation, source| Error::Kafka {
            operation,
            topic: c.input_topic.clone(),
            source,
        };
        let context = StatsContext::new(&c.input_topic, Arc::clone(&self.metrics));
        let consumer: MailConsumer = consumer_config(&c.kafka, &c.group_id)
            .create_with_context(context)
            .map_err(|e| kafka("create consumer", e))?;
        let producer: FutureProducer = producer_config(&c.kafka)
            .create()
            .map_err(|e| kafka("create producer", e))?;
        self.check_partitions(&consumer, &shutdown).await?;
        consumer
            .subscribe(&[&c.input_topic])
            .map_err(|e| kafka("subscribe", e))?;
        info!(input = %c.input_topic, output = %c.output_topic, group = %c.group_id, "classifier started");

        let m = &self.metrics;
        let mut backoff = Backoff::new();
        loop {
            let Some(chunk) = self.next_chunk(&consumer, &shutdown, &mut backoff).await? else {
                break;
            };
            let mut deliveries = Vec::with_capacity(chunk.len());
            let mut next = BTreeMap::new();
            for msg in &chunk {
                m.consumed.inc();
                let out = self.classify(msg)?;
                let dead = matches!(out, Outgoing::Dead(_));
                deliveries.push((msg.offset(), dead, self.send(&producer, msg, out).await?));
                next.insert(msg.partition(), msg.offset() + 1);
            }
            // Acknowledged, all of them, before the input offsets move.
            for (offset, dead, delivery) in deliveries {
                let acked = tokio::select! {
                    () = shutdown.cancelled() => {
                        info!("stopping with deliveries outstanding; they will be read again");
                        return Ok(ClassifierStats::from(&**m));
                    }
                    acked = delivery => acked,
                };
                let topic = if dead {
                    &c.dead_letter_topic
                } else {
                    &c.output_topic
                };
                match acked {
                    Ok(Ok(_)) if dead => m.dead_lettered.inc(),
                    Ok(Ok(_)) => m.produced.inc(),
                    Ok(Err((source, m))) => {
                        return Err(Error::Delivery {
                            topic: topic.clone(),
                            partition: m.partition(),
                            offset,
                            source,
                        });
                    }
                    Err(_) => {
                        return Err(Error::Delivery {
                            topic: topic.clone(),
                            partition: -1,
                            offset,
                            source: KafkaError::Canceled,
                        });
                    }
                }
            }
            self.commit(&consumer, &next)?;
            m.commits.inc();
        }
        let stats = ClassifierStats::from(&**m);
        info!(?stats, "classifier stopped");
        Ok(stats)
    }

    /// Refuses to start unless the output has at least the input's partitions (so every record
    /// keeps its partition number); retries while the broker is away.
    async fn check_partitions(
        &self,
        consumer: &MailConsumer,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let c = &self.config;
        let mut backoff = Backoff::new();
        loop {
            let counts = (|| -> Result<(usize, usize)> {
                let input = partition_count(consumer, &c.input_topic)?;
                let output = partition_count(consumer, &c.output_topic)?;
                partition_count(consumer, &c.dead_letter_topic)?;
                Ok((input, output))
            })();
            match counts {
                Ok((input, output)) if output >= input => return Ok(()),
                Ok((input, output)) => {
                    return Err(Error::Partitions {
                        input: c.input_topic.clone(),
                        input_partitions: input,
                        output: c.output_topic.clone(),
                        output_partitions: output,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Unavailable && !shutdown.is_cancelled() => {
                    warn!(error = %e, "cannot read topic metadata; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for one record, then takes what else is ready (up to `max_in_flight`). `None` once
    /// `shutdown` is cancelled.
    async fn next_chunk(
        &self,
        consumer: &MailConsumer,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Option<Vec<OwnedMessage>>> {
        let mut chunk = Vec::new();
        while chunk.is_empty() {
            let received = tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                r = consumer.recv() => r.map(|m| m.detach()),
            };
            match received {
                Ok(m) => {
                    chunk.push(m);
                    *backoff = Backoff::new();
                }
                Err(e) => self.receive_failed(e, backoff).await?,
            }
        }
        while chunk.len() < self.config.max_in_flight {
            match tokio::time::timeout(Duration::from_millis(20), consumer.recv()).await {
                Ok(Ok(m)) => chunk.push(m.detach()),
                Ok(Err(e)) => {
                    self.receive_failed(e, backoff).await?;
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(Some(chunk))
    }

    async fn receive_failed(&self, source: KafkaError, backoff: &mut Backoff) -> Result<()> {
        let e = Error::Kafka {
            operation: "receive",
            topic: self.config.input_topic.clone(),
            source,
        };
        if e.kind() != ErrorKind::Unavailable {
            return Err(e);
        }
        warn!(error = %e, "receive failed; backing off");
        tokio::time::sleep(backoff.next_delay()).await;
        Ok(())
    }

    /// Decodes and classifies one input record; bad input becomes a dead letter.
    #[instrument(skip_all, fields(topic = msg.topic(), partition = msg.partition(), offset = msg.offset()))]
    fn classify(&self, msg: &OwnedMessage) -> Result<Outgoing> {
        let c = &self.config;
        let bad = |reason: String| Error::Record {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            reason,
        };
        let decoded = match msg.payload() {
            None => Err(bad("no payload (tombstone)".to_owned())),
            Some(bytes) => decode_mail_message(bytes, &self.registry).map_err(|e| {
                if e.is_bad_input() {
                    bad(e.to_string())
                } else {
                    Error::Codec {
                        topic: msg.topic().to_owned(),
                        partition: msg.partition(),
                        offset: msg.offset(),
                        source: e,
                    }
                }
            }),
        };
        let message = match decoded {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::BadInput => {
                warn!(error = %e, "dead-lettering an undecodable input record");
                return Ok(Outgoing::Dead(e.to_string()));
            }
            Err(e) => return Err(e),
        };
        let classification = self.policy.classify(&message);
        let record = ClassifiedRecord::new(
            message,
            classification,
            c.classifier_version.as_str(),
            Lineage {
                topic: msg.topic().to_owned(),
                partition: msg.partition(),
                offset: msg.offset(),
            },
        );
        let bytes =
            encode_classified_record(&record, c.framing).map_err(|source| Error::Codec {
                topic: msg.topic().to_owned(),
                partition: msg.partition(),
                offset: msg.offset(),
                source,
            })?;
        Ok(Outgoing::Classified(bytes))
    }

    /// Queues one record for delivery: a classified record to the input's partition number, or
    /// the original payload to the dead-letter topic with the error and source headers.
    #[instrument(skip_all, fields(topic = msg.topic(), partition = msg.partition(), offset = msg.offset()))]
    async fn send(
        &self,
        producer: &FutureProducer,
        msg: &OwnedMessage,
        out: Outgoing,
    ) -> Result<DeliveryFuture> {
        let c = &self.config;
        let (topic, payload, headers) = match &out {
            Outgoing::Classified(bytes) => (&c.output_topic, bytes.as_slice(), None),
            Outgoing::Dead(error) => (
                &c.dead_letter_topic,
                msg.payload().unwrap_or_default(),
                Some(dead_letter_headers(
                    error,
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                )),
            ),
        };
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        match &out {
            Outgoing::Classified(_) => record = record.partition(msg.partition()),
            Outgoing::Dead(_) => {
                if let Some(h) = headers {
                    record = record.headers(h);
                }
            }
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    debug!("producer queue full; waiting");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((source, _)) => {
                    return Err(Error::Delivery {
                        topic: topic.clone(),
                        partition: msg.partition(),
                        offset: msg.offset(),
                        source,
                    });
                }
            }
        }
    }

    /// Commits the input's next offsets (asynchronously: a lost commit only means a replay,
    /// which the scheduler drops by lineage).
    #[instrument(skip_all, fields(topic = %self.config.input_topic, partitions = next.len()))]
    fn commit(&self, consumer: &MailConsumer, next: &BTreeMap<i32, i64>) -> Result<()> {
        let topic = &self.config.input_topic;
        let mut tpl = TopicPartitionList::with_capacity(next.len());
        for (&p, &o) in next {
            tpl.add_partition_offset(topic, p, Offset::Offset(o))
                .map_err(|source| Error::Kafka {
                    operation: "commit",
                    topic: topic.clone(),
                    source,
                })?;
        }
        match consumer.commit(&tpl, CommitMode::Async) {
            Ok(()) => Ok(()),
            Err(source) => {
                let e = Error::Kafka {
                    operation: "commit",
                    topic: topic.clone(),
                    source,
                };
                if e.kind() == ErrorKind::Bug {
                    return Err(e);
                }
                warn!(error = %e, "offset commit failed; the records will be read again");
                Ok(())
            }
        }
    }
}
