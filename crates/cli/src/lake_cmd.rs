//! `retain lake optimize`: compact the `records` table's files, and cluster them by
//! `retain_until` so disposal queries read only the files that can hold due records
//! (docs/operations.md, "Compaction and clustering").

use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::{Args, Subcommand};
use retain_lake::{AuditAction, AuditEntry, AuditTable};

use crate::config::parse_size;
use crate::hold_cmd::{LakeArgs, records, storage, table_location};

/// `retain lake ...`.
#[derive(Subcommand, Debug)]
pub enum LakeCommand {
    /// Rewrite the records table's small files into large ones; with --cluster, ordered by
    /// retain_until. No row is added or removed; the old files stay until a vacuum.
    Optimize(OptimizeArgs),
}

/// `retain lake optimize`.
#[derive(Args, Debug)]
pub struct OptimizeArgs {
    /// Order the rewritten files by retain_until (a Z-order on that one column).
    #[arg(long, env = "RETAIN_OPTIMIZE_CLUSTER")]
    cluster: bool,
    /// The size of the files written.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "256MiB",
        env = "RETAIN_OPTIMIZE_TARGET_SIZE"
    )]
    target_size: String,
    /// Who (or which job) runs it, for the audit trail.
    #[arg(long, value_name = "NAME", env = "USER", default_value = "unknown")]
    by: String,
    #[command(flatten)]
    lake: LakeArgs,
}

/// Runs `retain lake ...`.
pub fn run(cmd: LakeCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cmd {
            LakeCommand::Optimize(a) => optimize(a).await,
        }
    })
}

async fn optimize(a: OptimizeArgs) -> Result<ExitCode> {
    let target = parse_size(&a.target_size)
        .map_err(|e| crate::output::BadInput(format!("--target-size: {e}")))?;
    let options = storage(&a.lake)?;
    let mut table = records(&a.lake, &options).await?;
    let done = table
        .optimize(target, a.cluster)
        .await
        .context("optimizing the records table")?;
    let mut audit = AuditTable::open_or_create(&table_location(&a.lake.lake, "audit"), options)
        .await
        .context("opening the audit table")?;
    audit
        .append(&[
            AuditEntry::new(AuditAction::RecordsOptimized, &a.by, Utc::now(), "records")
                .with_details(&serde_json::json!({
                    "cluster": a.cluster,
                    "files_removed": done.files_removed,
                    "files_added": done.files_added,
                    "bytes_removed": done.bytes_removed,
                    "bytes_added": done.bytes_added,
                    "version_before": done.version_before,
                }))
                .with_table_version(done.version_after as i64),
        ])
        .await
        .context("writing the audit entry")?;
    if a.lake.json {
        outln!(
            "{}",
            serde_json::json!({
                "cluster": a.cluster,
                "files_removed": done.files_removed,
                "files_added": done.files_added,
                "bytes_removed": done.bytes_removed,
                "bytes_added": done.bytes_added,
                "version_before": done.version_before,
                "version_after": done.version_after,
            })
        );
    } else {
        outln!(
            "records: {} files ({:.1} MiB) rewritten as {} ({:.1} MiB){}; table version {} -> {}; the old files stay until a vacuum",
            done.files_removed,
            done.bytes_removed as f64 / (1 << 20) as f64,
            done.files_added,
            done.bytes_added as f64 / (1 << 20) as f64,
            if a.cluster {
                ", ordered by retain_until"
            } else {
                ""
            },
            done.version_before,
            done.version_after
        );
    }
    Ok(ExitCode::SUCCESS)
}
