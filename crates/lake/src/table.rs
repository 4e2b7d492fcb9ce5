//! The `records` Delta table: open or create it, land batches exactly once, read back the
//! committed Kafka offsets.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::sync::Once;

use deltalake::arrow::array::{Array, AsArray, BooleanArray};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::datatypes::{Int32Type, Int64Type};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, StructField, Transaction};
use deltalake::operations::optimize::OptimizeType;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::state::DeltaTableState;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use tracing::{debug, info, instrument, warn};
use url::Url;

use crate::error::{Error, Result, is_commit_race};
use crate::schema::{RECORDS_TABLE, columns, records_delta_schema, records_schema, schema_diff};

/// How many times [`RecordsTable::land`] re-reads the offsets and retries after a concurrent
/// commit advanced the same partitions, before giving up with a retryable [`Error::Conflict`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// The Delta `txn` application id that holds one Kafka partition's committed offset:
/// `{app_id}-{partition}`. Unambiguous because partitions are non-negative decimal numbers
/// after the last `-`.
pub fn txn_app_id(app_id: &str, partition: i32) -> String {
    format!("{app_id}-{partition}")
}

/// Registers deltalake's S3 storage handlers (`s3://`, `s3a://`) once per process.
///
/// The `deltalake` 1.1 meta crate already does this from a constructor when its `s3` feature is
/// on; calling it here as well keeps S3 working however the binary is linked.
pub fn register_storage_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| deltalake::aws::register_handlers(None));
}

/// What one [`RecordsTable::land`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    /// The table version committed, or `None` when everything had already landed and nothing
    /// was committed.
    pub version: Option<u64>,
    /// Rows written by this call.
    pub rows_landed: usize,
    /// Rows skipped because the table already held their offsets (re-deliveries).
    pub rows_skipped: usize,
    /// Commit attempts made (1 unless a concurrent writer advanced the same partitions first).
    pub attempts: u32,
    /// Parquet files written by the commit.
    pub files_written: usize,
    /// Their total size in bytes (what the flush policy's target file size is measured by).
    pub bytes_written: u64,
    /// The committed next offset of every requested partition after the call.
    pub offsets: BTreeMap<i32, i64>,
}

/// What one [`RecordsTable::optimize`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Optimized {
    /// The table version before.
    pub version_before: u64,
    /// The version after (the same when there was nothing to rewrite).
    pub version_after: u64,
    /// Files taken out of the table (still on storage until a vacuum).
    pub files_removed: u64,
    /// Files written.
    pub files_added: u64,
    /// Bytes of the files taken out.
    pub bytes_removed: u64,
    /// Bytes of the files written.
    pub bytes_added: u64,
}

/// A further `txn` committed with a landing: `{app_id}-{partition}` advanced to `next_offset`
/// (never moved backwards). It filters no rows; it records a second position in the same commit,
/// e.g. the offset of the topic the lander consumes when the rows' lineage names another topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMark<'a> {
    /// The application id (without the partition suffix); not the landing's own app id.
    pub app_id: &'a str,
    /// The partition.
    pub partition: i32,
    /// The next offset to read in that partition.
    pub next_offset: i64,
}

/// The `records` table at one location, with exactly-once landing of Kafka-sourced batches.
///
/// Each landing is one Delta commit holding the data files *and* one `txn` action per Kafka
/// partition (`appId = {app_id}-{partition}`, `version` = the partition's next offset to read).
/// See `docs/tables.md` for the protocol.
pub struct RecordsTable {
    table: DeltaTable,
    url: String,
    max_attempts: u32,
}

impl std::fmt::Debug for RecordsTable {
    // Storage options (which may hold keys) are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsTable")
            .field("url", &self.url)
            .field("version", &self.table.version())
            .finish_non_exhaustive()
    }
}

/// A landing decided against one table snapshot: what to write and which offsets to commit.
struct Plan {
    kept: RecordBatch,
    skipped: usize,
    txns: Vec<Transaction>,
    offsets: BTreeMap<i32, i64>,
}

/// The only `records` columns Delta keeps min/max statistics for in its log: what disposal and
/// date queries prune files by, and nothing that is PHI. Statistics stay in the log after the
/// rows and files they describe are disposed of, so subjects, addresses and patient references
/// must never be among them.
pub const RECORDS_STATS_COLUMNS: &str =
    "retain_until,retention_status,category,created_date,landed_at,source_partition,source_offset";

