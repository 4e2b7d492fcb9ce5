//! The lake crate's one error type.
//!
//! Messages name the table URL, the table version, the Kafka partition and offset, the app id
//! and the column involved, and never a value from a record (addresses, subjects and patient
//! references are PHI).

use deltalake::DeltaTableError;
use deltalake::arrow::error::ArrowError;
use deltalake::datafusion::error::DataFusionError;
use deltalake::kernel::transaction::TransactionError;

/// Result with the lake crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong opening, reading or landing into a Retain table.
///
/// Three kinds, as the stage runner needs them: [`Error::is_bad_input`] (dead-letter the record
/// and go on), [`Error::is_retryable`] (storage or a concurrent writer: back off and retry the
/// whole landing) and everything else (a bug or a misconfiguration: stop loudly).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The table location is neither a local path nor a URL with a registered storage scheme.
    #[error("invalid table location {location}: {source}")]
    Location {
        /// The location as given (a path or URL; no credentials are ever part of it).
        location: String,
        /// What deltalake said.
        source: Box<DeltaTableError>,
    },

    /// Opening, creating or refreshing the table failed.
    #[error("cannot open the table at {url}: {source}")]
    Open {
        /// The table URL.
        url: String,
        /// What deltalake said.
        source: Box<DeltaTableError>,
    },

    /// The table exists but its schema is not the one this version of Retain writes.
    #[error("the table at {url} (version {version}) does not have the `{table}` schema: {details}")]
    SchemaMismatch {
        /// The table URL.
        url: String,
        /// The table version that was read.
        version: u64,
        /// The expected table (`records`).
        table: &'static str,
        /// Which columns differ.
        details: String,
    },

    /// Reading an app transaction (a committed offset) from the table's log failed.
    #[error(
        "cannot read the committed offset of app `{app_id}` partition {partition} from {url} at version {version}: {source}"
    )]
    ReadOffset {
        /// The table URL.
        url: String,
        /// The table version that was read.
        version: u64,
        /// The landing app id (without the partition suffix).
        app_id: String,
        /// The Kafka partition.
        partition: i32,
        /// What deltalake said.
        source: Box<DeltaTableError>,
    },

    /// Writing the batch's Parquet files failed (nothing was committed).
    #[error("cannot write data files to {url} (read version {version}): {source}")]
    WriteFiles {
        /// The table URL.
        url: String,
        /// The table version the landing read.
        version: u64,
        /// What deltalake said.
        source: Box<DeltaTableError>,
    },

    /// The Delta commit failed for a reason other than a concurrent writer.
    #[error("commit to {url} (read version {version}) failed: {source}")]
    Commit {
        /// The table URL.
        url: String,
        /// The table version the landing read.
        version: u64,
        /// What deltalake said.
        source: Box<DeltaTableError>,
    },

    /// Concurrent writers kept advancing the same partitions' offsets; gave up after `attempts`.
    #[error(
        "landing app `{app_id}` into {url} conflicted with concurrent commits {attempts} times (last read version {version}): {source}"
    )]
    Conflict {
        /// The table URL.
        url: String,
        /// The table version the last attempt read.
        version: u64,
        /// The landing app id.
        app_id: String,
        /// How many commit attempts were made.
        attempts: u32,
        /// The last conflict.
        source: Box<DeltaTableError>,
    },

    /// A classified record cannot be represented in the table (bad input: dead-letter it).
    #[error("record at {topic}/{partition}@{offset}: column `{column}`: {reason}")]
    Record {
        /// The topic it was read from.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// The column that cannot hold the value.
        column: &'static str,
        /// Why (never the value itself).
        reason: String,
    },

    /// The landing request is inconsistent (a bug in the caller).
    #[error("invalid landing request for app `{app_id}`: {reason}")]
    Request {
        /// The landing app id.
        app_id: String,
        /// What is wrong, with the partition and offset involved.
        reason: String,
    },

    /// A batch does not have the table's schema (a bug in the caller).
    #[error("the batch does not have the `{table}` schema: {details}")]
    BatchSchema {
        /// The expected table (`records`).
        table: &'static str,
        /// Which columns differ.
        details: String,
    },

    /// An audit entry cannot be appended (a bug in the caller: nothing was written).
    #[error("audit entry {index} ({action}): `{field}` {reason}")]
    AuditEntry {
        /// The entry's position in the append request.
        index: usize,
        /// The entry's action code.
        action: &'static str,
        /// The field that is wrong.
        field: &'static str,
        /// What is wrong with it (never the value itself).
        reason: String,
    },

    /// The audit table's recorded head entry is missing or duplicated: appending would fork or
    /// extend a broken chain, so appends are refused until an operator has run verification.
    #[error("cannot append to the audit table at {url} (version {version}): {reason}")]
    AuditHead {
        /// The table URL.
        url: String,
        /// The table version read.
        version: u64,
        /// What is wrong with the head.
        reason: String,
    },

    /// Reading the audit table's rows failed.
    #[error("cannot read the audit table at {url} (version {version}): {source}")]
    AuditRead {
        /// The table URL.
        url: String,
        /// The table version read.
        version: u64,
        /// What DataFusion said.
        source: Box<DataFusionError>,
    },

    /// A stored audit row cannot be read (a null or unreadable value in a required column).
    #[error(
        "the audit table at {url} (version {version}) has an unreadable row{}: column `{column}` {reason}",
        .seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
    )]
    AuditRow {
        /// The table URL.
        url: String,
        /// The table version read.
        version: u64,
        /// The row's `seq`, when it could be read.
        seq: Option<i64>,
        /// The column.
        column: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Arrow refused to build a batch (a bug in this crate).
    #[error("cannot build the `{table}` batch: {source}")]
    Arrow {
        /// The table (`records`).
        table: &'static str,
        /// What Arrow said.
        source: ArrowError,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed: storage unavailable, or a
    /// concurrent writer won a commit race. A landing is always safe to retry: it re-reads the
    /// committed offsets and skips what already landed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Conflict { .. } => true,
            Error::Open { source, .. }
            | Error::ReadOffset { source, .. }
            | Error::WriteFiles { source, .. }
            | Error::Commit { source, .. } => delta_is_retryable(source),
            Error::AuditRead { source, .. } => datafusion_is_retryable(source),
            Error::Location { .. }
            | Error::SchemaMismatch { .. }
            | Error::Record { .. }
            | Error::Request { .. }
            | Error::BatchSchema { .. }
            | Error::Arrow { .. }
            | Error::AuditEntry { .. }
            | Error::AuditHead { .. }
            | Error::AuditRow { .. } => false,
        }
    }

    /// Whether the error is about one record's content: dead-letter that record and go on.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::Record { .. })
    }
}

