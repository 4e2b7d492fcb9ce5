//! The `events` Delta table: every retention event Retain has received (`event_id` unique), and
//! which records an event matches.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef, TimeUnit};
use datafusion::prelude::{SessionContext, col, lit};
use retain_codec::{EventKeys, EventType, RetentionEventMessage, action_code, parse_action};
use retain_lake::deltalake::DeltaTable;
use retain_lake::deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use retain_lake::deltalake::kernel::{StructType, Transaction};
use retain_lake::schema::columns;
use retain_lake::{append_batch, open_or_create_table};

use crate::error::{Error, Result, query};
use crate::rows::{Columns, string_list};

/// The table's name.
pub const EVENTS_TABLE: &str = "events";

/// One event as stored: the message, when it was stored, and where it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event as received.
    pub message: RetentionEventMessage,
    /// When Retain stored it (the landing window closes against this).
    pub stored_at: DateTime<Utc>,
    /// The topic partition it was read from (`-1` when not from Kafka).
    pub partition: i32,
    /// Its offset (`-1` when not from Kafka).
    pub offset: i64,
}

/// The table's columns.
pub fn events_schema() -> SchemaRef {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let ts = |n: &str| {
        Field::new(
            n,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        s("event_id", false),
        s("type", false),
        Field::new("date", DataType::Date32, false),
        s("action", true),
        s("tenant", true),
        s("document_id", true),
        s("ba_id", true),
        s("patient_mrn", true),
        s("thread_id", true),
        s("custodian", true),
        s("message_id", true),
        ts("recorded_at"),
        s("source", false),
        ts("stored_at"),
        Field::new("source_partition", DataType::Int32, false),
        Field::new("source_offset", DataType::Int64, false),
    ]))
}

fn to_batch(events: &[StoredEvent]) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&StoredEvent) -> Option<String>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<StringArray>())
    };
    let ts = |f: &dyn Fn(&StoredEvent) -> i64| -> ArrayRef {
        Arc::new(
            events
                .iter()
                .map(|e| Some(f(e)))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|e| Some(e.message.event_id.clone())),
        strings(&|e| Some(e.message.kind.as_str().to_owned())),
        Arc::new(
            events
                .iter()
                .map(|e| Some(Date32Type::from_naive_date(e.message.date)))
                .collect::<Date32Array>(),
        ),
        strings(&|e| e.message.action.map(|a| action_code(a).to_owned())),
        strings(&|e| e.message.keys.tenant.clone()),
        strings(&|e| e.message.keys.document_id.clone()),
        strings(&|e| e.message.keys.ba_id.clone()),
        strings(&|e| e.message.keys.patient_mrn.clone()),
        strings(&|e| e.message.keys.thread_id.clone()),
        strings(&|e| e.message.keys.custodian.clone()),
        strings(&|e| e.message.keys.message_id.clone()),
        ts(&|e| e.message.recorded_at.timestamp_micros()),
        strings(&|e| Some(e.message.source.clone())),
        ts(&|e| e.stored_at.timestamp_micros()),
        Arc::new(
            events
                .iter()
                .map(|e| Some(e.partition))
                .collect::<Int32Array>(),
        ),
        Arc::new(
            events
                .iter()
                .map(|e| Some(e.offset))
                .collect::<Int64Array>(),
        ),
    ];
    RecordBatch::try_new(events_schema(), columns).map_err(|e| query("building an events batch", e))
}

