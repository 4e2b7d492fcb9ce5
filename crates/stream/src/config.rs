//! Stage settings, names of topics, groups and table app ids.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use retain_codec::Framing;

/// The input topic: `MailMessage`s, Avro single-object encoded, keyed by message id.
pub const TOPIC_MAIL: &str = "retain.mail";
/// The classifier's output: `ClassifiedRecord`s on the input's partition number, same key.
pub const TOPIC_CLASSIFIED: &str = "retain.classified";
/// The classifier's consumer group.
pub const GROUP_CLASSIFIER: &str = "retain-classifier";
/// The scheduler's consumer group (its committed offsets are for lag metrics only).
pub const GROUP_SCHEDULER: &str = "retain-scheduler";
/// The `txn` app id of the scheduler's next offsets in the classified topic.
pub const APP_SCHEDULER: &str = "retain-scheduler";
/// The `txn` app id of the next input offset landed per input partition (lineage).
pub const APP_LINEAGE: &str = "retain-lineage";

/// The dead-letter topic of `topic`: `<topic>.dlq`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// How to reach Kafka.
#[derive(Clone, Default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Further librdkafka settings (security, timeouts); they override the stage's defaults.
    pub settings: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    // Settings may hold passwords: only their names are printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaConfig {
    /// Settings for a broker at `bootstrap_servers` with the defaults.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            settings: BTreeMap::new(),
        }
    }
}

/// The classifier stage's settings.
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Where `MailMessage`s are read.
    pub input_topic: String,
    /// Where `ClassifiedRecord`s go (at least as many partitions as the input).
    pub output_topic: String,
    /// Where undecodable input goes.
    pub dead_letter_topic: String,
    /// The consumer group.
    pub group_id: String,
    /// Written into every `ClassifiedRecord`.
    pub classifier_version: String,
    /// How the output is framed.
    pub framing: Framing,
    /// At most this many input records are in flight between two offset commits.
    pub max_in_flight: usize,
}

impl ClassifierConfig {
    /// The default topics and group on `kafka`.
    pub fn new(kafka: KafkaConfig) -> Self {
        ClassifierConfig {
            kafka,
            input_topic: TOPIC_MAIL.to_owned(),
            output_topic: TOPIC_CLASSIFIED.to_owned(),
            dead_letter_topic: dead_letter_topic(TOPIC_MAIL),
            group_id: GROUP_CLASSIFIER.to_owned(),
            classifier_version: concat!("retain-stream/", env!("CARGO_PKG_VERSION")).to_owned(),
            framing: Framing::SingleObject,
            max_in_flight: 1_000,
        }
    }

    /// Reads `input` and writes `output` (dead letters to `<input>.dlq`).
    pub fn with_topics(mut self, input: &str, output: &str) -> Self {
        self.input_topic = input.to_owned();
        self.output_topic = output.to_owned();
        self.dead_letter_topic = dead_letter_topic(input);
        self
    }
}

/// When the scheduler lands what it has buffered: whichever limit is reached first.
///
/// Memory is bounded by `max_rows` and `max_bytes` (the stage stops reading while it lands;
/// librdkafka's pre-fetch queue is bounded separately, see `docs/operations.md`); file sizes by
/// `target_file_size`; freshness by `max_latency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Rows in the buffer.
    pub max_rows: usize,
    /// Encoded input bytes in the buffer (the Avro payloads' sizes).
    pub max_bytes: usize,
    /// The Parquet file a landing would write, estimated from the bytes per row of the last
    /// landing (before the first one, from the encoded input bytes, which are larger).
    pub target_file_size: u64,
    /// Time since the first unlanded record was read.
    pub max_latency: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_rows: 50_000,
            max_bytes: 32 << 20,
            target_file_size: 64 << 20,
            max_latency: Duration::from_secs(5),
        }
    }
}

/// Why a buffer is landed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// `max_rows` reached.
    Rows,
    /// `max_bytes` reached.
    Bytes,
    /// The estimated file reached `target_file_size`.
    FileSize,
}

