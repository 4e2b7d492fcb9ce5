//! Reading one Delta snapshot as a plain DataFusion Parquet scan: the snapshot's active files,
//! pruned by the per-file statistics in the Delta log, read by DataFusion's own `ParquetSource`
//! with the session's Parquet options and its footer cache.
//!
//! deltalake's table provider (built without a session) turns Parquet filter pushdown on, so
//! every filter also runs in the decoder as row selections, and puts every file in one scan
//! partition; on Retain's small, unpartitioned tables that made queries about twice as slow
//! (docs/PERFORMANCE.md). A table this module cannot read exactly as Delta defines it (partition
//! columns, column mapping, deletion vectors, absolute file paths, a reader feature not listed in
//! [`READER_FEATURES`]) is refused with the reason, and the catalog reads it through deltalake.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{TimeZone as _, Utc};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat as _;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result as DfResult;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::parquet::arrow::parquet_to_arrow_schema;
use datafusion::parquet::file::metadata::PageIndexPolicy;
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_optimizer::pruning::{PruningPredicateBuilder, PruningStatistics};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use futures::StreamExt as _;
use retain_lake::deltalake::{DeltaTable, ObjectMeta, Path};
use tracing::debug;

/// Reader features that do not change how a data file is read: `timestampNtz` is a type the
/// Parquet files hold as they are, `v2Checkpoint` and `vacuumProtocolCheck` concern only the
/// log, which deltalake has already read.
pub const READER_FEATURES: [&str; 3] = ["timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"];

/// The text columns of a table the scan reads other than as plain `Utf8`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReadAs<'a> {
    /// Read as `Dictionary(Int32, Utf8)`.
    pub(crate) dictionaries: &'a [&'a str],
    /// Read as `Utf8View`.
    pub(crate) views: &'a [&'a str],
}

