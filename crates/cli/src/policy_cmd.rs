//! `retain policy check|explain|classify`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use retain_mail::{MailSource, MailboxRule, MessageContext};
use retain_policy::{Case, Policy};
use serde::Serialize;

use crate::output::{BadInput, Format, count, csv_field, spinner, table};

/// `retain policy ...`
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file (layered over the built-in pack) and summarise it.
    Check(CheckArgs),
    /// Classify and schedule one case and explain every date with its rule and citation.
    Explain(ExplainArgs),
    /// Classify every message under maildir/mbox/.eml paths and count the categories.
    Classify(ClassifyArgs),
    /// The policy engine on the sample corpus and five healthcare cases (no broker, no lake).
    Demo(crate::policy_demo::DemoArgs),
    /// What a new policy would change on every landed record (nothing written but an audit
    /// entry): dates moving later, earlier, becoming due now, by category and rule.
    Diff(DiffArgs),
    /// Recompute every landed record under a new policy and rewrite the changed rows in one
    /// commit (idempotent, audited); refused under the compliance lock if a date moves earlier.
    Apply(ApplyArgs),
    /// Turn the compliance lock on: from then on `apply` refuses any earlier date. There is no
    /// way to turn it off.
    Lock(LockArgs),
}

/// Arguments of `retain policy diff`.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The new policy file (TOML), layered over the built-in pack; `builtin` for the pack alone.
    #[arg(env = "RETAIN_NEW_POLICY")]
    policy: String,
    /// Who asks (written to the audit trail).
    #[arg(long, env = "RETAIN_BY", default_value = "retain-cli")]
    by: String,
    /// "Due now" as of this date (default: today, never later than today).
    #[arg(long, value_name = "DATE", env = "RETAIN_AS_OF")]
    as_of: Option<chrono::NaiveDate>,
    #[command(flatten)]
    lake: crate::hold_cmd::LakeArgs,
}

/// Arguments of `retain policy apply`.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// The new policy file (TOML); `builtin` for the pack alone.
    #[arg(env = "RETAIN_NEW_POLICY")]
    policy: String,
    /// Who approved the change (must differ from --by).
    #[arg(long, env = "RETAIN_APPROVED_BY")]
    approved_by: String,
    /// Who applies it.
    #[arg(long, env = "RETAIN_BY")]
    by: String,
    #[command(flatten)]
    lake: crate::hold_cmd::LakeArgs,
}

/// Arguments of `retain policy lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    /// Who turns the lock on.
    #[arg(long, env = "RETAIN_BY")]
    by: String,
    #[command(flatten)]
    lake: crate::hold_cmd::LakeArgs,
}

/// Arguments of `retain policy check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The policy file (TOML); `builtin` checks the built-in pack alone.
    #[arg(env = "RETAIN_POLICY")]
    file: String,
    /// Also list every obligation in force.
    #[arg(long, env = "RETAIN_CHECK_LIST")]
    list: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", env = "RETAIN_FORMAT")]
    format: Format,
}

/// Arguments of `retain policy explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The case: JSON with `message`, `facts` and `events` (`-` reads standard input).
    #[arg(long, short, env = "RETAIN_CASE")]
    input: String,
    /// A policy file layered over the built-in pack (default: the built-in pack).
    #[arg(long, env = "RETAIN_POLICY")]
    policy: Option<PathBuf>,
    /// `json` (the documented contract) or `text` (for people).
    #[arg(
        long,
        value_enum,
        default_value = "json",
        env = "RETAIN_EXPLAIN_FORMAT"
    )]
    format: ExplainFormat,
}

/// Output of `retain policy explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    /// JSON.
    Json,
    /// Words.
    Text,
}

/// Arguments of `retain policy classify`.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// Maildir folders, mbox files, .eml files or folders of them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// A policy file layered over the built-in pack (default: the built-in pack).
    #[arg(long, env = "RETAIN_POLICY")]
    policy: Option<PathBuf>,
    /// Tenant recorded on the messages.
    #[arg(long, default_value = "default", env = "RETAIN_TENANT")]
    tenant: String,
    /// The organisation's own mail domains (decide inbound/outbound/internal).
    #[arg(
        long = "internal-domain",
        env = "RETAIN_INTERNAL_DOMAINS",
        value_delimiter = ','
    )]
    internal_domains: Vec<String>,
    /// List every skipped file, not only the counts by reason.
    #[arg(long, env = "RETAIN_LIST_SKIPPED")]
    list_skipped: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", env = "RETAIN_FORMAT")]
    format: Format,
}

