//! The `audit` Delta table: an append-only, hash-chained log of everything Retain does.
//!
//! Every entry names an action ([`AuditAction`]), who did it, when, and what it was done to, with
//! details as a JSON object of ids, counts and hashes (never PHI: no addresses, subjects, names
//! or patient references). [`AuditTable::append`] gives each entry the next `seq` (0, 1, 2, …
//! without gaps), the previous entry's hash (`prev_hash`) and its own `hash`: SHA-256 over a
//! canonical, length-prefixed encoding of the sequence number, the previous hash and every field
//! ([`AuditRecord::canonical_bytes`]). [`AuditTable::verify`] walks the chain in `seq` order and
//! reports the first broken link.
//!
//! Two writers never fork the chain: every append commits a Delta `txn` action
//! ([`AUDIT_TXN_APP_ID`], version = the last `seq` it appended) with its rows, so of two appends
//! read from the same table version the second is refused by Delta's conflict checker
//! (`ConcurrentTransaction`), re-reads the head and re-hashes.
//!
//! `docs/audit.md` documents the table, the encoding byte by byte and what the chain proves.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::{SessionContext, col, lit};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::{StructType, Transaction};
use deltalake::table::state::DeltaTableState;
use deltalake::{DeltaTable, DeltaTableError};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, instrument, warn};

use crate::error::{Error, Result};
use crate::schema::{UTC, schema_diff};
use crate::table::{
    CommitError, DEFAULT_MAX_ATTEMPTS, open_or_create_table, redact_location, write_and_commit,
};

/// The table's name (also written into the Delta metadata).
pub const AUDIT_TABLE: &str = "audit";

/// The Delta `txn` application id every append commits, with version = the last `seq` appended.
/// Two appends read from the same table version both carry it, so Delta refuses the second.
pub const AUDIT_TXN_APP_ID: &str = "retain-audit";

/// The `prev_hash` of the first entry (`seq` 0): 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The first field of every canonical encoding: names the encoding and its version, so a hash
/// made by a later encoding can never equal one made by this one.
pub const ENCODING_TAG: &str = "retain.audit.v1";

/// Column names of the `audit` table, in table order.
pub mod columns {
    /// Position in the log: 0, 1, 2, … without gaps.
    pub const SEQ: &str = "seq";
    /// When the audited action happened (UTC, microseconds).
    pub const AT: &str = "at";
    /// Who acted: a person or a service name.
    pub const ACTOR: &str = "actor";
    /// What was done: an [`AuditAction`](super::AuditAction) code.
    pub const ACTION: &str = "action";
    /// What it was done to: an id (hold id, manifest id, table name), never PHI.
    pub const TARGET: &str = "target";
    /// Further context: a JSON object of ids, counts and hashes, never PHI.
    pub const DETAILS: &str = "details";
    /// The Delta version of the table the action read or wrote, when there is one.
    pub const TABLE_VERSION: &str = "table_version";
    /// Where the data came from (Kafka topic/partition/offset ranges, source table versions).
    pub const LINEAGE: &str = "lineage";
    /// Hex SHA-256 of the previous entry ([`GENESIS_HASH`](super::GENESIS_HASH) for `seq` 0).
    pub const PREV_HASH: &str = "prev_hash";
    /// Hex SHA-256 of this entry's canonical encoding.
    pub const HASH: &str = "hash";
}

