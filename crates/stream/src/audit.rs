//! The scheduler's audit trail (`docs/audit.md`): one `records_landed` entry per landing that
//! committed a `records` version.
//!
//! Every entry is built from the `records` version's own Delta commit (its `commitInfo.retain`
//! counts, its `add` files and its `txn` offsets), so an entry appended right after the landing
//! and one backfilled later say the same thing. The landing and the audit append are two
//! commits to two tables: a crash between them leaves a landing without its entry. On start the
//! scheduler therefore reads which `records` versions the audit table already covers and
//! backfills an entry for every scheduler landing after them that has none (the entry's
//! `table_version` is the key, so a backfill never repeats an entry this process can see).
//! An append that fails while running is retried after the next landing.
//!
//! Entries hold ids, offsets and counts only, never a value from a record.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use retain_lake::deltalake::DeltaTableError;
use retain_lake::{AuditAction, AuditEntry, AuditTable, RECORDS_TABLE, RecordsTable, txn_app_id};
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use crate::config::SchedulerConfig;
use crate::error::{Error, Result};

/// How many `records` versions below the newest audited landing a start-up backfill reads
/// (gaps further back are left alone: only a landing whose scheduler crashed and was not
/// restarted while others landed this many times can be there). With nothing audited yet, the
/// whole retained log is read.
pub const BACKFILL_LOOKBACK: u64 = 1_000;

/// One `records` commit, as far as the audit trail cares.
#[derive(Debug, Default)]
struct Commit {
    /// `commitInfo.retain.appId`: who landed (the scheduler's lineage app id).
    app_id: Option<String>,
    /// `commitInfo.retain.rows`.
    rows: u64,
    /// `commitInfo.timestamp` (when the commit was made).
    at: Option<DateTime<Utc>>,
    /// `add` actions.
    files: u64,
    /// Their sizes.
    bytes: u64,
    /// `txn` actions: app id → version.
    txns: BTreeMap<String, i64>,
}

/// The scheduler's handle on the audit table.
pub(crate) struct LandingAudit {
    table: AuditTable,
    actor: String,
    app_id: String,
    lineage_app_id: String,
    source_topic: String,
    /// `records` versions that have a `records_landed` entry.
    audited: BTreeSet<u64>,
    /// Landings of this process whose entry is not appended yet: version and the lineage
    /// offsets before it.
    pending: Vec<(u64, BTreeMap<i32, i64>)>,
}

