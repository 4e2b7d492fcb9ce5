//! Retain's policy engine.
//!
//! A [`Policy`] is compiled from the built-in pack (federal and state retention law, default
//! classification rules) layered under an organisation's policy file. It answers two questions,
//! as pure functions with no I/O:
//! - [`Policy::classify`]: what kind of record is this message?
//! - [`Policy::schedule`]: until when must it be kept, and which obligations say so?
//!
//! Every answer carries the policy's content hash ([`Policy::version`]).

mod classify;
mod doc;
mod error;
mod explain;
mod expr;
mod schedule;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use retain_model::{
    Category, Classification, Facts, MailMessage, RetentionDecision, RetentionEvent,
};
use sha2::{Digest, Sha256};

pub use error::{Error, Result};
pub use explain::{Case, Explanation};
pub use schedule::{EVERYWHERE, Record, combine};

use classify::Classifier;
use doc::MergedDoc;
use schedule::Scheduler;

/// The built-in pack, in layering order: categories and classification rules, federal law,
/// state law. Each file is a policy document in the same format organisations write.
pub const BUILTIN_PACK: [(&str, &str); 3] = [
    (
        "builtin:classification.toml",
        include_str!("../pack/classification.toml"),
    ),
    ("builtin:federal.toml", include_str!("../pack/federal.toml")),
    ("builtin:state.toml", include_str!("../pack/state.toml")),
];

/// One obligation in force, as listed by [`Policy::obligations`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObligationInfo {
    /// Stable id.
    pub id: String,
    /// Legal (or organisational) citation.
    pub citation: String,
    /// Reliability of the source.
    pub source_quality: String,
    /// Categories it applies to.
    pub categories: Vec<String>,
    /// Jurisdictions (`US` = everywhere).
    pub jurisdictions: Vec<String>,
    /// Record holders (`*` = any).
    pub record_holders: Vec<String>,
    /// Programs it is limited to (empty = any).
    pub programs: Vec<String>,
    /// The file and line it was written at.
    pub defined_at: String,
}

/// A compiled policy: classification rules and retention obligations.
pub struct Policy {
    version: Arc<str>,
    name: String,
    label: Option<String>,
    sources: Vec<String>,
    categories: Vec<(Category, String)>,
    obligations: Vec<ObligationInfo>,
    classifier: Classifier,
    scheduler: Scheduler,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("version", &self.version)
            .field("name", &self.name)
            .field("sources", &self.sources)
            .field("rules", &self.classifier.rule_count())
            .field("obligations", &self.scheduler.obligation_count())
            .finish()
    }
}

impl Policy {
    /// The built-in pack alone.
    pub fn builtin() -> Result<Self> {
        Self::from_sources(&[])
    }

