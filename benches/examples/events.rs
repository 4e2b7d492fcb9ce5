//! Events and policy-change benchmark on a large `records` table (the 10M-row table the query
//! benchmark builds): how long the events stage takes to apply a batch of retention events,
//! and how long `retain policy diff` takes over every row. Figures go to docs/PERFORMANCE.md.
//!
//! ```sh
//! cargo run --release -p retain-benches --example queries -- --records 10000000   # builds the table
//! cargo run --release -p retain-benches --example events -- \
//!     --table target/bench-lake/records-10000000-11 --work target/bench-events
//! ```
//!
//! The table is copied to `--work` first (applying events rewrites rows). For each batch size
//! it times, on the same copy in the same run:
//! - **full scan**: what applying a batch cost before the key filter — every row's recompute
//!   and match columns read and every row matched against the batch (no write);
//! - **filtered scan**: the same with the key filter the stage now pushes into the scan;
//! - **apply**: `apply_events` as the events stage calls it (filtered scan, recompute, one MERGE
//!   commit).
//!
//! The batches are `discharged` events, one per patient (MRNs drawn from the table), dated
//! after every stored date so each one re-dates that patient's clinical records.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use chrono::{NaiveDate, Utc};
use clap::Parser;
use futures::StreamExt as _;
use retain_codec::{EventKeys, EventType, RetentionEventMessage};
use retain_events::PolicyChange;
use retain_events::events_table::{StoredEvent, apply_events, key_filter, match_rows};
use retain_events::rows::{MATCH_COLUMNS, RECOMPUTE_COLUMNS};
use retain_events::scan_records;
use retain_lake::RecordsTable;
use retain_lake::deltalake::arrow::array::{Array, AsArray};
use retain_lake::deltalake::datafusion::prelude::SessionContext;
use retain_model::EventKind;
use retain_policy::Policy;

#[derive(Parser, Debug)]
#[command(about = "Applying retention events and diffing a policy over a large records table")]
struct Args {
    /// The `records` table to copy (e.g. the query benchmark's).
    #[arg(long)]
    table: PathBuf,
    /// Where the copy goes (replaced).
    #[arg(long, default_value = "target/bench-events")]
    work: PathBuf,
    /// Batch sizes (events per batch) to time.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1000])]
    batches: Vec<usize>,
    /// Skip the policy diff.
    #[arg(long)]
    no_diff: bool,
}

/// An organisation's change to the built-in pack: administrative mail 1 year (was 3).
const CHANGED: &str = r#"
[[obligation]]
id = "org.administrative"
citation = "Records schedule RS-2: administrative mail kept 1 year"
source-quality = "organisational policy"
categories = ["administrative"]
jurisdictions = ["US"]
retain = { years = 1, from = "created" }
"#;

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let copy = args.work.join("records");
    if args.work.exists() {
        std::fs::remove_dir_all(&args.work)?;
    }
    std::fs::create_dir_all(&args.work)?;
    let started = Instant::now();
    copy_dir(&args.table, &copy)?;
    eprintln!(
        "copied the table in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let location = copy.to_str().context("the work path is not UTF-8")?;
    let mut records = RecordsTable::open_or_create(location, Default::default()).await?;
    let policy = Policy::builtin()?;
    let rows = count(&records).await?;
    println!("table: {rows} rows, version {}", records.version());

    let patients = patients(&records, args.batches.iter().copied().max().unwrap_or(1)).await?;
    let mut wanted: Vec<&str> = RECOMPUTE_COLUMNS.to_vec();
    wanted.extend(MATCH_COLUMNS);
    println!(
        "| events | full scan (s) | rows matched | filtered scan (s) | rows kept | apply (s) | rows re-dated |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (round, &n) in args.batches.iter().enumerate() {
        let events = discharges(&patients[..n.min(patients.len())], round);
        let (full, matched, _) = scan(&records, &wanted, &events, None).await?;
        let filter = key_filter(&events).context("discharges carry MRNs")?;
        let (filtered, matched_filtered, kept) =
            scan(&records, &wanted, &events, Some(filter)).await?;
        ensure!(
            matched == matched_filtered,
            "the filter lost rows: {matched} matched in full, {matched_filtered} filtered"
        );
        let t = Instant::now();
        let applied = apply_events(&mut records, &policy, &events, Vec::new(), None).await?;
        let apply = t.elapsed().as_secs_f64();
        println!(
            "| {} | {full:.2} | {matched} | {filtered:.2} | {kept} | {apply:.2} | {} |",
            events.len(),
            applied.rows_changed
        );
    }

    if !args.no_diff {
        let changed = Policy::from_sources(&[("org.toml", CHANGED)])?;
        let today = NaiveDate::from_ymd_opt(2026, 12, 4).expect("a date");
        let t = Instant::now();
        let report = PolicyChange::new(&changed, today)
            .diff(&mut records, None, "bench", Utc::now())
            .await?;
        println!(
            "\npolicy diff over {} rows: {:.2} s; later {}, earlier {}, due now {}, same date {}",
            report.records,
            t.elapsed().as_secs_f64(),
            report.total.later,
            report.total.earlier,
            report.total.due_now,
            report.total.same_date
        );
    }
    Ok(())
}

