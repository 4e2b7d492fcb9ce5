//! The SQL endpoint's library against a real lake in a temporary folder: the analyst's catalog
//! shows no PHI by any route while hold coverage stays exact, the records manager's shows
//! everything, the server refuses unsafe options, and real clients (psql, psycopg) log in
//! with SCRAM-SHA-256, or with a cleartext password for users files written before it. (The
//! full psql and psycopg tour of `retain serve`: crates/cli/tests/cli.rs, `mod serve`.)

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

/// Whether a client program runs; outside CI a missing one is a SKIP, in CI a failure.
fn have(what: &str, program: &str, args: &[&str]) -> bool {
    let found = std::process::Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {what} (.ci/run installs it)"
        );
        eprintln!("SKIP: {what} is not installed");
    }
    found
}

/// `psql -c 'SELECT 1'` as `user` with `password`: its output, or its error.
async fn psql(port: u16, user: &str, password: &str) -> std::result::Result<String, String> {
    psql_with(port, user, password, "sslmode=disable").await
}

/// [`psql`] with more connection options (`sslmode=require channel_binding=require`).
async fn psql_with(
    port: u16,
    user: &str,
    password: &str,
    options: &str,
) -> std::result::Result<String, String> {
    let (user, password, options) = (user.to_owned(), password.to_owned(), options.to_owned());
    tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} user={user} dbname=retain connect_timeout=20 {options}"
            ))
            .args(["-X", "-w", "-A", "-t", "-c", "SELECT 1 AS one"])
            .env_remove("PGSERVICE")
            .env("PGPASSWORD", password)
            .output()
            .unwrap();
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    })
    .await
    .unwrap()
}

/// psycopg (libpq) as `user` with `password`, allowing only the `require_auth` method
/// (`scram-sha-256` or `password`): `ok`, or the error.
async fn psycopg(port: u16, user: &str, password: &str, require_auth: &str) -> String {
    let script = format!(
        "import psycopg, sys\n\
         try:\n\
         \x20   with psycopg.connect(host='127.0.0.1', port={port}, user=sys.argv[1], password=sys.argv[2], dbname='retain', sslmode='disable', require_auth='{require_auth}', connect_timeout=20) as c:\n\
         \x20       assert c.execute('SELECT 1').fetchone()[0] == 1\n\
         \x20   print('ok')\n\
         except psycopg.OperationalError as e:\n\
         \x20   print(e)\n"
    );
    let (user, password) = (user.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new("python3")
            .args(["-c", &script, &user, &password])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    })
    .await
    .unwrap()
}

