//! Query benchmark: the disposal-candidates query and a hold preview over a generated `records`
//! table (10M rows by default), timed with DataFusion through Retain's SQL catalog (what
//! `retain sql`, `retain serve` and `retain dispose plan` run: its Parquet scan of the Delta
//! snapshot, and for comparison the same catalog reading through deltalake's table provider) and
//! with DuckDB (Python, from PyPI) on the same Parquet files, in the same run. Figures go to
//! docs/PERFORMANCE.md.
//!
//! ```sh
//! pip install duckdb==2.0.0
//! cargo run --release -p retain-benches --example queries -- --records 10000000
//! ```
//!
//! The table is built the way the scheduler builds it — generated mail classified and
//! scheduled by the built-in policy, landed in 50,000-row commits — in the order a live stream
//! lands mail: each landing holds mail sent in one consecutive slice of the 15 years. It is
//! kept under `--lake` and reused by later runs with the same size and seed.
//!
//! Both queries run on two layouts of the same rows: as the stream landed them, and clustered
//! by `retain_until` with `RecordsTable::optimize` (a copy). For each query the DataFusion run
//! reports how many of the table's files the scan read (after Delta's file statistics pruned
//! the rest) and the bytes it read, from the plan's own metrics. Each engine keeps one session
//! for all runs of a layout, as `retain serve` does (footers read by the first run are cached).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use chrono::{Days, NaiveDate, Utc};
use clap::Parser;
use retain_codec::{ClassifiedRecord, Lineage};
use retain_generate::Generator;
use retain_lake::deltalake::arrow::array::AsArray;
use retain_lake::deltalake::arrow::datatypes::Int64Type;
use retain_lake::deltalake::datafusion::datasource::physical_plan::FileScanConfig;
use retain_lake::deltalake::datafusion::datasource::source::DataSourceExec;
use retain_lake::deltalake::datafusion::physical_plan::{
    ExecutionPlan, collect, display::DisplayableExecutionPlan,
};
use retain_lake::deltalake::datafusion::prelude::SessionContext;
use retain_lake::{RecordBatchBuilder, RecordRow, RecordsTable};
use retain_policy::{Policy, Record};
use retain_query::{Catalog, CatalogOptions, TableScan};
use serde::Serialize;

/// The file size the clustered copy is written with: small enough that a date range maps to
/// a few files.
const CLUSTER_FILE_SIZE: u64 = 32 << 20;

/// Rows per landing (the scheduler's default `max-rows`).
const LANDING_ROWS: usize = 50_000;

#[derive(Parser, Debug)]
#[command(about = "Disposal candidates and a hold preview: DataFusion against DuckDB")]
struct Args {
    /// Rows in the generated table.
    #[arg(long, default_value_t = 10_000_000)]
    records: usize,
    /// Where the table is built (and reused).
    #[arg(long, default_value = "target/bench-lake")]
    lake: PathBuf,
    /// Generator seed.
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Timed runs of each query per engine (the first run is also timed, and reported apart).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The disposal cut-off.
    #[arg(long, default_value = "2026-12-04")]
    as_of: NaiveDate,
    /// The Python with duckdb.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Let DataFusion filter rows while decoding Parquet in every scan (`pushdown_filters`,
    /// `reorder_filters`; the catalog does it only for filters on columns without statistics in
    /// the Delta log).
    #[arg(long)]
    pushdown: bool,
    /// Time only the `--extra` queries (e.g. under a profiler).
    #[arg(long)]
    only_extra: bool,
    /// Do not time the catalog reading through deltalake's table provider.
    #[arg(long)]
    no_delta: bool,
    /// Time only the catalog reading through deltalake's table provider (e.g. under a
    /// profiler).
    #[arg(long, conflicts_with = "no_delta")]
    delta_only: bool,
    /// A further query to time on both engines (repeatable; it must return a `records` column
    /// of counts), e.g. to find which part of a query costs what.
    #[arg(long, value_name = "SQL")]
    extra: Vec<String>,
    /// A further query to time on the catalog only, without DuckDB (repeatable; it must return
    /// a `records` column of counts), e.g. to try DataFusion-only syntax such as `arrow_cast`.
    #[arg(long, value_name = "SQL")]
    extra_catalog: Vec<String>,
    /// Only the stream-order layout (no clustered copy is made or timed).
    #[arg(long)]
    stream_only: bool,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A DataFusion session setting for the catalog's runs, as `key=value` (repeatable), e.g.
    /// `--set datafusion.execution.batch_size=32768`, to measure one against the defaults.
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the catalog's physical plan of each query's last run, with its metrics.
    #[arg(long)]
    explain: bool,
}

