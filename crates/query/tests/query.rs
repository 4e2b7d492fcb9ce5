//! The SQL catalog against a real lake in a temporary folder: `records` landed by the lake's
//! batch builder, holds placed and released and a disposal executed through `retain-govern`,
//! then every table, view and function checked against what govern itself says.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::Result;
use chrono::{Days, NaiveDate, TimeZone, Utc};
use retain_codec::{ClassifiedRecord, Lineage};
use retain_govern::{
    Disposal, DisposalsTable, HoldScope, HoldSet, HoldsTable, ManifestsTable, NewHold, Release,
    cutoff,
};
use retain_lake::deltalake::arrow::array::{Array, AsArray, RecordBatch};
use retain_lake::deltalake::arrow::compute::{cast, concat_batches};
use retain_lake::deltalake::arrow::datatypes::{Float64Type, Int64Type};
use retain_lake::{RecordBatchBuilder, RecordsTable, records_schema};
use retain_model::{
    Category, Classification, MailMessage, PhiIndicators, RetentionDecision, RetentionStatus,
};
use retain_query::{Catalog, CatalogOptions, Error, TABLES, VIEWS};

const TODAY: (i32, u32, u32) = (2026, 12, 4);

fn day(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn today() -> NaiveDate {
    day(TODAY.0, TODAY.1, TODAY.2)
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
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// `n` records: four mailboxes, four categories, some without subject or date, a tenth
/// indefinite, a tenth pending, the rest scheduled from 400 days ago to 2 years ahead.
fn records_batch(n: usize) -> Result<RecordBatch> {
    let mut rng = Rng(11);
    let mut b = RecordBatchBuilder::new();
    for id in 0..n {
        let mailbox = rng.pick(&["alice", "bob", "carol", "dave"]);
        let mut m = MailMessage::new(format!("m{id}@example.org"), mailbox);
        m.subject = rng
            .pick(&[Some("Raptor deal"), Some("lunch"), None])
            .map(str::to_owned);
        m.sent_at = (rng.below(10) > 0).then(|| {
            let d = day(2001, 1, 1) + Days::new(rng.below(3 * 365) as u64);
            Utc.from_utc_datetime(&d.and_hms_opt(12, 0, 0).unwrap())
        });
        let category = rng.pick(&["clinical", "administrative", "transient", "training"]);
        let classification = Classification {
            category: Category::new(category)?,
            rule: None,
            confidence: 1.0,
            forced: false,
            phi: PhiIndicators::default(),
            patient_refs: Vec::new(),
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
                offset: id as i64,
            },
        );
        let (retain_until, status) = match rng.below(10) {
            0 => (None, RetentionStatus::Indefinite),
            1 => (None, RetentionStatus::Pending),
            _ => {
                let offset = rng.below(400 + 730) as i64 - 400;
                (
                    Some(today() + chrono::Duration::days(offset)),
                    RetentionStatus::Scheduled,
                )
            }
        };
        let decision = RetentionDecision {
            retain_until,
            status,
            governing: Some(Arc::from(rng.pick(&["hipaa.6y", "state.co.7y"]))),
            waiting_for: if status == RetentionStatus::Pending {
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

fn new_hold(by: &str, scope: HoldScope) -> NewHold {
    NewHold {
        matter: "Doe v. Clinic".into(),
        reason: "complaint served".into(),
        created_by: by.into(),
        scope,
    }
}

/// The lake: 300 records; an active hold on clinical records, an active hold on a keyword
/// (records without a subject are covered: unknown counts), a released hold on bob's mailbox;
/// a disposal executed for real as of today (so `manifests` and `disposals` have rows).
struct Lake {
    dir: tempfile::TempDir,
    records: RecordsTable,
    holds: HoldsTable,
}

impl Lake {
    fn root(&self) -> String {
        self.dir.path().to_str().unwrap().to_owned()
    }

    async fn catalog(&self) -> Result<Catalog> {
        Ok(Catalog::open(
            &self.root(),
            HashMap::new(),
            CatalogOptions {
                today: Some(today()),
                ..CatalogOptions::default()
            },
        )
        .await?)
    }

    /// The records as they are now, in the lake's own Arrow types (one batch).
    async fn records_now(&self, catalog: &Catalog) -> Result<RecordBatch> {
        let batches = catalog.query("SELECT * FROM records").await?;
        conform(&batches)
    }

    /// The holds govern considers active, compiled.
    async fn active(&mut self) -> Result<HoldSet> {
        Ok(self.holds.active().await?.1)
    }
}

/// Batches cast column by column to the `records` schema (DataFusion reads text as views).
fn conform(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let schema = records_schema();
    let parts = batches
        .iter()
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .map(|f| cast(b.column_by_name(f.name()).unwrap(), f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(concat_batches(&schema, &parts)?)
}

fn keys_of(b: &RecordBatch, keep: impl Fn(usize) -> bool) -> BTreeSet<String> {
    let k = b.column_by_name("record_key").unwrap();
    let k = cast(k, &retain_lake::deltalake::arrow::datatypes::DataType::Utf8).unwrap();
    let k = k.as_string::<i32>();
    (0..b.num_rows())
        .filter(|i| keep(*i))
        .map(|i| k.value(i).to_owned())
        .collect()
}

async fn keys(catalog: &Catalog, sql: &str) -> Result<BTreeSet<String>> {
    let batches = catalog.query(sql).await?;
    Ok(batches.iter().flat_map(|b| keys_of(b, |_| true)).collect())
}

async fn count(catalog: &Catalog, sql: &str) -> Result<i64> {
    let batches = catalog.query(sql).await?;
    Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0))
}

async fn lake() -> Result<Lake> {
    let dir = tempfile::tempdir()?;
    let loc = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let mut records = RecordsTable::open_or_create(&loc("records"), HashMap::new()).await?;
    records
        .land(records_batch(300)?, "retain-lineage", &[(0, 300)])
        .await?;
    let mut holds = HoldsTable::open_or_create(&loc("holds"), HashMap::new()).await?;
    let mut manifests = ManifestsTable::open_or_create(&loc("manifests"), HashMap::new()).await?;
    let mut disposals = DisposalsTable::open_or_create(&loc("disposals"), HashMap::new()).await?;
    // A disposal as of today, before any hold: some records are disposed of.
    let mut d = Disposal::new(
        &mut records,
        &mut holds,
        &mut manifests,
        &mut disposals,
        today() - Days::new(100),
    );
    let m = d
        .plan(today(), "records.manager", Utc::now())
        .await?
        .expect("old records are due");
    d.approve(&m.id, "compliance.officer", Utc::now()).await?;
    let mut d = Disposal::new(
        &mut records,
        &mut holds,
        &mut manifests,
        &mut disposals,
        today() - Days::new(100),
    )
    .for_real()
    .with_grace(chrono::Duration::zero());
    d.execute(&m.id, "cron", None, Utc::now()).await?;

    holds
        .create(
            &mut records,
            new_hold(
                "counsel",
                HoldScope {
                    categories: vec!["clinical".into()],
                    ..HoldScope::default()
                },
            ),
            Utc::now(),
        )
        .await?;
    holds
        .create(
            &mut records,
            new_hold(
                "counsel",
                HoldScope {
                    keywords: vec!["raptor".into()],
                    custodians: vec!["carol".into()],
                    ..HoldScope::default()
                },
            ),
            Utc::now(),
        )
        .await?;
    let released = holds
        .create(
            &mut records,
            new_hold(
                "counsel",
                HoldScope {
                    custodians: vec!["bob".into()],
                    ..HoldScope::default()
                },
            ),
            Utc::now(),
        )
        .await?;
    holds
        .release(
            &released.id,
            Release {
                released_by: "counsel".into(),
                approved_by: "general.counsel".into(),
                justification: "settled".into(),
            },
            Utc::now(),
        )
        .await?;
    Ok(Lake {
        dir,
        records,
        holds,
    })
}

#[tokio::test]
async fn tables_and_views_are_registered_and_counts_match() -> Result<()> {
    let mut lake = lake().await?;
    let catalog = lake.catalog().await?;
    let listed = keys_free_names(&catalog).await?;
    for name in TABLES.iter().chain(VIEWS.iter()) {
        assert!(listed.contains(*name), "{name} is listed: {listed:?}");
    }
    for t in catalog.tables() {
        // govern writes no audit entries itself; the CLI does.
        assert_eq!(t.version.is_some(), t.name != "audit", "{}", t.name);
    }
    let version = lake.records.refresh().await?;
    assert_eq!(catalog.table("records").unwrap().version, Some(version));

    let disposed = count(&catalog, "SELECT count(*) FROM disposals").await?;
    assert!(disposed > 0);
    assert_eq!(
        count(&catalog, "SELECT count(*) FROM records").await? + disposed,
        300
    );
    // No disposed key is left in records.
    let left = keys(&catalog, "SELECT record_key FROM records").await?;
    let gone = keys(&catalog, "SELECT record_key FROM disposals").await?;
    assert!(left.is_disjoint(&gone));
    // One manifest, three revisions (planned, approved, executed).
    assert_eq!(count(&catalog, "SELECT count(*) FROM manifests").await?, 3);
    // Four holds rows (three created, one released); the catalog writes nothing itself.
    assert_eq!(count(&catalog, "SELECT count(*) FROM holds").await?, 4);
    assert!(count(&catalog, "SELECT count(*) FROM audit").await? == 0);
    Ok(())
}

async fn keys_free_names(catalog: &Catalog) -> Result<BTreeSet<String>> {
    let batches = catalog
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        .await?;
    let mut out = BTreeSet::new();
    for b in &batches {
        let c = cast(
            b.column(0),
            &retain_lake::deltalake::arrow::datatypes::DataType::Utf8,
        )?;
        let c = c.as_string::<i32>();
        out.extend((0..b.num_rows()).map(|i| c.value(i).to_owned()));
    }
    Ok(out)
}

#[tokio::test]
async fn active_holds_exclude_released_ones_and_match_govern() -> Result<()> {
    let mut lake = lake().await?;
    let catalog = lake.catalog().await?;
    let (govern_active, _) = lake.holds.active().await?;
    let ids: BTreeSet<String> = govern_active.iter().map(|h| h.id.clone()).collect();
    let batches = catalog
        .query("SELECT hold_id, status, revision FROM active_holds")
        .await?;
    let mut seen = BTreeSet::new();
    for b in &batches {
        let id = cast(
            b.column(0),
            &retain_lake::deltalake::arrow::datatypes::DataType::Utf8,
        )?;
        let id = id.as_string::<i32>();
        for i in 0..b.num_rows() {
            seen.insert(id.value(i).to_owned());
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(seen.len(), 2);
    assert_eq!(
        count(&catalog, "SELECT count(*) FROM current_holds").await?,
        3
    );
    assert_eq!(
        count(
            &catalog,
            "SELECT count(*) FROM current_holds WHERE status = 'released' AND revision = 1"
        )
        .await?,
        1
    );
    let in_catalog: BTreeSet<String> = catalog
        .active_holds()
        .iter()
        .map(|h| h.id.clone())
        .collect();
    assert_eq!(in_catalog, ids);
    Ok(())
}

#[tokio::test]
async fn records_on_hold_is_what_govern_says_holds_cover() -> Result<()> {
    let mut lake = lake().await?;
    let catalog = lake.catalog().await?;
    let set = lake.active().await?;
    let records = lake.records_now(&catalog).await?;
    let covering = set.covering(&records)?;
    let expected = keys_of(&records, |i| !covering[i].is_empty());
    assert!(!expected.is_empty() && expected.len() < records.num_rows());

    assert_eq!(
        keys(&catalog, "SELECT record_key FROM records_on_hold").await?,
        expected
    );
    assert_eq!(
        keys(&catalog, "SELECT record_key FROM records WHERE is_held()").await?,
        expected
    );
    assert_eq!(
        keys(&catalog, "SELECT DISTINCT record_key FROM hold_coverage").await?,
        expected
    );
    // is_held() binds to the records columns of an alias, and works in a projection.
    assert_eq!(
        count(
            &catalog,
            "SELECT count(*) FROM records r JOIN disposals d ON r.record_key = d.record_key WHERE is_held()"
        )
        .await?,
        0
    );
    assert_eq!(
        count(
            &catalog,
            "SELECT sum(CASE WHEN is_held() THEN 1 ELSE 0 END) FROM records"
        )
        .await?,
        expected.len() as i64
    );
    // Per hold: hold_coverage says which hold covers what, as HoldSet::covering does.
    for (h, hold) in set.holds().iter().enumerate() {
        let mine = keys_of(&records, |i| covering[i].contains(&h));
        let sql = format!(
            "SELECT record_key FROM hold_coverage WHERE hold_id = '{}'",
            hold.id
        );
        assert_eq!(keys(&catalog, &sql).await?, mine, "hold {}", hold.id);
    }
    Ok(())
}

#[tokio::test]
async fn disposal_candidates_are_what_govern_finds_due() -> Result<()> {
    let mut lake = lake().await?;
    let catalog = lake.catalog().await?;
    let set = lake.active().await?;
    let records = lake.records_now(&catalog).await?;
    for (as_of, sql) in [
        (
            day(2030, 1, 1),
            "SELECT record_key FROM disposal_candidates('2030-01-01')",
        ),
        (
            day(2026, 12, 31),
            "SELECT record_key FROM disposal_candidates(DATE '2026-12-31')",
        ),
        (today(), "SELECT record_key FROM disposal_candidates()"),
        (
            day(2026, 6, 1),
            "SELECT record_key FROM disposal_candidates('2026-06-01')",
        ),
    ] {
        let cut = cutoff(as_of, today());
        let due = set.due(&records, cut)?;
        let expected = keys_of(&records, |i| due.value(i));
        assert_eq!(keys(&catalog, sql).await?, expected, "{sql}");
    }
    // After the first disposal (as of 100 days ago) some records have come due since.
    assert!(
        count(
            &catalog,
            "SELECT count(*) FROM disposal_candidates('2030-01-01')"
        )
        .await?
            > 0
    );
    // The cut-off is never after today: as of 2030 is as of today.
    assert_eq!(
        keys(
            &catalog,
            "SELECT record_key FROM disposal_candidates('2030-01-01')"
        )
        .await?,
        keys(&catalog, "SELECT record_key FROM disposal_candidates()").await?
    );
    let e = catalog
        .query("SELECT * FROM disposal_candidates('soon')")
        .await
        .unwrap_err();
    assert!(e.is_bad_input() && e.to_string().contains("soon"), "{e}");
    Ok(())
}

#[tokio::test]
async fn functions_and_upcoming_disposals_agree_with_the_records() -> Result<()> {
    let mut lake = lake().await?;
    let catalog = lake.catalog().await?;
    let batches = catalog
        .query(
            "SELECT years_until_disposal(DATE '2036-12-04'), \
             years_until_disposal('2027-12-04', '2026-12-04'), \
             years_until_disposal(NULL), \
             years_until_disposal(DATE '2026-12-03')",
        )
        .await?;
    let b = &batches[0];
    let v = |i: usize| b.column(i).as_primitive::<Float64Type>();
    assert!((v(0).value(0) - 10.0).abs() < 0.01, "{}", v(0).value(0));
    assert!((v(1).value(0) - 1.0).abs() < 0.01);
    assert!(v(2).is_null(0));
    assert!(v(3).value(0) < 0.0);
    // Indefinite and pending records have no date, so no years.
    assert_eq!(
        count(
            &catalog,
            "SELECT count(*) FROM records WHERE retention_status <> 'scheduled' AND years_until_disposal(retain_until) IS NOT NULL"
        )
        .await?,
        0
    );

    // upcoming_disposals: scheduled records dated after today, within 365 days, by month.
    let records = lake.records_now(&catalog).await?;
    let set = lake.active().await?;
    let covering = set.covering(&records)?;
    let until = records
        .column_by_name("retain_until")
        .unwrap()
        .as_primitive::<retain_lake::deltalake::arrow::datatypes::Date32Type>()
        .clone();
    let status = records.column_by_name("retention_status").unwrap().clone();
    let status = status.as_string::<i32>();
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let horizon = today() + Days::new(365);
    for (i, holds) in covering.iter().enumerate() {
        let Some(d) = (!until.is_null(i)).then(|| until.value_as_date(i).unwrap()) else {
            continue;
        };
        if status.value(i) == "scheduled" && d > today() && d <= horizon {
            let e = expected
                .entry(d.format("%Y-%m-01").to_string())
                .or_default();
            e.0 += 1;
            e.1 += i64::from(!holds.is_empty());
        }
    }
    let batches = catalog
        .query(
            "SELECT CAST(month AS VARCHAR), sum(records), sum(held) FROM upcoming_disposals GROUP BY 1",
        )
        .await?;
    let mut got = BTreeMap::new();
    for b in &batches {
        let m = cast(
            b.column(0),
            &retain_lake::deltalake::arrow::datatypes::DataType::Utf8,
        )?;
        let m = m.as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        let h = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.insert(m.value(i).to_owned(), (n.value(i), h.value(i)));
        }
    }
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
    Ok(())
}

#[tokio::test]
async fn the_catalog_is_read_only_and_names_bad_columns() -> Result<()> {
    let lake = lake().await?;
    let catalog = lake.catalog().await?;
    for sql in [
        "CREATE TABLE x AS SELECT 1",
        "CREATE VIEW v AS SELECT * FROM records",
        "DROP TABLE records",
        "INSERT INTO disposals SELECT * FROM disposals",
        "DELETE FROM records",
        "COPY records TO '/tmp/out.csv'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let e = catalog.plan(sql).await.unwrap_err();
        assert!(e.is_bad_input(), "{sql}: {e}");
        let msg = e.to_string();
        assert!(
            matches!(e, Error::ReadOnly { .. })
                || msg.contains("read-only")
                || matches!(e, Error::Plan { .. }),
            "{sql}: {msg}"
        );
        if !sql.starts_with("DELETE") && !sql.starts_with("DROP") {
            assert!(msg.contains("read-only"), "{sql}: {msg}");
        }
    }
    // Nothing was created or changed.
    assert_eq!(
        count(&catalog, "SELECT count(*) FROM disposals").await?,
        count(&lake.catalog().await?, "SELECT count(*) FROM disposals").await?
    );
    // A misspelt column is named; a file of statements is planned whole before anything runs.
    let e = catalog
        .plan("SELECT 1; SELECT categry FROM records")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Plan { statement: 2, .. }), "{e}");
    assert!(e.is_bad_input() && e.to_string().contains("categry"), "{e}");
    let e = catalog.plan("SELEC 1").await.unwrap_err();
    assert!(matches!(e, Error::Parse { .. }) && e.is_bad_input(), "{e}");
    // is_held() outside records is refused before running.
    let e = catalog
        .plan("SELECT is_held() FROM disposals")
        .await
        .unwrap_err();
    assert!(e.is_bad_input() && e.to_string().contains("is_held"), "{e}");
    // Two statements: both planned, hashed, and their tables named.
    let s = catalog
        .plan("SELECT count(*) FROM records; SELECT * FROM records_on_hold JOIN active_holds ON true LIMIT 1")
        .await?;
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].tables, ["records"]);
    // Views are read through to the lake tables they are built on.
    assert_eq!(s[1].tables, ["holds", "records"]);
    assert_eq!(s[1].named, ["active_holds", "records_on_hold"]);
    assert_eq!(s[0].sha256, retain_query::sha256_hex(&s[0].text));
    let s = catalog
        .plan("SELECT table_name FROM information_schema.tables")
        .await?;
    assert_eq!(s[0].tables, ["information_schema.tables"]);
    Ok(())
}

#[tokio::test]
async fn an_empty_lake_has_every_table_empty_and_the_memory_limit_holds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::open(
        dir.path().to_str().unwrap(),
        HashMap::new(),
        CatalogOptions {
            memory_limit: 1 << 20,
            ..CatalogOptions::default()
        },
    )
    .await?;
    for t in catalog.tables() {
        assert_eq!(t.version, None, "{}", t.name);
        let n = count(&catalog, &format!("SELECT count(*) FROM {}", t.name)).await?;
        assert_eq!(n, 0);
    }
    for v in [
        "active_holds",
        "records_on_hold",
        "hold_coverage",
        "upcoming_disposals",
    ] {
        assert_eq!(
            count(&catalog, &format!("SELECT count(*) FROM {v}")).await?,
            0
        );
    }
    let created: Vec<_> = walk(dir.path());
    assert!(created.is_empty(), "nothing was created: {created:?}");
    // A sort far beyond 1 MiB either spills or fails with resources exhausted, never more.
    let r = catalog
        .query("SELECT v FROM generate_series(1, 3000000) AS t(v) ORDER BY v DESC LIMIT 1")
        .await;
    if let Err(e) = r {
        assert!(!e.is_bad_input(), "{e}");
        assert!(e.to_string().to_lowercase().contains("resources"), "{e}");
    }
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
