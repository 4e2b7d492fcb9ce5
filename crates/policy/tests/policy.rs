//! The policy engine against the built-in pack and hand-written policies: every trigger shape
//! and combinator, classification, bad input, and the invariants as properties.

use chrono::NaiveDate;
use proptest::prelude::*;
use retain_model::{
    Address, Attachment, Category, EventKind, Facts, MailMessage, RetentionDecision,
    RetentionEvent, RetentionStatus, Until,
};
use retain_policy::{Case, Error, Policy, Record};

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

/// The built-in pack, compiled once for the whole test binary.
fn builtin() -> &'static Policy {
    static PACK: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    PACK.get_or_init(|| Policy::builtin().expect("built-in pack compiles"))
}

fn cat(code: &str) -> Category {
    Category::new(code).unwrap()
}

fn facts(j: &str, holder: &str) -> Facts {
    Facts {
        jurisdiction: Some(j.to_owned()),
        record_holder: Some(holder.to_owned()),
        ..Facts::default()
    }
}

fn ev(kind: EventKind, date: &str) -> RetentionEvent {
    RetentionEvent::new(kind, d(date))
}

fn sched(
    p: &Policy,
    category: &str,
    created: &str,
    f: &Facts,
    events: &[RetentionEvent],
) -> RetentionDecision {
    let c = cat(category);
    p.schedule(
        Record {
            category: &c,
            created: Some(d(created)),
        },
        f,
        events,
    )
}

fn until_of<'a>(dec: &'a RetentionDecision, id: &str) -> &'a Until {
    &dec.obligations
        .iter()
        .find(|o| &*o.id == id)
        .unwrap_or_else(|| {
            panic!(
                "obligation {id} not applied; got {:?}",
                dec.obligations.iter().map(|o| &o.id).collect::<Vec<_>>()
            )
        })
        .until
}

// --- Trigger shapes and combinators on the built-in pack -----------------------------------

#[test]
fn hipaa_documentation_waits_for_superseded_then_six_years_from_the_later_date() {
    let p = builtin();
    let f = Facts::default();
    let open = sched(p, "hipaa_documentation", "2018-01-10", &f, &[]);
    assert_eq!(open.status, RetentionStatus::Pending);
    assert_eq!(open.retain_until, None);
    assert_eq!(open.waiting_for, vec!["superseded"]);
    assert_eq!(open.governing.as_deref(), Some("us.hipaa.documentation"));

    // Superseded after creation: 6 years from last in effect.
    let later = sched(
        p,
        "hipaa_documentation",
        "2018-01-10",
        &f,
        &[ev(EventKind::Superseded, "2021-06-30")],
    );
    assert_eq!(later.retain_until, Some(d("2027-06-30")));
    assert_eq!(later.status, RetentionStatus::Scheduled);

    // A superseding event dated before creation (a copy mailed later): creation + 6 wins.
    let copy = sched(
        p,
        "hipaa_documentation",
        "2022-03-01",
        &f,
        &[ev(EventKind::Superseded, "2021-06-30")],
    );
    assert_eq!(copy.retain_until, Some(d("2028-03-01")));

    // Several supersessions: the latest counts.
    let many = sched(
        p,
        "hipaa_documentation",
        "2018-01-10",
        &f,
        &[
            ev(EventKind::Superseded, "2023-01-01"),
            ev(EventKind::Superseded, "2020-01-01"),
        ],
    );
    assert_eq!(many.retain_until, Some(d("2029-01-01")));
}

#[test]
fn leap_day_plus_six_years_is_first_of_march() {
    let p = builtin();
    let dec = sched(
        p,
        "hipaa_documentation",
        "2020-02-29",
        &Facts::default(),
        &[ev(EventKind::Superseded, "2019-01-01")],
    );
    assert_eq!(dec.retain_until, Some(d("2026-03-01")));
    let dec = sched(p, "security_incident", "2024-02-29", &Facts::default(), &[]);
    assert_eq!(dec.retain_until, Some(d("2030-03-01")));
    // 2024 + 4 is a leap year again: stays 29 February.
    let dec = sched(p, "administrative", "2024-02-29", &Facts::default(), &[]);
    assert_eq!(dec.retain_until, Some(d("2027-03-01")));
}

#[test]
fn fixed_period_from_creation() {
    let p = builtin();
    let dec = sched(p, "administrative", "2021-07-15", &Facts::default(), &[]);
    assert_eq!(dec.retain_until, Some(d("2024-07-15")));
    assert_eq!(dec.governing.as_deref(), Some("org.administrative"));
    let dec = sched(p, "transient", "2021-07-15", &Facts::default(), &[]);
    assert_eq!(dec.retain_until, Some(d("2022-07-15")));
}

#[test]
fn colorado_minor_is_kept_until_28_or_ten_years_after_last_encounter() {
    let p = builtin();
    let mut f = facts("CO", "hospital");
    f.patient_birth_date = Some(d("2010-03-01"));
    f.last_encounter_date = Some(d("2020-05-05"));
    let dec = sched(p, "clinical", "2020-05-06", &f, &[]);
    // later(2020-05-06 + 10y, age 28 = 2038-03-01) = 2038-03-01
    assert_eq!(dec.retain_until, Some(d("2038-03-01")));
    assert_eq!(dec.governing.as_deref(), Some("state.co.hospital"));
    // Medicare CoP (5 years) applies to hospitals too, and is shorter.
    assert_eq!(
        until_of(&dec, "us.medicare.cop.hospital"),
        &Until::Date(d("2025-05-06"))
    );
}

