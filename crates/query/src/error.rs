//! Errors of the SQL catalog. Each says what was being done; none carries a row's content.

use datafusion::error::DataFusionError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQL that does not parse.
    #[error("cannot parse the SQL: {source}")]
    Parse {
        /// DataFusion's (sqlparser's) message.
        source: DataFusionError,
    },
    /// A statement that parses but cannot be planned: an unknown table, column or function, a
    /// type mismatch.
    #[error("statement {statement}: {source}")]
    Plan {
        /// The statement's position in the text, from 1.
        statement: usize,
        /// DataFusion's message (it names the column or table).
        source: DataFusionError,
    },
    /// A statement that would change something: the catalog is read-only.
    #[error("statement {statement}: the catalog is read-only, only queries run: {what}")]
    ReadOnly {
        /// The statement's position in the text, from 1.
        statement: usize,
        /// DataFusion's name for it (`DDL not supported: CreateMemoryTable`).
        what: String,
    },
    /// A bad argument to one of Retain's functions, or a bad option.
    #[error("{reason}")]
    Argument {
        /// Why.
        reason: String,
    },
    /// A lake table could not be opened or read.
    #[error("opening the {table} table at {url}: {source}")]
    Open {
        /// The table's name.
        table: String,
        /// Its URL (credentials removed).
        url: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An active hold's condition no longer compiles against the `records` table.
    #[error("hold {hold}: its condition cannot be evaluated: {reason}")]
    Hold {
        /// The hold's id.
        hold: String,
        /// DataFusion's message.
        reason: String,
    },
    /// Running a planned query failed.
    #[error("{doing}: {source}")]
    Execute {
        /// What was being done.
        doing: String,
        /// DataFusion's error.
        source: DataFusionError,
    },
}

impl Error {
    /// Whether the query or argument is at fault (a user must fix it: exit 2), rather than the
    /// storage, the memory limit or a bug.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Parse { .. }
            | Error::Plan { .. }
            | Error::ReadOnly { .. }
            | Error::Argument { .. } => true,
            Error::Open { .. } | Error::Hold { .. } => false,
            Error::Execute { source, .. } => !is_system(source),
        }
    }
}

/// Whether a DataFusion error comes from outside the query: storage, I/O, memory, a panic.
pub(crate) fn is_system(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_)
        | DataFusionError::ParquetError(_)
        | DataFusionError::ResourcesExhausted(_)
        | DataFusionError::External(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Internal(_) => true,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            is_system(inner)
        }
        DataFusionError::Shared(inner) => is_system(inner),
        DataFusionError::Collection(errors) => errors.iter().any(is_system),
        DataFusionError::ArrowError(inner, _) => matches!(
            inner.as_ref(),
            datafusion::arrow::error::ArrowError::IoError(..)
                | datafusion::arrow::error::ArrowError::ExternalError(_)
        ),
        _ => false,
    }
}

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