macro_rules! audit_actions {
    ($( $(#[$doc:meta])* $variant:ident => $code:literal, )*) => {
        /// What an audit entry records, as a stable code (the `action` column).
        ///
        /// Codes are never renamed or reused; to audit something new, add a variant with a new
        /// code. Readers keep entries with codes they do not know (see [`AuditRecord::action`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum AuditAction {
            $( $(#[$doc])* $variant, )*
        }

        impl AuditAction {
            /// Every action, in declaration order.
            pub const ALL: &'static [AuditAction] = &[$(AuditAction::$variant,)*];

            /// The stable code stored in the `action` column (`hold_created`).
            pub fn code(self) -> &'static str {
                match self {
                    $(AuditAction::$variant => $code,)*
                }
            }
        }
    };
}

audit_actions! {
    /// A batch of records landed in a table (target: the table; lineage: the offsets).
    RecordsLanded => "records_landed",
    /// A litigation hold was created.
    HoldCreated => "hold_created",
    /// A hold's scope was previewed (which records it would cover).
    HoldPreviewed => "hold_previewed",
    /// A hold was released.
    HoldReleased => "hold_released",
    /// A disposal was planned (a manifest of records due).
    DisposalPlanned => "disposal_planned",
    /// A disposal manifest was approved.
    DisposalApproved => "disposal_approved",
    /// A disposal manifest was executed.
    DisposalExecuted => "disposal_executed",
    /// A retention policy was loaded (target: its content hash).
    PolicyLoaded => "policy_loaded",
    /// A SQL query ran against Retain's tables.
    SqlQuery => "sql_query",
    /// Data was exported.
    Export => "export",
    /// A patient's records were accessed (target: a key hash, never the patient reference).
    PatientAccess => "patient_access",
    /// A retention event (discharge, supersession, …) was applied to records.
    RetentionEventApplied => "retention_event_applied",
    /// A policy was applied to records (re-classification or re-scheduling).
    PolicyApplied => "policy_applied",
    /// The records table's files were compacted or clustered (no row added or removed).
    RecordsOptimized => "records_optimized",
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An `action` code that names no [`AuditAction`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit action `{0}`")]
pub struct UnknownAuditAction(pub String);

impl FromStr for AuditAction {
    type Err = UnknownAuditAction;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        AuditAction::ALL
            .iter()
            .copied()
            .find(|a| a.code() == s)
            .ok_or_else(|| UnknownAuditAction(s.to_owned()))
    }
}

/// One thing to audit, as the caller gives it to [`AuditTable::append`].
///
/// **No PHI in any field.** Name records by their `record_key`, holds and manifests by their
/// ids, queries by a hash of their text, and give counts; never an address, a subject, a
/// person's name other than the acting user, or a patient reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// What was done.
    pub action: AuditAction,
    /// Who did it: a user name or a service name (`retain-scheduler`). Must not be empty.
    pub actor: String,
    /// When it happened. Stored (and hashed) in whole microseconds; finer digits are dropped.
    pub at: DateTime<Utc>,
    /// What it was done to: a hold id, a manifest id, a table name, a policy hash. Must not be
    /// empty.
    pub target: String,
    /// Further context as the text of a JSON object (`{}` when there is none); stored and hashed
    /// exactly as given.
    pub details: String,
    /// The Delta version of the table the action read or wrote (e.g. the `records` version a
    /// landing committed or a query read).
    pub table_version: Option<i64>,
    /// Where the data came from, e.g. `retain.mail/0@100-199,retain.mail/1@0-49`.
    pub lineage: Option<String>,
}

impl AuditEntry {
    /// An entry with no details (`{}`), table version or lineage.
    pub fn new(
        action: AuditAction,
        actor: impl Into<String>,
        at: DateTime<Utc>,
        target: impl Into<String>,
    ) -> Self {
        AuditEntry {
            action,
            actor: actor.into(),
            at,
            target: target.into(),
            details: "{}".to_owned(),
            table_version: None,
            lineage: None,
        }
    }

    /// Sets the details from a JSON object (ids, counts, hashes; never PHI).
    pub fn with_details(mut self, details: &serde_json::Value) -> Self {
        self.details = details.to_string();
        self
    }

    /// Sets the Delta version of the table the action read or wrote.
    pub fn with_table_version(mut self, version: i64) -> Self {
        self.table_version = Some(version);
        self
    }

    /// Sets the lineage (where the data came from).
    pub fn with_lineage(mut self, lineage: impl Into<String>) -> Self {
        self.lineage = Some(lineage.into());
        self
    }

    /// Checks the entry before anything is written; `index` is its position in the request.
    fn validate(&self, index: usize) -> Result<()> {
        let bad = |field: &'static str, reason: &str| Error::AuditEntry {
            index,
            action: self.action.code(),
            field,
            reason: reason.to_owned(),
        };
        if self.actor.trim().is_empty() {
            return Err(bad(columns::ACTOR, "is empty"));
        }
        if self.target.trim().is_empty() {
            return Err(bad(columns::TARGET, "is empty"));
        }
        match serde_json::from_str::<serde_json::Value>(&self.details) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Err(bad(columns::DETAILS, "is JSON but not an object")),
            Err(e) => return Err(bad(columns::DETAILS, &format!("is not JSON: {e}"))),
        }
        Ok(())
    }
}

/// One stored row of the `audit` table: an entry with its place in the chain.
///
/// Fields hold exactly what is stored (the action as its code), so verification hashes what the
/// table holds, whatever version of Retain wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log: 0, 1, 2, … without gaps.
    pub seq: i64,
    /// When the action happened (whole microseconds).
    pub at: DateTime<Utc>,
    /// Who acted.
    pub actor: String,
    /// The action code (`hold_created`).
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// The details JSON object, as given.
    pub details: String,
    /// The Delta version of the table the action read or wrote.
    pub table_version: Option<i64>,
    /// Where the data came from.
    pub lineage: Option<String>,
    /// The previous entry's `hash`; [`GENESIS_HASH`] for `seq` 0.
    pub prev_hash: String,
    /// Lower-case hex SHA-256 of [`canonical_bytes`](Self::canonical_bytes).
    pub hash: String,
}

impl AuditRecord {
    /// Places `entry` at `seq` after the entry whose hash is `prev_hash` and computes its hash.
    /// The timestamp is truncated to whole microseconds (what the table stores).
    pub fn seal(seq: i64, prev_hash: impl Into<String>, entry: &AuditEntry) -> Self {
        let micros = entry.at.timestamp_micros();
        let mut record = AuditRecord {
            seq,
            at: DateTime::from_timestamp_micros(micros).unwrap_or(entry.at),
            actor: entry.actor.clone(),
            action: entry.action.code().to_owned(),
            target: entry.target.clone(),
            details: entry.details.clone(),
            table_version: entry.table_version,
            lineage: entry.lineage.clone(),
            prev_hash: prev_hash.into(),
            hash: String::new(),
        };
        record.hash = record.computed_hash();
        record
    }

    /// The action, when its code is one this version of Retain knows.
    pub fn action(&self) -> Option<AuditAction> {
        self.action.parse().ok()
    }

    /// The canonical encoding the hash is computed over (`docs/audit.md`, "Canonical encoding"):
    /// in this order, [`ENCODING_TAG`], `seq`, `prev_hash`, `at`, `actor`, `action`, `target`,
    /// `details`, `table_version`, `lineage`. Integers are 8-byte little-endian two's complement
    /// (`at` in microseconds since the epoch); text is its UTF-8 byte length as an 8-byte
    /// little-endian unsigned integer, then the bytes; an optional value is one byte `0x00`
    /// (absent) or `0x01` followed by the value. `hash` itself is not encoded.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            128 + self.actor.len()
                + self.action.len()
                + self.target.len()
                + self.details.len()
                + self.lineage.as_ref().map_or(0, String::len),
        );
        put_text(&mut out, ENCODING_TAG);
        put_int(&mut out, self.seq);
        put_text(&mut out, &self.prev_hash);
        put_int(&mut out, self.at.timestamp_micros());
        put_text(&mut out, &self.actor);
        put_text(&mut out, &self.action);
        put_text(&mut out, &self.target);
        put_text(&mut out, &self.details);
        match self.table_version {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_int(&mut out, v);
            }
        }
        match &self.lineage {
            None => out.push(0),
            Some(l) => {
                out.push(1);
                put_text(&mut out, l);
            }
        }
        out
    }

    /// Lower-case hex SHA-256 of [`canonical_bytes`](Self::canonical_bytes): what `hash` must be.
    pub fn computed_hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }

    /// This entry as the head of the chain.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The last entry of a chain: its `seq` and `hash`. Record it outside the table (a ticket, a