#[test]
fn colorado_adult_runs_from_the_latest_known_encounter() {
    let p = builtin();
    let mut f = facts("CO", "hospital");
    f.patient_birth_date = Some(d("1960-01-01"));
    f.last_encounter_date = Some(d("2020-05-05"));
    let dec = sched(p, "clinical", "2019-01-01", &f, &[]);
    assert_eq!(dec.retain_until, Some(d("2030-05-05")));
    // A later encounter event moves it.
    let dec = sched(
        p,
        "clinical",
        "2019-01-01",
        &f,
        &[ev(EventKind::Encounter, "2022-02-02")],
    );
    assert_eq!(dec.retain_until, Some(d("2032-02-02")));
}

#[test]
fn age_rule_without_a_birth_date_is_pending_not_guessed() {
    let p = builtin();
    let mut f = facts("CO", "hospital");
    f.last_encounter_date = Some(d("2020-05-05"));
    let dec = sched(p, "clinical", "2020-05-06", &f, &[]);
    assert_eq!(dec.status, RetentionStatus::Pending);
    assert_eq!(dec.waiting_for, vec!["patient_birth_date"]);
}

#[test]
fn arizona_whichever_occurs_first_for_minors_only() {
    let p = builtin();
    let mut f = facts("AZ", "homeopathic_physician");
    f.last_encounter_date = Some(d("2020-01-01"));
    let first = "state.az.homeopathic-physician"; // A.R.S. 32-2936
    let longer = "state.az.health-care-provider"; // A.R.S. 12-2297 covers these licensees too
    // Minor at the last service (age 15): first of (3 years after 18th birthday = age 21) and
    // (7 years after last service).
    f.patient_birth_date = Some(d("2005-01-01"));
    let dec = sched(p, "clinical", "2019-06-01", &f, &[]);
    assert_eq!(until_of(&dec, first), &Until::Date(d("2026-01-01")));
    // Younger minor: 7 years after last service comes first.
    f.patient_birth_date = Some(d("2012-01-01"));
    let dec = sched(p, "clinical", "2019-06-01", &f, &[]);
    assert_eq!(until_of(&dec, first), &Until::Date(d("2027-01-01")));
    // ... but 12-2297 (6 years or age 21, whichever is later) is longer, and longest wins.
    assert_eq!(until_of(&dec, longer), &Until::Date(d("2033-01-01")));
    assert_eq!(dec.retain_until, Some(d("2033-01-01")));
    assert_eq!(dec.governing.as_deref(), Some(longer));
    // Adult: the minors' clause never applies, so a long-past 21st birthday cannot win.
    f.patient_birth_date = Some(d("1950-01-01"));
    let dec = sched(p, "clinical", "2019-06-01", &f, &[]);
    assert_eq!(until_of(&dec, first), &Until::Date(d("2027-01-01")));
    assert_eq!(dec.retain_until, Some(d("2027-01-01")));
    // Birth date unknown: the first-of clause still has a known date, so no waiting there.
    f.patient_birth_date = None;
    let dec = sched(p, "clinical", "2019-06-01", &f, &[]);
    assert_eq!(until_of(&dec, first), &Until::Date(d("2027-01-01")));
}

#[test]
fn age_of_majority_follows_the_jurisdiction() {
    // AL hospital: later of 5 years after discharge and age 23; AL majority is 19.
    let p = builtin();
    let mut f = facts("AL", "hospital");
    f.patient_birth_date = Some(d("2015-06-01"));
    f.discharge_date = Some(d("2020-01-01"));
    let dec = sched(p, "clinical", "2020-01-01", &f, &[]);
    assert_eq!(dec.retain_until, Some(d("2038-06-01")));
}

#[test]
fn discharge_event_starts_the_state_clock() {
    let p = builtin();
    let mut f = facts("AK", "hospital");
    f.patient_birth_date = Some(d("1980-01-01"));
    let before = sched(p, "clinical", "2020-01-01", &f, &[]);
    assert_eq!(before.retain_until, Some(d("2027-01-01")));
    let after = sched(
        p,
        "clinical",
        "2020-01-01",
        &f,
        &[ev(EventKind::Discharged, "2021-03-31")],
    );
    assert_eq!(after.retain_until, Some(d("2028-03-31")));
}

#[test]
fn unknown_jurisdiction_or_holder_waits_instead_of_guessing() {
    let p = builtin();
    let mut f = Facts {
        patient_birth_date: Some(d("1970-01-01")),
        ..Facts::default()
    };
    let dec = sched(p, "clinical", "2020-01-01", &f, &[]);
    assert_eq!(dec.status, RetentionStatus::Pending);
    assert!(
        dec.waiting_for.contains(&"jurisdiction".to_owned()),
        "{:?}",
        dec.waiting_for
    );

    f.jurisdiction = Some("CO".into());
    let dec = sched(p, "clinical", "2020-01-01", &f, &[]);
    assert_eq!(dec.status, RetentionStatus::Pending);
    assert!(
        dec.waiting_for.contains(&"record_holder".to_owned()),
        "{:?}",
        dec.waiting_for
    );
}

#[test]
fn state_without_a_rule_keeps_clinical_mail_indefinitely() {
    let p = builtin();
    let mut f = facts("WY", "hospital");
    f.patient_birth_date = Some(d("1970-01-01"));
    let dec = sched(p, "clinical", "2020-01-01", &f, &[]);
    assert_eq!(dec.status, RetentionStatus::Indefinite);
    assert_eq!(dec.retain_until, None);
    assert_eq!(dec.governing.as_deref(), Some("retain.no-state-rule.wy"));
    // A lower-case jurisdiction is the same jurisdiction.
    let mut f = facts("co", "Hospital");
    f.patient_birth_date = Some(d("1970-01-01"));
    let dec = sched(p, "clinical", "2020-01-01", &f, &[]);
    assert_eq!(dec.governing.as_deref(), Some("state.co.hospital"));
}

#[test]
fn state_rule_with_no_statutory_period_is_indefinite() {
    let p = builtin();
    let dec = sched(p, "clinical", "2020-01-01", &facts("IL", "hospital"), &[]);
    assert_eq!(dec.status, RetentionStatus::Indefinite);
    assert_eq!(dec.governing.as_deref(), Some("state.il.hospital"));
}

