//! What the policy engine decides: a classification and a retention decision.

use std::sync::Arc;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::Category;

/// A date a retention clock can run from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// The record's creation: when the message was sent (else received).
    Created,
    /// When the document stopped being in effect (the latest `superseded` event).
    LastInEffect,
    /// The latest `authorization_revoked` event.
    AuthorizationRevoked,
    /// The latest `contract_terminated` event.
    ContractTerminated,
    /// The patient's latest discharge (fact or `discharged` event).
    Discharge,
    /// The patient's latest encounter (fact, `encounter` or `discharged` event).
    LastEncounter,
    /// The latest `amendment_resolved` event.
    AmendmentResolved,
    /// The patient's date of birth (for age-based triggers).
    Birth,
}

impl Anchor {
    /// Every anchor, in documentation order.
    pub const ALL: [Anchor; 8] = [
        Anchor::Created,
        Anchor::LastInEffect,
        Anchor::AuthorizationRevoked,
        Anchor::ContractTerminated,
        Anchor::Discharge,
        Anchor::LastEncounter,
        Anchor::AmendmentResolved,
        Anchor::Birth,
    ];

    /// The stable code used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Anchor::Created => "created",
            Anchor::LastInEffect => "last_in_effect",
            Anchor::AuthorizationRevoked => "authorization_revoked",
            Anchor::ContractTerminated => "contract_terminated",
            Anchor::Discharge => "discharge",
            Anchor::LastEncounter => "last_encounter",
            Anchor::AmendmentResolved => "amendment_resolved",
            Anchor::Birth => "birth",
        }
    }

    /// Parses a stable code.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == code)
    }

    /// What must become known for this anchor to have a date: a fact or an event code.
    pub fn needs(self) -> &'static str {
        match self {
            Anchor::Created => "created_date",
            Anchor::LastInEffect => "superseded",
            Anchor::AuthorizationRevoked => "authorization_revoked",
            Anchor::ContractTerminated => "contract_terminated",
            Anchor::Discharge => "discharge_date",
            Anchor::LastEncounter => "last_encounter_date",
            Anchor::AmendmentResolved => "amendment_resolved",
            Anchor::Birth => "patient_birth_date",
        }
    }
}

/// PHI indicators the classifier detected in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PhiIndicators {
    /// A medical record number matched one of the configured patterns.
    pub mrn: bool,
    /// An ICD-10-CM code.
    pub icd10: bool,
    /// A date of birth.
    pub dob: bool,
    /// Patient-care terms ("patient", "diagnosis", ...).
    pub patient_terms: bool,
}

impl PhiIndicators {
    /// Whether any indicator is set.
    pub fn any(&self) -> bool {
        self.mrn || self.icd10 || self.dob || self.patient_terms
    }

    /// The codes of the indicators that are set (`mrn`, `icd10`, `dob`, `patient_terms`).
    pub fn codes(&self) -> Vec<&'static str> {
        [
            (self.mrn, "mrn"),
            (self.icd10, "icd10"),
            (self.dob, "dob"),
            (self.patient_terms, "patient_terms"),
        ]
        .into_iter()
        .filter_map(|(on, c)| on.then_some(c))
        .collect()
    }
}

/// What kind of record a message is, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The record category (`unclassified` when no rule matched).
    pub category: Category,
    /// The id of the rule that decided, or `None` when unclassified or forced by facts.
    pub rule: Option<Arc<str>>,
    /// How sure the deciding rule is, 0..=1 (0 when unclassified, 1 when forced).
    pub confidence: f32,
    /// Whether the category was forced by `facts.category` rather than classified.
    #[serde(default)]
    pub forced: bool,
    /// PHI indicators found in the message.
    pub phi: PhiIndicators,
    /// Patient references found (medical record numbers), deduplicated, in order of appearance.
    pub patient_refs: Vec<String>,
    /// Other rules that matched with a different category (for review), highest precedence first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_matched: Vec<Arc<str>>,
    /// The content hash of the policy that decided.
    pub policy_version: Arc<str>,
}

/// Until when one obligation requires the record to be kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// Kept until this date: the retention period ends on it, and the record may be disposed
    /// of on or after it (disposal selects `retain_until <= as-of`).
    Date(NaiveDate),
    /// Keep forever (or until a person decides otherwise).
    Indefinite,
    /// Cannot be computed until these facts or events are known (see [`Anchor::needs`]).
    Pending(Vec<String>),
}

impl Until {
    /// The date, if there is one.
    pub fn date(&self) -> Option<NaiveDate> {
        match self {
            Until::Date(d) => Some(*d),
            _ => None,
        }
    }
}

/// One obligation that applies to a record, with the date it computes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObligationOutcome {
    /// Stable obligation id from the policy.
    pub id: Arc<str>,
    /// Legal (or organisational) citation.
    pub citation: Arc<str>,
    /// How reliable the source of the rule is (`primary text`, `secondary`, ...).
    pub source_quality: Arc<str>,
    /// The trigger in words, e.g. `later of: created + 6 years; last_in_effect + 6 years`.
    pub trigger: Arc<str>,
    /// What it computes to for this record.
    pub until: Until,
}

/// The overall state of a record's retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionStatus {
    /// A finite `retain_until` date is known.
    Scheduled,
    /// Kept indefinitely (unclassified, no applicable rule, or an indefinite obligation).
    Indefinite,
    /// Waiting for a fact or event before a date can be computed.
    Pending,
}

impl RetentionStatus {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionStatus::Scheduled => "scheduled",
            RetentionStatus::Indefinite => "indefinite",
            RetentionStatus::Pending => "pending",
        }
    }
}

/// Until when a record must be kept, and the obligations behind that date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDecision {
    /// The date the longest obligation ends: the record may be disposed of on or after it.
    /// `None` while indefinite or pending. Always ≥ every obligation's date.
    pub retain_until: Option<NaiveDate>,
    /// Scheduled, indefinite or pending.
    pub status: RetentionStatus,
    /// The obligation that sets the outcome (latest date, or the first indefinite/pending one).
    pub governing: Option<Arc<str>>,
    /// What is still needed before a date can be computed (fact and event codes), deduplicated.
    pub waiting_for: Vec<String>,
    /// Every applicable obligation with its computed date.
    pub obligations: Vec<ObligationOutcome>,
    /// The content hash of the policy that decided.
    pub policy_version: Arc<str>,
}