/// signed e-mail, another system's log) and pass it to [`AuditTable::verify_expecting`] later
/// to detect a truncated or rewritten log. Written and parsed as `SEQ:HASH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChainHead {
    /// The entry's position.
    pub seq: i64,
    /// The entry's hash (64 lower-case hex digits).
    pub hash: String,
}

impl fmt::Display for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// A `SEQ:HASH` text that is not a chain head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chain head `{text}` (expected SEQ:HASH, e.g. 41:<64 hex digits>): {reason}")]
pub struct InvalidChainHead {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for ChainHead {
    type Err = InvalidChainHead;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let bad = |reason| InvalidChainHead {
            text: s.to_owned(),
            reason,
        };
        let (seq, hash) = s.trim().split_once(':').ok_or_else(|| bad("no `:`"))?;
        let seq: i64 = seq.parse().map_err(|_| bad("SEQ is not an integer"))?;
        if seq < 0 {
            return Err(bad("SEQ is negative"));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("HASH is not 64 hex digits"));
        }
        Ok(ChainHead {
            seq,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// What one [`AuditTable::append`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReceipt {
    /// The table version committed.
    pub version: u64,
    /// The `seq` of the first entry appended.
    pub first_seq: i64,
    /// The new head: the last entry appended.
    pub head: ChainHead,
    /// Commit attempts made (1 unless a concurrent append won the race first).
    pub attempts: u32,
}

/// Why the chain is broken at a [`BrokenLink`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkProblem {
    /// The entry's stored `hash` is not the hash of its content: the entry was altered.
    Altered {
        /// The `hash` column.
        stored: String,
        /// The hash of the stored fields.
        computed: String,
    },
    /// The entry's `prev_hash` is not the previous entry's `hash`: an entry before it was
    /// deleted, inserted or moved, or the previous entry's hash was rewritten.
    Unlinked {
        /// The previous entry's hash (or [`GENESIS_HASH`]).
        expected: String,
        /// The entry's `prev_hash`.
        found: String,
    },
    /// No entry has this `seq`; the next one present has `next_seq`: entries were deleted.
    Missing {
        /// The next `seq` in the table.
        next_seq: i64,
    },
    /// A second row claims this `seq`: a forked chain or an inserted row.
    Duplicate,
    /// The chain ends before the head the table's `retain-audit` transaction records: the tail
    /// from this `seq` on was deleted.
    Truncated {
        /// The last `seq` the table says was appended.
        recorded_head: i64,
    },
    /// The entry lies beyond the head the table's `retain-audit` transaction records: it was
    /// written without the audit protocol.
    Unrecorded {
        /// The last `seq` the table says was appended (`None`: nothing was).
        recorded_head: Option<i64>,
    },
    /// The entry at the expected head's `seq` has another hash: the log was rewritten from
    /// here on (consistently, or the chain would have broken earlier).
    HeadMismatch {
        /// The hash recorded outside the table.
        expected: String,
        /// The hash the table holds.
        found: String,
    },
    /// The chain ends before the expected head's `seq`: the tail was truncated.
    HeadMissing {
        /// The head recorded outside the table.
        expected: ChainHead,
    },
}

impl fmt::Display for LinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkProblem::Altered { stored, computed } => write!(
                f,
                "entry altered: stored hash {stored} but its content hashes to {computed}"
            ),
            LinkProblem::Unlinked { expected, found } => write!(
                f,
                "prev_hash {found} is not the previous entry's hash {expected}: an entry was deleted, inserted or reordered"
            ),
            LinkProblem::Missing { next_seq } => {
                write!(
                    f,
                    "entry missing (deleted): the next entry is seq {next_seq}"
                )
            }
            LinkProblem::Duplicate => {
                f.write_str("two entries claim this seq (a forked chain or an inserted entry)")
            }
            LinkProblem::Truncated { recorded_head } => write!(
                f,
                "entry missing: the chain ends before the recorded head seq {recorded_head} (the tail was deleted)"
            ),
            LinkProblem::Unrecorded { recorded_head } => match recorded_head {
                Some(h) => write!(
                    f,
                    "entry beyond the recorded head seq {h}: written outside the audit protocol"
                ),
                None => f.write_str(
                    "entry in a table with no recorded head: written outside the audit protocol",
                ),
            },
            LinkProblem::HeadMismatch { expected, found } => write!(
                f,
                "the expected head hash is {expected} but this entry's is {found}: the log was rewritten"
            ),
            LinkProblem::HeadMissing { expected } => write!(
                f,
                "the chain ends before the expected head {expected}: the tail was truncated"
            ),
        }
    }
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The `seq` at which the chain breaks (for a missing entry, the missing `seq`).
    pub seq: i64,
    /// What is wrong there.
    pub problem: LinkProblem,
}

impl fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}: {}", self.seq, self.problem)
    }
}

/// What [`AuditTable::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The table version verified.
    pub version: u64,
    /// Entries checked and found sound, from `seq` 0 up to the first broken link.
    pub entries_checked: u64,
    /// The last sound entry: the chain's head when it is intact. Record it outside the table to
    /// detect a later truncation or rewrite ([`AuditTable::verify_expecting`]).
    pub head: Option<ChainHead>,
    /// The first broken link, or `None` when the chain is intact.
    pub broken: Option<BrokenLink>,
}