/// The hold of the preview and of the disposal query: one custodian and a keyword.
const HOLD: &str = "(lower(custodian) IN ('jamie.smith') OR lower(mailbox) IN ('jamie.smith')) \
                    AND (strpos(lower(subject), 'referral') > 0)";

fn disposal_sql(as_of: NaiveDate) -> String {
    // What `retain dispose plan` selects (docs/disposal.md), with the active hold excluded the
    // way coverage is defined: a record is held when the hold's condition is true or unknown.
    format!(
        "SELECT category, governing, count(*) AS records, min(retain_until) AS earliest \
         FROM records \
         WHERE retention_status = 'scheduled' AND retain_until <= DATE '{as_of}' \
         AND NOT (({HOLD}) IS NOT FALSE) \
         GROUP BY category, governing ORDER BY category, governing"
    )
}

fn preview_sql() -> String {
    // What `retain hold preview` counts (docs/holds.md).
    format!(
        "SELECT custodian, category, count(*) AS records FROM records \
         WHERE ({HOLD}) IS NOT FALSE GROUP BY custodian, category ORDER BY custodian, category"
    )
}

#[derive(Debug, Serialize)]
struct Timing {
    engine: &'static str,
    query: &'static str,
    first_s: f64,
    median_s: f64,
    min_s: f64,
    /// Of `median_s`, the median time to plan (parse, optimize, plan the physical execution).
    plan_s: Option<f64>,
    /// The query's result, summed: rows counted.
    result_rows: i64,
    files_read: Option<usize>,
    files_in_table: Option<usize>,
    bytes_read: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Layout {
    layout: &'static str,
    files: usize,
    table_bytes: u64,
    timings: Vec<Timing>,
}

#[derive(Debug, Serialize)]
struct Report {
    records: usize,
    /// Whether DataFusion filtered rows while decoding Parquet.
    pushdown: bool,
    build_s: Option<f64>,
    /// Seconds `RecordsTable::optimize` took to cluster the copy (when it ran).
    optimize_s: Option<f64>,
    as_of: NaiveDate,
    layouts: Vec<Layout>,
    machine: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.lake)?;
    let table_dir = args
        .lake
        .join(format!("records-{}-{}", args.records, args.seed));
    let location = table_dir
        .to_str()
        .context("the lake path is not UTF-8")?
        .to_owned();
    let build_s = if rows_in(&location).await? == Some(args.records as i64) {
        eprintln!("reusing {location}");
        None
    } else {
        if table_dir.exists() {
            std::fs::remove_dir_all(&table_dir)?;
        }
        Some(build(&location, args.records, args.seed).await?)
    };
    // The same rows clustered by `retain_until` (`RecordsTable::optimize`), in a copy.
    let clustered_dir = args
        .lake
        .join(format!("clustered-{}-{}", args.records, args.seed));
    let clustered = clustered_dir
        .to_str()
        .context("the lake path is not UTF-8")?
        .to_owned();
    let mut optimize_s = None;
    if !args.stream_only && (build_s.is_some() || !clustered_dir.join("_delta_log").is_dir()) {
        if clustered_dir.exists() {
            std::fs::remove_dir_all(&clustered_dir)?;
        }
        let ok = Command::new("cp")
            .args(["-r", &location, &clustered])
            .status()?;
        ensure!(ok.success(), "copying the table");
        let mut t = RecordsTable::open_or_create(&clustered, HashMap::new()).await?;
        let started = Instant::now();
        let o = t.optimize(CLUSTER_FILE_SIZE, true).await?;
        optimize_s = Some(started.elapsed().as_secs_f64());
        eprintln!(
            "clustered by retain_until in {:.0} s: {} files -> {}",
            optimize_s.unwrap_or_default(),
            o.files_removed,
            o.files_added
        );
    }

