//! Holds and due dates on real `records` batches (built by the lake's batch builder), against
//! an independent reference written here in plain Rust: what each scope covers, and, over
//! 10,000 random histories of landings, re-schedulings, holds placed and released, clock moves
//! and disposal runs, that no held record and no record before its date is ever due, and that
//! every due, unheld record is.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Result;
use chrono::{Days, NaiveDate, TimeZone, Utc};
use retain_codec::{ClassifiedRecord, Lineage};
use retain_govern::{HoldScope, HoldSet, cutoff};
use retain_lake::deltalake::arrow::array::RecordBatch;
use retain_lake::{RecordBatchBuilder, records_schema};
use retain_model::{
    Category, Classification, MailMessage, PhiIndicators, RetentionDecision, RetentionStatus,
};

/// One record as the reference sees it.
#[derive(Debug, Clone)]
struct Rec {
    id: usize,
    mailbox: &'static str,
    custodian: Option<&'static str>,
    subject: Option<&'static str>,
    created: Option<NaiveDate>,
    category: &'static str,
    patient_refs: Vec<&'static str>,
    retain_until: Option<NaiveDate>,
    status: RetentionStatus,
}

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// The records as a `records` batch, row i = `recs[i]`.
fn batch(recs: &[Rec]) -> Result<RecordBatch> {
    let mut b = RecordBatchBuilder::new();
    for r in recs {
        let mut m = MailMessage::new(format!("m{}@example.org", r.id), r.mailbox);
        m.custodian = r.custodian.map(str::to_owned);
        m.subject = r.subject.map(str::to_owned);
        m.sent_at = r
            .created
            .map(|d| Utc.from_utc_datetime(&d.and_hms_opt(12, 0, 0).unwrap()));
        let classification = Classification {
            category: Category::new(r.category)?,
            rule: None,
            confidence: 1.0,
            forced: false,
            phi: PhiIndicators::default(),
            patient_refs: r.patient_refs.iter().map(|s| (*s).to_owned()).collect(),
            also_matched: Vec::new(),
            policy_version: Arc::from("test"),
        };
        let record = ClassifiedRecord::new(
            m,
            classification,
            "test",
            Lineage {
                topic: "retain.mail".into(),
                partition: 0,
                offset: r.id as i64,
            },
        );
        let decision = RetentionDecision {
            retain_until: r.retain_until,
            status: r.status,
            governing: Some(Arc::from("test.rule")),
            waiting_for: if r.status == RetentionStatus::Pending {
                vec!["event.discharged".to_owned()]
            } else {
                Vec::new()
            },
            obligations: Vec::new(),
            policy_version: Arc::from("test"),
        };
        b.push_record(&record, &decision, None, None)?;
    }
    Ok(b.finish(Utc::now())?)
}