impl VerifyReport {
    /// Whether every entry checked out (and the expected head, if any, was found).
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Walks `records` (any order) and reports the first broken link. `recorded_head` is the last
/// `seq` the table's `retain-audit` transaction records; `expected` a head recorded elsewhere.
pub fn verify_chain(
    version: u64,
    records: &[AuditRecord],
    recorded_head: Option<i64>,
    expected: Option<&ChainHead>,
) -> VerifyReport {
    let mut order: Vec<&AuditRecord> = records.iter().collect();
    order.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.hash.cmp(&b.hash)));
    let mut report = VerifyReport {
        version,
        entries_checked: 0,
        head: None,
        broken: None,
    };
    let mut next_seq = 0i64;
    let mut prev = GENESIS_HASH;
    let broken = |seq, problem| Some(BrokenLink { seq, problem });
    for r in order {
        if r.seq < next_seq {
            report.broken = broken(r.seq, LinkProblem::Duplicate);
            return report;
        }
        if r.seq > next_seq {
            report.broken = broken(next_seq, LinkProblem::Missing { next_seq: r.seq });
            return report;
        }
        if recorded_head.is_none_or(|h| r.seq > h) {
            report.broken = broken(r.seq, LinkProblem::Unrecorded { recorded_head });
            return report;
        }
        if r.prev_hash != prev {
            report.broken = broken(
                r.seq,
                LinkProblem::Unlinked {
                    expected: prev.to_owned(),
                    found: r.prev_hash.clone(),
                },
            );
            return report;
        }
        let computed = r.computed_hash();
        if computed != r.hash {
            report.broken = broken(
                r.seq,
                LinkProblem::Altered {
                    stored: r.hash.clone(),
                    computed,
                },
            );
            return report;
        }
        if let Some(e) = expected.filter(|e| e.seq == r.seq && e.hash != r.hash) {
            report.broken = broken(
                r.seq,
                LinkProblem::HeadMismatch {
                    expected: e.hash.clone(),
                    found: r.hash.clone(),
                },
            );
            return report;
        }
        report.entries_checked += 1;
        report.head = Some(r.head());
        prev = &r.hash;
        next_seq += 1;
    }
    if let Some(h) = recorded_head.filter(|&h| h >= next_seq) {
        report.broken = broken(next_seq, LinkProblem::Truncated { recorded_head: h });
    } else if let Some(e) = expected.filter(|e| e.seq >= next_seq) {
        report.broken = broken(
            next_seq,
            LinkProblem::HeadMissing {
                expected: e.clone(),
            },
        );
    }
    report
}

static AUDIT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use columns::*;
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        Field::new(SEQ, DataType::Int64, false),
        Field::new(
            AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            false,
        ),
        s(ACTOR, false),
        s(ACTION, false),
        s(TARGET, false),
        s(DETAILS, false),
        Field::new(TABLE_VERSION, DataType::Int64, true),
        s(LINEAGE, true),
        s(PREV_HASH, false),
        s(HASH, false),
    ]))
});

/// The Arrow schema of the `audit` table.
pub fn audit_schema() -> SchemaRef {
    AUDIT_SCHEMA.clone()
}

/// The Delta schema of the `audit` table (what the table is created with).
pub fn audit_delta_schema() -> StructType {
    // The conversion is total for the types above; a failure is a bug caught by the tests.
    audit_schema()
        .as_ref()
        .try_into_kernel()
        .expect("the audit schema converts to a Delta schema")
}

/// Stored rows as an `audit` batch (e.g. to export them, or to rebuild a table in a test).
pub fn audit_batch(records: &[AuditRecord]) -> Result<RecordBatch> {
    let strings = |f: fn(&AuditRecord) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(records.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.seq))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                records.iter().map(|r| r.at.timestamp_micros()),
            )
            .with_timezone(UTC),
        ),
        strings(|r| r.actor.as_str()),
        strings(|r| r.action.as_str()),
        strings(|r| r.target.as_str()),
        strings(|r| r.details.as_str()),
        Arc::new(Int64Array::from_iter(
            records.iter().map(|r| r.table_version),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.lineage.as_deref()),
        )),
        strings(|r| r.prev_hash.as_str()),
        strings(|r| r.hash.as_str()),
    ];
    RecordBatch::try_new(audit_schema(), columns).map_err(|source| Error::Arrow {
        table: AUDIT_TABLE,
        source,
    })
}

/// The `audit` table at one location: append hash-chained entries, read them back, verify.
pub struct AuditTable {
    table: DeltaTable,
    url: String,
    max_attempts: u32,
    /// The head as of a table version this handle read or committed.
    cached_head: Option<(u64, ChainHead)>,
}

impl fmt::Debug for AuditTable {
    // Storage options (which may hold keys) are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditTable")
            .field("url", &self.url)
            .field("version", &self.table.version())
            .finish_non_exhaustive()
    }
}

impl AuditTable {
    /// Opens the `audit` table at `location` (a local path, `file://`, or `s3://` URL), creating
    /// it (and a local directory) when there is none. `storage_options` are passed to
    /// deltalake's object store, as for [`RecordsTable`](crate::RecordsTable).
    #[instrument(skip_all, fields(location = %redact_location(location)))]
    pub async fn open_or_create(
        location: &str,
        storage_options: HashMap<String, String>,
    ) -> Result<Self> {
        let (table, shown) = open_or_create_table(
            location,
            storage_options,
            AUDIT_TABLE,
            "Retain audit trail: append-only, hash-chained (docs/audit.md)",
            audit_delta_schema().fields().cloned(),
            &[],
        )
        .await?;
        let this = AuditTable {
            table,
            url: shown,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            cached_head: None,
        };
        this.check_schema()?;
        Ok(this)
    }