#[test]
fn unclassified_and_unknown_categories_are_never_scheduled() {
    let p = builtin();
    let dec = sched(p, "unclassified", "2001-01-01", &Facts::default(), &[]);
    assert_eq!(dec.status, RetentionStatus::Indefinite);
    assert_eq!(dec.governing.as_deref(), Some("retain.unclassified"));
    let dec = sched(p, "research_record", "2001-01-01", &Facts::default(), &[]);
    assert_eq!(dec.status, RetentionStatus::Indefinite);
    assert_eq!(dec.governing.as_deref(), Some("retain.unknown-category"));
}

#[test]
fn authorisation_and_contract_clocks() {
    let p = builtin();
    let f = Facts::default();
    let open = sched(p, "marketing_authorization", "2019-05-01", &f, &[]);
    assert_eq!(open.waiting_for, vec!["authorization_revoked"]);
    let revoked = sched(
        p,
        "marketing_authorization",
        "2019-05-01",
        &f,
        &[ev(EventKind::AuthorizationRevoked, "2020-02-01")],
    );
    assert_eq!(revoked.retain_until, Some(d("2026-02-01")));
    let ba = sched(
        p,
        "business_associate",
        "2019-05-01",
        &f,
        &[ev(EventKind::ContractTerminated, "2024-12-31")],
    );
    assert_eq!(ba.retain_until, Some(d("2030-12-31")));
}

#[test]
fn open_amendment_request_preserves_until_resolved_plus_six_years() {
    let p = builtin();
    let f = Facts::default();
    let open = sched(
        p,
        "administrative",
        "2019-05-01",
        &f,
        &[ev(EventKind::AmendmentRequested, "2020-01-01")],
    );
    assert_eq!(open.status, RetentionStatus::Pending);
    assert_eq!(open.waiting_for, vec!["amendment_resolved"]);
    let done = sched(
        p,
        "administrative",
        "2019-05-01",
        &f,
        &[
            ev(EventKind::AmendmentRequested, "2020-01-01"),
            ev(EventKind::AmendmentResolved, "2020-03-01"),
        ],
    );
    assert_eq!(done.retain_until, Some(d("2026-03-01")));
    // A new request after the resolution reopens it.
    let reopened = sched(
        p,
        "administrative",
        "2019-05-01",
        &f,
        &[
            ev(EventKind::AmendmentRequested, "2020-01-01"),
            ev(EventKind::AmendmentResolved, "2020-03-01"),
            ev(EventKind::AmendmentRequested, "2021-01-01"),
        ],
    );
    assert_eq!(reopened.status, RetentionStatus::Pending);
}

#[test]
fn programs_add_their_periods() {
    let p = builtin();
    let plain = sched(p, "program_record", "2020-01-01", &Facts::default(), &[]);
    assert_eq!(plain.retain_until, Some(d("2027-01-01")));
    let f = Facts {
        programs: vec!["medicaid_managed_care".into()],
        ..Facts::default()
    };
    let mc = sched(p, "program_record", "2020-01-01", &f, &[]);
    assert_eq!(mc.retain_until, Some(d("2030-01-01")));
    assert_eq!(mc.governing.as_deref(), Some("us.medicaid.managed-care"));
    let f = Facts {
        programs: vec!["medicare_advantage".into()],
        ..Facts::default()
    };
    let ma = sched(
        p,
        "program_record",
        "2020-01-01",
        &f,
        &[ev(EventKind::ContractTerminated, "2025-12-31")],
    );
    assert_eq!(ma.retain_until, Some(d("2035-12-31")));
}

#[test]
fn every_outcome_carries_citation_and_policy_version() {
    let p = builtin();
    let mut f = facts("CO", "hospital");
    f.patient_birth_date = Some(d("1970-01-01"));
    let dec = sched(p, "clinical", "2020-01-01", &f, &[]);
    assert!(!dec.obligations.is_empty());
    for o in &dec.obligations {
        assert!(!o.citation.is_empty(), "{} has no citation", o.id);
        assert!(!o.trigger.is_empty());
    }
    assert_eq!(&*dec.policy_version, p.version());
    assert!(p.version().starts_with("sha256:"));
}

// --- The pack against the law data ----------------------------------------------------------

fn shared_data(rel: &str) -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} not found (CI always has ../shared/data)",
            p.display()
        );
        None
    }
}

#[test]
fn every_state_row_of_the_law_table_is_in_the_pack_with_its_citation_and_quality() {
    let Some(path) = shared_data("retention-law/state_retention.csv") else {
        return;
    };
    let p = builtin();
    let mut rdr = csv::Reader::from_path(path).unwrap();
    let mut rows = 0;
    let mut csv_states = std::collections::BTreeSet::new();
    for row in rdr.records() {
        let row = row.unwrap();
        rows += 1;
        let state = &row[0];
        csv_states.insert(state.to_owned());
        let in_state: Vec<_> = p
            .obligations()
            .iter()
            .filter(|o| o.jurisdictions.iter().any(|j| j == state))
            .collect();
        assert!(
            !in_state.is_empty(),
            "no obligation for {state} ({})",
            &row[1]
        );
        for o in &in_state {
            assert_eq!(
                o.categories.iter().filter(|c| *c == "clinical").count(),
                1,
                "{} is not clinical",
                o.id
            );
            assert!(!o.citation.trim().is_empty(), "{} has no citation", o.id);
            assert!(
                !o.source_quality.trim().is_empty(),
                "{} has no source quality",
                o.id
            );
        }
    }
    assert_eq!(rows, 52);
    let in_pack: std::collections::BTreeSet<String> = p
        .obligations()
        .iter()
        .filter(|o| o.id.starts_with("state."))
        .flat_map(|o| o.jurisdictions.iter().cloned())
        .collect();
    assert_eq!(
        in_pack, csv_states,
        "the pack covers exactly the jurisdictions of the law table"
    );
    // The data README says "33 states and DC"; the table has 32 states and DC.
    assert_eq!(in_pack.len(), 33);
}

