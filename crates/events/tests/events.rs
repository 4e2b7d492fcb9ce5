//! Event clocks and policy changes on a `records` table landed the way the scheduler lands it
//! (classify, schedule with facts and events, record provenance, `RecordsTable::land`).

use std::collections::HashMap;

use anyhow::Result;
use chrono::{NaiveDate, Utc};
use futures::StreamExt as _;
use retain_codec::{ClassifiedRecord, Lineage};
use retain_events::change::{LOCK_APP_ID, PolicyChange, lock, lock_state};
use retain_events::rows::{RECOMPUTE_COLUMNS, append_entries, row_views};
use retain_events::{AppliedEvent, Error, recompute, scan_records, schedule};
use retain_generate::Generator;
use retain_lake::{AuditTable, RecordBatchBuilder, RecordsTable};
use retain_model::Facts;
use retain_policy::Policy;

const N: i64 = 1_500;

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()
}

/// Lands `n` generated records as the scheduler does, under `policy`.
async fn land(location: &str, policy: &Policy, n: i64) -> Result<RecordsTable> {
    let mut table = RecordsTable::open_or_create(location, HashMap::new()).await?;
    let mut g = Generator::new(7);
    let mut builder = RecordBatchBuilder::new();
    let mut provenance = Vec::new();
    for offset in 0..n {
        let generated = g.next_record();
        let mut c = policy.classify(&generated.message);
        if let Some(forced) = &generated.facts.category {
            c.category = forced.clone();
            c.rule = None;
            c.confidence = 1.0;
            c.forced = true;
            c.also_matched.clear();
        }
        let created = generated.message.created_date();
        let record = ClassifiedRecord::new(
            generated.message,
            c,
            "test",
            Lineage {
                topic: "retain.mail".into(),
                partition: 0,
                offset,
            },
        );
        let applied: Vec<AppliedEvent> = generated
            .events
            .iter()
            .map(AppliedEvent::from_fact_event)
            .collect();
        let (j, h) = policy.effective(&generated.facts);
        let facts = Facts {
            jurisdiction: j.clone(),
            record_holder: h.clone(),
            ..generated.facts.clone()
        };
        let s = schedule(
            policy,
            &record.classification.category,
            created,
            &facts,
            &applied,
        );
        builder.push_record(&record, &s.decision, j, h)?;
        provenance.push(s.provenance);
    }
    let batch = append_entries(&builder.finish(Utc::now())?, &provenance)?;
    table.land(batch, "retain-lineage", &[(0, n)]).await?;
    Ok(table)
}

/// A policy that keeps transient mail longer (2 years, was 1) and administrative mail less
/// long (1 year, was 3).
fn changed_policy() -> Policy {
    Policy::from_sources(&[(
        "changed.toml",
        r#"
[policy]
name = "changed"

[[obligation]]
id = "org.administrative"
citation = "Records schedule RS-2: administrative mail kept 1 year"
source-quality = "organisational policy"
categories = ["administrative"]
jurisdictions = ["US"]
retain = { years = 1, from = "created" }

[[obligation]]
id = "org.transient"
citation = "Records schedule RS-2: transient mail kept 2 years"
source-quality = "organisational policy"
categories = ["transient"]
jurisdictions = ["US"]
retain = { years = 2, from = "created" }
"#,
    )])
    .unwrap()
}

/// Only later: transient mail kept 2 years.
fn later_only_policy() -> Policy {
    Policy::from_sources(&[(
        "later.toml",
        r#"
[[obligation]]
id = "org.transient"
citation = "Records schedule RS-3: transient mail kept 2 years"
source-quality = "organisational policy"
categories = ["transient"]
jurisdictions = ["US"]
retain = { years = 2, from = "created" }
"#,
    )])
    .unwrap()
}

async fn rows(table: &RecordsTable) -> Result<Vec<retain_events::rows::RowView>> {
    let mut out = Vec::new();
    let mut s = scan_records(table.delta_table(), &RECOMPUTE_COLUMNS, None).await?;
    while let Some(b) = s.next().await {
        out.extend(row_views(&b?)?);
    }
    Ok(out)
}