/// Opens the Delta table at `location` (a local path, `file://`, or `s3://` URL), creating it
/// as `name` with `columns` (and a local directory) when there is none; a concurrent creator
/// wins the race harmlessly. Returns the table and its URL with any credentials removed.
pub async fn open_or_create_table(
    location: &str,
    storage_options: HashMap<String, String>,
    name: &str,
    comment: &str,
    columns: impl IntoIterator<Item = StructField>,
    configuration: &[(&str, &str)],
) -> Result<(DeltaTable, String)> {
    register_storage_handlers();
    let url = deltalake::ensure_table_uri(location).map_err(|source| Error::Location {
        location: redact_location(location),
        source: Box::new(source),
    })?;
    let shown = redact(&url);
    let open_err = |source| Error::Open {
        url: shown.clone(),
        source: Box::new(source),
    };
    let mut table = DeltaTableBuilder::from_url(url)
        .and_then(|b| b.with_storage_options(storage_options).build())
        .map_err(open_err)?;
    if table
        .verify_deltatable_existence()
        .await
        .map_err(open_err)?
    {
        table.load().await.map_err(open_err)?;
    } else {
        let created = table
            .create()
            .with_table_name(name)
            .with_comment(comment)
            .with_columns(columns)
            .with_configuration(configuration.iter().map(|(k, v)| (*k, Some(*v))))
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(t) => {
                info!(table = %shown, name, "created a table");
                table = t;
            }
            // Another process created it between the check and our commit: use theirs.
            Err(e) if table.verify_deltatable_existence().await.unwrap_or(false) => {
                debug!(table = %shown, error = %e, "lost the race to create the table");
                table.load().await.map_err(open_err)?;
            }
            Err(e) => return Err(open_err(e)),
        }
    }
    Ok((table, shown))
}

/// The committed next offset of `{app_id}-{partition}` (its `txn` action) in `state` of
/// `table` (at `url`, for errors); `None` when nothing was committed under that id.
pub async fn committed_offset_in(
    table: &DeltaTable,
    state: &DeltaTableState,
    url: &str,
    app_id: &str,
    partition: i32,
) -> Result<Option<i64>> {
    state
        .transaction_version(table.log_store().as_ref(), txn_app_id(app_id, partition))
        .await
        .map_err(|source| Error::ReadOffset {
            url: url.to_owned(),
            version: state.version(),
            app_id: app_id.to_owned(),
            partition,
            source: Box::new(source),
        })
}

/// Appends `batch` to `table` in one commit with `txns` (application transactions: a
/// concurrent commit carrying any of the same app ids makes this one fail with
/// [`Error::Conflict`], which the caller retries after re-reading). `app_id` names the writer
/// in the commit's metadata and in errors. On success the table is at the committed version.
pub async fn append_batch(
    table: &mut DeltaTable,
    url: &str,
    app_id: &str,
    batch: RecordBatch,
    txns: Vec<Transaction>,
) -> Result<u64> {
    let state = table
        .snapshot()
        .map_err(|source| Error::Open {
            url: url.to_owned(),
            source: Box::new(source),
        })?
        .clone();
    let read_version = state.version();
    let metadata = serde_json::json!({ "appId": app_id });
    write_and_commit(table, &state, batch, txns, metadata)
        .await
        .map(|c| c.version)
        .map_err(|e| e.into_error(url, read_version, app_id, 1))
}

impl RecordsTable {
    /// Opens the `records` table at `location` (a local path, `file://`, or `s3://` URL),
    /// creating it (and a local directory) when there is none. `storage_options` are passed to
    /// deltalake's object store (e.g. `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`).
    #[instrument(skip_all, fields(location = %redact_location(location)))]
    pub async fn open_or_create(
        location: &str,
        storage_options: HashMap<String, String>,
    ) -> Result<Self> {
        let (table, shown) = open_or_create_table(
            location,
            storage_options,
            RECORDS_TABLE,
            "Retain records: one row per message copy, classified and scheduled",
            records_delta_schema().fields().cloned(),
            &[("delta.dataSkippingStatsColumns", RECORDS_STATS_COLUMNS)],
        )
        .await?;
        let this = RecordsTable {
            table,
            url: shown,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        };
        this.check_schema()?;
        Ok(this)
    }

