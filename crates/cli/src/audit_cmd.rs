//! `retain audit verify|show`: the tamper-evident audit trail (`docs/audit.md`), and the
//! helpers `retain run` and `retain demo` use to find it and to log the policy they loaded.
//!
//! Entries hold ids, offsets, counts and hashes by contract (never PHI), so `show` prints
//! them as stored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use retain_lake::deltalake::{DeltaTableBuilder, ensure_table_uri};
use retain_lake::{AuditAction, AuditEntry, AuditRecord, AuditTable, ChainHead};
use serde::Serialize;

use crate::config;
use crate::output::{BadInput, table};

/// `retain audit ...`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk the hash chain from seq 0: print the entries checked, the table version and the
    /// head (SEQ:HASH, to record outside the table); exit 1 naming the first broken link.
    Verify(VerifyArgs),
    /// Print the newest entries as stored (ids and counts, never PHI); not a verification.
    Show(ShowArgs),
}

/// Where the audit table is.
#[derive(Args, Debug)]
pub struct Where {
    /// The lake (a folder or URL holding `records` and `audit`): the audit table is
    /// `<lake>/audit`. Default: `lake`, the demo's.
    #[arg(long, value_name = "DIR_OR_URL", conflicts_with = "table")]
    lake: Option<String>,
    /// The audit table itself: a path, `file://` or `s3://` URL.
    #[arg(long, value_name = "LOCATION")]
    table: Option<String>,
    /// A configuration file (deploy/retain.toml): its `[lake] audit` (default: the sibling
    /// `audit` of `[lake] location`) and `[lake.storage]` options.
    #[arg(long, value_name = "FILE", env = "RETAIN_CONFIG")]
    config: Option<PathBuf>,
}

/// Arguments of `retain audit verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    at: Where,
    /// A head recorded earlier outside the table (`SEQ:HASH`): also catches a truncated tail
    /// or a log rewritten with fresh hashes.
    #[arg(long, value_name = "SEQ:HASH")]
    expect_head: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `retain audit show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    at: Where,
    /// How many of the newest entries (0: all).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the entries as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `retain audit ...`.
pub fn run(cmd: AuditCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cmd {
        AuditCommand::Verify(a) => runtime.block_on(verify(a)),
        AuditCommand::Show(a) => runtime.block_on(show(a)),
    }
}

/// The sibling `audit` of a `records` table location (`lake/records` → `lake/audit`,
/// `s3://b/x/records/` → `s3://b/x/audit`); `None` when its last segment is not `records`.
pub fn sibling_audit(records: &str) -> Option<String> {
    let trimmed = records.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, "records")) => Some(format!("{parent}/audit")),
        None if trimmed == "records" => Some("audit".to_owned()),
        _ => None,
    }
}

/// Appends a `policy_loaded` entry (target: the policy's content hash; details: its sources)
/// to the audit table at `location`, creating the table if needed.
pub async fn policy_loaded(
    location: &str,
    storage: &HashMap<String, String>,
    policy: &retain_policy::Policy,
    actor: &str,
) -> Result<()> {
    let mut t = AuditTable::open_or_create(location, storage.clone())
        .await
        .context("opening the audit table")?;
    let entry = AuditEntry::new(
        AuditAction::PolicyLoaded,
        actor,
        chrono::Utc::now(),
        policy.version(),
    )
    .with_details(&serde_json::json!({ "name": policy.name(), "sources": policy.sources() }));
    t.append(&[entry])
        .await
        .context("appending policy_loaded to the audit trail")?;
    Ok(())
}

/// Resolves the location and storage options, and opens the table; refuses (exit 2) a location
/// without an audit table rather than creating one.
async fn open(w: &Where) -> Result<AuditTable> {
    let (file, origin) = config::load(w.config.as_deref(), std::env::vars())?;
    let storage: HashMap<String, String> =
        crate::run::flatten(&file.lake.storage, &origin, "lake.storage")?
            .into_iter()
            .collect();
    let location = if let Some(t) = &w.table {
        t.clone()
    } else if let Some(l) = &w.lake {
        format!("{}/audit", l.trim_end_matches('/'))
    } else if let Some(a) = file.lake.audit.clone() {
        a
    } else if let Some(r) = &file.lake.location {
        sibling_audit(r).ok_or_else(|| {
            BadInput(format!(
                "{origin}: [lake] location `{r}` does not end in `records`; set [lake] audit or pass --table"
            ))
        })?
    } else {
        "lake/audit".to_owned()
    };
    if !exists(&location, &storage).await? {
        return Err(BadInput(format!(
            "no audit table at {location} (give --lake DIR_OR_URL or --table LOCATION)"
        ))
        .into());
    }
    match AuditTable::open_or_create(&location, storage).await {
        Err(retain_lake::Error::SchemaMismatch { url, .. }) => Err(BadInput(format!(
            "{url} is a Delta table but not an audit table (its columns differ)"
        ))
        .into()),
        other => Ok(other?),
    }
}

