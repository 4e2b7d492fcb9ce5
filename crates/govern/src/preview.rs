//! What a hold would catch, before it is placed: counts by custodian and category and a sample
//! of record keys, from one DataFusion query over `records`.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use retain_lake::RecordsTable;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::scope::HoldScope;

/// What a scope covers in the table now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Preview {
    /// The records table version read.
    pub table_version: u64,
    /// The predicate evaluated (NULL counts as covered).
    pub predicate: String,
    /// Records covered.
    pub records: u64,
    /// By custodian.
    pub by_custodian: BTreeMap<String, u64>,
    /// By category.
    pub by_category: BTreeMap<String, u64>,
    /// Up to `sample` covered record keys (hashes: no PHI), smallest first.
    pub sample: Vec<String>,
}

fn groups_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("custodian", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]))
}

fn keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "record_key",
        DataType::Utf8,
        true,
    )]))
}

/// The SQL `WHERE` clause that selects what a predicate covers: true or unknown.
pub fn covered_clause(predicate: &str) -> String {
    format!("(({predicate}) IS NOT FALSE)")
}

/// Counts what `scope` covers in `records` as it is now.
pub async fn preview(
    records: &mut RecordsTable,
    scope: &HoldScope,
    sample: usize,
) -> Result<Preview> {
    let predicate = scope.to_predicate()?;
    crate::HoldSet::compile(
        &retain_lake::records_schema(),
        [("(new)", predicate.as_str())],
    )?;
    records
        .refresh()
        .await
        .map_err(|e| Error::Lake(Box::new(e)))?;
    let ctx = crate::coverage::sql_session();
    let fail = |doing: &str, e: datafusion::error::DataFusionError| Error::Query {
        doing: doing.to_owned(),
        source: Box::new(e),
    };
    let provider = records
        .delta_table()
        .table_provider()
        .await
        .map_err(|e| fail("reading the records table", e))?;
    ctx.register_table("records", provider)
        .map_err(|e| fail("registering the records table", e))?;
    let clause = covered_clause(&predicate);
    let groups = ctx
        .sql(&format!(
            "SELECT custodian, category, count(*) AS n FROM records WHERE {clause} GROUP BY custodian, category"
        ))
        .await
        .map_err(|e| fail("counting covered records", e))?
        .collect()
        .await
        .map_err(|e| fail("counting covered records", e))?;
    let mut out = Preview {
        table_version: records.version(),
        predicate,
        ..Preview::default()
    };
    for b in &groups {
        let b = crate::table::conform(b, &groups_schema())?;
        let custodian = b.column(0).as_string::<i32>();
        let category = b.column(1).as_string::<i32>();
        let n = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let n = n.value(i) as u64;
            out.records += n;
            let name = |a: &datafusion::arrow::array::StringArray| {
                if a.is_null(i) {
                    "(none)".to_owned()
                } else {
                    a.value(i).to_owned()
                }
            };
            *out.by_custodian.entry(name(custodian)).or_default() += n;
            *out.by_category.entry(name(category)).or_default() += n;
        }
    }
    if sample > 0 {
        let keys = ctx
            .sql(&format!(
                "SELECT record_key FROM records WHERE {clause} ORDER BY record_key LIMIT {sample}"
            ))
            .await
            .map_err(|e| fail("sampling covered records", e))?
            .collect()
            .await
            .map_err(|e| fail("sampling covered records", e))?;
        for b in &keys {
            let b = crate::table::conform(b, &keys_schema())?;
            let k = b.column(0).as_string::<i32>();
            out.sample
                .extend((0..b.num_rows()).map(|i| k.value(i).to_owned()));
        }
    }
    Ok(out)
}
