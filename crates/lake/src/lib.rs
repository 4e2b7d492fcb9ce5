//! Retain's Delta Lake tables: the `records` table and exactly-once landing into it, and the
//! hash-chained `audit` table ([`AuditTable`], `docs/audit.md`).
//!
//! The scheduler consumer turns each classified, scheduled message into a [`RecordRow`], adds
//! rows to a [`RecordBatchBuilder`] (Arrow builders, column by column), and lands the batch with
//! [`RecordsTable::land`] together with the Kafka offsets it covers. The offsets are written into
//! the same Delta commit as `txn` actions (`{app_id}-{partition}`), so the table itself says how
//! far each partition has landed: on start or rebalance the consumer seeks to
//! [`RecordsTable::committed_offsets`], and re-delivered rows are skipped. `docs/tables.md`
//! documents every column and the protocol.
//!
//! This crate is a heavy leaf (deltalake, DataFusion, Arrow); the domain model and the policy
//! engine do not depend on it.

pub mod audit;
mod batch;
mod dead_letters;
mod error;
pub mod schema;
mod table;

pub use audit::{
    AUDIT_TABLE, AUDIT_TXN_APP_ID, AppendReceipt, AuditAction, AuditEntry, AuditRecord, AuditTable,
    BrokenLink, ChainHead, GENESIS_HASH, LinkProblem, VerifyReport, audit_batch, audit_schema,
};
pub use batch::{RecordBatchBuilder, RecordRow, record_key};
pub use dead_letters::{DEAD_LETTERS_TABLE, dead_letters_schema};
pub use error::{Error, Result, is_commit_race};
pub use schema::{RECORDS_TABLE, records_delta_schema, records_schema};
pub use table::{
    DEFAULT_MAX_ATTEMPTS, Landed, Optimized, RECORDS_STATS_COLUMNS, RecordsTable, TxnMark,
    append_batch, committed_offset_in, open_or_create_table, register_storage_handlers, txn_app_id,
};

/// Re-exported so callers build and read batches with the exact Arrow and deltalake versions
/// this crate writes with.
pub use deltalake;