    /// Sets how many commit attempts [`land`](Self::land) makes against concurrent writers.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The table URL (credentials, if any were in it, removed).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The table version last read or committed (a table is created at version 0).
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or_default()
    }

    /// The underlying Delta table at its last read state (e.g. to register it with DataFusion).
    pub fn delta_table(&self) -> &DeltaTable {
        &self.table
    }

    /// Reads the newest table version from storage; returns it.
    #[instrument(skip_all, fields(table = %self.url))]
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

    /// The committed next offset of one partition for `app_id` in the newest table version:
    /// where a consumer assigned that partition must seek. `None` when nothing was landed.
    pub async fn committed_offset(&mut self, app_id: &str, partition: i32) -> Result<Option<i64>> {
        self.refresh().await?;
        let state = self.state()?.clone();
        self.read_offset(&state, app_id, partition).await
    }

    /// The committed next offsets of `partitions` for `app_id` in the newest table version
    /// (partitions with nothing landed are absent). Call it on partition assignment and seek to
    /// the result.
    ///
    /// The partitions are the caller's (its assignment): deltalake 1.1 looks app transactions
    /// up by id and has no public way to list them all.
    #[instrument(skip_all, fields(table = %self.url, app_id = app_id))]
    pub async fn committed_offsets(
        &mut self,
        app_id: &str,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<BTreeMap<i32, i64>> {
        self.refresh().await?;
        let state = self.state()?.clone();
        let mut out = BTreeMap::new();
        for p in partitions {
            if let Some(v) = self.read_offset(&state, app_id, p).await? {
                out.insert(p, v);
            }
        }
        Ok(out)
    }

    /// Lands a `records` batch read from Kafka exactly once.
    ///
    /// `offsets` names, for every partition the batch's rows come from, the next offset to read
    /// after this batch (the last row's offset + 1, or further when later messages were
    /// dead-lettered). In one Delta commit, the rows not yet in the table are appended and each
    /// partition's `txn` (`{app_id}-{partition}`) is advanced to its next offset. Rows whose
    /// offset is below the partition's committed next offset are skipped, so re-delivered
    /// messages never land twice; a batch that is entirely old commits nothing.
    ///
    /// The skip decision and the commit are one optimistic transaction: if another writer
    /// commits a `txn` for any of the same partitions after the snapshot this landing read,
    /// deltalake refuses the commit (`ConcurrentTransaction`) and the landing re-reads the
    /// offsets and tries again (up to [`DEFAULT_MAX_ATTEMPTS`]).
    pub async fn land(
        &mut self,
        batch: RecordBatch,
        app_id: &str,
        offsets: &[(i32, i64)],
    ) -> Result<Landed> {
        self.land_with_marks(batch, app_id, offsets, &[]).await
    }

    /// Commits `{app_id}` = `version` as a `txn` action alone (no rows), unless the table
    /// already has it at `version` or later; returns the table version that has it.
    ///
    /// A fence: a writer that read the table before this commit and commits the same app id
    /// after it is refused as a conflict and must re-read. Holds use it so that a disposal
    /// planned before a hold existed cannot delete what the hold covers (docs/holds.md).
    pub async fn fence(&mut self, app_id: &str, version: i64) -> Result<u64> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.refresh().await?;
            let state = self.state()?.clone();
            let current = state
                .transaction_version(self.table.log_store().as_ref(), app_id)
                .await
                .map_err(|source| Error::ReadOffset {
                    url: self.url.clone(),
                    version: state.version(),
                    app_id: app_id.to_owned(),
                    partition: -1,
                    source: Box::new(source),
                })?;
            if current.is_some_and(|c| c >= version) {
                return Ok(state.version());
            }
            let empty = RecordBatch::new_empty(records_schema());
            let txn = vec![Transaction::new(app_id, version)];
            match append_batch(&mut self.table, &self.url, app_id, empty, txn).await {
                Ok(v) => return Ok(v),
                Err(Error::Conflict { .. }) if attempts < self.max_attempts => {
                    warn!(
                        app_id,
                        attempts, "a concurrent commit carried the same fence; re-reading"
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Compacts the table's files into files of about `target_size` bytes, and with `cluster`
    /// rewrites them ordered by `retain_until` (a Delta OPTIMIZE ZORDER on that one column), so
    /// each file covers a narrow range of dates and a disposal query reads only the files that
    /// can hold due records. Rows are neither added nor removed; the old files stay on storage
    /// until a vacuum. A concurrent landing is not blocked (appends do not conflict with it);
    /// a concurrent delete makes one of the two commits retry or fail.
    #[instrument(skip_all, fields(table = %self.url, cluster))]
    pub async fn optimize(&mut self, target_size: u64, cluster: bool) -> Result<Optimized> {
        self.refresh().await?;
        let before = self.version();
        let kind = if cluster {
            OptimizeType::ZOrder(vec![columns::RETAIN_UNTIL.to_owned()])
        } else {
            OptimizeType::Compact
        };
        let properties = CommitProperties::default().with_metadata([(
            "retain".to_owned(),
            serde_json::json!({ "appId": "retain-optimize", "cluster": cluster }),
        )]);
        let (table, metrics) = self
            .table
            .clone()
            .optimize()
            .with_type(kind)
            .with_target_size(NonZeroU64::new(target_size.max(1)).unwrap_or(NonZeroU64::MIN))
            .with_commit_properties(properties)
            .await
            .map_err(|source| Error::Commit {
                url: self.url.clone(),
                version: before,
                source: Box::new(source),
            })?;
        self.table = table;
        Ok(Optimized {
            version_before: before,
            version_after: self.version(),
            files_removed: metrics.num_files_removed,
            files_added: metrics.num_files_added,
            bytes_removed: metrics.files_removed.total_size as u64,
            bytes_added: metrics.files_added.total_size as u64,
        })
    }

    /// The version of `{app_id}` (a `txn` action without a partition suffix), if any.
    pub async fn fence_version(&mut self, app_id: &str) -> Result<Option<i64>> {
        let state = self.state()?.clone();
        state
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(|source| Error::ReadOffset {
                url: self.url.clone(),
                version: state.version(),
                app_id: app_id.to_owned(),
                partition: -1,
                source: Box::new(source),
            })
    }

    /// [`land`](Self::land), and in the same Delta commit advance each of `marks` (a `txn` per
    /// mark; marks already at or past their offset are left alone).
    ///
    /// Rows are still filtered by `app_id` and `offsets` against their lineage columns only. A
    /// landing whose rows all landed before still commits when a mark moves forward. A
    /// concurrent commit carrying any of the same `txn` ids is a conflict, retried as in
    /// [`land`](Self::land).
    #[instrument(
        skip_all,
        fields(table = %self.url, app_id = app_id, rows = batch.num_rows(), partitions = offsets.len(), marks = marks.len())
    )]
    pub async fn land_with_marks(
        &mut self,
        batch: RecordBatch,
        app_id: &str,
        offsets: &[(i32, i64)],
        marks: &[TxnMark<'_>],
    ) -> Result<Landed> {
        validate_request(&batch, app_id, offsets)?;
        validate_marks(app_id, marks)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.refresh().await?;
            let state = self.state()?.clone();
            let read_version = state.version();
            let plan = self.plan(&state, &batch, app_id, offsets, marks).await?;
            if plan.txns.is_empty() {
                debug!(
                    version = read_version,
                    skipped = plan.skipped,
                    "everything already landed"
                );
                return Ok(Landed {
                    version: None,
                    rows_landed: 0,
                    rows_skipped: plan.skipped,
                    attempts,
                    files_written: 0,
                    bytes_written: 0,
                    offsets: plan.offsets,
                });
            }
            let rows = plan.kept.num_rows();
            match self.commit(&state, app_id, plan.kept, plan.txns).await {
                Ok(Committed {
                    version,
                    files,
                    bytes,
                }) => {
                    info!(
                        version,
                        rows,
                        files,
                        bytes,
                        skipped = plan.skipped,
                        attempts,
                        "landed"
                    );
                    return Ok(Landed {
                        version: Some(version),
                        rows_landed: rows,
                        rows_skipped: plan.skipped,
                        attempts,
                        files_written: files,
                        bytes_written: bytes,
                        offsets: plan.offsets,
                    });
                }
                Err(e) if e.is_race() && attempts < self.max_attempts => {
                    warn!(
                        version = read_version,
                        attempts,
                        error = %e,
                        "a concurrent commit advanced the same offsets; re-reading"
                    );
                }
                Err(e) => return Err(e.into_error(&self.url, read_version, app_id, attempts)),
            }
        }
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
        match schema_diff(&records_schema(), &actual) {
            None => Ok(()),
            Some(details) => Err(Error::SchemaMismatch {
                url: self.url.clone(),
                version: state.version(),
                table: RECORDS_TABLE,
                details,
            }),
        }
    }

    async fn read_offset(
        &self,
        state: &DeltaTableState,
        app_id: &str,
        partition: i32,
    ) -> Result<Option<i64>> {
        committed_offset_in(&self.table, state, &self.url, app_id, partition).await
    }

    /// Decides, against `state`, which rows are new and which `txn` actions to commit.
    async fn plan(
        &self,
        state: &DeltaTableState,
        batch: &RecordBatch,
        app_id: &str,
        offsets: &[(i32, i64)],
        marks: &[TxnMark<'_>],
    ) -> Result<Plan> {
        let mut committed = HashMap::with_capacity(offsets.len());
        let mut txns = Vec::new();
        let mut after = BTreeMap::new();
        for &(partition, next) in offsets {
            let current = self.read_offset(state, app_id, partition).await?;
            committed.insert(partition, current);
            match current {
                Some(c) if c >= next => {
                    after.insert(partition, c);
                }
                _ => {
                    txns.push(Transaction::new(txn_app_id(app_id, partition), next));
                    after.insert(partition, next);
                }
            }
        }
        for mark in marks {
            let current = self.read_offset(state, mark.app_id, mark.partition).await?;
            if current.is_none_or(|c| c < mark.next_offset) {
                txns.push(Transaction::new(
                    txn_app_id(mark.app_id, mark.partition),
                    mark.next_offset,
                ));
            }
        }
        let (parts, offs) = lineage_columns(batch)?;
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                let from = committed.get(&parts.value(i)).copied().flatten();
                Some(from.is_none_or(|c| offs.value(i) >= c))
            })
            .collect();
        let kept = filter_record_batch(batch, &keep).map_err(|source| Error::Arrow {
            table: RECORDS_TABLE,
            source,
        })?;
        Ok(Plan {
            skipped: batch.num_rows() - kept.num_rows(),
            kept,
            txns,
            offsets: after,
        })
    }

    /// Writes `rows` as Parquet files and commits them with `txns` on top of `state`; on
    /// success the table's state becomes the committed version.
    async fn commit(
        &mut self,
        state: &DeltaTableState,
        app_id: &str,
        rows: RecordBatch,
        txns: Vec<Transaction>,
    ) -> std::result::Result<Committed, CommitError> {
        let metadata = serde_json::json!({ "appId": app_id });
        write_and_commit(&mut self.table, state, rows, txns, metadata).await
    }
}