fn from_batch(batch: &RecordBatch) -> Result<Vec<StoredEvent>> {
    let c = Columns::new(batch);
    let bad = |column: &str, reason: String| Error::Rows {
        column: format!("events.{column}"),
        reason,
    };
    let s = |n: &str| c.strings(n);
    let (id, kind, action) = (s("event_id")?, s("type")?, s("action")?);
    let date = c.dates("date")?;
    let keys: Vec<&StringArray> = [
        "tenant",
        "document_id",
        "ba_id",
        "patient_mrn",
        "thread_id",
        "custodian",
        "message_id",
    ]
    .iter()
    .map(|n| s(n))
    .collect::<Result<_>>()?;
    let source = s("source")?;
    let ts = |n: &str| {
        batch
            .column_by_name(n)
            .and_then(|c| {
                c.as_primitive_opt::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
            })
            .ok_or_else(|| bad(n, "missing".to_owned()))
    };
    let (recorded, stored) = (ts("recorded_at")?, ts("stored_at")?);
    let part = batch
        .column_by_name("source_partition")
        .and_then(|c| c.as_primitive_opt::<datafusion::arrow::datatypes::Int32Type>())
        .ok_or_else(|| bad("source_partition", "missing".to_owned()))?;
    let off = batch
        .column_by_name("source_offset")
        .and_then(|c| c.as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>())
        .ok_or_else(|| bad("source_offset", "missing".to_owned()))?;
    let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_owned());
    let instant = |micros: i64| DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default();
    (0..batch.num_rows())
        .map(|i| {
            let kind = EventType::parse(kind.value(i))
                .ok_or_else(|| bad("type", format!("unknown type in row {i}")))?;
            let action = match opt(action, i) {
                Some(a) => Some(
                    parse_action(&a).ok_or_else(|| bad("action", format!("unknown in row {i}")))?,
                ),
                None => None,
            };
            Ok(StoredEvent {
                message: RetentionEventMessage {
                    event_id: id.value(i).to_owned(),
                    kind,
                    date: NaiveDate::from_epoch_days(date.value(i)).unwrap_or_default(),
                    action,
                    keys: EventKeys {
                        tenant: opt(keys[0], i),
                        document_id: opt(keys[1], i),
                        ba_id: opt(keys[2], i),
                        patient_mrn: opt(keys[3], i),
                        thread_id: opt(keys[4], i),
                        custodian: opt(keys[5], i),
                        message_id: opt(keys[6], i),
                    },
                    recorded_at: instant(recorded.value(i)),
                    source: source.value(i).to_owned(),
                },
                stored_at: instant(stored.value(i)),
                partition: part.value(i),
                offset: off.value(i),
            })
        })
        .collect()
}

/// The `events` table at one location.
pub struct EventsTable {
    table: DeltaTable,
    url: String,
}

