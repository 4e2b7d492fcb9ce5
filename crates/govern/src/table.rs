//! What the govern tables (`holds`, `manifests`, `disposals`) share: opening, reading the
//! current version through DataFusion in the table's own types, and error conversions.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;
use retain_lake::deltalake::kernel::StructType;
use retain_lake::deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use retain_lake::deltalake::{DeltaTable, DeltaTableError};
use retain_lake::open_or_create_table;

use crate::error::{Error, Result};

/// A lake error as a govern error.
pub(crate) fn lake(e: retain_lake::Error) -> Error {
    Error::Lake(Box::new(e))
}

/// A failed read of the table at `url`.
pub(crate) fn open_error(url: &str, source: DeltaTableError) -> Error {
    lake(retain_lake::Error::Open {
        url: url.to_owned(),
        source: Box::new(source),
    })
}

/// A failed query or conversion while `doing` something.
pub(crate) fn query(doing: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Query {
        doing: doing.to_owned(),
        source: Box::new(e),
    }
}

/// Opens (or creates) table `name` with the columns of `schema` at `location`.
pub(crate) async fn open(
    location: &str,
    storage_options: HashMap<String, String>,
    name: &str,
    comment: &str,
    schema: &SchemaRef,
) -> Result<(DeltaTable, String)> {
    let delta: StructType = schema
        .as_ref()
        .try_into_kernel()
        .expect("a govern table schema converts to a Delta schema");
    open_or_create_table(
        location,
        storage_options,
        name,
        comment,
        delta.fields().cloned(),
        &[],
    )
    .await
    .map_err(lake)
}

/// Reads the newest version of `table` from storage.
pub(crate) async fn refresh(table: &mut DeltaTable, url: &str) -> Result<()> {
    table.update_state().await.map_err(|e| open_error(url, e))
}

/// The rows of `table` (at the state it was last refreshed to) that match `filter` (every row
/// when `None`), with the columns of `schema` in its types (DataFusion reads text as views).
pub(crate) async fn read(
    table: &DeltaTable,
    what: &str,
    filter: Option<Expr>,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let doing = format!("reading the {what} table");
    let fail = |e: datafusion::error::DataFusionError| query(&doing, e);
    let provider = table.table_provider().await.map_err(fail)?;
    let mut df = SessionContext::new().read_table(provider).map_err(fail)?;
    if let Some(f) = filter {
        df = df.filter(f).map_err(fail)?;
    }
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let batches = df
        .select_columns(&columns)
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    batches.iter().map(|b| conform(b, schema)).collect()
}

/// `batch` cast column by column to `schema` (matched by name).
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = batch.column_by_name(f.name()).ok_or_else(|| Error::Query {
                doing: format!("reading column `{}`", f.name()),
                source: "the column is missing".into(),
            })?;
            datafusion::arrow::compute::cast(c, f.data_type())
                .map_err(|e| query(&format!("reading column `{}`", f.name()), e))
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| query("reading a batch", e))
}