/// Writes `rows` (if any) as Parquet files and commits them with `txns` on top of `state`, with
/// `metadata` (plus the row and file counts) under the key `retain` in the commit info; on
/// success the table's state becomes the committed version. The one commit path of every
/// table this crate writes.
pub(crate) async fn write_and_commit(
    table: &mut DeltaTable,
    state: &DeltaTableState,
    rows: RecordBatch,
    txns: Vec<Transaction>,
    metadata: serde_json::Value,
) -> std::result::Result<Committed, CommitError> {
    let n = rows.num_rows();
    let mut actions = Vec::new();
    if n > 0 {
        let mut writer = RecordBatchWriter::for_table(table).map_err(CommitError::Files)?;
        writer.write(rows).await.map_err(CommitError::Files)?;
        let adds = writer.flush().await.map_err(CommitError::Files)?;
        actions.extend(adds.into_iter().map(Action::Add));
    }
    let files = actions.len();
    let bytes = actions
        .iter()
        .map(|a| match a {
            Action::Add(add) => u64::try_from(add.size).unwrap_or(0),
            _ => 0,
        })
        .sum();
    let mut metadata = match metadata {
        serde_json::Value::Object(m) => m,
        other => serde_json::Map::from_iter([("value".to_owned(), other)]),
    };
    metadata.insert("rows".to_owned(), n.into());
    metadata.insert("files".to_owned(), files.into());
    let properties = CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata([("retain".to_owned(), serde_json::Value::Object(metadata))]);
    let finalized = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(
            Some(state as &dyn TableReference),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .map_err(CommitError::Delta)?;
    let version = finalized.version();
    table.state = Some(finalized.snapshot());
    Ok(Committed {
        version,
        files,
        bytes,
    })
}

/// What a successful commit wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Committed {
    pub(crate) version: u64,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
}

