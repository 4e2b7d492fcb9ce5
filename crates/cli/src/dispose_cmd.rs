//! `retain dispose plan|approve|execute`: scheduled disposal over the lake (docs/disposal.md).
//!
//! Exit codes, for schedulers: 0 done; 3 nothing due (plan) or nothing left to do (execute of
//! an executed manifest); 2 a request to fix (the planner approving, an unapproved manifest);
//! 1 a failure (storage) — safe to run again.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};
use retain_govern::{Disposal, DisposalsTable, HoldsTable, ManifestsTable};
use retain_lake::{AuditAction, AuditEntry, AuditTable, RecordsTable};
use retain_stream::{CommandPublisher, TOPIC_DISPOSAL_COMMANDS};

use crate::config::HumanDuration;
use crate::hold_cmd::{LakeArgs, govern, records, storage, table_location};
use crate::output::table;

/// Exit code: nothing due / nothing to do.
const NOTHING: u8 = 3;

/// `retain dispose ...`.
#[derive(Subcommand, Debug)]
pub enum DisposeCommand {
    /// Select what is due as of a date (never after today) and not held; write a manifest.
    /// Nothing is deleted.
    Plan(PlanArgs),
    /// Approve a manifest (someone other than its planner).
    Approve(ApproveArgs),
    /// Re-check and dispose of an approved manifest's records. A dry run unless --for-real.
    Execute(ExecuteArgs),
}

/// `retain dispose plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Records due on or before this day (capped at today).
    #[arg(long, value_name = "DATE")]
    as_of: NaiveDate,
    /// Who plans.
    #[arg(long, value_name = "NAME")]
    by: String,
    #[command(flatten)]
    lake: LakeArgs,
}

/// `retain dispose approve`.
#[derive(Args, Debug)]
pub struct ApproveArgs {
    /// The manifest's id (`D-...`).
    manifest: String,
    /// Who approves (not the planner).
    #[arg(long, value_name = "NAME")]
    by: String,
    #[command(flatten)]
    lake: LakeArgs,
}

/// `retain dispose execute`.
#[derive(Args, Debug)]
pub struct ExecuteArgs {
    /// The manifest's id (`D-...`).
    manifest: String,
    /// Who (or which job) executes.
    #[arg(long, value_name = "NAME")]
    by: String,
    /// Really delete. Without it, only report what would be disposed of.
    #[arg(long)]
    for_real: bool,
    /// How long removed Parquet files stay on storage before the vacuum deletes them.
    #[arg(long, value_name = "DURATION", default_value = "7days")]
    grace: String,
    /// Also write the certificate as DIR/<manifest>.json and DIR/<manifest>.md.
    #[arg(long, value_name = "DIR")]
    certificate_dir: Option<PathBuf>,
    /// Kafka bootstrap servers to publish the disposal commands to (one per disposed message,
    /// for the mail system to delete it). Overrides `[kafka] bootstrap-servers`.
    #[arg(long, env = "RETAIN_BROKERS")]
    brokers: Option<String>,
    /// The disposal-command topic. Overrides `[topics] disposal-commands`.
    #[arg(long, value_name = "TOPIC", env = "RETAIN_COMMANDS_TOPIC")]
    commands_topic: Option<String>,
    /// Dispose without publishing commands (the mail system is told some other way, e.g. from
    /// the manifest). Without it, --for-real needs brokers.
    #[arg(long, conflicts_with_all = ["brokers", "commands_topic"])]
    no_commands: bool,
    #[command(flatten)]
    lake: LakeArgs,
}

/// Runs `retain dispose ...`.
pub fn run(cmd: DisposeCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cmd {
            DisposeCommand::Plan(a) => plan(a).await,
            DisposeCommand::Approve(a) => approve(a).await,
            DisposeCommand::Execute(a) => execute(a).await,
        }
    })
}

struct Tables {
    records: RecordsTable,
    holds: HoldsTable,
    manifests: ManifestsTable,
    disposals: DisposalsTable,
    audit: AuditTable,
}

