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
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{TimeZone as _, Utc};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat as _;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result as DfResult;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_optimizer::pruning::{PruningPredicateBuilder, PruningStatistics};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::projection::ProjectionExec;
use retain_lake::deltalake::{DeltaTable, ObjectMeta, Path};
use tracing::debug;

/// Reader features that do not change how a data file is read: `timestampNtz` is a type the
/// Parquet files hold as they are, `v2Checkpoint` and `vacuumProtocolCheck` concern only the
/// log, which deltalake has already read.
pub const READER_FEATURES: [&str; 3] = ["timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"];

/// One Delta snapshot as a Parquet scan over exactly its active files.
#[derive(Debug)]
pub(crate) struct SnapshotTable {
    schema: SchemaRef,
    store: ObjectStoreUrl,
    /// The active files, each with its statistics from the log, in log order.
    files: Vec<PartitionedFile>,
    stats: LogStatistics,
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
    /// it); `Err` says why the table must be read through deltalake instead.
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
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
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
    fn store_url_is_scheme_and_authority() {
        let s3 = url::Url::parse("s3://bucket/lake/records").unwrap();
        assert_eq!(store_url(&s3).unwrap().as_str(), "s3://bucket/");
        let local = url::Url::parse("file:///tmp/lake/records").unwrap();
        assert_eq!(store_url(&local).unwrap().as_str(), "file:///");
    }
}