/// Runs a `retain policy` command.
pub fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Check(a) => check(a),
        PolicyCommand::Explain(a) => explain(a),
        PolicyCommand::Classify(a) => classify_cmd(a),
        PolicyCommand::Demo(a) => crate::policy_demo::run(a),
        PolicyCommand::Diff(a) => change_cmd(ChangeCmd::Diff(a)),
        PolicyCommand::Apply(a) => change_cmd(ChangeCmd::Apply(a)),
        PolicyCommand::Lock(a) => change_cmd(ChangeCmd::Lock(a)),
    }
}

enum ChangeCmd {
    Diff(DiffArgs),
    Apply(ApplyArgs),
    Lock(LockArgs),
}

fn load_named(name: &str) -> Result<Policy> {
    if name == "builtin" {
        load_policy(None)
    } else {
        Ok(Policy::load(name)?)
    }
}

/// Refusals (the lock, blank or equal names) exit 2.
fn events_error(e: retain_events::Error) -> anyhow::Error {
    if e.is_refusal() {
        BadInput(e.to_string()).into()
    } else {
        anyhow::Error::new(e)
    }
}

fn change_cmd(cmd: ChangeCmd) -> Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let lake = match &cmd {
            ChangeCmd::Diff(a) => &a.lake,
            ChangeCmd::Apply(a) => &a.lake,
            ChangeCmd::Lock(a) => &a.lake,
        };
        let options = crate::hold_cmd::storage(lake)?;
        let mut records = crate::hold_cmd::records(lake, &options).await?;
        let mut audit = retain_lake::AuditTable::open_or_create(
            &crate::hold_cmd::table_location(&lake.lake, "audit"),
            options,
        )
        .await
        .context("opening the audit table")?;
        let json = lake.json;
        let today = chrono::Utc::now().date_naive();
        match cmd {
            ChangeCmd::Lock(a) => {
                let v =
                    retain_events::lock(&mut records, Some(&mut audit), &a.by, chrono::Utc::now())
                        .await
                        .map_err(events_error)?;
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({ "locked": true, "records_version": v })
                    );
                } else {
                    outln!("compliance lock: on (records version {v}); it cannot be turned off");
                }
                Ok(ExitCode::SUCCESS)
            }
            ChangeCmd::Diff(a) => {
                let policy = load_named(&a.policy)?;
                let as_of = a.as_of.map_or(today, |d| d.min(today));
                let report = retain_events::PolicyChange::new(&policy, as_of)
                    .diff(&mut records, Some(&mut audit), &a.by, chrono::Utc::now())
                    .await
                    .map_err(events_error)?;
                print_report(&report, json);
                Ok(ExitCode::SUCCESS)
            }
            ChangeCmd::Apply(a) => {
                if a.by.trim().eq_ignore_ascii_case(a.approved_by.trim()) {
                    return Err(BadInput(
                        "--approved-by must name someone other than --by".to_owned(),
                    )
                    .into());
                }
                let policy = load_named(&a.policy)?;
                let applied = retain_events::PolicyChange::new(&policy, today)
                    .apply(
                        &mut records,
                        Some(&mut audit),
                        &a.by,
                        &a.approved_by,
                        chrono::Utc::now(),
                    )
                    .await
                    .map_err(events_error)?;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&applied)?);
                } else {
                    print_report(&applied.report, false);
                    match applied.version {
                        Some(v) => outln!(
                            "applied: {} record(s) rewritten in records version {v}",
                            applied.rows_changed
                        ),
                        None => outln!(
                            "nothing to apply: every record is already scheduled under this policy"
                        ),
                    }
                }
                Ok(if applied.version.is_some() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                })
            }
        }
    })
}