async fn count(records: &RecordsTable) -> Result<i64> {
    let ctx = SessionContext::new();
    ctx.register_table("records", records.delta_table().table_provider().await?)?;
    let b = ctx
        .sql("SELECT count(*) FROM records")
        .await?
        .collect()
        .await?;
    Ok(b[0]
        .column(0)
        .as_primitive::<retain_lake::deltalake::arrow::datatypes::Int64Type>()
        .value(0))
}

/// Up to `n` (tenant, MRN) pairs from the table.
async fn patients(records: &RecordsTable, n: usize) -> Result<Vec<(String, String)>> {
    let ctx = SessionContext::new();
    ctx.register_table("records", records.delta_table().table_provider().await?)?;
    let sql = format!(
        "SELECT DISTINCT tenant, unnest(patient_refs) AS mrn FROM records \
         WHERE cardinality(patient_refs) > 0 ORDER BY 1, 2 LIMIT {n}"
    );
    let mut out = Vec::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let b = retain_lake::deltalake::arrow::compute::cast(
            b.column(0),
            &retain_lake::deltalake::arrow::datatypes::DataType::Utf8,
        )
        .and_then(|t| {
            let m = retain_lake::deltalake::arrow::compute::cast(
                b.column(1),
                &retain_lake::deltalake::arrow::datatypes::DataType::Utf8,
            )?;
            Ok((t, m))
        })?;
        let (t, m) = (
            b.0.as_string::<i32>().clone(),
            b.1.as_string::<i32>().clone(),
        );
        for i in 0..t.len() {
            if t.is_valid(i) && m.is_valid(i) {
                out.push((t.value(i).to_owned(), m.value(i).to_owned()));
            }
        }
    }
    ensure!(!out.is_empty(), "the table references no patient");
    Ok(out)
}

/// One `discharged` event per patient, ids unique per round.
fn discharges(patients: &[(String, String)], round: usize) -> Vec<StoredEvent> {
    let date =
        NaiveDate::from_ymd_opt(2040, 1, 1).expect("a date") + chrono::Days::new(round as u64);
    patients
        .iter()
        .enumerate()
        .map(|(i, (tenant, mrn))| StoredEvent {
            message: RetentionEventMessage {
                event_id: format!("bench-{round}-{i}"),
                kind: EventType::Clock(EventKind::Discharged),
                date,
                action: None,
                keys: EventKeys {
                    tenant: Some(tenant.clone()),
                    patient_mrn: Some(mrn.clone()),
                    ..EventKeys::default()
                },
                recorded_at: Utc::now(),
                source: "bench".into(),
            },
            stored_at: Utc::now(),
            partition: -1,
            offset: -1,
        })
        .collect()
}

/// Scans with `filter` and matches every row against `events` as the stage does; returns the
/// seconds, the rows some event matches and the rows the scan returned.
async fn scan(
    records: &RecordsTable,
    wanted: &[&str],
    events: &[StoredEvent],
    filter: Option<retain_lake::deltalake::datafusion::logical_expr::Expr>,
) -> Result<(f64, u64, u64)> {
    let t = Instant::now();
    let mut stream = scan_records(records.delta_table(), wanted, filter).await?;
    let (mut matched, mut kept) = (0u64, 0u64);
    let mut seen = BTreeSet::new();
    while let Some(b) = stream.next().await {
        let b = b?;
        let views = retain_events::rows::row_views(&b)?;
        for (v, m) in views.iter().zip(match_rows(&b)?) {
            kept += 1;
            if events
                .iter()
                .any(|e| retain_events::matches(&e.message.keys, &m))
                && seen.insert(v.record_key.clone())
            {
                matched += 1;
            }
        }
    }
    Ok((t.elapsed().as_secs_f64(), matched, kept))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
