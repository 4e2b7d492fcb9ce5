//! `retain hold create|preview|list|show|release`: litigation holds over the lake.
//!
//! The lake root (`--lake`, default `lake`, the demo's) holds the `records`, `holds` and `audit`
//! tables side by side. Every action is written to the audit trail (ids and counts only).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{NaiveDate, Utc};
use clap::{Args, Subcommand};
use retain_govern::{Hold, HoldScope, HoldStatus, HoldsTable, NewHold, Release, preview};
use retain_lake::{AuditAction, AuditEntry, AuditTable, RecordsTable};

use crate::config;
use crate::output::{BadInput, table};

/// `retain hold ...`.
#[derive(Subcommand, Debug)]
pub enum HoldCommand {
    /// Place a hold: every record in scope, landed now or later, is kept until it is released.
    Create(CreateArgs),
    /// How many and which records a scope would catch, by custodian and category (nothing is
    /// written but the audit entry).
    Preview(PreviewArgs),
    /// The holds, active first (`--all` includes released ones).
    List(ListArgs),
    /// One hold in full.
    Show(ShowArgs),
    /// Release a hold: needs a justification and an approver other than its creator.
    Release(ReleaseArgs),
}

/// Where the lake is.
#[derive(Args, Debug)]
pub struct LakeArgs {
    /// The lake root (folder, file:// or s3:// URL) with the records, holds and audit tables.
    #[arg(
        long,
        value_name = "ROOT",
        env = "RETAIN_LAKE_ROOT",
        default_value = "lake"
    )]
    pub(crate) lake: String,
    /// A configuration file for `[lake.storage]` options (RETAIN__LAKE__STORAGE__* also work).
    #[arg(long, value_name = "FILE", env = "RETAIN_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What a hold covers. Criteria are ANDed; repeated values of one criterion are ORed.
#[derive(Args, Debug, Default)]
pub struct ScopeArgs {
    /// A custodian or mailbox (repeatable; case-insensitive).
    #[arg(long = "custodian", value_name = "NAME")]
    custodians: Vec<String>,
    /// Records created on or after this day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    from: Option<NaiveDate>,
    /// Records created on or before this day (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    to: Option<NaiveDate>,
    /// A word or phrase in the subject (repeatable; case-insensitive).
    #[arg(long = "keyword", value_name = "TEXT")]
    keywords: Vec<String>,
    /// A record category code (repeatable), e.g. clinical.
    #[arg(long = "category", value_name = "CODE")]
    categories: Vec<String>,
    /// A patient reference (MRN) the record mentions (repeatable).
    #[arg(long = "patient", value_name = "MRN")]
    patients: Vec<String>,
    /// Any further condition: a SQL boolean expression over `records` columns.
    #[arg(long, value_name = "EXPR")]
    sql: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> HoldScope {
        HoldScope {
            custodians: self.custodians.clone(),
            from: self.from,
            to: self.to,
            keywords: self.keywords.clone(),
            categories: self.categories.clone(),
            patient_refs: self.patients.clone(),
            sql: self.sql.clone(),
        }
    }
}

/// `retain hold create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The matter (case) the hold belongs to.
    #[arg(long)]
    matter: String,
    /// Why the hold is placed.
    #[arg(long)]
    reason: String,
    /// Who places it.
    #[arg(long, value_name = "NAME")]
    by: String,
    #[command(flatten)]
    scope: ScopeArgs,
    #[command(flatten)]
    lake: LakeArgs,
}

/// `retain hold preview`.
#[derive(Args, Debug)]
pub struct PreviewArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// How many record keys to show.
    #[arg(long, default_value_t = 10)]
    sample: usize,
    /// Who asks (for the audit trail; default: $USER).
    #[arg(long, value_name = "NAME")]
    by: Option<String>,
    #[command(flatten)]
    lake: LakeArgs,
}

/// `retain hold list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Include released holds.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    lake: LakeArgs,
}

/// `retain hold show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The hold's id (`H-...`).
    id: String,
    #[command(flatten)]
    lake: LakeArgs,
}