/// SQL's three-valued AND of the criteria: false wins, then unknown (which a hold counts as
/// covered), then true.
fn and3(parts: impl IntoIterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for p in parts {
        match p {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { None } else { Some(true) }
}

/// The reference: whether `scope` covers `r` (true or unknown), written from docs/holds.md, not
/// from the compiled SQL.
fn covers(scope: &HoldScope, r: &Rec) -> bool {
    let lower: Vec<String> = scope.custodians.iter().map(|c| c.to_lowercase()).collect();
    // The table's custodian is the named one, or the mailbox when none is named: never unknown.
    let custodian = (!scope.custodians.is_empty()).then(|| {
        let named = r.custodian.unwrap_or(r.mailbox).to_lowercase();
        Some(lower.contains(&named) || lower.contains(&r.mailbox.to_lowercase()))
    });
    let from = scope.from.map(|f| r.created.map(|c| c >= f));
    let to = scope.to.map(|t| r.created.map(|c| c <= t));
    let keywords = (!scope.keywords.is_empty()).then(|| {
        r.subject.map(|s| {
            let s = s.to_lowercase();
            scope.keywords.iter().any(|k| s.contains(&k.to_lowercase()))
        })
    });
    let categories = (!scope.categories.is_empty())
        .then(|| Some(scope.categories.iter().any(|c| c == r.category)));
    let patients = (!scope.patient_refs.is_empty()).then(|| {
        Some(
            r.patient_refs
                .iter()
                .any(|p| scope.patient_refs.iter().any(|q| q == p)),
        )
    });
    assert!(scope.sql.is_none(), "the reference does not evaluate SQL");
    let all = [custodian, from, to, keywords, categories, patients]
        .into_iter()
        .flatten();
    and3(all) != Some(false)
}

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const MAILBOXES: [&str; 4] = ["alice", "bob", "carol", "dave"];
const CUSTODIANS: [Option<&str>; 4] = [Some("Alice"), Some("bob"), Some("erin"), None];
const SUBJECTS: [Option<&str>; 5] = [
    Some("Raptor deal"),
    Some("lunch"),
    Some("RE: raptor update"),
    Some("Patient follow-up"),
    None,
];
const CATEGORIES: [&str; 4] = [
    "clinical",
    "administrative",
    "transient",
    "business_associate",
];
const PATIENTS: [&[&str]; 3] = [&[], &["MRN1"], &["MRN2", "MRN1"]];

fn random_rec(rng: &mut Rng, id: usize, today: NaiveDate) -> Rec {
    let created = rng
        .chance(85)
        .then(|| day(2001, 1, 1) + Days::new(rng.below(3 * 365) as u64));
    let (retain_until, status) = match rng.below(10) {
        0 => (None, RetentionStatus::Indefinite),
        1 => (None, RetentionStatus::Pending),
        _ => {
            let offset = rng.below(800) as i64 - 400;
            (
                Some(today + chrono::Duration::days(offset)),
                RetentionStatus::Scheduled,
            )
        }
    };
    Rec {
        id,
        mailbox: rng.pick(&MAILBOXES),
        custodian: rng.pick(&CUSTODIANS),
        subject: rng.pick(&SUBJECTS),
        created,
        category: rng.pick(&CATEGORIES),
        patient_refs: rng.pick(&PATIENTS).to_vec(),
        retain_until,
        status,
    }
}

fn random_scope(rng: &mut Rng) -> HoldScope {
    loop {
        let mut s = HoldScope::default();
        if rng.chance(40) {
            s.custodians = vec![rng.pick(&["alice", "BOB", "erin", "zoe"]).to_owned()];
        }
        if rng.chance(30) {
            s.from = Some(day(2001, 1, 1) + Days::new(rng.below(3 * 365) as u64));
        }
        if rng.chance(30) {
            s.to = Some(day(2002, 6, 1) + Days::new(rng.below(3 * 365) as u64));
        }
        if rng.chance(35) {
            s.keywords = vec![rng.pick(&["raptor", "Patient", "budget"]).to_owned()];
        }
        if rng.chance(30) {
            s.categories = vec![rng.pick(&CATEGORIES).to_owned()];
        }
        if rng.chance(20) {
            s.patient_refs = vec![rng.pick(&["MRN1", "MRN2", "MRN9"]).to_owned()];
        }
        if !s.is_empty() && s.validate().is_ok() {
            return s;
        }
    }
}

/// A landed batch: its records, whether each is still in the table, and the Arrow batch.
struct Landed {
    recs: Vec<Rec>,
    live: Vec<bool>,
    batch: RecordBatch,
}

#[test]
fn ten_thousand_histories_never_dispose_held_or_early_and_never_skip_due() -> Result<()> {
    let schema = records_schema();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let (mut runs, mut disposed_total, mut held_total) = (0u64, 0u64, 0u64);
    for history in 0..10_000 {
        let mut today = day(2026, 12, 4);
        let mut table: Vec<Landed> = Vec::new();
        let mut holds: Vec<(String, HoldScope)> = Vec::new();
        let mut next_id = 0;
        let mut next_hold = 0;
        let mut disposed: BTreeSet<usize> = BTreeSet::new();
        for _ in 0..(6 + rng.below(10)) {
            match rng.below(10) {
                // Land a few records (some may arrive after a hold that covers them).
                0..=2 => {
                    let recs: Vec<Rec> = (0..1 + rng.below(6))
                        .map(|_| {
                            next_id += 1;
                            random_rec(&mut rng, next_id, today)
                        })
                        .collect();
                    let b = batch(&recs)?;
                    table.push(Landed {
                        live: vec![true; recs.len()],
                        recs,
                        batch: b,
                    });
                }
                // An event or a policy change moves one record's date (copy-on-write, as a
                // Delta MERGE rewrites the file).
                3 => {
                    let live: Vec<(usize, usize)> = table
                        .iter()
                        .enumerate()
                        .flat_map(|(b, l)| {
                            (0..l.recs.len())
                                .filter(|&r| l.live[r])
                                .map(move |r| (b, r))
                        })
                        .collect();
                    if !live.is_empty() {
                        let (b, r) = live[rng.below(live.len())];
                        table[b].live[r] = false;
                        let mut moved = table[b].recs[r].clone();
                        let fresh = random_rec(&mut rng, moved.id, today);
                        moved.retain_until = fresh.retain_until;
                        moved.status = fresh.status;
                        let recs = vec![moved];
                        let b = batch(&recs)?;
                        table.push(Landed {
                            live: vec![true],
                            recs,
                            batch: b,
                        });
                    }
                }
                4 | 5 => {
                    next_hold += 1;
                    holds.push((format!("H{next_hold}"), random_scope(&mut rng)));
                }
                6 => {
                    if !holds.is_empty() {
                        holds.remove(rng.below(holds.len()));
                    }
                }
                7 => today = today + Days::new(rng.below(400) as u64),
                // A disposal run, as of a date that may lie before or after today.
                _ => {
                    runs += 1;
                    let as_of = today + chrono::Duration::days(rng.below(200) as i64 - 100);
                    let cut = cutoff(as_of, today);
                    assert!(cut <= today);
                    let predicates: Vec<(String, String)> = holds
                        .iter()
                        .map(|(id, s)| Ok((id.clone(), s.to_predicate()?)))
                        .collect::<Result<_>>()?;
                    let set = HoldSet::compile(
                        &schema,
                        predicates.iter().map(|(i, p)| (i.as_str(), p.as_str())),
                    )?;
                    for landed in &mut table {
                        let due = set.due(&landed.batch, cut)?;
                        for (i, r) in landed.recs.iter().enumerate() {
                            if !landed.live[i] {
                                continue;
                            }
                            let held = holds.iter().any(|(_, s)| covers(s, r));
                            let dated = r.status == RetentionStatus::Scheduled
                                && r.retain_until.is_some_and(|u| u <= cut);
                            let expected = dated && !held;
                            assert_eq!(
                                due.value(i),
                                expected,
                                "history {history}: record {r:?} under holds {holds:?} as of {as_of} on {today}"
                            );
                            if held && dated {
                                held_total += 1;
                            }
                            if due.value(i) {
                                assert!(r.retain_until.is_some_and(|u| u <= today));
                                assert!(disposed.insert(r.id), "record {} disposed twice", r.id);
                                landed.live[i] = false;
                                disposed_total += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!("{runs} disposal runs: {disposed_total} records disposed, {held_total} due but held");
    // The generator exercised both sides.
    assert!(runs > 10_000 && disposed_total > 10_000 && held_total > 1_000);
    Ok(())
}

#[test]
fn hold_predicates_cover_what_the_reference_says() -> Result<()> {
    let mut rng = Rng(42);
    let today = day(2026, 12, 4);
    let recs: Vec<Rec> = (0..400).map(|i| random_rec(&mut rng, i, today)).collect();
    let b = batch(&recs)?;
    let schema = records_schema();
    for _ in 0..300 {
        let scope = random_scope(&mut rng);
        let p = scope.to_predicate()?;
        let set = HoldSet::compile(&schema, [("H", p.as_str())])?;
        let covering = set.covering(&b)?;
        for (r, c) in recs.iter().zip(&covering) {
            assert_eq!(!c.is_empty(), covers(&scope, r), "{p} on {r:?}");
        }
    }
    Ok(())
}

#[test]
fn sql_conditions_are_checked_against_the_schema() -> Result<()> {
    let schema = records_schema();
    let ok = |sql: &str| HoldSet::compile(&schema, [("H1", sql)]).map(|_| ());
    ok("size_bytes > 1000 AND jurisdiction = 'CO'")?;
    ok("TRUE")?;
    ok("array_has(labels, 'Legal')")?;
    for (sql, expected) in [
        ("no_such_column = 1", "no_such_column"),
        ("size_bytes + 1", "not true or false"),
        ("random() < 0.5", "volatile"),
        ("record_key IN (SELECT record_key FROM records)", "subquer"),
        ("count(*) > 1", "aggregate"),
        ("subject LIKE", "H1"),
    ] {
        let e = ok(sql).unwrap_err().to_string();
        assert!(e.contains(expected) && e.contains("H1"), "{sql}: {e}");
    }
    Ok(())
}

#[test]
fn unknown_counts_as_covered() -> Result<()> {
    let today = day(2026, 12, 4);
    let undated = Rec {
        id: 1,
        mailbox: "zed",
        custodian: None,
        subject: None,
        created: None,
        category: "transient",
        patient_refs: Vec::new(),
        retain_until: Some(day(2020, 1, 1)),
        status: RetentionStatus::Scheduled,
    };
    let b = batch(std::slice::from_ref(&undated))?;
    let schema = records_schema();
    for scope in [
        HoldScope {
            from: Some(day(2001, 1, 1)),
            to: Some(day(2001, 12, 31)),
            ..HoldScope::default()
        },
        HoldScope {
            keywords: vec!["raptor".into()],
            ..HoldScope::default()
        },
    ] {
        let p = scope.to_predicate()?;
        let set = HoldSet::compile(&schema, [("H", p.as_str())])?;
        assert!(
            !set.due(&b, today)?.value(0),
            "{p} must keep an undecidable record"
        );
    }
    assert!(
        HoldSet::empty().due(&b, today)?.value(0),
        "without holds it is due"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The `holds` table and previews against real Delta tables in a temporary folder.

mod tables {
    use std::collections::HashMap;

    use retain_govern::{HOLDS_FENCE, HoldStatus, HoldsTable, NewHold, Release, preview};
    use retain_lake::deltalake::arrow::array::RecordBatch;
    use retain_lake::deltalake::kernel::Transaction;
    use retain_lake::{RecordsTable, append_batch, records_schema};

    use super::*;

    async fn lake(recs: &[Rec]) -> Result<(tempfile::TempDir, RecordsTable, HoldsTable)> {
        let dir = tempfile::tempdir()?;
        let loc = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let mut records = RecordsTable::open_or_create(&loc("records"), HashMap::new()).await?;
        let next = recs.iter().map(|r| r.id as i64 + 1).max().unwrap_or(0);
        records
            .land(batch(recs)?, "retain-lineage", &[(0, next)])
            .await?;
        let holds = HoldsTable::open_or_create(&loc("holds"), HashMap::new()).await?;
        Ok((dir, records, holds))
    }

    fn recs() -> Vec<Rec> {
        let mut rng = Rng(7);
        let today = day(2026, 12, 4);
        (0..60).map(|i| random_rec(&mut rng, i, today)).collect()
    }

    fn new_hold(scope: HoldScope) -> NewHold {
        NewHold {
            matter: "Smith v. General Hospital".into(),
            reason: "complaint served".into(),
            created_by: "counsel".into(),
            scope,
        }
    }

    #[tokio::test]
    async fn preview_counts_what_the_reference_covers() -> Result<()> {
        let recs = recs();
        let (_dir, mut records, _) = lake(&recs).await?;
        let scope = HoldScope {
            custodians: vec!["alice".into(), "bob".into()],
            keywords: vec!["raptor".into()],
            ..HoldScope::default()
        };
        let p = preview(&mut records, &scope, 5).await?;
        let expected: Vec<&Rec> = recs.iter().filter(|r| covers(&scope, r)).collect();
        assert_eq!(p.records, expected.len() as u64);
        assert!(p.records > 0, "the sample data has covered records");
        assert_eq!(p.by_custodian.values().sum::<u64>(), p.records);
        assert_eq!(p.by_category.values().sum::<u64>(), p.records);
        assert_eq!(p.sample.len(), expected.len().min(5));
        assert!(p.sample.windows(2).all(|w| w[0] < w[1]));
        Ok(())
    }

    #[tokio::test]
    async fn holds_are_created_fenced_listed_and_released_only_with_an_approver() -> Result<()> {
        let (_dir, mut records, mut holds) = lake(&recs()).await?;
        let scope = HoldScope {
            categories: vec!["clinical".into()],
            ..HoldScope::default()
        };
        let now = Utc::now();
        let before = records.fence_version(HOLDS_FENCE).await?;
        assert_eq!(before, None);
        let h = holds
            .create(&mut records, new_hold(scope.clone()), now)
            .await?;
        assert!(h.id.starts_with("H-"), "{}", h.id);
        assert_eq!(h.status, HoldStatus::Active);
        // The fence on records names the holds table version that has the hold.
        assert_eq!(
            records.fence_version(HOLDS_FENCE).await?,
            Some(holds.version() as i64)
        );
        let (active, set) = holds.active().await?;
        assert_eq!(active.len(), 1);
        assert_eq!(set.holds()[0].id, h.id);

        // Bad scopes and missing fields are refused before anything is written.
        let e = holds
            .create(
                &mut records,
                new_hold(HoldScope {
                    sql: Some("nope(".into()),
                    ..HoldScope::default()
                }),
                now,
            )
            .await
            .unwrap_err();
        assert!(e.is_bad_input(), "{e}");
        let mut unnamed = new_hold(scope.clone());
        unnamed.created_by = " ".into();
        assert!(
            holds
                .create(&mut records, unnamed, now)
                .await
                .unwrap_err()
                .is_bad_input()
        );

        let release = |by: &str, approver: &str, why: &str| Release {
            released_by: by.into(),
            approved_by: approver.into(),
            justification: why.into(),
        };
        for (r, expected) in [
            (release("counsel", "gc", ""), "justification"),
            (release("counsel", "", "settled"), "approved"),
            (release("paralegal", "Counsel", "settled"), "creator"),
            (release("gc", "gc", "settled"), "the one releasing"),
        ] {
            let e = holds.release(&h.id, r, now).await.unwrap_err();
            assert!(e.is_bad_input() && e.to_string().contains(expected), "{e}");
        }
        assert_eq!(holds.get(&h.id).await?.unwrap().status, HoldStatus::Active);
        let released = holds
            .release(
                &h.id,
                release("counsel", "general.counsel", "matter settled 2026-11-30"),
                now,
            )
            .await?;
        assert_eq!(released.status, HoldStatus::Released);
        let again = holds
            .release(&h.id, release("counsel", "general.counsel", "again"), now)
            .await
            .unwrap_err();
        assert!(again.to_string().contains("already released"), "{again}");
        let listed = holds.list().await?;
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].release_approved_by.as_deref(),
            Some("general.counsel")
        );
        assert_eq!(listed[0].scope, scope);
        assert!(holds.active().await?.0.is_empty());
        let unknown = holds
            .release("H-0", release("a", "b", "c"), now)
            .await
            .unwrap_err();
        assert!(unknown.to_string().contains("no hold H-0"), "{unknown}");
        Ok(())
    }

    /// The window: a disposal that read `records` before a hold existed and commits its
    /// deletes (with the holds fence) after the hold's fence is refused by Delta.
    #[tokio::test]
    async fn a_disposal_that_read_before_a_hold_cannot_commit_after_it() -> Result<()> {
        let (dir, mut records, mut holds) = lake(&recs()).await?;
        let location = dir.path().join("records").to_str().unwrap().to_owned();
        // The disposal's view of records, read before the hold.
        let mut stale = RecordsTable::open_or_create(&location, HashMap::new()).await?;
        let fence_seen = stale.fence_version(HOLDS_FENCE).await?.unwrap_or(-1);
        let mut stale_table = stale.delta_table().clone();
        holds
            .create(
                &mut records,
                new_hold(HoldScope {
                    custodians: vec!["alice".into()],
                    ..HoldScope::default()
                }),
                Utc::now(),
            )
            .await?;
        let commit = append_batch(
            &mut stale_table,
            &location,
            "retain-disposal",
            RecordBatch::new_empty(records_schema()),
            vec![Transaction::new(HOLDS_FENCE, fence_seen.max(0))],
        )
        .await;
        assert!(
            matches!(commit, Err(retain_lake::Error::Conflict { .. })),
            "{commit:?}"
        );
        Ok(())
    }

    /// Plan → approve → a hold placed after planning → dry run → execute → execute again.
    #[tokio::test]
    async fn disposal_plans_approves_and_executes_with_holds_winning() -> Result<()> {
        use retain_govern::{Disposal, DisposalsTable, ManifestsTable};

        let recs = recs();
        let (dir, mut records, mut holds) = lake(&recs).await?;
        let loc = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let mut manifests =
            ManifestsTable::open_or_create(&loc("manifests"), HashMap::new()).await?;
        let mut disposals =
            DisposalsTable::open_or_create(&loc("disposals"), HashMap::new()).await?;
        let today = day(2026, 12, 4);
        let clinical = HoldScope {
            categories: vec!["clinical".into()],
            ..HoldScope::default()
        };
        holds
            .create(&mut records, new_hold(clinical.clone()), Utc::now())
            .await?;

        let mut d = Disposal::new(
            &mut records,
            &mut holds,
            &mut manifests,
            &mut disposals,
            today,
        );
        // As of ten years ahead: the cut-off is still today.
        let m = d
            .plan(day(2036, 1, 1), "records.manager", Utc::now())
            .await?
            .expect("something is due");
        assert_eq!(m.cutoff, today);
        let expected: BTreeSet<String> = recs
            .iter()
            .filter(|r| {
                r.status == RetentionStatus::Scheduled
                    && r.retain_until.is_some_and(|u| u <= today)
                    && !covers(&clinical, r)
            })
            .map(|r| {
                retain_lake::record_key("default", r.mailbox, &format!("m{}@example.org", r.id))
            })
            .collect();
        let planned: BTreeSet<String> = m.entries.iter().map(|e| e.record_key.clone()).collect();
        assert_eq!(planned, expected);
        assert_eq!(m.by_category.values().sum::<u64>(), m.entries.len() as u64);

        // The planner cannot approve; someone else can; execution needs approval.
        let e = d
            .approve(&m.id, "Records.Manager", Utc::now())
            .await
            .unwrap_err();
        assert!(e.is_bad_input() && e.to_string().contains("planner"), "{e}");
        let e = d
            .execute(&m.id, "cron", None, Utc::now())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not approved"), "{e}");
        d.approve(&m.id, "compliance.officer", Utc::now()).await?;

        // A hold placed after planning covers one planned record's custodian: it wins.
        let victim = recs
            .iter()
            .find(|r| {
                planned.contains(&retain_lake::record_key(
                    "default",
                    r.mailbox,
                    &format!("m{}@example.org", r.id),
                ))
            })
            .unwrap();
        let late = HoldScope {
            custodians: vec![victim.mailbox.to_owned()],
            ..HoldScope::default()
        };
        holds
            .create(&mut records, new_hold(late.clone()), Utc::now())
            .await?;
        let held_now: usize = m
            .entries
            .iter()
            .filter(|e| {
                recs.iter().any(|r| {
                    r.mailbox == e.mailbox
                        && covers(&late, r)
                        && format!("m{}@example.org", r.id) == e.message_id
                })
            })
            .count();
        assert!(held_now >= 1);

        let rows_before = count(&mut records).await?;
        let mut d = Disposal::new(
            &mut records,
            &mut holds,
            &mut manifests,
            &mut disposals,
            today,
        );
        let dry = d.execute(&m.id, "cron", None, Utc::now()).await?;
        assert!(dry.dry_run && dry.certificate.is_none());
        assert_eq!(dry.disposed.len() + held_now, m.entries.len());
        assert_eq!(
            count(&mut records).await?,
            rows_before,
            "a dry run deletes nothing"
        );

        let mut d = Disposal::new(
            &mut records,
            &mut holds,
            &mut manifests,
            &mut disposals,
            today,
        )
        .for_real()
        .with_grace(chrono::Duration::zero());
        let done = d.execute(&m.id, "cron", None, Utc::now()).await?;
        let cert = done.certificate.clone().expect("a certificate");
        assert_eq!(cert.disposed as usize, m.entries.len() - held_now);
        assert_eq!(cert.skipped_held as usize, held_now);
        assert_eq!(cert.by_category.values().sum::<u64>(), cert.disposed);
        assert_eq!(cert.approved_by, "compliance.officer");
        assert!(cert.records_version_after > cert.records_version_before);
        assert!(!cert.files_removed.is_empty());
        for f in &cert.files_removed {
            assert!(
                !dir.path().join("records").join(f).exists(),
                "{f} is gone from storage"
            );
        }
        assert!(cert.to_markdown().contains("Certificate of destruction"));
        // Executing again changes nothing and returns the same certificate.
        let again = d.execute(&m.id, "cron", None, Utc::now()).await?;
        assert_eq!(again.certificate.as_ref(), Some(&cert));
        assert_eq!(
            count(&mut records).await?,
            rows_before - cert.disposed as i64
        );
        // What is left holds none of the disposed keys, and every held record survived.
        let left = keys(&mut records).await?;
        for e in &done.disposed {
            assert!(!left.contains(&e.record_key));
        }
        let kept = m
            .entries
            .iter()
            .filter(|e| left.contains(&e.record_key))
            .count();
        assert_eq!(kept, held_now);
        Ok(())
    }

    async fn count(records: &mut RecordsTable) -> Result<i64> {
        Ok(keys(records).await?.len() as i64)
    }

    async fn keys(records: &mut RecordsTable) -> Result<BTreeSet<String>> {
        use retain_lake::deltalake::arrow::array::{Array as _, AsArray};
        use retain_lake::deltalake::datafusion::prelude::SessionContext;
        records.refresh().await?;
        let ctx = SessionContext::new();
        ctx.register_table("records", records.delta_table().table_provider().await?)?;
        let batches = ctx
            .sql("SELECT arrow_cast(record_key, 'Utf8') FROM records")
            .await?
            .collect()
            .await?;
        Ok(batches
            .iter()
            .flat_map(|b| {
                let k = b.column(0).as_string::<i32>().clone();
                (0..k.len()).map(move |i| k.value(i).to_owned())
            })
            .collect())
    }
}
