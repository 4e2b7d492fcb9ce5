//! The SQL endpoint's library against a real lake in a temporary folder: the analyst's catalog
//! shows no PHI by any route while hold coverage stays exact, the records manager's shows
//! everything, and the server refuses unsafe options. (psql and psycopg against `retain
//! serve`: crates/cli/tests/cli.rs, `mod serve`.)

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use chrono::Utc;
use retain_codec::{ClassifiedRecord, Lineage};
use retain_govern::{HoldScope, HoldsTable, NewHold};
use retain_lake::{RecordBatchBuilder, RecordsTable};
use retain_model::{
    Category, Classification, MailMessage, PhiIndicators, RetentionDecision, RetentionStatus,
};
use retain_query::datafusion::arrow::array::RecordBatch;
use retain_query::datafusion::arrow::util::pretty::pretty_format_batches;
use retain_query::{Catalog, CatalogOptions};
use retain_serve::{Password, Role, ServeOptions, Server, Users, open_catalog};

const SECRET_SUBJECT: &str = "Jane Roe MRN 448812 biopsy";
const SECRET_FROM: &str = "jane.roe@patients.example";
const SECRET_REF: &str = "MRN:448812";
const MATTER: &str = "Roe v. Mercy";

/// 40 records, every third with the secret subject, sender and patient reference; an active
/// hold on the keyword `biopsy` (coverage reads the subject).
async fn lake(dir: &std::path::Path) -> Result<String> {
    let loc = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let mut b = RecordBatchBuilder::new();
    for id in 0..40 {
        let mut m = MailMessage::new(format!("m{id}@example.org"), "carol");
        let secret = id % 3 == 0;
        m.subject = Some(if secret { SECRET_SUBJECT } else { "lunch" }.to_owned());
        if secret {
            m.from = Some(retain_model::Address {
                name: None,
                address: SECRET_FROM.to_owned(),
            });
        }
        let classification = Classification {
            category: Category::new("clinical")?,
            rule: None,
            confidence: 1.0,
            forced: false,
            phi: PhiIndicators::default(),
            patient_refs: if secret {
                vec![SECRET_REF.to_owned()]
            } else {
                Vec::new()
            },
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
        let decision = RetentionDecision {
            retain_until: Some(chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap()),
            status: RetentionStatus::Scheduled,
            governing: Some(Arc::from("hipaa.6y")),
            waiting_for: Vec::new(),
            obligations: Vec::new(),
            policy_version: Arc::from("test"),
        };
        b.push_record(&record, &decision, None, None)?;
    }
    let mut records = RecordsTable::open_or_create(&loc("records"), HashMap::new()).await?;
    records
        .land(b.finish(Utc::now())?, "retain-lineage", &[(0, 40)])
        .await?;
    let mut holds = HoldsTable::open_or_create(&loc("holds"), HashMap::new()).await?;
    holds
        .create(
            &mut records,
            NewHold {
                matter: MATTER.into(),
                reason: "complaint served".into(),
                created_by: "counsel".into(),
                scope: HoldScope {
                    keywords: vec!["biopsy".into()],
                    ..HoldScope::default()
                },
            },
            Utc::now(),
        )
        .await?;
    Ok(dir.to_str().unwrap().to_owned())
}

async fn text(catalog: &Catalog, sql: &str) -> Result<String> {
    let batches: Vec<RecordBatch> = catalog.query(sql).await?;
    Ok(pretty_format_batches(&batches)?.to_string())
}

fn leaks(out: &str) -> Vec<&'static str> {
    [
        SECRET_SUBJECT,
        "biopsy",
        SECRET_FROM,
        SECRET_REF,
        "448812",
        MATTER,
    ]
    .into_iter()
    .filter(|s| out.contains(s))
    .collect()
}