/// `retain hold release`.
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The hold's id (`H-...`).
    id: String,
    /// Why it is released (required).
    #[arg(long)]
    justification: String,
    /// Who approved the release (not the hold's creator, not the one releasing).
    #[arg(long, value_name = "NAME")]
    approved_by: String,
    /// Who releases it.
    #[arg(long, value_name = "NAME")]
    by: String,
    #[command(flatten)]
    lake: LakeArgs,
}

/// Runs `retain hold ...`.
pub fn run(cmd: HoldCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cmd {
            HoldCommand::Create(a) => create(a).await,
            HoldCommand::Preview(a) => preview_cmd(a).await,
            HoldCommand::List(a) => list(a).await,
            HoldCommand::Show(a) => show(a).await,
            HoldCommand::Release(a) => release(a).await,
        }
    })
}

/// The location of table `name` under the lake root.
pub fn table_location(root: &str, name: &str) -> String {
    if root.contains("://") {
        format!("{}/{name}", root.trim_end_matches('/'))
    } else {
        PathBuf::from(root).join(name).display().to_string()
    }
}

/// `[lake.storage]` from the configuration file and `RETAIN__LAKE__STORAGE__*`.
pub(crate) fn storage(a: &LakeArgs) -> Result<HashMap<String, String>> {
    let (file, origin) = config::load(a.config.as_deref(), std::env::vars())?;
    Ok(
        crate::run::flatten(&file.lake.storage, &origin, "lake.storage")?
            .into_iter()
            .collect(),
    )
}

/// The `records` table under the lake root; refused (exit 2) when there is none, so a mistyped
/// `--lake` does not quietly make an empty lake somewhere else.
pub(crate) async fn records(
    a: &LakeArgs,
    options: &HashMap<String, String>,
) -> Result<RecordsTable> {
    let at = table_location(&a.lake, "records");
    if !crate::audit_cmd::exists(&at, options).await? {
        return Err(BadInput(format!(
            "no records table at {at}: give --lake the lake root (the folder or URL holding records/), or land mail first (retain demo, retain run)"
        ))
        .into());
    }
    RecordsTable::open_or_create(&at, options.clone())
        .await
        .with_context(|| format!("opening the records table at {at}"))
}

