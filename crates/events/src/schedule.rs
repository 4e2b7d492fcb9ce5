//! The pure core: a record's retention decision from its category, creation date, facts and
//! the retention events applied to it, and the provenance entries that make a `records` row
//! self-describing (so it can be recomputed later under another policy or with more events).
//!
//! The scheduler uses [`schedule`] at landing and the events stage and `retain policy apply`
//! use it (through [`crate::recompute`]) afterwards: one function, so a row recomputed under
//! its own policy and its own events reproduces what was landed.

use std::sync::Arc;

use chrono::NaiveDate;
use retain_codec::{EventType, action_code, parse_action};
use retain_model::{
    Category, ContractAction, EventKind, Facts, ObligationOutcome, RetentionDecision,
    RetentionEvent, Until,
};
use retain_policy::{Policy, Record};

/// `status` of a provenance entry recording a retention event applied to the record.
pub const STATUS_EVENT: &str = "event";
/// `status` of a provenance entry recording a fact the record was scheduled with.
pub const STATUS_FACT: &str = "fact";
/// `source_quality` of provenance entries.
pub const PROVENANCE_QUALITY: &str = "retain provenance";
/// Id of the safeguard obligation an open access request adds.
pub const ACCESS_REQUEST_OBLIGATION: &str = "retain.access-request";
/// Id of the obligation a business-associate contract terminated with `destroy` adds.
pub const BA_DESTROY_OBLIGATION: &str = "retain.ba-contract.destroy";
/// What an open access request waits for.
pub const ACCESS_REQUEST_WAITS_FOR: &str = "access_request_fulfilled";

/// One retention event applied to a record: the event's id, type, date, contract action and
/// source. Stored on the row as an `event` provenance entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEvent {
    /// The event's unique id (from the source system; `facts:...` for events a facts source
    /// supplied at landing without an id).
    pub event_id: String,
    /// What happened.
    pub kind: EventType,
    /// When (for `birth_date_learned`: the date of birth).
    pub date: NaiveDate,
    /// For `contract_terminated`: what the contract requires.
    pub action: Option<ContractAction>,
    /// Where the event came from (`ehr-adt`, `contracts`, ...).
    pub source: String,
}

impl AppliedEvent {
    /// An event a facts source supplied without an id: its id is derived from its content.
    pub fn from_fact_event(e: &RetentionEvent) -> Self {
        let action = e
            .action
            .map(|a| format!(".{}", action_code(a)))
            .unwrap_or_default();
        AppliedEvent {
            event_id: format!("facts:{}{action}:{}", e.kind.as_str(), e.date),
            kind: EventType::Clock(e.kind),
            date: e.date,
            action: e.action,
            source: "facts".to_owned(),
        }
    }

    /// The event from a retention-events topic message.
    pub fn from_message(m: &retain_codec::RetentionEventMessage) -> Self {
        AppliedEvent {
            event_id: m.event_id.clone(),
            kind: m.kind,
            date: m.date,
            action: m.action,
            source: m.source.clone(),
        }
    }

    /// The clock event the engine schedules with, for clock types.
    pub fn clock(&self) -> Option<RetentionEvent> {
        match self.kind {
            EventType::Clock(kind) => Some(RetentionEvent {
                kind,
                date: self.date,
                action: self.action,
            }),
            _ => None,
        }
    }
}

/// One entry of the `obligations` column exactly as stored: an obligation outcome
/// (`scheduled`, `indefinite`, `pending`) or a provenance entry (`event`, `fact`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Obligation id, or `event.<type>[.<action>]` / `fact.<name>` for provenance.
    pub id: String,
    /// Citation; for an event, its event id; for a fact, where it came from.
    pub citation: String,
    /// Source quality; for an event, its source; for a fact, [`PROVENANCE_QUALITY`].
    pub source_quality: String,
    /// The trigger in words.
    pub trigger: String,
    /// The obligation's date; an event's date; a date fact's value.
    pub until: Option<NaiveDate>,
    /// `scheduled`, `indefinite`, `pending`, `event` or `fact`.
    pub status: String,
}

impl StoredEntry {
    /// Whether the entry records provenance (an event or a fact) rather than an obligation.
    pub fn is_provenance(&self) -> bool {
        self.status == STATUS_EVENT || self.status == STATUS_FACT
    }

