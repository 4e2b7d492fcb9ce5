//! Disposal: plan (a manifest of what is due), approve (a second person), execute (re-check,
//! delete under the holds fence, tombstone, vacuum, certify). `docs/disposal.md` is the run
//! book.
//!
//! Safe by construction: [`Disposal`] is a dry run unless told otherwise; the cut-off is the
//! as-of date but never after the injected `today`; execution re-checks every record against
//! the holds and dates as they are then, and deletes only records whose date is still the
//! manifest's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    Array, AsArray, Date32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef, TimeUnit};
use datafusion::prelude::{col, lit};
use retain_lake::deltalake::DeltaTable;
use retain_lake::deltalake::kernel::Transaction;
use retain_lake::deltalake::kernel::transaction::CommitProperties;
use retain_lake::{RecordsTable, append_batch, records_schema};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::coverage::cutoff;
use crate::error::{Error, Result};
use crate::holds::{HOLDS_FENCE, HoldsTable};
use crate::table::{conform, lake, open, open_error, read, refresh};

/// The manifests table: one row per manifest revision (planned, approved, executed).
pub const MANIFESTS_TABLE: &str = "manifests";
/// The tombstones table.
pub const DISPOSALS_TABLE: &str = "disposals";

/// One record a manifest disposes of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The record key (hash of tenant, mailbox, message id).
    pub record_key: String,
    /// For the mail system's deletion: tenant, mailbox and message id.
    pub tenant: String,
    /// The mailbox.
    pub mailbox: String,
    /// The message id.
    pub message_id: String,
    /// The record category.
    pub category: String,
    /// The governing obligation.
    pub governing: Option<String>,
    /// The date the record could be disposed of from.
    pub retain_until: NaiveDate,
    /// The classification rule that decided the category (for the disposal command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The policy version that computed `retain_until` (for the disposal command).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_version: String,
}

/// What a plan found due, as of a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `D-YYYYMMDD-xxxxxxxx`.
    pub id: String,
    /// The as-of date asked for.
    pub as_of: NaiveDate,
    /// The cut-off used: the as-of date, never after the day of planning.
    pub cutoff: NaiveDate,
    /// Who planned.
    pub planned_by: String,
    /// When.
    pub planned_at: DateTime<Utc>,
    /// The records table version read.
    pub records_version: u64,
    /// The holds in force at planning.
    pub holds: Vec<String>,
    /// The query that selected the candidates (holds are then evaluated on each row).
    pub query: String,
    /// The records, by record key.
    pub entries: Vec<ManifestEntry>,
    /// Counts by category.
    pub by_category: BTreeMap<String, u64>,
    /// Counts by governing obligation.
    pub by_rule: BTreeMap<String, u64>,
}

impl Manifest {
    /// SHA-256 (hex) of the manifest's JSON: what approval and execution check.
    pub fn content_hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a manifest serialises");
        hex::encode(Sha256::digest(&json))
    }
}

/// A manifest's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestStatus {
    /// Planned, waiting for approval.
    Planned,
    /// Approved by a second person.
    Approved,
    /// Executed (the certificate exists).
    Executed,
}

/// A manifest with its state.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestState {
    /// The manifest.
    pub manifest: Manifest,
    /// Its content hash.
    pub hash: String,
    /// Where it stands.
    pub status: ManifestStatus,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// The certificate, once executed.
    pub certificate: Option<Certificate>,
}

/// The certificate of destruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The manifest.
    pub manifest_id: String,
    /// Its content hash.
    pub manifest_hash: String,
    /// Who planned, approved and executed.
    pub planned_by: String,
    /// The approver.
    pub approved_by: String,
    /// The executor.
    pub executed_by: String,
    /// When execution finished.
    pub executed_at: DateTime<Utc>,
    /// Records disposed of.
    pub disposed: u64,
    /// Skipped: covered by a hold at execution.
    pub skipped_held: u64,
    /// Skipped: their date moved since planning (or they are no longer scheduled).
    pub skipped_moved: u64,
    /// Skipped: no longer in the table (disposed of by another manifest).
    pub skipped_gone: u64,
    /// Disposed of, by category.
    pub by_category: BTreeMap<String, u64>,
    /// Disposed of, by governing obligation (the legal basis).
    pub by_rule: BTreeMap<String, u64>,
    /// The records table version before and after the deletes.
    pub records_version_before: u64,
    /// After.
    pub records_version_after: u64,
    /// Parquet files physically removed by the vacuum.
    pub files_removed: Vec<String>,
}

