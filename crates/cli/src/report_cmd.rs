//! `retain report NAME`: one of the standard reports (`retain_query::reports`: inventory,
//! forecast, holds, disposals, access) over the lake, printed as a table, CSV, JSON or one
//! self-contained HTML page (`retain_query::render`); every run is audited as an `export`.
//!
//! Exit codes: 0 done; 2 an unknown report name (the message lists the valid ones), a bad
//! date, a lake root without `records`; 1 a failure (storage, the audit trail).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{NaiveDate, Utc};
use clap::{Args, ValueEnum};
use retain_lake::{AuditAction, AuditEntry};
use retain_query::reports::{Report, ReportOutput, run_report};
use retain_query::{Catalog, render};

use crate::sql_cmd::{open_for_reading, parse_size, query_error, reader};

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned tables for people, one per section.
    Table,
    /// CSV for spreadsheets: a `# heading` line, a header and rows per section.
    Csv,
    /// One JSON object with every section's rows.
    Json,
    /// One self-contained HTML page (inline CSS, an SVG chart for `forecast`).
    Html,
}

impl ReportFormat {
    fn name(self) -> &'static str {
        match self {
            ReportFormat::Table => "table",
            ReportFormat::Csv => "csv",
            ReportFormat::Json => "json",
            ReportFormat::Html => "html",
        }
    }
}

/// `retain report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The report: inventory, forecast, holds, disposals or access.
    #[arg(value_name = "NAME")]
    name: String,
    /// The day the report is for (YYYY-MM-DD; default: today). The forecast starts at its
    /// month; holds count their age to it; disposals and access stop at it.
    #[arg(long, value_name = "DATE", env = "RETAIN_REPORT_AS_OF")]
    as_of: Option<NaiveDate>,
    /// How the report is printed: table, csv, json or html.
    #[arg(
        long,
        value_enum,
        default_value = "table",
        env = "RETAIN_REPORT_FORMAT"
    )]
    format: ReportFormat,
    /// The lake root (folder, file:// or s3:// URL) with the records, holds, ... tables.
    #[arg(
        long,
        value_name = "ROOT",
        env = "RETAIN_LAKE_ROOT",
        default_value = "lake"
    )]
    lake: String,
    /// A configuration file for `[lake.storage]` options (RETAIN__LAKE__STORAGE__* also work).
    #[arg(long, value_name = "FILE", env = "RETAIN_CONFIG")]
    config: Option<PathBuf>,
    /// Who runs the report (for the audit trail; default: $USER).
    #[arg(long, value_name = "NAME", env = "RETAIN_REPORT_BY")]
    by: Option<String>,
    /// Memory the report's queries may hold (e.g. 512MiB, 2GiB); sorts and joins spill beyond.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "1GiB",
        env = "RETAIN_SQL_MEMORY_LIMIT",
        value_parser = parse_size
    )]
    memory_limit: usize,
}

/// Runs `retain report`.
pub fn run(args: ReportArgs) -> Result<ExitCode> {
    // An unknown name is refused before anything is opened.
    let report: Report = args.name.parse().map_err(query_error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(report_cmd(report, args))
}

async fn report_cmd(report: Report, a: ReportArgs) -> Result<ExitCode> {
    let (mut audit, catalog) = open_for_reading(&a.lake, a.config.clone(), a.memory_limit).await?;
    let as_of = a.as_of.unwrap_or_else(|| catalog.today());
    let by = reader(a.by.clone());

    let result = run_report(&catalog, report, as_of).await;
    let text = match &result {
        Ok(out) => Some(render_as(out, a.format)?),
        Err(_) => None,
    };
    // The entry is written before the report is shown: no unaudited reads.
    let entry = entry(&catalog, report, as_of, a.format, &by, result.as_ref().ok());
    audit
        .append(&[entry])
        .await
        .context("writing the export audit entry")?;
    result.map_err(query_error)?;
    if let Some(text) = text {
        out!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The report in `format`.
fn render_as(out: &ReportOutput, format: ReportFormat) -> Result<String> {
    match format {
        ReportFormat::Table => render::report_table(out),
        ReportFormat::Csv => render::report_csv(out),
        ReportFormat::Json => render::report_json(out),
        ReportFormat::Html => render::report_html(out),
    }
    .context("formatting the report")
}

/// The `export` audit entry of one run: the report, who, the tables and versions read, the
/// queries by hash, the rows; no values from the lake.
fn entry(
    catalog: &Catalog,
    report: Report,
    as_of: NaiveDate,
    format: ReportFormat,
    by: &str,
    out: Option<&ReportOutput>,
) -> AuditEntry {
    let tables: Vec<String> = out.map(|o| o.tables.clone()).unwrap_or_default();
    let versions: BTreeMap<&str, Option<u64>> = catalog
        .tables()
        .iter()
        .filter(|t| tables.contains(&t.name))
        .map(|t| (t.name.as_str(), t.version))
        .collect();
    let mut entry = AuditEntry::new(
        AuditAction::Export,
        by,
        Utc::now(),
        format!("report:{}", report.name()),
    )
    .with_details(&serde_json::json!({
        "report": report.name(),
        "as_of": as_of.to_string(),
        "format": format.name(),
        "destination": "stdout",
        "tables": tables,
        "versions": versions,
        "queries_sha256": out.map(|o| o.queries.clone()).unwrap_or_default(),
        "outcome": if out.is_some() { "ok" } else { "failed" },
        "rows": out.map(ReportOutput::rows),
    }));
    if let Some(v) = versions.get("records").copied().flatten() {
        entry = entry.with_table_version(v as i64);
    }
    entry
}