#[tokio::test]
async fn recomputing_under_the_landing_policy_and_events_reproduces_every_row() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let policy = Policy::builtin()?;
    let table = land(dir.path().join("records").to_str().unwrap(), &policy, N).await?;
    let rows = rows(&table).await?;
    assert_eq!(rows.len() as i64, N);
    let with_events = rows
        .iter()
        .filter(|r| r.stored.entries.iter().any(|e| e.status == "event"))
        .count();
    assert!(
        with_events > 0,
        "the generator's events are recorded on rows"
    );
    for row in &rows {
        let r = recompute(&policy, row, &[]);
        assert!(
            !r.changed,
            "record {} recomputes differently",
            row.record_key
        );
        assert_eq!(r.decision, row.stored);
    }
    Ok(())
}

#[tokio::test]
async fn diff_counts_exactly_what_apply_changes_and_apply_is_idempotent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let builtin = Policy::builtin()?;
    let mut table = land(dir.path().join("records").to_str().unwrap(), &builtin, N).await?;
    let mut audit =
        AuditTable::open_or_create(dir.path().join("audit").to_str().unwrap(), HashMap::new())
            .await?;
    let new = changed_policy();
    let change = PolicyChange::new(&new, today());

    // The same policy changes nothing.
    let same = PolicyChange::new(&builtin, today())
        .diff(&mut table, None, "rm", Utc::now())
        .await?;
    assert_eq!((same.records, same.total.changed()), (N as u64, 0));

    let before = rows(&table).await?;
    let diff = change
        .diff(&mut table, Some(&mut audit), "records.manager", Utc::now())
        .await?;
    assert_eq!(diff.records, N as u64);
    assert!(diff.total.later > 0 && diff.total.earlier > 0, "{diff:?}");
    assert_eq!(diff.by_category["transient"].earlier, 0);
    assert_eq!(diff.by_category["administrative"].later, 0);
    assert!(
        diff.total.due_now > 0 && diff.earliest_newly_due.is_some(),
        "{diff:?}"
    );
    assert!(diff.samples_earlier.iter().all(|k| k.len() == 32));
    // Nothing written to records by the what-if.
    let version = table.version();

    let applied = change
        .apply(
            &mut table,
            Some(&mut audit),
            "records.manager",
            "compliance.officer",
            Utc::now(),
        )
        .await?;
    assert_eq!(applied.rows_changed, diff.total.changed());
    assert_eq!(applied.report.total, diff.total);
    assert_eq!(applied.version, Some(version + 1), "one commit");

    // The table now says what the what-if said, row by row.
    let after = rows(&table).await?;
    assert_eq!(after.len(), before.len());
    let by_key: HashMap<&str, &retain_events::rows::RowView> =
        before.iter().map(|r| (r.record_key.as_str(), r)).collect();
    let mut changed = 0;
    for row in &after {
        let old = by_key[row.record_key.as_str()];
        let expected = recompute(&new, old, &[]);
        if expected.changed {
            changed += 1;
            assert_eq!(row.stored, expected.decision, "record {}", row.record_key);
            assert_eq!(row.stored.policy_version, new.version());
        } else {
            assert_eq!(row.stored, old.stored);
        }
    }
    assert_eq!(changed, applied.rows_changed);

    // A re-run (e.g. after a crash) finds nothing to do and commits nothing.
    let again = change
        .apply(
            &mut table,
            Some(&mut audit),
            "records.manager",
            "compliance.officer",
            Utc::now(),
        )
        .await?;
    assert_eq!((again.rows_changed, again.version), (0, None));
    assert_eq!(table.version(), version + 1);
    let entries = audit.entries().await?;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.action == "policy_applied")
            .count(),
        3,
        "the what-if and both applies are audited"
    );
    assert!(audit.verify().await?.is_intact());
    Ok(())
}

#[tokio::test]
async fn the_lock_refuses_earlier_dates_and_cannot_be_lifted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let builtin = Policy::builtin()?;
    let mut table = land(dir.path().join("records").to_str().unwrap(), &builtin, 400).await?;
    assert_eq!(lock_state(&mut table).await?, None);
    let at = lock(&mut table, None, "compliance.officer", Utc::now()).await?;
    assert_eq!(lock_state(&mut table).await?, Some(1));
    // Locking again is harmless.
    assert_eq!(
        lock(&mut table, None, "someone.else", Utc::now()).await?,
        at
    );

    let version = table.version();
    let new = changed_policy();
    let err = PolicyChange::new(&new, today())
        .apply(&mut table, None, "rm", "co", Utc::now())
        .await
        .unwrap_err();
    let Error::Locked { count, example, .. } = &err else {
        panic!("expected the lock to refuse: {err}")
    };
    assert!(*count > 0 && example.len() == 32, "{err}");
    assert!(err.is_refusal());
    assert_eq!(table.version(), version, "nothing was written");

    // Moving dates later only is allowed.
    let later = later_only_policy();
    let applied = PolicyChange::new(&later, today())
        .apply(&mut table, None, "rm", "co", Utc::now())
        .await?;
    assert!(applied.rows_changed > 0);
    assert_eq!(applied.report.total.earlier, 0);

    // There is no unlock; even writing the lock's txn lower through the table API keeps it on.
    table.fence(LOCK_APP_ID, 0).await?;
    assert_eq!(lock_state(&mut table).await?, Some(1));
    let reopened = &mut RecordsTable::open_or_create(
        dir.path().join("records").to_str().unwrap(),
        HashMap::new(),
    )
    .await?;
    assert_eq!(lock_state(reopened).await?, Some(1));
    Ok(())
}

