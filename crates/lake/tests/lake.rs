//! The `records` table against a real local Delta table: records classified and scheduled by the
//! built-in policy are landed with their Kafka offsets, read back with DataFusion, re-landed
//! (idempotent), extended, and landed by two racing writers (exactly once). The `s3_` tests do
//! the same on an S3-compatible server (s3s-fs, from `RETAIN_S3S_FS`). The `audit` module checks
//! the hash-chained audit table: appends, concurrent writers, and tampering detected by verify.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use retain_codec::{ClassifiedRecord, Lineage};
use retain_lake::deltalake::DeltaTable;
use retain_lake::deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use retain_lake::deltalake::arrow::compute::cast;
use retain_lake::deltalake::arrow::datatypes::{DataType, Date32Type, Int64Type};
use retain_lake::deltalake::datafusion::prelude::SessionContext;
use retain_lake::deltalake::logstore::object_store::{PutMode, PutOptions, PutPayload};
use retain_lake::deltalake::{ObjectStore as _, ObjectStoreError, Path as ObjectPath};
use retain_lake::{Error, RecordBatchBuilder, RecordsTable, TxnMark, record_key, records_schema};
use retain_model::{Address, Attachment, Facts, MailMessage, RetentionDecision};
use retain_policy::Policy;

const TOPIC: &str = "mail.classified";
const APP: &str = "retain-scheduler";

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| Policy::builtin().expect("the built-in pack compiles"))
}

fn landed_at() -> DateTime<Utc> {
    "2025-06-01T08:00:00Z".parse().unwrap()
}

/// A message whose subject and excerpt steer the built-in classifier.
fn mail(n: i64, subject: &str, excerpt: &str) -> MailMessage {
    let mut m = MailMessage::new(format!("msg-{n}@hospital.example"), "jdoe");
    m.custodian = Some("Jane Doe".into());
    m.from = Some(Address::new("jdoe@hospital.example"));
    m.to = vec![Address::new("team@hospital.example")];
    m.cc = vec![Address::new("records@hospital.example")];
    m.subject = Some(subject.to_owned());
    m.excerpt = Some(excerpt.to_owned());
    m.sent_at = Some("2021-03-04T10:00:00Z".parse().unwrap());
    m.size_bytes = 2048 + n as u64;
    m.folder = Some("Inbox".into());
    m.labels = vec!["important".into()];
    m
}

/// Messages that classify into four different categories, in offset order.
fn messages() -> Vec<MailMessage> {
    let mut clinical = mail(0, "Follow-up", "Patient MRN: 00123456 seen today, dx E11.9");
    clinical.attachments = vec![Attachment {
        name: "labs.pdf".into(),
        media_type: "application/pdf".into(),
        size_bytes: 5000,
    }];
    vec![
        clinical,
        mail(1, "Security incident report: lost laptop", ""),
        mail(2, "Budget meeting", "please bring the numbers"),
        mail(3, "hello", "see you"),
        mail(4, "Out of office", "I am away until Monday"),
        mail(5, "Annual HIPAA training completion", ""),
    ]
}

/// One classified and scheduled record, as the scheduler consumer holds it.
struct Scheduled {
    record: ClassifiedRecord,
    decision: RetentionDecision,
    jurisdiction: Option<String>,
    record_holder: Option<String>,
}

fn schedule(message: MailMessage, partition: i32, offset: i64) -> Scheduled {
    let p = policy();
    let facts = Facts {
        jurisdiction: Some("CO".into()),
        record_holder: Some("hospital".into()),
        ..Facts::default()
    };
    let (classification, decision) = p.decide(&message, &facts, &[]);
    let (jurisdiction, record_holder) = p.effective(&facts);
    let lineage = Lineage {
        topic: TOPIC.into(),
        partition,
        offset,
    };
    Scheduled {
        record: ClassifiedRecord::new(message, classification, "classifier-test", lineage),
        decision,
        jurisdiction,
        record_holder,
    }
}

/// Messages `range` of [`messages`] spread over two partitions: even ones on partition 0 at
/// offset `n / 2`, odd ones on partition 1.
fn scheduled(range: std::ops::Range<usize>) -> Vec<Scheduled> {
    messages()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| range.contains(i))
        .map(|(i, m)| schedule(m, (i % 2) as i32, (i / 2) as i64))
        .collect()
}

fn batch(rows: &[Scheduled]) -> Result<RecordBatch> {
    let mut b = RecordBatchBuilder::new();
    for s in rows {
        b.push_record(
            &s.record,
            &s.decision,
            s.jurisdiction.clone(),
            s.record_holder.clone(),
        )?;
    }
    Ok(b.finish(landed_at())?)
}

/// The next offset per partition after `rows`.
fn next_offsets(rows: &[Scheduled]) -> Vec<(i32, i64)> {
    let mut next = BTreeMap::new();
    for s in rows {
        let e = next.entry(s.record.lineage.partition).or_insert(0);
        *e = (*e).max(s.record.lineage.offset + 1);
    }
    next.into_iter().collect()
}

fn location(dir: &Path) -> String {
    dir.join("records").to_str().unwrap().to_owned()
}

/// Runs SQL against the table as it is now on storage, through DataFusion's table provider.
async fn sql(location: &str, query: &str) -> Result<Vec<RecordBatch>> {
    sql_with(location, HashMap::new(), query).await
}

