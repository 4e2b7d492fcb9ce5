//! The scheduler: which obligations apply to a record and until when each keeps it.
//!
//! Obligations are indexed by category, then by jurisdiction (`US` = everywhere). For one record
//! the applicable ones are evaluated and combined: the latest date wins; any indefinite
//! obligation makes the record indefinite; any pending one (waiting for a fact or event) makes it
//! pending. What the policy cannot decide safely (no jurisdiction, no rule for the state, an
//! unknown category) becomes an explicit indefinite or pending outcome, never a date.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;
use retain_model::{
    Anchor, Category, EventKind, Facts, ObligationOutcome, RetentionDecision, RetentionEvent,
    RetentionStatus, Until,
};

use crate::doc::MergedDoc;
use crate::error::Result;
use crate::expr::{self, Anchors, Expr, Value};

/// Jurisdiction code for obligations that apply everywhere.
pub const EVERYWHERE: &str = "US";

/// The record being scheduled: its category and creation date.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The category (classified or forced).
    pub category: &'a Category,
    /// When the record was created (message sent, else received).
    pub created: Option<NaiveDate>,
}

struct Obligation {
    id: Arc<str>,
    citation: Arc<str>,
    quality: Arc<str>,
    trigger: Arc<str>,
    expr: Expr,
    /// Lower-case holder codes; empty = any holder.
    holders: Vec<String>,
    programs: Vec<String>,
    when_event: Option<EventKind>,
}

impl Obligation {
    /// Whether the record's programs and events bring it into this obligation's scope.
    fn in_scope(&self, facts: &Facts, events: &[RetentionEvent]) -> bool {
        if let Some(k) = self.when_event
            && !events.iter().any(|e| e.kind == k)
        {
            return false;
        }
        self.programs.is_empty()
            || facts
                .programs
                .iter()
                .any(|p| self.programs.iter().any(|q| q.eq_ignore_ascii_case(p)))
    }
}

#[derive(Default)]
struct CategoryIndex {
    state_law: bool,
    everywhere: Vec<usize>,
    by_state: HashMap<String, Vec<usize>>,
}

/// Synthetic outcomes for what the policy cannot decide.
struct Synthetic {
    unclassified: ObligationOutcome,
    unknown_category: ObligationOutcome,
    no_obligation: ObligationOutcome,
}

fn synthetic(id: &str, citation: &str, trigger: &str, until: Until) -> ObligationOutcome {
    ObligationOutcome {
        id: Arc::from(id),
        citation: Arc::from(citation),
        source_quality: Arc::from("retain safeguard"),
        trigger: Arc::from(trigger),
        until,
    }
}

/// The compiled scheduler.
pub(crate) struct Scheduler {
    obligations: Vec<Obligation>,
    categories: HashMap<String, CategoryIndex>,
    majority: HashMap<String, u32>,
    default_majority: u32,
    default_jurisdiction: Option<String>,
    default_holder: Option<String>,
    synthetic: Synthetic,
}

