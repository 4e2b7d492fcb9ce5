//! Policy changes on landed records: the what-if (`diff`), `apply` in one MERGE commit, and the
//! compliance lock. `docs/policy-changes.md` is the run book.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::RecordBatch;
use futures::StreamExt as _;
use retain_lake::deltalake::kernel::Transaction;
use retain_lake::deltalake::kernel::transaction::CommitProperties;
use retain_lake::{AuditAction, AuditEntry, AuditTable, RecordsTable};
use retain_policy::Policy;
use serde::Serialize;
use tracing::{info, warn};

use crate::error::{Error, Result};
pub use crate::recompute::Movement;
use crate::recompute::{merge_updates, movement, newly_due, recompute, scan_records};
use crate::rows::{RECOMPUTE_COLUMNS, UpdateBuilder, row_views};

/// The `txn` app id in `records` that holds the compliance lock: absent or 0 = off, 1 = on.
/// Only ever raised: [`lock`] writes 1, and nothing in Retain writes a lower value.
pub const LOCK_APP_ID: &str = "retain-policy-lock";

/// How many sample record keys a report keeps per kind of movement.
pub const SAMPLES: usize = 5;

/// The `txn` app id an apply of policy `version` commits (its value: the `records` version the
/// apply read), so a re-run after a crash, or a second run racing the first, cannot apply twice.
pub fn policy_txn_app_id(version: &str) -> String {
    format!("retain-policy-{version}")
}

/// Counts of one group of records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Records whose date moves later (or that lose their date: pending, indefinite).
    pub later: u64,
    /// Records whose date moves earlier (or that gain one).
    pub earlier: u64,
    /// Of those that change, the records that become due as of the report's date.
    pub due_now: u64,
    /// Records rewritten with the same date (an obligation, rule or text changed).
    pub same_date: u64,
    /// Records the new policy does not change.
    pub unchanged: u64,
}

impl Counts {
    fn add(&mut self, m: Option<Movement>, due: bool) {
        match m {
            Some(Movement::Later) => self.later += 1,
            Some(Movement::Earlier) => self.earlier += 1,
            Some(Movement::Same) => self.same_date += 1,
            None => self.unchanged += 1,
        }
        if due {
            self.due_now += 1;
        }
    }

    fn merge(&mut self, o: &Counts) {
        self.later += o.later;
        self.earlier += o.earlier;
        self.due_now += o.due_now;
        self.same_date += o.same_date;
        self.unchanged += o.unchanged;
    }

    /// Records that would be rewritten.
    pub fn changed(&self) -> u64 {
        self.later + self.earlier + self.same_date
    }
}

/// What a policy would change on the records table (nothing is written but an audit entry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// The new policy's content hash.
    pub policy_version: String,
    /// The `records` version read.
    pub records_version: u64,
    /// "Due now" is as of this date.
    pub as_of: Option<NaiveDate>,
    /// Records read.
    pub records: u64,
    /// Over all records.
    pub total: Counts,
    /// By category.
    pub by_category: BTreeMap<String, Counts>,
    /// By the governing obligation under the new policy.
    pub by_rule: BTreeMap<String, Counts>,
    /// Sample record keys (no PHI) moving later.
    pub samples_later: Vec<String>,
    /// Sample record keys moving earlier.
    pub samples_earlier: Vec<String>,
    /// Sample record keys becoming due now.
    pub samples_due_now: Vec<String>,
    /// The earliest `retain_until` among records that become due.
    pub earliest_newly_due: Option<NaiveDate>,
    /// Whether the compliance lock is on.
    pub locked: bool,
    /// How long the scan and recompute took, in milliseconds.
    pub elapsed_ms: u64,
}

/// Adds the counts, samples (up to [`SAMPLES`], in order) and earliest date of `part`.
fn merge_report(into: &mut DiffReport, part: DiffReport) {
    into.records += part.records;
    into.total.merge(&part.total);
    for (k, c) in part.by_category {
        into.by_category.entry(k).or_default().merge(&c);
    }
    for (k, c) in part.by_rule {
        into.by_rule.entry(k).or_default().merge(&c);
    }
    for (to, from) in [
        (&mut into.samples_later, part.samples_later),
        (&mut into.samples_earlier, part.samples_earlier),
        (&mut into.samples_due_now, part.samples_due_now),
    ] {
        let room = SAMPLES.saturating_sub(to.len());
        to.extend(from.into_iter().take(room));
    }
    into.earliest_newly_due = match (into.earliest_newly_due, part.earliest_newly_due) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

/// What [`PolicyChange::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The what-if the apply committed (computed on the snapshot it committed on).
    pub report: DiffReport,
    /// Rows rewritten (= `report.total.changed()`).
    pub rows_changed: u64,
    /// The committed `records` version; `None` when nothing needed changing.
    pub version: Option<u64>,
    /// Commit attempts made.
    pub attempts: u32,
}

/// Whether the compliance lock is on, and the `records` version that turned it on.
pub async fn lock_state(records: &mut RecordsTable) -> Result<Option<i64>> {
    records.refresh().await?;
    Ok(records.fence_version(LOCK_APP_ID).await?.filter(|v| *v > 0))
}