    fn of_outcome(o: &ObligationOutcome) -> Self {
        let (until, status) = match &o.until {
            Until::Date(d) => (Some(*d), "scheduled"),
            Until::Indefinite => (None, "indefinite"),
            Until::Pending(_) => (None, "pending"),
        };
        StoredEntry {
            id: o.id.to_string(),
            citation: o.citation.to_string(),
            source_quality: o.source_quality.to_string(),
            trigger: o.trigger.to_string(),
            until,
            status: status.to_owned(),
        }
    }

    /// The provenance entry recording `e`.
    pub fn of_event(e: &AppliedEvent) -> Self {
        let action = e.action.map(action_code);
        let id = match action {
            Some(a) => format!("event.{}.{a}", e.kind.as_str()),
            None => format!("event.{}", e.kind.as_str()),
        };
        let trigger = match (e.kind, action) {
            (EventType::BirthDateLearned, _) => "birth date learned".to_owned(),
            (_, Some(a)) => format!("{} ({a}) on {}", e.kind.as_str(), e.date),
            (_, None) => format!("{} on {}", e.kind.as_str(), e.date),
        };
        StoredEntry {
            id,
            citation: e.event_id.clone(),
            source_quality: e.source.clone(),
            trigger,
            until: Some(e.date),
            status: STATUS_EVENT.to_owned(),
        }
    }

    /// The event an `event` entry records (`None` for other entries or an unknown type).
    pub fn event(&self) -> Option<AppliedEvent> {
        if self.status != STATUS_EVENT {
            return None;
        }
        let rest = self.id.strip_prefix("event.")?;
        let (code, action) = match rest.rsplit_once('.') {
            Some((code, a)) => (code, Some(parse_action(a)?)),
            None => (rest, None),
        };
        Some(AppliedEvent {
            event_id: self.citation.clone(),
            kind: EventType::parse(code)?,
            date: self.until?,
            action,
            source: self.source_quality.clone(),
        })
    }
}

/// Provenance entries for the facts a record was scheduled with (beyond jurisdiction and
/// record holder, which are columns of their own): programs and the patient's dates.
pub fn fact_entries(facts: &Facts) -> Vec<StoredEntry> {
    let entry = |name: &str, trigger: String, until: Option<NaiveDate>| StoredEntry {
        id: format!("fact.{name}"),
        citation: "facts source at landing".to_owned(),
        source_quality: PROVENANCE_QUALITY.to_owned(),
        trigger,
        until,
        status: STATUS_FACT.to_owned(),
    };
    let mut out = Vec::new();
    for p in &facts.programs {
        out.push(entry(&format!("program.{p}"), format!("program {p}"), None));
    }
    if let Some(d) = facts.patient_birth_date {
        out.push(entry(
            "patient_birth_date",
            "patient birth date".to_owned(),
            Some(d),
        ));
    }
    if let Some(d) = facts.last_encounter_date {
        out.push(entry(
            "last_encounter_date",
            "last encounter".to_owned(),
            Some(d),
        ));
    }
    if let Some(d) = facts.discharge_date {
        out.push(entry("discharge_date", "discharge".to_owned(), Some(d)));
    }
    out
}

/// The facts recorded by `fact` entries, over `base` (jurisdiction and record holder).
pub fn facts_of(entries: &[StoredEntry], mut base: Facts) -> Facts {
    for e in entries.iter().filter(|e| e.status == STATUS_FACT) {
        match e.id.strip_prefix("fact.") {
            Some("patient_birth_date") => base.patient_birth_date = e.until,
            Some("last_encounter_date") => base.last_encounter_date = e.until,
            Some("discharge_date") => base.discharge_date = e.until,
            Some(other) => {
                if let Some(p) = other.strip_prefix("program.")
                    && !base.programs.iter().any(|q| q == p)
                {
                    base.programs.push(p.to_owned());
                }
            }
            None => {}
        }
    }
    base
}

/// A retention decision with the provenance to store beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    /// The decision (engine obligations plus Retain's event safeguards).
    pub decision: RetentionDecision,
    /// `fact` and `event` entries, stored after the obligations.
    pub provenance: Vec<StoredEntry>,
}

impl Scheduled {
    /// Every entry of the `obligations` column, as stored.
    pub fn entries(&self) -> Vec<StoredEntry> {
        self.decision
            .obligations
            .iter()
            .map(StoredEntry::of_outcome)
            .chain(self.provenance.iter().cloned())
            .collect()
    }
}