    let mut layouts = Vec::new();
    for (layout, at) in [("stream order", &location), ("clustered", &clustered)] {
        if args.stream_only && layout == "clustered" {
            continue;
        }
        let table = RecordsTable::open_or_create(at, HashMap::new()).await?;
        let files: Vec<String> = table
            .delta_table()
            .get_file_uris()?
            .map(|u| u.trim_start_matches("file://").to_owned())
            .collect();
        let table_bytes: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        eprintln!(
            "{layout}: {} rows in {} files, {:.2} GiB",
            args.records,
            files.len(),
            table_bytes as f64 / (1u64 << 30) as f64
        );
        let mut queries = Vec::new();
        if !args.only_extra {
            queries.push(("disposal_candidates", disposal_sql(args.as_of), true));
            queries.push(("hold_preview", preview_sql(), true));
        }
        queries.extend(args.extra.iter().map(|sql| ("extra", sql.clone(), true)));
        queries.extend(
            args.extra_catalog
                .iter()
                .map(|sql| ("extra-catalog", sql.clone(), false)),
        );
        // The catalog as `retain sql` opens it, over a lake root whose `records` is this table.
        let root = args
            .lake
            .join(format!("catalog-{}", layout.replace(' ', "-")));
        std::fs::create_dir_all(&root)?;
        let link = root.join("records");
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(std::fs::canonicalize(at)?, &link)?;
        let root = root
            .to_str()
            .context("the lake path is not UTF-8")?
            .to_owned();
        let mut engines = Vec::new();
        if !args.delta_only {
            engines.push(("datafusion", TableScan::Parquet));
        }
        if !args.no_delta {
            engines.push(("datafusion-deltalake", TableScan::Delta));
        }
        let mut catalogs = Vec::new();
        for (engine, scan) in engines {
            let catalog = Catalog::open(
                &root,
                HashMap::new(),
                CatalogOptions {
                    scan,
                    ..CatalogOptions::default()
                },
            )
            .await?;
            ensure!(catalog.table("records").map(|t| t.scan) == Some(scan));
            if args.pushdown {
                let state = catalog.session().state_ref();
                let mut state = state.write();
                let parquet = &mut state.config_mut().options_mut().execution.parquet;
                parquet.pushdown_filters = true;
                parquet.reorder_filters = true;
            }
            for setting in &args.set {
                let (key, value) = setting.split_once('=').context("--set takes key=value")?;
                let state = catalog.session().state_ref();
                let mut state = state.write();
                state.config_mut().options_mut().set(key, value)?;
            }
            catalogs.push((engine, catalog));
        }
        let mut timings = Vec::new();
        for (name, sql, with_duckdb) in queries {
            let duck = if with_duckdb {
                Some(duckdb_timing(&args.python, &files, name, &sql, args.runs)?)
            } else {
                None
            };
            for (engine, catalog) in &catalogs {
                let df = datafusion_timing(
                    catalog,
                    engine,
                    name,
                    &sql,
                    args.runs,
                    files.len(),
                    args.explain,
                )
                .await?;
                let against = match &duck {
                    Some(duck) => {
                        ensure!(
                            df.result_rows == duck.result_rows,
                            "{name}: {engine} counted {} rows, DuckDB {}",
                            df.result_rows,
                            duck.result_rows
                        );
                        format!(
                            "DuckDB {:.3} s: {:.2}x DuckDB",
                            duck.median_s,
                            df.median_s / duck.median_s
                        )
                    }
                    None => "DuckDB not run".to_owned(),
                };
                eprintln!(
                    "{layout}, {name}: {engine} {:.3} s (median; plan {:.4} s; first {:.3} s), {against}; {} rows; read {} of {} files, {:.0} MiB",
                    df.median_s,
                    df.plan_s.unwrap_or(0.0),
                    df.first_s,
                    df.result_rows,
                    df.files_read.unwrap_or(0),
                    files.len(),
                    df.bytes_read.unwrap_or(0) as f64 / (1 << 20) as f64
                );
                timings.push(df);
            }
            timings.extend(duck);
        }
        layouts.push(Layout {
            layout,
            files: files.len(),
            table_bytes,
            timings,
        });
    }
    let report = Report {
        records: args.records,
        pushdown: args.pushdown,
        build_s,
        optimize_s,
        as_of: args.as_of,
        layouts,
        machine: machine(),
    };
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    Ok(())
}