async fn open(a: &LakeArgs) -> Result<Tables> {
    let options = storage(a)?;
    let at = |name: &str| table_location(&a.lake, name);
    Ok(Tables {
        records: records(a, &options).await?,
        holds: HoldsTable::open_or_create(&at("holds"), options.clone())
            .await
            .map_err(govern)?,
        manifests: ManifestsTable::open_or_create(&at("manifests"), options.clone())
            .await
            .map_err(govern)?,
        disposals: DisposalsTable::open_or_create(&at("disposals"), options.clone())
            .await
            .map_err(govern)?,
        audit: AuditTable::open_or_create(&at("audit"), options)
            .await
            .context("opening the audit table")?,
    })
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

async fn plan(a: PlanArgs) -> Result<ExitCode> {
    let mut t = open(&a.lake).await?;
    let manifest = Disposal::new(
        &mut t.records,
        &mut t.holds,
        &mut t.manifests,
        &mut t.disposals,
        today(),
    )
    .plan(a.as_of, &a.by, Utc::now())
    .await
    .map_err(govern)?;
    let Some(m) = manifest else {
        if a.lake.json {
            outln!("{}", serde_json::json!({ "manifest": null, "records": 0 }));
        } else {
            outln!("nothing is due as of {} (capped at today)", a.as_of);
        }
        return Ok(ExitCode::from(NOTHING));
    };
    t.audit
        .append(&[
            AuditEntry::new(AuditAction::DisposalPlanned, &a.by, Utc::now(), &m.id)
                .with_details(&serde_json::json!({
                    "manifest": m.id,
                    "hash": m.content_hash(),
                    "records": m.entries.len(),
                    "cutoff": m.cutoff,
                    "holds": m.holds,
                }))
                .with_table_version(m.records_version as i64),
        ])
        .await
        .context("writing the audit entry")?;
    if a.lake.json {
        outln!(
            "{}",
            serde_json::json!({
                "manifest": m.id, "hash": m.content_hash(), "records": m.entries.len(),
                "cutoff": m.cutoff, "records_version": m.records_version,
                "by_category": m.by_category, "by_rule": m.by_rule, "holds": m.holds,
            })
        );
    } else {
        outln!(
            "manifest {}: {} records due by {} and not held (records table version {}, {} holds in force)",
            m.id,
            m.entries.len(),
            m.cutoff,
            m.records_version,
            m.holds.len()
        );
        let rows: Vec<Vec<String>> = m
            .by_rule
            .iter()
            .map(|(k, n)| vec![k.clone(), n.to_string()])
            .collect();
        out!("{}", table(&["governing obligation", "records"], &rows));
        outln!("sha256 {}", m.content_hash());
        outln!(
            "next: retain dispose approve {} --by SOMEONE-ELSE, then retain dispose execute {} --by JOB --for-real",
            m.id,
            m.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn approve(a: ApproveArgs) -> Result<ExitCode> {
    let mut t = open(&a.lake).await?;
    let state = Disposal::new(
        &mut t.records,
        &mut t.holds,
        &mut t.manifests,
        &mut t.disposals,
        today(),
    )
    .approve(&a.manifest, &a.by, Utc::now())
    .await
    .map_err(govern)?;
    t.audit
        .append(&[AuditEntry::new(
            AuditAction::DisposalApproved,
            &a.by,
            Utc::now(),
            &a.manifest,
        )
        .with_details(&serde_json::json!({ "manifest": a.manifest, "hash": state.hash }))])
        .await
        .context("writing the audit entry")?;
    if a.lake.json {
        outln!(
            "{}",
            serde_json::json!({ "manifest": a.manifest, "approved_by": a.by, "hash": state.hash })
        );
    } else {
        outln!(
            "manifest {} approved by {} ({} records, sha256 {})",
            a.manifest,
            a.by,
            state.manifest.entries.len(),
            state.hash
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn execute(a: ExecuteArgs) -> Result<ExitCode> {
    let grace = HumanDuration::try_from(a.grace.clone())
        .map_err(|e| crate::output::BadInput(format!("--grace: {e}")))?;
    let grace = chrono::Duration::from_std(grace.0)
        .map_err(|e| crate::output::BadInput(format!("--grace: {e}")))?;
    let mut t = open(&a.lake).await?;
    let mut d = Disposal::new(
        &mut t.records,
        &mut t.holds,
        &mut t.manifests,
        &mut t.disposals,
        today(),
    )
    .with_grace(grace);
    if a.for_real {
        d = d.for_real();
    }
    let already = matches!(
        t_manifest_status(&mut d, &a.manifest).await?,
        Some(retain_govern::ManifestStatus::Executed)
    );
    // Commands are published (and acknowledged) before the rows are deleted; only a real run
    // publishes, and only if there is something left to do.
    let sink = if a.for_real && !already {
        command_sink(&a)?
    } else {
        None
    };
    let commands_topic = sink.as_ref().map(|s| s.topic().to_owned());
    let done = d
        .execute(
            &a.manifest,
            &a.by,
            sink.as_ref().map(|s| s as &dyn retain_govern::CommandSink),
            Utc::now(),
        )
        .await
        .map_err(govern)?;
    if a.lake.json {
        outln!("{}", serde_json::to_string(&done)?);
    }
    let Some(cert) = &done.certificate else {
        if !a.lake.json {
            outln!(
                "dry run: {} records would be disposed of; skipped {} held, {} whose date moved, {} already gone. Add --for-real to dispose.",
                done.disposed.len(),
                done.skipped_held,
                done.skipped_moved,
                done.skipped_gone
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    if already {
        if !a.lake.json {
            outln!(
                "manifest {} was executed already ({} records disposed of at {})",
                cert.manifest_id,
                cert.disposed,
                cert.executed_at.to_rfc3339()
            );
        }
        return Ok(ExitCode::from(NOTHING));
    }
    t.audit
        .append(&[AuditEntry::new(
            AuditAction::DisposalExecuted,
            &a.by,
            Utc::now(),
            &a.manifest,
        )
        .with_details(&serde_json::json!({
            "manifest": cert.manifest_id,
            "hash": cert.manifest_hash,
            "disposed": cert.disposed,
            "commands_topic": commands_topic,
            "skipped_held": cert.skipped_held,
            "skipped_moved": cert.skipped_moved,
            "files_removed": cert.files_removed.len(),
            "records_version_before": cert.records_version_before,
        }))
        .with_table_version(cert.records_version_after as i64)])
        .await
        .context("writing the audit entry")?;
    if let Some(dir) = &a.certificate_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join(format!("{}.json", cert.manifest_id));
        let md = dir.join(format!("{}.md", cert.manifest_id));
        std::fs::write(&json, serde_json::to_string_pretty(cert)?)
            .with_context(|| format!("writing {}", json.display()))?;
        std::fs::write(&md, cert.to_markdown())
            .with_context(|| format!("writing {}", md.display()))?;
    }
    if !a.lake.json {
        outln!(
            "manifest {}: {} records disposed of; skipped {} held, {} whose date moved, {} already gone; records table version {} -> {}; {} Parquet files removed",
            cert.manifest_id,
            cert.disposed,
            cert.skipped_held,
            cert.skipped_moved,
            cert.skipped_gone,
            cert.records_version_before,
            cert.records_version_after,
            cert.files_removed.len()
        );
        match &commands_topic {
            Some(topic) => outln!(
                "disposal commands published to {topic} before the delete, one per message (command id <manifest>/<record key>)"
            ),
            None => outln!(
                "no disposal commands published (--no-commands): tell the mail system from the manifest"
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The disposal-command publisher for a real execution: refused (exit 2) when there are no
/// brokers and --no-commands was not given, so nothing is disposed of without the mail system
/// being told.
fn command_sink(a: &ExecuteArgs) -> Result<Option<CommandPublisher>> {
    if a.no_commands {
        return Ok(None);
    }
    let (file, origin) = crate::config::load(a.lake.config.as_deref(), std::env::vars())?;
    let kafka = crate::run::kafka_config(a.brokers.as_deref(), &file, &origin)?.ok_or_else(|| {
        crate::output::BadInput(format!(
            "--for-real publishes a disposal command per message for the mail system: set --brokers, RETAIN_BROKERS or [kafka] bootstrap-servers in {origin}, or pass --no-commands"
        ))
    })?;
    let topic = a
        .commands_topic
        .clone()
        .or(file.topics.disposal_commands.clone())
        .unwrap_or_else(|| TOPIC_DISPOSAL_COMMANDS.to_owned());
    let publisher = CommandPublisher::connect(&kafka, &topic)
        .with_context(|| format!("connecting to the disposal-command topic `{topic}`"))?;
    Ok(Some(publisher))
}

async fn t_manifest_status(
    d: &mut Disposal<'_>,
    id: &str,
) -> Result<Option<retain_govern::ManifestStatus>> {
    d.status(id).await.map_err(govern)
}