impl std::fmt::Debug for EventsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsTable")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl EventsTable {
    /// Opens the table at `location`, creating it when there is none.
    pub async fn open_or_create(
        location: &str,
        storage_options: HashMap<String, String>,
    ) -> Result<Self> {
        let delta: StructType = events_schema()
            .as_ref()
            .try_into_kernel()
            .expect("the events schema converts to a Delta schema");
        let (table, url) = open_or_create_table(
            location,
            storage_options,
            EVENTS_TABLE,
            "Retain retention events: every event received, event_id unique (docs/events.md)",
            delta.fields().cloned(),
            &[],
        )
        .await?;
        Ok(EventsTable { table, url })
    }

    /// The table URL (no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The table version last read or written.
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or_default()
    }

    /// Reads the newest version.
    pub async fn refresh(&mut self) -> Result<()> {
        self.table.update_state().await.map_err(|e| {
            Error::Lake(retain_lake::Error::Open {
                url: self.url.clone(),
                source: Box::new(e),
            })
        })
    }

    /// Every stored event, in storing order (table version, then offset).
    pub async fn all(&mut self) -> Result<Vec<StoredEvent>> {
        self.read(None).await
    }

    /// The events stored at or after `since`, in storing order.
    pub async fn stored_since(&mut self, since: DateTime<Utc>) -> Result<Vec<StoredEvent>> {
        let at = lit(datafusion::scalar::ScalarValue::TimestampMicrosecond(
            Some(since.timestamp_micros()),
            Some("UTC".into()),
        ));
        self.read(Some(col("stored_at").gt_eq(at))).await
    }

    async fn read(
        &mut self,
        filter: Option<datafusion::logical_expr::Expr>,
    ) -> Result<Vec<StoredEvent>> {
        self.refresh().await?;
        let doing = "reading the events table";
        let provider = self
            .table
            .table_provider()
            .await
            .map_err(|e| query(doing, e))?;
        let mut df = SessionContext::new()
            .read_table(provider)
            .map_err(|e| query(doing, e))?;
        if let Some(f) = filter {
            df = df.filter(f).map_err(|e| query(doing, e))?;
        }
        let names: Vec<String> = events_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let batches = df
            .select_columns(&names)
            .map_err(|e| query(doing, e))?
            .collect()
            .await
            .map_err(|e| query(doing, e))?;
        let mut out = Vec::new();
        for b in batches {
            out.extend(from_batch(&crate::rows::conform_to(&b, &events_schema())?)?);
        }
        out.sort_by(|a, b| {
            (a.stored_at, a.partition, a.offset).cmp(&(b.stored_at, b.partition, b.offset))
        });
        Ok(out)
    }

    /// Appends the events whose `event_id` is not stored yet, in one commit with `txns` (the
    /// consumer's next offsets: a concurrent commit with the same app ids is refused). Returns
    /// the events newly stored (a repeated id is kept once: the first stored wins).
    pub async fn append(
        &mut self,
        events: Vec<StoredEvent>,
        app_id: &str,
        txns: Vec<Transaction>,
    ) -> Result<Vec<StoredEvent>> {
        let ids: BTreeSet<String> = events.iter().map(|e| e.message.event_id.clone()).collect();
        let known: BTreeSet<String> = if ids.is_empty() {
            BTreeSet::new()
        } else {
            let list = ids.iter().map(|i| lit(i.clone())).collect();
            self.read(Some(col("event_id").in_list(list, false)))
                .await?
                .into_iter()
                .map(|e| e.message.event_id)
                .collect()
        };
        let mut seen = known;
        let new: Vec<StoredEvent> = events
            .into_iter()
            .filter(|e| seen.insert(e.message.event_id.clone()))
            .collect();
        if new.is_empty() && txns.is_empty() {
            return Ok(new);
        }
        let batch = to_batch(&new)?;
        append_batch(&mut self.table, &self.url, app_id, batch, txns).await?;
        Ok(new)
    }
}

/// The matching keys of one `records` row.
#[derive(Debug, Clone, Default)]
pub struct MatchRow {
    /// `tenant`.
    pub tenant: String,
    /// `mailbox`.
    pub mailbox: String,
    /// `message_id`.
    pub message_id: String,
    /// `custodian`.
    pub custodian: String,
    /// `thread_id`.
    pub thread_id: Option<String>,
    /// `patient_refs` (PHI).
    pub patient_refs: Vec<String>,
    /// `labels`.
    pub labels: Vec<String>,
    /// `landed_at`.
    pub landed_at: Option<DateTime<Utc>>,
}

/// The matching keys of every row of a conformed batch with [`crate::rows::MATCH_COLUMNS`].
pub fn match_rows(batch: &RecordBatch) -> Result<Vec<MatchRow>> {
    let c = Columns::new(batch);
    let (tenant, mailbox, message, custodian, thread) = (
        c.strings(columns::TENANT)?,
        c.strings(columns::MAILBOX)?,
        c.strings(columns::MESSAGE_ID)?,
        c.strings(columns::CUSTODIAN)?,
        c.strings(columns::THREAD_ID)?,
    );
    let (refs, labels) = (c.list(columns::PATIENT_REFS)?, c.list(columns::LABELS)?);
    let landed = batch.column_by_name(columns::LANDED_AT).and_then(|c| {
        c.as_primitive_opt::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
    });
    Ok((0..batch.num_rows())
        .map(|i| MatchRow {
            tenant: tenant.value(i).to_owned(),
            mailbox: mailbox.value(i).to_owned(),
            message_id: message.value(i).to_owned(),
            custodian: custodian.value(i).to_owned(),
            thread_id: thread.is_valid(i).then(|| thread.value(i).to_owned()),
            patient_refs: string_list(refs, i),
            labels: string_list(labels, i),
            landed_at: landed
                .filter(|a| a.is_valid(i))
                .and_then(|a| DateTime::<Utc>::from_timestamp_micros(a.value(i))),
        })
        .collect())
}