impl std::fmt::Debug for LandingAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LandingAudit")
            .field("table", &self.table)
            .field("actor", &self.actor)
            .field("audited", &self.audited.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl LandingAudit {
    /// Opens (or creates) the audit table at `location` and reads which `records` versions it
    /// covers.
    pub(crate) async fn open(c: &SchedulerConfig, location: &str) -> Result<Self> {
        let mut table = AuditTable::open_or_create(location, c.storage_options.clone())
            .await
            .map_err(audit_err)?;
        let audited = table
            .entries()
            .await
            .map_err(audit_err)?
            .into_iter()
            .filter(|r| r.action == AuditAction::RecordsLanded.code() && r.target == RECORDS_TABLE)
            .filter_map(|r| r.table_version.and_then(|v| u64::try_from(v).ok()))
            .collect();
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty());
        // The stage, its group when not the default, and the host when the environment names it.
        let mut actor = "retain-scheduler".to_owned();
        if c.group_id != crate::config::GROUP_SCHEDULER {
            actor = format!("{actor}/{}", c.group_id);
        }
        if let Some(h) = host {
            actor = format!("{actor}@{h}");
        }
        Ok(LandingAudit {
            table,
            actor,
            app_id: c.app_id.clone(),
            lineage_app_id: c.lineage_app_id.clone(),
            source_topic: c.source_topic.clone(),
            audited,
            pending: Vec::new(),
        })
    }

    /// The audit table's URL.
    pub(crate) fn url(&self) -> &str {
        self.table.url()
    }

    /// Appends an entry for every scheduler landing in `records` (as last read) that has none;
    /// returns how many were appended.
    pub(crate) async fn backfill(&mut self, records: &RecordsTable) -> Result<usize> {
        let current = records.version();
        let floor = match self.audited.last() {
            Some(&newest) => newest.saturating_sub(BACKFILL_LOOKBACK),
            None => 0,
        };
        let mut landings = Vec::new();
        for version in floor..=current {
            if self.audited.contains(&version) {
                continue;
            }
            let Some(commit) = read_commit(records, version).await? else {
                continue;
            };
            if commit.app_id.as_deref() == Some(self.lineage_app_id.as_str()) {
                landings.push((version, commit));
            }
        }
        if landings.is_empty() {
            return Ok(0);
        }
        // The lineage offsets before the first of them, then carried forward.
        let partitions: BTreeSet<i32> = landings
            .iter()
            .flat_map(|(_, c)| self.offsets(c, &self.lineage_app_id).into_keys())
            .collect();
        let mut lineage =
            lineage_at(records, landings[0].0, &self.lineage_app_id, &partitions).await?;
        let mut entries = Vec::with_capacity(landings.len());
        for (version, commit) in &landings {
            entries.push(self.entry(*version, commit, &lineage, true));
            for (p, next) in self.offsets(commit, &self.lineage_app_id) {
                lineage.insert(p, next);
            }
        }
        self.table.append(&entries).await.map_err(audit_err)?;
        self.audited.extend(landings.iter().map(|(v, _)| *v));
        info!(
            entries = entries.len(),
            first = landings[0].0,
            last = landings[landings.len() - 1].0,
            "backfilled records_landed audit entries for landings without one"
        );
        Ok(entries.len())
    }

    /// Records that this process landed `version`, with the lineage offsets `before` it, and
    /// appends its entry (and any still pending). A retryable failure leaves the entries pending
    /// for the next call (and, after a crash, for the start-up backfill); any other is returned.
    pub(crate) async fn landed(
        &mut self,
        records: &RecordsTable,
        version: u64,
        before: BTreeMap<i32, i64>,
    ) -> Result<()> {
        if !self.audited.contains(&version) {
            self.pending.push((version, before));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let append = async {
            let mut entries = Vec::with_capacity(self.pending.len());
            for (v, before) in &self.pending {
                let Some(commit) = read_commit(records, *v).await? else {
                    continue;
                };
                entries.push(self.entry(*v, &commit, before, false));
            }
            if !entries.is_empty() {
                self.table.append(&entries).await.map_err(audit_err)?;
            }
            Ok::<_, Error>(())
        };
        match append.await {
            Ok(()) => {
                self.audited.extend(self.pending.drain(..).map(|(v, _)| v));
                Ok(())
            }
            Err(e) if e.kind() == crate::ErrorKind::Unavailable => {
                warn!(error = %e, pending = self.pending.len(), "cannot append the landing's audit entry yet; retrying after the next landing");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `{app}-{p}` txns of `commit` as partition → next offset.
    fn offsets(&self, commit: &Commit, app: &str) -> BTreeMap<i32, i64> {
        let prefix = format!("{app}-");
        commit
            .txns
            .iter()
            .filter_map(|(id, &next)| Some((id.strip_prefix(&prefix)?.parse().ok()?, next)))
            .collect()
    }

    /// The `records_landed` entry of `version`: rows, files, bytes, the classified topic's
    /// next offsets, and the input offsets it covers (from the lineage offsets `before` it).
    fn entry(
        &self,
        version: u64,
        commit: &Commit,
        before: &BTreeMap<i32, i64>,
        backfilled: bool,
    ) -> AuditEntry {
        let partitions: Map<String, Value> = self
            .offsets(commit, &self.app_id)
            .into_iter()
            .map(|(p, next)| (p.to_string(), json!(next)))
            .collect();
        let mut ranges = Map::new();
        let mut text = Vec::new();
        for (p, next) in self.offsets(commit, &self.lineage_app_id) {
            let first = before.get(&p).copied().unwrap_or(0).min(next);
            ranges.insert(p.to_string(), json!([first, next - 1]));
            text.push(format!("{}/{p}@{first}-{}", self.source_topic, next - 1));
        }
        let mut details = json!({
            "rows": commit.rows,
            "files": commit.files,
            "bytes": commit.bytes,
            "partitions": partitions,
            "lineage": ranges,
        });
        if backfilled {
            details["backfilled"] = json!(true);
        }
        let mut e = AuditEntry::new(
            AuditAction::RecordsLanded,
            self.actor.clone(),
            commit.at.unwrap_or_else(Utc::now),
            RECORDS_TABLE,
        )
        .with_details(&details)
        .with_table_version(i64::try_from(version).unwrap_or(i64::MAX));
        if !text.is_empty() {
            e = e.with_lineage(text.join(","));
        }
        e
    }
}

fn audit_err(source: retain_lake::Error) -> Error {
    Error::Audit { source }
}

/// Reads the commit of `version` from the `records` log (`None`: no such commit, e.g. cleaned
/// up by log retention).
async fn read_commit(records: &RecordsTable, version: u64) -> Result<Option<Commit>> {
    let table = records.delta_table();
    let bytes = table
        .log_store()
        .read_commit_entry(version)
        .await
        .map_err(|e| log_err(records, e))?;
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let mut commit = Commit::default();
    for line in bytes.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action: Value = serde_json::from_slice(line).map_err(|e| {
            log_err(
                records,
                DeltaTableError::Generic(format!("commit {version} is not JSON lines: {e}")),
            )
        })?;
        if let Some(info) = action.get("commitInfo") {
            let retain = info.get("retain");
            commit.app_id = retain
                .and_then(|r| r.get("appId"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            commit.rows = retain
                .and_then(|r| r.get("rows"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            commit.at = info
                .get("timestamp")
                .and_then(Value::as_i64)
                .and_then(DateTime::from_timestamp_millis);
        } else if let Some(add) = action.get("add") {
            commit.files += 1;
            commit.bytes += add.get("size").and_then(Value::as_u64).unwrap_or(0);
        } else if let Some(txn) = action.get("txn")
            && let (Some(id), Some(v)) = (
                txn.get("appId").and_then(Value::as_str),
                txn.get("version").and_then(Value::as_i64),
            )
        {
            commit.txns.insert(id.to_owned(), v);
        }
    }
    Ok(Some(commit))
}

/// The lineage offsets (`{app}-{p}` txns) of `partitions` committed before `version`: none
/// before the first version; read from the table as of `version - 1` otherwise.
async fn lineage_at(
    records: &RecordsTable,
    version: u64,
    app: &str,
    partitions: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, i64>> {
    let Some(previous) = version.checked_sub(1) else {
        return Ok(BTreeMap::new());
    };
    let mut table = records.delta_table().clone();
    if let Err(e) = table.load_version(previous).await {
        // Log retention may have removed it: the ranges then start at 0.
        warn!(version = previous, error = %e, "cannot read the lineage offsets before the backfill");
        return Ok(BTreeMap::new());
    }
    let state = table.snapshot().map_err(|e| log_err(records, e))?;
    let store = table.log_store();
    let mut out = BTreeMap::new();
    for &p in partitions {
        if let Some(v) = state
            .transaction_version(store.as_ref(), txn_app_id(app, p))
            .await
            .map_err(|e| log_err(records, e))?
        {
            out.insert(p, v);
        }
    }
    Ok(out)
}

fn log_err(records: &RecordsTable, e: DeltaTableError) -> Error {
    Error::Lake {
        source: retain_lake::Error::Open {
            url: records.url().to_owned(),
            source: Box::new(e),
        },
    }
}