impl Scheduler {
    pub fn compile(
        doc: &MergedDoc,
        categories: &HashMap<String, (Category, bool)>,
    ) -> Result<Self> {
        let mut s = Scheduler {
            obligations: Vec::new(),
            categories: categories
                .iter()
                .map(|(code, (_, state_law))| {
                    (
                        code.clone(),
                        CategoryIndex {
                            state_law: *state_law,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            majority: doc
                .jurisdictions
                .iter()
                .filter_map(|(k, j)| j.age_of_majority.map(|a| (k.clone(), a)))
                .collect(),
            default_majority: doc.header.age_of_majority.unwrap_or(18),
            default_jurisdiction: doc
                .header
                .default_jurisdiction
                .as_ref()
                .map(|j| j.to_ascii_uppercase()),
            default_holder: doc
                .header
                .default_record_holder
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
            synthetic: Synthetic {
                unclassified: synthetic(
                    "retain.unclassified",
                    "Retain safeguard: unclassified records are never scheduled for deletion",
                    "kept until a person classifies the record",
                    Until::Indefinite,
                ),
                unknown_category: synthetic(
                    "retain.unknown-category",
                    "Retain safeguard: the category is not defined in this policy",
                    "kept until the category is defined",
                    Until::Indefinite,
                ),
                no_obligation: synthetic(
                    "retain.no-obligation",
                    "Retain safeguard: no obligation in this policy applies",
                    "kept until an obligation applies",
                    Until::Indefinite,
                ),
            },
        };
        for j in s.default_jurisdiction.iter() {
            if !valid_jurisdiction(j) {
                return Err(crate::Error::Invalid {
                    file: doc.sources.join(" + "),
                    line: 0,
                    item: "[policy]".to_owned(),
                    field: "default-jurisdiction".to_owned(),
                    message: format!("\"{j}\" is not a two-letter state code or US"),
                });
            }
        }

        for o in &doc.obligations {
            let ob = &o.item;
            if !ob.enabled || doc.header.disable_obligations.contains(&ob.id) {
                continue;
            }
            let item = format!("obligation `{}`", ob.id);
            let bad = |field: &str, msg: String| o.loc.invalid(item.clone(), field, msg);
            if ob.id.trim().is_empty() {
                return Err(bad("id", "must not be empty".to_owned()));
            }
            if ob.citation.trim().is_empty() {
                return Err(bad(
                    "citation",
                    "every obligation needs a citation (law, regulation or organisational policy)"
                        .to_owned(),
                ));
            }
            if ob.categories.is_empty() {
                return Err(bad("categories", "list at least one category".to_owned()));
            }
            if ob.jurisdictions.is_empty() {
                return Err(bad(
                    "jurisdictions",
                    "list at least one jurisdiction (US for everywhere)".to_owned(),
                ));
            }
            let expr = expr::parse(ob.retain.get_ref(), "retain").map_err(|(f, m)| bad(&f, m))?;
            let when_event = match &ob.when_event {
                None => None,
                Some(code) => Some(EventKind::parse(code).ok_or_else(|| {
                    let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    bad(
                        "when-event",
                        format!("unknown event type \"{code}\"; known: {}", known.join(", ")),
                    )
                })?),
            };
            let holders: Vec<String> = if ob.record_holders.iter().any(|h| h == "*") {
                Vec::new()
            } else {
                ob.record_holders
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .collect()
            };
            let index = s.obligations.len();
            s.obligations.push(Obligation {
                id: Arc::from(ob.id.as_str()),
                citation: Arc::from(ob.citation.as_str()),
                quality: Arc::from(ob.source_quality.as_str()),
                trigger: Arc::from(expr.describe()),
                expr,
                holders,
                programs: ob
                    .programs
                    .iter()
                    .map(|p| p.trim().to_ascii_lowercase())
                    .collect(),
                when_event,
            });
            for (ci, cat) in ob.categories.iter().enumerate() {
                let Some(entry) = s.categories.get_mut(cat) else {
                    return Err(bad(
                        &format!("categories[{ci}]"),
                        format!("unknown category \"{cat}\""),
                    ));
                };
                for (ji, j) in ob.jurisdictions.iter().enumerate() {
                    let j = j.trim().to_ascii_uppercase();
                    if !valid_jurisdiction(&j) {
                        return Err(bad(
                            &format!("jurisdictions[{ji}]"),
                            format!("\"{j}\" is not a two-letter state code or US"),
                        ));
                    }
                    if j == EVERYWHERE {
                        entry.everywhere.push(index);
                    } else {
                        entry.by_state.entry(j).or_default().push(index);
                    }
                }
            }
        }
        Ok(s)
    }

    /// Until when `record` must be kept, with every obligation behind it.
    pub fn schedule(
        &self,
        record: Record<'_>,
        facts: &Facts,
        events: &[RetentionEvent],
        policy_version: &Arc<str>,
    ) -> RetentionDecision {
        // Room for what most records get (federal, state and program obligations), so the
        // list is allocated once.
        let mut outcomes = Vec::with_capacity(8);
        let category = record.category;
        if category.is_unclassified() {
            outcomes.push(self.synthetic.unclassified.clone());
            return combine(outcomes, policy_version);
        }
        let Some(index) = self.categories.get(category.as_str()) else {
            outcomes.push(self.synthetic.unknown_category.clone());
            return combine(outcomes, policy_version);
        };

        let (jurisdiction, holder) = self.effective_borrowed(facts);
        let mut anchors = anchors(record.created, facts, events);
        anchors.majority = jurisdiction
            .as_deref()
            .and_then(|j| self.majority.get(j))
            .copied()
            .unwrap_or(self.default_majority);

        let mut holder_needed = false;
        let mut state_applied = false;
        let mut consider = |i: usize, outcomes: &mut Vec<ObligationOutcome>| -> bool {
            let o = &self.obligations[i];
            if !o.in_scope(facts, events) {
                return false;
            }
            if !o.holders.is_empty() {
                match &holder {
                    None => {
                        holder_needed = true;
                        return false;
                    }
                    Some(h) if !o.holders.iter().any(|x| x == h) => return false,
                    Some(_) => {}
                }
            }
            outcomes.push(outcome(o, o.expr.eval(&anchors)));
            true
        };

        for &i in &index.everywhere {
            consider(i, &mut outcomes);
        }
        // Without a jurisdiction, wait if any state's obligation could apply to this record.
        let state_may_apply = || {
            index.state_law
                || index
                    .by_state
                    .values()
                    .flatten()
                    .any(|&i| self.obligations[i].in_scope(facts, events))
        };
        match &jurisdiction {
            None if state_may_apply() => outcomes.push(synthetic(
                "retain.needs-jurisdiction",
                "Retain safeguard: retention for this category depends on state law",
                "waiting for the record's jurisdiction",
                Until::Pending(vec!["jurisdiction".to_owned()]),
            )),
            None => {}
            Some(j) => {
                for &i in index
                    .by_state
                    .get(j.as_ref())
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    state_applied |= consider(i, &mut outcomes);
                }
            }
        }
        if holder_needed {
            outcomes.push(synthetic(
                "retain.needs-record-holder",
                "Retain safeguard: retention depends on who holds the record",
                "waiting for the record holder (hospital, physician, ...)",
                Until::Pending(vec!["record_holder".to_owned()]),
            ));
        } else if index.state_law
            && !state_applied
            && let Some(j) = &jurisdiction
        {
            let h = holder.as_deref().unwrap_or("any holder");
            outcomes.push(synthetic(
                &format!("retain.no-state-rule.{}", j.to_ascii_lowercase()),
                &format!(
                    "Retain safeguard: the policy has no {j} rule for {h}; kept until one is added"
                ),
                "kept until a state rule applies",
                Until::Indefinite,
            ));
        }
        if outcomes.is_empty() {
            outcomes.push(self.synthetic.no_obligation.clone());
        }
        combine(outcomes, policy_version)
    }

    /// The jurisdiction (upper case) and record holder (lower case) a record is scheduled
    /// under: its facts, else the policy's defaults.
    pub fn effective(&self, facts: &Facts) -> (Option<String>, Option<String>) {
        let (j, h) = self.effective_borrowed(facts);
        (j.map(Cow::into_owned), h.map(Cow::into_owned))
    }

    /// [`Scheduler::effective`], copying only what needs its case changed (most facts are
    /// already written `CO` and `hospital`).
    fn effective_borrowed<'a>(
        &'a self,
        facts: &'a Facts,
    ) -> (Option<Cow<'a, str>>, Option<Cow<'a, str>>) {
        (
            upper(facts.jurisdiction.as_deref())
                .or_else(|| self.default_jurisdiction.as_deref().map(Cow::Borrowed)),
            lower(facts.record_holder.as_deref())
                .or_else(|| self.default_holder.as_deref().map(Cow::Borrowed)),
        )
    }

    /// How many obligations are in force.
    pub fn obligation_count(&self) -> usize {
        self.obligations.len()
    }
}

fn valid_jurisdiction(j: &str) -> bool {
    j.len() == 2 && j.bytes().all(|b| b.is_ascii_uppercase())
}

fn upper(s: Option<&str>) -> Option<Cow<'_, str>> {
    let s = s.map(str::trim).filter(|s| !s.is_empty())?;
    Some(match s.bytes().any(|b| b.is_ascii_lowercase()) {
        true => Cow::Owned(s.to_ascii_uppercase()),
        false => Cow::Borrowed(s),
    })
}

fn lower(s: Option<&str>) -> Option<Cow<'_, str>> {
    let s = s.map(str::trim).filter(|s| !s.is_empty())?;
    Some(match s.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(s.to_ascii_lowercase()),
        false => Cow::Borrowed(s),
    })
}

