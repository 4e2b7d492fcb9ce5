//! Retain's event clocks and policy changes on landed records (`docs/events.md`,
//! `docs/policy-changes.md`).
//!
//! - [`schedule`](mod@schedule): the pure core. A record's decision from its category, creation
//!   date, facts and the retention events applied to it, plus the provenance entries (`event`
//!   and `fact`) stored among its `obligations` so the row can be recomputed later.
//! - [`recompute`](mod@recompute): a landed row's decision under a given policy and extra
//!   events (the category is kept, never re-classified), and how a change moves its date.
//! - [`change`]: `retain policy diff` (a DataFusion what-if over `records`), `apply` (one MERGE
//!   commit, idempotent, audited) and the compliance lock.
//! - [`events_table`]: the `events` Delta table (every retention event, `event_id` unique) and
//!   which records an event matches.
//! - [`patient`]: every record referencing a patient (an audited PHI access).

pub mod change;
mod error;
pub mod events_table;
pub mod patient;
pub mod recompute;
pub mod rows;
pub mod schedule;

pub use change::{
    Applied, DiffReport, LOCK_APP_ID, Movement, PolicyChange, lock, lock_state, policy_txn_app_id,
};
pub use error::{Error, Result};
pub use events_table::{EVENTS_TABLE, EventsTable, StoredEvent, events_schema, matches};
pub use recompute::{Recomputed, recompute, scan_records};
pub use schedule::{AppliedEvent, Scheduled, StoredEntry, schedule};