/// A password SASLprep changes (RFC 4013): a no-break space and U+2168 ROMAN NUMERAL NINE.
const UMA_PASSWORD: &str = "Gr\u{FC}n\u{A0}\u{2168}-7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_psycopg_log_in_with_scram_and_old_users_files_still_work() -> Result<()> {
    if !have("psql (postgresql-client)", "psql", &["--version"]) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let root = lake(dir.path()).await?;
    // `ana` as `retain serve user add` writes her (SCRAM verifier and Argon2id hash); `old`
    // as a users file from before SCRAM logins (the Argon2id hash only).
    let path = dir.path().join("users.toml");
    let mut users = Users::default();
    users.set("ana", Role::Analyst, &Password::new("ana-Secret-1"))?;
    // libpq SASLprep's a password before it computes its proof (the no-break space becomes
    // a space, the Roman numeral nine `IX`): the stored verifier must have been made the same
    // way.
    users.set("uma", Role::Analyst, &Password::new(UMA_PASSWORD))?;
    users.save(&path)?;
    let old_hash = retain_serve::hash_password(&Password::new("old-Secret-2"))?;
    let mut text = std::fs::read_to_string(&path)?;
    assert!(text.contains("scram = \"SCRAM-SHA-256$4096:"), "{text}");
    text.push_str(&format!(
        "\n[users.old]\nrole = \"records_manager\"\npassword-hash = \"{old_hash}\"\n"
    ));
    std::fs::write(&path, text)?;
    let users = Users::load(&path)?;
    assert!(users.get("ana").unwrap().scram.is_some());
    assert!(users.get("old").unwrap().scram.is_none());

    let server = Server::bind(ServeOptions {
        lake_root: root,
        storage_options: HashMap::new(),
        catalog: CatalogOptions::default(),
        listen: "127.0.0.1:0".parse()?,
        users,
        dev_trust: false,
        tls: None,
    })
    .await?;
    let port = server.local_addr().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // psql: the right password logs in; a wrong one, or an unknown user, is refused alike.
    assert_eq!(psql(port, "ana", "ana-Secret-1").await, Ok("1".to_owned()));
    assert_eq!(psql(port, "old", "old-Secret-2").await, Ok("1".to_owned()));
    assert_eq!(psql(port, "uma", UMA_PASSWORD).await, Ok("1".to_owned()));
    for (user, password) in [
        ("ana", "ana-Secret-X"),
        ("old", "old-Secret-X"),
        ("nobody", "ana-Secret-1"),
    ] {
        let e = psql(port, user, password).await.unwrap_err();
        assert!(
            e.contains(&format!(
                "Password authentication failed for user \"{user}\""
            )),
            "{user}: {e}"
        );
    }

    // libpq's require_auth shows which method the server asked for.
    if have("psycopg", "python3", &["-c", "import psycopg"]) {
        assert_eq!(
            psycopg(port, "ana", "ana-Secret-1", "scram-sha-256").await,
            "ok"
        );
        let e = psycopg(port, "ana", "ana-Secret-1", "password").await;
        assert!(
            e.contains("server requested SASL authentication"),
            "ana is asked for SCRAM, not cleartext: {e}"
        );
        let e = psycopg(port, "ana", "wrong", "scram-sha-256").await;
        assert!(e.contains("Password authentication failed"), "{e}");
        // An unknown user gets a SCRAM exchange too (nothing tells it apart).
        let e = psycopg(port, "nobody", "x", "scram-sha-256").await;
        assert!(e.contains("Password authentication failed"), "{e}");
        // The old file's user: cleartext, as before.
        assert_eq!(psycopg(port, "old", "old-Secret-2", "password").await, "ok");
        let e = psycopg(port, "old", "old-Secret-2", "scram-sha-256").await;
        assert!(
            e.contains("server requested a cleartext password"),
            "old is asked for a cleartext password: {e}"
        );
    }

    // Malformed SASL messages on the wire: a clean 08P01 refusal naming the fault, and the
    // server goes on serving.
    let mut short = b"SCRAM-SHA-256\0".to_vec();
    short.extend_from_slice(&[0, 0]);
    assert_eq!(raw_sasl_refusal(port, "ana", &short).await?.0, "08P01");
    let mut plus = b"SCRAM-SHA-256\0".to_vec();
    let first = b"p=tls-server-end-point,,n=,r=abc";
    plus.extend_from_slice(&i32::try_from(first.len())?.to_be_bytes());
    plus.extend_from_slice(first);
    let (code, message) = raw_sasl_refusal(port, "nobody", &plus).await?;
    assert_eq!(code, "08P01");
    assert!(message.contains("channel binding"), "{message}");
    assert_eq!(psql(port, "ana", "ana-Secret-1").await, Ok("1".to_owned()));

    let _ = stop.send(());
    serving.await??;
    Ok(())
}

/// Sends a startup message for `user`, expects the SCRAM-SHA-256 offer, answers with the
/// SASLInitialResponse `body` and returns the SQLSTATE and message of the error that follows.
async fn raw_sasl_refusal(port: u16, user: &str, body: &[u8]) -> Result<(String, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut startup = 196_608_i32.to_be_bytes().to_vec();
    startup.extend_from_slice(format!("user\0{user}\0database\0retain\0\0").as_bytes());
    let len = i32::try_from(startup.len() + 4)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&startup).await?;
    let read = async |stream: &mut tokio::net::TcpStream| -> Result<(u8, Vec<u8>)> {
        let kind = stream.read_u8().await?;
        let len = usize::try_from(stream.read_i32().await?)? - 4;
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await?;
        Ok((kind, body))
    };
    let (kind, offer) = read(&mut stream).await?;
    assert_eq!(kind, b'R');
    assert_eq!(offer[..4], 10_i32.to_be_bytes(), "AuthenticationSASL");
    assert!(offer.windows(13).any(|w| w == b"SCRAM-SHA-256"));
    stream.write_all(b"p").await?;
    stream
        .write_all(&i32::try_from(body.len() + 4)?.to_be_bytes())
        .await?;
    stream.write_all(body).await?;
    let (kind, error) = read(&mut stream).await?;
    assert_eq!(kind, b'E', "an ErrorResponse");
    let field = |tag: u8| {
        error
            .split(|b| *b == 0)
            .find(|f| f.first() == Some(&tag))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    };
    Ok((field(b'C'), field(b'M')))
}

