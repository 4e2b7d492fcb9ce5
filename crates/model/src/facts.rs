//! What the schedule needs beyond the message itself: facts about the record and events that
//! start or move retention clocks.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::Category;

/// Facts about a record that a message alone does not carry (from the EHR, the contract system
/// or the organisation's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// Two-letter US state (or `DC`) whose law governs the record.
    #[serde(default)]
    pub jurisdiction: Option<String>,
    /// Who holds the record: `hospital`, `physician`, `community_clinic`, ...
    #[serde(default)]
    pub record_holder: Option<String>,
    /// Programs the record falls under: `medicare`, `medicare_advantage`, `medicare_part_d`,
    /// `medicaid_managed_care`, ...
    #[serde(default)]
    pub programs: Vec<String>,
    /// The patient's date of birth, when the record is about one patient.
    #[serde(default)]
    pub patient_birth_date: Option<NaiveDate>,
    /// The patient's most recent encounter.
    #[serde(default)]
    pub last_encounter_date: Option<NaiveDate>,
    /// The patient's most recent discharge.
    #[serde(default)]
    pub discharge_date: Option<NaiveDate>,
    /// Forces the category (a records manager's decision); the classifier is not consulted.
    #[serde(default)]
    pub category: Option<Category>,
}

/// The kinds of retention event, with stable codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A policy or document is no longer in effect (starts HIPAA's "last in effect" clock).
    Superseded,
    /// An authorisation (e.g. for marketing) was revoked or expired.
    AuthorizationRevoked,
    /// A contract (e.g. a business-associate agreement) was terminated.
    ContractTerminated,
    /// The patient was discharged.
    Discharged,
    /// The patient had an encounter.
    Encounter,
    /// The patient requested an amendment of their record.
    AmendmentRequested,
    /// A requested amendment was resolved (accepted or denied).
    AmendmentResolved,
}

impl EventKind {
    /// Every kind, in documentation order.
    pub const ALL: [EventKind; 7] = [
        EventKind::Superseded,
        EventKind::AuthorizationRevoked,
        EventKind::ContractTerminated,
        EventKind::Discharged,
        EventKind::Encounter,
        EventKind::AmendmentRequested,
        EventKind::AmendmentResolved,
    ];

    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Superseded => "superseded",
            EventKind::AuthorizationRevoked => "authorization_revoked",
            EventKind::ContractTerminated => "contract_terminated",
            EventKind::Discharged => "discharged",
            EventKind::Encounter => "encounter",
            EventKind::AmendmentRequested => "amendment_requested",
            EventKind::AmendmentResolved => "amendment_resolved",
        }
    }

    /// Parses a stable code.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == code)
    }
}

/// What a terminated contract requires of the records it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractAction {
    /// Return the records to the covered entity.
    Return,
    /// Destroy the records.
    Destroy,
    /// Transfer the records to a successor.
    Transfer,
}

/// One event that bears on a record's retention clock, already matched to the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionEvent {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When it happened (calendar date in the record's jurisdiction).
    pub date: NaiveDate,
    /// For `contract_terminated`: what the contract requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ContractAction>,
}

impl RetentionEvent {
    /// An event of `kind` on `date`.
    pub fn new(kind: EventKind, date: NaiveDate) -> Self {
        RetentionEvent {
            kind,
            date,
            action: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(EventKind::parse("superseeded"), None);
    }

    #[test]
    fn event_json_uses_type() {
        let e: RetentionEvent =
            serde_json::from_str(r#"{"type":"superseded","date":"2024-02-29"}"#).unwrap();
        assert_eq!(e.kind, EventKind::Superseded);
        let bad = serde_json::from_str::<RetentionEvent>(r#"{"type":"nope","date":"2024-01-01"}"#)
            .unwrap_err();
        assert!(bad.to_string().contains("nope"), "{bad}");
    }

    #[test]
    fn facts_from_case_json() {
        let f: Facts = serde_json::from_str(
            r#"{"jurisdiction":"CO","record_holder":"hospital","patient_birth_date":"2010-03-01",
                "last_encounter_date":"2020-05-05","discharge_date":null,"category":null}"#,
        )
        .unwrap();
        assert_eq!(f.jurisdiction.as_deref(), Some("CO"));
        assert!(f.category.is_none());
    }
}
