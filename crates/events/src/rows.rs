//! Reading `records` rows into what a recompute needs, and writing recomputed decisions back
//! as the columns a MERGE updates.

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Date32Builder, ListArray, ListBuilder, RecordBatch,
    StringArray, StringBuilder, StructArray, StructBuilder,
};
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef};
use retain_lake::schema::columns;
use retain_model::{Category, Facts};

use crate::error::{Error, Result};
use crate::schedule::StoredEntry;

/// The columns a recompute reads (no PHI beyond what scheduling needs: patient references,
/// thread ids and labels are read only by the matching of events).
pub const RECOMPUTE_COLUMNS: [&str; 12] = [
    columns::RECORD_KEY,
    columns::CATEGORY,
    columns::CREATED_DATE,
    columns::JURISDICTION,
    columns::RECORD_HOLDER,
    columns::OBLIGATIONS,
    columns::RETAIN_UNTIL,
    columns::RETENTION_STATUS,
    columns::GOVERNING,
    columns::WAITING_FOR,
    columns::POLICY_VERSION,
    columns::FORCED,
];

/// The columns the events stage reads besides [`RECOMPUTE_COLUMNS`]: the keys events match on.
pub const MATCH_COLUMNS: [&str; 8] = [
    columns::TENANT,
    columns::MAILBOX,
    columns::MESSAGE_ID,
    columns::CUSTODIAN,
    columns::THREAD_ID,
    columns::PATIENT_REFS,
    columns::LABELS,
    columns::LANDED_AT,
];

/// The columns a recompute rewrites (with `record_key`, the MERGE source).
pub const UPDATED_COLUMNS: [&str; 6] = [
    columns::OBLIGATIONS,
    columns::RETAIN_UNTIL,
    columns::RETENTION_STATUS,
    columns::GOVERNING,
    columns::WAITING_FOR,
    columns::POLICY_VERSION,
];

/// A record's stored retention decision, exactly as in its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDecision {
    /// Every entry of `obligations` (obligations, then provenance).
    pub entries: Vec<StoredEntry>,
    /// `retain_until`.
    pub retain_until: Option<NaiveDate>,
    /// `retention_status`.
    pub status: String,
    /// `governing`.
    pub governing: Option<String>,
    /// `waiting_for`.
    pub waiting_for: Vec<String>,
    /// `policy_version`.
    pub policy_version: String,
}

impl StoredDecision {
    /// Whether two decisions are the same except for the policy version that computed them.
    pub fn same_schedule(&self, other: &StoredDecision) -> bool {
        self.entries == other.entries
            && self.retain_until == other.retain_until
            && self.status == other.status
            && self.governing == other.governing
            && self.waiting_for == other.waiting_for
    }
}

/// What one row says about its record, for a recompute.
#[derive(Debug, Clone)]
pub struct RowView {
    /// `record_key`.
    pub record_key: String,
    /// The category (kept: never re-classified).
    pub category: Category,
    /// `created_date`.
    pub created: Option<NaiveDate>,
    /// Jurisdiction, record holder and the facts recorded in provenance entries.
    pub facts: Facts,
    /// The stored decision.
    pub stored: StoredDecision,
}

fn missing(column: &str) -> Error {
    Error::Rows {
        column: column.to_owned(),
        reason: "missing or of an unexpected type".to_owned(),
    }
}

/// Typed access to the columns of a `records` batch (cast to the table's own types first with
/// [`conform`]).
pub struct Columns<'a> {
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    /// Column access over `batch`.
    pub fn new(batch: &'a RecordBatch) -> Self {
        Columns { batch }
    }

    /// A string column.
    pub fn strings(&self, name: &str) -> Result<&'a StringArray> {
        self.batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| missing(name))
    }

    /// A date column.
    pub fn dates(&self, name: &str) -> Result<&'a Date32Array> {
        self.batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Date32Type>())
            .ok_or_else(|| missing(name))
    }

    /// A list column.
    pub fn list(&self, name: &str) -> Result<&'a ListArray> {
        self.batch
            .column_by_name(name)
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| missing(name))
    }
}

fn opt(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_owned())
}

fn date_at(a: &Date32Array, i: usize) -> Option<NaiveDate> {
    a.is_valid(i)
        .then(|| NaiveDate::from_epoch_days(a.value(i)).unwrap_or_default())
}

/// The strings of row `i` of a list-of-strings column.
pub fn string_list(a: &ListArray, i: usize) -> Vec<String> {
    if a.is_null(i) {
        return Vec::new();
    }
    let v = a.value(i);
    let s = v.as_string::<i32>();
    (0..s.len()).map(|j| s.value(j).to_owned()).collect()
}

