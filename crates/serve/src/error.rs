//! Errors of the SQL endpoint. None carries a password or a row's content.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The users file cannot be read or written.
    #[error("{path}: {source}")]
    UsersIo {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The users file is not valid (TOML syntax, an unknown key, a bad hash or name).
    #[error("{path}: {reason}")]
    UsersFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or user.
        reason: String,
    },
    /// A bad argument: a user name, a role, an empty password, a listen address.
    #[error("{reason}")]
    Argument {
        /// Why.
        reason: String,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {path}: {reason}")]
    Tls {
        /// The certificate or key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The lake's catalog cannot be opened.
    #[error("opening the lake's SQL catalog: {0}")]
    Catalog(#[from] retain_query::Error),
    /// The audit trail cannot be opened or written.
    #[error("the audit trail: {0}")]
    Audit(#[from] retain_lake::Error),
    /// Masking the analyst catalog failed (a bug: the catalog's shape changed).
    #[error("building the analyst catalog: {0}")]
    Mask(#[from] retain_query::datafusion::error::DataFusionError),
}

impl Error {
    /// Whether the caller is at fault (a bad argument, file or name) rather than the system.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::UsersFile { .. } | Error::Argument { .. } | Error::Tls { .. } => true,
            Error::Catalog(e) => e.is_bad_input(),
            Error::UsersIo { .. } | Error::Bind { .. } | Error::Audit(_) | Error::Mask(_) => false,
        }
    }
}

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