fn print_report(r: &retain_events::DiffReport, json: bool) {
    if json {
        outln!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    outln!(
        "policy {} over {} record(s) (records version {}, due as of {}){}",
        r.policy_version,
        r.records,
        r.records_version,
        r.as_of.map(|d| d.to_string()).unwrap_or_default(),
        if r.locked { "; compliance lock ON" } else { "" }
    );
    outln!(
        "later: {}  earlier: {}  due now: {}  same date, rewritten: {}  unchanged: {}",
        r.total.later,
        r.total.earlier,
        r.total.due_now,
        r.total.same_date,
        r.total.unchanged
    );
    if let Some(d) = r.earliest_newly_due {
        outln!("earliest newly due date: {d}");
    }
    let rows = |m: &std::collections::BTreeMap<String, retain_events::change::Counts>| {
        m.iter()
            .filter(|(_, c)| c.changed() > 0)
            .map(|(k, c)| {
                vec![
                    k.clone(),
                    c.later.to_string(),
                    c.earlier.to_string(),
                    c.due_now.to_string(),
                    c.same_date.to_string(),
                    c.unchanged.to_string(),
                ]
            })
            .collect::<Vec<_>>()
    };
    let header = ["later", "earlier", "due now", "same date", "unchanged"];
    let by_cat = rows(&r.by_category);
    if !by_cat.is_empty() {
        let mut h = vec!["category"];
        h.extend(header);
        outln!("{}", table(&h, &by_cat));
        let mut h = vec!["governing rule (new)"];
        h.extend(header);
        outln!("{}", table(&h, &rows(&r.by_rule)));
    }
    for (what, keys) in [
        ("later", &r.samples_later),
        ("earlier", &r.samples_earlier),
        ("due now", &r.samples_due_now),
    ] {
        if !keys.is_empty() {
            outln!("sample record keys ({what}): {}", keys.join(" "));
        }
    }
    outln!("scanned and recomputed in {} ms", r.elapsed_ms);
}

/// Loads the built-in pack, or a file layered over it.
pub fn load_policy(path: Option<&Path>) -> Result<Policy> {
    Ok(match path {
        None => Policy::builtin().context("the built-in policy pack does not compile (a bug)")?,
        Some(p) => Policy::load(p)?,
    })
}

#[derive(Serialize)]
struct CheckReport<'a> {
    ok: bool,
    name: &'a str,
    label: Option<&'a str>,
    version: &'a str,
    sources: &'a [String],
    categories: Vec<&'a str>,
    rules: usize,
    obligations: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    obligation_list: Option<&'a [retain_policy::ObligationInfo]>,
}