fn entries(a: &ListArray, i: usize) -> Result<Vec<StoredEntry>> {
    if a.is_null(i) {
        return Ok(Vec::new());
    }
    let v = a.value(i);
    let s: &StructArray = v
        .as_struct_opt()
        .ok_or_else(|| missing(columns::OBLIGATIONS))?;
    let text = |n: usize| {
        s.column(n)
            .as_string_opt::<i32>()
            .ok_or_else(|| missing(columns::OBLIGATIONS))
    };
    let (id, citation, quality, trigger, status) =
        (text(0)?, text(1)?, text(2)?, text(3)?, text(5)?);
    let until = s
        .column(4)
        .as_primitive_opt::<Date32Type>()
        .ok_or_else(|| missing(columns::OBLIGATIONS))?;
    Ok((0..s.len())
        .map(|j| StoredEntry {
            id: id.value(j).to_owned(),
            citation: citation.value(j).to_owned(),
            source_quality: quality.value(j).to_owned(),
            trigger: trigger.value(j).to_owned(),
            until: date_at(until, j),
            status: status.value(j).to_owned(),
        })
        .collect())
}

/// Every row of a conformed `records` batch with at least [`RECOMPUTE_COLUMNS`].
pub fn row_views(batch: &RecordBatch) -> Result<Vec<RowView>> {
    let c = Columns::new(batch);
    let key = c.strings(columns::RECORD_KEY)?;
    let category = c.strings(columns::CATEGORY)?;
    let created = c.dates(columns::CREATED_DATE)?;
    let jurisdiction = c.strings(columns::JURISDICTION)?;
    let holder = c.strings(columns::RECORD_HOLDER)?;
    let obligations = c.list(columns::OBLIGATIONS)?;
    let until = c.dates(columns::RETAIN_UNTIL)?;
    let status = c.strings(columns::RETENTION_STATUS)?;
    let governing = c.strings(columns::GOVERNING)?;
    let waiting = c.list(columns::WAITING_FOR)?;
    let version = c.strings(columns::POLICY_VERSION)?;
    (0..batch.num_rows())
        .map(|i| {
            let record_key = key.value(i).to_owned();
            let category = Category::new(category.value(i)).map_err(|e| Error::Rows {
                column: columns::CATEGORY.to_owned(),
                reason: format!("record {record_key}: {e}"),
            })?;
            let entries = entries(obligations, i)?;
            let facts = crate::schedule::facts_of(
                &entries,
                Facts {
                    jurisdiction: opt(jurisdiction, i),
                    record_holder: opt(holder, i),
                    ..Facts::default()
                },
            );
            Ok(RowView {
                record_key,
                category,
                created: date_at(created, i),
                facts,
                stored: StoredDecision {
                    entries,
                    retain_until: date_at(until, i),
                    status: status.value(i).to_owned(),
                    governing: opt(governing, i),
                    waiting_for: string_list(waiting, i),
                    policy_version: version.value(i).to_owned(),
                },
            })
        })
        .collect()
}

/// `batch`'s columns cast to the `records` table's own types (DataFusion may read text as
/// string views), keeping only the columns `batch` has.
pub fn conform(batch: &RecordBatch) -> Result<RecordBatch> {
    conform_to(batch, &retain_lake::records_schema())
}

/// `batch`'s columns cast to the types of the same-named columns of `table` (others kept).
pub fn conform_to(batch: &RecordBatch, table: &SchemaRef) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let target = table
            .field_with_name(field.name())
            .map(|f| Arc::new(f.clone()))
            .unwrap_or_else(|_| Arc::clone(field));
        let cast = if array.data_type() == target.data_type() {
            Arc::clone(array)
        } else {
            datafusion::arrow::compute::cast(array, target.data_type()).map_err(|e| {
                Error::Rows {
                    column: field.name().clone(),
                    reason: format!("cannot read as {}: {e}", target.data_type()),
                }
            })?
        };
        fields.push(target);
        arrays.push(cast);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| Error::Rows {
        column: "*".to_owned(),
        reason: e.to_string(),
    })
}

/// The schema of a MERGE source: `record_key` and [`UPDATED_COLUMNS`], in the table's types.
pub fn update_schema() -> SchemaRef {
    let table = retain_lake::records_schema();
    let fields: Vec<Field> = std::iter::once(columns::RECORD_KEY)
        .chain(UPDATED_COLUMNS)
        .map(|n| table.field_with_name(n).expect("a records column").clone())
        .collect();
    Arc::new(Schema::new(fields))
}

