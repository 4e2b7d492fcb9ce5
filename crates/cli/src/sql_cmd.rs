//! `retain sql`: read-only SQL over the lake (the `retain-query` catalog), from `-c`, `-f`,
//! standard input or an interactive prompt; every statement that runs is audited.
//!
//! Output: `table` (Arrow's pretty printer and a row count), `csv` (a header, then one line per
//! row), `json` (JSON Lines: one object per row, nulls written out). Exit codes: 0 done, 2 a
//! query to fix (syntax, an unknown table, column or function, a statement that would change
//! something), 1 a failure (storage, memory limit, the audit trail).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use retain_lake::AuditTable;
use retain_query::datafusion::arrow::array::RecordBatch;
use retain_query::datafusion::arrow::datatypes::SchemaRef;
use retain_query::datafusion::logical_expr::LogicalPlan;
use retain_query::{Catalog, CatalogOptions, Statement, render, table_location};

use crate::hold_cmd::LakeArgs;
use crate::output::{BadInput, Format};

/// `retain sql`.
#[derive(Args, Debug)]
pub struct SqlArgs {
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
    /// Run these statements (separated by `;`) and exit.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SQL",
        conflicts_with = "file"
    )]
    command: Option<String>,
    /// Run the statements in this file (separated by `;`) and exit.
    #[arg(short = 'f', long = "file", value_name = "FILE.sql")]
    file: Option<PathBuf>,
    /// How results are printed: table, csv or json (JSON Lines, one object per row).
    #[arg(long, value_enum, default_value = "table", env = "RETAIN_SQL_FORMAT")]
    format: Format,
    /// Print each statement's row count and elapsed time to standard error.
    #[arg(long)]
    timing: bool,
    /// Read PHI columns (addresses, subject, patient references, a hold's matter and
    /// condition, ...) as NULL, as the analyst role does through `retain serve`: output to hand
    /// on. EXPLAIN is refused (plans print the holds' conditions).
    #[arg(long, env = "RETAIN_SQL_MASK_PHI")]
    mask_phi: bool,
    /// Who runs the queries (for the audit trail; default: $USER).
    #[arg(long, value_name = "NAME", env = "RETAIN_SQL_BY")]
    by: Option<String>,
    /// Memory all running queries may hold (e.g. 512MiB, 2GiB); sorts and joins spill beyond.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "1GiB",
        env = "RETAIN_SQL_MEMORY_LIMIT",
        value_parser = parse_size
    )]
    memory_limit: usize,
}

/// `512MiB`, `2GiB`, `1048576`: bytes.
pub(crate) fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512MiB, 2GiB)"))?;
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB or GiB)")),
    };
    let bytes = n * unit as f64;
    if !(1.0..=usize::MAX as f64).contains(&bytes) {
        return Err(format!("`{s}` is not a usable memory limit"));
    }
    Ok(bytes as usize)
}

/// Runs `retain sql`.
pub fn run(args: SqlArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(sql(args))
}

struct Session {
    catalog: Catalog,
    audit: AuditTable,
    by: String,
    format: Format,
    timing: bool,
    mask_phi: bool,
}

async fn sql(a: SqlArgs) -> Result<ExitCode> {
    let (audit, catalog) = open_for_reading(&a.lake, a.config.clone(), a.memory_limit).await?;
    if a.mask_phi {
        retain_serve::mask::mask_for_analyst(&catalog)
            .await
            .context("masking the PHI columns")?;
    }
    let by = reader(a.by.clone());
    let mut s = Session {
        catalog,
        audit,
        by,
        format: a.format,
        timing: a.timing,
        mask_phi: a.mask_phi,
    };
    let text = if let Some(c) = a.command {
        c
    } else if let Some(f) = &a.file {
        std::fs::read_to_string(f)
            .map_err(|e| BadInput(format!("cannot read {}: {e}", f.display())))?
    } else if std::io::stdin().is_terminal() {
        return repl(&mut s).await;
    } else {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .context("reading SQL from standard input")?;
        t
    };
    run_text(&mut s, &text).await?;
    Ok(ExitCode::SUCCESS)
}