/// Why a commit attempt failed: writing the files, or the log commit itself.
#[derive(Debug)]
pub(crate) enum CommitError {
    Files(DeltaTableError),
    Delta(DeltaTableError),
}

impl CommitError {
    /// Whether another writer's commit won (re-read and try again).
    pub(crate) fn is_race(&self) -> bool {
        matches!(self, CommitError::Delta(e) if is_commit_race(e))
    }

    /// The crate error for a commit to `url` that read `version`, after `attempts`.
    pub(crate) fn into_error(self, url: &str, version: u64, app_id: &str, attempts: u32) -> Error {
        match self {
            CommitError::Delta(source) if is_commit_race(&source) => Error::Conflict {
                url: url.to_owned(),
                version,
                app_id: app_id.to_owned(),
                attempts,
                source: Box::new(source),
            },
            CommitError::Delta(source) => Error::Commit {
                url: url.to_owned(),
                version,
                source: Box::new(source),
            },
            CommitError::Files(source) => Error::WriteFiles {
                url: url.to_owned(),
                version,
                source: Box::new(source),
            },
        }
    }
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Files(e) | CommitError::Delta(e) => e.fmt(f),
        }
    }
}

/// The `source_partition` and `source_offset` columns of a `records` batch.
fn lineage_columns(
    batch: &RecordBatch,
) -> Result<(
    &deltalake::arrow::array::PrimitiveArray<Int32Type>,
    &deltalake::arrow::array::PrimitiveArray<Int64Type>,
)> {
    let missing = |column: &str| Error::BatchSchema {
        table: RECORDS_TABLE,
        details: format!("column `{column}` is missing or mistyped"),
    };
    let parts = batch
        .column_by_name(columns::SOURCE_PARTITION)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
        .ok_or_else(|| missing(columns::SOURCE_PARTITION))?;
    let offs = batch
        .column_by_name(columns::SOURCE_OFFSET)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| missing(columns::SOURCE_OFFSET))?;
    Ok((parts, offs))
}

