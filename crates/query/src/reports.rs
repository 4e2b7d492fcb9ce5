//! The standard reports (`docs/reports.md`): `inventory`, `forecast`, `holds`, `disposals` and
//! `access`, each a few read-only queries over a [`Catalog`] shaped into titled sections of
//! Arrow batches (and, for `forecast`, a chart). Rendering them as text, CSV, JSON or HTML is
//! [`crate::render`]'s job; a SQL endpoint can serve the sections as they are.
//!
//! Every query goes through [`Catalog::plan`], so the catalog's read-only options apply and the
//! tables each report reads are known (for the audit trail). Every section is sorted on
//! columns that identify its rows: the same lake gives the same report, byte for byte.
//!
//! No report selects a column that can hold PHI (addresses, subjects, attachment names,
//! patient references, a hold's matter, reason or scope). `holds` names custodians: they are
//! mailbox names, which records managers need to act on a hold.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{Datelike as _, Days, Months, NaiveDate};
use datafusion::arrow::array::{ArrayRef, AsArray, Date32Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Int64Type, Schema};
use datafusion::error::DataFusionError;

use crate::catalog::Catalog;
use crate::error::{Error, Result};

/// How many months `forecast` covers, from the as-of month.
pub const FORECAST_MONTHS: u32 = 24;

/// How many days of entries `access` lists one by one (up to and including the as-of date).
pub const ACCESS_DETAIL_DAYS: u64 = 90;

/// The audit actions `access` counts as reading the lake.
pub const ACCESS_ACTIONS: [&str; 4] = ["sql_query", "export", "patient_access", "hold_previewed"];

/// A standard report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Report {
    /// Records by category, jurisdiction and governing rule; the unclassified backlog.
    Inventory,
    /// Records coming due per month for the next 24 months, by category.
    Forecast,
    /// Active holds: records covered, custodians, age.
    Holds,
    /// What was disposed of when, under which manifest and rule.
    Disposals,
    /// Who read what, from the audit trail.
    Access,
}

impl Report {
    /// Every report, in the order the docs list them.
    pub const ALL: [Report; 5] = [
        Report::Inventory,
        Report::Forecast,
        Report::Holds,
        Report::Disposals,
        Report::Access,
    ];

    /// The report's name on the command line (`inventory`).
    pub fn name(self) -> &'static str {
        match self {
            Report::Inventory => "inventory",
            Report::Forecast => "forecast",
            Report::Holds => "holds",
            Report::Disposals => "disposals",
            Report::Access => "access",
        }
    }

    /// The names of all reports, comma-separated (for error messages).
    pub fn names() -> String {
        Report::ALL.map(Report::name).join(", ")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Report {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        Report::ALL
            .into_iter()
            .find(|r| r.name() == wanted)
            .ok_or_else(|| Error::Argument {
                reason: format!("unknown report `{s}`; the reports are: {}", Report::names()),
            })
    }
}

/// One titled table of a report.
#[derive(Debug, Clone)]
pub struct Section {
    /// The heading (`By category`).
    pub heading: String,
    /// The rows, in report order (possibly none: the schema still names the columns).
    pub batch: RecordBatch,
}

/// One series of a bar chart: a name (a category) and one value per bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// What the series counts (shown in the legend).
    pub name: String,
    /// One value per label of the chart, in label order.
    pub values: Vec<u64>,
}

/// A stacked bar chart: one bar per label, one segment per series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// The chart's title.
    pub title: String,
    /// The bars' labels, left to right (`2026-12`).
    pub labels: Vec<String>,
    /// What the bars count (the y axis).
    pub y_label: String,
    /// The stacked series, bottom to top (and in legend order).
    pub series: Vec<Series>,
}

impl Chart {
    /// The height of each bar: the sum of its segments.
    pub fn totals(&self) -> Vec<u64> {
        (0..self.labels.len())
            .map(|i| self.series.iter().map(|s| s.values[i]).sum())
            .collect()
    }
}

/// A report, run: its sections (and chart), and what it read.
#[derive(Debug, Clone)]
pub struct ReportOutput {
    /// Which report.
    pub report: Report,
    /// Its title, with the period it covers.
    pub title: String,
    /// The as-of date it was run for.
    pub as_of: NaiveDate,
    /// The day the catalog took as today (holds in force and disposal cut-offs are as of it).
    pub today: NaiveDate,
    /// Notes on reading it (what a column means, what is left out), one sentence each.
    pub notes: Vec<String>,
    /// The sections, in order.
    pub sections: Vec<Section>,
    /// A chart of the data (`forecast` only).
    pub chart: Option<Chart>,
    /// The lake tables the report read, sorted.
    pub tables: Vec<String>,
    /// Hex SHA-256 of each query it ran (as the catalog printed it back), in order: what the
    /// audit trail records for it.
    pub queries: Vec<String>,
}