impl Certificate {
    /// The certificate for people, in Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# Certificate of destruction\n\n\
             | | |\n| --- | --- |\n\
             | manifest | `{}` |\n| manifest SHA-256 | `{}` |\n\
             | planned by | {} |\n| approved by | {} |\n| executed by | {} |\n\
             | executed at | {} |\n| records disposed of | {} |\n\
             | skipped (held / date moved / gone) | {} / {} / {} |\n\
             | records table version | {} → {} |\n| Parquet files removed | {} |\n\n\
             ## By category\n\n| category | records |\n| --- | ---: |\n",
            self.manifest_id,
            self.manifest_hash,
            self.planned_by,
            self.approved_by,
            self.executed_by,
            self.executed_at.to_rfc3339(),
            self.disposed,
            self.skipped_held,
            self.skipped_moved,
            self.skipped_gone,
            self.records_version_before,
            self.records_version_after,
            self.files_removed.len(),
        );
        for (k, n) in &self.by_category {
            s.push_str(&format!("| {k} | {n} |\n"));
        }
        s.push_str("\n## By legal basis (governing obligation)\n\n| obligation | records |\n| --- | ---: |\n");
        for (k, n) in &self.by_rule {
            s.push_str(&format!("| {k} | {n} |\n"));
        }
        s
    }
}

/// Where the mail system learns which messages to delete (a Kafka topic in `retain`).
#[async_trait::async_trait]
pub trait CommandSink: Send + Sync {
    /// Publishes one disposal command per entry; returns when all are acknowledged.
    async fn publish(&self, manifest_id: &str, entries: &[ManifestEntry]) -> Result<()>;
}

/// What an execution did (or, in a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Execution {
    /// Whether anything was changed.
    pub dry_run: bool,
    /// Records that are (or would be) disposed of.
    pub disposed: Vec<ManifestEntry>,
    /// Counts of skipped records: held, moved, gone.
    pub skipped_held: u64,
    /// Moved.
    pub skipped_moved: u64,
    /// Gone.
    pub skipped_gone: u64,
    /// The certificate (not in a dry run).
    pub certificate: Option<Certificate>,
}

/// Plans, approves and executes disposals over one lake. Dry run unless
/// [`for_real`](Self::for_real) is called.
pub struct Disposal<'a> {
    records: &'a mut RecordsTable,
    holds: &'a mut HoldsTable,
    manifests: &'a mut ManifestsTable,
    disposals: &'a mut DisposalsTable,
    today: NaiveDate,
    dry_run: bool,
    grace: chrono::Duration,
}

impl<'a> Disposal<'a> {
    /// A disposal over these tables on `today` (the injected clock), dry run, 7 days' grace
    /// before the vacuum removes files.
    pub fn new(
        records: &'a mut RecordsTable,
        holds: &'a mut HoldsTable,
        manifests: &'a mut ManifestsTable,
        disposals: &'a mut DisposalsTable,
        today: NaiveDate,
    ) -> Self {
        Disposal {
            records,
            holds,
            manifests,
            disposals,
            today,
            dry_run: true,
            grace: chrono::Duration::days(7),
        }
    }

    /// Really delete (the default is a dry run).
    pub fn for_real(mut self) -> Self {
        self.dry_run = false;
        self
    }