/// Schedules a record: the engine's decision from its category, creation date, facts and the
/// clock events among `events`, with `birth_date_learned` setting the birth date, an open
/// access request preserving the record, and a business-associate contract terminated with
/// `destroy` making it due at termination (unless a longer obligation applies). `events` are
/// applied in order; duplicates (same event id) count once.
pub fn schedule(
    policy: &Policy,
    category: &Category,
    created: Option<NaiveDate>,
    facts: &Facts,
    events: &[AppliedEvent],
) -> Scheduled {
    let mut seen = std::collections::HashSet::new();
    let events: Vec<&AppliedEvent> = events
        .iter()
        .filter(|e| seen.insert(e.event_id.as_str()))
        .collect();
    let mut facts = facts.clone();
    let mut provenance = fact_entries(&facts);
    let mut opened: Option<NaiveDate> = None;
    let mut fulfilled: Option<NaiveDate> = None;
    let mut destroy: Option<NaiveDate> = None;
    let mut clock = Vec::new();
    for e in &events {
        match e.kind {
            EventType::BirthDateLearned => facts.patient_birth_date = Some(e.date),
            EventType::AccessRequestOpened => opened = opened.max(Some(e.date)),
            EventType::AccessRequestFulfilled => fulfilled = fulfilled.max(Some(e.date)),
            EventType::Clock(EventKind::ContractTerminated)
                if e.action == Some(ContractAction::Destroy) =>
            {
                destroy = destroy.max(Some(e.date));
            }
            EventType::Clock(_) => {}
        }
        if let Some(c) = e.clock() {
            clock.push(c);
        }
        provenance.push(StoredEntry::of_event(e));
    }
    let mut decision = policy.schedule(Record { category, created }, &facts, &clock);
    let mut extra = Vec::new();
    if let Some(d) = destroy {
        extra.push(ObligationOutcome {
            id: Arc::from(BA_DESTROY_OBLIGATION),
            citation: Arc::from(
                "Business associate contract terminated with destroy (45 CFR 164.504(e)(2)(ii)(J))",
            ),
            source_quality: Arc::from("retain safeguard"),
            trigger: Arc::from("contract_terminated (destroy): due at termination"),
            until: Until::Date(d),
        });
    }
    // Open while the latest request is later than the latest fulfilment.
    if opened.is_some() && opened > fulfilled {
        extra.push(ObligationOutcome {
            id: Arc::from(ACCESS_REQUEST_OBLIGATION),
            citation: Arc::from(
                "Retain safeguard: records of a patient with an open access request (45 CFR 164.524) are preserved",
            ),
            source_quality: Arc::from("retain safeguard"),
            trigger: Arc::from("kept until the access request is fulfilled"),
            until: Until::Pending(vec![ACCESS_REQUEST_WAITS_FOR.to_owned()]),
        });
    }
    if !extra.is_empty() {
        let mut obligations = std::mem::take(&mut decision.obligations);
        obligations.extend(extra);
        decision = combine(obligations, &decision.policy_version);
    }
    // Facts learned from events are recorded by their event entries, not as landing facts.
    provenance.retain(|p| !(p.status == STATUS_FACT && learned_from_events(p, &events)));
    Scheduled {
        decision,
        provenance,
    }
}

fn learned_from_events(p: &StoredEntry, events: &[&AppliedEvent]) -> bool {
    p.id == "fact.patient_birth_date"
        && events.iter().any(|e| e.kind == EventType::BirthDateLearned)
}

/// Combines obligation outcomes as the engine does (the engine's own function).
pub use retain_policy::combine;

#[cfg(test)]
mod tests {
    use super::*;
    use retain_model::RetentionStatus;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn ev(id: &str, kind: EventType, date: &str, action: Option<ContractAction>) -> AppliedEvent {
        AppliedEvent {
            event_id: id.into(),
            kind,
            date: d(date),
            action,
            source: "test".into(),
        }
    }

    #[test]
    fn provenance_entries_round_trip() {
        for e in [
            ev("a", EventKind::Superseded.into(), "2024-02-29", None),
            ev(
                "b",
                EventKind::ContractTerminated.into(),
                "2024-01-01",
                Some(ContractAction::Transfer),
            ),
            ev("c", EventType::BirthDateLearned, "2010-05-05", None),
        ] {
            assert_eq!(StoredEntry::of_event(&e).event(), Some(e));
        }
        let facts = Facts {
            programs: vec!["medicare".into()],
            patient_birth_date: Some(d("2001-01-01")),
            discharge_date: Some(d("2020-01-01")),
            ..Facts::default()
        };
        assert_eq!(facts_of(&fact_entries(&facts), Facts::default()), facts);
    }