impl ReportOutput {
    /// Rows over all sections.
    pub fn rows(&self) -> usize {
        self.sections.iter().map(|s| s.batch.num_rows()).sum()
    }
}

/// Collects sections from queries and remembers what they read.
struct Runner<'a> {
    catalog: &'a Catalog,
    tables: BTreeSet<String>,
    queries: Vec<String>,
    sections: Vec<Section>,
}

impl Runner<'_> {
    /// Runs one query and returns its rows as one batch.
    async fn query(&mut self, sql: &str) -> Result<RecordBatch> {
        let statements = self.catalog.plan(sql).await?;
        let [statement] = statements.as_slice() else {
            return Err(Error::Argument {
                reason: format!("a report query is one statement, not {}", statements.len()),
            });
        };
        let batches = self.catalog.execute(statement).await?;
        self.tables.extend(statement.tables.iter().cloned());
        self.queries.push(statement.sha256.clone());
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => Arc::new(statement.plan().schema().as_arrow().clone()),
        };
        concat_batches(&schema, &batches).map_err(arrow("collecting a report section"))
    }

    /// Runs one query into a section.
    async fn section(&mut self, heading: &str, sql: &str) -> Result<RecordBatch> {
        let batch = self.query(sql).await?;
        self.push(heading, batch.clone());
        Ok(batch)
    }

    fn push(&mut self, heading: &str, batch: RecordBatch) {
        self.sections.push(Section {
            heading: heading.to_owned(),
            batch,
        });
    }
}

fn arrow(doing: &str) -> impl Fn(datafusion::arrow::error::ArrowError) -> Error + '_ {
    move |e| Error::Execute {
        doing: doing.to_owned(),
        source: DataFusionError::ArrowError(Box::new(e), None),
    }
}

/// Runs `report` over the catalog as of `as_of` (see `docs/reports.md` for what each report
/// selects and how the as-of date applies).
pub async fn run_report(
    catalog: &Catalog,
    report: Report,
    as_of: NaiveDate,
) -> Result<ReportOutput> {
    let mut r = Runner {
        catalog,
        tables: BTreeSet::new(),
        queries: Vec::new(),
        sections: Vec::new(),
    };
    let today = catalog.today();
    let (title, notes, chart) = match report {
        Report::Inventory => inventory(&mut r, as_of).await?,
        Report::Forecast => forecast(&mut r, as_of).await?,
        Report::Holds => holds(&mut r, as_of).await?,
        Report::Disposals => disposals(&mut r, as_of).await?,
        Report::Access => access(&mut r, as_of).await?,
    };
    Ok(ReportOutput {
        report,
        title,
        as_of,
        today,
        notes,
        sections: r.sections,
        chart,
        tables: r.tables.into_iter().collect(),
        queries: r.queries,
    })
}

type Shaped = (String, Vec<String>, Option<Chart>);

/// `sum(CASE WHEN cond THEN 1 ELSE 0 END) AS name`.
fn count_if(cond: &str, name: &str) -> String {
    format!("sum(CASE WHEN {cond} THEN 1 ELSE 0 END) AS {name}")
}

fn by_status() -> String {
    ["scheduled", "indefinite", "pending"]
        .map(|s| count_if(&format!("retention_status = '{s}'"), s))
        .join(", ")
}