impl FlushPolicy {
    /// Whether a buffer of `rows` rows and `bytes` encoded input bytes is due for landing by
    /// size; `bytes_per_row` is what the last landing wrote per row, if there was one.
    pub fn due_by_size(
        &self,
        rows: usize,
        bytes: usize,
        bytes_per_row: Option<f64>,
    ) -> Option<FlushReason> {
        let estimated_file = match bytes_per_row {
            Some(b) => rows as f64 * b,
            None => bytes as f64,
        };
        if rows >= self.max_rows {
            Some(FlushReason::Rows)
        } else if bytes >= self.max_bytes {
            Some(FlushReason::Bytes)
        } else if rows > 0 && estimated_file >= self.target_file_size as f64 {
            Some(FlushReason::FileSize)
        } else {
            None
        }
    }
}

/// The scheduler stage's settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Where `ClassifiedRecord`s are read.
    pub input_topic: String,
    /// The topic every record's lineage must name (the classifier's input).
    pub source_topic: String,
    /// Where records that cannot be decoded or landed go.
    pub dead_letter_topic: String,
    /// The consumer group (lag metrics only).
    pub group_id: String,
    /// The `records` table location (path, `file://` or `s3://`).
    pub table_location: String,
    /// Object-store options for the table (may hold keys; never logged).
    pub storage_options: HashMap<String, String>,
    /// `txn` app id of the classified topic's offsets.
    pub app_id: String,
    /// `txn` app id of the lineage (input) offsets.
    pub lineage_app_id: String,
    /// When to land.
    pub flush: FlushPolicy,
    /// The `audit` table (path, `file://` or `s3://`, same storage options as the `records`
    /// table) that gets one `records_landed` entry per landing, backfilled on start for
    /// landings a crash left without one (`docs/audit.md`). `None`: no audit trail.
    pub audit_location: Option<String>,
}

impl SchedulerConfig {
    /// The default topics, group and app ids on `kafka`, landing into `table_location`.
    pub fn new(kafka: KafkaConfig, table_location: impl Into<String>) -> Self {
        SchedulerConfig {
            kafka,
            input_topic: TOPIC_CLASSIFIED.to_owned(),
            source_topic: TOPIC_MAIL.to_owned(),
            dead_letter_topic: dead_letter_topic(TOPIC_CLASSIFIED),
            group_id: GROUP_SCHEDULER.to_owned(),
            table_location: table_location.into(),
            storage_options: HashMap::new(),
            app_id: APP_SCHEDULER.to_owned(),
            lineage_app_id: APP_LINEAGE.to_owned(),
            flush: FlushPolicy::default(),
            audit_location: None,
        }
    }

    /// Reads `input` (dead letters to `<input>.dlq`), whose lineage must name `source`.
    pub fn with_topics(mut self, input: &str, source: &str) -> Self {
        self.input_topic = input.to_owned();
        self.source_topic = source.to_owned();
        self.dead_letter_topic = dead_letter_topic(input);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_name_the_documented_topics() {
        let c = ClassifierConfig::new(KafkaConfig::new("localhost:9092"));
        assert_eq!(c.dead_letter_topic, "retain.mail.dlq");
        let s = SchedulerConfig::new(KafkaConfig::new("localhost:9092"), "/tmp/t");
        assert_eq!(s.dead_letter_topic, "retain.classified.dlq");
        assert_ne!(s.app_id, s.lineage_app_id);
    }

    #[test]
    fn flushes_at_the_first_limit_reached() {
        let f = FlushPolicy {
            max_rows: 100,
            max_bytes: 10_000,
            target_file_size: 5_000,
            max_latency: Duration::from_secs(1),
        };
        assert_eq!(f.due_by_size(0, 0, None), None);
        assert_eq!(f.due_by_size(100, 0, Some(1.0)), Some(FlushReason::Rows));
        assert_eq!(
            f.due_by_size(10, 10_000, Some(1.0)),
            Some(FlushReason::Bytes)
        );
        // Before a landing, the encoded input stands in for the file size.
        assert_eq!(f.due_by_size(10, 4_999, None), None);
        assert_eq!(f.due_by_size(10, 5_000, None), Some(FlushReason::FileSize));
        // After one, the bytes per row it wrote do.
        assert_eq!(f.due_by_size(49, 9_000, Some(100.0)), None);
        assert_eq!(
            f.due_by_size(50, 100, Some(100.0)),
            Some(FlushReason::FileSize)
        );
    }

    #[test]
    fn kafka_settings_values_are_never_printed() {
        let mut k = KafkaConfig::new("b:9092");
        k.settings.insert("sasl.password".into(), "hunter2".into());
        let shown = format!("{k:?}");
        assert!(shown.contains("sasl.password") && !shown.contains("hunter2"));
    }
}