/// Whether an event with `keys` applies to the record `row`: every key the event carries must
/// match, and it must carry at least one key besides the tenant (an event naming only a tenant
/// would re-date every record of the organisation: it matches nothing). Document and BA ids
/// are not columns of `records`: they match the labels `document:<id>` / `ba:<id>` set on the
/// copy by the mail system (a document id also matches the message id that distributed it).
pub fn matches(keys: &EventKeys, row: &MatchRow) -> bool {
    let k = keys;
    if k.document_id.is_none()
        && k.ba_id.is_none()
        && k.patient_mrn.is_none()
        && k.thread_id.is_none()
        && k.custodian.is_none()
        && k.message_id.is_none()
    {
        return false;
    }
    let label = |prefix: &str, id: &str| {
        row.labels.iter().any(|l| {
            l.strip_prefix(prefix)
                .is_some_and(|rest| rest.eq_ignore_ascii_case(id))
        })
    };
    k.tenant.as_ref().is_none_or(|t| *t == row.tenant)
        && k.document_id
            .as_ref()
            .is_none_or(|d| label("document:", d) || *d == row.message_id)
        && k.ba_id.as_ref().is_none_or(|b| label("ba:", b))
        && k.patient_mrn
            .as_ref()
            .is_none_or(|m| row.patient_refs.iter().any(|r| r == m))
        && k.thread_id
            .as_ref()
            .is_none_or(|t| row.thread_id.as_deref() == Some(t.as_str()))
        && k.custodian.as_ref().is_none_or(|c| {
            c.eq_ignore_ascii_case(&row.custodian) || c.eq_ignore_ascii_case(&row.mailbox)
        })
        && k.message_id.as_ref().is_none_or(|m| *m == row.message_id)
}

/// A filter on `records` that every row an event of `events` matches passes: the rows whose
/// message id, thread, patient references or custodian/mailbox (lower-cased) are among those the
/// events carry (each event contributes the most selective key it carries; every key must
/// match, so a matching row has that one). A superset: [`matches`] decides. `None` when some
/// event carries only document or BA ids (they match labels case-insensitively: every row is
/// read). An event naming only a tenant matches nothing and adds nothing.
pub fn key_filter(events: &[StoredEvent]) -> Option<datafusion::logical_expr::Expr> {
    use datafusion::functions::expr_fn::lower;
    use datafusion::functions_nested::expr_fn::{array_has_any, make_array};
    let (mut messages, mut threads, mut patients, mut custodians) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    for e in events {
        let k = &e.message.keys;
        if let Some(m) = &k.message_id {
            messages.insert(m.clone());
        } else if let Some(t) = &k.thread_id {
            threads.insert(t.clone());
        } else if let Some(p) = &k.patient_mrn {
            patients.insert(p.clone());
        } else if let Some(c) = &k.custodian {
            custodians.insert(c.to_lowercase());
        } else if k.document_id.is_some() || k.ba_id.is_some() {
            return None;
        }
    }
    let list = |set: BTreeSet<String>| set.into_iter().map(lit).collect::<Vec<_>>();
    let mut parts = Vec::new();
    if !messages.is_empty() {
        parts.push(col(columns::MESSAGE_ID).in_list(list(messages), false));
    }
    if !threads.is_empty() {
        parts.push(col(columns::THREAD_ID).in_list(list(threads), false));
    }
    if !patients.is_empty() {
        parts.push(array_has_any(
            col(columns::PATIENT_REFS),
            make_array(list(patients)),
        ));
    }
    if !custodians.is_empty() {
        let custodians = list(custodians);
        parts.push(
            lower(col(columns::CUSTODIAN))
                .in_list(custodians.clone(), false)
                .or(lower(col(columns::MAILBOX)).in_list(custodians, false)),
        );
    }
    Some(
        parts
            .into_iter()
            .reduce(datafusion::logical_expr::Expr::or)
            .unwrap_or(lit(false)),
    )
}