/// The lake's audit table and a read-only catalog over the lake at `root`; a root without
/// `records` is refused (exit 2), so a mistyped `--lake` creates nothing.
pub(crate) async fn open_for_reading(
    root: &str,
    config: Option<PathBuf>,
    memory_limit: usize,
) -> Result<(AuditTable, Catalog)> {
    let lake = LakeArgs {
        lake: root.to_owned(),
        config,
        json: false,
    };
    let options = crate::hold_cmd::storage(&lake)?;
    crate::hold_cmd::records(&lake, &options).await?;
    let audit = AuditTable::open_or_create(&table_location(root, "audit"), options.clone())
        .await
        .context("opening the audit table")?;
    let catalog = Catalog::open(
        root,
        options,
        CatalogOptions {
            memory_limit,
            ..CatalogOptions::default()
        },
    )
    .await
    .map_err(query_error)?;
    Ok((audit, catalog))
}

/// Who reads, for the audit trail: `--by`, else `$USER`, else `unknown` (blank names do not
/// count).
pub(crate) fn reader(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A retain-query error as a CLI error: the user's to fix (exit 2) or not (exit 1).
pub(crate) fn query_error(e: retain_query::Error) -> anyhow::Error {
    if e.is_bad_input() {
        BadInput(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

/// Plans every statement of `text` (nothing runs if one is bad), then runs, audits and prints
/// each in turn.
async fn run_text(s: &mut Session, text: &str) -> Result<()> {
    let statements = s.catalog.plan(text).await.map_err(query_error)?;
    if s.mask_phi
        && let Some(st) = statements
            .iter()
            .find(|st| matches!(st.plan(), LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)))
    {
        return Err(BadInput(format!(
            "statement {}: EXPLAIN is not available with --mask-phi: plans print the holds' conditions, which can name patients",
            st.index
        ))
        .into());
    }
    for st in &statements {
        let started = Instant::now();
        let result = s.catalog.execute(st).await;
        let rows = result
            .as_ref()
            .map(|b| b.iter().map(RecordBatch::num_rows).sum::<usize>())
            .ok();
        // The entry is written before any result is shown: no unaudited reads.
        audit(s, st, rows).await?;
        let batches = result.map_err(query_error)?;
        print(s.format, &schema_of(st), &batches)?;
        if s.timing {
            eprintln!(
                "statement {}: {} rows in {:.3}s",
                st.index,
                rows.unwrap_or(0),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

fn schema_of(st: &Statement) -> SchemaRef {
    st.plan().schema().inner().clone()
}

async fn audit(s: &mut Session, st: &Statement, rows: Option<usize>) -> Result<()> {
    let mut how = serde_json::Map::new();
    if s.mask_phi {
        how.insert("masked".into(), true.into());
    }
    let entry = s.catalog.audit_entry(st, &s.by, rows, how);
    s.audit
        .append(&[entry])
        .await
        .context("writing the sql_query audit entry")?;
    Ok(())
}

/// Prints a result with the renderers `retain report` shares (`retain_query::render`).
fn print(format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let text = match format {
        Format::Table => render::table(schema, batches),
        Format::Csv => render::csv(schema, batches),
        Format::Json => render::json_lines(batches),
    }
    .context("formatting the result")?;
    out!("{text}");
    Ok(())
}

/// The interactive shell: statements end with `;`; `\q` (or `quit`, `exit`, end of input)
/// leaves. A bad statement prints its error and the shell goes on.
async fn repl(s: &mut Session) -> Result<ExitCode> {
    eprintln!(
        "retain sql: read-only SQL over the lake ({} active holds; today is {}). End statements with `;`, \\q to quit; docs/sql.md lists the tables.",
        s.catalog.active_holds().len(),
        s.catalog.today()
    );
    let stdin = std::io::stdin();
    let mut buffer = String::new();
    loop {
        eprint!(
            "{}",
            if buffer.is_empty() {
                "retain> "
            } else {
                "   ...> "
            }
        );
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let trimmed = line.trim();
        if buffer.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit" | "quit;" | "exit;") {
            break;
        }
        buffer.push_str(&line);
        if !trimmed.ends_with(';') {
            continue;
        }
        let text = std::mem::take(&mut buffer);
        if let Err(e) = run_text(s, &text).await {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