/// Whether a deltalake error is a commit race or a storage failure (worth retrying) rather than
/// bad data, a schema mismatch or a misconfiguration.
pub(crate) fn delta_is_retryable(e: &DeltaTableError) -> bool {
    match e {
        DeltaTableError::ObjectStore { source } => object_store_is_retryable(source),
        DeltaTableError::Io { .. } | DeltaTableError::VersionAlreadyExists(_) => true,
        DeltaTableError::Transaction { source } => match source {
            TransactionError::CommitConflict(_)
            | TransactionError::MaxCommitAttempts(_)
            | TransactionError::VersionAlreadyExists(_)
            | TransactionError::LogStoreError { .. } => true,
            TransactionError::ObjectStore { source } => object_store_is_retryable(source),
            _ => false,
        },
        _ => false,
    }
}

/// Whether a DataFusion read failed because storage did (worth retrying).
fn datafusion_is_retryable(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::ObjectStore(source) => object_store_is_retryable(source),
        DataFusionError::IoError(_) => true,
        _ => false,
    }
}

fn object_store_is_retryable(e: &deltalake::ObjectStoreError) -> bool {
    use deltalake::ObjectStoreError as E;
    !matches!(
        e,
        E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
            | E::InvalidPath { .. }
    )
}

/// Whether a commit failed because a concurrent commit won (re-read the offsets and retry).
pub fn is_commit_race(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
            }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::transaction::CommitConflictError;

    #[test]
    fn commit_conflicts_are_retryable_races() {
        let e = DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
        };
        assert!(is_commit_race(&e));
        assert!(delta_is_retryable(&e));
        let e = Error::Commit {
            url: "file:///t".into(),
            version: 3,
            source: Box::new(e),
        };
        assert!(e.is_retryable());
        assert!(!e.is_bad_input());
    }

    #[test]
    fn bad_records_are_bad_input_not_retryable() {
        let e = Error::Record {
            topic: "mail.classified".into(),
            partition: 2,
            offset: 7,
            column: "size_bytes",
            reason: "does not fit a signed 64-bit integer".into(),
        };
        assert!(e.is_bad_input());
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "record at mail.classified/2@7: column `size_bytes`: does not fit a signed 64-bit integer"
        );
    }

    #[test]
    fn schema_errors_are_not_retryable() {
        let e = DeltaTableError::Generic("boom".into());
        assert!(!delta_is_retryable(&e));
        assert!(!is_commit_race(&e));
    }
}