async fn inventory(r: &mut Runner<'_>, as_of: NaiveDate) -> Result<Shaped> {
    let statuses = by_status();
    let held = count_if("is_held()", "on_hold");
    r.section(
        "By category",
        &format!(
            "WITH c AS (SELECT category, count(*) AS records, {statuses}, {held}, \
             sum(size_bytes) AS bytes FROM records GROUP BY category), \
             d AS (SELECT category, count(*) AS due FROM disposal_candidates('{as_of}') GROUP BY category) \
             SELECT c.category, c.records, c.scheduled, c.indefinite, c.pending, c.on_hold, \
             coalesce(d.due, 0) AS due, c.bytes \
             FROM c LEFT JOIN d ON c.category = d.category ORDER BY c.records DESC, c.category"
        ),
    )
    .await?;
    r.section(
        "By jurisdiction",
        &format!(
            "SELECT coalesce(jurisdiction, '(none)') AS jurisdiction, count(*) AS records, {statuses} \
             FROM records GROUP BY 1 ORDER BY 2 DESC, 1"
        ),
    )
    .await?;
    r.section(
        "By governing rule",
        "SELECT coalesce(governing, '(none)') AS governing, category, retention_status AS status, \
         count(*) AS records, min(retain_until) AS earliest, max(retain_until) AS latest \
         FROM records GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3",
    )
    .await?;
    let phi = count_if(
        "phi_mrn OR phi_icd10 OR phi_dob OR phi_patient_terms",
        "phi_flagged",
    );
    r.section(
        "Unclassified backlog, by year created",
        &format!(
            "SELECT CAST(date_part('year', created_date) AS BIGINT) AS created_year, \
             count(*) AS records, {phi}, {held}, sum(size_bytes) AS bytes \
             FROM records WHERE category = 'unclassified' GROUP BY 1 ORDER BY 1 NULLS LAST"
        ),
    )
    .await?;
    Ok((
        "Inventory: records by category, jurisdiction and governing rule".to_owned(),
        vec![
            format!(
                "due: scheduled records a disposal plan as of {as_of} would select (cut-off never after today, held records excluded)."
            ),
            "on_hold: records an active hold covers now.".to_owned(),
            "Unclassified records need a records manager's review; created_year is empty when the message has no date.".to_owned(),
        ],
        None,
    ))
}

fn month_start(d: NaiveDate) -> NaiveDate {
    d.with_day(1).expect("every month has a first day")
}

async fn forecast(r: &mut Runner<'_>, as_of: NaiveDate) -> Result<Shaped> {
    let start = month_start(as_of);
    let end = start
        .checked_add_months(Months::new(FORECAST_MONTHS))
        .ok_or_else(|| Error::Argument {
            reason: format!("as of {as_of} is too far in the future for a forecast"),
        })?;
    let months: Vec<NaiveDate> = (0..FORECAST_MONTHS)
        .map(|i| start + Months::new(i))
        .collect();
    let held = count_if("is_held()", "held");
    let long = r
        .query(&format!(
            "SELECT CAST(date_trunc('month', CAST(retain_until AS TIMESTAMP)) AS DATE) AS month, \
             category, count(*) AS records, {held} \
             FROM records WHERE retention_status = 'scheduled' \
             AND retain_until >= DATE '{start}' AND retain_until < DATE '{end}' \
             GROUP BY 1, 2 ORDER BY 1, 2"
        ))
        .await?;

    // Pivot: one row per month (all of them, zeros included), one column per category.
    let doing = "shaping the forecast";
    let month_col = long.column(0).as_primitive::<Date32Type>();
    let category_col = cast(long.column(1), &DataType::Utf8).map_err(arrow(doing))?;
    let category_col = category_col.as_string::<i32>();
    let records_col = long.column(2).as_primitive::<Int64Type>();
    let held_col = long.column(3).as_primitive::<Int64Type>();
    let mut cells: BTreeMap<(NaiveDate, String), (i64, i64)> = BTreeMap::new();
    let mut categories = BTreeSet::new();
    for i in 0..long.num_rows() {
        let month = month_col.value_as_date(i).ok_or_else(|| Error::Argument {
            reason: "a forecast month is out of range".to_owned(),
        })?;
        let category = category_col.value(i).to_owned();
        categories.insert(category.clone());
        cells.insert((month, category), (records_col.value(i), held_col.value(i)));
    }
    let total = |m: NaiveDate, pick: fn(&(i64, i64)) -> i64| -> i64 {
        cells
            .range((m, String::new())..)
            .take_while(|((month, _), _)| *month == m)
            .map(|(_, v)| pick(v))
            .sum()
    };
    let mut fields = vec![
        Field::new("month", DataType::Date32, false),
        Field::new("records", DataType::Int64, false),
        Field::new("held", DataType::Int64, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Date32Array::from_iter_values(
            months.iter().map(|m| Date32Type::from_naive_date(*m)),
        )),
        Arc::new(Int64Array::from_iter_values(
            months.iter().map(|m| total(*m, |v| v.0)),
        )),
        Arc::new(Int64Array::from_iter_values(
            months.iter().map(|m| total(*m, |v| v.1)),
        )),
    ];
    let mut series = Vec::new();
    for c in &categories {
        let values: Vec<i64> = months
            .iter()
            .map(|m| cells.get(&(*m, c.clone())).map_or(0, |v| v.0))
            .collect();
        fields.push(Field::new(c, DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from(values.clone())));
        series.push(Series {
            name: c.clone(),
            values: values.into_iter().map(|v| v.max(0) as u64).collect(),
        });
    }
    let pivot =
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow(doing))?;
    r.push("Due per month", pivot);
    r.push("Due per month, by category", long);

    let last = months.last().copied().unwrap_or(start);
    let span = format!("{} to {}", start.format("%Y-%m"), last.format("%Y-%m"));
    Ok((
        format!("Forecast: records coming due per month, {span}"),
        vec![
            "A record comes due in the month of its retain_until date; only scheduled records have one (indefinite and pending records are not forecast).".to_owned(),
            format!(
                "The forecast starts at the as-of month ({}), so it includes records dated earlier in that month.",
                start.format("%Y-%m")
            ),
            "held: records an active hold covers now; they will not be disposed of while it stays.".to_owned(),
        ],
        Some(Chart {
            title: format!("Records coming due per month, {span}, by category"),
            labels: months.iter().map(|m| m.format("%Y-%m").to_string()).collect(),
            y_label: "records".to_owned(),
            series,
        }),
    ))
}