/// [`sql`] with storage options (an `s3://` table).
async fn sql_with(
    location: &str,
    options: HashMap<String, String>,
    query: &str,
) -> Result<Vec<RecordBatch>> {
    let table = RecordsTable::open_or_create(location, options).await?;
    query_table(table.delta_table(), query).await
}

async fn query_table(table: &DeltaTable, query: &str) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("records", table.table_provider().await?)?;
    Ok(ctx.sql(query).await?.collect().await?)
}

/// Any column as text (DataFusion may hand strings back as views, dates as dates).
fn text(column: &ArrayRef) -> Vec<Option<String>> {
    let c = cast(column, &DataType::Utf8).unwrap();
    c.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

async fn count(location: &str) -> Result<i64> {
    count_with(location, HashMap::new()).await
}

async fn count_with(location: &str, options: HashMap<String, String>) -> Result<i64> {
    let batches = sql_with(location, options, "SELECT count(*) AS n FROM records").await?;
    Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0))
}

#[tokio::test]
async fn lands_classified_records_and_reads_them_back_with_datafusion() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let loc = location(dir.path());
    let rows = scheduled(0..4);
    let mut table = RecordsTable::open_or_create(&loc, HashMap::new()).await?;
    assert_eq!(table.version(), 0, "a new table is created at version 0");

    let landed = table.land(batch(&rows)?, APP, &next_offsets(&rows)).await?;
    assert_eq!(landed.version, Some(1));
    assert_eq!((landed.rows_landed, landed.rows_skipped), (4, 0));
    assert_eq!(landed.offsets, BTreeMap::from([(0, 2), (1, 2)]));
    // What the landing says it wrote is what is on disk.
    let parquet: Vec<u64> = std::fs::read_dir(dir.path().join("records"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .map(|e| e.metadata().map(|m| m.len()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(landed.files_written, parquet.len());
    assert!(landed.files_written >= 1);
    assert_eq!(landed.bytes_written, parquet.iter().sum::<u64>());
    // The log keeps statistics for the pruning columns only: never a subject or an address,
    // which would outlive the rows in the log after a disposal.
    let log = std::fs::read_to_string(
        dir.path()
            .join("records/_delta_log/00000000000000000001.json"),
    )?;
    let mut stats_seen = 0;
    for line in log.lines() {
        let action: serde_json::Value = serde_json::from_str(line)?;
        let Some(stats) = action["add"]["stats"].as_str() else {
            continue;
        };
        let stats: serde_json::Value = serde_json::from_str(stats)?;
        let columns: Vec<&String> = stats["minValues"].as_object().unwrap().keys().collect();
        assert!(columns.iter().any(|c| *c == "retain_until"), "{columns:?}");
        for c in &columns {
            assert!(
                retain_lake::RECORDS_STATS_COLUMNS
                    .split(',')
                    .any(|k| k == c.as_str()),
                "statistics for `{c}`"
            );
        }
        stats_seen += 1;
    }
    assert!(stats_seen >= 1, "{log}");
    drop(table);

    // A fresh handle (as after a restart) reads the rows back through DataFusion.
    assert_eq!(count(&loc).await?, 4);
    let out = sql(
        &loc,
        "SELECT record_key, category, subject, retain_until, retention_status, \
                source_partition, source_offset, phi_mrn, cardinality(obligations) AS n_obligations, \
                cardinality(attachments) AS n_attachments, jurisdiction, record_holder \
         FROM records ORDER BY source_partition, source_offset",
    )
    .await?;
    let out = &out[0];
    assert_eq!(out.num_rows(), 4);
    let strings = |name: &str| text(out.column_by_name(name).unwrap());
    // Partition 0 holds messages 0 and 2, partition 1 messages 1 and 3.
    let categories = strings("category");
    let want = [
        "clinical",
        "administrative",
        "security_incident",
        "unclassified",
    ];
    assert_eq!(
        categories,
        want.map(|c| Some(c.to_owned())).to_vec(),
        "categories by partition and offset"
    );
    assert_eq!(
        strings("record_key")[0].as_deref(),
        Some(record_key("default", "jdoe", "msg-0@hospital.example").as_str())
    );
    assert_eq!(strings("subject")[1].as_deref(), Some("Budget meeting"));
    assert_eq!(strings("jurisdiction")[0].as_deref(), Some("CO"));
    assert_eq!(strings("record_holder")[0].as_deref(), Some("hospital"));
    // What the policy decided is what the table holds.
    let retain_until = strings("retain_until");
    for (i, s) in [(0, &rows[0]), (1, &rows[2]), (2, &rows[1]), (3, &rows[3])] {
        assert_eq!(
            retain_until[i],
            s.decision.retain_until.map(|d| d.to_string()),
            "row {i}"
        );
        assert_eq!(
            strings("retention_status")[i].as_deref(),
            Some(s.decision.status.as_str())
        );
    }
    // administrative: created 2021-03-04 + 3 years.
    assert_eq!(retain_until[1].as_deref(), Some("2024-03-04"));
    // Unclassified is never scheduled.
    assert_eq!(retain_until[3], None);
    assert_eq!(
        strings("retention_status")[3].as_deref(),
        Some("indefinite")
    );
    let phi_mrn = out.column_by_name("phi_mrn").unwrap().as_boolean();
    assert!(phi_mrn.value(0) && !phi_mrn.value(1));
    let n_attachments = strings("n_attachments");
    assert_eq!(n_attachments[0].as_deref(), Some("1"));
    assert_eq!(n_attachments[1].as_deref(), Some("0"));
    let n_obligations = strings("n_obligations");
    assert_eq!(
        n_obligations[0],
        Some(rows[0].decision.obligations.len().to_string())
    );

    // Nested columns are queryable: the obligations of the clinical record.
    let ob = sql(
        &loc,
        "SELECT o['id'] AS id, o['until'] AS until, o['status'] AS status \
         FROM (SELECT unnest(obligations) AS o FROM records WHERE category = 'clinical') \
         ORDER BY id",
    )
    .await?;
    let ids: Vec<String> = ob
        .iter()
        .flat_map(|b| text(b.column(0)))
        .map(Option::unwrap)
        .collect();
    let mut want: Vec<String> = rows[0]
        .decision
        .obligations
        .iter()
        .map(|o| o.id.to_string())
        .collect();
    want.sort();
    assert_eq!(ids, want);
    // `until` is set exactly for the scheduled obligations.
    for b in &ob {
        let until = b.column(1).as_primitive::<Date32Type>();
        for (i, status) in text(b.column(2)).iter().enumerate() {
            assert_eq!(until.is_valid(i), status.as_deref() == Some("scheduled"));
        }
    }

    // The committed offsets are what a consumer seeks to on assignment.
    let mut reopened = RecordsTable::open_or_create(&loc, HashMap::new()).await?;
    assert_eq!(
        reopened.committed_offsets(APP, [0, 1, 2]).await?,
        BTreeMap::from([(0, 2), (1, 2)])
    );
    assert_eq!(reopened.committed_offset(APP, 2).await?, None);
    assert_eq!(reopened.committed_offset("another-app", 0).await?, None);
    Ok(())
}

#[tokio::test]
async fn relanding_is_idempotent_and_later_offsets_add_rows() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let loc = location(dir.path());
    let mut table = RecordsTable::open_or_create(&loc, HashMap::new()).await?;
    let first = scheduled(0..4);
    table
        .land(batch(&first)?, APP, &next_offsets(&first))
        .await?;
    let version = table.version();

    // The same messages re-delivered (a crash after the commit, before the consumer commit).
    let again = table
        .land(batch(&first)?, APP, &next_offsets(&first))
        .await?;
    assert_eq!(again.version, None, "nothing to commit");
    assert_eq!((again.rows_landed, again.rows_skipped), (0, 4));
    assert_eq!(table.version(), version);
    assert_eq!(count(&loc).await?, 4);

    // A batch that overlaps: messages 2..6 (2 and 3 already landed).
    let overlap = scheduled(2..6);
    let landed = table
        .land(batch(&overlap)?, APP, &next_offsets(&overlap))
        .await?;
    assert_eq!((landed.rows_landed, landed.rows_skipped), (2, 2));
    assert_eq!(landed.offsets, BTreeMap::from([(0, 3), (1, 3)]));
    assert_eq!(count(&loc).await?, 6);
    let keys = sql(&loc, "SELECT count(DISTINCT record_key) FROM records").await?;
    assert_eq!(keys[0].column(0).as_primitive::<Int64Type>().value(0), 6);

    // Offsets advanced past dead-lettered messages land no rows but move the offsets.
    let empty = RecordBatchBuilder::new().finish(landed_at())?;
    let skip = table.land(empty.clone(), APP, &[(0, 10)]).await?;
    assert!(skip.version.is_some());
    assert_eq!(skip.rows_landed, 0);
    assert_eq!(
        table.committed_offsets(APP, [0, 1]).await?,
        BTreeMap::from([(0, 10), (1, 3)])
    );
    // Offsets never move backwards.
    let back = table.land(empty, APP, &[(0, 4)]).await?;
    assert_eq!(back.version, None);
    assert_eq!(table.committed_offset(APP, 0).await?, Some(10));
    assert_eq!(count(&loc).await?, 6);
    Ok(())
}

/// A second set of `txn` actions (a consumer's own offsets, when the rows' lineage names another
/// topic) rides in the same commit, filters nothing, and never moves backwards.
#[tokio::test]
async fn marks_ride_in_the_landing_commit() -> Result<()> {
    const CONSUMER: &str = "retain-consumer";
    let mark = |partition, next_offset| TxnMark {
        app_id: CONSUMER,
        partition,
        next_offset,
    };
    let dir = tempfile::tempdir()?;
    let loc = location(dir.path());
    let mut table = RecordsTable::open_or_create(&loc, HashMap::new()).await?;
    let rows = scheduled(0..4);
    let landed = table
        .land_with_marks(
            batch(&rows)?,
            APP,
            &next_offsets(&rows),
            &[mark(0, 7), mark(1, 9)],
        )
        .await?;
    assert_eq!((landed.rows_landed, landed.version), (4, Some(1)));
    assert_eq!(
        table.committed_offsets(CONSUMER, [0, 1, 2]).await?,
        BTreeMap::from([(0, 7), (1, 9)])
    );
    assert_eq!(
        table.committed_offsets(APP, [0, 1]).await?,
        BTreeMap::from([(0, 2), (1, 2)])
    );

    // The same rows again (a replay upstream) while the consumer moved on: no rows, one commit.
    let again = table
        .land_with_marks(batch(&rows)?, APP, &next_offsets(&rows), &[mark(0, 12)])
        .await?;
    assert_eq!((again.rows_landed, again.rows_skipped), (0, 4));
    assert_eq!(again.version, Some(2));
    assert_eq!(table.committed_offset(CONSUMER, 0).await?, Some(12));

    // Marks never move backwards: nothing to commit.
    let back = table
        .land_with_marks(batch(&rows)?, APP, &next_offsets(&rows), &[mark(0, 3)])
        .await?;
    assert_eq!(back.version, None);
    assert_eq!(table.committed_offset(CONSUMER, 0).await?, Some(12));
    assert_eq!(count(&loc).await?, 4);

    // A mark under the landing's own app id, or twice for one partition, is refused.
    let own = TxnMark {
        app_id: APP,
        partition: 0,
        next_offset: 20,
    };
    for marks in [vec![own], vec![mark(0, 20), mark(0, 21)]] {
        let err = table
            .land_with_marks(batch(&rows)?, APP, &next_offsets(&rows), &marks)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Request { .. }), "{err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_landers_land_each_offset_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    race(&location(dir.path()), HashMap::new()).await
}

/// Two landers race on the same batches, then on different partitions: every offset lands
/// exactly once. The table at `loc` must be new.
async fn race(loc: &str, options: HashMap<String, String>) -> Result<()> {
    let loc = loc.to_owned();
    RecordsTable::open_or_create(&loc, options.clone()).await?;
    let all = scheduled(0..6);
    let mut expected = 0;
    // Three rounds: both landers get the same batch and offsets and run at the same time.
    for round in [0..2, 2..4, 4..6] {
        let rows = &all[round];
        let b = batch(rows)?;
        let offsets = next_offsets(rows);
        let mut handles = Vec::new();
        for _ in 0..2 {
            let (loc, b, offsets) = (loc.clone(), b.clone(), offsets.clone());
            let options = options.clone();
            handles.push(tokio::spawn(async move {
                let mut t = RecordsTable::open_or_create(&loc, options).await?;
                t.land(b, APP, &offsets).await
            }));
        }
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await??);
        }
        let landed: usize = results.iter().map(|r| r.rows_landed).sum();
        let commits = results.iter().filter(|r| r.version.is_some()).count();
        assert_eq!(landed, rows.len(), "{results:?}");
        assert_eq!(commits, 1, "{results:?}");
        expected += rows.len() as i64;
        assert_eq!(count_with(&loc, options.clone()).await?, expected);
    }
    let keys = sql_with(
        &loc,
        options.clone(),
        "SELECT count(DISTINCT record_key) FROM records",
    )
    .await?;
    assert_eq!(keys[0].column(0).as_primitive::<Int64Type>().value(0), 6);

    // Landers on different partitions do not conflict: both commit.
    let a = schedule(mail(10, "Budget meeting", ""), 0, 3);
    let b = schedule(mail(11, "Budget meeting", ""), 1, 3);
    let (ba, bb) = (
        batch(std::slice::from_ref(&a))?,
        batch(std::slice::from_ref(&b))?,
    );
    let (la, lb) = (loc.clone(), loc.clone());
    let (oa, ob) = (options.clone(), options.clone());
    let ha = tokio::spawn(async move {
        let mut t = RecordsTable::open_or_create(&la, oa).await?;
        t.land(ba, APP, &[(0, 4)]).await
    });
    let hb = tokio::spawn(async move {
        let mut t = RecordsTable::open_or_create(&lb, ob).await?;
        t.land(bb, APP, &[(1, 4)]).await
    });
    let (ra, rb) = (ha.await??, hb.await??);
    assert_eq!((ra.rows_landed, rb.rows_landed), (1, 1));
    assert_eq!(count_with(&loc, options).await?, 8);
    Ok(())
}