/// Checks the batch's schema and that every row's partition and offset are covered by
/// `offsets` (before any I/O).
fn validate_request(batch: &RecordBatch, app_id: &str, offsets: &[(i32, i64)]) -> Result<()> {
    let request = |reason: String| Error::Request {
        app_id: app_id.to_owned(),
        reason,
    };
    if app_id.is_empty() {
        return Err(request("the app id is empty".to_owned()));
    }
    if let Some(details) = schema_diff(&records_schema(), &batch.schema()) {
        return Err(Error::BatchSchema {
            table: RECORDS_TABLE,
            details,
        });
    }
    let mut next_of = HashMap::with_capacity(offsets.len());
    for &(partition, next) in offsets {
        if partition < 0 || next < 0 {
            return Err(request(format!(
                "partition {partition} next offset {next}: partitions and offsets must not be negative"
            )));
        }
        if next_of.insert(partition, next).is_some() {
            return Err(request(format!("partition {partition} is listed twice")));
        }
    }
    let (parts, offs) = lineage_columns(batch)?;
    if parts.null_count() > 0 || offs.null_count() > 0 {
        return Err(request(
            "a row has no source partition or offset".to_owned(),
        ));
    }
    for i in 0..batch.num_rows() {
        let (p, o) = (parts.value(i), offs.value(i));
        match next_of.get(&p) {
            None => {
                return Err(request(format!(
                    "row {i} comes from partition {p} (offset {o}), which has no next offset"
                )));
            }
            Some(&next) if o >= next => {
                return Err(request(format!(
                    "row {i} at partition {p} offset {o} is not below the partition's next offset {next}"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks that marks name other app ids than the landing's, once per partition, with
/// non-negative partitions and offsets.
fn validate_marks(app_id: &str, marks: &[TxnMark<'_>]) -> Result<()> {
    let request = |reason: String| Error::Request {
        app_id: app_id.to_owned(),
        reason,
    };
    let mut seen = std::collections::HashSet::with_capacity(marks.len());
    for m in marks {
        if m.app_id.is_empty() || m.app_id == app_id {
            return Err(request(format!(
                "mark for partition {} must name another, non-empty app id",
                m.partition
            )));
        }
        if m.partition < 0 || m.next_offset < 0 {
            return Err(request(format!(
                "mark `{}` partition {} next offset {}: partitions and offsets must not be negative",
                m.app_id, m.partition, m.next_offset
            )));
        }
        if !seen.insert((m.app_id, m.partition)) {
            return Err(request(format!(
                "mark `{}` partition {} is listed twice",
                m.app_id, m.partition
            )));
        }
    }
    Ok(())
}

/// The URL without user name or password.
pub(crate) fn redact(url: &Url) -> String {
    let mut u = url.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("");
        let _ = u.set_password(None);
    }
    u.to_string()
}

/// A location for messages: URLs lose their credentials, paths are kept.
pub(crate) fn redact_location(location: &str) -> String {
    match Url::parse(location) {
        Ok(u) if u.scheme().len() > 1 => redact(&u),
        _ => location.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordBatchBuilder;

    #[test]
    fn txn_ids_name_app_and_partition() {
        assert_eq!(txn_app_id("retain-scheduler", 3), "retain-scheduler-3");
    }

    #[test]
    fn credentials_never_appear_in_locations() {
        assert_eq!(
            redact_location("s3://key:secret@bucket/records"),
            "s3://bucket/records"
        );
        assert_eq!(redact_location("/tmp/x/records"), "/tmp/x/records");
    }

    #[test]
    fn requests_are_checked_before_io() {
        let empty = RecordBatchBuilder::new()
            .finish(chrono::Utc::now())
            .unwrap();
        let err = validate_request(&empty, "", &[]).unwrap_err();
        assert!(matches!(err, Error::Request { .. }), "{err}");
        let err = validate_request(&empty, "app", &[(0, 1), (0, 2)]).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let err = validate_request(&empty, "app", &[(-1, 1)]).unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
        validate_request(&empty, "app", &[(0, 0)]).unwrap();
    }

    /// What deltalake 1.1 does when two landers race: the second commit, made on a snapshot
    /// read before the first commit, carries a `txn` for the same app id, and the conflict
    /// checker refuses it with `ConcurrentTransaction` (it does not silently append).
    #[tokio::test]
    async fn a_commit_on_a_stale_snapshot_with_the_same_txn_is_refused() {
        use deltalake::kernel::transaction::{CommitConflictError, TransactionError};

        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("records");
        let location = location.to_str().unwrap();
        let mut a = RecordsTable::open_or_create(location, HashMap::new())
            .await
            .unwrap();
        let mut b = RecordsTable::open_or_create(location, HashMap::new())
            .await
            .unwrap();
        let d = crate::batch::fixtures::decision();
        let records: Vec<_> = (0..3).map(crate::batch::fixtures::record).collect();
        let mut builder = RecordBatchBuilder::new();
        for r in &records {
            builder.push_record(r, &d, None, None).unwrap();
        }
        let batch = builder.finish(chrono::Utc::now()).unwrap();

        // Lander `a` reads the table, then `b` lands the same offsets first.
        let stale = a.state().unwrap().clone();
        let landed = b.land(batch.clone(), "app", &[(1, 3)]).await.unwrap();
        assert_eq!(landed.rows_landed, 3);

        // `a` commits what it planned on the stale snapshot: refused.
        let err = a
            .commit(
                &stale,
                "app",
                batch.clone(),
                vec![Transaction::new("app-1", 3)],
            )
            .await
            .expect_err("the stale commit must fail");
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
        assert!(is_commit_race(&e));

        // A landing re-reads and skips everything; the table holds one copy.
        let again = a.land(batch, "app", &[(1, 3)]).await.unwrap();
        assert_eq!(
            (again.version, again.rows_landed, again.rows_skipped),
            (None, 0, 3)
        );
        assert_eq!(a.committed_offset("app", 1).await.unwrap(), Some(3));
    }

    /// A concurrent commit for *other* partitions is not a conflict: deltalake rebases the
    /// blind append and commits it on top.
    #[tokio::test]
    async fn a_commit_on_a_stale_snapshot_for_other_partitions_goes_through() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("records");
        let location = location.to_str().unwrap();
        let mut a = RecordsTable::open_or_create(location, HashMap::new())
            .await
            .unwrap();
        let mut b = RecordsTable::open_or_create(location, HashMap::new())
            .await
            .unwrap();
        let empty = RecordBatchBuilder::new()
            .finish(chrono::Utc::now())
            .unwrap();
        let stale = a.state().unwrap().clone();
        b.land(empty.clone(), "app", &[(0, 5)]).await.unwrap();
        let version = a
            .commit(&stale, "app", empty, vec![Transaction::new("app-1", 7)])
            .await
            .expect("no conflict across partitions");
        assert_eq!(version.version, 2);
        assert_eq!(
            a.committed_offsets("app", [0, 1, 2]).await.unwrap(),
            BTreeMap::from([(0, 5), (1, 7)])
        );
    }
}
