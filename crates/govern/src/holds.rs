//! The `holds` Delta table: litigation holds as data, one row per revision (created, then
//! released), never updated in place.
//!
//! A hold is in force from the moment [`HoldsTable::create`] returns: the hold's row is
//! committed to `holds`, then a fence (`txn` `retain-holds` = the holds table version) is
//! committed to `records`. A disposal re-reads the holds and deletes under the same fence, so a
//! disposal that read the holds before this one existed cannot commit after it (Delta refuses
//! it as a conflict and it re-reads). `docs/holds.md` walks through the window.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use retain_lake::deltalake::DeltaTable;
use retain_lake::deltalake::kernel::Transaction;
use retain_lake::{RecordsTable, append_batch, records_schema};
use serde::Serialize;

use crate::coverage::HoldSet;
use crate::error::{Error, Result};
use crate::scope::HoldScope;
use crate::table::{lake, open, query, read, refresh};

/// The table's name.
pub const HOLDS_TABLE: &str = "holds";
/// The fence a hold commits to `records`, and a disposal commits with its deletes.
pub const HOLDS_FENCE: &str = "retain-holds";

/// A hold's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    /// In force: covered records are never disposed of.
    Active,
    /// Released with an approved justification: covered records fall back to their schedule.
    Released,
}

impl HoldStatus {
    /// The stored code.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Released => "released",
        }
    }
}

/// A hold as it stands (its latest revision).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hold {
    /// `H-YYYYMMDD-xxxxxxxx`.
    pub id: String,
    /// 0 when created, 1 when released.
    pub revision: i64,
    /// Active or released.
    pub status: HoldStatus,
    /// The matter (case) the hold belongs to.
    pub matter: String,
    /// Why it was placed.
    pub reason: String,
    /// What it covers.
    pub scope: HoldScope,
    /// The scope compiled to SQL over `records`.
    pub predicate: String,
    /// Who placed it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Who released it.
    pub released_by: Option<String>,
    /// Who approved the release (never the creator).
    pub release_approved_by: Option<String>,
    /// Why it was released.
    pub release_justification: Option<String>,
    /// When.
    pub released_at: Option<DateTime<Utc>>,
}

/// What a new hold needs.
#[derive(Debug, Clone)]
pub struct NewHold {
    /// The matter.
    pub matter: String,
    /// Why.
    pub reason: String,
    /// Who places it.
    pub created_by: String,
    /// What it covers.
    pub scope: HoldScope,
}

/// A release request.
#[derive(Debug, Clone)]
pub struct Release {
    /// Who releases.
    pub released_by: String,
    /// Who approved (must differ from the hold's creator and from the releaser).
    pub approved_by: String,
    /// Why (required).
    pub justification: String,
}

/// The Arrow schema of `holds`.
pub fn holds_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
        let time = |name: &str, nullable: bool| {
            Field::new(
                name,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                nullable,
            )
        };
        Arc::new(Schema::new(vec![
            text("hold_id", false),
            Field::new("revision", DataType::Int64, false),
            text("status", false),
            text("matter", false),
            text("reason", false),
            text("scope", false),
            text("predicate", false),
            text("created_by", false),
            time("created_at", false),
            text("released_by", true),
            text("release_approved_by", true),
            text("release_justification", true),
            time("released_at", true),
            time("recorded_at", false),
        ]))
    });
    Arc::clone(&SCHEMA)
}

/// The `holds` table.
#[derive(Debug)]
pub struct HoldsTable {
    table: DeltaTable,
    url: String,
}

impl HoldsTable {
    /// Opens (or creates) the table at `location`.
    pub async fn open_or_create(
        location: &str,
        storage_options: HashMap<String, String>,
    ) -> Result<Self> {
        let (table, url) = open(
            location,
            storage_options,
            HOLDS_TABLE,
            "Retain litigation holds: one row per revision (docs/holds.md)",
            &holds_schema(),
        )
        .await?;
        Ok(HoldsTable { table, url })
    }