    /// How long removed files stay on storage before the vacuum deletes them (0: at once).
    pub fn with_grace(mut self, grace: chrono::Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Selects what is due as of `as_of` (never after today) and not held, and records the
    /// manifest (`None` when nothing is due: no manifest is written).
    pub async fn plan(
        &mut self,
        as_of: NaiveDate,
        planned_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Manifest>> {
        if planned_by.trim().is_empty() {
            return Err(Error::Refused {
                reason: "a plan needs who plans it".to_owned(),
            });
        }
        let cut = cutoff(as_of, self.today);
        self.records.refresh().await.map_err(lake)?;
        let (active, set) = self.holds.active().await?;
        let query = format!(
            "SELECT * FROM records WHERE retention_status = 'scheduled' AND retain_until <= DATE '{cut}'"
        );
        let batches = query_records(self.records, &query).await?;
        let mut entries = Vec::new();
        for b in &batches {
            let due = set.due(b, cut)?;
            entries.extend(entries_of(b, |i| due.value(i))?);
        }
        if entries.is_empty() {
            return Ok(None);
        }
        entries.sort_by(|a, b| a.record_key.cmp(&b.record_key));
        let (by_category, by_rule) = counts(&entries);
        let manifest = Manifest {
            id: format!("D-{}-{}", now.format("%Y%m%d"), crate::holds::uuid_tail()),
            as_of,
            cutoff: cut,
            planned_by: planned_by.trim().to_owned(),
            planned_at: crate::holds::truncate(now),
            records_version: self.records.version(),
            holds: active.iter().map(|h| h.id.clone()).collect(),
            query,
            entries,
            by_category,
            by_rule,
        };
        self.manifests.write(&manifest, 0, None, None, now).await?;
        Ok(Some(manifest))
    }

    /// Where manifest `id` stands, if it exists.
    pub async fn status(&mut self, id: &str) -> Result<Option<ManifestStatus>> {
        Ok(self.manifests.get(id).await?.map(|s| s.status))
    }

    /// Approves manifest `id`: the approver must not be the planner; the content must be what
    /// was planned.
    pub async fn approve(
        &mut self,
        id: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<ManifestState> {
        let refused = |reason: String| Error::Refused { reason };
        let mut state = self
            .manifests
            .get(id)
            .await?
            .ok_or_else(|| refused(format!("no manifest {id}")))?;
        if state.status != ManifestStatus::Planned {
            return Err(refused(
                format!("manifest {id} is already {:?}", state.status).to_lowercase(),
            ));
        }
        if by.trim().is_empty() || by.trim().eq_ignore_ascii_case(&state.manifest.planned_by) {
            return Err(refused(format!(
                "the approver must be someone other than the planner ({})",
                state.manifest.planned_by
            )));
        }
        self.manifests
            .write(&state.manifest, 1, Some(by.trim()), None, now)
            .await?;
        state.status = ManifestStatus::Approved;
        state.approved_by = Some(by.trim().to_owned());
        Ok(state)
    }

    /// Executes approved manifest `id` (see the module docs). Idempotent: a manifest executed
    /// already returns its certificate; a crash half-way is finished by running it again.
    pub async fn execute(
        &mut self,
        id: &str,
        executed_by: &str,
        sink: Option<&dyn CommandSink>,
        now: DateTime<Utc>,
    ) -> Result<Execution> {
        let refused = |reason: String| Error::Refused { reason };
        let state = self
            .manifests
            .get(id)
            .await?
            .ok_or_else(|| refused(format!("no manifest {id}")))?;
        if let (ManifestStatus::Executed, Some(c)) = (state.status, &state.certificate) {
            return Ok(Execution {
                dry_run: self.dry_run,
                disposed: Vec::new(),
                skipped_held: 0,
                skipped_moved: 0,
                skipped_gone: 0,
                certificate: Some(c.clone()),
            });
        }
        if state.status != ManifestStatus::Approved {
            return Err(refused(format!("manifest {id} is not approved")));
        }
        let approved_by = state.approved_by.clone().unwrap_or_default();
        let m = &state.manifest;
        let cut = cutoff(m.as_of, self.today);
        let planned: HashMap<&str, &ManifestEntry> = m
            .entries
            .iter()
            .map(|e| (e.record_key.as_str(), e))
            .collect();
        let mut attempts = 0;
        loop {
            attempts += 1;
            // Fence first, then holds: a hold placed after this read moves the fence, and our
            // delete (which carries the fence we read) is then refused as a conflict.
            self.records.refresh().await.map_err(lake)?;
            let fence = self
                .records
                .fence_version(HOLDS_FENCE)
                .await
                .map_err(lake)?;
            let before = self.records.version();
            let (_, set) = self.holds.active().await?;
            let keys: Vec<&str> = planned.keys().copied().collect();
            let batches = read_keys(self.records, &keys).await?;
            let (mut disposed, mut held, mut moved) = (Vec::new(), 0u64, 0u64);
            let mut present = BTreeSet::new();
            for b in &batches {
                let due = set.due(b, cut)?;
                let dated = crate::coverage::dated_by(b, cut)?;
                let rows = entries_of(b, |_| true)?;
                for (i, e) in rows.into_iter().enumerate() {
                    present.insert(e.record_key.clone());
                    let same_date = planned
                        .get(e.record_key.as_str())
                        .is_some_and(|p| p.retain_until == e.retain_until);
                    if !dated[i] || !same_date {
                        moved += 1;
                    } else if !due.value(i) {
                        held += 1;
                    } else {
                        disposed.push(e);
                    }
                }
            }
            let gone: Vec<&ManifestEntry> = m
                .entries
                .iter()
                .filter(|e| !present.contains(&e.record_key))
                .collect();
            if self.dry_run {
                return Ok(Execution {
                    dry_run: true,
                    disposed,
                    skipped_held: held,
                    skipped_moved: moved,
                    skipped_gone: gone.len() as u64,
                    certificate: None,
                });
            }
            // The mail system deletes the messages themselves; commands first, so a crash
            // after the delete loses none (repeats are harmless: keyed by record).
            if let Some(sink) = sink
                && !disposed.is_empty()
            {
                sink.publish(&m.id, &disposed).await?;
                failpoint("disposal.after_commands");
            }
            let (before, after) = if disposed.is_empty() {
                // Nothing left to delete: an earlier run of this manifest may have deleted them
                // and died; its commit names the versions for the certificate.
                match delete_commit_of(self.records, &m.id, before).await? {
                    Some(v) => (v.saturating_sub(1), v),
                    None => (before, before),
                }
            } else {
                let list = disposed.iter().map(|e| lit(e.record_key.clone())).collect();
                let properties = CommitProperties::default()
                    .with_application_transactions(vec![Transaction::new(
                        HOLDS_FENCE,
                        fence.unwrap_or(0),
                    )])
                    .with_metadata([(
                        "retain".to_owned(),
                        serde_json::json!({ "appId": "retain-disposal", "manifest": m.id }),
                    )]);
                let deleted = self
                    .records
                    .delta_table()
                    .clone()
                    .delete()
                    .with_predicate(col("record_key").in_list(list, false))
                    .with_commit_properties(properties)
                    .await;
                match deleted {
                    Ok((table, _)) => (before, table.version().unwrap_or(0)),
                    Err(e) if retain_lake::is_commit_race(&e) && attempts < 5 => continue,
                    Err(e) => {
                        return Err(Error::Query {
                            doing: format!("deleting the records of manifest {}", m.id),
                            source: Box::new(e),
                        });
                    }
                }
            };
            failpoint("disposal.after_delete");
            self.records.refresh().await.map_err(lake)?;
            // Tombstones for what this manifest removed, including rows a crashed earlier
            // run deleted before writing them (gone, and not tombstoned by anyone).
            let mut tombstones: Vec<ManifestEntry> = disposed.clone();
            let gone_keys: Vec<&str> = gone.iter().map(|e| e.record_key.as_str()).collect();
            let already = self.disposals.tombstoned(&gone_keys).await?;
            let mut skipped_gone = 0;
            for e in gone {
                match already.get(&e.record_key) {
                    // Ours, from an earlier run that died after its tombstones.
                    Some(by) if *by == m.id => {}
                    Some(_) => skipped_gone += 1,
                    None => tombstones.push(e.clone()),
                }
            }
            self.disposals.write(&m.id, &tombstones, now).await?;
            failpoint("disposal.after_tombstones");
            // What this manifest disposed of, over every run of it (a re-run after a crash
            // counts what the first run tombstoned too).
            let tombstones = self.disposals.of_manifest(&m.id, &planned).await?;
            let (table, metrics) = self
                .records
                .delta_table()
                .clone()
                .vacuum()
                .with_retention_period(self.grace)
                .with_enforce_retention_duration(false)
                .with_dry_run(false)
                .await
                .map_err(|e| Error::Query {
                    doing: "vacuuming the records table".to_owned(),
                    source: Box::new(e),
                })?;
            drop(table);
            let (by_category, by_rule) = counts(&tombstones);
            let certificate = Certificate {
                manifest_id: m.id.clone(),
                manifest_hash: state.hash.clone(),
                planned_by: m.planned_by.clone(),
                approved_by: approved_by.clone(),
                executed_by: executed_by.to_owned(),
                executed_at: crate::holds::truncate(now),
                disposed: tombstones.len() as u64,
                skipped_held: held,
                skipped_moved: moved,
                skipped_gone,
                by_category,
                by_rule,
                records_version_before: before,
                records_version_after: after,
                files_removed: metrics.files_deleted,
            };
            self.manifests
                .write(m, 2, Some(&approved_by), Some(&certificate), now)
                .await?;
            return Ok(Execution {
                dry_run: false,
                disposed: tombstones,
                skipped_held: held,
                skipped_moved: moved,
                skipped_gone,
                certificate: Some(certificate),
            });
        }
    }
}

/// The environment variable that names a failpoint: `retain dispose execute` dies (abort, as
/// a `kill -9` would leave it) when it reaches that point. For the crash tests; unset in
/// production, where checking it costs one lookup per execution step.
pub const FAILPOINT_VAR: &str = "RETAIN_FAILPOINT";

fn failpoint(name: &str) {
    if std::env::var(FAILPOINT_VAR).is_ok_and(|v| v == name) {
        eprintln!("{FAILPOINT_VAR}={name}: aborting here");
        std::process::abort();
    }
}

fn counts(entries: &[ManifestEntry]) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut c, mut r) = (BTreeMap::new(), BTreeMap::new());
    for e in entries {
        *c.entry(e.category.clone()).or_default() += 1;
        *r.entry(e.governing.clone().unwrap_or_else(|| "(none)".to_owned()))
            .or_default() += 1;
    }
    (c, r)
}

/// How far back [`delete_commit_of`] looks: a re-run follows its crashed run closely.
const DELETE_LOOKBACK: u64 = 1_000;

/// The version of the commit that deleted manifest `id`'s records (its commit info says
/// `"retain": {"appId": "retain-disposal", "manifest": id}`), looking back from `latest`.
async fn delete_commit_of(records: &RecordsTable, id: &str, latest: u64) -> Result<Option<u64>> {
    let store = records.delta_table().log_store();
    for v in (latest.saturating_sub(DELETE_LOOKBACK)..=latest).rev() {
        let bytes = store.read_commit_entry(v).await.map_err(|e| Error::Query {
            doing: format!("reading commit {v} of the records table"),
            source: Box::new(e),
        })?;
        let Some(bytes) = bytes else { continue };
        for line in bytes.split(|&b| b == b'\n') {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let retain = action.get("commitInfo").and_then(|i| i.get("retain"));
            if retain
                .and_then(|r| r.get("manifest"))
                .and_then(|m| m.as_str())
                == Some(id)
            {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}

/// Runs `query` over `records` and returns batches in the table's own types.
async fn query_records(records: &RecordsTable, query: &str) -> Result<Vec<RecordBatch>> {
    let fail = |e: datafusion::error::DataFusionError| Error::Query {
        doing: "reading the records table".to_owned(),
        source: Box::new(e),
    };
    let ctx = crate::coverage::sql_session();
    let provider = records.delta_table().table_provider().await.map_err(fail)?;
    ctx.register_table("records", provider).map_err(fail)?;
    let batches = ctx
        .sql(query)
        .await
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    let schema = records_schema();
    batches.iter().map(|b| conform(b, &schema)).collect()
}

/// The rows of `records` with these keys.
async fn read_keys(records: &RecordsTable, keys: &[&str]) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(5_000) {
        let list = chunk
            .iter()
            .map(|k| crate::scope::quote(k))
            .collect::<Vec<_>>()
            .join(", ");
        out.extend(
            query_records(
                records,
                &format!("SELECT * FROM records WHERE record_key IN ({list})"),
            )
            .await?,
        );
    }
    Ok(out)
}

fn entries_of(b: &RecordBatch, keep: impl Fn(usize) -> bool) -> Result<Vec<ManifestEntry>> {
    let text = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| Error::Query {
                doing: format!("reading column `{name}`"),
                source: "missing or mistyped".into(),
            })
    };
    let (key, tenant, mailbox, message_id, category, governing) = (
        text("record_key")?,
        text("tenant")?,
        text("mailbox")?,
        text("message_id")?,
        text("category")?,
        text("governing")?,
    );
    let (rule, policy_version) = (text("rule")?, text("policy_version")?);
    let until = b
        .column_by_name("retain_until")
        .and_then(|c| c.as_primitive_opt::<Date32Type>())
        .ok_or_else(|| Error::Query {
            doing: "reading column `retain_until`".to_owned(),
            source: "missing or mistyped".into(),
        })?;
    let mut out = Vec::new();
    for i in 0..b.num_rows() {
        if !keep(i) {
            continue;
        }
        let Some(retain_until) = (!until.is_null(i))
            .then(|| until.value_as_date(i))
            .flatten()
        else {
            continue;
        };
        out.push(ManifestEntry {
            record_key: key.value(i).to_owned(),
            tenant: tenant.value(i).to_owned(),
            mailbox: mailbox.value(i).to_owned(),
            message_id: message_id.value(i).to_owned(),
            category: category.value(i).to_owned(),
            governing: (!governing.is_null(i)).then(|| governing.value(i).to_owned()),
            retain_until,
            rule: (!rule.is_null(i)).then(|| rule.value(i).to_owned()),
            policy_version: policy_version.value(i).to_owned(),
        });
    }
    Ok(out)
}

/// One `record_key` column.
fn key_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![text_field("record_key", false)]))
}

