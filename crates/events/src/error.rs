//! The crate's errors: what was wrong and where, never a PHI value.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `records` (or `events`) column could not be read as expected.
    #[error("reading column `{column}`: {reason}")]
    Rows {
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// A Delta table could not be opened, read or written.
    #[error(transparent)]
    Lake(#[from] retain_lake::Error),
    /// A DataFusion or deltalake operation failed while doing something.
    #[error("{doing}: {source}")]
    Query {
        /// What was being done.
        doing: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The compliance lock refuses a change that moves dates earlier.
    #[error(
        "the compliance lock is on (since records version {locked_at}): the new policy would move {count} record(s) to an earlier date (e.g. record {example}); nothing was changed"
    )]
    Locked {
        /// How many records would move earlier.
        count: u64,
        /// One of them (a record key, not PHI).
        example: String,
        /// The `records` version that turned the lock on.
        locked_at: i64,
    },
    /// A request that cannot be carried out as given (blank names, the same approver).
    #[error("{0}")]
    Refused(String),
    /// Another writer kept winning the commit.
    #[error("{what}: another writer committed first {attempts} times; run it again")]
    Contended {
        /// What was being committed.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
}

impl Error {
    /// Whether the request itself must change (exit 2 in the CLI): the lock, a refusal.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Locked { .. } | Error::Refused(_))
    }

    /// Whether trying again later may succeed (storage away, a commit race).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Lake(e) => e.is_retryable(),
            Error::Contended { .. } => true,
            Error::Query { source, .. } => source
                .downcast_ref::<retain_lake::deltalake::DeltaTableError>()
                .is_some_and(retain_lake::is_commit_race),
            _ => false,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A DataFusion or deltalake failure while `doing` something.
pub(crate) fn query(
    doing: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Query {
        doing: doing.into(),
        source: Box::new(e),
    }
}
