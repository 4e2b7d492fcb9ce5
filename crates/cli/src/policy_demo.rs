//! `retain policy demo`: the policy engine alone, no broker or lake.
//!
//! Classifies the sample corpus (real Enron mail from `../shared/data`) and explains the
//! retention of five healthcare cases that ship with the docs, each date with the rule and
//! citation behind it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use retain_policy::Case;
use serde::Serialize;

use crate::policy_cmd::{ClassifySummary, classify_paths, load_policy, render_summary};

/// The cases the demo explains (the same files as `docs/examples/cases/`).
const CASES: [(&str, &str); 5] = [
    (
        "co-minor-clinical.json",
        include_str!("../../../docs/examples/cases/co-minor-clinical.json"),
    ),
    (
        "hipaa-policy-superseded.json",
        include_str!("../../../docs/examples/cases/hipaa-policy-superseded.json"),
    ),
    (
        "az-minor-whichever-first.json",
        include_str!("../../../docs/examples/cases/az-minor-whichever-first.json"),
    ),
    (
        "baa-contract-terminated.json",
        include_str!("../../../docs/examples/cases/baa-contract-terminated.json"),
    ),
    (
        "clinical-no-jurisdiction.json",
        include_str!("../../../docs/examples/cases/clinical-no-jurisdiction.json"),
    ),
];

/// Arguments of `retain policy demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Mail to classify (maildir, mbox, .eml or folders of them).
    #[arg(
        long,
        env = "RETAIN_DEMO_CORPUS",
        default_value = "../shared/data/enron-categorized"
    )]
    corpus: PathBuf,
    /// A policy file layered over the built-in pack.
    #[arg(long, env = "RETAIN_POLICY")]
    policy: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long, env = "RETAIN_DEMO_JSON")]
    json: bool,
}

#[derive(Serialize)]
struct CaseResult {
    case: &'static str,
    category: String,
    retain_until: Option<String>,
    status: String,
    governing: Option<String>,
    citation: Option<String>,
    waiting_for: Vec<String>,
}

#[derive(Serialize)]
struct DemoSummary {
    policy: String,
    policy_version: String,
    corpus: Option<ClassifySummary>,
    cases: Vec<CaseResult>,
}

/// Runs the policy demo.
pub fn run(a: DemoArgs) -> Result<ExitCode> {
    let policy = load_policy(a.policy.as_deref())?;
    let corpus = if a.corpus.exists() {
        Some(classify_paths(
            &policy,
            std::slice::from_ref(&a.corpus),
            "demo",
            &["enron.com".to_owned()],
            false,
        )?)
    } else {
        eprintln!(
            "note: sample corpus {} not found; skipping the corpus part",
            a.corpus.display()
        );
        None
    };
    let mut cases = Vec::new();
    for (name, text) in CASES {
        let case = Case::from_json(name, text)?;
        let x = policy.explain(&case);
        let citation = x
            .governing
            .as_ref()
            .and_then(|g| x.obligations.iter().find(|o| &o.id == g))
            .map(|o| o.citation.clone());
        cases.push(CaseResult {
            case: name,
            category: x.category,
            retain_until: x.retain_until,
            status: x.status,
            governing: x.governing,
            citation,
            waiting_for: x.waiting_for,
        });
    }
    let summary = DemoSummary {
        policy: policy.name().to_owned(),
        policy_version: policy.version().to_owned(),
        corpus,
        cases,
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "Retain policy demo: {} ({})",
        summary.policy,
        summary.policy_version
    );
    outln!(
        "{} rules, {} obligations\n",
        policy.rule_count(),
        policy.obligation_count()
    );
    if let Some(c) = &summary.corpus {
        out!("{}", render_summary(c, &policy));
        outln!();
    }
    outln!("Retention of the example cases (docs/examples/cases/):");
    for c in &summary.cases {
        let until = match (&c.retain_until, c.status.as_str()) {
            (Some(d), _) => d.clone(),
            (None, "pending") => format!("pending: needs {}", c.waiting_for.join(", ")),
            (None, s) => s.to_owned(),
        };
        outln!(
            "  {:<32} {:<20} {:<24} {}",
            c.case,
            c.category,
            until,
            c.governing.as_deref().unwrap_or("")
        );
        if let Some(cit) = &c.citation {
            outln!("  {:<32} {}", "", cit);
        }
    }
    outln!("\nNext:");
    outln!(
        "  retain policy explain --input docs/examples/cases/co-minor-clinical.json --format text"
    );
    outln!("  retain policy check docs/examples/policy.toml --list");
    outln!("  retain policy classify PATH...   (maildir, mbox or .eml)");
    Ok(ExitCode::SUCCESS)
}