async fn holds(r: &mut Runner<'_>, as_of: NaiveDate) -> Result<Shaped> {
    // Holds placed after the as-of date did not exist then.
    let placed = format!("CAST(h.created_at AS DATE) <= DATE '{as_of}'");
    r.section(
        "Active holds",
        &format!(
            "WITH cov AS (SELECT c.hold_id, count(*) AS records, count(DISTINCT r.custodian) AS custodians \
             FROM hold_coverage c JOIN records r ON r.record_key = c.record_key GROUP BY c.hold_id) \
             SELECT h.hold_id, h.created_by, CAST(h.created_at AS DATE) AS created, \
             CAST((to_unixtime(CAST(DATE '{as_of}' AS TIMESTAMP)) - to_unixtime(date_trunc('day', h.created_at))) / 86400 AS BIGINT) AS age_days, \
             coalesce(cov.records, 0) AS records, coalesce(cov.custodians, 0) AS custodians \
             FROM active_holds h LEFT JOIN cov ON h.hold_id = cov.hold_id \
             WHERE {placed} ORDER BY h.created_at, h.hold_id"
        ),
    )
    .await?;
    // In force on the as-of date, released since: no coverage (only active holds are
    // evaluated), but a report as of a past date must not leave them out.
    r.section(
        "Released after the as-of date",
        &format!(
            "SELECT hold_id, created_by, CAST(created_at AS DATE) AS created, \
             CAST(released_at AS DATE) AS released, released_by, release_approved_by \
             FROM current_holds WHERE status = 'released' \
             AND CAST(created_at AS DATE) <= DATE '{as_of}' \
             AND CAST(released_at AS DATE) > DATE '{as_of}' \
             ORDER BY created_at, hold_id"
        ),
    )
    .await?;
    for (heading, column) in [
        ("Custodians on hold", "custodian"),
        ("Held records by category", "category"),
    ] {
        r.section(
            heading,
            &format!(
                "SELECT hold_id, {column}, records FROM ( \
                 SELECT h.created_at, c.hold_id, r.{column}, count(*) AS records \
                 FROM hold_coverage c JOIN records r ON r.record_key = c.record_key \
                 JOIN active_holds h ON h.hold_id = c.hold_id WHERE {placed} \
                 GROUP BY h.created_at, c.hold_id, r.{column}) \
                 ORDER BY created_at, hold_id, records DESC, {column}"
            ),
        )
        .await?;
    }
    Ok((
        "Holds: active holds, records covered, custodians".to_owned(),
        vec![
            format!(
                "The holds in force on {}, placed on or before {as_of}; age_days counts from the day a hold was placed to {as_of}.",
                r.catalog.today()
            ),
            "records: records the hold covers now; a record under two holds counts for each.".to_owned(),
            format!("Released after the as-of date: holds in force on {as_of} and released since (their coverage is not evaluated: only active holds are)."),
            "Custodians are mailbox names, shown so records managers can act on a hold; a hold's matter, reason and scope can name a patient and are left out (retain hold show ID prints them).".to_owned(),
        ],
        None,
    ))
}