/// Turns the compliance lock on (idempotent) and audits it. There is no way to turn it off.
pub async fn lock(
    records: &mut RecordsTable,
    audit: Option<&mut AuditTable>,
    by: &str,
    now: DateTime<Utc>,
) -> Result<u64> {
    if by.trim().is_empty() {
        return Err(Error::Refused(
            "--by must name who turns the lock on".to_owned(),
        ));
    }
    let version = records.fence(LOCK_APP_ID, 1).await?;
    if let Some(audit) = audit {
        let entry = AuditEntry::new(AuditAction::PolicyApplied, by, now, "policy-lock")
            .with_details(&serde_json::json!({ "lock": "on", "mode": "compliance" }))
            .with_table_version(version as i64);
        audit.append(&[entry]).await?;
    }
    Ok(version)
}

/// A policy change on the records table: the what-if and the apply.
pub struct PolicyChange<'a> {
    policy: &'a Policy,
    today: NaiveDate,
}

impl<'a> PolicyChange<'a> {
    /// A change to `policy`, with "due now" as of `today` (the caller's clock).
    pub fn new(policy: &'a Policy, today: NaiveDate) -> Self {
        PolicyChange { policy, today }
    }

    /// The what-if over every record of the table's current version; with `collect`, also the
    /// MERGE source rows of every record that would change.
    async fn scan(
        &self,
        records: &RecordsTable,
        collect: bool,
    ) -> Result<(DiffReport, Vec<RecordBatch>)> {
        let started = Instant::now();
        let mut report = DiffReport {
            policy_version: self.policy.version().to_owned(),
            records_version: records.version(),
            as_of: Some(self.today),
            ..DiffReport::default()
        };
        let mut updates = Vec::new();
        let mut stream = scan_records(records.delta_table(), &RECOMPUTE_COLUMNS, None).await?;
        // The recompute is CPU work: batches are recomputed a few at a time on scoped threads,
        // one per core, and merged in scan order (so the samples are the same as one thread's).
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut pending: Vec<RecordBatch> = Vec::new();
        loop {
            let next = stream.next().await;
            let done = next.is_none();
            if let Some(batch) = next {
                pending.push(batch?);
            }
            if pending.len() >= workers || (done && !pending.is_empty()) {
                let parts: Vec<Result<(DiffReport, Option<RecordBatch>)>> =
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = pending
                            .drain(..)
                            .map(|batch| scope.spawn(move || self.part(&batch, collect)))
                            .collect();
                        handles
                            .into_iter()
                            .map(|h| h.join().expect("a recompute thread panicked"))
                            .collect()
                    });
                for part in parts {
                    let (part, update) = part?;
                    merge_report(&mut report, part);
                    updates.extend(update);
                }
            }
            if done {
                break;
            }
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok((report, updates))
    }

    /// The what-if of one batch (counts, samples in row order) and, with `collect`, its MERGE
    /// source rows.
    fn part(
        &self,
        batch: &RecordBatch,
        collect: bool,
    ) -> Result<(DiffReport, Option<RecordBatch>)> {
        let mut report = DiffReport::default();
        let mut builder = UpdateBuilder::new();
        for row in row_views(batch)? {
            let r = recompute(self.policy, &row, &[]);
            report.records += 1;
            let m = r.changed.then(|| movement(&row.stored, &r.decision));
            let due = r.changed && newly_due(&row.stored, &r.decision, self.today);
            report.total.add(m, due);
            report
                .by_category
                .entry(row.category.as_str().to_owned())
                .or_default()
                .add(m, due);
            let rule = r
                .decision
                .governing
                .clone()
                .unwrap_or_else(|| "-".to_owned());
            report.by_rule.entry(rule).or_default().add(m, due);
            let samples = match m {
                Some(Movement::Later) => Some(&mut report.samples_later),
                Some(Movement::Earlier) => Some(&mut report.samples_earlier),
                _ => None,
            };
            if let Some(s) = samples
                && s.len() < SAMPLES
            {
                s.push(row.record_key.clone());
            }
            if due {
                if report.samples_due_now.len() < SAMPLES {
                    report.samples_due_now.push(row.record_key.clone());
                }
                report.earliest_newly_due = report
                    .earliest_newly_due
                    .min(r.decision.retain_until)
                    .or(r.decision.retain_until);
            }
            if collect && r.changed {
                builder.push(&row.record_key, &r.decision);
            }
        }
        let update = if builder.is_empty() {
            None
        } else {
            Some(builder.finish()?)
        };
        Ok((report, update))
    }

    /// What the policy would change, on the table's newest version; nothing is written except,
    /// with `audit`, a `policy_applied` entry marked `"dry_run": true`.
    pub async fn diff(
        &self,
        records: &mut RecordsTable,
        audit: Option<&mut AuditTable>,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<DiffReport> {
        let locked = lock_state(records).await?;
        let (mut report, _) = self.scan(records, false).await?;
        report.locked = locked.is_some();
        if let Some(audit) = audit {
            let entry = AuditEntry::new(AuditAction::PolicyApplied, by, now, self.policy.version())
                .with_details(&serde_json::json!({
                    "dry_run": true,
                    "records": report.records,
                    "later": report.total.later,
                    "earlier": report.total.earlier,
                    "due_now": report.total.due_now,
                    "same_date": report.total.same_date,
                }))
                .with_table_version(report.records_version as i64);
            audit.append(&[entry]).await?;
        }
        Ok(report)
    }

    /// Recomputes every record under the policy and rewrites the changed rows (their
    /// `policy_version` becomes the policy's) in one MERGE commit carrying
    /// `retain-policy-<version>` and the lock's `txn` as read, so a lock turned on meanwhile
    /// makes the commit fail and the check run again. Refused while the lock is on if any date
    /// would move earlier. Audited as `policy_applied` (by, approved by, counts).
    pub async fn apply(
        &self,
        records: &mut RecordsTable,
        audit: Option<&mut AuditTable>,
        by: &str,
        approved_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        if by.trim().is_empty() || approved_by.trim().is_empty() {
            return Err(Error::Refused(
                "--by and --approved-by must both name a person".to_owned(),
            ));
        }
        let app_id = policy_txn_app_id(self.policy.version());
        let mut attempts = 0;
        let applied = loop {
            attempts += 1;
            let locked = lock_state(records).await?;
            let (mut report, updates) = self.scan(records, true).await?;
            report.locked = locked.is_some();
            if let Some(locked_at) = locked
                && report.total.earlier > 0
            {
                return Err(Error::Locked {
                    count: report.total.earlier,
                    example: report.samples_earlier.first().cloned().unwrap_or_default(),
                    locked_at,
                });
            }
            let rows_changed = report.total.changed();
            if rows_changed == 0 {
                break Applied {
                    report,
                    rows_changed,
                    version: None,
                    attempts,
                };
            }
            let properties = CommitProperties::default()
                .with_application_transactions(vec![
                    Transaction::new(&app_id, report.records_version as i64),
                    Transaction::new(LOCK_APP_ID, locked.unwrap_or(0)),
                ])
                .with_metadata([(
                    "retain".to_owned(),
                    serde_json::json!({
                        "appId": app_id,
                        "policy": self.policy.version(),
                        "rows": rows_changed,
                        "by": by,
                        "approvedBy": approved_by,
                    }),
                )]);
            match merge_updates(records.delta_table(), updates, properties).await {
                Ok(version) => {
                    records.refresh().await?;
                    break Applied {
                        report,
                        rows_changed,
                        version: Some(version),
                        attempts,
                    };
                }
                Err(e) if e.is_retryable() && attempts < 5 => {
                    warn!(error = %e, attempts, "another writer committed first; recomputing");
                }
                Err(e) if e.is_retryable() => {
                    return Err(Error::Contended {
                        what: format!("applying policy {}", self.policy.version()),
                        attempts,
                    });
                }
                Err(e) => return Err(e),
            }
        };
        info!(
            policy = self.policy.version(),
            rows = applied.rows_changed,
            version = ?applied.version,
            "policy applied"
        );
        if let Some(audit) = audit {
            let r = &applied.report;
            let mut entry =
                AuditEntry::new(AuditAction::PolicyApplied, by, now, self.policy.version())
                    .with_details(&serde_json::json!({
                        "approved_by": approved_by,
                        "records": r.records,
                        "changed": applied.rows_changed,
                        "later": r.total.later,
                        "earlier": r.total.earlier,
                        "due_now": r.total.due_now,
                        "same_date": r.total.same_date,
                        "records_version_read": r.records_version,
                    }));
            if let Some(v) = applied.version {
                entry = entry.with_table_version(v as i64);
            }
            audit.append(&[entry]).await?;
        }
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(
        records: u64,
        later: u64,
        samples: &[&str],
        earliest: Option<(i32, u32, u32)>,
    ) -> DiffReport {
        let counts = Counts {
            later,
            unchanged: records - later,
            ..Counts::default()
        };
        DiffReport {
            records,
            total: counts.clone(),
            by_category: [("clinical".to_owned(), counts)].into(),
            samples_later: samples.iter().map(|s| (*s).to_owned()).collect(),
            earliest_newly_due: earliest.and_then(|(y, m, d)| NaiveDate::from_ymd_opt(y, m, d)),
            ..DiffReport::default()
        }
    }

    #[test]
    fn merging_parts_adds_counts_and_keeps_the_first_samples_in_order() {
        let mut report = DiffReport::default();
        merge_report(
            &mut report,
            part(10, 3, &["a", "b", "c"], Some((2030, 1, 1))),
        );
        merge_report(
            &mut report,
            part(7, 4, &["d", "e", "f", "g"], Some((2029, 5, 1))),
        );
        merge_report(&mut report, part(5, 1, &["h"], None));
        assert_eq!(report.records, 22);
        assert_eq!((report.total.later, report.total.unchanged), (8, 14));
        assert_eq!(report.by_category["clinical"].later, 8);
        assert_eq!(report.samples_later, ["a", "b", "c", "d", "e"]);
        assert_eq!(
            report.earliest_newly_due,
            NaiveDate::from_ymd_opt(2029, 5, 1)
        );
    }
}
