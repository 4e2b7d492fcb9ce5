//! The stream crate's one error type, and what the stage runner does with each kind.
//!
//! Messages name topics, partitions, offsets and table versions, never a value from a record
//! (addresses, subjects and patient references are PHI).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Result with the stream crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the stage runner does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// One record is bad: dead-letter it and keep going.
    BadInput,
    /// An outside system (broker, object store) is down or busy: back off and retry.
    Unavailable,
    /// A bug or a misconfiguration: stop loudly.
    Bug,
}

/// Everything that can go wrong in a streaming stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kafka client call failed (create, subscribe, metadata, seek, commit, receive).
    #[error("kafka {operation} on `{topic}` failed: {source}")]
    Kafka {
        /// What was being done.
        operation: &'static str,
        /// The topic involved.
        topic: String,
        /// What librdkafka said.
        source: KafkaError,
    },

    /// A produced record was not acknowledged. Fatal: the idempotent producer with the gapless
    /// guarantee cannot have written anything after it, and the stage restarts from its last
    /// committed input offsets.
    #[error("delivery to {topic}/{partition} of the record from offset {offset} failed: {source}")]
    Delivery {
        /// The topic produced to.
        topic: String,
        /// The partition produced to.
        partition: i32,
        /// The input offset the record came from.
        offset: i64,
        /// What librdkafka said.
        source: KafkaError,
    },

    /// Reading or writing retention events, or recomputing records with them (crates/events).
    #[error(transparent)]
    Events {
        /// The cause.
        #[from]
        source: retain_events::Error,
    },

    /// A topic the stage needs does not exist.
    #[error("topic `{topic}` does not exist")]
    MissingTopic {
        /// The topic.
        topic: String,
    },

    /// The classified topic has fewer partitions than the input: records could not keep their
    /// input partition number, which the scheduler's lineage de-duplication relies on.
    #[error(
        "`{output}` has {output_partitions} partitions, fewer than the {input_partitions} of `{input}`"
    )]
    Partitions {
        /// The input topic.
        input: String,
        /// Its partition count.
        input_partitions: usize,
        /// The output topic.
        output: String,
        /// Its partition count.
        output_partitions: usize,
    },

    /// A record cannot be decoded or does not fit (bad input: dead-lettered).
    #[error("record at {topic}/{partition}@{offset}: {reason}")]
    Record {
        /// The topic it was read from.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Why (never a value from the record).
        reason: String,
    },

    /// The codec failed on a record for a reason other than its content (a bug: every decoded
    /// record must encode, and the built-in schemas must resolve).
    #[error("codec failure on the record from {topic}/{partition}@{offset}: {source}")]
    Codec {
        /// The topic it was read from.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// What the codec said.
        source: retain_codec::Error,
    },

    /// Opening, reading or landing into the `records` table failed.
    #[error("records table: {source}")]
    Lake {
        /// What the lake crate said (it names the table, version, app id and partition).
        #[from]
        source: retain_lake::Error,
    },

    /// A disposal command could not be encoded, or the broker did not acknowledge it.
    #[error("disposal command {command_id} to `{topic}`: {reason}")]
    Command {
        /// The topic.
        topic: String,
        /// `<manifest>/<record key>` (no PHI).
        command_id: String,
        /// What went wrong.
        reason: String,
    },

    /// Opening, reading or appending to the `audit` table failed.
    #[error("audit table: {source}")]
    Audit {
        /// What the lake crate said.
        source: retain_lake::Error,
    },
}

impl Error {
    /// Whether to dead-letter, retry or stop.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Record { .. } => ErrorKind::BadInput,
            Error::Kafka { source, .. } => kafka_kind(source),
            Error::Lake { source } if source.is_bad_input() => ErrorKind::BadInput,
            Error::Lake { source } if source.is_retryable() => ErrorKind::Unavailable,
            Error::Audit { source } if source.is_retryable() => ErrorKind::Unavailable,
            Error::Events { source } if source.is_retryable() => ErrorKind::Unavailable,
            Error::Delivery { .. }
            | Error::MissingTopic { .. }
            | Error::Partitions { .. }
            | Error::Codec { .. }
            | Error::Command { .. }
            | Error::Lake { .. }
            | Error::Audit { .. }
            | Error::Events { .. } => ErrorKind::Bug,
        }
    }
}

/// Kafka errors are the broker being away unless librdkafka says the client is unusable or the
/// configuration is wrong.
fn kafka_kind(e: &KafkaError) -> ErrorKind {
    match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => ErrorKind::Bug,
        _ => match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::InvalidArgument
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed,
            ) => ErrorKind::Bug,
            _ => ErrorKind::Unavailable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_runner_contract() {
        let bad = Error::Record {
            topic: "retain.mail".into(),
            partition: 1,
            offset: 7,
            reason: "truncated header".into(),
        };
        assert_eq!(bad.kind(), ErrorKind::BadInput);
        assert_eq!(
            bad.to_string(),
            "record at retain.mail/1@7: truncated header"
        );
        let down = Error::Kafka {
            operation: "receive",
            topic: "retain.mail".into(),
            source: KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure),
        };
        assert_eq!(down.kind(), ErrorKind::Unavailable);
        let fatal = Error::Kafka {
            operation: "receive",
            topic: "retain.mail".into(),
            source: KafkaError::MessageConsumption(RDKafkaErrorCode::Fatal),
        };
        assert_eq!(fatal.kind(), ErrorKind::Bug);
        let short = Error::Partitions {
            input: "a".into(),
            input_partitions: 3,
            output: "b".into(),
            output_partitions: 2,
        };
        assert_eq!(short.kind(), ErrorKind::Bug);
    }
}