#[test]
fn every_federal_row_is_encoded_or_documented_as_not_applicable() {
    let Some(path) = shared_data("retention-law/federal_retention.csv") else {
        return;
    };
    let p = builtin();
    let federal = include_str!("../pack/federal.toml");
    let mut rdr = csv::Reader::from_path(path).unwrap();
    for row in rdr.records() {
        let row = row.unwrap();
        // The part of the citation that names the section, e.g. "164.316" or "482.24".
        let rule = &row[0];
        let section = rule
            .split(|c: char| c.is_whitespace() || c == '(')
            .find(|w| w.contains('.') && w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .unwrap_or_else(|| rule.split('(').next().unwrap_or(rule).trim());
        let encoded = p.obligations().iter().any(|o| o.citation.contains(section));
        assert!(
            encoded || federal.contains(section),
            "federal rule {rule} is neither encoded nor mentioned"
        );
    }
}

// --- Classification ----------------------------------------------------------------------

fn msg(subject: &str, excerpt: &str) -> MailMessage {
    let mut m = MailMessage::new("id-1@example.org", "jdoe");
    m.subject = Some(subject.to_owned());
    m.excerpt = Some(excerpt.to_owned());
    m.from = Some(Address::new("jdoe@hospital.example"));
    m.to = vec![Address::new("team@hospital.example")];
    m.sent_at = Some("2021-03-04T10:00:00Z".parse().unwrap());
    m
}

#[test]
fn classifies_the_shipped_categories() {
    let p = builtin();
    let cases = [
        (
            "Security incident report: lost laptop",
            "",
            "security_incident",
        ),
        (
            "Updated HIPAA policy on device encryption",
            "see attached",
            "hipaa_documentation",
        ),
        ("Annual HIPAA training completion", "", "training_record"),
        (
            "Revoke my authorization",
            "I want to revoke my authorization for marketing",
            "marketing_authorization",
        ),
        ("Medicare cost report FY2020", "", "program_record"),
        (
            "QI committee agenda",
            "root cause analysis of the fall",
            "quality_improvement",
        ),
        (
            "Follow-up",
            "Patient MRN: 00123456 seen today, dx E11.9",
            "clinical",
        ),
        ("Out of office", "I am away until Monday", "transient"),
        (
            "Budget meeting",
            "please bring the numbers",
            "administrative",
        ),
        ("hello", "see you", "unclassified"),
    ];
    for (subject, excerpt, want) in cases {
        let c = p.classify(&msg(subject, excerpt));
        assert_eq!(c.category.as_str(), want, "subject {subject:?}");
        assert_eq!(&*c.policy_version, p.version());
        if want == "unclassified" {
            assert_eq!(c.rule, None);
            assert_eq!(c.confidence, 0.0);
        } else {
            assert!(c.rule.is_some() && c.confidence > 0.0);
        }
    }
}

#[test]
fn detects_phi_and_patient_references() {
    let p = builtin();
    let c = p.classify(&msg(
        "Re: labs",
        "MRN 1234567 and MRN: 7654321, again MRN#1234567. DOB: 03/04/1950; ICD-10: I10",
    ));
    assert!(c.phi.mrn && c.phi.dob && c.phi.icd10);
    assert_eq!(c.patient_refs, vec!["1234567", "7654321"]);
    let none = p.classify(&msg(
        "Lunch",
        "MRN is a three-letter acronym; version E11 of the form",
    ));
    assert!(
        !none.phi.mrn && !none.phi.icd10 && !none.phi.dob,
        "{:?}",
        none.phi
    );
}

#[test]
fn keywords_match_whole_words_only() {
    let p = builtin();
    // "BAA" must not match inside "BAAL"; "CMS" not inside "CMSX".
    let c = p.classify(&msg("BAAL CMSX", "nothing else"));
    assert_eq!(c.category.as_str(), "unclassified");
}

#[test]
fn attachments_and_unless_conditions() {
    let p = builtin();
    let mut m = msg(
        "Signed copy",
        "Attached is the signed business associate agreement.",
    );
    m.attachments.push(Attachment {
        name: "Acme-BAA-2024.pdf".into(),
        media_type: "application/pdf".into(),
        size_bytes: 1000,
    });
    assert_eq!(p.classify(&m).category.as_str(), "hipaa_documentation");
    // Program keyword, but about an identified patient: the clinical rule decides.
    let c = p.classify(&msg("Medicare claim", "MRN 1234567 claim denied"));
    assert_eq!(c.category.as_str(), "clinical");
}

#[test]
fn organisation_rules_override_and_extend_the_pack() {
    let org = r#"
[policy]
name = "Example Health"
default-jurisdiction = "CO"
default-record-holder = "hospital"
disable-rules = ["transient.bulk"]

[[category]]
code = "research_record"
description = "IRB and research correspondence"

[[rule]]
id = "research.irb"
category = "research_record"
priority = 950
when.text-keywords = ["IRB", "institutional review board"]

[[rule]]
id = "administrative"
category = "administrative"
priority = 200
when.folder = ["Inbox/Admin*"]

[[obligation]]
id = "org.research"
citation = "45 CFR 46.115(b) (3 years after completion)"
source-quality = "primary text"
categories = ["research_record"]
jurisdictions = ["US"]
retain = { years = 3, from = "created" }

[[obligation]]
id = "org.administrative"
citation = "Example Health records schedule 4.2"
source-quality = "organisational policy"
categories = ["administrative"]
jurisdictions = ["US"]
retain = { years = 2, from = "created" }
"#;
    let p = Policy::from_sources(&[("example.toml", org)]).unwrap();
    let base = builtin();
    assert_ne!(p.version(), base.version());
    assert_eq!(p.name(), "Example Health");

    let c = p.classify(&msg("IRB approval", "the institutional review board met"));
    assert_eq!(c.category.as_str(), "research_record");
    let dec = sched(&p, "research_record", "2020-01-01", &Facts::default(), &[]);
    assert_eq!(dec.retain_until, Some(d("2023-01-01")));

    // Replaced rule: the keyword list is gone, only the folder matters now.
    assert_eq!(
        p.classify(&msg("Budget meeting", "")).category.as_str(),
        "unclassified"
    );
    let mut m = msg("anything", "");
    m.folder = Some("Inbox/Administration".into());
    assert_eq!(p.classify(&m).category.as_str(), "administrative");
    // Replaced obligation.
    let dec = sched(&p, "administrative", "2020-01-01", &Facts::default(), &[]);
    assert_eq!(dec.retain_until, Some(d("2022-01-01")));
    // Disabled rule.
    assert_eq!(
        p.classify(&msg("Newsletter", "")).category.as_str(),
        "unclassified"
    );
    // Defaults fill in missing facts.
    let f = Facts {
        patient_birth_date: Some(d("1970-01-01")),
        ..Facts::default()
    };
    let dec = sched(&p, "clinical", "2020-01-01", &f, &[]);
    assert_eq!(dec.retain_until, Some(d("2030-01-01")));
}

#[test]
fn version_ignores_comments_and_whitespace_but_not_content() {
    let a = "[[obligation]]\nid = \"x\"\ncitation = \"c\"\nsource-quality = \"q\"\ncategories = [\"administrative\"]\njurisdictions = [\"US\"]\nretain = { years = 1, from = \"created\" }\n";
    let b = format!("# a comment\n\n{}", a.replace(" = ", "="));
    let c = a.replace("years = 1", "years = 2");
    let pa = Policy::from_sources(&[("a.toml", a)]).unwrap();
    let pb = Policy::from_sources(&[("b.toml", &b)]).unwrap();
    let pc = Policy::from_sources(&[("c.toml", &c)]).unwrap();
    assert_eq!(pa.version(), pb.version());
    assert_ne!(pa.version(), pc.version());
}

// --- Bad input: clear errors naming file, line and field -----------------------------------

fn load_err(text: &str) -> String {
    let e = Policy::from_sources(&[("bad.toml", text)]).expect_err("should be refused");
    e.to_string()
}

#[test]
fn bad_policy_files_name_file_line_and_field() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[[rule]]\nid = \"r\"\ncategory = \"clinical\"\npriority = 1\nwhen.subjet-keywords = [\"x\"]\n",
            &["bad.toml:5", "subjet-keywords"],
        ),
        (
            "[[rule]]\nid = \"r\"\ncategory = \"clinical\"\npriority = 1\nwhen.subject-regex = [\"ok\", \"(unclosed\"]\n",
            &["bad.toml:1", "when.subject-regex[1]", "invalid regex"],
        ),
        (
            "\n\n[[rule]]\nid = \"r\"\ncategory = \"clinicl\"\npriority = 1\n",
            &["bad.toml:3", "rule `r`", "category", "clinicl"],
        ),
        (
            "[[obligation]]\nid = \"o\"\ncitation = \"c\"\nsource-quality = \"q\"\ncategories = [\"clinical\"]\njurisdictions = [\"US\"]\nretain = { years = 6, from = \"creation\" }\n",
            &["bad.toml:1", "obligation `o`", "retain.from", "creation"],
        ),
        (
            "[[obligation]]\nid = \"o\"\ncitation = \"c\"\nsource-quality = \"q\"\ncategories = [\"clinical\"]\njurisdictions = [\"Colorado\"]\nretain = \"indefinite\"\n",
            &["jurisdictions[0]", "COLORADO"],
        ),
        (
            "[[obligation]]\nid = \"o\"\ncitation = \"\"\nsource-quality = \"q\"\ncategories = [\"clinical\"]\njurisdictions = [\"US\"]\nretain = \"indefinite\"\n",
            &["citation"],
        ),
        (
            "[[obligation]]\nid = \"o\"\ncitation = \"c\"\nsource-quality = \"q\"\ncategories = [\"clinical\"]\njurisdictions = [\"US\"]\nwhen-event = \"superseeded\"\nretain = \"indefinite\"\n",
            &["when-event", "superseeded"],
        ),
        (
            "[[rule]]\nid = \"a\"\ncategory = \"clinical\"\npriority = 1\n\n[[rule]]\nid = \"a\"\ncategory = \"clinical\"\npriority = 2\n",
            &["bad.toml:6", "duplicate id", "line 1"],
        ),
        ("[policy\nname = 1", &["bad.toml:1"]),
        (
            "[policy]\nextends = \"corporate\"\n",
            &["bad.toml:2", "extends", "corporate"],
        ),
        (
            "[phi]\nmrn-patterns = [\"MRN\\\\d+\"]\n",
            &["mrn-patterns[0]", "capture group"],
        ),
        (
            "[[rule]]\nid = \"r\"\ncategory = \"clinical\"\npriority = 1\nconfidence = 1.5\n",
            &["confidence"],
        ),
        (
            "[[rule]]\nid = \"r\"\ncategory = \"clinical\"\npriority = 1\nwhen.direction = [\"sideways\"]\n",
            &["when.direction[0]", "sideways"],
        ),
        ("[[category]]\ncode = \"Research\"\n", &["code", "Research"]),
        (
            "[policy]\ndisable-rules = [\"transient.bulky\"]\n",
            &["bad.toml:2", "disable-rules", "transient.bulky"],
        ),
        (
            "[policy]\ndisable-obligations = [\"org.nope\"]\n",
            &["disable-obligations", "org.nope"],
        ),
        (
            "\n[jurisdiction.Colorado]\nage-of-majority = 18\n",
            &["bad.toml:2", "Colorado", "two-letter"],
        ),
    ];
    for (text, wants) in cases {
        let msg = load_err(text);
        for w in *wants {
            assert!(
                msg.contains(w),
                "error for {text:?} should contain {w:?}: {msg}"
            );
        }
    }
}