/// Rows in the table at `location`, if there is one.
async fn rows_in(location: &str) -> Result<Option<i64>> {
    if !Path::new(location).join("_delta_log").is_dir() {
        return Ok(None);
    }
    let t = RecordsTable::open_or_create(location, HashMap::new()).await?;
    let ctx = SessionContext::new();
    ctx.register_table("records", t.delta_table().table_provider().await?)?;
    let b = ctx
        .sql("SELECT count(*) FROM records")
        .await?
        .collect()
        .await?;
    Ok(Some(b[0].column(0).as_primitive::<Int64Type>().value(0)))
}

/// Generates, classifies, schedules and lands `records` rows in time order; returns seconds.
async fn build(location: &str, records: usize, seed: u64) -> Result<f64> {
    let started = Instant::now();
    let policy = Policy::builtin()?;
    let mut table = RecordsTable::open_or_create(location, HashMap::new()).await?;
    let landings = records.div_ceil(LANDING_ROWS);
    let start = NaiveDate::from_ymd_opt(2012, 1, 1).context("date")?;
    let span = 15 * 365u64;
    let mut offset = 0i64;
    for i in 0..landings {
        let n = LANDING_ROWS.min(records - i * LANDING_ROWS);
        let from = start + Days::new(span * i as u64 / landings as u64);
        let days = (span * (i as u64 + 1) / landings as u64)
            .saturating_sub(span * i as u64 / landings as u64);
        let mut generator = Generator::new(seed.wrapping_add(i as u64)).with_period(from, days);
        let mut builder = RecordBatchBuilder::new();
        for _ in 0..n {
            let g = generator.next_record();
            let mut message = g.message;
            // Unique across the generators (each restarts its numbering).
            message.message_id = format!("{offset}.{}", message.message_id);
            let classification = policy.classify(&message);
            let decision = policy.schedule(
                Record {
                    category: &classification.category,
                    created: message.created_date(),
                },
                &g.facts,
                &g.events,
            );
            let (jurisdiction, holder) = policy.effective(&g.facts);
            let record = ClassifiedRecord::new(
                message,
                classification,
                "retain-benches",
                Lineage {
                    topic: "retain.mail".to_owned(),
                    partition: 0,
                    offset,
                },
            );
            builder.push(&RecordRow::new(&record, &decision, jurisdiction, holder)?);
            offset += 1;
        }
        let batch = builder.finish(Utc::now())?;
        let landed = table.land(batch, "retain-lineage", &[(0, offset)]).await?;
        ensure!(
            landed.rows_landed == n,
            "landed {} of {n}",
            landed.rows_landed
        );
        if i % 20 == 0 {
            eprintln!(
                "built {offset} of {records} rows ({:.0} rows/s)",
                offset as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs `sql` through the catalog's session `runs + 1` times; the plan's metrics of the last run
/// give the files and bytes read.
async fn datafusion_timing(
    catalog: &Catalog,
    engine: &'static str,
    name: &'static str,
    sql: &str,
    runs: usize,
    files_in_table: usize,
    explain: bool,
) -> Result<Timing> {
    let mut times = Vec::new();
    let mut plan_times = Vec::new();
    let mut rows = 0;
    let mut last_plan = None;
    let ctx = catalog.session();
    for _ in 0..=runs {
        let t = Instant::now();
        let plan = ctx.sql(sql).await?.create_physical_plan().await?;
        plan_times.push(t.elapsed().as_secs_f64());
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await?;
        times.push(t.elapsed().as_secs_f64());
        rows = result_rows(&batches, "records")?;
        last_plan = Some(plan);
    }
    let plan = last_plan.context("no run")?;
    if explain {
        eprintln!(
            "{engine}, {name}:\n{}",
            DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true)
        );
    }
    let (files, bytes) = scanned(&plan);
    let mut t = timing(
        engine,
        name,
        &times,
        rows,
        Some(files),
        Some(files_in_table),
        Some(bytes),
    );
    t.plan_s = Some(timing(engine, name, &plan_times, rows, None, None, None).median_s);
    Ok(t)
}

/// The sum of the `records` column of a result.
fn result_rows(
    batches: &[retain_lake::deltalake::arrow::array::RecordBatch],
    column: &str,
) -> Result<i64> {
    let mut sum = 0;
    for b in batches {
        let c = b.column_by_name(column).context("no count column")?;
        let c = c.as_primitive::<Int64Type>();
        sum += (0..c.len()).map(|i| c.value(i)).sum::<i64>();
    }
    Ok(sum)
}

/// Files in the plan's Parquet scans and the bytes they read (the `bytes_scanned` metric).
/// A file split into byte ranges over several partitions counts once.
fn scanned(plan: &Arc<dyn ExecutionPlan>) -> (usize, u64) {
    let mut files = std::collections::HashSet::new();
    let bytes = scanned_into(plan, &mut files);
    (files.len(), bytes)
}

fn scanned_into(
    plan: &Arc<dyn ExecutionPlan>,
    files: &mut std::collections::HashSet<String>,
) -> u64 {
    let mut bytes = 0;
    let node: &dyn std::any::Any = plan.as_ref();
    if let Some(source) = node.downcast_ref::<DataSourceExec>() {
        let data: &dyn std::any::Any = source.data_source().as_ref();
        if let Some(config) = data.downcast_ref::<FileScanConfig>() {
            for group in &config.file_groups {
                files.extend(group.iter().map(|f| f.object_meta.location.to_string()));
            }
        }
    }
    if let Some(metrics) = plan.metrics() {
        bytes += metrics
            .sum_by_name("bytes_scanned")
            .map_or(0, |v| v.as_usize() as u64);
    }
    for child in plan.children() {
        bytes += scanned_into(child, files);
    }
    bytes
}

const DUCKDB: &str = r#"
import json, statistics, sys, time
import duckdb
files, sql, runs = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
paths = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
con.execute(f"CREATE VIEW records AS SELECT * FROM read_parquet({paths})")
times, rows = [], 0
for _ in range(runs + 1):
    t = time.perf_counter()
    result = con.execute(sql).fetchall()
    times.append(time.perf_counter() - t)
    cols = [d[0] for d in con.description]
    rows = sum(r[cols.index("records")] for r in result)
print(json.dumps({"times": times, "rows": rows, "version": duckdb.__version__}))
"#;

/// Runs `sql` through DuckDB over the same Parquet files.
fn duckdb_timing(
    python: &str,
    files: &[String],
    name: &'static str,
    sql: &str,
    runs: usize,
) -> Result<Timing> {
    let out = Command::new(python)
        .args([
            "-c",
            DUCKDB,
            &serde_json::to_string(files)?,
            sql,
            &runs.to_string(),
        ])
        .output()
        .with_context(|| format!("running {python}"))?;
    if !out.status.success() {
        bail!(
            "DuckDB failed (pip install duckdb==2.0.0): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let times: Vec<f64> = serde_json::from_value(v["times"].clone())?;
    eprintln!("DuckDB {}", v["version"]);
    Ok(timing(
        "duckdb",
        name,
        &times,
        v["rows"].as_i64().context("rows")?,
        None,
        None,
        None,
    ))
}

fn timing(
    engine: &'static str,
    query: &'static str,
    times: &[f64],
    result_rows: i64,
    files_read: Option<usize>,
    files_in_table: Option<usize>,
    bytes_read: Option<u64>,
) -> Timing {
    let mut warm: Vec<f64> = times[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    Timing {
        engine,
        query,
        first_s: times[0],
        median_s: warm[warm.len() / 2],
        min_s: warm[0],
        plan_s: None,
        result_rows,
        files_read,
        files_in_table,
        bytes_read,
    }
}

/// CPU model and count, and the load average when the run ended.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("{model}, {cores} cores, load {}", load.trim())
}