/// The `record_key` and `manifest_id` columns.
fn key_manifest_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text_field("record_key", false),
        text_field("manifest_id", false),
    ]))
}

fn text_field(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn time_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

/// The Arrow schema of `manifests`.
pub fn manifests_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            text_field("manifest_id", false),
            Field::new("revision", DataType::Int64, false),
            text_field("status", false),
            text_field("content", false),
            text_field("content_hash", false),
            text_field("approved_by", true),
            text_field("certificate", true),
            time_field("recorded_at"),
        ]))
    });
    Arc::clone(&SCHEMA)
}

/// The Arrow schema of `disposals` (tombstones: no PHI).
pub fn disposals_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            text_field("record_key", false),
            text_field("category", false),
            text_field("governing", true),
            Field::new("retain_until", DataType::Date32, false),
            time_field("disposed_at"),
            text_field("manifest_id", false),
        ]))
    });
    Arc::clone(&SCHEMA)
}

/// The `manifests` table.
#[derive(Debug)]
pub struct ManifestsTable {
    table: DeltaTable,
    url: String,
}

impl ManifestsTable {
    /// Opens (or creates) the table at `location`.
    pub async fn open_or_create(
        location: &str,
        storage_options: HashMap<String, String>,
    ) -> Result<Self> {
        let (table, url) = open(
            location,
            storage_options,
            MANIFESTS_TABLE,
            "Retain disposal manifests: one row per revision (docs/disposal.md)",
            &manifests_schema(),
        )
        .await?;
        Ok(ManifestsTable { table, url })
    }