/// The scan filter built from a batch of events keeps every row an event of the batch matches
/// (it may keep more: `matches` decides), for events keyed by every kind of key, with
/// custodians in another case, several keys at once and keys matching nothing.
#[tokio::test]
async fn the_key_filter_keeps_every_row_an_event_matches() -> Result<()> {
    use retain_codec::{EventKeys, EventType, RetentionEventMessage};
    use retain_events::StoredEvent;
    use retain_events::events_table::{key_filter, match_rows};
    let dir = tempfile::tempdir()?;
    let policy = Policy::builtin()?;
    let table = land(dir.path().to_str().unwrap(), &policy, N).await?;
    let mut wanted: Vec<&str> = RECOMPUTE_COLUMNS.to_vec();
    wanted.extend(retain_events::rows::MATCH_COLUMNS);
    let scan = |filter| {
        let t = table.delta_table();
        let wanted = wanted.clone();
        async move {
            let mut keys = Vec::new();
            let mut s = scan_records(t, &wanted, filter).await?;
            while let Some(b) = s.next().await {
                let b = b?;
                let views = row_views(&b)?;
                for (v, m) in views.into_iter().zip(match_rows(&b)?) {
                    keys.push((v.record_key, m));
                }
            }
            anyhow::Ok(keys)
        }
    };
    let all = scan(None).await?;
    // Events drawn from the rows' own keys: every 97th row gives one.
    let mut events = Vec::new();
    for (i, (_, m)) in all.iter().enumerate().step_by(97) {
        let mut keys = EventKeys {
            tenant: Some(m.tenant.clone()),
            ..EventKeys::default()
        };
        match i % 5 {
            0 => keys.message_id = Some(m.message_id.clone()),
            1 => match &m.thread_id {
                Some(t) => keys.thread_id = Some(t.clone()),
                None => keys.message_id = Some(m.message_id.clone()),
            },
            2 => match m.patient_refs.first() {
                Some(p) => keys.patient_mrn = Some(p.clone()),
                None => keys.custodian = Some(m.mailbox.to_uppercase()),
            },
            3 => keys.custodian = Some(m.custodian.to_uppercase()),
            _ => {
                // Two keys: an MRN that is not the row's own narrows it to nothing.
                keys.custodian = Some(m.mailbox.clone());
                keys.patient_mrn = Some("MRN-NOBODY".into());
            }
        }
        events.push(StoredEvent {
            message: RetentionEventMessage {
                event_id: format!("ev-{i}"),
                kind: EventType::Clock(retain_model::EventKind::Encounter),
                date: today(),
                action: None,
                keys,
                recorded_at: Utc::now(),
                source: "test".into(),
            },
            stored_at: Utc::now(),
            partition: -1,
            offset: -1,
        });
    }
    let matched = |rows: &[(String, retain_events::events_table::MatchRow)]| {
        rows.iter()
            .filter(|(_, m)| {
                events
                    .iter()
                    .any(|e| retain_events::matches(&e.message.keys, m))
            })
            .map(|(k, _)| k.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let expected = matched(&all);
    assert!(expected.len() > events.len() / 2, "{} rows", expected.len());
    let filter = key_filter(&events).expect("no document or BA ids");
    let kept = scan(Some(filter)).await?;
    assert_eq!(matched(&kept), expected);
    assert!(
        kept.len() < all.len() / 2,
        "kept {} of {}",
        kept.len(),
        all.len()
    );
    // A document id can only be matched by reading every row.
    let mut doc = events[0].clone();
    doc.message.keys = EventKeys {
        document_id: Some("POL-1".into()),
        ..EventKeys::default()
    };
    assert!(key_filter(&[doc]).is_none());
    Ok(())
}
