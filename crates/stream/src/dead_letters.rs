//! The dead-letter sink: the `.dlq` topics → the `dead_letters` Delta table, so the records
//! Retain refused can be counted and found with SQL (`retain sql`, `retain serve`) next to the
//! records it kept.
//!
//! One row per dead letter: where it sits (dead-letter topic, partition, offset), where it came
//! from and why (the `retain.*` headers every stage sets), its key, its size and when it was
//! dead-lettered. **Never the payload**: it may hold PHI, and it stays on the topic (for its
//! retention) for whoever repairs and replays it.
//!
//! Exactly once without a consumer group: each append carries, per dead-letter topic and
//! partition, the next offset as a Delta `txn` (`retain-dead-letters-<topic>-<p>`), and a
//! restart reads them back and seeks there. Run one sink per lake (`retain run all` starts it;
//! a second one would fail its commits on the same `txn`s and stop).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use retain_lake::deltalake::DeltaTable;
use retain_lake::deltalake::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use retain_lake::deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use retain_lake::deltalake::kernel::{StructType, Transaction};
use retain_lake::{
    DEAD_LETTERS_TABLE, append_batch, committed_offset_in, dead_letters_schema,
    open_or_create_table, txn_app_id,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{KafkaConfig, TOPIC_CLASSIFIED, TOPIC_MAIL, dead_letter_topic};
use crate::error::{Error, Result};
use crate::events::TOPIC_RETENTION_EVENTS;
use crate::kafka::{
    CONTROL_TIMEOUT, HEADER_ERROR, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC, consumer_config,
};

/// The `txn` app id prefix (`retain-dead-letters-<topic>-<p>`).
pub const APP_DEAD_LETTERS: &str = "retain-dead-letters";

/// Settings of the sink.
#[derive(Debug, Clone)]
pub struct DeadLettersConfig {
    /// Brokers and client settings.
    pub kafka: KafkaConfig,
    /// The dead-letter topics (default: those of the mail, classified and retention-events
    /// topics).
    pub topics: Vec<String>,
    /// The `dead_letters` table.
    pub location: String,
    /// Object-store options.
    pub storage_options: HashMap<String, String>,
    /// Append when this many are read...
    pub max_rows: usize,
    /// ... or this long after the first unstored one.
    pub max_latency: Duration,
}

impl DeadLettersConfig {
    /// Defaults for the table at `location`.
    pub fn new(kafka: KafkaConfig, location: &str) -> Self {
        DeadLettersConfig {
            kafka,
            topics: [TOPIC_MAIL, TOPIC_CLASSIFIED, TOPIC_RETENTION_EVENTS]
                .iter()
                .map(|t| dead_letter_topic(t))
                .collect(),
            location: location.to_owned(),
            storage_options: HashMap::new(),
            max_rows: 1_000,
            max_latency: Duration::from_secs(1),
        }
    }
}

/// What a sink run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLettersStats {
    /// Dead letters read.
    pub consumed: u64,
    /// Rows appended.
    pub stored: u64,
    /// Commits.
    pub batches: u64,
}

/// One dead letter, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    topic: String,
    partition: i32,
    offset: i64,
    source_topic: Option<String>,
    source_partition: Option<i32>,
    source_offset: Option<i64>,
    error: Option<String>,
    key: Option<String>,
    payload_bytes: i64,
    dead_lettered_at: Option<i64>,
}

impl Row {
    fn of(msg: &rdkafka::message::BorrowedMessage<'_>) -> Row {
        let mut headers: BTreeMap<&str, String> = BTreeMap::new();
        if let Some(h) = msg.headers() {
            for h in h.iter() {
                if let Some(v) = h.value {
                    headers.insert(h.key, String::from_utf8_lossy(v).into_owned());
                }
            }
        }
        Row {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            source_topic: headers.get(HEADER_SOURCE_TOPIC).cloned(),
            source_partition: headers
                .get(HEADER_SOURCE_PARTITION)
                .and_then(|p| p.parse().ok()),
            source_offset: headers
                .get(HEADER_SOURCE_OFFSET)
                .and_then(|o| o.parse().ok()),
            error: headers.get(HEADER_ERROR).cloned(),
            key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload_bytes: msg.payload().map_or(0, |p| p.len() as i64),
            dead_lettered_at: msg.timestamp().to_millis().map(|ms| ms * 1_000),
        }
    }
}