#[test]
fn bad_cases_name_line_and_field() {
    let e = Case::from_json("case.json", "{\n \"message\": {\"message_id\": \"a\", \"mailbox\": \"b\"},\n \"facts\": {\"jurisdicton\": \"CO\"}\n}").unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("case.json:3:"), "{s}");
    assert!(s.contains("jurisdicton"), "{s}");
    let e = Case::from_json("case.json", r#"{"message": {"message_id": "a", "mailbox": "b"}, "events": [{"type": "superseded", "date": "2021-02-30"}]}"#).unwrap_err();
    assert!(matches!(e, Error::Syntax { .. }), "{e}");
}

#[test]
fn explain_json_contract() {
    let p = builtin();
    let case = Case::from_json(
        "case.json",
        r#"{"message": {"message_id": "m1", "mailbox": "nurse1", "subject": "Discharge summary",
             "excerpt": "Patient MRN 00123456 discharged", "sent_at": "2020-05-06T12:00:00Z"},
            "facts": {"jurisdiction": "CO", "record_holder": "hospital", "patient_birth_date": "2010-03-01",
                      "last_encounter_date": "2020-05-05", "discharge_date": null, "category": null},
            "events": []}"#,
    )
    .unwrap();
    let x = p.explain(&case);
    let v = serde_json::to_value(&x).unwrap();
    assert_eq!(v["category"], "clinical");
    assert_eq!(v["rule"], "clinical.mrn");
    assert_eq!(v["retain_until"], "2038-03-01");
    assert_eq!(v["governing"], "state.co.hospital");
    assert_eq!(v["policy_version"], p.version());
    let obs = v["obligations"].as_array().unwrap();
    assert!(obs.iter().all(|o| o["id"].is_string()
        && o["citation"].is_string()
        && o["trigger"].is_string()
        && o.get("until").is_some()));
    let text = x.to_text();
    assert!(
        text.contains("2038-03-01") && text.contains("state.co.hospital"),
        "{text}"
    );
    // Forced category.
    let mut forced = case.clone();
    forced.facts.category = Some(cat("hipaa_documentation"));
    let x = p.explain(&forced);
    assert!(x.forced && x.rule.is_none() && x.category == "hipaa_documentation");
}