    #[test]
    fn a_superseded_event_dates_hipaa_documentation() {
        let policy = Policy::builtin().unwrap();
        let cat = Category::new("hipaa_documentation").unwrap();
        let created = Some(d("2020-03-01"));
        let before = schedule(&policy, &cat, created, &Facts::default(), &[]);
        assert_eq!(before.decision.status, RetentionStatus::Pending);
        let e = ev("s1", EventKind::Superseded.into(), "2023-06-30", None);
        let after = schedule(&policy, &cat, created, &Facts::default(), &[e.clone(), e]);
        assert_eq!(after.decision.retain_until, Some(d("2029-06-30")));
        // The event is recorded once.
        assert_eq!(after.provenance.len(), 1);
        // Created + 6 wins when it is later.
        let early = ev("s2", EventKind::Superseded.into(), "2019-01-01", None);
        let after = schedule(&policy, &cat, created, &Facts::default(), &[early]);
        assert_eq!(after.decision.retain_until, Some(d("2026-03-01")));
    }

    #[test]
    fn an_open_access_request_preserves_until_fulfilled() {
        let policy = Policy::builtin().unwrap();
        let cat = Category::new("administrative").unwrap();
        let created = Some(d("2020-03-01"));
        let opened = ev("o", EventType::AccessRequestOpened, "2024-01-02", None);
        let s = schedule(
            &policy,
            &cat,
            created,
            &Facts::default(),
            std::slice::from_ref(&opened),
        );
        assert_eq!(s.decision.status, RetentionStatus::Pending);
        assert_eq!(
            s.decision.governing.as_deref(),
            Some(ACCESS_REQUEST_OBLIGATION)
        );
        assert_eq!(s.decision.waiting_for, [ACCESS_REQUEST_WAITS_FOR]);
        let done = ev("f", EventType::AccessRequestFulfilled, "2024-01-20", None);
        let s = schedule(&policy, &cat, created, &Facts::default(), &[opened, done]);
        assert_eq!(s.decision.status, RetentionStatus::Scheduled);
        assert_eq!(s.decision.retain_until, Some(d("2023-03-01")));
    }

    #[test]
    fn ba_destroy_is_due_at_termination_unless_longer_obligations() {
        let policy = Policy::builtin().unwrap();
        let created = Some(d("2020-03-01"));
        let t = ev(
            "t",
            EventKind::ContractTerminated.into(),
            "2021-01-01",
            Some(ContractAction::Destroy),
        );
        // Transient mail of the BA: due at termination (later than created + 1 year).
        let cat = Category::new("transient").unwrap();
        let s = schedule(
            &policy,
            &cat,
            created,
            &Facts::default(),
            std::slice::from_ref(&t),
        );
        assert_eq!(s.decision.retain_until, Some(d("2021-03-01")));
        let cat = Category::new("administrative").unwrap();
        let s = schedule(
            &policy,
            &cat,
            created,
            &Facts::default(),
            std::slice::from_ref(&t),
        );
        assert_eq!(s.decision.retain_until, Some(d("2023-03-01")));
        // Business-associate documentation: HIPAA's six years after termination is longer.
        let cat = Category::new("business_associate").unwrap();
        let s = schedule(&policy, &cat, created, &Facts::default(), &[t]);
        assert_eq!(s.decision.retain_until, Some(d("2027-01-01")));
    }

    #[test]
    fn a_learned_birth_date_is_a_fact_for_the_engine() {
        let policy = Policy::from_sources(&[(
            "p.toml",
            "[policy]\ndefault-jurisdiction = \"CO\"\ndefault-record-holder = \"hospital\"\n",
        )])
        .unwrap();
        let cat = Category::new("clinical").unwrap();
        let created = Some(d("2020-03-01"));
        let facts = Facts {
            jurisdiction: Some("CO".into()),
            record_holder: Some("hospital".into()),
            ..Facts::default()
        };
        let without = schedule(&policy, &cat, created, &facts, &[]);
        let born = ev("b", EventType::BirthDateLearned, "2015-06-01", None);
        let with = schedule(&policy, &cat, created, &facts, &[born]);
        assert_ne!(without.decision, with.decision);
        assert!(with.provenance.iter().all(|p| p.status == STATUS_EVENT));
    }
}