/// Over TLS, logins are bound to the server's certificate (SCRAM-SHA-256-PLUS,
/// `tls-server-end-point`) as libpq computes it: SHA-256 of an RSA/SHA-256 certificate, SHA-384
/// of an ECDSA/SHA-384 one. An Ed25519 certificate has no such hash, so no binding is offered
/// (as PostgreSQL), and neither is it without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_over_tls_are_bound_to_the_certificate() -> Result<()> {
    if !have("psql (postgresql-client)", "psql", &["--version"])
        || !have("openssl", "openssl", &["version"])
    {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let root = lake(dir.path()).await?;
    let mut users = Users::default();
    users.set("ana", Role::Analyst, &Password::new("ana-Secret-1"))?;
    for (name, key, binds) in [
        ("rsa", &["-newkey", "rsa:2048", "-sha256"][..], true),
        (
            "p384",
            &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-sha384",
            ],
            true,
        ),
        ("ed25519", &["-newkey", "ed25519"], false),
    ] {
        let (cert, key_file) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        let o = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ])
            .args(key)
            .arg("-keyout")
            .arg(&key_file)
            .arg("-out")
            .arg(&cert)
            .output()?;
        assert!(
            o.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let server = Server::bind(ServeOptions {
            lake_root: root.clone(),
            storage_options: HashMap::new(),
            catalog: CatalogOptions::default(),
            listen: "127.0.0.1:0".parse()?,
            users: users.clone(),
            dev_trust: false,
            tls: Some(retain_serve::TlsFiles {
                cert,
                key: key_file,
            }),
        })
        .await?;
        let port = server.local_addr().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        let tls = "sslmode=require";
        let bound = "sslmode=require channel_binding=require";
        // libpq's default binds when it is offered; either way the user is in.
        assert_eq!(
            psql_with(port, "ana", "ana-Secret-1", tls).await,
            Ok("1".to_owned()),
            "{name}"
        );
        let required = psql_with(port, "ana", "ana-Secret-1", bound).await;
        if binds {
            assert_eq!(required, Ok("1".to_owned()), "{name}");
            // A wrong password or an unknown user, bound: refused as ever.
            for (user, password) in [("ana", "ana-Secret-X"), ("nobody", "ana-Secret-1")] {
                let e = psql_with(port, user, password, bound).await.unwrap_err();
                assert!(
                    e.contains("Password authentication failed"),
                    "{name} {user}: {e}"
                );
            }
        } else {
            let e = required.unwrap_err();
            assert!(e.contains("channel binding"), "{name}: {e}");
        }
        // A client that chooses not to bind, and one without TLS, get plain SCRAM-SHA-256.
        let plain = "sslmode=require channel_binding=disable";
        assert_eq!(
            psql_with(port, "ana", "ana-Secret-1", plain).await,
            Ok("1".to_owned()),
            "{name}"
        );
        assert_eq!(
            psql(port, "ana", "ana-Secret-1").await,
            Ok("1".to_owned()),
            "{name}"
        );
        let e = psql_with(
            port,
            "ana",
            "ana-Secret-1",
            "sslmode=disable channel_binding=require",
        )
        .await
        .unwrap_err();
        assert!(e.contains("channel binding"), "{name}: {e}");

        let _ = stop.send(());
        serving.await??;
    }
    Ok(())
}