/// The anchor dates for a record from its creation, facts and events.
fn anchors(created: Option<NaiveDate>, facts: &Facts, events: &[RetentionEvent]) -> Anchors {
    let mut a = Anchors::default();
    a.raise(Anchor::Created, created);
    a.raise(Anchor::Birth, facts.patient_birth_date);
    a.raise(Anchor::Discharge, facts.discharge_date);
    a.raise(Anchor::LastEncounter, facts.last_encounter_date);
    a.raise(Anchor::LastEncounter, facts.discharge_date);
    let mut requested: Option<NaiveDate> = None;
    let mut resolved: Option<NaiveDate> = None;
    for e in events {
        let d = Some(e.date);
        match e.kind {
            EventKind::Superseded => a.raise(Anchor::LastInEffect, d),
            EventKind::AuthorizationRevoked => a.raise(Anchor::AuthorizationRevoked, d),
            EventKind::ContractTerminated => a.raise(Anchor::ContractTerminated, d),
            EventKind::Discharged => {
                a.raise(Anchor::Discharge, d);
                a.raise(Anchor::LastEncounter, d);
            }
            EventKind::Encounter => a.raise(Anchor::LastEncounter, d),
            EventKind::AmendmentRequested => requested = requested.max(d),
            EventKind::AmendmentResolved => resolved = resolved.max(d),
        }
    }
    // An amendment resolved before the latest request does not close that request.
    if resolved >= requested {
        a.raise(Anchor::AmendmentResolved, resolved);
    }
    a
}

