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
use retain_lake::deltalake::arrow::datatypes::{DataType, Float64Type, Int64Type};
use retain_lake::{RecordBatchBuilder, RecordsTable, records_schema};
use retain_model::{
    Category, Classification, MailMessage, PhiIndicators, RetentionDecision, RetentionStatus,
};
use retain_query::{
    Catalog, CatalogOptions, DICTIONARY_COLUMNS, Error, TABLES, TableScan, VIEW_COLUMNS, VIEWS,
};

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
    records_batch_from(0, n)
}

/// `n` records like [`records_batch`]'s, with ids and offsets from `first`.
fn records_batch_from(first: usize, n: usize) -> Result<RecordBatch> {
    let mut rng = Rng(11 + first as u64);
    let mut b = RecordBatchBuilder::new();
    for id in first..first + n {
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
        // govern writes no audit entries itself (the CLI does); no events stage or dead-letter
        // sink ran: those three are registered empty.
        let absent = ["audit", "events", "dead_letters"].contains(&t.name.as_str());
        assert_eq!(t.version.is_some(), !absent, "{}", t.name);
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
    for empty in ["events", "dead_letters", "ba_manifests"] {
        let n = count(&catalog, &format!("SELECT count(*) FROM {empty}")).await?;
        assert_eq!(n, 0, "{empty}");
    }
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

/// JSON functions and operators read the JSON text columns (here the manifests' content) as
/// serde_json does; a JSON value (`->`) comes out as its JSON text.
#[tokio::test]
async fn json_functions_and_operators_read_manifests_as_serde_json_does() -> Result<()> {
    let lake = lake().await?;
    let catalog = lake.catalog().await?;
    let got = rows(
        &catalog,
        "SELECT content->>'id', content->'records_version', \
         CAST(json_length(content, 'entries') AS BIGINT), content->'by_category'->>'clinical', \
         json_get_str(content, 'planned_by'), json_get_int(content, 'records_version'), \
         json_contains(content, 'query'), json_contains(content, 'no_such_key'), \
         content->'holds', content FROM manifests",
    )
    .await?;
    assert_eq!(got.len(), 3, "three manifest revisions: {got:?}");
    for row in &got {
        let fields: Vec<&str> = row.splitn(10, '|').collect();
        let v: serde_json::Value = serde_json::from_str(fields[9])?;
        let text = |x: &serde_json::Value| match x {
            serde_json::Value::Null => "NULL".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let expected = [
            text(&v["id"]),
            v["records_version"].to_string(),
            v["entries"].as_array().unwrap().len().to_string(),
            text(&v["by_category"]["clinical"]),
            text(&v["planned_by"]),
            v["records_version"].to_string(),
            "true".to_owned(),
            "false".to_owned(),
            v["holds"].to_string(),
        ];
        assert_eq!(
            fields[..9],
            expected.iter().map(String::as_str).collect::<Vec<_>>()[..],
            "{row}"
        );
        assert!(!v["entries"].as_array().unwrap().is_empty());
    }
    // In a filter.
    assert_eq!(
        count(
            &catalog,
            "SELECT count(*) FROM manifests WHERE content->>'planned_by' = 'records.manager' \
             AND json_get_int(content, 'records_version') >= 0"
        )
        .await?,
        3
    );
    Ok(())
}

/// The rows of a result as text lines, sorted (for comparing two catalogs' answers).
async fn rows(catalog: &Catalog, sql: &str) -> Result<Vec<String>> {
    let batches = catalog.query(sql).await?;
    let mut out = Vec::new();
    for b in &batches {
        let columns = b
            .columns()
            .iter()
            .map(|c| cast(c, &retain_lake::deltalake::arrow::datatypes::DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..b.num_rows() {
            let row: Vec<&str> = columns
                .iter()
                .map(|c| {
                    let c = c.as_string::<i32>();
                    if c.is_null(i) { "NULL" } else { c.value(i) }
                })
                .collect();
            out.push(row.join("|"));
        }
    }
    out.sort();
    Ok(out)
}

async fn catalog_with(lake: &Lake, scan: TableScan) -> Result<Catalog> {
    Ok(Catalog::open(
        &lake.root(),
        HashMap::new(),
        CatalogOptions {
            today: Some(today()),
            scan,
            ..CatalogOptions::default()
        },
    )
    .await?)
}

#[tokio::test]
async fn a_limit_holds_when_the_scan_needs_no_column() -> Result<()> {
    let lake = lake().await?;
    let all = count(&lake.catalog().await?, "SELECT count(*) FROM records").await?;
    assert!(all > 3);
    for scan in [TableScan::Parquet, TableScan::Delta] {
        let catalog = catalog_with(&lake, scan).await?;
        assert_eq!(catalog.table("records").unwrap().scan, scan);
        for (sql, expected) in [
            ("SELECT 1 FROM records LIMIT 3", 3),
            ("SELECT 1 FROM records LIMIT 2 OFFSET 1", 2),
            ("SELECT 1 FROM records LIMIT 1000000", all as usize),
            ("SELECT 1 FROM records", all as usize),
            ("SELECT record_key FROM records LIMIT 3", 3),
            (
                "SELECT 1 FROM records WHERE retain_until IS NOT NULL LIMIT 3",
                3,
            ),
        ] {
            let batches = catalog.query(sql).await?;
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            assert_eq!(n, expected, "{scan:?}: {sql}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_parquet_scan_answers_as_deltalake_does() -> Result<()> {
    let lake = lake().await?;
    let parquet = catalog_with(&lake, TableScan::Parquet).await?;
    let delta = catalog_with(&lake, TableScan::Delta).await?;
    for t in parquet.tables().iter().filter(|t| t.version.is_some()) {
        assert_eq!(t.scan, TableScan::Parquet, "{}", t.name);
    }
    for sql in [
        "SELECT count(*) FROM records",
        "SELECT * FROM records",
        "SELECT retention_status, category, count(*), min(retain_until), max(retain_until), \
         count(subject), count(sent_at) FROM records GROUP BY 1, 2",
        "SELECT record_key FROM records WHERE retain_until <= DATE '2026-12-04'",
        "SELECT record_key FROM records WHERE retain_until > DATE '2027-06-01' OR retain_until IS NULL",
        "SELECT record_key FROM records WHERE retention_status = 'pending'",
        "SELECT count(*) FROM records WHERE retain_until < DATE '1990-01-01'",
        "SELECT record_key FROM records WHERE is_held()",
        "SELECT * FROM disposal_candidates(DATE '2026-12-04')",
        "SELECT * FROM upcoming_disposals",
        "SELECT * FROM hold_coverage",
        "SELECT * FROM holds",
        "SELECT * FROM manifests",
        "SELECT * FROM disposals",
        "SELECT record_key, retain_until FROM records ORDER BY retain_until, record_key LIMIT 7",
        // Text the Parquet scan reads as dictionaries, through functions, filters, groupings,
        // joins and aggregates that keep or drop the encoding.
        "SELECT lower(custodian), upper(mailbox), custodian || '/' || category, \
         length(retention_status), substr(governing, 1, 4) FROM records",
        "SELECT record_key FROM records WHERE lower(custodian) IN ('alice', 'carol') \
         AND category <> 'training' AND retention_status IN ('scheduled', 'pending')",
        "SELECT record_key FROM records WHERE mailbox LIKE 'b%' OR governing IS NULL",
        "SELECT custodian, category, count(*), max(record_key) FROM records \
         GROUP BY custodian, category ORDER BY custodian, category",
        "SELECT category, array_to_string(array_agg(DISTINCT mailbox ORDER BY mailbox), ',') \
         FROM records GROUP BY category",
        "SELECT a.category, b.category, count(*) FROM records a JOIN records b \
         ON a.mailbox = b.mailbox AND a.retain_until = b.retain_until GROUP BY 1, 2",
        "SELECT DISTINCT tenant, direction, jurisdiction, record_holder, policy_version, \
         classifier_policy_version, classifier_version, source_topic, rule FROM records",
        "SELECT custodian FROM records WHERE retention_status = 'scheduled' \
         UNION SELECT category FROM records",
    ] {
        // Results carry text as text whatever the scan read (deltalake's provider reads it
        // as Utf8View, the Parquet scan as Utf8 or dictionaries).
        for b in parquet.query(sql).await? {
            let types = format!("{:?}", b.schema());
            assert!(!types.contains("Dictionary"), "{sql}: {types}");
        }
        assert_eq!(
            rows(&parquet, sql).await?,
            rows(&delta, sql).await?,
            "{sql}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn hold_shaped_filters_keep_unknown_as_covered() -> Result<()> {
    // A hold's coverage is `(condition) IS NOT FALSE`: the catalog splits it into one filter per
    // part, and filters on columns without log statistics run inside the Parquet decoder. The
    // answers must stay those of `coalesce(condition, true)`, unknown parts included.
    let lake = lake().await?;
    let catalog = catalog_with(&lake, TableScan::Parquet).await?;
    let condition = "(lower(custodian) IN ('alice') OR NULLIF(mailbox, mailbox) = 'x') \
                     AND strpos(lower(subject), 'e') > 0";
    for (split, plain) in [
        (
            format!("SELECT record_key FROM records WHERE ({condition}) IS NOT FALSE"),
            format!("SELECT record_key FROM records WHERE coalesce({condition}, true)"),
        ),
        (
            format!("SELECT record_key FROM records WHERE NOT (({condition}) IS NOT FALSE)"),
            format!("SELECT record_key FROM records WHERE NOT coalesce({condition}, true)"),
        ),
    ] {
        let got = rows(&catalog, &split).await?;
        assert!(!got.is_empty(), "{split}");
        assert_eq!(got, rows(&catalog, &plain).await?, "{split}");
    }
    Ok(())
}

#[tokio::test]
async fn the_parquet_scan_reads_low_cardinality_text_as_dictionaries() -> Result<()> {
    let lake = lake().await?;
    assert_dictionaries(&catalog_with(&lake, TableScan::Parquet).await?).await
}

#[tokio::test]
async fn the_parquet_scan_reads_rewritten_files_as_it_reads_landed_ones() -> Result<()> {
    let mut lake = lake().await?;
    let queries = [
        "SELECT * FROM records",
        "SELECT custodian, category, count(*) FROM records GROUP BY 1, 2",
        "SELECT record_key FROM records WHERE lower(mailbox) = 'bob' AND retention_status = 'scheduled'",
    ];
    let catalog = lake.catalog().await?;
    let mut before = Vec::new();
    for sql in queries {
        before.push(rows(&catalog, sql).await?);
    }
    // `retain lake optimize --cluster` rewrites every file (DataFusion's writer: text as views
    // in the files' embedded Arrow schema, nullable columns).
    let optimized = lake.records.optimize(32 << 20, true).await?;
    assert!(optimized.files_added > 0);
    let catalog = lake.catalog().await?;
    assert_eq!(catalog.table("records").unwrap().scan, TableScan::Parquet);
    for (sql, before) in queries.into_iter().zip(before) {
        assert_eq!(rows(&catalog, sql).await?, before, "{sql}");
    }
    assert_dictionaries(&catalog).await
}

/// The catalog's scan of `records` yields [`DICTIONARY_COLUMNS`] as dictionaries and
/// [`VIEW_COLUMNS`] as views, and its results yield them as text.
async fn assert_dictionaries(catalog: &Catalog) -> Result<()> {
    let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let listed = DICTIONARY_COLUMNS.join(", ");
    // What the scan produces, before the catalog's plans cast results back to text.
    let scanned = catalog
        .session()
        .sql(&format!(
            "SELECT {listed}, subject, record_key FROM records"
        ))
        .await?
        .collect()
        .await?;
    assert!(!scanned.is_empty());
    for b in &scanned {
        for name in DICTIONARY_COLUMNS {
            let column = b.column_by_name(name).unwrap();
            assert_eq!(column.data_type(), &dictionary, "{name}");
            // One dictionary for the batch, not one entry per row.
            let values = column.as_any_dictionary().values().len();
            assert!(values < b.num_rows().max(5), "{name}: {values} values");
        }
        for name in VIEW_COLUMNS {
            let column = b.column_by_name(name).unwrap();
            assert_eq!(column.data_type(), &DataType::Utf8View, "{name}");
        }
        assert_eq!(
            b.column_by_name("record_key").unwrap().data_type(),
            &DataType::Utf8
        );
    }
    // The table shows them as dictionaries (DESCRIBE, information_schema) ...
    let shown = catalog
        .query(
            "SELECT data_type FROM information_schema.columns \
             WHERE table_name = 'records' AND column_name = 'custodian'",
        )
        .await?;
    assert_eq!(
        shown[0].column(0).as_string::<i32>().value(0),
        "Dictionary(Int32, Utf8)"
    );
    // ... but every result the catalog returns has them as plain text, nested ones included.
    for b in catalog
        .query(&format!(
            "SELECT {listed}, subject, array_agg(category) OVER () AS categories, \
             named_struct('c', custodian) AS s FROM records"
        ))
        .await?
    {
        for name in DICTIONARY_COLUMNS.iter().chain(&VIEW_COLUMNS) {
            assert_eq!(b.column_by_name(name).unwrap().data_type(), &DataType::Utf8);
        }
        let list = b.column_by_name("categories").unwrap().data_type().clone();
        let DataType::List(element) = list else {
            panic!("categories is {list}")
        };
        assert_eq!(element.data_type(), &DataType::Utf8);
        let s = b.column_by_name("s").unwrap().data_type().clone();
        let DataType::Struct(fields) = s else {
            panic!("s is {s}")
        };
        assert_eq!(fields[0].data_type(), &DataType::Utf8);
    }
    Ok(())
}

#[tokio::test]
async fn the_catalog_reads_the_version_it_opened() -> Result<()> {
    let mut lake = lake().await?;
    let catalog = lake.catalog().await?;
    let opened = catalog.table("records").unwrap().version;
    let before = count(&catalog, "SELECT count(*) FROM records").await?;
    let keys_before = keys(&catalog, "SELECT record_key FROM records").await?;
    // More records land after the catalog opened (new ids, offsets beyond the first 300).
    let landed = lake
        .records
        .land(
            records_batch_from(1000, 50)?,
            "retain-lineage",
            &[(0, 1050)],
        )
        .await?;
    assert_eq!(landed.rows_landed, 50);
    assert_eq!(catalog.table("records").unwrap().version, opened);
    assert_eq!(
        count(&catalog, "SELECT count(*) FROM records").await?,
        before
    );
    assert_eq!(
        keys(&catalog, "SELECT record_key FROM records").await?,
        keys_before
    );
    let reopened = lake.catalog().await?;
    assert_eq!(
        count(&reopened, "SELECT count(*) FROM records").await?,
        before + 50
    );
    Ok(())
}

#[tokio::test]
async fn a_table_with_a_reader_feature_the_scan_lacks_is_read_through_deltalake() -> Result<()> {
    let mut lake = lake().await?;
    let expected = count(&lake.catalog().await?, "SELECT count(*) FROM records").await?;
    // A protocol upgrade to deletion vectors (no file has one yet): the Parquet scan must not
    // be trusted with the table any more.
    let version = lake.records.refresh().await? + 1;
    let log = lake.dir.path().join("records/_delta_log");
    std::fs::write(
        log.join(format!("{version:020}.json")),
        "{\"protocol\":{\"minReaderVersion\":3,\"minWriterVersion\":7,\
         \"readerFeatures\":[\"deletionVectors\"],\"writerFeatures\":[\"deletionVectors\"]}}\n",
    )?;
    let catalog = lake.catalog().await?;
    let records = catalog.table("records").unwrap();
    assert_eq!(records.version, Some(version));
    assert_eq!(records.scan, TableScan::Delta);
    assert_eq!(catalog.table("holds").unwrap().scan, TableScan::Parquet);
    assert_eq!(
        count(&catalog, "SELECT count(*) FROM records").await?,
        expected
    );
    assert_eq!(
        catalog.query("SELECT 1 FROM records LIMIT 3").await?[0].num_rows(),
        3
    );
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

/// The standard reports on a fixed, seeded lake, rendered and compared with the golden files
/// under `tests/golden/` (`RETAIN_BLESS=1` rewrites them). Every timestamp the reports can
/// show is fixed; hold and manifest ids end in random hex, replaced by their order of creation.
mod reports {
    use std::path::PathBuf;

    use chrono::DateTime;
    use retain_lake::{AuditAction, AuditEntry, AuditTable};
    use retain_query::render;
    use retain_query::reports::{Report, ReportOutput, run_report};

    use super::*;

    /// A moment on a day, UTC.
    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.from_utc_datetime(&day(y, m, d).and_hms_opt(h, 0, 0).unwrap())
    }

    /// 240 records: six mailboxes, five categories (one `unclassified`), three jurisdictions
    /// and none; scheduled dates from 2026-01 to 2029-06; a few indefinite and pending.
    fn seeded_records() -> Result<RecordBatch> {
        let mut rng = Rng(20261204);
        let mut b = RecordBatchBuilder::new();
        for id in 0..240 {
            let mailbox = rng.pick(&["alice", "bob", "carol", "dave", "erin", "frank"]);
            let mut m = MailMessage::new(format!("r{id}@example.org"), mailbox);
            m.subject = rng
                .pick(&[Some("Raptor deal"), Some("lunch"), Some("rounds"), None])
                .map(str::to_owned);
            m.size_bytes = 1000 + rng.below(9000) as u64;
            m.sent_at = (rng.below(12) > 0).then(|| {
                let d = day(2019, 1, 1) + Days::new(rng.below(7 * 365) as u64);
                Utc.from_utc_datetime(&d.and_hms_opt(9, 30, 0).unwrap())
            });
            let category = rng.pick(&[
                "clinical",
                "clinical",
                "administrative",
                "transient",
                "training_record",
                "unclassified",
            ]);
            let phi = PhiIndicators {
                mrn: category == "clinical" || rng.below(5) == 0,
                ..PhiIndicators::default()
            };
            let classification = Classification {
                category: Category::new(category)?,
                rule: None,
                confidence: 1.0,
                forced: false,
                phi,
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
                    offset: id,
                },
            );
            let (retain_until, status, governing) = match rng.below(12) {
                0 => (None, RetentionStatus::Indefinite, "org.legal-review"),
                1 => (None, RetentionStatus::Pending, "state.co.minor"),
                _ => {
                    let d = day(2026, 1, 1) + Days::new(rng.below(3 * 365 + 180) as u64);
                    let rule = match category {
                        "clinical" => rng.pick(&["state.co.hospital", "state.ny.hospital"]),
                        "administrative" => "org.administrative",
                        "transient" => "org.transient",
                        "training_record" => "us.hipaa.training",
                        _ => "org.unclassified-default",
                    };
                    (Some(d), RetentionStatus::Scheduled, rule)
                }
            };
            let decision = RetentionDecision {
                retain_until,
                status,
                governing: Some(Arc::from(governing)),
                waiting_for: if status == RetentionStatus::Pending {
                    vec!["age_of_majority".to_owned()]
                } else {
                    Vec::new()
                },
                obligations: Vec::new(),
                policy_version: Arc::from("test"),
            };
            let jurisdiction = rng.pick(&[Some("CO"), Some("NY"), Some("TX"), None]);
            b.push_record(&record, &decision, jurisdiction.map(str::to_owned), None)?;
        }
        Ok(b.finish(at(2026, 5, 1, 8))?)
    }

    /// The seeded lake, and its hold and manifest ids in order of creation.
    struct Seeded {
        dir: tempfile::TempDir,
        ids: Vec<String>,
    }

    type Tables<'a> = (
        &'a mut RecordsTable,
        &'a mut HoldsTable,
        &'a mut ManifestsTable,
        &'a mut DisposalsTable,
    );

    /// Plans a disposal as of the day of `when` (and approves and executes it two and four
    /// hours later when `execute`); the manifest id, if anything was due.
    async fn dispose(
        t: &mut Tables<'_>,
        when: DateTime<Utc>,
        execute: bool,
    ) -> Result<Option<String>> {
        let today = when.date_naive();
        let mut d = Disposal::new(&mut *t.0, &mut *t.1, &mut *t.2, &mut *t.3, today);
        let Some(m) = d.plan(today, "records.manager", when).await? else {
            return Ok(None);
        };
        if execute {
            d.approve(
                &m.id,
                "compliance.officer",
                when + chrono::Duration::hours(2),
            )
            .await?;
            let mut d = Disposal::new(&mut *t.0, &mut *t.1, &mut *t.2, &mut *t.3, today)
                .for_real()
                .with_grace(chrono::Duration::zero());
            d.execute(&m.id, "cron", None, when + chrono::Duration::hours(4))
                .await?;
        }
        Ok(Some(m.id))
    }

    async fn seeded_lake() -> Result<Seeded> {
        let dir = tempfile::tempdir()?;
        let loc = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let mut records = RecordsTable::open_or_create(&loc("records"), HashMap::new()).await?;
        records
            .land(seeded_records()?, "retain-lineage", &[(0, 240)])
            .await?;
        let mut holds = HoldsTable::open_or_create(&loc("holds"), HashMap::new()).await?;
        let mut manifests =
            ManifestsTable::open_or_create(&loc("manifests"), HashMap::new()).await?;
        let mut disposals =
            DisposalsTable::open_or_create(&loc("disposals"), HashMap::new()).await?;
        let mut ids = Vec::new();
        let scope = |custodians: &[&str], keywords: &[&str], categories: &[&str]| HoldScope {
            custodians: custodians.iter().map(|s| s.to_string()).collect(),
            keywords: keywords.iter().map(|s| s.to_string()).collect(),
            categories: categories.iter().map(|s| s.to_string()).collect(),
            ..HoldScope::default()
        };

        // 2026-06-01: a hold on clinical mail. 2026-09-01: a hold on bob's mailbox (released
        // 2026-10-15, after the first disposal, which it protected).
        let clinical = holds
            .create(
                &mut records,
                new_hold("counsel", scope(&[], &[], &["clinical"])),
                at(2026, 6, 1, 10),
            )
            .await?;
        ids.push(clinical.id);
        let bob = holds
            .create(
                &mut records,
                new_hold("counsel", scope(&["bob"], &[], &[])),
                at(2026, 9, 1, 10),
            )
            .await?;
        ids.push(bob.id.clone());

        // Two disposals, executed on 2026-10-01 and 2026-11-16 (bob's hold released between
        // them); a third plan on 2026-12-04 left unapproved.
        let mut tables = (&mut records, &mut holds, &mut manifests, &mut disposals);
        ids.extend(dispose(&mut tables, at(2026, 10, 1, 9), true).await?);
        tables
            .1
            .release(
                &bob.id,
                Release {
                    released_by: "counsel".into(),
                    approved_by: "general.counsel".into(),
                    justification: "settled".into(),
                },
                at(2026, 10, 15, 10),
            )
            .await?;
        ids.extend(dispose(&mut tables, at(2026, 11, 16, 9), true).await?);
        ids.extend(dispose(&mut tables, at(2026, 12, 4, 9), false).await?);
        // 2026-11-20: a hold on carol's mail about the Raptor deal (no subject: covered too).
        let raptor = holds
            .create(
                &mut records,
                new_hold("counsel", scope(&["carol"], &["raptor"], &[])),
                at(2026, 11, 20, 10),
            )
            .await?;
        ids.push(raptor.id);

        // The audit trail: queries, reports and previews (read), and entries that are not.
        let mut audit = AuditTable::open_or_create(&loc("audit"), HashMap::new()).await?;
        // (Details as the JSON text `retain sql` writes: this crate does not link serde_json.)
        let with_details = |mut e: AuditEntry, details: String| {
            e.details = details;
            e
        };
        let query = |actor: &str, when, tables: &str, hash: char| {
            let list: Vec<String> = tables.split(',').map(|t| format!("\"{t}\"")).collect();
            with_details(
                AuditEntry::new(AuditAction::SqlQuery, actor, when, tables),
                format!(
                    "{{\"outcome\":\"ok\",\"query_sha256\":\"{}\",\"rows\":3,\"statement\":1,\"tables\":[{}]}}",
                    hash.to_string().repeat(64),
                    list.join(",")
                ),
            )
        };
        audit
            .append(&[
                AuditEntry::new(
                    AuditAction::RecordsLanded,
                    "retain-scheduler",
                    at(2026, 5, 1, 8),
                    "records",
                ),
                query("analyst", at(2026, 5, 2, 9), "records", 'a'),
                query("analyst", at(2026, 10, 2, 9), "records", 'b'),
                query("analyst", at(2026, 11, 3, 14), "holds,records", 'c'),
                AuditEntry::new(
                    AuditAction::HoldPreviewed,
                    "counsel",
                    at(2026, 11, 19, 16),
                    "(preview)",
                )
                .with_lineage("records"),
                AuditEntry::new(
                    AuditAction::Export,
                    "records.manager",
                    at(2026, 12, 1, 8),
                    "report:forecast",
                )
                .with_table_version(1),
                query("auditor", at(2026, 12, 3, 11), "audit", 'd'),
                // After the as-of date: not in the report.
                query("analyst", at(2026, 12, 5, 9), "records", 'e'),
            ])
            .await?;
        Ok(Seeded { dir, ids })
    }

    impl Seeded {
        async fn run(&self, report: Report) -> Result<ReportOutput> {
            self.run_as_of(report, today()).await
        }

        async fn run_as_of(&self, report: Report, as_of: NaiveDate) -> Result<ReportOutput> {
            let catalog = Catalog::open(
                self.dir.path().to_str().unwrap(),
                HashMap::new(),
                CatalogOptions {
                    today: Some(today()),
                    ..CatalogOptions::default()
                },
            )
            .await?;
            Ok(run_report(&catalog, report, as_of).await?)
        }

        /// The text with each hold and manifest id's random tail replaced by its order of
        /// creation (`H-20260601-00000001`).
        fn normalise(&self, text: &str) -> String {
            let mut out = text.to_owned();
            for (i, id) in self.ids.iter().enumerate() {
                let (head, _) = id.rsplit_once('-').unwrap();
                out = out.replace(id.as_str(), &format!("{head}-{:08}", i + 1));
            }
            out
        }
    }

    fn golden_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
    }

    /// Compares `actual` with the golden file `name` (rewrites it when `RETAIN_BLESS=1`); a
    /// mismatch names the file and shows the differing lines.
    fn golden(name: &str, actual: &str) {
        let path = golden_dir().join(name);
        if std::env::var("RETAIN_BLESS").is_ok_and(|v| v == "1") {
            std::fs::create_dir_all(golden_dir()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with RETAIN_BLESS=1 to write it",
                path.display()
            )
        });
        if expected == actual {
            return;
        }
        let (want, got): (Vec<&str>, Vec<&str>) =
            (expected.lines().collect(), actual.lines().collect());
        let mut diff = String::new();
        let mut shown = 0;
        for i in 0..want.len().max(got.len()) {
            let (w, g) = (want.get(i), got.get(i));
            if w != g {
                if let Some(w) = w {
                    diff.push_str(&format!("{:>4} - {w}\n", i + 1));
                }
                if let Some(g) = g {
                    diff.push_str(&format!("{:>4} + {g}\n", i + 1));
                }
                shown += 1;
                if shown == 20 {
                    diff.push_str("     ...\n");
                    break;
                }
            }
        }
        panic!(
            "{} differs from the report (- golden, + now; RETAIN_BLESS=1 rewrites it):\n{diff}",
            path.display()
        );
    }

    /// Each of the five reports, as text and CSV (and JSON for two, HTML for all), is what its
    /// golden file says; what the reports read and what they leave out is checked too.
    #[tokio::test]
    async fn reports_match_their_golden_files() -> Result<()> {
        let lake = seeded_lake().await?;
        for report in Report::ALL {
            let out = lake.run(report).await?;
            let name = report.name();
            golden(
                &format!("{name}.txt"),
                &lake.normalise(&render::report_table(&out)?),
            );
            golden(
                &format!("{name}.csv"),
                &lake.normalise(&render::report_csv(&out)?),
            );
            let html = lake.normalise(&render::report_html(&out)?);
            if matches!(report, Report::Forecast | Report::Holds) {
                let json = lake.normalise(&render::report_json(&out)?);
                assert!(json.starts_with(&format!("{{\n  \"report\": \"{name}\",")));
                assert_eq!(json.matches("{\"heading\": ").count(), out.sections.len());
                golden(&format!("{name}.json"), &json);
            }
            if report == Report::Forecast {
                golden(&format!("{name}.html"), &html);
            }
            assert_well_formed(&html, name);
            // No PHI: no subject, address or matter appears in any rendering.
            for text in [&html, &render::report_csv(&out)?] {
                for phi in [
                    "Raptor",
                    "raptor",
                    "lunch",
                    "@example.org",
                    "Doe v. Clinic",
                    "complaint",
                ] {
                    assert!(!text.contains(phi), "{name} shows {phi}");
                }
            }
        }
        Ok(())
    }

    /// As of a past date, the holds report lists the holds in force then: the one released
    /// since under "Released after the as-of date", none placed after it.
    #[tokio::test]
    async fn the_holds_report_as_of_a_past_date_shows_holds_released_since() -> Result<()> {
        let lake = seeded_lake().await?;
        let as_of = NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
        let out = lake.run_as_of(Report::Holds, as_of).await?;
        let ids = |heading: &str| -> Vec<String> {
            let s = out.sections.iter().find(|s| s.heading == heading).unwrap();
            let col = datafusion::arrow::compute::cast(
                s.batch.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let col = col.as_string::<i32>();
            (0..col.len())
                .map(|i| lake.normalise(col.value(i)))
                .collect()
        };
        // Placed 2026-06-01 (clinical, still active); 2026-09-01 (bob, released 2026-10-15);
        // 2026-11-20 (raptor: after the as-of date).
        assert_eq!(ids("Active holds"), [lake.normalise(&lake.ids[0])]);
        assert_eq!(
            ids("Released after the as-of date"),
            [lake.normalise(&lake.ids[1])]
        );
        let later = lake.run(Report::Holds).await?;
        let released = later
            .sections
            .iter()
            .find(|s| s.heading == "Released after the as-of date")
            .unwrap();
        assert_eq!(released.batch.num_rows(), 0, "released before today");
        Ok(())
    }

    /// Every tag opened is closed, in order (void elements and `<.../>` aside).
    fn assert_well_formed(html: &str, name: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("a tag ends") + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            let tag_name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if ["meta", "br", "hr", "img", "link"].contains(&tag_name.as_str()) {
                continue;
            }
            if tag.starts_with('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(tag_name.as_str()),
                    "{name}.html: </{tag_name}> closes the wrong tag"
                );
            } else {
                stack.push(tag_name);
            }
        }
        assert!(stack.is_empty(), "{name}.html leaves {stack:?} open");
    }

    /// The forecast starts at the as-of month, has 24 months, adds up to the scheduled records
    /// due in that window, and draws one bar segment per non-zero month and category.
    #[tokio::test]
    async fn the_forecast_chart_draws_every_non_zero_cell_once() -> Result<()> {
        let lake = seeded_lake().await?;
        let out = lake.run(Report::Forecast).await?;
        let chart = out.chart.as_ref().expect("the forecast has a chart");
        assert_eq!(chart.labels.len(), 24);
        assert_eq!(chart.labels[0], "2026-12");
        assert_eq!(chart.labels[23], "2028-11");
        let catalog = Catalog::open(
            lake.dir.path().to_str().unwrap(),
            HashMap::new(),
            CatalogOptions {
                today: Some(today()),
                ..CatalogOptions::default()
            },
        )
        .await?;
        let due = count(
            &catalog,
            "SELECT count(*) FROM records WHERE retention_status = 'scheduled' \
             AND retain_until >= DATE '2026-12-01' AND retain_until < DATE '2028-12-01'",
        )
        .await?;
        assert!(due > 0);
        assert_eq!(chart.totals().iter().sum::<u64>(), due as u64);
        let non_zero = chart
            .series
            .iter()
            .flat_map(|s| s.values.iter())
            .filter(|v| **v > 0)
            .count();
        let svg = render::chart_svg(chart);
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), non_zero);
        assert_eq!(
            svg.matches("<rect class=\"swatch\"").count(),
            chart.series.len()
        );
        for label in &chart.labels {
            assert!(
                svg.contains(&format!(">{label}</text>")),
                "{label} on the x axis"
            );
        }
        // Reports read through views to the lake tables, and say so.
        assert_eq!(out.tables, ["records"]);
        assert_eq!(out.queries.len(), 1);
        let access = lake.run(Report::Access).await?;
        assert_eq!(access.tables, ["audit"]);
        Ok(())
    }
}
