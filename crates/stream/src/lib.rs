//! Retain's streaming stages: the two Kafka consumers between the mail topic and the `records`
//! table, exactly once end to end without Kafka transactions.
//!
//! - [`Classifier`] (group `retain-classifier`): reads `MailMessage`s from `retain.mail`,
//!   classifies them with a [`Policy`](retain_policy::Policy) and produces `ClassifiedRecord`s to
//!   `retain.classified`, to the *same partition number*, with the same key and the input's
//!   topic/partition/offset as lineage. Undecodable input goes to `retain.mail.dlq`. Input offsets
//!   are committed only after every produced record is acknowledged: at least once.
//! - [`Scheduler`] (group `retain-scheduler`): reads `retain.classified`, schedules each record,
//!   and lands Arrow batches in the `records` Delta table. The table is the source of truth: each
//!   commit carries the classified topic's next offsets (`retain-scheduler-{p}`) and the highest
//!   input offset landed per input partition (`retain-lineage-{p}`), so a restart seeks to the
//!   table's offsets and classifier replays are dropped by lineage.
//!
//! `docs/architecture.md` walks through the exactly-once argument crash point by crash point.

mod audit;
mod classifier;
mod commands;
mod config;
mod dead_letters;
mod error;
mod events;
mod facts;
mod kafka;
mod metrics;
mod scheduler;

pub use audit::BACKFILL_LOOKBACK;
pub use classifier::{Classifier, ClassifierStats};
pub use commands::{CommandPublisher, TOPIC_DISPOSAL_COMMANDS, command_for};
pub use config::{
    APP_LINEAGE, APP_SCHEDULER, ClassifierConfig, FlushPolicy, FlushReason, GROUP_CLASSIFIER,
    GROUP_SCHEDULER, KafkaConfig, SchedulerConfig, TOPIC_CLASSIFIED, TOPIC_MAIL, dead_letter_topic,
};
pub use dead_letters::{APP_DEAD_LETTERS, DeadLetterSink, DeadLettersConfig, DeadLettersStats};
pub use error::{Error, ErrorKind, Result};
pub use events::{
    APP_EVENTS, EventsConfig, EventsFacts, EventsStage, EventsStats, TOPIC_RETENTION_EVENTS,
};
pub use facts::{FactsSource, InMemoryFacts, Known, NoFacts, apply_facts};
pub use kafka::{HEADER_ERROR, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC};
pub use metrics::{
    Counter, FLUSH_BUCKETS, Histogram, MetricsRegistry, StageMetrics, serve_metrics,
};
pub use scheduler::{Scheduler, SchedulerStats};

/// Re-exported so callers stop stages with the same token type.
pub use tokio_util::sync::CancellationToken;
