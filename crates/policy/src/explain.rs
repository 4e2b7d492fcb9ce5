//! Explanations: one record's classification and schedule in a stable JSON shape and in words.
//! The JSON contract is documented in `docs/explain.md`.

use std::fmt::Write as _;

use retain_model::{Classification, Facts, MailMessage, RetentionDecision, RetentionEvent, Until};
use serde::{Deserialize, Serialize};

use crate::Policy;
use crate::error::{Error, Result};

/// An explain case: a message, its facts and the events known for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The message metadata.
    pub message: MailMessage,
    /// Facts about the record.
    #[serde(default)]
    pub facts: Facts,
    /// Events known for the record.
    #[serde(default)]
    pub events: Vec<RetentionEvent>,
}

impl Case {
    /// Parses a case from JSON; errors name the file, line, column and field.
    pub fn from_json(file: &str, text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Syntax {
            file: file.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

/// One obligation in an explanation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObligationView {
    /// Obligation id.
    pub id: String,
    /// Citation.
    pub citation: String,
    /// Reliability of the source.
    pub source_quality: String,
    /// The trigger in words.
    pub trigger: String,
    /// ISO date, or null when indefinite or pending.
    pub until: Option<String>,
    /// `date`, `indefinite` or `pending`.
    pub status: String,
    /// For pending obligations: the facts or events still needed.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub waiting_for: Vec<String>,
}

/// The answer of `retain policy explain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    /// Category code.
    pub category: String,
    /// Deciding rule id (null when unclassified or forced).
    pub rule: Option<String>,
    /// Confidence of the deciding rule.
    pub confidence: f32,
    /// Whether `facts.category` forced the category.
    pub forced: bool,
    /// PHI indicators found.
    pub phi: Vec<String>,
    /// Patient references (MRNs) found. PHI.
    pub patient_refs: Vec<String>,
    /// Other rules of other categories that also matched.
    pub also_matched: Vec<String>,
    /// ISO date, or null while indefinite or pending.
    pub retain_until: Option<String>,
    /// `scheduled`, `indefinite` or `pending`.
    pub status: String,
    /// The obligation that sets the outcome.
    pub governing: Option<String>,
    /// What is still needed before a date can be computed.
    pub waiting_for: Vec<String>,
    /// Every applicable obligation.
    pub obligations: Vec<ObligationView>,
    /// The jurisdiction used (fact or policy default).
    pub jurisdiction: Option<String>,
    /// The record holder used (fact or policy default).
    pub record_holder: Option<String>,
    /// Content hash of the policy.
    pub policy_version: String,
}

impl Explanation {
    /// Builds the explanation of a classification and decision made under `jurisdiction` and
    /// `record_holder` (the facts' or the policy's defaults).
    pub fn new(
        c: &Classification,
        d: &RetentionDecision,
        jurisdiction: Option<String>,
        record_holder: Option<String>,
    ) -> Self {
        Explanation {
            category: c.category.to_string(),
            rule: c.rule.as_deref().map(str::to_owned),
            confidence: c.confidence,
            forced: c.forced,
            phi: c.phi.codes().into_iter().map(str::to_owned).collect(),
            patient_refs: c.patient_refs.clone(),
            also_matched: c.also_matched.iter().map(|s| s.to_string()).collect(),
            retain_until: d.retain_until.map(|d| d.to_string()),
            status: d.status.as_str().to_owned(),
            governing: d.governing.as_deref().map(str::to_owned),
            waiting_for: d.waiting_for.clone(),
            obligations: d
                .obligations
                .iter()
                .map(|o| {
                    let (until, status, waiting_for) = match &o.until {
                        Until::Date(d) => (Some(d.to_string()), "date", Vec::new()),
                        Until::Indefinite => (None, "indefinite", Vec::new()),
                        Until::Pending(w) => (None, "pending", w.clone()),
                    };
                    ObligationView {
                        id: o.id.to_string(),
                        citation: o.citation.to_string(),
                        source_quality: o.source_quality.to_string(),
                        trigger: o.trigger.to_string(),
                        until,
                        status: status.to_owned(),
                        waiting_for,
                    }
                })
                .collect(),
            jurisdiction,
            record_holder,
            policy_version: d.policy_version.to_string(),
        }
    }

    /// The explanation in words, for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let how = match (&self.rule, self.forced) {
            (_, true) => "forced by facts.category".to_owned(),
            (Some(r), _) => format!("rule {r}, confidence {:.2}", self.confidence),
            (None, _) => "no rule matched".to_owned(),
        };
        let _ = writeln!(s, "category:     {} ({how})", self.category);
        if !self.also_matched.is_empty() {
            let _ = writeln!(s, "also matched: {}", self.also_matched.join(", "));
        }
        if !self.phi.is_empty() {
            let _ = writeln!(
                s,
                "PHI found:    {} ({} patient reference(s))",
                self.phi.join(", "),
                self.patient_refs.len()
            );
        }
        let until = match (&self.retain_until, self.status.as_str()) {
            (Some(d), _) => format!("{d} (may be disposed of on or after this date)"),
            (None, "pending") => {
                format!("not yet known: waiting for {}", self.waiting_for.join(", "))
            }
            (None, _) => "indefinitely".to_owned(),
        };
        let _ = writeln!(s, "retain until: {until}");
        if let Some(g) = &self.governing {
            let _ = writeln!(s, "governed by:  {g}");
        }
        let _ = writeln!(s, "obligations:");
        for o in &self.obligations {
            let until = match (&o.until, o.status.as_str()) {
                (Some(d), _) => d.clone(),
                (None, "pending") => format!("pending ({})", o.waiting_for.join(", ")),
                (None, other) => other.to_owned(),
            };
            let mark = if Some(&o.id) == self.governing.as_ref() {
                "*"
            } else {
                "-"
            };
            let _ = writeln!(s, "  {mark} {:<12} {}  [{}]", until, o.id, o.source_quality);
            let _ = writeln!(s, "      {}", o.trigger);
            let _ = writeln!(s, "      {}", o.citation);
        }
        let _ = writeln!(s, "policy:       {}", self.policy_version);
        s
    }
}

impl Policy {
    /// Classifies and schedules a case and explains the result.
    pub fn explain(&self, case: &Case) -> Explanation {
        let (c, d) = self.decide(&case.message, &case.facts, &case.events);
        let (jurisdiction, holder) = self.effective(&case.facts);
        Explanation::new(&c, &d, jurisdiction, holder)
    }
}
