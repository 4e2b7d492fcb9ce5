//! Errors of holds and disposal. Each names what was wrong and where; none carries a record's
//! content (subjects and addresses are PHI).

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hold scope that cannot be used.
    #[error("bad hold scope: {reason}")]
    Scope {
        /// Why.
        reason: String,
    },
    /// A hold predicate that does not compile against the `records` schema.
    #[error("hold {hold}: the condition cannot be used: {reason}")]
    Predicate {
        /// The hold's id (or `new` before it has one).
        hold: String,
        /// Why (DataFusion's message, first line).
        reason: String,
    },
    /// A request refused by the rules (a release without an approver, an unknown hold, ...).
    #[error("refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// A lake table could not be read or written.
    #[error(transparent)]
    Lake(Box<retain_lake::Error>),
    /// A query or evaluation failed.
    #[error("{doing}: {source}")]
    Query {
        /// What was being done.
        doing: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Whether the caller's request or input is at fault (exit 2), not the system.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::Scope { .. } | Error::Predicate { .. } | Error::Refused { .. }
        )
    }
}

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
