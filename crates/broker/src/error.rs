//! The embedded broker's one error type.
//!
//! Messages name the directory, address or topic involved; the cause is the error's source, so
//! a printed chain (`{:#}` with anyhow) shows both without repeating.

use std::{io, net::SocketAddr, path::PathBuf, time::Duration};

use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong starting, using or stopping the embedded broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage directory could not be created or resolved.
    #[error("cannot use {} as the broker's storage directory", path.display())]
    DataDir {
        /// The directory as given.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },

    /// Another broker (in this or another process) is using the directory.
    #[error("another embedded broker holds {}", path.display())]
    InUse {
        /// The lock file.
        path: PathBuf,
    },

    /// The working directory, which tansu resolves storage paths against, could not be read.
    #[error("cannot read the current working directory")]
    CurrentDir {
        /// The I/O error.
        source: io::Error,
    },

    /// The database path cannot be handed to tansu as a `sqlite://` URL.
    #[error("cannot give {} to tansu as a sqlite:// URL: {reason}", path.display())]
    UnsupportedPath {
        /// The database file.
        path: PathBuf,
        /// Why not.
        reason: &'static str,
    },

    /// A URL for tansu did not parse.
    #[error("invalid URL {url}")]
    Url {
        /// The URL text.
        url: String,
        /// What the parser reported.
        source: url::ParseError,
    },

    /// No free port could be found on 127.0.0.1.
    #[error("cannot find a free port on 127.0.0.1")]
    FreePort {
        /// The I/O error.
        source: io::Error,
    },

    /// The broker's runtime or thread could not be created.
    #[error("cannot start the embedded broker's runtime")]
    Runtime {
        /// The I/O error.
        source: io::Error,
    },

    /// tansu could not open its SQLite storage.
    #[error("tansu cannot open its SQLite storage at {}", path.display())]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What tansu reported.
        source: Box<tansu_broker::Error>,
    },

    /// The broker failed to listen, or stopped serving with an error.
    #[error("the embedded broker on {address} stopped")]
    Listen {
        /// The address it was given.
        address: SocketAddr,
        /// What tansu reported.
        source: Box<tansu_broker::Error>,
    },

    /// The broker did not accept connections in time.
    #[error("the embedded broker on {address} did not accept connections within {timeout:?}")]
    StartTimeout {
        /// The address it was given.
        address: SocketAddr,
        /// How long start-up waited.
        timeout: Duration,
    },

    /// The broker's task or thread panicked, or ended without reporting (a bug).
    #[error("the embedded broker on {address} crashed")]
    Crashed {
        /// The address it was given (port 0 when it crashed before choosing one).
        address: SocketAddr,
    },

    /// A Kafka admin client for the broker could not be created or its request failed.
    #[error("Kafka admin request to {address} failed")]
    Admin {
        /// The broker's address.
        address: SocketAddr,
        /// What rdkafka reported.
        source: KafkaError,
    },

    /// The broker refused to create a topic.
    #[error("cannot create topic {topic} with {partitions} partitions on {address}: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The partitions asked for.
        partitions: i32,
        /// The broker's address.
        address: SocketAddr,
        /// The broker's error code (`TopicAlreadyExists`, `InvalidPartitions`, ...).
        code: RDKafkaErrorCode,
    },
}

impl Error {
    /// Whether the caller's input is at fault (a path tansu cannot take, a topic that exists
    /// or is invalid), rather than the environment (ports, disk, a stopped broker) or a bug.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::UnsupportedPath { .. } => true,
            Error::CreateTopic { code, .. } => matches!(
                code,
                RDKafkaErrorCode::TopicAlreadyExists
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidReplicationFactor
            ),
            _ => false,
        }
    }

    /// Whether this is a bug (in this crate or tansu) rather than bad input or the environment.
    pub fn is_bug(&self) -> bool {
        matches!(self, Error::Crashed { .. } | Error::Url { .. })
    }
}
