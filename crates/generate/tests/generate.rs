//! The generator: deterministic, varied, and realistic enough that the built-in policy
//! recognises what it meant to write.

use std::collections::{BTreeMap, HashSet};

use retain_generate::Generator;
use retain_model::RetentionStatus;
use retain_policy::Policy;

#[test]
fn same_seed_same_records_other_seed_other_records() {
    let a: Vec<_> = Generator::new(7).take(500).collect();
    let b: Vec<_> = Generator::new(7).take(500).collect();
    let c: Vec<_> = Generator::new(8).take(500).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn records_are_well_formed_and_varied() {
    let recs: Vec<_> = Generator::new(1).take(5_000).collect();
    let ids: HashSet<_> = recs.iter().map(|r| r.message.message_id.clone()).collect();
    assert_eq!(ids.len(), recs.len(), "message ids are unique");
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &recs {
        *kinds.entry(r.intended).or_default() += 1;
        let sent = r.message.sent_at.expect("every message has a date");
        assert!(
            sent.date_naive() >= "2012-01-01".parse().unwrap()
                && sent.date_naive() < "2027-01-01".parse().unwrap()
        );
        assert!(r.facts.jurisdiction.is_some() && r.facts.record_holder.is_some());
        if r.intended == "clinical" {
            assert!(r.facts.patient_birth_date.is_some() && r.facts.last_encounter_date.is_some());
            assert!(r.message.excerpt.as_deref().unwrap().contains("MRN"));
        }
    }
    // Every kind appears, in roughly the configured mix (clinical 30 %).
    assert_eq!(kinds.len(), 11, "{kinds:?}");
    let clinical = kinds["clinical"] as f64 / recs.len() as f64;
    assert!(
        (0.27..0.33).contains(&clinical),
        "clinical share {clinical}"
    );
    let states: HashSet<_> = recs
        .iter()
        .filter_map(|r| r.facts.jurisdiction.clone())
        .collect();
    assert!(states.len() >= 5, "{states:?}");
    let threads = recs
        .iter()
        .filter(|r| r.message.in_reply_to.is_some())
        .count();
    assert!(threads > 100, "clinical threads have replies: {threads}");
}

#[test]
fn the_built_in_policy_recognises_what_was_meant() {
    let p = Policy::builtin().unwrap();
    let recs: Vec<_> = Generator::new(42).take(3_000).collect();
    let mut agree = 0;
    let mut misses: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &recs {
        let (c, d) = p.decide(&r.message, &r.facts, &r.events);
        if c.category.as_str() == r.intended {
            agree += 1;
        } else {
            *misses
                .entry((r.intended.to_owned(), c.category.to_string()))
                .or_default() += 1;
        }
        if r.intended == "clinical" && c.category.as_str() == "clinical" {
            // Facts are complete for clinical mail: a date, or indefinite where the state
            // has no statutory period; never waiting.
            assert_ne!(d.status, RetentionStatus::Pending, "{:?}", d.waiting_for);
            assert_eq!(c.patient_refs.len(), 1);
        }
    }
    let share = agree as f64 / recs.len() as f64;
    assert!(
        share >= 0.95,
        "only {share:.3} classified as intended; misses: {misses:?}"
    );
}

#[test]
fn a_generated_record_is_an_explain_case() {
    let r = Generator::new(3).next().unwrap();
    let json = serde_json::json!({"message": r.message, "facts": r.facts, "events": r.events});
    let case = retain_policy::Case::from_json("gen.json", &json.to_string()).unwrap();
    assert_eq!(case.message, r.message);
}