    async fn write(
        &mut self,
        m: &Manifest,
        revision: i64,
        approved_by: Option<&str>,
        certificate: Option<&Certificate>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let content = serde_json::to_string(m).map_err(|e| json_error("encoding a manifest", e))?;
        let status = ["planned", "approved", "executed"][revision as usize];
        let certificate = certificate
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| json_error("encoding a certificate", e))?;
        let batch = RecordBatch::try_new(
            manifests_schema(),
            vec![
                Arc::new(StringArray::from(vec![m.id.as_str()])),
                Arc::new(Int64Array::from(vec![revision])),
                Arc::new(StringArray::from(vec![status])),
                Arc::new(StringArray::from(vec![content])),
                Arc::new(StringArray::from(vec![m.content_hash()])),
                Arc::new(StringArray::from(vec![approved_by])),
                Arc::new(StringArray::from(vec![certificate])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![now.timestamp_micros()])
                        .with_timezone("UTC"),
                ),
            ],
        )
        .map_err(|e| json_error("building a manifest row", e))?;
        // One revision of a manifest is written once: a concurrent approval or execution of
        // the same manifest carries the same txn and is refused.
        let txn = Transaction::new(format!("retain-manifest-{}", m.id), revision);
        append_batch(
            &mut self.table,
            &self.url,
            "retain-disposal",
            batch,
            vec![txn],
        )
        .await
        .map_err(|e| match e {
            retain_lake::Error::Conflict { .. } => Error::Refused {
                reason: format!("manifest {} changed concurrently; run again", m.id),
            },
            other => lake(other),
        })?;
        Ok(())
    }

    /// Manifest `id` as it stands; its content must match the hash it was planned with.
    pub async fn get(&mut self, id: &str) -> Result<Option<ManifestState>> {
        refresh(&mut self.table, &self.url).await?;
        let filter = col("manifest_id").eq(lit(id));
        let batches = read(
            &self.table,
            MANIFESTS_TABLE,
            Some(filter),
            &manifests_schema(),
        )
        .await?;
        let mut best: Option<(i64, ManifestState)> = None;
        let mut planned_hash = None;
        for b in &batches {
            let rev = b
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let content = b.column(3).as_string::<i32>();
            let hash = b.column(4).as_string::<i32>();
            let approved = b.column(5).as_string::<i32>();
            let cert = b.column(6).as_string::<i32>();
            for i in 0..b.num_rows() {
                let manifest: Manifest = serde_json::from_str(content.value(i))
                    .map_err(|e| json_error("reading a manifest", e))?;
                if manifest.content_hash() != hash.value(i) {
                    return Err(Error::Refused {
                        reason: format!(
                            "manifest {id} revision {} does not match its hash: it was altered",
                            rev.value(i)
                        ),
                    });
                }
                if rev.value(i) == 0 {
                    planned_hash = Some(hash.value(i).to_owned());
                }
                let certificate = (!cert.is_null(i))
                    .then(|| serde_json::from_str(cert.value(i)))
                    .transpose()
                    .map_err(|e| json_error("reading a certificate", e))?;
                let state = ManifestState {
                    hash: hash.value(i).to_owned(),
                    status: match rev.value(i) {
                        0 => ManifestStatus::Planned,
                        1 => ManifestStatus::Approved,
                        _ => ManifestStatus::Executed,
                    },
                    approved_by: (!approved.is_null(i)).then(|| approved.value(i).to_owned()),
                    certificate,
                    manifest,
                };
                if best.as_ref().is_none_or(|(r, _)| rev.value(i) > *r) {
                    best = Some((rev.value(i), state));
                }
            }
        }
        if let (Some((_, s)), Some(h)) = (&best, &planned_hash)
            && &s.hash != h
        {
            return Err(Error::Refused {
                reason: format!("manifest {id} changed after it was planned"),
            });
        }
        Ok(best.map(|(_, s)| s))
    }
}