#[tokio::test]
async fn no_column_holds_body_text() -> Result<()> {
    let forbidden = ["excerpt", "body", "content", "snippet"];
    let schema = records_schema();
    for f in schema.fields() {
        let name = f.name().to_ascii_lowercase();
        assert!(
            !forbidden.iter().any(|w| name.contains(w)),
            "column {name} looks like body text"
        );
    }
    // And the table on storage has exactly the builder's columns.
    let dir = tempfile::tempdir()?;
    let loc = location(dir.path());
    let mut table = RecordsTable::open_or_create(&loc, HashMap::new()).await?;
    let rows = scheduled(0..1);
    assert!(rows[0].record.message.excerpt.is_none());
    table.land(batch(&rows)?, APP, &next_offsets(&rows)).await?;
    let out = sql(&loc, "SELECT * FROM records").await?;
    let names: Vec<&str> = out[0]
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let want: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, want);
    // The excerpt text is nowhere in the data files.
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p)? {
            let e = e?.path();
            if e.is_dir() {
                stack.push(e);
            } else {
                let bytes = std::fs::read(&e)?;
                assert!(
                    !bytes.windows(10).any(|w| w == b"seen today"),
                    "{} holds excerpt text",
                    e.display()
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn locations_paths_file_urls_and_s3() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A file:// URL and the plain path name the same table.
    let path = dir.path().join("records");
    let url = url::Url::from_directory_path(&path).unwrap();
    let mut by_url = RecordsTable::open_or_create(url.as_str(), HashMap::new()).await?;
    let rows = scheduled(0..2);
    by_url
        .land(batch(&rows)?, APP, &next_offsets(&rows))
        .await?;
    assert_eq!(count(path.to_str().unwrap()).await?, 2);

    // s3:// is accepted (a storage scheme is registered); with nothing listening, opening
    // fails as a storage error, which is retryable, not as a bad location.
    let options = HashMap::from(
        [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("max_retries", "0"),
            ("retry_timeout", "1s"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let err = RecordsTable::open_or_create("s3://retain-test/records", options)
        .await
        .expect_err("nothing listens on port 9");
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains("s3://retain-test/records"),
        "{err}"
    );

    // An unknown scheme is a bad location.
    let err = RecordsTable::open_or_create("nosuch://bucket/records", HashMap::new())
        .await
        .expect_err("unknown scheme");
    assert!(matches!(err, Error::Location { .. }), "{err:?}");
    assert!(!err.is_retryable());
    Ok(())
}

#[tokio::test]
async fn inconsistent_requests_are_refused_before_writing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let loc = location(dir.path());
    let mut table = RecordsTable::open_or_create(&loc, HashMap::new()).await?;
    let rows = scheduled(0..2);
    // Partition 1's offset is missing.
    let err = table
        .land(batch(&rows)?, APP, &[(0, 1)])
        .await
        .expect_err("partition 1 undeclared");
    assert!(matches!(err, Error::Request { .. }), "{err}");
    assert!(err.to_string().contains("partition 1"), "{err}");
    // A next offset at or below a row's offset.
    let err = table
        .land(batch(&rows)?, APP, &[(0, 0), (1, 1)])
        .await
        .expect_err("offset 0 not below 0");
    assert!(err.to_string().contains("offset 0"), "{err}");
    assert_eq!(table.version(), 0);
    assert_eq!(count(&loc).await?, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The same table on a real S3-compatible server: s3s-fs (`cargo install s3s-fs --features
// binary`, which `.ci/run` does and names in `RETAIN_S3S_FS`) on a loopback port. Delta commits
// on S3 are conditional puts (`If-None-Match: *`); s3s-fs honours them.

const S3_BUCKET: &str = "retain-test";
const S3_ACCESS_KEY: &str = "retain-access";
const S3_SECRET_KEY: &str = "retain-secret-key";

/// The s3s-fs binary from `RETAIN_S3S_FS`. Without it the S3 tests fail under CI (`CI` set)
/// and are skipped elsewhere, so `cargo test` works on a machine without the binary.
fn s3s_fs_binary() -> Option<PathBuf> {
    match std::env::var_os("RETAIN_S3S_FS") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "RETAIN_S3S_FS is not set: CI must run the S3 tests against s3s-fs \
             (.ci/run installs it with `cargo install s3s-fs --features binary`)"
        ),
        _ => {
            eprintln!(
                "SKIP: RETAIN_S3S_FS is not set (the path of an s3s-fs binary; \
                 .ci/run installs one), so the S3 tests do not run"
            );
            None
        }
    }
}

/// An s3s-fs server on a free loopback port serving a temporary directory, killed on drop.
struct S3Server {
    child: Child,
    endpoint: String,
    /// Holds `data/` (the served root: one directory per bucket) and `s3s-fs.log`.
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server with [`S3_ACCESS_KEY`] and [`S3_SECRET_KEY`] and creates
    /// [`S3_BUCKET`] (s3s-fs serves each directory under its root as a bucket).
    fn start(binary: &Path) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join(S3_BUCKET))?;
        let log = dir.path().join("s3s-fs.log");
        // The port is free when chosen; another process may take it before s3s-fs binds it,
        // in which case s3s-fs exits and we try another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let out = std::fs::File::create(&log)?;
            let mut child = Command::new(binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(&root)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let exited = loop {
                if let Some(status) = child.try_wait()? {
                    break Some(status);
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break None;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    anyhow::bail!(
                        "s3s-fs did not listen on port {port} within 10 s: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            match exited {
                None => {
                    return Ok(S3Server {
                        child,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        dir,
                    });
                }
                Some(status) => eprintln!(
                    "s3s-fs exited ({status}) on port {port}, retrying: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        anyhow::bail!("s3s-fs did not start; see the messages above")
    }

    /// The storage options that reach this server (what `docs/tables.md` documents).
    fn options(&self) -> HashMap<String, String> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            // The default in object_store 0.13, named so a change of default cannot slip by:
            // commits are `PUT` with `If-None-Match: *`.
            ("AWS_CONDITIONAL_PUT", "etag"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Where an object of [`S3_BUCKET`] is on the server's disk.
    fn object_path(&self, key: &str) -> PathBuf {
        self.dir.path().join("data").join(S3_BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_lands_reads_back_and_relands_idempotently() -> Result<()> {
    let Some(binary) = s3s_fs_binary() else {
        return Ok(());
    };
    let server = S3Server::start(&binary)?;
    let options = server.options();
    let loc = format!("s3://{S3_BUCKET}/records");

    let mut table = RecordsTable::open_or_create(&loc, options.clone()).await?;
    assert_eq!(table.version(), 0, "a new table is created at version 0");
    let rows = scheduled(0..4);
    let landed = table.land(batch(&rows)?, APP, &next_offsets(&rows)).await?;
    assert_eq!(landed.version, Some(1));
    assert_eq!((landed.rows_landed, landed.rows_skipped), (4, 0));
    assert_eq!(landed.offsets, BTreeMap::from([(0, 2), (1, 2)]));
    drop(table);
    // It went through the server: the commit is an object in the bucket.
    let commit = "records/_delta_log/00000000000000000001.json";
    assert!(server.object_path(commit).is_file(), "{commit} on disk");

    // A fresh handle (as after a restart) reads rows and offsets back.
    assert_eq!(count_with(&loc, options.clone()).await?, 4);
    let out = sql_with(
        &loc,
        options.clone(),
        "SELECT category FROM records ORDER BY source_partition, source_offset",
    )
    .await?;
    assert_eq!(
        text(out[0].column(0)),
        [
            "clinical",
            "administrative",
            "security_incident",
            "unclassified"
        ]
        .map(|c| Some(c.to_owned()))
        .to_vec()
    );
    let mut reopened = RecordsTable::open_or_create(&loc, options.clone()).await?;
    assert_eq!(reopened.version(), 1);
    assert_eq!(
        reopened.committed_offsets(APP, [0, 1, 2]).await?,
        BTreeMap::from([(0, 2), (1, 2)])
    );

    // The same offsets again: nothing lands, nothing is committed.
    let again = reopened
        .land(batch(&rows)?, APP, &next_offsets(&rows))
        .await?;
    assert_eq!(again.version, None, "nothing to commit");
    assert_eq!((again.rows_landed, again.rows_skipped), (0, 4));
    assert_eq!(count_with(&loc, options.clone()).await?, 4);

    // Later offsets add rows.
    let more = scheduled(4..6);
    let landed = reopened
        .land(batch(&more)?, APP, &next_offsets(&more))
        .await?;
    assert_eq!((landed.version, landed.rows_landed), (Some(2), 2));
    assert_eq!(count_with(&loc, options.clone()).await?, 6);

    // What exactly-once rests on: the server refuses to create a commit that exists.
    let store = reopened.delta_table().log_store().object_store(None);
    let existing = ObjectPath::from("_delta_log/00000000000000000001.json");
    let err = store
        .put_opts(
            &existing,
            PutPayload::from_static(b"{}"),
            PutOptions::from(PutMode::Create),
        )
        .await
        .expect_err("a conditional put over an existing commit must fail");
    assert!(
        matches!(err, ObjectStoreError::AlreadyExists { .. }),
        "{err:?}"
    );
    assert_eq!(count_with(&loc, options).await?, 6, "the commit is intact");
    Ok(())
}

/// Ignored: s3s-fs 0.14.1 checks `If-None-Match: *` and then writes (a temporary file renamed
/// over the key), not atomically, so two conditional puts of the same commit racing each other
/// can both succeed: both landers then report the same version and one commit overwrites the
/// other (about 1 run in 3 on 2 cores). A server with atomic conditional puts (AWS S3) must
/// pass it; run it with `cargo test -p retain-lake --test lake -- --ignored s3_racing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "s3s-fs 0.14.1's If-None-Match check is not atomic with the write under concurrency"]
async fn s3_racing_landers_land_each_offset_exactly_once() -> Result<()> {
    let Some(binary) = s3s_fs_binary() else {
        return Ok(());
    };
    let server = S3Server::start(&binary)?;
    race(&format!("s3://{S3_BUCKET}/race"), server.options()).await
}

// ---------------------------------------------------------------------------------------------
// The `audit` table: hash-chained entries, verified; tampering through Delta itself (someone
// with write access to the table's storage running UPDATE / DELETE / overwrite) is detected.

mod audit {
    use super::*;
    use retain_lake::deltalake::protocol::SaveMode;
    use retain_lake::{
        AuditAction, AuditEntry, AuditRecord, AuditTable, ChainHead, GENESIS_HASH, LinkProblem,
        audit_batch,
    };

    fn at(minute: i64) -> DateTime<Utc> {
        landed_at() + chrono::Duration::minutes(minute)
    }

    /// `n` entries of different actions; entry `i`'s details are `{"records":i}`.
    fn entries(n: i64) -> Vec<AuditEntry> {
        let actions = AuditAction::ALL;
        (0..n)
            .map(|i| {
                let action = actions[i as usize % actions.len()];
                let e = AuditEntry::new(action, "records.manager", at(i), format!("target-{i}"))
                    .with_details(&serde_json::json!({ "records": i }));
                if action == AuditAction::RecordsLanded {
                    e.with_table_version(i).with_lineage(format!(
                        "retain.mail/0@{}-{}",
                        i * 10,
                        i * 10 + 9
                    ))
                } else {
                    e
                }
            })
            .collect()
    }

    /// A new audit table holding `n` entries, appended in two calls.
    async fn table_with(dir: &Path, n: i64) -> Result<(String, AuditTable)> {
        let loc = dir.join("audit").to_str().unwrap().to_owned();
        let mut t = AuditTable::open_or_create(&loc, HashMap::new()).await?;
        let all = entries(n);
        let (a, b) = all.split_at(n as usize / 2);
        t.append(a).await?;
        t.append(b).await?;
        Ok((loc, t))
    }

    /// The first broken link's seq and problem (panics when the chain is intact).
    async fn broken(t: &mut AuditTable) -> Result<(i64, LinkProblem)> {
        let report = t.verify().await?;
        let Some(b) = report.broken.clone() else {
            panic!("tampering not detected: {report:?}");
        };
        assert_eq!(
            report.entries_checked, b.seq as u64,
            "checked up to the break"
        );
        Ok((b.seq, b.problem))
    }

    #[tokio::test]
    async fn audit_entries_append_read_back_and_verify() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let loc = dir.path().join("audit").to_str().unwrap().to_owned();
        let mut t = AuditTable::open_or_create(&loc, HashMap::new()).await?;
        assert_eq!(t.version(), 0);
        let empty = t.verify().await?;
        assert!(empty.is_intact() && empty.head.is_none(), "{empty:?}");

        let all = entries(15);
        let first = t.append(&all[..4]).await?;
        assert_eq!((first.version, first.first_seq, first.head.seq), (1, 0, 3));
        assert_eq!(first.attempts, 1);
        // A second handle (another process) continues the same chain.
        let mut other = AuditTable::open_or_create(&loc, HashMap::new()).await?;
        let second = other.append(&all[4..]).await?;
        assert_eq!(
            (second.version, second.first_seq, second.head.seq),
            (2, 4, 14)
        );

        let stored = t.entries().await?;
        assert_eq!(stored.len(), 15);
        for (i, (r, e)) in stored.iter().zip(&all).enumerate() {
            assert_eq!(r.seq, i as i64);
            assert_eq!(r.action(), Some(e.action));
            assert_eq!(
                (
                    &r.actor,
                    r.at,
                    &r.target,
                    &r.details,
                    r.table_version,
                    &r.lineage
                ),
                (
                    &e.actor,
                    e.at,
                    &e.target,
                    &e.details,
                    e.table_version,
                    &e.lineage
                )
            );
            let prev = if i == 0 {
                GENESIS_HASH
            } else {
                stored[i - 1].hash.as_str()
            };
            assert_eq!(r.prev_hash, prev);
            assert_eq!(r.hash, r.computed_hash());
        }

        let report = t.verify().await?;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!((report.version, report.entries_checked), (2, 15));
        assert_eq!(report.head.as_ref(), Some(&second.head));
        let anchored = t.verify_expecting(&first.head).await?;
        assert!(anchored.is_intact(), "{anchored:?}");

        // Bad entries are refused before anything is written.
        let mut bad = entries(1).remove(0);
        bad.details = "records: 3".into();
        let err = t.append(&[bad]).await.unwrap_err();
        assert!(matches!(err, Error::AuditEntry { index: 0, .. }), "{err}");
        assert!(err.to_string().contains("`details` is not JSON"), "{err}");
        assert!(t.append(&[]).await.is_err());
        assert_eq!(t.refresh().await?, 2);
        Ok(())
    }

    /// (a) A byte of one field flipped by rewriting its file (Delta UPDATE).
    #[tokio::test]
    async fn audit_verify_detects_an_altered_entry() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (_, mut t) = table_with(dir.path(), 8).await?;
        // '3' (0x33) becomes '2' (0x32): one bit of one byte.
        t.delta_table()
            .clone()
            .update()
            .with_predicate("seq = 3")
            .with_update("details", r#"'{"records":2}'"#)
            .await?;
        let stored = t.entries().await?;
        assert_eq!(stored[3].details, r#"{"records":2}"#, "the tamper took");
        let (seq, problem) = broken(&mut t).await?;
        assert_eq!(seq, 3);
        assert!(
            matches!(&problem, LinkProblem::Altered { stored: s, computed: c } if *s == stored[3].hash && *c != *s),
            "{problem}"
        );
        assert!(
            problem.to_string().starts_with("entry altered"),
            "{problem}"
        );
        Ok(())
    }

    /// (b) One entry deleted (Delta DELETE): as is, and with later entries renumbered to hide
    /// the gap; and the tail deleted.
    #[tokio::test]
    async fn audit_verify_detects_a_deleted_entry() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (_, mut t) = table_with(dir.path(), 8).await?;
        t.delta_table()
            .clone()
            .delete()
            .with_predicate("seq = 5")
            .await?;
        assert_eq!(t.entries().await?.len(), 7);
        assert_eq!(
            broken(&mut t).await?,
            (5, LinkProblem::Missing { next_seq: 6 })
        );

        // Renumbered: seqs are gapless again, but entry 6 does not link to entry 4.
        t.delta_table()
            .clone()
            .update()
            .with_predicate("seq > 5")
            .with_update("seq", "seq - 1")
            .await?;
        let (seq, problem) = broken(&mut t).await?;
        assert_eq!(seq, 5);
        assert!(matches!(problem, LinkProblem::Unlinked { .. }), "{problem}");

        // The tail: the chain that is left is consistent, but the table recorded a later head.
        let dir = tempfile::tempdir()?;
        let (_, mut t) = table_with(dir.path(), 8).await?;
        t.delta_table()
            .clone()
            .delete()
            .with_predicate("seq = 7")
            .await?;
        assert_eq!(
            broken(&mut t).await?,
            (7, LinkProblem::Truncated { recorded_head: 7 })
        );
        // Appending onto a deleted head is refused rather than papering over the gap.
        let err = t.append(&entries(1)).await.unwrap_err();
        assert!(matches!(err, Error::AuditHead { .. }), "{err}");
        assert!(err.to_string().contains("recorded head seq 7"), "{err}");
        Ok(())
    }

    /// (c) Two entries swapped (their seqs exchanged in one Delta UPDATE).
    #[tokio::test]
    async fn audit_verify_detects_reordered_entries() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (_, mut t) = table_with(dir.path(), 8).await?;
        let before = t.entries().await?;
        t.delta_table()
            .clone()
            .update()
            .with_predicate("seq IN (2, 3)")
            .with_update("seq", "CASE WHEN seq = 2 THEN 3 ELSE 2 END")
            .await?;
        let after = t.entries().await?;
        assert_eq!(after[2].hash, before[3].hash, "the swap took");
        let (seq, problem) = broken(&mut t).await?;
        assert_eq!(seq, 2);
        assert_eq!(
            problem,
            LinkProblem::Unlinked {
                expected: before[1].hash.clone(),
                found: before[2].hash.clone(),
            }
        );
        Ok(())
    }

    /// What the chain alone cannot prove: a writer who recomputes every hash after a change
    /// leaves a consistent chain. A head recorded outside the table catches it.
    #[tokio::test]
    async fn audit_rewritten_with_fresh_hashes_is_caught_by_an_external_head() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (_, mut t) = table_with(dir.path(), 6).await?;
        let anchor: ChainHead = t.verify().await?.head.unwrap().to_string().parse()?;

        let mut prev = GENESIS_HASH.to_owned();
        let mut forged = Vec::new();
        for mut r in t.entries().await? {
            if r.seq == 2 {
                r.actor = "mallory".into();
            }
            let e = AuditEntry {
                action: r.action().unwrap(),
                actor: r.actor,
                at: r.at,
                target: r.target,
                details: r.details,
                table_version: r.table_version,
                lineage: r.lineage,
            };
            let sealed = AuditRecord::seal(r.seq, prev, &e);
            prev = sealed.hash.clone();
            forged.push(sealed);
        }
        t.delta_table()
            .clone()
            .write([audit_batch(&forged)?])
            .with_save_mode(SaveMode::Overwrite)
            .await?;
        assert_eq!(t.entries().await?[2].actor, "mallory");

        let report = t.verify().await?;
        assert!(
            report.is_intact(),
            "a consistent rewrite passes: {report:?}"
        );
        assert_ne!(report.head.as_ref(), Some(&anchor));
        let report = t.verify_expecting(&anchor).await?;
        let b = report
            .broken
            .expect("the external head catches the rewrite");
        assert_eq!(b.seq, 5);
        assert!(matches!(b.problem, LinkProblem::HeadMismatch { .. }), "{b}");
        Ok(())
    }

    /// The same on S3: append, read back through DataFusion on the object store, verify, and
    /// detect a deleted entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_audit_appends_verifies_and_detects_a_delete() -> Result<()> {
        let Some(binary) = s3s_fs_binary() else {
            return Ok(());
        };
        let server = S3Server::start(&binary)?;
        let options = server.options();
        let loc = format!("s3://{S3_BUCKET}/audit");
        let mut t = AuditTable::open_or_create(&loc, options.clone()).await?;
        let all = entries(6);
        t.append(&all[..3]).await?;
        let mut other = AuditTable::open_or_create(&loc, options.clone()).await?;
        let receipt = other.append(&all[3..]).await?;
        assert_eq!((receipt.first_seq, receipt.head.seq), (3, 5));
        assert!(
            server
                .object_path("audit/_delta_log/00000000000000000002.json")
                .is_file()
        );
        assert_eq!(t.entries().await?.len(), 6);
        let report = t.verify().await?;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.head, Some(receipt.head));

        t.delta_table()
            .clone()
            .delete()
            .with_predicate("seq = 1")
            .await?;
        assert_eq!(
            broken(&mut t).await?,
            (1, LinkProblem::Missing { next_seq: 2 })
        );
        Ok(())
    }

    /// Two writers (separate handles, as two processes) append at once: every entry gets its
    /// own seq, the chain never forks, and the `retain-audit` transaction conflicts did fire.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_concurrent_appenders_never_fork_the_chain() -> Result<()> {
        const PER_WRITER: usize = 15;
        let dir = tempfile::tempdir()?;
        let loc = dir.path().join("audit").to_str().unwrap().to_owned();
        AuditTable::open_or_create(&loc, HashMap::new()).await?;
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let mut handles = Vec::new();
        for writer in 0..2 {
            let (loc, start) = (loc.clone(), start.clone());
            handles.push(tokio::spawn(async move {
                let mut t = AuditTable::open_or_create(&loc, HashMap::new())
                    .await?
                    .with_max_attempts(100);
                start.wait().await;
                let mut receipts = Vec::new();
                for i in 0..PER_WRITER {
                    let e = AuditEntry::new(
                        AuditAction::SqlQuery,
                        format!("writer-{writer}"),
                        at(i as i64),
                        format!("query-{i}"),
                    );
                    receipts.push(t.append(&[e]).await?);
                }
                anyhow::Ok(receipts)
            }));
        }
        let mut receipts = Vec::new();
        for h in handles {
            receipts.extend(h.await??);
        }
        let retries: u32 = receipts.iter().map(|r| r.attempts - 1).sum();
        let mut seqs: Vec<i64> = receipts.iter().map(|r| r.first_seq).collect();
        seqs.sort();
        assert_eq!(seqs, (0..2 * PER_WRITER as i64).collect::<Vec<_>>());

        let mut t = AuditTable::open_or_create(&loc, HashMap::new()).await?;
        let stored = t.entries().await?;
        let stored_seqs: Vec<i64> = stored.iter().map(|r| r.seq).collect();
        assert_eq!(stored_seqs, (0..2 * PER_WRITER as i64).collect::<Vec<_>>());
        for w in 0..2 {
            let mine: Vec<_> = stored
                .iter()
                .filter(|r| r.actor == format!("writer-{w}"))
                .map(|r| r.target.clone())
                .collect();
            let expected: Vec<_> = (0..PER_WRITER).map(|i| format!("query-{i}")).collect();
            assert_eq!(mine, expected, "each writer's entries in its order");
        }
        let report = t.verify().await?;
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.entries_checked, 2 * PER_WRITER as u64);
        eprintln!("concurrent audit appends: {retries} retried after a conflict");
        assert!(
            retries > 0,
            "the writers never raced; the test did not exercise the conflict"
        );
        Ok(())
    }
}