fn to_batch(rows: &[Row], stored_at: i64) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&Row) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(&r.topic)),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.partition),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        strings(&|r| r.source_topic.as_deref()),
        Arc::new(
            rows.iter()
                .map(|r| r.source_partition)
                .collect::<Int32Array>(),
        ),
        Arc::new(rows.iter().map(|r| r.source_offset).collect::<Int64Array>()),
        strings(&|r| r.error.as_deref()),
        strings(&|r| r.key.as_deref()),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.payload_bytes),
        )),
        ts(rows.iter().map(|r| r.dead_lettered_at).collect()),
        ts(vec![Some(stored_at); rows.len()]),
    ];
    RecordBatch::try_new(dead_letters_schema(), columns).map_err(|source| Error::Lake {
        source: retain_lake::Error::Arrow {
            table: DEAD_LETTERS_TABLE,
            source,
        },
    })
}

/// The sink.
#[derive(Debug)]
pub struct DeadLetterSink {
    config: DeadLettersConfig,
}

impl DeadLetterSink {
    /// A sink with `config`.
    pub fn new(config: DeadLettersConfig) -> Self {
        DeadLetterSink { config }
    }

    /// Runs until `shutdown` (storing what it read first).
    pub async fn run(self, shutdown: CancellationToken) -> Result<DeadLettersStats> {
        let c = &self.config;
        let delta: StructType = dead_letters_schema()
            .as_ref()
            .try_into_kernel()
            .expect("the dead-letters schema converts to a Delta schema");
        let (mut table, url) = open_or_create_table(
            &c.location,
            c.storage_options.clone(),
            DEAD_LETTERS_TABLE,
            "Retain dead letters: what the stages refused, where from and why (no payloads; docs/operations.md)",
            delta.fields().cloned(),
            &[],
        )
        .await?;
        let consumer: StreamConsumer = consumer_config(&c.kafka, APP_DEAD_LETTERS)
            .create()
            .map_err(|source| Error::Kafka {
                operation: "create consumer",
                topic: c.topics.join(","),
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        for topic in &c.topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), CONTROL_TIMEOUT)
                .map_err(|source| Error::Kafka {
                    operation: "metadata",
                    topic: topic.clone(),
                    source,
                })?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            if partitions.is_empty() {
                return Err(Error::MissingTopic {
                    topic: topic.clone(),
                });
            }
            for p in partitions {
                let at = committed(&table, &url, topic, p).await?;
                tpl.add_partition_offset(topic, p, at.map_or(Offset::Beginning, Offset::Offset))
                    .map_err(|source| Error::Kafka {
                        operation: "assign",
                        topic: topic.clone(),
                        source,
                    })?;
            }
        }
        consumer.assign(&tpl).map_err(|source| Error::Kafka {
            operation: "assign",
            topic: c.topics.join(","),
            source,
        })?;
        info!(topics = ?c.topics, "dead-letter sink started");

        let mut stats = DeadLettersStats::default();
        let mut rows: Vec<Row> = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                || rows.len() >= c.max_rows
            {
                store(&mut table, &url, &mut rows, &mut stats).await?;
                deadline = None;
            }
            let sleep = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep => {}
                received = consumer.recv() => match received {
                    Ok(msg) => {
                        stats.consumed += 1;
                        rows.push(Row::of(&msg));
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + c.max_latency);
                    }
                    Err(e) => {
                        warn!(error = %e, "receive failed; backing off");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        store(&mut table, &url, &mut rows, &mut stats).await?;
        info!(?stats, "dead-letter sink stopped");
        Ok(stats)
    }
}

/// The `txn` app id of `topic`'s partitions.
fn app_id(topic: &str) -> String {
    format!("{APP_DEAD_LETTERS}-{topic}")
}

/// The committed next offset of `topic`/`partition`.
async fn committed(table: &DeltaTable, url: &str, topic: &str, p: i32) -> Result<Option<i64>> {
    let state = table.snapshot().map_err(|e| Error::Lake {
        source: retain_lake::Error::Open {
            url: url.to_owned(),
            source: Box::new(e),
        },
    })?;
    Ok(committed_offset_in(table, state, url, &app_id(topic), p).await?)
}

/// Appends `rows` with the next offset of every partition they came from, in one commit.
async fn store(
    table: &mut DeltaTable,
    url: &str,
    rows: &mut Vec<Row>,
    stats: &mut DeadLettersStats,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for r in rows.iter() {
        let o = next.entry((r.topic.clone(), r.partition)).or_default();
        *o = (*o).max(r.offset + 1);
    }
    let txns: Vec<Transaction> = next
        .iter()
        .map(|((t, p), &o)| Transaction::new(txn_app_id(&app_id(t), *p), o))
        .collect();
    let batch = to_batch(rows, Utc::now().timestamp_micros())?;
    append_batch(table, url, APP_DEAD_LETTERS, batch, txns).await?;
    stats.stored += rows.len() as u64;
    stats.batches += 1;
    rows.clear();
    Ok(())
}