// --- Properties ----------------------------------------------------------------------------

fn arb_date() -> impl Strategy<Value = NaiveDate> {
    (0i64..20_000).prop_map(|n| d("1950-01-01") + chrono::Days::new(n as u64))
}

/// Expressions without "whichever occurs first" or minors' branches: for these, learning a
/// later date can never end retention earlier. (With `first`, learning an anchor can reveal an
/// earlier end; that is the law's own semantics.)
fn arb_monotone_expr(depth: u32) -> BoxedStrategy<String> {
    let leaf = (
        0u32..30,
        prop::sample::select(vec!["created", "discharge", "last_encounter"]),
    )
        .prop_map(|(y, a)| format!("{{ years = {y}, from = \"{a}\" }}"));
    if depth == 0 {
        return leaf.boxed();
    }
    let sub = arb_monotone_expr(depth - 1);
    prop_oneof![
        2 => leaf,
        1 => Just("{ age = 21 }".to_owned()),
        1 => prop::collection::vec(sub, 1..4).prop_map(|v| format!("{{ later = [{}] }}", v.join(", "))),
    ]
    .boxed()
}

fn arb_expr(depth: u32) -> BoxedStrategy<String> {
    let anchors = prop::sample::select(vec![
        "created",
        "last_in_effect",
        "discharge",
        "last_encounter",
        "contract_terminated",
    ]);
    let leaf = prop_oneof![
        Just("\"indefinite\"".to_owned()),
        (0u32..30, 0u32..12, anchors.clone())
            .prop_map(|(y, m, a)| format!("{{ years = {y}, months = {m}, from = \"{a}\" }}")),
        (0u32..30, anchors.clone(), anchors)
            .prop_map(|(y, a, b)| format!("{{ years = {y}, from = [\"{a}\", \"{b}\"] }}")),
        (0u32..40).prop_map(|y| format!("{{ age = {y} }}")),
        (0u32..10).prop_map(|y| format!("{{ age-of-majority-plus = {y} }}")),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let sub = arb_expr(depth - 1);
    prop_oneof![
        3 => leaf,
        1 => prop::collection::vec(sub.clone(), 1..4).prop_map(|v| format!("{{ later = [{}] }}", v.join(", "))),
        1 => prop::collection::vec(sub.clone(), 1..4).prop_map(|v| format!("{{ first = [{}] }}", v.join(", "))),
        1 => (sub.clone(), sub).prop_map(|(a, b)| format!("{{ if-minor = {a}, else = {b}, at = \"last_encounter\" }}")),
    ]
    .boxed()
}

fn policy_with(exprs: &[String]) -> Policy {
    let mut text =
        String::from("[policy]\nextends = \"none\"\n[[category]]\ncode = \"clinical\"\n");
    for (i, e) in exprs.iter().enumerate() {
        text.push_str(&format!(
            "[[obligation]]\nid = \"o{i}\"\ncitation = \"c{i}\"\nsource-quality = \"q\"\ncategories = [\"clinical\"]\njurisdictions = [\"US\"]\nretain = {e}\n"
        ));
    }
    Policy::from_sources(&[("prop.toml", &text)]).unwrap()
}

fn arb_facts() -> impl Strategy<Value = (NaiveDate, Facts, Vec<RetentionEvent>)> {
    (
        arb_date(),
        proptest::option::of(arb_date()),
        proptest::option::of(arb_date()),
        proptest::option::of(arb_date()),
        prop::collection::vec((0usize..7, arb_date()), 0..4),
    )
        .prop_map(|(created, birth, enc, dis, evs)| {
            let f = Facts {
                patient_birth_date: birth,
                last_encounter_date: enc,
                discharge_date: dis,
                ..Facts::default()
            };
            let events = evs
                .into_iter()
                .map(|(k, d)| RetentionEvent::new(EventKind::ALL[k], d))
                .collect();
            (created, f, events)
        })
}

/// Orders outcomes by how long they keep: any date < pending/indefinite (not disposable).
fn keeps_at_least(longer: &RetentionDecision, shorter: &RetentionDecision) -> bool {
    match (longer.retain_until, shorter.retain_until) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn retain_until_is_never_before_any_obligation(exprs in prop::collection::vec(arb_expr(2), 1..5), (created, f, events) in arb_facts()) {
        let p = policy_with(&exprs);
        let c = cat("clinical");
        let dec = p.schedule(Record { category: &c, created: Some(created) }, &f, &events);
        prop_assert_eq!(dec.obligations.len(), exprs.len());
        match dec.retain_until {
            Some(until) => {
                prop_assert_eq!(dec.status, RetentionStatus::Scheduled);
                for o in &dec.obligations {
                    match &o.until {
                        Until::Date(od) => prop_assert!(until >= *od, "{} < {} ({})", until, od, o.id),
                        other => prop_assert!(false, "scheduled although {} is {:?}", o.id, other),
                    }
                }
            }
            None => prop_assert!(dec.obligations.iter().any(|o| o.until.date().is_none())),
        }
    }

    #[test]
    fn adding_an_obligation_never_shortens_retention(exprs in prop::collection::vec(arb_expr(2), 1..5), extra in arb_expr(2), (created, f, events) in arb_facts()) {
        let c = cat("clinical");
        let r = Record { category: &c, created: Some(created) };
        let fewer = policy_with(&exprs).schedule(r, &f, &events);
        let mut more_exprs = exprs.clone();
        more_exprs.push(extra);
        let more = policy_with(&more_exprs).schedule(r, &f, &events);
        prop_assert!(keeps_at_least(&more, &fewer), "{:?} shorter than {:?}", more.retain_until, fewer.retain_until);
    }

    #[test]
    fn unclassified_or_unknown_category_never_gets_a_date(code in "[a-z][a-z0-9_]{0,20}", (created, f, events) in arb_facts()) {
        let p = builtin();
        let known = p.categories().iter().any(|(c, _)| c.as_str() == code);
        prop_assume!(!known);
        for c in [cat(&code), Category::unclassified()] {
            let dec = p.schedule(Record { category: &c, created: Some(created) }, &f, &events);
            prop_assert_eq!(dec.retain_until, None);
            prop_assert_eq!(dec.status, RetentionStatus::Indefinite);
        }
    }

    #[test]
    fn a_later_encounter_never_ends_retention_earlier(exprs in prop::collection::vec(arb_monotone_expr(2), 1..4), (created, f, events) in arb_facts(), extra in arb_date()) {
        // An extra encounter after everything known can only keep the record longer.
        let p = policy_with(&exprs);
        let c = cat("clinical");
        let r = Record { category: &c, created: Some(created) };
        let before = p.schedule(r, &f, &events);
        let mut more = events.clone();
        let latest = f.last_encounter_date.into_iter().chain(f.discharge_date).chain(events.iter().map(|e| e.date)).max().unwrap_or(extra);
        more.push(RetentionEvent::new(EventKind::Encounter, latest.max(extra)));
        let after = p.schedule(r, &f, &more);
        if let (Some(a), Some(b)) = (after.retain_until, before.retain_until) {
            prop_assert!(a >= b, "{} < {}", a, b);
        }
    }

    #[test]
    fn classification_is_deterministic(subject in ".{0,80}", excerpt in ".{0,300}", mrn in proptest::option::of("[0-9]{6,10}")) {
        let p = builtin();
        let mut m = msg(&subject, &excerpt);
        if let Some(n) = mrn {
            m.excerpt = Some(format!("{excerpt} MRN {n}"));
        }
        let a = p.classify(&m);
        let b = p.classify(&m);
        // A second, separately compiled instance agrees.
        static SECOND: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
        let c = SECOND.get_or_init(|| Policy::builtin().unwrap()).classify(&m);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&a, &c);
    }
}