/// The `disposals` table: one tombstone per disposed record.
#[derive(Debug)]
pub struct DisposalsTable {
    table: DeltaTable,
    url: String,
}

impl DisposalsTable {
    /// Opens (or creates) the table at `location`.
    pub async fn open_or_create(
        location: &str,
        storage_options: HashMap<String, String>,
    ) -> Result<Self> {
        let (table, url) = open(
            location,
            storage_options,
            DISPOSALS_TABLE,
            "Retain tombstones: one row per disposed record, no PHI (docs/disposal.md)",
            &disposals_schema(),
        )
        .await?;
        Ok(DisposalsTable { table, url })
    }

    /// Which of `keys` have a tombstone already, and of which manifest.
    async fn tombstoned(&mut self, keys: &[&str]) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if keys.is_empty() {
            return Ok(out);
        }
        refresh(&mut self.table, &self.url).await?;
        for chunk in keys.chunks(5_000) {
            let list = chunk.iter().map(|k| lit(*k)).collect();
            let filter = col("record_key").in_list(list, false);
            for b in read(
                &self.table,
                DISPOSALS_TABLE,
                Some(filter),
                &key_manifest_schema(),
            )
            .await?
            {
                let (k, m) = (
                    b.column(0).as_string::<i32>(),
                    b.column(1).as_string::<i32>(),
                );
                out.extend(
                    (0..b.num_rows()).map(|i| (k.value(i).to_owned(), m.value(i).to_owned())),
                );
            }
        }
        Ok(out)
    }

    /// The entries of `planned` that manifest `id` tombstoned.
    async fn of_manifest(
        &mut self,
        id: &str,
        planned: &HashMap<&str, &ManifestEntry>,
    ) -> Result<Vec<ManifestEntry>> {
        refresh(&mut self.table, &self.url).await?;
        let filter = col("manifest_id").eq(lit(id));
        let mut out = Vec::new();
        for b in read(&self.table, DISPOSALS_TABLE, Some(filter), &key_schema()).await? {
            let k = b.column(0).as_string::<i32>();
            out.extend(
                (0..b.num_rows()).filter_map(|i| planned.get(k.value(i)).map(|e| (*e).clone())),
            );
        }
        out.sort_by(|a, b| a.record_key.cmp(&b.record_key));
        Ok(out)
    }

    /// Writes the tombstones of manifest `id`, once (a `txn` per manifest).
    async fn write(
        &mut self,
        id: &str,
        entries: &[ManifestEntry],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let app_id = format!("retain-disposal-{id}");
        refresh(&mut self.table, &self.url).await?;
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| open_error(&self.url, e))?
            .clone();
        let written = snapshot
            .transaction_version(self.table.log_store().as_ref(), &app_id)
            .await
            .map_err(|e| open_error(&self.url, e))?;
        if written.is_some() {
            // An earlier run of this manifest wrote them.
            return Ok(());
        }
        let batch = RecordBatch::try_new(
            disposals_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    entries.iter().map(|e| e.record_key.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    entries.iter().map(|e| e.category.as_str()),
                )),
                Arc::new(StringArray::from(
                    entries
                        .iter()
                        .map(|e| e.governing.clone())
                        .collect::<Vec<_>>(),
                )),
                Arc::new(Date32Array::from_iter_values(
                    entries
                        .iter()
                        .map(|e| Date32Type::from_naive_date(e.retain_until)),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![now.timestamp_micros(); entries.len()])
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(vec![id; entries.len()])),
            ],
        )
        .map_err(|e| json_error("building tombstones", e))?;
        let txn = Transaction::new(app_id, 1);
        match append_batch(
            &mut self.table,
            &self.url,
            "retain-disposal",
            batch,
            vec![txn],
        )
        .await
        {
            Ok(_) => Ok(()),
            // Another run of the same manifest wrote them first.
            Err(retain_lake::Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(lake(e)),
        }
    }
}

fn json_error(doing: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Query {
        doing: doing.to_owned(),
        source: Box::new(e),
    }
}