    /// The table URL (credentials removed).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Places a hold: validates and compiles its scope, commits its row, then fences `records`
    /// (see the module docs). The hold is in force when this returns.
    pub async fn create(
        &mut self,
        records: &mut RecordsTable,
        new: NewHold,
        now: DateTime<Utc>,
    ) -> Result<Hold> {
        for (what, value) in [
            ("matter", &new.matter),
            ("reason", &new.reason),
            ("created by", &new.created_by),
        ] {
            if value.trim().is_empty() {
                return Err(Error::Refused {
                    reason: format!("a hold needs a {what}"),
                });
            }
        }
        let predicate = new.scope.to_predicate()?;
        HoldSet::compile(&records_schema(), [("(new)", predicate.as_str())])?;
        let id = format!("H-{}-{}", now.format("%Y%m%d"), &uuid_tail(),);
        let hold = Hold {
            id,
            revision: 0,
            status: HoldStatus::Active,
            matter: new.matter.trim().to_owned(),
            reason: new.reason.trim().to_owned(),
            scope: new.scope,
            predicate,
            created_by: new.created_by.trim().to_owned(),
            created_at: truncate(now),
            released_by: None,
            release_approved_by: None,
            release_justification: None,
            released_at: None,
        };
        let txn = Transaction::new(format!("retain-hold-{}", hold.id), 0);
        let version = self.append(&hold, now, txn).await?;
        let fence = i64::try_from(version).unwrap_or(i64::MAX);
        records.fence(HOLDS_FENCE, fence).await.map_err(lake)?;
        Ok(hold)
    }

    /// Releases hold `id`: refused without a justification and an approver other than the
    /// creator and the releaser, or when the hold is unknown or already released.
    pub async fn release(
        &mut self,
        id: &str,
        release: Release,
        now: DateTime<Utc>,
    ) -> Result<Hold> {
        let refused = |reason: String| Error::Refused { reason };
        let justification = release.justification.trim();
        let approver = release.approved_by.trim();
        let releaser = release.released_by.trim();
        if justification.is_empty() {
            return Err(refused("a release needs a justification".to_owned()));
        }
        if approver.is_empty() || releaser.is_empty() {
            return Err(refused(
                "a release needs who releases and who approved it".to_owned(),
            ));
        }
        let mut hold = self
            .get(id)
            .await?
            .ok_or_else(|| refused(format!("no hold {id}")))?;
        if hold.status == HoldStatus::Released {
            return Err(refused(format!("hold {id} is already released")));
        }
        if approver.eq_ignore_ascii_case(&hold.created_by) {
            return Err(refused(format!(
                "the approver must not be the hold's creator ({})",
                hold.created_by
            )));
        }
        if approver.eq_ignore_ascii_case(releaser) {
            return Err(refused(
                "the approver must not be the one releasing".to_owned(),
            ));
        }
        hold.revision = 1;
        hold.status = HoldStatus::Released;
        hold.released_by = Some(releaser.to_owned());
        hold.release_approved_by = Some(approver.to_owned());
        hold.release_justification = Some(justification.to_owned());
        hold.released_at = Some(truncate(now));
        // Two concurrent releases of one hold carry the same txn: the second is refused.
        let txn = Transaction::new(format!("retain-hold-{id}"), 1);
        self.append(&hold, now, txn).await.map_err(|e| match e {
            Error::Lake(inner) if matches!(*inner, retain_lake::Error::Conflict { .. }) => {
                refused(format!("hold {id} was released concurrently"))
            }
            other => other,
        })?;
        Ok(hold)
    }

    /// Every hold as it stands, oldest first.
    pub async fn list(&mut self) -> Result<Vec<Hold>> {
        refresh(&mut self.table, &self.url).await?;
        let batches = read(&self.table, HOLDS_TABLE, None, &holds_schema()).await?;
        let mut latest: BTreeMap<String, Hold> = BTreeMap::new();
        for b in &batches {
            for hold in rows(b)? {
                match latest.get(&hold.id) {
                    Some(h) if h.revision >= hold.revision => {}
                    _ => {
                        latest.insert(hold.id.clone(), hold);
                    }
                }
            }
        }
        let mut holds: Vec<Hold> = latest.into_values().collect();
        holds.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(holds)
    }

    /// The active holds, compiled.
    pub async fn active(&mut self) -> Result<(Vec<Hold>, HoldSet)> {
        let active: Vec<Hold> = self
            .list()
            .await?
            .into_iter()
            .filter(|h| h.status == HoldStatus::Active)
            .collect();
        let set = HoldSet::compile(
            &records_schema(),
            active.iter().map(|h| (h.id.as_str(), h.predicate.as_str())),
        )?;
        Ok((active, set))
    }