/// Govern errors a user must fix exit 2.
pub(crate) fn govern(e: retain_govern::Error) -> anyhow::Error {
    if e.is_bad_input() {
        BadInput(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

struct Lake {
    records: RecordsTable,
    holds: HoldsTable,
    audit: AuditTable,
}

async fn open(a: &LakeArgs) -> Result<Lake> {
    let options = storage(a)?;
    let records = records(a, &options).await?;
    let holds = HoldsTable::open_or_create(&table_location(&a.lake, "holds"), options.clone())
        .await
        .map_err(govern)?;
    let audit = AuditTable::open_or_create(&table_location(&a.lake, "audit"), options)
        .await
        .context("opening the audit table")?;
    Ok(Lake {
        records,
        holds,
        audit,
    })
}

async fn audited(lake: &mut Lake, entry: AuditEntry) -> Result<()> {
    lake.audit
        .append(&[entry])
        .await
        .context("writing the audit entry")?;
    Ok(())
}

async fn create(a: CreateArgs) -> Result<ExitCode> {
    let mut lake = open(&a.lake).await?;
    let new = NewHold {
        matter: a.matter,
        reason: a.reason,
        created_by: a.by.clone(),
        scope: a.scope.scope(),
    };
    let hold = lake
        .holds
        .create(&mut lake.records, new, Utc::now())
        .await
        .map_err(govern)?;
    let covered = preview(&mut lake.records, &hold.scope, 0)
        .await
        .map_err(govern)?;
    let entry = AuditEntry::new(AuditAction::HoldCreated, &a.by, Utc::now(), &hold.id)
        .with_details(&serde_json::json!({
            "hold": hold.id,
            "holds_version": lake.holds.version(),
            "records_version": covered.table_version,
            "records_covered_now": covered.records,
        }))
        .with_table_version(covered.table_version as i64);
    audited(&mut lake, entry).await?;
    if a.lake.json {
        outln!(
            "{}",
            serde_json::json!({ "hold": hold, "records_covered_now": covered.records })
        );
    } else {
        outln!(
            "hold {} placed by {}: {} records covered now; mail landing later in scope is covered too",
            hold.id,
            hold.created_by,
            covered.records
        );
        outln!("scope: {}", hold.predicate);
    }
    Ok(ExitCode::SUCCESS)
}

async fn preview_cmd(a: PreviewArgs) -> Result<ExitCode> {
    let mut lake = open(&a.lake).await?;
    let p = preview(&mut lake.records, &a.scope.scope(), a.sample)
        .await
        .map_err(govern)?;
    let by =
        a.by.or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".to_owned());
    let entry = AuditEntry::new(AuditAction::HoldPreviewed, &by, Utc::now(), "records")
        .with_details(&serde_json::json!({ "records_covered": p.records }))
        .with_table_version(p.table_version as i64);
    audited(&mut lake, entry).await?;
    if a.lake.json {
        outln!("{}", serde_json::to_string(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} records would be covered (records table version {})",
        p.records,
        p.table_version
    );
    outln!("condition: {}", p.predicate);
    for (title, counts) in [("custodian", &p.by_custodian), ("category", &p.by_category)] {
        let rows: Vec<Vec<String>> = counts
            .iter()
            .map(|(k, n)| vec![k.clone(), n.to_string()])
            .collect();
        if !rows.is_empty() {
            outln!();
            out!("{}", table(&[title, "records"], &rows));
        }
    }
    if !p.sample.is_empty() {
        outln!();
        outln!("sample record keys: {}", p.sample.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(a: ListArgs) -> Result<ExitCode> {
    let mut lake = open(&a.lake).await?;
    let mut holds: Vec<Hold> = lake.holds.list().await.map_err(govern)?;
    if !a.all {
        holds.retain(|h| h.status == HoldStatus::Active);
    }
    holds.sort_by_key(|h| h.status != HoldStatus::Active);
    if a.lake.json {
        outln!("{}", serde_json::to_string(&holds)?);
        return Ok(ExitCode::SUCCESS);
    }
    if holds.is_empty() {
        outln!("no {}holds", if a.all { "" } else { "active " });
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = holds
        .iter()
        .map(|h| {
            vec![
                h.id.clone(),
                h.status.as_str().to_owned(),
                h.matter.clone(),
                h.created_by.clone(),
                h.created_at.format("%Y-%m-%d").to_string(),
                format!("{} days", (Utc::now() - h.created_at).num_days()),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &["hold", "status", "matter", "created by", "created", "age"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(a: ShowArgs) -> Result<ExitCode> {
    let mut lake = open(&a.lake).await?;
    let hold = lake
        .holds
        .get(&a.id)
        .await
        .map_err(govern)?
        .ok_or_else(|| BadInput(format!("no hold {}", a.id)))?;
    if a.lake.json {
        outln!("{}", serde_json::to_string_pretty(&hold)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("hold      {} ({})", hold.id, hold.status.as_str());
    outln!("matter    {}", hold.matter);
    outln!("reason    {}", hold.reason);
    outln!(
        "created   {} by {}",
        hold.created_at.to_rfc3339(),
        hold.created_by
    );
    outln!("condition {}", hold.predicate);
    if let (Some(at), Some(by), Some(approver), Some(why)) = (
        hold.released_at,
        &hold.released_by,
        &hold.release_approved_by,
        &hold.release_justification,
    ) {
        outln!(
            "released  {} by {}, approved by {}: {}",
            at.to_rfc3339(),
            by,
            approver,
            why
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn release(a: ReleaseArgs) -> Result<ExitCode> {
    let mut lake = open(&a.lake).await?;
    let hold = lake
        .holds
        .release(
            &a.id,
            Release {
                released_by: a.by.clone(),
                approved_by: a.approved_by.clone(),
                justification: a.justification,
            },
            Utc::now(),
        )
        .await
        .map_err(govern)?;
    let entry = AuditEntry::new(AuditAction::HoldReleased, &a.by, Utc::now(), &hold.id)
        .with_details(&serde_json::json!({
            "hold": hold.id,
            "approved_by": a.approved_by,
            "holds_version": lake.holds.version(),
        }));
    audited(&mut lake, entry).await?;
    if a.lake.json {
        outln!("{}", serde_json::to_string(&hold)?);
    } else {
        outln!(
            "hold {} released by {}, approved by {}; its records fall back to their schedules",
            hold.id,
            a.by,
            a.approved_by
        );
    }
    Ok(ExitCode::SUCCESS)
}