/// A date helper for tests and callers: the event's date.
pub fn event_date(e: &StoredEvent) -> NaiveDate {
    e.message.date
}

/// What [`apply_events`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsApplied {
    /// Per event id: records matched, and of those, records whose row changed.
    pub per_event: std::collections::BTreeMap<String, (u64, u64)>,
    /// Rows rewritten.
    pub rows_changed: u64,
    /// The `records` version committed (`None`: nothing committed).
    pub version: Option<u64>,
}

/// Re-schedules every landed record `events` match, under `policy`, and writes the changed
/// rows with `txns` in ONE commit (a MERGE; with no row to change, `txns` alone are committed
/// through [`retain_lake::RecordsTable::fence`], one per app id). Events already recorded on
/// a row (by id) change nothing, so a replay is harmless. With `landed_since`, only records
/// landed at or after it are looked at (the landing-window re-check).
pub async fn apply_events(
    records: &mut retain_lake::RecordsTable,
    policy: &retain_policy::Policy,
    events: &[StoredEvent],
    txns: Vec<Transaction>,
    landed_since: Option<DateTime<Utc>>,
) -> Result<EventsApplied> {
    use futures::StreamExt as _;
    let mut out = EventsApplied::default();
    for e in events {
        out.per_event.entry(e.message.event_id.clone()).or_default();
    }
    records.refresh().await?;
    let mut wanted: Vec<&str> = crate::rows::RECOMPUTE_COLUMNS.to_vec();
    wanted.extend(crate::rows::MATCH_COLUMNS);
    let landed = landed_since.map(|t| {
        col(columns::LANDED_AT).gt_eq(lit(datafusion::scalar::ScalarValue::TimestampMicrosecond(
            Some(t.timestamp_micros()),
            Some("UTC".into()),
        )))
    });
    let filter = match (landed, key_filter(events)) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    };
    let mut updates = Vec::new();
    if !events.is_empty() {
        let applied: Vec<crate::schedule::AppliedEvent> = events
            .iter()
            .map(|e| crate::schedule::AppliedEvent::from_message(&e.message))
            .collect();
        let mut stream =
            crate::recompute::scan_records(records.delta_table(), &wanted, filter).await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let views = crate::rows::row_views(&batch)?;
            let keys = match_rows(&batch)?;
            let mut builder = crate::rows::UpdateBuilder::new();
            for (row, m) in views.iter().zip(&keys) {
                let hits: Vec<usize> = events
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| matches(&e.message.keys, m))
                    .map(|(i, _)| i)
                    .collect();
                if hits.is_empty() {
                    continue;
                }
                let extra: Vec<_> = hits.iter().map(|&i| applied[i].clone()).collect();
                let r = crate::recompute::recompute(policy, row, &extra);
                for &i in &hits {
                    let c = out
                        .per_event
                        .entry(events[i].message.event_id.clone())
                        .or_default();
                    c.0 += 1;
                    c.1 += u64::from(r.changed);
                }
                if r.changed {
                    builder.push(&row.record_key, &r.decision);
                    out.rows_changed += 1;
                }
            }
            if !builder.is_empty() {
                updates.push(builder.finish()?);
            }
        }
    }
    if !updates.is_empty() {
        let properties = retain_lake::deltalake::kernel::transaction::CommitProperties::default()
            .with_application_transactions(txns)
            .with_metadata([(
                "retain".to_owned(),
                serde_json::json!({
                    "appId": "retain-events",
                    "events": out.per_event.keys().collect::<Vec<_>>(),
                    "rows": out.rows_changed,
                }),
            )]);
        out.version = Some(
            crate::recompute::merge_updates(records.delta_table(), updates, properties).await?,
        );
        records.refresh().await?;
    } else {
        for t in txns {
            out.version = Some(records.fence(&t.app_id, t.version).await?);
        }
    }
    Ok(out)
}