fn outcome(o: &Obligation, v: Value) -> ObligationOutcome {
    ObligationOutcome {
        id: o.id.clone(),
        citation: o.citation.clone(),
        source_quality: o.quality.clone(),
        trigger: o.trigger.clone(),
        until: match v {
            Value::Date(d) => Until::Date(d),
            Value::Indefinite => Until::Indefinite,
            Value::Pending(bits) => Until::Pending(
                expr::pending_anchors(bits)
                    .map(|a| a.needs().to_owned())
                    .collect(),
            ),
        },
    }
}

/// Longest retention wins: indefinite beats pending beats the latest date. `governing` is the
/// first indefinite obligation, else the first pending one, else the first with the latest
/// date. Public so that a recompute with further obligations (crates/events) combines them
/// exactly as the engine does.
pub fn combine(
    obligations: Vec<ObligationOutcome>,
    policy_version: &Arc<str>,
) -> RetentionDecision {
    let mut latest: Option<(NaiveDate, usize)> = None;
    let mut first_indefinite = None;
    let mut first_pending = None;
    let mut waiting_for: Vec<String> = Vec::new();
    for (i, o) in obligations.iter().enumerate() {
        match &o.until {
            Until::Date(d) => {
                if latest.is_none_or(|(l, _)| *d > l) {
                    latest = Some((*d, i));
                }
            }
            Until::Indefinite => {
                first_indefinite.get_or_insert(i);
            }
            Until::Pending(needs) => {
                first_pending.get_or_insert(i);
                for n in needs {
                    if !waiting_for.contains(n) {
                        waiting_for.push(n.clone());
                    }
                }
            }
        }
    }
    let (status, retain_until, governing) = if let Some(i) = first_indefinite {
        waiting_for.clear();
        (RetentionStatus::Indefinite, None, Some(i))
    } else if let Some(i) = first_pending {
        (RetentionStatus::Pending, None, Some(i))
    } else if let Some((d, i)) = latest {
        (RetentionStatus::Scheduled, Some(d), Some(i))
    } else {
        (RetentionStatus::Indefinite, None, None)
    };
    RetentionDecision {
        retain_until,
        status,
        governing: governing.map(|i| obligations[i].id.clone()),
        waiting_for,
        obligations,
        policy_version: policy_version.clone(),
    }
}