    /// Sets how many commit attempts [`append`](Self::append) makes against concurrent appends
    /// before giving up with a retryable [`Error::Conflict`].
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The table URL (credentials, if any were in it, removed).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The table version last read or committed.
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or_default()
    }

    /// The underlying Delta table at its last read state (e.g. to query it with DataFusion).
    pub fn delta_table(&self) -> &DeltaTable {
        &self.table
    }

    /// Reads the newest table version from storage; returns it.
    pub async fn refresh(&mut self) -> Result<u64> {
        self.table
            .update_state()
            .await
            .map_err(|source| Error::Open {
                url: self.url.clone(),
                source: Box::new(source),
            })?;
        Ok(self.version())
    }

    /// Appends `entries`, in order, after the current head: each gets the next `seq`, the
    /// previous entry's hash and its own, and all are committed in one Delta commit with the
    /// `retain-audit` transaction advanced to the last `seq`.
    ///
    /// When another writer appends first (a `retain-audit` commit after the version this append
    /// read), Delta refuses the commit; the append re-reads the head, re-hashes and retries, up
    /// to the configured attempts. Refuses an empty request, an entry with an empty actor or
    /// target or details that are not a JSON object, and a table whose recorded head entry is
    /// missing or duplicated (run [`verify`](Self::verify)).
    #[instrument(skip_all, fields(table = %self.url, entries = entries.len()))]
    pub async fn append(&mut self, entries: &[AuditEntry]) -> Result<AppendReceipt> {
        if entries.is_empty() {
            return Err(Error::Request {
                app_id: AUDIT_TXN_APP_ID.to_owned(),
                reason: "no audit entries to append".to_owned(),
            });
        }
        for (i, e) in entries.iter().enumerate() {
            e.validate(i)?;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.refresh().await?;
            let state = self.state()?.clone();
            let read_version = state.version();
            let head = self.head_at(&state).await?;
            let (mut seq, mut prev) = match &head {
                Some(h) => (h.seq + 1, h.hash.clone()),
                None => (0, GENESIS_HASH.to_owned()),
            };
            let first_seq = seq;
            let mut records = Vec::with_capacity(entries.len());
            for e in entries {
                let r = AuditRecord::seal(seq, prev, e);
                prev = r.hash.clone();
                seq += 1;
                records.push(r);
            }
            let Some(new_head) = records.last().map(AuditRecord::head) else {
                unreachable!("entries is not empty");
            };
            match self.commit(&state, &records).await {
                Ok(version) => {
                    info!(
                        version,
                        first_seq,
                        last_seq = new_head.seq,
                        attempts,
                        "appended audit entries"
                    );
                    self.cached_head = Some((version, new_head.clone()));
                    return Ok(AppendReceipt {
                        version,
                        first_seq,
                        head: new_head,
                        attempts,
                    });
                }
                Err(e) if e.is_race() && attempts < self.max_attempts => {
                    debug!(
                        version = read_version,
                        attempts,
                        error = %e,
                        "a concurrent append won; re-reading the head"
                    );
                }
                Err(e) => {
                    return Err(e.into_error(&self.url, read_version, AUDIT_TXN_APP_ID, attempts));
                }
            }
        }
    }

    /// Every entry in the newest table version, in `seq` order (as stored: a tampered table
    /// reads back tampered; [`verify`](Self::verify) says whether it was).
    #[instrument(skip_all, fields(table = %self.url))]
    pub async fn entries(&mut self) -> Result<Vec<AuditRecord>> {
        self.refresh().await?;
        let state = self.state()?.clone();
        self.read_records(&state, None).await
    }

    /// Walks the chain in the newest table version and reports the first broken link (see
    /// [`VerifyReport`]). A broken chain is a report, not an error; errors are I/O failures and
    /// rows that cannot be read at all.
    pub async fn verify(&mut self) -> Result<VerifyReport> {
        self.verify_inner(None).await
    }

    /// [`verify`](Self::verify), and check that the chain still holds `expected` (a head
    /// recorded outside the table earlier): detects a truncated tail and a log rewritten with
    /// consistent hashes, which the chain alone cannot.
    pub async fn verify_expecting(&mut self, expected: &ChainHead) -> Result<VerifyReport> {
        self.verify_inner(Some(expected)).await
    }

    #[instrument(skip_all, fields(table = %self.url))]
    async fn verify_inner(&mut self, expected: Option<&ChainHead>) -> Result<VerifyReport> {
        self.refresh().await?;
        let state = self.state()?.clone();
        let recorded = self.recorded_head(&state).await?;
        let records = self.read_records(&state, None).await?;
        let report = verify_chain(state.version(), &records, recorded, expected);
        match &report.broken {
            None => info!(
                version = report.version,
                entries = report.entries_checked,
                "audit chain intact"
            ),
            Some(b) => warn!(
                version = report.version,
                entries = report.entries_checked,
                seq = b.seq,
                problem = %b.problem,
                "audit chain broken"
            ),
        }
        Ok(report)
    }

    fn state(&self) -> Result<&DeltaTableState> {
        self.table.snapshot().map_err(|source| Error::Open {
            url: self.url.clone(),
            source: Box::new(source),
        })
    }

    fn check_schema(&self) -> Result<()> {
        let state = self.state()?;
        let actual = state.snapshot().arrow_schema();
        match schema_diff(&audit_schema(), &actual) {
            None => Ok(()),
            Some(details) => Err(Error::SchemaMismatch {
                url: self.url.clone(),
                version: state.version(),
                table: AUDIT_TABLE,
                details,
            }),
        }
    }

    /// The last `seq` appended, as the table's `retain-audit` transaction records it.
    async fn recorded_head(&self, state: &DeltaTableState) -> Result<Option<i64>> {
        state
            .transaction_version(self.table.log_store().as_ref(), AUDIT_TXN_APP_ID)
            .await
            .map_err(|source| Error::Open {
                url: self.url.clone(),
                source: Box::new(source),
            })
    }

    /// The head entry in `state`: the one whose `seq` the `retain-audit` transaction records.
    async fn head_at(&self, state: &DeltaTableState) -> Result<Option<ChainHead>> {
        let version = state.version();
        let head_error = |reason: String| Error::AuditHead {
            url: self.url.clone(),
            version,
            reason,
        };
        let Some(seq) = self.recorded_head(state).await? else {
            if state.log_data().num_files() > 0 {
                return Err(head_error(
                    "the table has data files but no recorded head (`retain-audit` transaction): it was not written by the audit protocol".to_owned(),
                ));
            }
            return Ok(None);
        };
        if let Some((v, head)) = &self.cached_head
            && *v == version
            && head.seq == seq
        {
            return Ok(Some(head.clone()));
        }
        let found = self.read_records(state, Some(seq)).await?;
        match found.as_slice() {
            [one] => Ok(Some(one.head())),
            [] => Err(head_error(format!(
                "no entry has the recorded head seq {seq} (entries were deleted; run `retain audit verify`)"
            ))),
            many => Err(head_error(format!(
                "{} entries claim the recorded head seq {seq} (run `retain audit verify`)",
                many.len()
            ))),
        }
    }

    /// Reads the rows of `state` (only `seq` = `only` when given), sorted by `seq` then `hash`.
    async fn read_records(
        &self,
        state: &DeltaTableState,
        only: Option<i64>,
    ) -> Result<Vec<AuditRecord>> {
        let version = state.version();
        let read_err = |source: DataFusionError| Error::AuditRead {
            url: self.url.clone(),
            version,
            source: Box::new(source),
        };
        let ctx = SessionContext::new();
        self.table
            .update_datafusion_session(&ctx.state())
            .map_err(|source| Error::Open {
                url: self.url.clone(),
                source: Box::new(source),
            })?;
        // Every caller passes the table's own state (just refreshed or committed).
        debug_assert_eq!(self.table.version(), Some(version));
        let provider = self.table.table_provider().await.map_err(read_err)?;
        let mut df = ctx.read_table(provider).map_err(read_err)?;
        if let Some(seq) = only {
            df = df
                .filter(col(columns::SEQ).eq(lit(seq)))
                .map_err(read_err)?;
        }
        let batches = df
            .sort(vec![
                col(columns::SEQ).sort(true, false),
                col(columns::HASH).sort(true, false),
            ])
            .map_err(read_err)?
            .collect()
            .await
            .map_err(read_err)?;
        let mut out = Vec::new();
        for b in &batches {
            self.rows(version, b, &mut out)?;
        }
        Ok(out)
    }

    /// Converts one batch read back from the table into records.
    fn rows(&self, version: u64, batch: &RecordBatch, out: &mut Vec<AuditRecord>) -> Result<()> {
        let row_err = |seq: Option<i64>, column: &'static str, reason: String| Error::AuditRow {
            url: self.url.clone(),
            version,
            seq,
            column,
            reason,
        };
        let column = |name: &'static str, ty: &DataType| -> Result<ArrayRef> {
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| row_err(None, name, "the column is missing".to_owned()))?;
            // DataFusion may hand strings back as views; read them as plain strings.
            cast(c, ty).map_err(|e| row_err(None, name, format!("cannot be read as {ty}: {e}")))
        };
        let utf8 = DataType::Utf8;
        let seq = column(columns::SEQ, &DataType::Int64)?;
        let at = column(
            columns::AT,
            &DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        )?;
        let actor = column(columns::ACTOR, &utf8)?;
        let action = column(columns::ACTION, &utf8)?;
        let target = column(columns::TARGET, &utf8)?;
        let details = column(columns::DETAILS, &utf8)?;
        let table_version = column(columns::TABLE_VERSION, &DataType::Int64)?;
        let lineage = column(columns::LINEAGE, &utf8)?;
        let prev_hash = column(columns::PREV_HASH, &utf8)?;
        let hash = column(columns::HASH, &utf8)?;
        let seq = seq.as_primitive::<Int64Type>();
        let at = at.as_primitive::<TimestampMicrosecondType>();
        let table_version = table_version.as_primitive::<Int64Type>();
        let lineage = lineage.as_string::<i32>();
        for i in 0..batch.num_rows() {
            if seq.is_null(i) {
                return Err(row_err(None, columns::SEQ, format!("row {i} has no seq")));
            }
            let s = seq.value(i);
            let text = |c: &ArrayRef, name: &'static str| -> Result<String> {
                let c = c.as_string::<i32>();
                if c.is_null(i) {
                    return Err(row_err(Some(s), name, "is null".to_owned()));
                }
                Ok(c.value(i).to_owned())
            };
            if at.is_null(i) {
                return Err(row_err(Some(s), columns::AT, "is null".to_owned()));
            }
            let at = DateTime::from_timestamp_micros(at.value(i)).ok_or_else(|| {
                row_err(
                    Some(s),
                    columns::AT,
                    "is outside the representable range".to_owned(),
                )
            })?;
            out.push(AuditRecord {
                seq: s,
                at,
                actor: text(&actor, columns::ACTOR)?,
                action: text(&action, columns::ACTION)?,
                target: text(&target, columns::TARGET)?,
                details: text(&details, columns::DETAILS)?,
                table_version: (!table_version.is_null(i)).then(|| table_version.value(i)),
                lineage: (!lineage.is_null(i)).then(|| lineage.value(i).to_owned()),
                prev_hash: text(&prev_hash, columns::PREV_HASH)?,
                hash: text(&hash, columns::HASH)?,
            });
        }
        Ok(())
    }

    /// Writes `records` as Parquet and commits them with the `retain-audit` transaction on top
    /// of `state`; on success the table's state becomes the committed version.
    async fn commit(
        &mut self,
        state: &DeltaTableState,
        records: &[AuditRecord],
    ) -> std::result::Result<u64, CommitError> {
        let (first, last) = match (records.first(), records.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => unreachable!("an append commits at least one entry"),
        };
        let batch = audit_batch(records).map_err(|e| {
            CommitError::Files(DeltaTableError::Generic(format!(
                "cannot build the audit batch: {e}"
            )))
        })?;
        let metadata = serde_json::json!({
            "appId": AUDIT_TXN_APP_ID,
            "firstSeq": first,
            "lastSeq": last,
            "head": records.last().map(|r| r.hash.as_str()),
        });
        let txn = vec![Transaction::new(AUDIT_TXN_APP_ID, last)];
        write_and_commit(&mut self.table, state, batch, txn, metadata)
            .await
            .map(|c| c.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::Action;
    use deltalake::kernel::transaction::{CommitBuilder, TableReference};
    use deltalake::protocol::{DeltaOperation, SaveMode};
    use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn entry(n: i64) -> AuditEntry {
        AuditEntry::new(
            AuditAction::HoldCreated,
            "records.manager",
            at("2026-01-02T03:04:05.123456Z"),
            format!("hold-{n}"),
        )
        .with_details(&serde_json::json!({ "records": n }))
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (0..n)
            .map(|i| {
                let r = AuditRecord::seal(i, prev.clone(), &entry(i));
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn codes_are_stable_and_round_trip() {
        let codes: Vec<_> = AuditAction::ALL.iter().map(|a| a.code()).collect();
        assert_eq!(
            codes,
            [
                "records_landed",
                "hold_created",
                "hold_previewed",
                "hold_released",
                "disposal_planned",
                "disposal_approved",
                "disposal_executed",
                "policy_loaded",
                "sql_query",
                "export",
                "patient_access",
                "retention_event_applied",
                "policy_applied",
                "records_optimized",
            ]
        );
        for a in AuditAction::ALL {
            assert_eq!(a.code().parse::<AuditAction>().unwrap(), *a);
        }
        assert!("hold_deleted".parse::<AuditAction>().is_err());
    }

    /// The encoding is fixed: a change to it breaks every stored chain. This is the vector
    /// `docs/audit.md` gives for re-implementations.
    #[test]
    fn the_canonical_encoding_is_byte_exact() {
        let r = AuditRecord::seal(
            0,
            GENESIS_HASH,
            &AuditEntry::new(
                AuditAction::HoldCreated,
                "alice",
                at("2026-01-02T03:04:05.123456789Z"),
                "hold-1",
            )
            .with_details(&serde_json::json!({ "records": 3 }))
            .with_table_version(7),
        );
        let mut expected = Vec::new();
        expected.extend_from_slice(&15u64.to_le_bytes());
        expected.extend_from_slice(b"retain.audit.v1");
        expected.extend_from_slice(&0i64.to_le_bytes());
        expected.extend_from_slice(&64u64.to_le_bytes());
        expected.extend_from_slice(GENESIS_HASH.as_bytes());
        expected.extend_from_slice(&1_767_323_045_123_456i64.to_le_bytes());
        expected.extend_from_slice(&5u64.to_le_bytes());
        expected.extend_from_slice(b"alice");
        expected.extend_from_slice(&12u64.to_le_bytes());
        expected.extend_from_slice(b"hold_created");
        expected.extend_from_slice(&6u64.to_le_bytes());
        expected.extend_from_slice(b"hold-1");
        expected.extend_from_slice(&13u64.to_le_bytes());
        expected.extend_from_slice(br#"{"records":3}"#);
        expected.push(1);
        expected.extend_from_slice(&7i64.to_le_bytes());
        expected.push(0);
        assert_eq!(r.canonical_bytes(), expected);
        assert_eq!(
            r.at.timestamp_subsec_nanos(),
            123_456_000,
            "truncated to µs"
        );
        assert_eq!(r.hash, hex::encode(Sha256::digest(&expected)));
        assert_eq!(
            r.hash, "cfdede24f1499429215bd70f1264a26a2f41f0053883c89ea431264720bb737e",
            "update docs/audit.md if this vector changes"
        );
    }

    #[test]
    fn fields_are_length_prefixed_not_concatenated() {
        let mut a = chain(1).remove(0);
        let mut b = a.clone();
        a.actor = "ab".into();
        a.action = "c".into();
        b.actor = "a".into();
        b.action = "bc".into();
        assert_ne!(a.computed_hash(), b.computed_hash());
        let mut c = a.clone();
        c.lineage = Some(String::new());
        assert_ne!(a.computed_hash(), c.computed_hash(), "absent is not empty");
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let records = chain(5);
        let report = verify_chain(3, &records, Some(4), None);
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.entries_checked, 5);
        assert_eq!(report.head, Some(records[4].head()));
        let empty = verify_chain(0, &[], None, None);
        assert!(empty.is_intact());
        assert_eq!(empty.head, None);
    }

    #[test]
    fn each_kind_of_tampering_names_its_seq() {
        let records = chain(5);
        let first = |records: &[AuditRecord], recorded, expected| {
            verify_chain(1, records, recorded, expected)
                .broken
                .expect("broken")
        };

        let mut altered = records.clone();
        altered[2].target = "hold-9".into();
        let b = first(&altered, Some(4), None);
        assert_eq!(b.seq, 2);
        assert!(matches!(b.problem, LinkProblem::Altered { .. }), "{b}");

        let mut deleted = records.clone();
        deleted.remove(2);
        let b = first(&deleted, Some(4), None);
        assert_eq!(
            (b.seq, b.problem),
            (2, LinkProblem::Missing { next_seq: 3 })
        );

        let mut renumbered = deleted.clone();
        for r in &mut renumbered[2..] {
            r.seq -= 1;
        }
        let b = first(&renumbered, Some(4), None);
        assert_eq!(b.seq, 2);
        assert!(matches!(b.problem, LinkProblem::Unlinked { .. }), "{b}");

        let mut swapped = records.clone();
        swapped[1].seq = 2;
        swapped[2].seq = 1;
        let b = first(&swapped, Some(4), None);
        assert_eq!(b.seq, 1);
        assert!(matches!(b.problem, LinkProblem::Unlinked { .. }), "{b}");

        let mut forked = records.clone();
        forked.push(AuditRecord::seal(3, records[2].hash.clone(), &entry(99)));
        let b = first(&forked, Some(4), None);
        assert_eq!((b.seq, b.problem), (3, LinkProblem::Duplicate));

        let b = first(&records[..4], Some(4), None);
        assert_eq!(
            (b.seq, b.problem),
            (4, LinkProblem::Truncated { recorded_head: 4 })
        );
        let b = first(&records, Some(3), None);
        assert_eq!(
            (b.seq, b.problem),
            (
                4,
                LinkProblem::Unrecorded {
                    recorded_head: Some(3)
                }
            )
        );

        // Truncation that also rewound the recorded head: only an external anchor sees it.
        let anchor = records[4].head();
        assert!(verify_chain(1, &records[..3], Some(2), None).is_intact());
        let b = first(&records[..3], Some(2), Some(&anchor));
        assert_eq!(
            (b.seq, b.problem),
            (
                3,
                LinkProblem::HeadMissing {
                    expected: anchor.clone()
                }
            )
        );
        let mut other = anchor.clone();
        other.hash = records[3].hash.clone();
        let b = first(&records, Some(4), Some(&other));
        assert_eq!(b.seq, 4);
        assert!(matches!(b.problem, LinkProblem::HeadMismatch { .. }), "{b}");
    }

    #[test]
    fn chain_heads_parse_and_print() {
        let h = ChainHead {
            seq: 41,
            hash: "ab".repeat(32),
        };
        assert_eq!(h.to_string().parse::<ChainHead>().unwrap(), h);
        assert!("41".parse::<ChainHead>().is_err());
        assert!("x:ab".parse::<ChainHead>().is_err());
        assert!(
            format!("-1:{}", "a".repeat(64))
                .parse::<ChainHead>()
                .is_err()
        );
    }

    #[test]
    fn entries_are_checked_before_io() {
        let mut e = entry(1);
        e.details = "[1]".into();
        let err = e.validate(3).unwrap_err();
        assert!(err.to_string().contains("entry 3"), "{err}");
        assert!(err.to_string().contains("details"), "{err}");
        e.details = "{".into();
        assert!(e.validate(0).is_err());
        let mut e = entry(1);
        e.actor = " ".into();
        assert!(e.validate(0).unwrap_err().to_string().contains("actor"));
    }

    /// What makes appends safe: an append planned on a stale snapshot carries the same
    /// `retain-audit` transaction as the one that won, and Delta refuses it. Without the `txn`
    /// action the stale commit would be rebased as a blind append and fork the chain.
    #[tokio::test]
    async fn an_append_on_a_stale_snapshot_is_refused() {
        use deltalake::kernel::transaction::{CommitConflictError, TransactionError};

        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("audit");
        let location = location.to_str().unwrap();
        let mut a = AuditTable::open_or_create(location, HashMap::new())
            .await
            .unwrap();
        let mut b = AuditTable::open_or_create(location, HashMap::new())
            .await
            .unwrap();
        a.append(&[entry(0)]).await.unwrap();
        a.refresh().await.unwrap();
        b.refresh().await.unwrap();

        // `a` reads the head (seq 0) and plans seq 1; `b` appends seq 1 first.
        let stale = a.state().unwrap().clone();
        let planned =
            AuditRecord::seal(1, a.head_at(&stale).await.unwrap().unwrap().hash, &entry(1));
        let won = b.append(&[entry(2)]).await.unwrap();
        assert_eq!(won.head.seq, 1);

        let err = a
            .commit(&stale, std::slice::from_ref(&planned))
            .await
            .expect_err("the stale append must be refused");
        let CommitError::Delta(e) = err else {
            panic!("expected a commit error")
        };
        assert!(
            matches!(
                e,
                DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(
                        CommitConflictError::ConcurrentTransaction
                    )
                }
            ),
            "{e}"
        );

        // A plain blind append of the same rows (no `txn`) is what the conflict prevents: it
        // goes through and forks the chain at seq 1.
        let batch = audit_batch(std::slice::from_ref(&planned)).unwrap();
        let mut writer = RecordBatchWriter::for_table(&a.table).unwrap();
        writer.write(batch).await.unwrap();
        let adds = writer.flush().await.unwrap();
        CommitBuilder::default()
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(
                Some(&stale as &dyn TableReference),
                a.table.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .expect("a blind append does not conflict");
        let report = a.verify().await.unwrap();
        assert_eq!(
            report.broken,
            Some(BrokenLink {
                seq: 1,
                problem: LinkProblem::Duplicate
            }),
            "{report:?}"
        );
    }
}