/// Whether a Delta table exists at `location`, without creating anything.
pub(crate) async fn exists(location: &str, storage: &HashMap<String, String>) -> Result<bool> {
    let local = match location.strip_prefix("file://") {
        Some(p) => Some(PathBuf::from(p)),
        None if !location.contains("://") => Some(PathBuf::from(location)),
        None => None,
    };
    if let Some(path) = local {
        return Ok(Path::new(&path).join("_delta_log").is_dir());
    }
    retain_lake::register_storage_handlers();
    let url = ensure_table_uri(location).map_err(|e| BadInput(format!("{location}: {e}")))?;
    let table = DeltaTableBuilder::from_url(url)?
        .with_storage_options(storage.clone())
        .build()?;
    Ok(table.verify_deltatable_existence().await?)
}

#[derive(Debug, Serialize)]
struct Broken {
    seq: i64,
    problem: String,
}

#[derive(Debug, Serialize)]
struct VerifyOut {
    table: String,
    version: u64,
    intact: bool,
    entries: usize,
    entries_checked: u64,
    actions: BTreeMap<String, u64>,
    head: Option<String>,
    expected_head: Option<String>,
    broken: Option<Broken>,
}

async fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let expected = a
        .expect_head
        .as_deref()
        .map(|h| {
            h.parse::<ChainHead>()
                .map_err(|e| BadInput(format!("--expect-head: {e}")))
        })
        .transpose()?;
    let mut t = open(&a.at).await?;
    let report = match &expected {
        Some(h) => t.verify_expecting(h).await?,
        None => t.verify().await?,
    };
    let mut actions = BTreeMap::new();
    let entries = t.entries().await?;
    for e in &entries {
        *actions.entry(e.action.clone()).or_insert(0) += 1;
    }
    let out = VerifyOut {
        table: t.url().to_owned(),
        version: report.version,
        intact: report.is_intact(),
        entries: entries.len(),
        entries_checked: report.entries_checked,
        actions,
        head: report.head.as_ref().map(ToString::to_string),
        expected_head: expected.as_ref().map(ToString::to_string),
        broken: report.broken.as_ref().map(|b| Broken {
            seq: b.seq,
            problem: b.problem.to_string(),
        }),
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        outln!("audit table: {} (Delta version {})", out.table, out.version);
        let by_action: Vec<String> = out
            .actions
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        outln!(
            "entries: {} ({})",
            out.entries,
            if by_action.is_empty() {
                "none".to_owned()
            } else {
                by_action.join(", ")
            }
        );
        match &out.broken {
            None => {
                outln!("checked: {} entries, chain intact", out.entries_checked);
                match &out.head {
                    Some(h) => outln!(
                        "head: {h}\n(record the head outside the table; check it later with --expect-head)"
                    ),
                    None => outln!("head: none (the table is empty)"),
                }
            }
            Some(b) => {
                outln!(
                    "BROKEN at seq {}: {}\nchecked: {} sound entries before it; last sound head: {}",
                    b.seq,
                    b.problem,
                    out.entries_checked,
                    out.head.as_deref().unwrap_or("none")
                );
            }
        }
    }
    Ok(if out.intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Debug, Serialize)]
struct ShowEntry {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    /// The stored JSON, parsed when it parses (as stored otherwise).
    details: serde_json::Value,
    table_version: Option<i64>,
    lineage: Option<String>,
    hash: String,
}

impl From<AuditRecord> for ShowEntry {
    fn from(r: AuditRecord) -> Self {
        ShowEntry {
            seq: r.seq,
            at: r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            details: serde_json::from_str(&r.details)
                .unwrap_or(serde_json::Value::String(r.details)),
            actor: r.actor,
            action: r.action,
            target: r.target,
            table_version: r.table_version,
            lineage: r.lineage,
            hash: r.hash,
        }
    }
}

async fn show(a: ShowArgs) -> Result<ExitCode> {
    let mut t = open(&a.at).await?;
    let mut entries = t.entries().await?;
    if a.limit > 0 && entries.len() > a.limit {
        entries.drain(..entries.len() - a.limit);
    }
    let shown: Vec<ShowEntry> = entries.into_iter().map(ShowEntry::from).collect();
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.at.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                e.table_version.map(|v| v.to_string()).unwrap_or_default(),
                e.details.to_string(),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "seq", "at", "actor", "action", "target", "version", "details"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_table_defaults_to_the_records_sibling() {
        assert_eq!(sibling_audit("lake/records").as_deref(), Some("lake/audit"));
        assert_eq!(
            sibling_audit("s3://bucket/x/records/").as_deref(),
            Some("s3://bucket/x/audit")
        );
        assert_eq!(sibling_audit("records").as_deref(), Some("audit"));
        assert_eq!(sibling_audit("lake/mail-records"), None);
    }
}