async fn disposals(r: &mut Runner<'_>, as_of: NaiveDate) -> Result<Shaped> {
    r.section(
        "Disposed records by manifest and rule",
        &format!(
            "SELECT disposed_on, manifest_id, governing, category, records, earliest, latest FROM ( \
             SELECT min(disposed_at) AS first_at, CAST(disposed_at AS DATE) AS disposed_on, manifest_id, \
             coalesce(governing, '(none)') AS governing, category, count(*) AS records, \
             min(retain_until) AS earliest, max(retain_until) AS latest \
             FROM disposals WHERE CAST(disposed_at AS DATE) <= DATE '{as_of}' \
             GROUP BY 2, 3, 4, 5) \
             ORDER BY first_at, manifest_id, records DESC, governing, category"
        ),
    )
    .await?;
    r.section(
        "Manifests",
        &format!(
            "WITH cur AS (SELECT manifest_id, max(revision) AS revision, min(recorded_at) AS planned_at, \
             max(recorded_at) AS last_at FROM manifests WHERE CAST(recorded_at AS DATE) <= DATE '{as_of}' \
             GROUP BY manifest_id), \
             d AS (SELECT manifest_id, count(*) AS disposed FROM disposals \
             WHERE CAST(disposed_at AS DATE) <= DATE '{as_of}' GROUP BY manifest_id) \
             SELECT cur.manifest_id, m.status, \
             CAST(regexp_match(m.content, '\"as_of\":\"([0-9-]+)\"')[1] AS DATE) AS manifest_as_of, \
             regexp_match(m.content, '\"planned_by\":\"((?:[^\"\\\\]|\\\\.)*)\"')[1] AS planned_by, \
             CAST(cur.planned_at AS DATE) AS planned_on, m.approved_by, \
             CAST(cur.last_at AS DATE) AS status_on, coalesce(d.disposed, 0) AS disposed \
             FROM cur JOIN manifests m ON m.manifest_id = cur.manifest_id AND m.revision = cur.revision \
             LEFT JOIN d ON d.manifest_id = cur.manifest_id \
             ORDER BY cur.planned_at, cur.manifest_id"
        ),
    )
    .await?;
    Ok((
        format!("Disposals: what was disposed of, under which manifest and rule, to {as_of}"),
        vec![
            "governing: the obligation whose retention period had ended (the legal basis of the disposal); earliest and latest: the range of the records' retain_until dates.".to_owned(),
            "Manifests: each manifest as it stood on the as-of date (planned, approved or executed), with its own as-of date and who planned and approved it.".to_owned(),
        ],
        None,
    ))
}

async fn access(r: &mut Runner<'_>, as_of: NaiveDate) -> Result<Shaped> {
    let actions = ACCESS_ACTIONS.map(|a| format!("'{a}'")).join(", ");
    let up_to = format!("action IN ({actions}) AND CAST(at AS DATE) <= DATE '{as_of}'");
    let from = as_of - Days::new(ACCESS_DETAIL_DAYS - 1);
    r.section(
        "By actor",
        &format!(
            "SELECT actor, action, target, count(*) AS entries, CAST(min(at) AS DATE) AS first, \
             CAST(max(at) AS DATE) AS last FROM audit WHERE {up_to} \
             GROUP BY actor, action, target ORDER BY actor, action, target"
        ),
    )
    .await?;
    r.section(
        &format!("Entries, {from} to {as_of}"),
        &format!(
            "SELECT seq, at, actor, action, target, \
             coalesce(regexp_match(details, '\"query_sha256\":\"([0-9a-f]{{64}})\"')[1], '') AS query_sha256 \
             FROM audit WHERE {up_to} AND CAST(at AS DATE) >= DATE '{from}' ORDER BY seq"
        ),
    )
    .await?;
    Ok((
        format!("Access: who read the lake, to {as_of}"),
        vec![
            format!(
                "Audit entries of the actions that read the lake ({}).",
                ACCESS_ACTIONS.join(", ")
            ),
            "target: the tables a query read, or the report or hold it concerned; query_sha256 identifies a query without its text (the text can hold PHI).".to_owned(),
        ],
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_parse_and_unknown_ones_list_the_valid_names() {
        for r in Report::ALL {
            assert_eq!(r.name().parse::<Report>().unwrap(), r);
        }
        assert_eq!(" Forecast ".parse::<Report>().unwrap(), Report::Forecast);
        let e = "inventroy".parse::<Report>().unwrap_err();
        assert!(e.is_bad_input());
        assert_eq!(
            e.to_string(),
            "unknown report `inventroy`; the reports are: inventory, forecast, holds, disposals, access"
        );
    }

    #[test]
    fn chart_totals_stack_the_series() {
        let c = Chart {
            title: "t".into(),
            labels: vec!["a".into(), "b".into()],
            y_label: "n".into(),
            series: vec![
                Series {
                    name: "x".into(),
                    values: vec![1, 0],
                },
                Series {
                    name: "y".into(),
                    values: vec![2, 5],
                },
            ],
        };
        assert_eq!(c.totals(), [3, 5]);
    }
}
