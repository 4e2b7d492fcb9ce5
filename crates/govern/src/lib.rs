//! Holds and disposal over the lake: what a litigation hold covers, and which records are due.
//!
//! - [`HoldScope`]: custodians, dates, keywords, categories, patient references or a SQL
//!   condition, compiled to one predicate over `records` columns.
//! - [`HoldSet`]: the holds in force, compiled by DataFusion and evaluated on Arrow batches:
//!   which holds cover a record ([`HoldSet::covering`]), which records are due
//!   ([`HoldSet::due`]: scheduled, dated on or before the cut-off, covered by no hold).
//! - [`HoldsTable`]: the `holds` Delta table (create with a fence on `records`, release with an
//!   approver other than the creator, list); [`preview`] counts what a scope would cover.
//!
//! - [`Disposal`]: plan a manifest of what is due, approve it (someone else), execute it
//!   (re-check under the holds fence, delete, tombstone, vacuum, certify); dry run by default.
//!
//! `docs/holds.md` and `docs/disposal.md` describe the semantics.

mod coverage;
mod disposal;
mod error;
mod holds;
mod preview;
mod scope;
mod table;

pub use coverage::{CompiledHold, HoldSet, cutoff, dated_by};
pub use disposal::{
    Certificate, CommandSink, DISPOSALS_TABLE, Disposal, DisposalsTable, Execution, FAILPOINT_VAR,
    MANIFESTS_TABLE, Manifest, ManifestEntry, ManifestState, ManifestStatus, ManifestsTable,
    disposals_schema, manifests_schema,
};
pub use error::{Error, Result};
pub use holds::{
    HOLDS_FENCE, HOLDS_TABLE, Hold, HoldStatus, HoldsTable, NewHold, Release, holds_schema,
};
pub use preview::{Preview, covered_clause, preview};
pub use scope::HoldScope;