    /// Loads a policy file and layers it over the built-in pack (unless it says
    /// `extends = "none"`).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_sources(&[(&path.display().to_string(), &text)])
    }

    /// Layers policy documents `(file name, TOML text)` over the built-in pack, in order.
    /// The first document may opt out of the pack with `extends = "none"`.
    pub fn from_sources(docs: &[(&str, &str)]) -> Result<Self> {
        let parsed = docs
            .iter()
            .map(|(file, text)| doc::parse(file, text).map(|(d, f)| (d, f, *text)))
            .collect::<Result<Vec<_>>>()?;
        let extends = parsed
            .iter()
            .find_map(|(d, _, _)| d.policy.extends.clone())
            .unwrap_or_else(|| "builtin".to_owned());
        let mut merged = MergedDoc::default();
        match extends.as_str() {
            "builtin" => {
                for (file, text) in BUILTIN_PACK {
                    let (d, f) = doc::parse(file, text)?;
                    merged.layer(f, text, d)?;
                }
            }
            "none" => {}
            other => {
                let (file, text) = docs.first().copied().unwrap_or(("policy", ""));
                let line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with("extends"))
                    .map_or(1, |i| i + 1);
                return Err(Error::Invalid {
                    file: file.to_owned(),
                    line,
                    item: "[policy]".to_owned(),
                    field: "extends".to_owned(),
                    message: format!("\"{other}\" is not known; use \"builtin\" or \"none\""),
                });
            }
        }
        if !parsed.is_empty() {
            // The pack's name and label describe the pack, not an organisation's policy.
            merged.header.name = None;
            merged.header.label = None;
        }
        for (d, f, text) in parsed {
            merged.layer(f, text, d)?;
        }
        Self::compile(merged)
    }

    fn compile(merged: MergedDoc) -> Result<Self> {
        let mut categories: HashMap<String, (Category, bool)> = HashMap::new();
        let mut listed = Vec::new();
        for c in &merged.categories {
            let cat = Category::new(&c.item.code).map_err(|e| {
                c.loc
                    .invalid(format!("category `{}`", c.item.code), "code", e.to_string())
            })?;
            if cat.is_unclassified() {
                return Err(c.loc.invalid(
                    "category `unclassified`".to_owned(),
                    "code",
                    "`unclassified` is built in and cannot be redefined",
                ));
            }
            categories.insert(c.item.code.clone(), (cat.clone(), c.item.state_law));
            listed.push((cat, c.item.description.clone()));
        }
        let names: HashMap<String, Category> = categories
            .iter()
            .map(|(k, (c, _))| (k.clone(), c.clone()))
            .collect();
        let classifier = Classifier::compile(&merged, &names)?;
        let scheduler = Scheduler::compile(&merged, &categories)?;
        let obligations = merged
            .obligations
            .iter()
            .filter(|o| o.item.enabled && !merged.header.disable_obligations.contains(&o.item.id))
            .map(|o| ObligationInfo {
                id: o.item.id.clone(),
                citation: o.item.citation.clone(),
                source_quality: o.item.source_quality.clone(),
                categories: o.item.categories.clone(),
                jurisdictions: o
                    .item
                    .jurisdictions
                    .iter()
                    .map(|j| j.to_ascii_uppercase())
                    .collect(),
                record_holders: o.item.record_holders.clone(),
                programs: o.item.programs.clone(),
                defined_at: format!("{}:{}", o.loc.file, o.loc.line),
            })
            .collect();
        let digest = Sha256::digest(merged.canonical_json().as_bytes());
        let version = format!("sha256:{}", &hex::encode(digest)[..16]);
        Ok(Policy {
            version: Arc::from(version),
            name: merged
                .header
                .name
                .clone()
                .unwrap_or_else(|| "unnamed policy".to_owned()),
            label: merged.header.label.clone(),
            sources: merged.sources.clone(),
            categories: listed,
            obligations,
            classifier,
            scheduler,
        })
    }

    /// The content hash of the effective policy (`sha256:` + 16 hex digits), recorded on every
    /// decision. Whitespace and comments in the files do not change it; any rule or
    /// obligation change does.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The policy's name from `[policy] name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The human label from `[policy] label`, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The documents layered, in order.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The categories defined (with descriptions), in definition order.
    pub fn categories(&self) -> &[(Category, String)] {
        &self.categories
    }

    /// The obligations in force, in policy order.
    pub fn obligations(&self) -> &[ObligationInfo] {
        &self.obligations
    }

    /// How many classification rules are in force.
    pub fn rule_count(&self) -> usize {
        self.classifier.rule_count()
    }

    /// How many retention obligations are in force.
    pub fn obligation_count(&self) -> usize {
        self.scheduler.obligation_count()
    }

    /// Classifies a message. Deterministic.
    pub fn classify(&self, message: &MailMessage) -> Classification {
        self.classifier.classify(message, &self.version)
    }

    /// Until when a record must be kept. Holds are not the engine's business.
    pub fn schedule(
        &self,
        record: Record<'_>,
        facts: &Facts,
        events: &[RetentionEvent],
    ) -> RetentionDecision {
        self.scheduler
            .schedule(record, facts, events, &self.version)
    }

    /// The jurisdiction and record holder a record with these facts is scheduled under
    /// (normalised; the policy's defaults where the facts say nothing).
    pub fn effective(&self, facts: &Facts) -> (Option<String>, Option<String>) {
        self.scheduler.effective(facts)
    }

    /// Classifies (or takes the category forced by `facts.category`) and schedules.
    pub fn decide(
        &self,
        message: &MailMessage,
        facts: &Facts,
        events: &[RetentionEvent],
    ) -> (Classification, RetentionDecision) {
        let classification = match &facts.category {
            Some(forced) => {
                let (phi, patient_refs) = self.classifier.detect_phi(message);
                Classification {
                    category: forced.clone(),
                    rule: None,
                    confidence: 1.0,
                    forced: true,
                    phi,
                    patient_refs,
                    also_matched: Vec::new(),
                    policy_version: self.version.clone(),
                }
            }
            None => self.classify(message),
        };
        let decision = self.schedule(
            Record {
                category: &classification.category,
                created: message.created_date(),
            },
            facts,
            events,
        );
        (classification, decision)
    }
}