/// Builds MERGE source rows: a record key and its new decision.
pub struct UpdateBuilder {
    key: StringBuilder,
    obligations: ListBuilder<StructBuilder>,
    until: Date32Builder,
    status: StringBuilder,
    governing: StringBuilder,
    waiting: ListBuilder<StringBuilder>,
    version: StringBuilder,
    len: usize,
}

impl Default for UpdateBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl UpdateBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        let schema = update_schema();
        let list_field = |name: &str| match schema.field_with_name(name).map(|f| f.data_type()) {
            Ok(DataType::List(f)) => Arc::clone(f),
            _ => unreachable!("{name} is a list column"),
        };
        let ob = list_field(columns::OBLIGATIONS);
        let DataType::Struct(struct_fields) = ob.data_type().clone() else {
            unreachable!("obligations holds structs")
        };
        UpdateBuilder {
            key: StringBuilder::new(),
            obligations: ListBuilder::new(StructBuilder::from_fields(struct_fields, 0))
                .with_field(ob),
            until: Date32Builder::new(),
            status: StringBuilder::new(),
            governing: StringBuilder::new(),
            waiting: ListBuilder::new(StringBuilder::new())
                .with_field(list_field(columns::WAITING_FOR)),
            version: StringBuilder::new(),
            len: 0,
        }
    }

    /// Rows added so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no rows were added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds one record's new decision.
    pub fn push(&mut self, record_key: &str, d: &StoredDecision) {
        self.key.append_value(record_key);
        let s = self.obligations.values();
        for e in &d.entries {
            s.field_builder::<StringBuilder>(0)
                .expect("id")
                .append_value(&e.id);
            s.field_builder::<StringBuilder>(1)
                .expect("citation")
                .append_value(&e.citation);
            s.field_builder::<StringBuilder>(2)
                .expect("source_quality")
                .append_value(&e.source_quality);
            s.field_builder::<StringBuilder>(3)
                .expect("trigger")
                .append_value(&e.trigger);
            s.field_builder::<Date32Builder>(4)
                .expect("until")
                .append_option(e.until.map(Date32Type::from_naive_date));
            s.field_builder::<StringBuilder>(5)
                .expect("status")
                .append_value(&e.status);
            s.append(true);
        }
        self.obligations.append(true);
        self.until
            .append_option(d.retain_until.map(Date32Type::from_naive_date));
        self.status.append_value(&d.status);
        self.governing.append_option(d.governing.as_deref());
        for w in &d.waiting_for {
            self.waiting.values().append_value(w);
        }
        self.waiting.append(true);
        self.version.append_value(&d.policy_version);
        self.len += 1;
    }

    /// The rows as one batch of [`update_schema`]; the builder is left empty.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        self.len = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.obligations.finish()),
            Arc::new(self.until.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.governing.finish()),
            Arc::new(self.waiting.finish()),
            Arc::new(self.version.finish()),
        ];
        RecordBatch::try_new(update_schema(), columns).map_err(|e| Error::Rows {
            column: "*".to_owned(),
            reason: e.to_string(),
        })
    }
}

/// `batch` (a full `records` batch) with each row's `obligations` extended by `extra[i]` (the
/// provenance the scheduler records at landing).
pub fn append_entries(batch: &RecordBatch, extra: &[Vec<StoredEntry>]) -> Result<RecordBatch> {
    if extra.iter().all(Vec::is_empty) {
        return Ok(batch.clone());
    }
    let c = Columns::new(batch);
    let obligations = c.list(columns::OBLIGATIONS)?;
    let mut b = UpdateBuilder::new();
    for (i, more) in extra.iter().enumerate().take(batch.num_rows()) {
        let mut all = entries(obligations, i)?;
        all.extend(more.iter().cloned());
        b.push(
            "",
            &StoredDecision {
                entries: all,
                retain_until: None,
                status: String::new(),
                governing: None,
                waiting_for: Vec::new(),
                policy_version: String::new(),
            },
        );
    }
    let updated = b.finish()?;
    let index = batch
        .schema()
        .index_of(columns::OBLIGATIONS)
        .map_err(|_| missing(columns::OBLIGATIONS))?;
    let mut cols = batch.columns().to_vec();
    cols[index] = Arc::clone(updated.column(1));
    RecordBatch::try_new(batch.schema(), cols).map_err(|e| Error::Rows {
        column: columns::OBLIGATIONS.to_owned(),
        reason: e.to_string(),
    })
}