    /// One hold as it stands.
    pub async fn get(&mut self, id: &str) -> Result<Option<Hold>> {
        Ok(self.list().await?.into_iter().find(|h| h.id == id))
    }

    /// The table version.
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or(0)
    }

    async fn append(&mut self, hold: &Hold, now: DateTime<Utc>, txn: Transaction) -> Result<u64> {
        let batch = batch(hold, now)?;
        append_batch(&mut self.table, &self.url, "retain-holds", batch, vec![txn])
            .await
            .map_err(lake)
    }
}

/// Eight hex digits of a v7 UUID's random part.
pub(crate) fn uuid_tail() -> String {
    let u = uuid::Uuid::now_v7().simple().to_string();
    u[u.len() - 8..].to_owned()
}

/// Microsecond precision, as stored.
pub(crate) fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

fn batch(h: &Hold, now: DateTime<Utc>) -> Result<RecordBatch> {
    let text = |v: &str| Arc::new(StringArray::from(vec![v])) as Arc<dyn Array>;
    let opt = |v: &Option<String>| Arc::new(StringArray::from(vec![v.clone()])) as Arc<dyn Array>;
    let time = |t: Option<DateTime<Utc>>| {
        Arc::new(
            TimestampMicrosecondArray::from(vec![t.map(|t| t.timestamp_micros())])
                .with_timezone("UTC"),
        ) as Arc<dyn Array>
    };
    let scope = serde_json::to_string(&h.scope).map_err(|e| query("encoding a hold scope", e))?;
    RecordBatch::try_new(
        holds_schema(),
        vec![
            text(&h.id),
            Arc::new(Int64Array::from(vec![h.revision])),
            text(h.status.as_str()),
            text(&h.matter),
            text(&h.reason),
            text(&scope),
            text(&h.predicate),
            text(&h.created_by),
            time(Some(h.created_at)),
            opt(&h.released_by),
            opt(&h.release_approved_by),
            opt(&h.release_justification),
            time(h.released_at),
            time(Some(now)),
        ],
    )
    .map_err(|e| query("building a holds row", e))
}

fn rows(b: &RecordBatch) -> Result<Vec<Hold>> {
    let bad = |column: &str| Error::Query {
        doing: format!("reading column `{column}` of the holds table"),
        source: "missing or mistyped".into(),
    };
    let text = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad(name))
    };
    let time = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| {
                c.as_primitive_opt::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
            })
            .ok_or_else(|| bad(name))
    };
    let (id, status, matter, reason, scope, predicate, created_by) = (
        text("hold_id")?,
        text("status")?,
        text("matter")?,
        text("reason")?,
        text("scope")?,
        text("predicate")?,
        text("created_by")?,
    );
    let (released_by, approved_by, justification) = (
        text("released_by")?,
        text("release_approved_by")?,
        text("release_justification")?,
    );
    let revision = b
        .column_by_name("revision")
        .and_then(|c| c.as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>())
        .ok_or_else(|| bad("revision"))?;
    let (created_at, released_at) = (time("created_at")?, time("released_at")?);
    let opt = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
    let at = |a: &TimestampMicrosecondArray, i: usize| {
        (!a.is_null(i))
            .then(|| DateTime::from_timestamp_micros(a.value(i)))
            .flatten()
    };
    (0..b.num_rows())
        .map(|i| {
            let scope: HoldScope = serde_json::from_str(scope.value(i))
                .map_err(|e| query(&format!("reading the scope of hold {}", id.value(i)), e))?;
            Ok(Hold {
                id: id.value(i).to_owned(),
                revision: revision.value(i),
                status: match status.value(i) {
                    "released" => HoldStatus::Released,
                    _ => HoldStatus::Active,
                },
                matter: matter.value(i).to_owned(),
                reason: reason.value(i).to_owned(),
                scope,
                predicate: predicate.value(i).to_owned(),
                created_by: created_by.value(i).to_owned(),
                created_at: at(created_at, i).unwrap_or_default(),
                released_by: opt(released_by, i),
                release_approved_by: opt(approved_by, i),
                release_justification: opt(justification, i),
                released_at: at(released_at, i),
            })
        })
        .collect()
}
