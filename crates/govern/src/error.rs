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
    /// A query or evaluation failed.
    #[error("{doing}: {source}")]
    Query {
        /// What was being done.
        doing: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