// --- Table: every trigger shape and combinator on a one-obligation policy -------------------

#[test]
fn trigger_shapes_and_combinators_table() {
    struct Row {
        retain: &'static str,
        created: &'static str,
        birth: Option<&'static str>,
        encounter: Option<&'static str>,
        discharge: Option<&'static str>,
        events: &'static [(EventKind, &'static str)],
        want: Result<&'static str, &'static str>, // Ok(date) or Err(status)
    }
    use EventKind::*;
    let rows = [
        // created + N, including leap days and month ends
        Row {
            retain: r#"{ years = 6, from = "created" }"#,
            created: "2020-02-29",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Ok("2026-03-01"),
        },
        Row {
            retain: r#"{ years = 4, from = "created" }"#,
            created: "2020-02-29",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Ok("2024-02-29"),
        },
        Row {
            retain: r#"{ months = 1, from = "created" }"#,
            created: "2021-01-31",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Ok("2021-03-01"),
        },
        Row {
            retain: r#"{ days = 90, from = "created" }"#,
            created: "2021-12-15",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Ok("2022-03-15"),
        },
        // last in effect (superseded event)
        Row {
            retain: r#"{ years = 6, from = "last_in_effect" }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Err("pending"),
        },
        Row {
            retain: r#"{ years = 6, from = "last_in_effect" }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[(Superseded, "2019-07-01")],
            want: Ok("2025-07-01"),
        },
        // last encounter / discharge: facts and events, the latest counts
        Row {
            retain: r#"{ years = 10, from = "last_encounter" }"#,
            created: "2015-01-01",
            birth: None,
            encounter: Some("2016-01-01"),
            discharge: None,
            events: &[(Encounter, "2018-05-05")],
            want: Ok("2028-05-05"),
        },
        Row {
            retain: r#"{ years = 7, from = "discharge" }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: Some("2016-02-02"),
            events: &[(Discharged, "2015-06-06")],
            want: Ok("2023-02-02"),
        },
        Row {
            retain: r#"{ years = 7, from = ["discharge", "created"] }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Ok("2022-01-01"),
        },
        // patient age: fixed, and age of majority + N (default majority 18)
        Row {
            retain: r#"{ age = 21 }"#,
            created: "2015-01-01",
            birth: Some("2004-02-29"),
            encounter: None,
            discharge: None,
            events: &[],
            want: Ok("2025-03-01"),
        },
        Row {
            retain: r#"{ age-of-majority-plus = 3 }"#,
            created: "2015-01-01",
            birth: Some("2010-06-15"),
            encounter: None,
            discharge: None,
            events: &[],
            want: Ok("2031-06-15"),
        },
        Row {
            retain: r#"{ age = 21 }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Err("pending"),
        },
        // contract termination + N
        Row {
            retain: r#"{ years = 10, from = "contract_terminated" }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[(ContractTerminated, "2020-12-31")],
            want: Ok("2030-12-31"),
        },
        // indefinite
        Row {
            retain: r#""indefinite""#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Err("indefinite"),
        },
        // whichever is later: minors (CO style: age 28 or 10 years after encounter)
        Row {
            retain: r#"{ later = [ { age = 28 }, { years = 10, from = "last_encounter" } ] }"#,
            created: "2015-01-01",
            birth: Some("2010-03-01"),
            encounter: Some("2020-05-05"),
            discharge: None,
            events: &[],
            want: Ok("2038-03-01"),
        },
        Row {
            retain: r#"{ later = [ { age = 28 }, { years = 10, from = "last_encounter" } ] }"#,
            created: "2015-01-01",
            birth: Some("1950-03-01"),
            encounter: Some("2020-05-05"),
            discharge: None,
            events: &[],
            want: Ok("2030-05-05"),
        },
        Row {
            retain: r#"{ later = [ { years = 1, from = "created" }, "indefinite" ] }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Err("indefinite"),
        },
        // whichever occurs first (A.R.S. 32-2936 style), minors only
        Row {
            retain: r#"{ if-minor = { first = [ { age = 21 }, { years = 7, from = "last_encounter" } ] }, else = { years = 7, from = "last_encounter" }, at = "last_encounter" }"#,
            created: "2015-01-01",
            birth: Some("2005-01-01"),
            encounter: Some("2020-01-01"),
            discharge: None,
            events: &[],
            want: Ok("2026-01-01"),
        },
        Row {
            retain: r#"{ if-minor = { first = [ { age = 21 }, { years = 7, from = "last_encounter" } ] }, else = { years = 7, from = "last_encounter" }, at = "last_encounter" }"#,
            created: "2015-01-01",
            birth: Some("1990-01-01"),
            encounter: Some("2020-01-01"),
            discharge: None,
            events: &[],
            want: Ok("2027-01-01"),
        },
        Row {
            retain: r#"{ first = [ "indefinite", { years = 2, from = "created" } ] }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Ok("2017-01-01"),
        },
        Row {
            retain: r#"{ first = [ "indefinite", { years = 2, from = "last_in_effect" } ] }"#,
            created: "2015-01-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[],
            want: Err("pending"),
        },
        // HIPAA: 6 years from the later of creation and last in effect
        Row {
            retain: r#"{ later = [ { years = 6, from = "created" }, { years = 6, from = "last_in_effect" } ] }"#,
            created: "2016-04-01",
            birth: None,
            encounter: None,
            discharge: None,
            events: &[(Superseded, "2016-01-01")],
            want: Ok("2022-04-01"),
        },
    ];
    for (i, r) in rows.iter().enumerate() {
        let p = policy_with(&[r.retain.to_owned()]);
        let f = Facts {
            patient_birth_date: r.birth.map(d),
            last_encounter_date: r.encounter.map(d),
            discharge_date: r.discharge.map(d),
            ..Facts::default()
        };
        let events: Vec<RetentionEvent> = r.events.iter().map(|(k, on)| ev(*k, on)).collect();
        let dec = sched(&p, "clinical", r.created, &f, &events);
        match r.want {
            Ok(date) => assert_eq!(dec.retain_until, Some(d(date)), "row {i}: {}", r.retain),
            Err(status) => {
                assert_eq!(dec.retain_until, None, "row {i}: {}", r.retain);
                assert_eq!(dec.status.as_str(), status, "row {i}: {}", r.retain);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever text arrives as a policy file or a case, the answer is Ok or a clear Err.
    #[test]
    fn arbitrary_policy_text_never_panics(text in "(\\[\\[?[a-z.-]{0,12}\\]\\]?\n|[a-z-]{1,12} = (\"[^\"]{0,10}\"|[0-9]{1,3}|\\[\\]|\\{ [a-z-]{1,8} = [0-9] \\})\n|#[^\n]{0,10}\n){0,12}") {
        let _ = Policy::from_sources(&[("fuzz.toml", &text)]);
    }

    #[test]
    fn arbitrary_case_json_never_panics(text in "\\{(\"(message|facts|events|type|date|message_id|mailbox)\": ?(\"[^\"]{0,12}\"|\\[\\]|\\{\\}|null|[0-9]{1,4}),? ?){0,6}\\}") {
        if let Ok(case) = Case::from_json("fuzz.json", &text) {
            let _ = builtin().explain(&case);
        }
    }
}