/// `schema` with each plain text (`Utf8`) column of `read` in the type `read` gives it; the
/// other columns as they are.
pub(crate) fn with_read_types(schema: &SchemaRef, read: ReadAs) -> SchemaRef {
    let ReadAs {
        dictionaries,
        views,
    } = read;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let name = f.name().as_str();
            if dictionaries.contains(&name) && f.data_type() == &DataType::Utf8 {
                f.as_ref().clone().with_data_type(dictionary())
            } else if views.contains(&name) && f.data_type() == &DataType::Utf8 {
                f.as_ref().clone().with_data_type(DataType::Utf8View)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// One Delta snapshot as a Parquet scan over exactly its active files.
///
/// Text columns its schema gives as dictionaries ([`with_read_types`]) are decoded straight
/// from the Parquet dictionary pages into Arrow dictionaries, so a filter, `lower()` or a
/// grouping on them works once per distinct value of a batch rather than once per row; text
/// columns it gives as `Utf8View` are decoded as views into the pages instead of being copied
/// string by string. For that, a table with such columns has each file read with its own Arrow
/// schema in the table's types ([`file_schema`], from the file's footer, which the session
/// caches for the scan anyway); without it the Parquet reader would decode plain strings and
/// DataFusion cast them, slower than either, and text a file holds as `Utf8View` would be cast
/// too.
#[derive(Debug)]
pub(crate) struct SnapshotTable {
    schema: SchemaRef,
    store: ObjectStoreUrl,
    /// The active files, each with its statistics from the log, in log order.
    files: Vec<PartitionedFile>,
    stats: LogStatistics,
    /// The columns read as dictionaries.
    dictionaries: Vec<String>,
    /// Each file's Arrow schema as the reader should decode it ([`file_schema`]), by location,
    /// once a scan has read its footer (files written alike share one).
    file_schemas: Mutex<HashMap<Path, SchemaRef>>,
}

/// Footers read at once when a scan first needs files' schemas.
const FOOTER_READS: usize = 16;

/// What the reader should decode a data file's columns as: `file` (its own Arrow schema, as the
/// Parquet reader infers it, from its embedded Arrow schema if it has one) with each column's
/// type replaced by the table's where they differ only in how text is held ([`read_as`]).
/// Decoded as the table's types, the batches need no cast after the reader; a file written with
/// `Utf8View` text (as `retain lake optimize` writes them) would otherwise be cast row by row.
fn file_schema(file: &Schema, table: &Schema) -> Schema {
    let fields: Vec<Field> = file
        .fields()
        .iter()
        .map(|f| {
            let to = table
                .field_with_name(f.name())
                .ok()
                .and_then(|t| read_as(f.data_type(), t.data_type()));
            match to {
                Some(to) => f.as_ref().clone().with_data_type(to),
                None => f.as_ref().clone(),
            }
        })
        .collect();
    Schema::new_with_metadata(fields, file.metadata().clone())
}

/// The type to decode a column of type `file` as for a table column of type `table`, when the
/// Parquet reader can produce it directly: text of any flavour as the table's text or text
/// dictionary, a timestamp in the table's time zone, lists and structs of those; `None` to
/// leave it as the file has it (the scan casts it if it must).
fn read_as(file: &DataType, table: &DataType) -> Option<DataType> {
    use DataType::*;
    let text = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let field = |f: &FieldRef, t: &FieldRef| -> Option<FieldRef> {
        (f.name() == t.name())
            .then(|| read_as(f.data_type(), t.data_type()))
            .flatten()
            .map(|to| Arc::new(f.as_ref().clone().with_data_type(to)))
    };
    match (file, table) {
        (f, t) if f == t => None,
        (f, t) if text(f) && text(t) => Some(t.clone()),
        (f, Dictionary(k, v)) if text(f) && k.as_ref() == &Int32 && v.as_ref() == &Utf8 => {
            Some(table.clone())
        }
        (Timestamp(a, _), Timestamp(b, Some(_))) if a == b => Some(table.clone()),
        (List(f), List(t)) => field(f, t).map(List),
        (LargeList(f), LargeList(t)) => field(f, t).map(LargeList),
        (Struct(fs), Struct(ts)) if fs.len() == ts.len() => {
            let read: Vec<Option<FieldRef>> =
                fs.iter().zip(ts.iter()).map(|(f, t)| field(f, t)).collect();
            read.iter().any(Option::is_some).then(|| {
                Struct(
                    fs.iter()
                        .zip(read)
                        .map(|(f, r)| r.unwrap_or_else(|| Arc::clone(f)))
                        .collect(),
                )
            })
        }
        _ => None,
    }
}

/// The type text columns are read as when read as dictionaries.
fn dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Per-file statistics from the Delta log, one row per active file (for pruning).
#[derive(Debug)]
struct LogStatistics {
    files: usize,
    rows: Option<ArrayRef>,
    min: HashMap<String, ArrayRef>,
    max: HashMap<String, ArrayRef>,
    nulls: HashMap<String, ArrayRef>,
}

impl PruningStatistics for LogStatistics {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.min.get(column.name()).cloned()
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.max.get(column.name()).cloned()
    }

    fn num_containers(&self) -> usize {
        self.files
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        self.nulls.get(column.name()).cloned()
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        self.rows.clone()
    }

    fn contained(&self, _: &Column, _: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// The object store key of a table root: scheme and authority (`file://`, `s3://bucket`), as
/// deltalake registers it with the session.
fn store_url(root: &url::Url) -> Result<ObjectStoreUrl, String> {
    ObjectStoreUrl::parse(format!(
        "{}://{}",
        root.scheme(),
        &root[url::Position::BeforeHost..url::Position::AfterPort]
    ))
    .map_err(|e| format!("no object store URL for the table root: {e}"))
}

/// Why a table cannot be read as plain Parquet, if it cannot.
fn unsupported(table: &DeltaTable) -> Option<String> {
    let state = match table.snapshot() {
        Ok(state) => state,
        Err(e) => return Some(format!("no snapshot: {e}")),
    };
    let protocol = match serde_json::to_value(state.protocol()) {
        Ok(p) => p,
        Err(e) => return Some(format!("unreadable protocol: {e}")),
    };
    let reader_version = protocol["minReaderVersion"].as_i64().unwrap_or(i64::MAX);
    if reader_version > 3 {
        return Some(format!("reader version {reader_version}"));
    }
    let features = protocol["readerFeatures"].as_array().cloned();
    for feature in features.unwrap_or_default() {
        let name = feature.as_str().unwrap_or_default();
        if !READER_FEATURES.contains(&name) {
            return Some(format!("reader feature {name}"));
        }
    }
    let metadata = state.metadata();
    if !metadata.partition_columns().is_empty() {
        return Some("partition columns".to_owned());
    }
    match metadata
        .configuration()
        .get("delta.columnMapping.mode")
        .map(String::as_str)
    {
        None | Some("none") => {}
        Some(mode) => return Some(format!("column mapping mode {mode}")),
    }
    None
}

/// A file's statistics as the scan hands them to DataFusion: its row count only. Files are
/// skipped by the log's min/max before the scan is planned; column statistics here would only
/// make DataFusion build a pruning predicate again for every file it opens.
fn file_statistics(schema: &SchemaRef, rows: Option<usize>) -> Statistics {
    Statistics {
        num_rows: rows.map_or(Precision::Absent, Precision::Exact),
        ..Statistics::new_unknown(schema)
    }
}

impl SnapshotTable {
    /// The snapshot `table` has loaded, read with `schema` (what deltalake's provider shows for
    /// it, optionally [`with_read_types`]); `Err` says why the table must be read through
    /// deltalake instead.
    pub(crate) fn try_new(table: &DeltaTable, schema: SchemaRef) -> Result<Self, String> {
        if let Some(reason) = unsupported(table) {
            return Err(reason);
        }
        let state = table.snapshot().map_err(|e| e.to_string())?;
        let root = table.table_url();
        let store = store_url(root)?;
        let root_path = Path::from_url_path(root.path()).map_err(|e| e.to_string())?;

        let snapshot = state.snapshot();
        let views: Vec<_> = state.log_data().iter().collect();
        let pick = |array: Option<ArrayRef>, to: &DataType| {
            array
                .filter(|a| a.len() == views.len())
                .and_then(|a| cast(&a, to).ok())
        };
        let mut stats = LogStatistics {
            files: views.len(),
            rows: pick(snapshot.row_counts(), &DataType::UInt64),
            min: HashMap::new(),
            max: HashMap::new(),
            nulls: HashMap::new(),
        };
        for field in schema.fields() {
            let column = Column::new_unqualified(field.name());
            let name = field.name().clone();
            if let Some(a) = pick(snapshot.min_values(&column), field.data_type()) {
                stats.min.insert(name.clone(), a);
            }
            if let Some(a) = pick(snapshot.max_values(&column), field.data_type()) {
                stats.max.insert(name.clone(), a);
            }
            if let Some(a) = pick(snapshot.null_counts(&column), &DataType::UInt64) {
                stats.nulls.insert(name, a);
            }
        }

        let dictionaries = schema
            .fields()
            .iter()
            .filter(|f| matches!(f.data_type(), DataType::Dictionary(..)))
            .map(|f| f.name().clone())
            .collect();
        let mut files = Vec::with_capacity(views.len());
        for view in &views {
            if view.deletion_vector_descriptor().is_some() {
                return Err(format!("{} has a deletion vector", view.path()));
            }
            if view.path().contains("://") {
                return Err("a data file outside the table folder".to_owned());
            }
            let relative = view.object_store_path();
            let location = Path::from_iter(root_path.parts().chain(relative.parts()));
            let size = u64::try_from(view.size()).map_err(|e| e.to_string())?;
            let last_modified = Utc
                .timestamp_millis_opt(view.modification_time())
                .single()
                .unwrap_or_default();
            let file: PartitionedFile = ObjectMeta {
                location,
                last_modified,
                size,
                e_tag: None,
                version: None,
            }
            .into();
            let statistics = file_statistics(&schema, view.num_records());
            files.push(file.with_statistics(Arc::new(statistics)));
        }
        debug!(
            version = state.version(),
            files = files.len(),
            "reading the snapshot as Parquet"
        );
        Ok(SnapshotTable {
            schema,
            store,
            files,
            stats,
            dictionaries,
            file_schemas: Mutex::new(HashMap::new()),
        })
    }

    /// `files`, each with its Arrow schema for the reader ([`file_schema`]) when the table has
    /// dictionary columns. A file whose footer cannot be read here keeps none: the scan reads it
    /// (or reports why it cannot) as it would any file, and DataFusion casts what differs.
    async fn with_file_schemas(
        &self,
        state: &dyn Session,
        files: Vec<PartitionedFile>,
    ) -> Vec<PartitionedFile> {
        if self.dictionaries.is_empty() {
            return files;
        }
        // The schemas earlier scans read; the others come from the files' footers.
        let known: Vec<Option<SchemaRef>> = {
            let map = self
                .file_schemas
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            files
                .iter()
                .map(|f| map.get(&f.object_meta.location).cloned())
                .collect()
        };
        if known.iter().all(Option::is_some) {
            return files
                .into_iter()
                .zip(known.into_iter().flatten())
                .map(|(f, schema)| f.with_arrow_schema(schema))
                .collect();
        }
        let runtime = state.runtime_env();
        let store = match runtime.object_store(&self.store) {
            Ok(store) => store,
            Err(e) => {
                debug!(error = %e, "no object store for the files' schemas");
                return files;
            }
        };
        let cache = runtime.cache_manager.get_file_metadata_cache();
        let hint = state.table_options().parquet.global.metadata_size_hint;
        let read = |(file, known): (PartitionedFile, Option<SchemaRef>)| {
            let (store, cache) = (Arc::clone(&store), Arc::clone(&cache));
            async move {
                if known.is_some() {
                    return (file, known);
                }
                let metadata = DFParquetMetadata::new(store.as_ref(), &file.object_meta)
                    .with_metadata_size_hint(hint)
                    .with_file_metadata_cache(Some(cache))
                    .with_page_index_policy(Some(PageIndexPolicy::Skip))
                    .fetch_metadata()
                    .await;
                let schema = metadata.map_err(|e| e.to_string()).and_then(|m| {
                    let file_metadata = m.file_metadata();
                    parquet_to_arrow_schema(
                        file_metadata.schema_descr(),
                        file_metadata.key_value_metadata(),
                    )
                    .map_err(|e| e.to_string())
                });
                match schema {
                    Ok(schema) => {
                        let schema = file_schema(&schema, &self.schema);
                        (file, Some(Arc::new(schema)))
                    }
                    Err(e) => {
                        debug!(file = %file.object_meta.location, error = %e, "no schema for the file");
                        (file, None)
                    }
                }
            }
        };
        let read: Vec<(PartitionedFile, Option<SchemaRef>)> =
            futures::stream::iter(files.into_iter().zip(known))
                .map(read)
                .buffered(FOOTER_READS)
                .collect()
                .await;
        let mut out = Vec::with_capacity(read.len());
        let mut map = self
            .file_schemas
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut shared: Vec<SchemaRef> = Vec::new();
        for (file, schema) in read {
            let Some(schema) = schema else {
                out.push(file);
                continue;
            };
            // Files written alike share one schema.
            let schema = match shared.iter().find(|s| **s == schema) {
                Some(s) => Arc::clone(s),
                None => {
                    shared.push(Arc::clone(&schema));
                    schema
                }
            };
            map.insert(file.object_meta.location.clone(), Arc::clone(&schema));
            out.push(file.with_arrow_schema(schema));
        }
        out
    }

    /// Whether the scan should apply `filters` while decoding (Parquet filter pushdown: decode
    /// the filters' columns, then the others only for the rows they keep): when there are some
    /// and none touches a column the log keeps min/max statistics for. Such a filter (on
    /// custodian, mailbox, subject: PHI keeps them out of the log) is what a search or a hold
    /// preview looks like, selective, and the log could not narrow the files for it. A filter on
    /// a column with statistics has already done its work choosing files: the files kept mostly
    /// match it, and testing it row by row in the decoder costs more than it saves (twice the
    /// time of the disposal query in stream order, docs/PERFORMANCE.md). The session's own
    /// `pushdown_filters` still turns it on for every scan.
    fn decode_filtered(&self, filters: &[Expr]) -> bool {
        !filters.is_empty()
            && filters.iter().all(|f| {
                f.column_refs().iter().all(|c| {
                    !self.stats.min.contains_key(c.name()) && !self.stats.max.contains_key(c.name())
                })
            })
    }

    /// Which files the filters may match, by the log's statistics (all when they say nothing).
    fn keep(&self, state: &dyn Session, filters: &[Expr]) -> Vec<bool> {
        let all = vec![true; self.files.len()];
        let Some(predicate) = conjunction(filters.iter().cloned()) else {
            return all;
        };
        let pruned = DFSchema::try_from(self.schema.as_ref().clone())
            .and_then(|df| state.create_physical_expr(predicate, &df))
            .and_then(|e| {
                PruningPredicateBuilder::new()
                    .with_file_schema(Arc::clone(&self.schema))
                    .try_build(e)
            })
            .and_then(|p| p.prune(&self.stats));
        match pruned {
            Ok(keep) if keep.len() == self.files.len() => keep,
            Ok(_) => all,
            Err(e) => {
                debug!(error = %e, "no file pruning for this scan");
                all
            }
        }
    }
}

/// `files` in at most `n` groups of about equal bytes (largest first into the lightest group).
fn groups(mut files: Vec<PartitionedFile>, n: usize) -> Vec<Vec<PartitionedFile>> {
    let n = n.clamp(1, files.len().max(1));
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for file in files {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        lightest.0 += file.object_meta.size;
        lightest.1.push(file);
    }
    groups
        .into_iter()
        .filter(|(_, files)| !files.is_empty())
        .map(|(_, files)| files)
        .collect()
}

/// The statistics of some files together.
fn merged<'a>(
    stats: impl Iterator<Item = &'a Statistics>,
    schema: &SchemaRef,
) -> DfResult<Statistics> {
    Statistics::try_merge_iter(stats, schema)
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let keep = self.keep(state, filters);
        let files: Vec<PartitionedFile> = self
            .files
            .iter()
            .zip(keep)
            .filter(|(_, keep)| *keep)
            .map(|(f, _)| f.clone())
            .collect();
        let files = self.with_file_schemas(state, files).await;
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let mut file_groups = Vec::new();
        for files in groups(files, state.config().target_partitions()) {
            let stats = merged(
                files.iter().filter_map(|f| f.statistics.as_deref()),
                &self.schema,
            )?;
            file_groups.push(FileGroup::new(files).with_statistics(Arc::new(stats)));
        }
        let statistics = merged(
            file_groups.iter().filter_map(|g| g.file_statistics(None)),
            &self.schema,
        )?;
        let mut parquet = state.table_options().parquet.clone();
        if self.decode_filtered(filters) {
            // In the order written: DataFusion's reordering (smallest columns first) would test
            // a hold's keyword on the subject of every row before its custodian.
            parquet.global.pushdown_filters = true;
        }
        let format = ParquetFormat::default().with_options(parquet);
        let source = format.file_source(TableSchema::from(Arc::clone(&self.schema)));
        let config = FileScanConfigBuilder::new(self.store.clone(), source)
            .with_file_groups(file_groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Used to skip files and row groups; the rows are still filtered above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// deltalake's provider, for the tables [`SnapshotTable`] refuses, with one fix: a scan that
/// needs no column (`SELECT 1 FROM t LIMIT 3`) is answered from the log by a node that claims
/// to pass a limit down but has nothing below it, so DataFusion drops the limit. Such a scan
/// reads its first column instead and projects it away, which keeps the limit.
#[derive(Debug)]
pub(crate) struct DeltaFallback {
    pub(crate) inner: Arc<dyn TableProvider>,
}

#[async_trait]
impl TableProvider for DeltaFallback {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let columnless = projection.is_some_and(Vec::is_empty);
        if limit.is_none() || !columnless || self.schema().fields().is_empty() {
            return self.inner.scan(state, projection, filters, limit).await;
        }
        let plan = self
            .inner
            .scan(state, Some(&vec![0]), filters, limit)
            .await?;
        let none: Vec<ProjectionExpr> = Vec::new();
        Ok(Arc::new(ProjectionExec::try_new(none, plan)?))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> PartitionedFile {
        PartitionedFile::new(name, size)
    }

    #[test]
    fn groups_balance_bytes_and_keep_every_file() {
        let files = vec![
            file("a", 10),
            file("b", 9),
            file("c", 3),
            file("d", 3),
            file("e", 1),
        ];
        let g = groups(files, 2);
        assert_eq!(g.len(), 2);
        let bytes: Vec<u64> = g
            .iter()
            .map(|g| g.iter().map(|f| f.object_meta.size).sum())
            .collect();
        assert_eq!(bytes.iter().sum::<u64>(), 26);
        assert!(bytes.iter().all(|b| (12..=14).contains(b)), "{bytes:?}");
        assert_eq!(groups(vec![file("a", 1)], 8).len(), 1);
    }

    #[test]
    fn files_are_read_as_the_table_types_where_only_the_text_flavour_differs() {
        use datafusion::arrow::datatypes::TimeUnit::Microsecond;
        let list = |t: DataType| DataType::List(Arc::new(Field::new("element", t, false)));
        let ts = |tz: &str| DataType::Timestamp(Microsecond, Some(tz.into()));
        // As `retain lake optimize` writes a file: views, every column nullable.
        let file = Schema::new(vec![
            Field::new("custodian", DataType::Utf8View, true),
            Field::new("subject", DataType::Utf8View, true),
            Field::new("labels", list(DataType::Utf8View), true),
            Field::new("sent_at", ts("+00:00"), true),
            Field::new("size_bytes", DataType::Int64, true),
            Field::new("only_in_the_file", DataType::Utf8View, true),
        ]);
        let table = with_read_types(
            &Arc::new(Schema::new(vec![
                Field::new("custodian", DataType::Utf8, false),
                Field::new("subject", DataType::Utf8, true),
                Field::new("labels", list(DataType::Utf8), false),
                Field::new("sent_at", ts("UTC"), true),
                Field::new("size_bytes", DataType::Int32, false),
            ])),
            ReadAs {
                dictionaries: &["custodian", "subject_is_not_listed"],
                views: &[],
            },
        );
        let read = file_schema(&file, &table);
        let types: Vec<&DataType> = read.fields().iter().map(|f| f.data_type()).collect();
        assert_eq!(
            types,
            [
                &dictionary(),
                &DataType::Utf8,
                &list(DataType::Utf8),
                &ts("UTC"),
                // Not text: left for the scan to cast.
                &DataType::Int64,
                &DataType::Utf8View,
            ]
        );
        // The file's nullability stays (the Parquet reader checks it).
        assert!(read.fields().iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn store_url_is_scheme_and_authority() {
        let s3 = url::Url::parse("s3://bucket/lake/records").unwrap();
        assert_eq!(store_url(&s3).unwrap().as_str(), "s3://bucket/");
        let local = url::Url::parse("file:///tmp/lake/records").unwrap();
        assert_eq!(store_url(&local).unwrap().as_str(), "file:///");
    }
}
