//! Recomputing landed rows: under a (new) policy, with (more) events; scanning `records` with
//! DataFusion and writing changed rows back with one Delta MERGE.

use std::cmp::Ordering;
use std::pin::Pin;

use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::logical_expr::Expr;
use datafusion::prelude::{SessionContext, col};
use futures::{Stream, StreamExt as _};
use retain_lake::deltalake::DeltaTable;
use retain_lake::deltalake::kernel::transaction::CommitProperties;
use retain_lake::schema::columns;
use retain_policy::Policy;

use crate::error::{Error, Result, query};
use crate::rows::{RowView, StoredDecision, UPDATED_COLUMNS, conform};
use crate::schedule::{AppliedEvent, schedule};

/// A row's decision recomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recomputed {
    /// The new decision, as it would be stored.
    pub decision: StoredDecision,
    /// Whether anything but the policy version differs from what is stored.
    pub changed: bool,
}

/// Recomputes `row` under `policy` with the events already recorded on it plus `extra` (an
/// event already recorded, by id, counts once). The category is kept.
pub fn recompute(policy: &Policy, row: &RowView, extra: &[AppliedEvent]) -> Recomputed {
    let mut events: Vec<AppliedEvent> = row
        .stored
        .entries
        .iter()
        .filter_map(|e| e.event())
        .collect();
    events.extend(extra.iter().cloned());
    let s = schedule(policy, &row.category, row.created, &row.facts, &events);
    let d = &s.decision;
    let decision = StoredDecision {
        entries: s.entries(),
        retain_until: d.retain_until,
        status: d.status.as_str().to_owned(),
        governing: d.governing.as_deref().map(str::to_owned),
        waiting_for: d.waiting_for.clone(),
        policy_version: d.policy_version.to_string(),
    };
    let changed = !decision.same_schedule(&row.stored);
    Recomputed { decision, changed }
}

/// How a change moves the date a record may be disposed of on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Movement {
    /// Kept longer (a later date, or no date any more: pending or indefinite).
    Later,
    /// Kept less long (an earlier date, or a date where there was none).
    Earlier,
    /// The same date (or still none); something else changed (an obligation, the governing
    /// rule, what it waits for, a recorded event).
    Same,
}

/// The date a decision lets the record go on (`None`: never, while pending or indefinite).
fn horizon(d: &StoredDecision) -> Option<NaiveDate> {
    if d.status == "scheduled" {
        d.retain_until
    } else {
        None
    }
}

/// How `after` moves the disposal date of `before`.
pub fn movement(before: &StoredDecision, after: &StoredDecision) -> Movement {
    match (horizon(before), horizon(after)) {
        (Some(a), Some(b)) => match b.cmp(&a) {
            Ordering::Greater => Movement::Later,
            Ordering::Less => Movement::Earlier,
            Ordering::Equal => Movement::Same,
        },
        (Some(_), None) => Movement::Later,
        (None, Some(_)) => Movement::Earlier,
        (None, None) => Movement::Same,
    }
}

/// Whether `after` makes the record due on `today` when `before` did not.
pub fn newly_due(before: &StoredDecision, after: &StoredDecision, today: NaiveDate) -> bool {
    let due = |d: &StoredDecision| horizon(d).is_some_and(|u| u <= today);
    due(after) && !due(before)
}

/// A stream of `records` batches (cast to the table's types) with `columns`, filtered by
/// `filter`, from the table's current snapshot.
pub async fn scan_records(
    table: &DeltaTable,
    columns: &[&str],
    filter: Option<Expr>,
) -> Result<Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>> {
    let doing = "scanning the records table";
    let provider = table.table_provider().await.map_err(|e| query(doing, e))?;
    // With a filter, decode its columns first and the others only for the rows it keeps (the
    // events stage's key filter keeps a few rows of millions).
    let mut config = datafusion::prelude::SessionConfig::new();
    config.options_mut().execution.parquet.pushdown_filters = filter.is_some();
    let ctx = SessionContext::new_with_config(config);
    let mut df = ctx.read_table(provider).map_err(|e| query(doing, e))?;
    if let Some(f) = filter {
        df = df.filter(f).map_err(|e| query(doing, e))?;
    }
    let stream = df
        .select_columns(columns)
        .map_err(|e| query(doing, e))?
        .execute_stream()
        .await
        .map_err(|e| query(doing, e))?;
    Ok(Box::pin(stream.map(move |b| {
        b.map_err(|e| query(doing, e)).and_then(|b| conform(&b))
    })))
}

/// Writes `updates` (batches of [`crate::rows::update_schema`]) over the rows with the same
/// `record_key` in ONE Delta commit (a MERGE) carrying `properties` (its `txn`s and metadata).
/// Returns the committed version. Rows not in `updates` are not touched.
pub async fn merge_updates(
    table: &DeltaTable,
    updates: Vec<RecordBatch>,
    properties: CommitProperties,
) -> Result<u64> {
    let doing = "merging recomputed rows into the records table";
    let ctx = SessionContext::new();
    let source = ctx.read_batches(updates).map_err(|e| query(doing, e))?;
    let target_key = col(format!("t.{}", columns::RECORD_KEY));
    let source_key = col(format!("s.{}", columns::RECORD_KEY));
    let (table, _metrics) = table
        .clone()
        .merge(source, target_key.eq(source_key))
        .with_source_alias("s")
        .with_target_alias("t")
        .with_commit_properties(properties)
        .when_matched_update(|u| {
            UPDATED_COLUMNS
                .iter()
                .fold(u, |u, c| u.update(*c, col(format!("s.{c}"))))
        })
        .map_err(|e| query(doing, e))?
        .await
        .map_err(|e| query(doing, e))?;
    table.version().ok_or_else(|| Error::Rows {
        column: "*".to_owned(),
        reason: "the merge left no table version".to_owned(),
    })
}