fn check(a: CheckArgs) -> Result<ExitCode> {
    let policy = if a.file == "builtin" {
        load_policy(None)?
    } else {
        load_policy(Some(Path::new(&a.file)))?
    };
    let report = CheckReport {
        ok: true,
        name: policy.name(),
        label: policy.label(),
        version: policy.version(),
        sources: policy.sources(),
        categories: policy
            .categories()
            .iter()
            .map(|(c, _)| c.as_str())
            .collect(),
        rules: policy.rule_count(),
        obligations: policy.obligation_count(),
        obligation_list: a.list.then(|| policy.obligations()),
    };
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Format::Csv => {
            outln!(
                "id,citation,source_quality,categories,jurisdictions,record_holders,programs,defined_at"
            );
            for o in policy.obligations() {
                let cells = [
                    o.id.clone(),
                    o.citation.clone(),
                    o.source_quality.clone(),
                    o.categories.join(" "),
                    o.jurisdictions.join(" "),
                    o.record_holders.join(" "),
                    o.programs.join(" "),
                    o.defined_at.clone(),
                ];
                outln!(
                    "{}",
                    cells
                        .iter()
                        .map(|c| csv_field(c))
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
        Format::Table => {
            outln!("ok: {} ({})", report.name, report.version);
            outln!("layers:      {}", report.sources.join(" < "));
            outln!("categories:  {}", report.categories.join(", "));
            outln!("rules:       {}", report.rules);
            outln!("obligations: {}", report.obligations);
            if a.list {
                let rows: Vec<Vec<String>> = policy
                    .obligations()
                    .iter()
                    .map(|o| {
                        vec![
                            o.id.clone(),
                            o.jurisdictions.join(" "),
                            o.record_holders.join(" "),
                            o.categories.join(" "),
                            o.source_quality.clone(),
                        ]
                    })
                    .collect();
                outln!();
                out!(
                    "{}",
                    table(
                        &[
                            "obligation",
                            "where",
                            "holders",
                            "categories",
                            "source quality"
                        ],
                        &rows
                    )
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(a: ExplainArgs) -> Result<ExitCode> {
    let (name, text) = if a.input == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the case from standard input")?;
        ("<stdin>".to_owned(), s)
    } else {
        let text = std::fs::read_to_string(&a.input)
            .map_err(|e| BadInput(format!("cannot read case file {}: {e}", a.input)))?;
        (a.input.clone(), text)
    };
    let case = Case::from_json(&name, &text)?;
    let policy = load_policy(a.policy.as_deref())?;
    let x = policy.explain(&case);
    match a.format {
        ExplainFormat::Json => outln!("{}", serde_json::to_string_pretty(&x)?),
        ExplainFormat::Text => out!("{}", x.to_text()),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `retain policy classify` found.
#[derive(Debug, Default, Serialize)]
pub struct ClassifySummary {
    /// The paths read.
    pub paths: Vec<String>,
    /// Content hash of the policy used.
    pub policy_version: String,
    /// Messages classified.
    pub messages: u64,
    /// Messages by category.
    pub by_category: BTreeMap<String, u64>,
    /// Messages with any PHI indicator, by category.
    pub with_phi: BTreeMap<String, u64>,
    /// Messages by retention status (scheduled/indefinite/pending) under the policy's defaults.
    pub by_status: BTreeMap<String, u64>,
    /// Distinct custodians.
    pub custodians: usize,
    /// Files that are not e-mail, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// The skipped files (only with --list-skipped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_files: Vec<Problem>,
    /// Files or messages that could not be read, each with its reason.
    pub failed: Vec<Problem>,
    /// Fields left empty because the header was implausible or missing.
    pub warnings: BTreeMap<String, u64>,
    /// Seconds spent.
    pub seconds: f64,
}

/// A file (and mbox position) with the reason it was skipped or failed. No content.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// Where.
    pub at: String,
    /// Why.
    pub reason: String,
}

/// Classifies and schedules (with no facts) every message under `paths`.
pub fn classify_paths(
    policy: &Policy,
    paths: &[PathBuf],
    tenant: &str,
    internal_domains: &[String],
    list_skipped: bool,
) -> Result<ClassifySummary> {
    let started = Instant::now();
    let mut s = ClassifySummary {
        paths: paths.iter().map(|p| p.display().to_string()).collect(),
        policy_version: policy.version().to_owned(),
        ..Default::default()
    };
    let mut custodians = BTreeSet::new();
    let facts = retain_model::Facts::default();
    let pb = spinner("classifying");
    for path in paths {
        if !path.exists() {
            return Err(BadInput(format!("{}: no such file or folder", path.display())).into());
        }
        let ctx = MessageContext::new(
            tenant,
            MailboxRule::FromXOrigin {
                fallback: "unknown".to_owned(),
            },
            chrono::Utc::now(),
        )
        .with_internal_domains(internal_domains.iter().cloned());
        let source = MailSource::new(path.clone(), ctx.clone());
        for item in source {
            match item {
                Ok((_at, message)) => {
                    let (c, d) = policy.decide(&message, &facts, &[]);
                    s.messages += 1;
                    pb.inc(1);
                    *s.by_category.entry(c.category.to_string()).or_default() += 1;
                    if c.phi.any() {
                        *s.with_phi.entry(c.category.to_string()).or_default() += 1;
                    }
                    *s.by_status.entry(d.status.as_str().to_owned()).or_default() += 1;
                    custodians.insert(message.custodian_or_mailbox().to_owned());
                }
                Err(e) if e.is_skip() => {
                    let reason = e.to_string();
                    let key = skip_reason(&e);
                    *s.skipped.entry(key).or_default() += 1;
                    if list_skipped {
                        s.skipped_files.push(Problem {
                            at: e.source_ref().map(|r| r.to_string()).unwrap_or_default(),
                            reason,
                        });
                    }
                }
                Err(e) => s.failed.push(Problem {
                    at: e.source_ref().map(|r| r.to_string()).unwrap_or_default(),
                    reason: e.to_string(),
                }),
            }
        }
        add_warnings(&ctx, &mut s.warnings);
    }
    pb.finish_and_clear();
    s.custodians = custodians.len();
    s.seconds = started.elapsed().as_secs_f64();
    Ok(s)
}

/// Adds the header warnings a reading context counted (fields left empty) to `into`.
pub fn add_warnings(ctx: &MessageContext, into: &mut BTreeMap<String, u64>) {
    let w = ctx.warnings.snapshot();
    for (k, v) in [
        ("implausible_date", w.implausible_date),
        ("unparseable_date", w.unparseable_date),
        ("missing_date", w.missing_date),
        ("missing_message_id", w.missing_message_id),
        ("implausible_received", w.implausible_received),
    ] {
        if v > 0 {
            *into.entry(k.to_owned()).or_default() += v;
        }
    }
}

/// The short reason a file was skipped (`empty`, `binary`, `no_header_block`, ...).
pub fn skip_reason(e: &retain_mail::Error) -> String {
    match e {
        retain_mail::Error::NotAMessage { reason, .. } => reason.as_str().to_owned(),
        other => other.to_string(),
    }
}

fn classify_cmd(a: ClassifyArgs) -> Result<ExitCode> {
    let policy = load_policy(a.policy.as_deref())?;
    let s = classify_paths(
        &policy,
        &a.paths,
        &a.tenant,
        &a.internal_domains,
        a.list_skipped,
    )?;
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&s)?),
        Format::Csv => {
            outln!("category,messages,with_phi");
            for (c, n) in &s.by_category {
                outln!(
                    "{},{},{}",
                    csv_field(c),
                    n,
                    s.with_phi.get(c).copied().unwrap_or(0)
                );
            }
        }
        Format::Table => out!("{}", render_summary(&s, &policy)),
    }
    Ok(if s.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The classify summary for people.
pub fn render_summary(s: &ClassifySummary, policy: &Policy) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Classified {} messages from {} in {:.2} s (policy {}, {} rules, {} obligations)\n",
        count(s.messages),
        s.paths.join(", "),
        s.seconds,
        s.policy_version,
        policy.rule_count(),
        policy.obligation_count()
    );
    let mut rows: Vec<(&String, &u64)> = s.by_category.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(c, n)| {
            let share = if s.messages > 0 {
                100.0 * *n as f64 / s.messages as f64
            } else {
                0.0
            };
            let note = if c == "unclassified" {
                "kept; flagged for review"
            } else {
                ""
            };
            vec![
                c.clone(),
                count(*n),
                format!("{share:.1}%"),
                count(s.with_phi.get(c).copied().unwrap_or(0)),
                note.to_owned(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["category", "messages", "share", "with PHI", ""],
        &rows,
    ));
    let status: Vec<String> = s
        .by_status
        .iter()
        .map(|(k, v)| format!("{k} {}", count(*v)))
        .collect();
    let _ = writeln!(out, "\nretention (no facts given): {}", status.join(", "));
    let _ = writeln!(out, "custodians: {}", count(s.custodians as u64));
    render_read_problems(&mut out, &s.warnings, &s.skipped, &s.skipped_files);
    let _ = writeln!(out, "failed: {}", s.failed.len());
    for p in &s.failed {
        let _ = writeln!(out, "  {}: {}", p.at, p.reason);
    }
    out
}

/// The header warnings and skipped files of a read, for people (shared by `policy classify`
/// and `import`).
pub fn render_read_problems(
    out: &mut String,
    warnings: &BTreeMap<String, u64>,
    skipped: &BTreeMap<String, u64>,
    skipped_files: &[Problem],
) {
    use std::fmt::Write as _;
    if !warnings.is_empty() {
        let w: Vec<String> = warnings.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "header warnings (field left empty): {}", w.join(", "));
    }
    if !skipped.is_empty() {
        let total: u64 = skipped.values().sum();
        let w: Vec<String> = skipped
            .iter()
            .map(|(k, v)| format!("{k} {}", count(*v)))
            .collect();
        let _ = writeln!(
            out,
            "skipped {} files that are not e-mail: {}",
            count(total),
            w.join(", ")
        );
        for p in skipped_files {
            let _ = writeln!(out, "  skipped {}: {}", p.at, p.reason);
        }
    }
}