#[tokio::test]
async fn the_analyst_catalog_shows_no_phi_by_any_route_and_coverage_stays_exact() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = lake(dir.path()).await?;
    let manager = open_catalog(root.as_str(), Role::RecordsManager).await?;
    let analyst = open_catalog(root.as_str(), Role::Analyst).await?;

    // The records manager reads everything as stored.
    let all = text(
        &manager,
        "SELECT subject, from_address, patient_refs FROM records",
    )
    .await?;
    assert!(leaks(&all).contains(&SECRET_SUBJECT), "{all}");
    assert!(
        text(&manager, "SELECT matter FROM holds")
            .await?
            .contains(MATTER)
    );

    let routes = [
        "SELECT * FROM records",
        "SELECT * FROM records_on_hold",
        "SELECT * FROM disposal_candidates('2100-01-01')",
        "SELECT * FROM holds",
        "SELECT * FROM current_holds",
        "SELECT * FROM active_holds",
        "SELECT subject, from_address, patient_refs, attachments FROM records",
        "SELECT max(subject), min(from_address), array_agg(patient_refs) FROM records",
        "SELECT upper(subject) AS s FROM records_on_hold WHERE subject LIKE '%biopsy%'",
        "SELECT r.subject FROM records r JOIN hold_coverage c USING (record_key)",
        "SELECT unnest(patient_refs) FROM records",
        "SELECT s FROM (SELECT subject AS s FROM disposal_candidates()) t",
        "SELECT table_name, definition FROM information_schema.views",
        "SELECT * FROM datafusion.public.records",
        "DESCRIBE records",
        "SELECT * FROM upcoming_disposals",
    ];
    for sql in routes {
        let out = text(&analyst, sql).await?;
        assert!(
            leaks(&out).is_empty(),
            "`{sql}` shows {:?} to an analyst",
            leaks(&out)
        );
    }
    // Filters see NULL, not the stored value.
    let count = "SELECT count(*) AS n FROM records WHERE subject IS NOT NULL";
    assert!(
        text(&analyst, count).await?.contains("| 0 "),
        "subject is NULL for analysts"
    );
    assert!(text(&manager, count).await?.contains("| 40 "));
    // Coverage is the stored values', exactly: 14 of 40 subjects hold the keyword.
    let held = "SELECT count(*) AS n FROM records_on_hold";
    assert_eq!(text(&analyst, held).await?, text(&manager, held).await?);
    assert!(text(&manager, held).await?.contains("| 14 "));
    let covered = "SELECT count(*) AS n FROM hold_coverage";
    assert_eq!(
        text(&analyst, covered).await?,
        text(&manager, covered).await?
    );
    // is_held() would evaluate the conditions on masked columns: not offered.
    let e = analyst
        .query("SELECT count(*) FROM records WHERE is_held()")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is_held"), "{e}");
    // The read-only rules hold on the masked catalog too.
    let e = analyst.plan("DROP VIEW records").await.unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    Ok(())
}

#[tokio::test]
async fn the_server_refuses_dev_trust_off_loopback_no_users_and_a_bad_certificate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = lake(dir.path()).await?;
    let options = |listen: &str, users: Users, dev_trust: bool| ServeOptions {
        lake_root: root.clone(),
        storage_options: HashMap::new(),
        catalog: CatalogOptions::default(),
        listen: listen.parse().unwrap(),
        users,
        dev_trust,
        tls: None,
    };
    let e = Server::bind(options("0.0.0.0:0", Users::default(), true))
        .await
        .unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("loopback"),
        "{e}"
    );
    let e = Server::bind(options("127.0.0.1:0", Users::default(), false))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("retain serve user add"), "{e}");
    let mut users = Users::default();
    users.set("ana", Role::Analyst, &Password::new("pw-1"))?;
    let bad = dir.path().join("not-a-cert.pem");
    std::fs::write(&bad, "hello")?;
    let mut o = options("127.0.0.1:0", users.clone(), false);
    o.tls = Some(retain_serve::TlsFiles {
        cert: bad.clone(),
        key: bad.clone(),
    });
    let e = Server::bind(o).await.unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("not-a-cert.pem"),
        "{e}"
    );
    let server = Server::bind(options("127.0.0.1:0", users, false)).await?;
    assert_ne!(server.local_addr().port(), 0);
    assert!(!server.tls());
    Ok(())
}
