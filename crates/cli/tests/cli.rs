//! The `retain` binary as a user runs it: exit codes, output contracts, errors that name the
//! place, and no PHI in what it prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn retain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retain"))
        .args(args)
        .current_dir(root())
        .env_remove("RETAIN_POLICY")
        .output()
        .expect("run retain")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `retain` binary run in `dir`, with none of the caller's `RETAIN*` variables (each test
/// sets what it means to).
fn retain_in(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_retain"));
    c.args(args).current_dir(dir);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RETAIN") {
            c.env_remove(name);
        }
    }
    c.output().expect("run retain")
}

/// `o`, after checking it succeeded (its output in the failure message).
fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    o
}

/// The JSON `o` printed, after checking it succeeded.
fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn corpus() -> Option<PathBuf> {
    let p = root().join("../shared/data/enron-categorized");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIP: {} not found (CI always has it)", p.display());
        None
    }
}

#[test]
fn check_builtin_and_the_documented_example() {
    let o = retain(&["policy", "check", "builtin", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["version"].as_str().unwrap().starts_with("sha256:"));
    assert!(v["obligations"].as_u64().unwrap() > 60);

    let o = retain(&["policy", "check", "docs/examples/policy.toml"]);
    assert!(
        o.status.success(),
        "the documented example must pass: {}",
        stderr(&o)
    );
    assert!(stdout(&o).starts_with("ok: "), "{}", stdout(&o));
}

#[test]
fn bad_policy_exits_2_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[policy]\nname = \"x\"\n\n[[rule]]\nid = \"r1\"\ncategory = \"clinical\"\npriority = 5\nwhen.subject-regex = [\"(open\"]\n",
    )
    .unwrap();
    let o = retain(&["policy", "check", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("broken.toml:4"), "{err}");
    assert!(err.contains("when.subject-regex[0]"), "{err}");

    let o = retain(&["policy", "check", "/nonexistent/policy.toml"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a policy path that does not exist is bad input: {}",
        stderr(&o)
    );
    let err = stderr(&o);
    assert!(err.contains("/nonexistent/policy.toml"), "{err}");
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the cause is printed once: {err}"
    );
}

#[test]
fn explain_prints_the_documented_json() {
    let o = retain(&[
        "policy",
        "explain",
        "--input",
        "docs/examples/cases/co-minor-clinical.json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["category"], "clinical");
    assert_eq!(v["retain_until"], "2038-03-01");
    assert_eq!(v["governing"], "state.co.hospital");
    for o in v["obligations"].as_array().unwrap() {
        for k in ["id", "citation", "trigger", "until"] {
            assert!(o.get(k).is_some(), "obligation lacks {k}: {o}");
        }
    }

    let o = retain(&[
        "policy",
        "explain",
        "--input",
        "docs/examples/cases/hipaa-policy-superseded.json",
        "--format",
        "text",
    ]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("retain until: 2027-06-30"), "{text}");
    assert!(text.contains("45 CFR 164.316(b)(2)(i)"), "{text}");
}

#[test]
fn explain_reads_stdin_and_refuses_bad_cases() {
    let v = explain_stdin(
        "{\"message\": {\"message_id\": \"m\", \"mailbox\": \"b\", \"sent_at\": \"2020-01-01T00:00:00Z\"},\n \"facts\": {\"category\": \"administrative\"}}",
    );
    assert_eq!(v["retain_until"], "2023-01-01");
    assert_eq!(v["forced"], true);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("case.json");
    std::fs::write(&path, "{\"message\": {\"message_id\": \"m\", \"mailbox\": \"b\"},\n\"events\": [{\"type\": \"superseeded\", \"date\": \"2020-01-01\"}]}").unwrap();
    let o = retain(&["policy", "explain", "--input", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("case.json:2:"), "{err}");
    assert!(err.contains("superseeded"), "{err}");
}

#[test]
fn classify_counts_every_file_of_the_enron_sample() {
    let Some(corpus) = corpus() else { return };
    let o = retain(&[
        "policy",
        "classify",
        corpus.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["messages"], 1702);
    assert_eq!(v["failed"].as_array().unwrap().len(), 0);
    let by_cat: u64 = v["by_category"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(by_cat, 1702);
    let skipped: u64 = v["skipped"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        skipped, 1703,
        "1,702 .cats label files and categories.txt are reported, not hidden"
    );
    assert_eq!(v["custodians"], 60);
    assert_eq!(v["warnings"]["implausible_date"], 13);
}

#[test]
fn classify_a_maildir_without_printing_phi() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("nurse1");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    let secret_subject = "Discharge summary for Jane Roe";
    std::fs::write(
        md.join("cur/1.eml"),
        format!(
            "Message-ID: <a1@mercy.example>\r\nFrom: nurse1@mercy.example\r\nTo: doc@mercy.example\r\nSubject: {secret_subject}\r\nDate: Tue, 05 May 2020 10:00:00 +0000\r\n\r\nPatient MRN 00123456 discharged home.\r\n"
        ),
    )
    .unwrap();
    std::fs::write(md.join("new/2.eml"), "Message-ID: <a2@mercy.example>\r\nSubject: Out of office\r\nDate: Tue, 05 May 2020 11:00:00 +0000\r\n\r\nAway.\r\n").unwrap();
    for format in ["table", "json", "csv"] {
        let o = retain(&[
            "policy",
            "classify",
            md.to_str().unwrap(),
            "--format",
            format,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(all.contains("clinical"), "{all}");
        for phi in [
            secret_subject,
            "00123456",
            "nurse1@mercy.example",
            "Jane Roe",
        ] {
            assert!(!all.contains(phi), "printed PHI {phi:?}: {all}");
        }
    }
    let o = retain(&["policy", "classify", "/nonexistent/mail"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn policy_demo_summarises_as_json() {
    let o = retain(&["policy", "demo", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    let until =
        |name: &str| cases.iter().find(|c| c["case"] == name).unwrap()["retain_until"].clone();
    assert_eq!(until("co-minor-clinical.json"), "2038-03-01");
    assert_eq!(until("hipaa-policy-superseded.json"), "2027-06-30");
    assert_eq!(until("az-minor-whichever-first.json"), "2026-01-01");
    assert_eq!(until("baa-contract-terminated.json"), "2030-12-31");
    assert_eq!(
        until("clinical-no-jurisdiction.json"),
        serde_json::Value::Null
    );
    if corpus().is_some() {
        assert_eq!(v["corpus"]["messages"], 1702);
    }
}

#[test]
fn generate_is_deterministic_and_each_line_explains() {
    let a = retain(&["generate", "--count", "50", "--seed", "9"]);
    let b = retain(&["generate", "--count", "50", "--seed", "9"]);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(a.stdout, b.stdout);
    let text = stdout(&a);
    assert_eq!(text.lines().count(), 50);
    let p = explain_stdin(text.lines().next().unwrap());
    assert!(
        p["category"].is_string() && p["policy_version"].is_string(),
        "{p}"
    );
}

/// `retain policy explain --input -` with `case` on standard input; the JSON it prints.
fn explain_stdin(case: &str) -> serde_json::Value {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_retain"))
        .args(["policy", "explain", "--input", "-"])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(case.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn demo_runs_the_pipeline_and_lands_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_retain"))
        .args(["demo", "-n", "300", "--json", "--timeout-secs", "120"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["produced"], 300);
    assert_eq!(v["landed"], 300);
    assert_eq!(v["distinct_records"], 300);
    let by_cat: i64 = v["by_category"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_i64().unwrap())
        .sum();
    assert_eq!(by_cat, 300);
    assert!(dir.path().join("lake/records/_delta_log").is_dir());
    assert!(!stderr(&o).contains("ERROR"), "{}", stderr(&o));
    other_engine_reads_the_same_table(&dir.path().join("lake/records"), &v);
    audit_verifies_then_catches_a_tampered_entry(&dir.path().join("lake"), 300);
    // A second run replaces the demo lake instead of adding to it.
    let o = Command::new(env!("CARGO_BIN_EXE_retain"))
        .args(["demo", "-n", "100", "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["landed"], 100);
}

#[test]
fn demo_refuses_a_lake_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    std::fs::write(dir.path().join("lake/keep.txt"), "mine").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_retain"))
        .args(["demo", "-n", "10"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(dir.path().join("lake/keep.txt").exists());
}

/// `retain audit verify` on a lake whose scheduler landed `rows` rows: the chain is intact, one
/// `records_landed` entry per landing (their rows add up, no version twice), a `policy_loaded`
/// entry; after a Delta UPDATE of one entry's details, verify exits 1 naming its seq.
fn audit_verifies_then_catches_a_tampered_entry(lake: &Path, rows: i64) {
    let lake = lake.to_str().unwrap();
    let o = retain(&["audit", "verify", "--lake", lake, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["intact"], true, "{v}");
    assert!(v["actions"]["policy_loaded"].as_u64() >= Some(1), "{v}");
    let head = v["head"].as_str().unwrap().to_owned();
    let o = retain(&["audit", "show", "--lake", lake, "--limit", "0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let landed: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "records_landed")
        .collect();
    assert_eq!(
        v["actions"]["records_landed"].as_u64(),
        Some(landed.len() as u64)
    );
    let sum: i64 = landed
        .iter()
        .map(|e| e["details"]["rows"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, rows, "rows in the audit trail = rows landed");
    let mut versions: Vec<i64> = landed
        .iter()
        .map(|e| e["table_version"].as_i64().unwrap())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), landed.len(), "no landing audited twice");
    let text = retain(&["audit", "verify", "--lake", lake]);
    assert!(
        stdout(&text).contains(&format!("head: {head}")),
        "{}",
        stdout(&text)
    );

    // Tamper: someone with write access to the storage rewrites one entry's details.
    let seq = landed[0]["seq"].as_i64().unwrap();
    let table = format!("{lake}/audit");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let t = retain_lake::AuditTable::open_or_create(&table, Default::default())
            .await
            .unwrap();
        t.delta_table()
            .clone()
            .update()
            .with_predicate(format!("seq = {seq}"))
            .with_update("details", r#"'{"rows":1}'"#)
            .await
            .unwrap();
    });
    let o = retain(&["audit", "verify", "--lake", lake]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains(&format!("BROKEN at seq {seq}: entry altered")),
        "{}",
        stdout(&o)
    );
    let o = retain(&["audit", "verify", "--table", &table, "--expect-head", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = retain(&["audit", "verify", "--lake", "/nonexistent/lake"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = retain(&["audit", "show", "--table", &format!("{lake}/records")]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "not an audit table: {}",
        stderr(&o)
    );
}

/// Python `deltalake` (delta-rs, installed by .ci/run) reads the demo's table: same row count,
/// same counts per category, every record key once, and the same values as `retain sql` for a
/// sample of 25 rows.
fn other_engine_reads_the_same_table(table: &Path, demo: &serde_json::Value) {
    let have = Command::new("python3")
        .args(["-c", "import deltalake"])
        .output();
    if !have.map(|o| o.status.success()).unwrap_or(false) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Python deltalake (.ci/run installs it)"
        );
        eprintln!("SKIP: Python deltalake is not installed (pip install deltalake pyarrow)");
        return;
    }
    // os._exit: deltalake 1.6's runtime aborts during interpreter teardown.
    let script = r#"
import collections, json, os, sys
import deltalake
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()
keys = t.column("record_key").to_pylist()
cols = ["record_key", "category", "retention_status", "retain_until", "governing",
        "size_bytes", "patient_refs"]
rows = sorted(zip(*[t.column(c).to_pylist() for c in cols]))[:25]
sample = [dict(zip(cols, r)) for r in rows]
for r in sample:
    r["retain_until"] = r["retain_until"].isoformat() if r["retain_until"] else None
print(json.dumps({"rows": t.num_rows, "distinct": len(set(keys)),
                  "by_category": collections.Counter(t.column("category").to_pylist()),
                  "sample": sample}))
sys.stdout.flush()
os._exit(0)
"#;
    let o = Command::new("python3")
        .args(["-c", script, table.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "python: {}", stderr(&o));
    let py: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(py["rows"], demo["landed"]);
    assert_eq!(py["distinct"], demo["distinct_records"]);
    for pair in demo["by_category"].as_array().unwrap() {
        let category = pair[0].as_str().unwrap();
        assert_eq!(py["by_category"][category], pair[1], "category {category}");
    }
    // The same rows through `retain sql` (JSON lines).
    let lake = table.parent().unwrap().to_str().unwrap();
    let o = retain(&[
        "sql",
        "--lake",
        lake,
        "--format",
        "json",
        "-c",
        "SELECT record_key, category, retention_status, CAST(retain_until AS VARCHAR) AS retain_until, \
         governing, size_bytes, patient_refs FROM records ORDER BY record_key LIMIT 25",
    ]);
    assert!(o.status.success(), "retain sql: {}", stderr(&o));
    let ours: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let theirs = py["sample"].as_array().unwrap();
    assert_eq!(ours.len(), 25);
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        for column in [
            "record_key",
            "category",
            "retention_status",
            "retain_until",
            "governing",
            "size_bytes",
            "patient_refs",
        ] {
            assert_eq!(a[column], b[column], "{column} of {}", b["record_key"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `retain run`: the stages as processes, on an embedded broker in the test process.

mod run {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use retain_broker::EmbeddedBroker;
    use retain_codec::{Framing, encode_mail_message};
    use retain_generate::Generator;
    use retain_lake::RecordsTable;
    use retain_lake::deltalake::arrow::array::AsArray;
    use retain_lake::deltalake::arrow::datatypes::Int64Type;
    use retain_lake::deltalake::datafusion::prelude::SessionContext;

    use super::{root, stderr};

    /// A `retain run` child process: killed (SIGKILL) and reaped on drop, so a failing test
    /// leaves nothing running.
    pub(super) struct Stage {
        name: String,
        child: Child,
        log: PathBuf,
    }

    impl Stage {
        pub(super) fn start(name: &str, stage: &str, env: &Env) -> Stage {
            Stage::start_with(name, stage, env, &[])
        }

        /// [`start`](Self::start) with further environment variables.
        fn start_with(name: &str, stage: &str, env: &Env, vars: &[(&str, &str)]) -> Stage {
            let log = env.dir.join(format!("{name}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let err = out.try_clone().unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_retain"))
                .args(["run", stage, "--config"])
                .arg(&env.config)
                .envs(vars.iter().copied())
                .env("RETAIN_BROKERS", &env.brokers)
                .env("RETAIN_LAKE", &env.table)
                .env("RETAIN_LOG", "warn,librdkafka=error")
                .env_remove("RETAIN_POLICY")
                .env_remove("RETAIN_GROUP")
                .current_dir(root())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap();
            Stage {
                name: name.to_owned(),
                child,
                log,
            }
        }

        /// `kill -9`: no graceful stop, no leaving the group, buffers lost.
        fn kill9(mut self) {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }

        /// SIGTERM, then waits (up to 30 s) for the exit; returns the code and the output.
        pub(super) fn terminate(mut self) -> (Option<i32>, String) {
            let pid = self.child.id().to_string();
            let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(ok.success());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return (status.code(), std::fs::read_to_string(&self.log).unwrap());
                }
                assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        /// Fails the test if the process ended by itself.
        pub(super) fn assert_running(&mut self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status}:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }
    }

    impl Drop for Stage {
        fn drop(&mut self) {
            if self.child.try_wait().ok().flatten().is_none() {
                _ = self.child.kill();
                _ = self.child.wait();
            }
        }
    }

    /// A broker with the topics, a table location and a configuration file.
    pub(super) struct Env {
        pub(super) dir: PathBuf,
        pub(super) brokers: String,
        pub(super) table: String,
        pub(super) config: PathBuf,
    }

    pub(super) async fn setup(dir: &Path, max_rows: usize) -> (EmbeddedBroker, Env) {
        let broker = EmbeddedBroker::start(&dir.join("broker")).await.unwrap();
        for (topic, partitions) in [
            ("retain.mail", 3),
            ("retain.classified", 3),
            ("retain.mail.dlq", 1),
            ("retain.classified.dlq", 1),
            // `retain run all` runs the events stage too.
            ("retain.retention-events", 2),
            ("retain.retention-events.dlq", 1),
        ] {
            broker.create_topic(topic, partitions).await.unwrap();
        }
        let config = dir.join("retain.toml");
        // Brokers and lake come from the environment (they override the file's values); a short
        // session timeout so a killed consumer's partitions move on quickly.
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbootstrap-servers = \"127.0.0.1:1\"\n\n[kafka.settings]\n\
                 session.timeout.ms = 3000\nheartbeat.interval.ms = 500\n\n\
                 [classifier]\nmax-in-flight = 100\n\n\
                 [lake]\nlocation = \"/nonexistent/overridden\"\n\n\
                 [scheduler]\nmax-rows = {max_rows}\nmax-latency = \"200ms\"\n"
            ),
        )
        .unwrap();
        let env = Env {
            dir: dir.to_owned(),
            brokers: broker.bootstrap_servers(),
            table: dir.join("records").to_str().unwrap().to_owned(),
            config,
        };
        (broker, env)
    }

    /// Produces generated messages `from..to` of seed 7 (Avro, keyed by message id).
    async fn produce(brokers: &str, from: usize, to: usize) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let mut deliveries = Vec::new();
        for g in Generator::new(7).skip(from).take(to - from) {
            let bytes = encode_mail_message(&g.message, Framing::SingleObject).unwrap();
            let record = FutureRecord::to("retain.mail")
                .key(g.message.message_id.as_bytes())
                .payload(&bytes);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for d in deliveries {
            d.await.unwrap().map_err(|(e, _)| e).unwrap();
        }
    }

    pub(super) async fn scalar(table: &str, query: &str) -> i64 {
        let t = RecordsTable::open_or_create(table, Default::default())
            .await
            .unwrap();
        let ctx = SessionContext::new();
        t.delta_table()
            .update_datafusion_session(&ctx.state())
            .unwrap();
        ctx.register_table("records", t.delta_table().table_provider().await.unwrap())
            .unwrap();
        let batches = ctx.sql(query).await.unwrap().collect().await.unwrap();
        batches[0].column(0).as_primitive::<Int64Type>().value(0)
    }

    /// Records in `retain.classified` (the sum of its partitions' high watermarks).
    async fn classified(brokers: &str) -> i64 {
        let brokers = brokers.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .create()
                .unwrap();
            (0..3)
                .map(|p| {
                    consumer
                        .fetch_watermarks("retain.classified", p, Duration::from_secs(10))
                        .unwrap()
                        .1
                })
                .sum()
        })
        .await
        .unwrap()
    }

    /// Rows in the table; 0 until the scheduler has created it.
    async fn rows(table: &str) -> i64 {
        if !Path::new(table).join("_delta_log").is_dir() {
            return 0;
        }
        scalar(table, "SELECT count(*) FROM records").await
    }

    async fn distinct(table: &str) -> i64 {
        scalar(table, "SELECT count(DISTINCT record_key) FROM records").await
    }

    /// Polls until the table holds at least `n` rows; panics after `timeout`.
    pub(super) async fn wait_rows(
        table: &str,
        n: i64,
        timeout: Duration,
        stages: &mut [&mut Stage],
    ) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let have = rows(table).await;
            if have >= n {
                return have;
            }
            for s in stages.iter_mut() {
                s.assert_running();
            }
            assert!(
                Instant::now() < deadline,
                "only {have} of {n} rows after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A pseudo-random number in `lo..hi` (the clock's nanoseconds; printed for reruns).
    fn pick(lo: i64, hi: i64) -> i64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as i64;
        lo + nanos % (hi - lo)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sigkilled_stages_still_land_every_message_exactly_once() {
        const N: i64 = 3_000;
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let (broker, env) = setup(dir.path(), 200).await;
        produce(&env.brokers, 0, N as usize).await;

        let mut classifier = Stage::start("classifier-1", "classifier", &env);
        let mut scheduler = Stage::start("scheduler-1", "scheduler", &env);
        // The classifier dies as soon as it has produced something (mid-chunk or just after a
        // commit): what it had not committed is classified again, and dropped by lineage.
        let deadline = Instant::now() + Duration::from_secs(30);
        let at = loop {
            let n = classified(&env.brokers).await;
            if n > 0 {
                break n;
            }
            classifier.assert_running();
            assert!(Instant::now() < deadline, "nothing classified after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        classifier.kill9();
        eprintln!("killed the classifier at {at} classified records");
        classifier = Stage::start("classifier-2", "classifier", &env);
        let kills = [pick(200, 700), pick(1_000, 1_600), pick(1_900, 2_500)];
        eprintln!("scheduler kills at {kills:?} rows");
        for (i, at) in kills.into_iter().enumerate() {
            let at_kill = wait_rows(
                &env.table,
                at,
                Duration::from_secs(60),
                &mut [&mut classifier, &mut scheduler],
            )
            .await;
            scheduler.kill9();
            eprintln!("killed scheduler {} at {at_kill} rows", i + 1);
            scheduler = Stage::start(&format!("scheduler-{}", i + 2), "scheduler", &env);
        }
        let landed = wait_rows(
            &env.table,
            N,
            Duration::from_secs(120),
            &mut [&mut classifier, &mut scheduler],
        )
        .await;
        // Anything a replay would add lands within a few latencies; give it the chance.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let (code, out) = scheduler.terminate();
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("scheduler: "), "stats on exit: {out}");
        let (code, out) = classifier.terminate();
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("classifier: "), "stats on exit: {out}");
        assert_eq!(landed, N);
        assert_eq!(rows(&env.table).await, N);
        assert_eq!(distinct(&env.table).await, N);
        // Landings whose scheduler was killed before their audit append were backfilled on the
        // next start: every row is in the audit trail once.
        let o = super::retain(&[
            "audit",
            "show",
            "--lake",
            env.dir.to_str().unwrap(),
            "--limit",
            "0",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        let landed: Vec<&serde_json::Value> = entries
            .iter()
            .filter(|e| e["action"] == "records_landed")
            .collect();
        let audited: i64 = landed
            .iter()
            .map(|e| e["details"]["rows"].as_i64().unwrap())
            .sum();
        assert_eq!(audited, N, "rows in the audit trail");
        let o = super::retain(&["audit", "verify", "--lake", env.dir.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(0), "{}", super::stdout(&o));
        let replayed = classified(&env.brokers).await - N;
        broker.shutdown().await.unwrap();
        eprintln!(
            "{N} rows exactly once after 4 kills ({replayed} classified replays dropped) in {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_schedulers_in_one_group_split_the_partitions() {
        const N: i64 = 1_500;
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let (broker, env) = setup(dir.path(), 100).await;
        // Scheduler a serves /metrics, set through RETAIN__ variables (librdkafka statistics
        // every 500 ms so the lag gauge is filled quickly).
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut a = Stage::start_with(
            "scheduler-a",
            "scheduler",
            &env,
            &[
                ("RETAIN__METRICS__LISTEN", &listen),
                ("RETAIN__KAFKA__SETTINGS__STATISTICS_INTERVAL_MS", "500"),
            ],
        );
        let mut b = Stage::start("scheduler-b", "scheduler", &env);
        let mut classifier = Stage::start("classifier", "classifier", &env);
        produce(&env.brokers, 0, N as usize).await;
        wait_rows(
            &env.table,
            N,
            Duration::from_secs(60),
            &mut [&mut a, &mut b, &mut classifier],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let metrics = http_get(&listen, "/metrics");
        let mut landed = Vec::new();
        for s in [a, b] {
            let (code, out) = s.terminate();
            assert_eq!(code, Some(0), "{out}");
            let n: i64 = out
                .split(" rows landed")
                .next()
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no stats in {out}"));
            landed.push(n);
        }
        drop(classifier);
        assert_eq!(rows(&env.table).await, N);
        assert_eq!(distinct(&env.table).await, N);
        assert_eq!(landed.iter().sum::<i64>(), N, "{landed:?}");
        assert!(
            landed.iter().all(|&n| n > 0),
            "both schedulers landed rows: {landed:?}"
        );
        // What a's /metrics said before it stopped is what it printed when it stopped.
        let sample = |name: &str| -> Option<i64> {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        };
        assert_eq!(
            sample("retain_landed_rows_total{stage=\"scheduler\"}"),
            Some(landed[0]),
            "{metrics}"
        );
        assert_eq!(
            sample("retain_buffered_rows{stage=\"scheduler\"}"),
            Some(0),
            "{metrics}"
        );
        assert!(sample("retain_flush_duration_seconds_count{stage=\"scheduler\"}").unwrap() >= 1);
        assert!(
            metrics.contains(
                "retain_consumer_lag{stage=\"scheduler\",topic=\"retain.classified\",partition="
            ),
            "{metrics}"
        );
        broker.shutdown().await.unwrap();
        eprintln!(
            "two schedulers landed {landed:?} in {:?}",
            started.elapsed()
        );
    }

    /// A loopback port nothing listens on (a tiny race with other processes is accepted).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// The body of `GET path` from `addr` over HTTP/1.1; panics on any other status than 200.
    fn http_get(addr: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        body.to_owned()
    }

    #[test]
    fn a_bad_config_file_exits_2_naming_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retain.toml");
        std::fs::write(
            &path,
            "[kafka]\nbootstrap-servers = \"localhost:9092\"\n\n[scheduler]\nmax-latency-ms = 5000\n",
        )
        .unwrap();
        let o = super::retain(&["run", "scheduler", "--config", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("retain.toml:5"), "{err}");
        assert!(err.contains("max-latency-ms"), "{err}");

        std::fs::write(&path, "[kafka.settings]\n\"sasl.password\" = \"hunter2\"\n").unwrap();
        let o = super::retain(&["run", "all", "--config", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("bootstrap-servers"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// `retain import`: the Enron sample to a topic on an embedded broker in the test process.

mod import {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    use retain_broker::EmbeddedBroker;
    use retain_codec::{SchemaRegistry, decode_mail_message};

    use super::{corpus, retain, stderr};

    fn sum(v: &serde_json::Value) -> u64 {
        v.as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum()
    }

    fn corpus_or_skip() -> Option<std::path::PathBuf> {
        let c = corpus();
        assert!(
            c.is_some() || std::env::var_os("CI").is_none(),
            "CI must have the Enron sample"
        );
        c
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn imports_the_enron_sample_once_per_message() {
        let Some(corpus) = corpus_or_skip() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::start(&dir.path().join("broker"))
            .await
            .unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let topic = format!("import.test.{nanos}");
        broker.create_topic(&topic, 3).await.unwrap();
        let brokers = broker.bootstrap_servers();

        let args = [
            "import".to_owned(),
            corpus.to_str().unwrap().to_owned(),
            "--brokers".to_owned(),
            brokers.clone(),
            "--topic".to_owned(),
            topic.clone(),
            "--format".to_owned(),
            "json".to_owned(),
        ];
        let o = tokio::task::spawn_blocking(move || {
            retain(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["produced"], 1702, "{v}");
        assert_eq!(v["messages"], 1702);
        assert_eq!(sum(&v["skipped"]), 1703);
        assert_eq!(v["failed"].as_array().unwrap().len(), 0, "{v}");
        assert_eq!(v["delivery_failed"], 0);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains('@'), "no addresses or message ids: {out}");
        eprintln!(
            "imported {} messages at {:.0} messages/s",
            v["produced"],
            v["messages_per_second"].as_f64().unwrap()
        );

        // Read it back: every key arrives, and the payloads are MailMessages with that id.
        let keys = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "import-test")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in 0..3 {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&tpl).unwrap();
            let registry = SchemaRegistry::new();
            let mut keys: BTreeMap<String, usize> = BTreeMap::new();
            let mut decoded = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while keys.len() < 1702 {
                assert!(
                    Instant::now() < deadline,
                    "only {} distinct keys after 60 s",
                    keys.len()
                );
                let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let m = m.unwrap();
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                if decoded < 25 {
                    let message = decode_mail_message(m.payload().unwrap(), &registry).unwrap();
                    assert_eq!(message.message_id, key);
                    assert_eq!(message.tenant, "default");
                    decoded += 1;
                }
                *keys.entry(key).or_default() += 1;
            }
            keys
        })
        .await
        .unwrap();
        assert_eq!(keys.len(), 1702);

        // A topic that does not exist is a bad argument, not 1,702 delivery timeouts.
        let brokers = broker.bootstrap_servers();
        let o = tokio::task::spawn_blocking(move || {
            retain(&[
                "import",
                "docs",
                "--brokers",
                &brokers,
                "--topic",
                "no.such.topic",
            ])
        })
        .await
        .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("no.such.topic"), "{}", stderr(&o));
        broker.shutdown().await.unwrap();
    }

    #[test]
    fn dry_run_needs_no_brokers_and_bad_arguments_exit_2() {
        if let Some(corpus) = corpus_or_skip() {
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_retain"))
                .args([
                    "import",
                    corpus.to_str().unwrap(),
                    "--dry-run",
                    "--format",
                    "json",
                ])
                .current_dir(super::root())
                .env_remove("RETAIN_BROKERS")
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["messages"], 1702);
            assert_eq!(v["produced"], 0);
            assert_eq!(sum(&v["skipped"]), 1703);
            assert_eq!(v["dry_run"], true);
        }
        let no_brokers = std::process::Command::new(env!("CARGO_BIN_EXE_retain"))
            .args(["import", "docs"])
            .current_dir(super::root())
            .env_remove("RETAIN_BROKERS")
            .output()
            .unwrap();
        assert_eq!(no_brokers.status.code(), Some(2), "{}", stderr(&no_brokers));
        let o = retain(&["import", "/nonexistent/mail", "--dry-run"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let o = retain(&["import", "docs", "--dry-run", "--framing", "confluent"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    }
}

// ---------------------------------------------------------------------------------------------
// `retain hold`: on a small demo lake.

mod hold {
    use std::process::Command;

    use super::{json, retain_in, stderr};

    #[test]
    fn holds_preview_create_list_release_and_audit_on_the_demo_lake() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let demo = json(&retain_in(d, &["demo", "-n", "200", "--json"]));
        let clinical = demo["by_category"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == "clinical")
            .map(|p| p[1].as_u64().unwrap())
            .expect("the demo lands clinical mail");

        // A lake root without a records table is refused, and nothing is created there.
        let o = retain_in(d, &["hold", "list", "--lake", "elsewhere"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("no records table"), "{}", stderr(&o));
        assert!(!d.join("elsewhere").exists());

        // Preview: what a category hold catches equals what the demo landed in that category.
        let p = json(&retain_in(
            d,
            &[
                "hold",
                "preview",
                "--category",
                "clinical",
                "--json",
                "--sample",
                "3",
            ],
        ));
        assert_eq!(p["records"].as_u64(), Some(clinical));
        assert_eq!(p["by_category"]["clinical"].as_u64(), Some(clinical));
        assert_eq!(
            p["sample"].as_array().unwrap().len(),
            3.min(clinical as usize)
        );

        let created = json(&retain_in(
            d,
            &[
                "hold",
                "create",
                "--matter",
                "Doe v. Clinic",
                "--reason",
                "complaint served",
                "--by",
                "counsel",
                "--category",
                "clinical",
                "--json",
            ],
        ));
        assert_eq!(created["records_covered_now"].as_u64(), Some(clinical));
        let id = created["hold"]["id"].as_str().unwrap().to_owned();
        let listed = json(&retain_in(d, &["hold", "list", "--json"]));
        assert_eq!(listed.as_array().unwrap().len(), 1);
        assert_eq!(listed[0]["status"], "active");

        // Disposal under the hold: plan -> approve (not the planner) -> dry run -> for real.
        let today = chrono::Utc::now().date_naive().to_string();
        let plan = json(&retain_in(
            d,
            &[
                "dispose",
                "plan",
                "--as-of",
                &today,
                "--by",
                "records.manager",
                "--json",
            ],
        ));
        let manifest = plan["manifest"].as_str().unwrap().to_owned();
        let due = plan["records"].as_u64().unwrap();
        assert!(due > 0, "the demo's old mail is due: {plan}");
        assert_eq!(
            plan["by_category"].get("clinical"),
            None,
            "held records are never planned"
        );
        let o = retain_in(
            d,
            &["dispose", "approve", &manifest, "--by", "records.manager"],
        );
        assert_eq!(
            o.status.code(),
            Some(2),
            "the planner cannot approve: {}",
            stderr(&o)
        );
        json(&retain_in(
            d,
            &[
                "dispose",
                "approve",
                &manifest,
                "--by",
                "compliance",
                "--json",
            ],
        ));
        let dry = json(&retain_in(
            d,
            &["dispose", "execute", &manifest, "--by", "cron", "--json"],
        ));
        assert_eq!(dry["dry_run"], true);
        let all = ["hold", "preview", "--sql", "TRUE", "--json"];
        assert_eq!(json(&retain_in(d, &all))["records"].as_u64(), Some(200));
        // A real run tells the mail system: without brokers it is refused unless told not to.
        let o = retain_in(
            d,
            &[
                "dispose",
                "execute",
                &manifest,
                "--by",
                "cron",
                "--for-real",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--no-commands"), "{}", stderr(&o));
        assert_eq!(json(&retain_in(d, &all))["records"].as_u64(), Some(200));
        let done = json(&retain_in(
            d,
            &[
                "dispose",
                "execute",
                &manifest,
                "--by",
                "cron",
                "--for-real",
                "--no-commands",
                "--grace",
                "0s",
                "--certificate-dir",
                "certs",
                "--json",
            ],
        ));
        let cert = &done["certificate"];
        assert_eq!(cert["disposed"].as_u64(), Some(due));
        assert_eq!(cert["approved_by"], "compliance");
        assert!(!cert["files_removed"].as_array().unwrap().is_empty());
        for f in cert["files_removed"].as_array().unwrap() {
            assert!(!d.join("lake/records").join(f.as_str().unwrap()).exists());
        }
        assert!(d.join(format!("certs/{manifest}.md")).is_file());
        assert_eq!(
            json(&retain_in(d, &all))["records"].as_u64(),
            Some(200 - due)
        );
        let p = json(&retain_in(
            d,
            &["hold", "preview", "--category", "clinical", "--json"],
        ));
        assert_eq!(
            p["records"].as_u64(),
            Some(clinical),
            "every held record survived"
        );
        let o = retain_in(
            d,
            &[
                "dispose",
                "execute",
                &manifest,
                "--by",
                "cron",
                "--for-real",
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(3),
            "nothing left to do: {}",
            stderr(&o)
        );

        // Release: refused (exit 2) without an approver other than the creator.
        let o = retain_in(
            d,
            &[
                "hold",
                "release",
                &id,
                "--justification",
                "settled",
                "--approved-by",
                "Counsel",
                "--by",
                "paralegal",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("creator"), "{}", stderr(&o));
        let o = retain_in(
            d,
            &[
                "hold", "create", "--matter", "m", "--reason", "r", "--by", "x",
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(2),
            "an empty scope is refused: {}",
            stderr(&o)
        );
        let released = json(&retain_in(
            d,
            &[
                "hold",
                "release",
                &id,
                "--justification",
                "settled",
                "--approved-by",
                "general.counsel",
                "--by",
                "counsel",
                "--json",
            ],
        ));
        assert_eq!(released["status"], "released");
        assert_eq!(
            json(&retain_in(d, &["hold", "list", "--json"])),
            serde_json::json!([])
        );
        assert_eq!(
            json(&retain_in(d, &["hold", "list", "--all", "--json"]))
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // Every step is in the audit trail, and the chain verifies.
        let o = retain_in(d, &["audit", "verify"]);
        assert!(o.status.success(), "{}{}", super::stdout(&o), stderr(&o));
        let out = super::stdout(&o);
        for action in [
            "hold_created 1",
            "hold_released 1",
            "disposal_planned 1",
            "disposal_approved 1",
            "disposal_executed 1",
        ] {
            assert!(out.contains(action), "{action} in {out}");
        }
    }

    /// `retain lake optimize --cluster` on a demo lake: the rows are the same (count, keys and
    /// dates), the files are fewer, the disposal plan is unchanged, and the rewrite is audited.
    #[test]
    fn optimize_clusters_without_changing_a_row_and_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        json(&retain_in(d, &["demo", "-n", "300", "--json"]));
        let today = chrono::Utc::now().date_naive().to_string();
        let snapshot = |d: &std::path::Path| {
            let o = retain_in(
                d,
                &[
                    "sql",
                    "--format",
                    "csv",
                    "-c",
                    "SELECT record_key, retain_until, retention_status FROM records ORDER BY record_key",
                ],
            );
            assert!(o.status.success(), "{}", stderr(&o));
            String::from_utf8(o.stdout).unwrap()
        };
        let before = snapshot(d);
        let plan = || {
            json(&retain_in(
                d,
                &["dispose", "plan", "--as-of", &today, "--by", "rm", "--json"],
            ))["records"]
                .as_u64()
        };
        let due = plan();
        assert!(due > Some(0));
        let files = |d: &std::path::Path| {
            std::fs::read_dir(d.join("lake/records"))
                .unwrap()
                .filter(|f| {
                    f.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|e| e == "parquet")
                })
                .count()
        };
        let files_before = files(d);
        let done = json(&retain_in(
            d,
            &["lake", "optimize", "--cluster", "--by", "ops", "--json"],
        ));
        assert_eq!(
            done["files_removed"].as_u64(),
            Some(files_before as u64),
            "{done}"
        );
        assert_eq!(done["files_added"].as_u64(), Some(1), "{done}");
        assert_eq!(snapshot(d), before, "the same rows, keys and dates");
        assert_eq!(plan(), due, "the same records are due");
        let o = retain_in(d, &["audit", "verify", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["intact"], true, "{v}");
        assert_eq!(v["actions"]["records_optimized"].as_u64(), Some(1), "{v}");
        let o = retain_in(d, &["lake", "optimize", "--target-size", "big"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--target-size"), "{}", stderr(&o));
    }

    /// `retain dispose execute` killed after the delete and after the tombstones (a failpoint
    /// aborts the process, as `kill -9` would): the next run finishes the job, every due record
    /// is disposed of once, with one tombstone each, and a third run has nothing to do.
    #[test]
    fn a_disposal_killed_half_way_is_finished_by_the_next_run() {
        for point in ["disposal.after_delete", "disposal.after_tombstones"] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            json(&retain_in(d, &["demo", "-n", "200", "--json"]));
            let today = chrono::Utc::now().date_naive().to_string();
            let plan = json(&retain_in(
                d,
                &["dispose", "plan", "--as-of", &today, "--by", "rm", "--json"],
            ));
            let manifest = plan["manifest"].as_str().unwrap().to_owned();
            let due = plan["records"].as_u64().unwrap();
            assert!(due > 0);
            json(&retain_in(
                d,
                &["dispose", "approve", &manifest, "--by", "co", "--json"],
            ));
            let execute = [
                "dispose",
                "execute",
                &manifest,
                "--by",
                "cron",
                "--for-real",
                "--no-commands",
                "--grace",
                "0s",
                "--json",
            ];
            let crashed = Command::new(env!("CARGO_BIN_EXE_retain"))
                .args(execute)
                .current_dir(d)
                .env_remove("RETAIN_LAKE_ROOT")
                .env(retain_govern::FAILPOINT_VAR, point)
                .output()
                .unwrap();
            assert!(!crashed.status.success(), "{point}: {}", stderr(&crashed));
            assert!(stderr(&crashed).contains(point), "{}", stderr(&crashed));
            let all = ["hold", "preview", "--sql", "TRUE", "--json"];
            assert_eq!(
                json(&retain_in(d, &all))["records"].as_u64(),
                Some(200 - due),
                "{point}: the delete was committed before the crash"
            );

            let done = json(&retain_in(d, &execute));
            let cert = &done["certificate"];
            assert_eq!(cert["disposed"].as_u64(), Some(due), "{point}: {cert}");
            assert_eq!(cert["skipped_gone"].as_u64(), Some(0), "{point}: {cert}");
            // The versions are those around the crashed run's delete.
            assert!(
                cert["records_version_before"].as_u64() < cert["records_version_after"].as_u64(),
                "{point}: {cert}"
            );
            assert!(
                !cert["files_removed"].as_array().unwrap().is_empty(),
                "{point}: {cert}"
            );
            assert_eq!(
                cert["by_category"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|n| n.as_u64().unwrap())
                    .sum::<u64>(),
                due
            );
            assert_eq!(done["disposed"].as_array().unwrap().len() as u64, due);
            let o = retain_in(d, &execute);
            assert_eq!(o.status.code(), Some(3), "{point}: {}", stderr(&o));
            // One tombstone per record, all of this manifest.
            let tombstones = tombstones(&d.join("lake/disposals"));
            assert_eq!(tombstones.len() as u64, due, "{point}");
            assert!(tombstones.iter().all(|m| m == &manifest));
            let o = retain_in(d, &["audit", "verify", "--json"]);
            assert!(o.status.success(), "{point}: {}", stderr(&o));
        }
    }

    /// The `disposals` table's manifest ids, one per row.
    fn tombstones(table: &std::path::Path) -> Vec<String> {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            use retain_lake::deltalake::arrow::array::AsArray;
            let url = retain_lake::deltalake::ensure_table_uri(table.to_str().unwrap()).unwrap();
            let mut t = retain_lake::deltalake::DeltaTableBuilder::from_url(url)
                .unwrap()
                .build()
                .unwrap();
            t.load().await.unwrap();
            let ctx = retain_lake::deltalake::datafusion::prelude::SessionContext::new();
            ctx.register_table("disposals", t.table_provider().await.unwrap())
                .unwrap();
            let batches = ctx
                .sql("SELECT manifest_id, count(*) OVER (PARTITION BY record_key) AS n FROM disposals")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut out = Vec::new();
            for b in &batches {
                let n = b.column(1).as_primitive::<retain_lake::deltalake::arrow::datatypes::Int64Type>();
                assert!(n.values().iter().all(|n| *n == 1), "a record tombstoned twice");
                let m = retain_lake::deltalake::arrow::compute::cast(
                    b.column(0),
                    &retain_lake::deltalake::arrow::datatypes::DataType::Utf8,
                )
                .unwrap();
                let m = m.as_string::<i32>();
                out.extend((0..b.num_rows()).map(|i| m.value(i).to_owned()));
            }
            out
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Holds and disposal end to end: the Enron sample through the running pipeline on an embedded
// broker, a hold by custodian and keyword, more of that custodian's mail landing after it, then
// plan, approve and execute; checked against the rows themselves, the Parquet files on disk,
// the tombstones, the certificate, the disposal-command topic and the audit trail.

mod lifecycle {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    use retain_codec::{SchemaRegistry, decode_disposal_command};
    use retain_lake::RecordsTable;
    use retain_lake::deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
    use retain_lake::deltalake::arrow::compute::cast;
    use retain_lake::deltalake::arrow::datatypes::{DataType, Date32Type};
    use retain_lake::deltalake::datafusion::prelude::SessionContext;
    use retain_lake::deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::run::{Stage, scalar, setup, wait_rows};
    use super::{corpus, retain, stderr, stdout};

    const CUSTODIAN: &str = "kean-s";
    const KEYWORD: &str = "california";

    /// Copies the sample's messages into two folders: the second holds every other message of
    /// `CUSTODIAN` (by file name), to land after the hold; the first holds the rest.
    fn split(corpus: &Path, first: &Path, second: &Path) -> (usize, usize) {
        let (mut n1, mut n2) = (0, 0);
        for dir in std::fs::read_dir(corpus).unwrap() {
            let dir = dir.unwrap().path();
            if !dir.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&dir).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_none_or(|e| e != "txt") {
                    continue;
                }
                let bytes = std::fs::read(&f).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                let origin = text
                    .lines()
                    .find_map(|l| l.strip_prefix("X-Origin:"))
                    .map(|o| o.trim().to_lowercase());
                let number: u64 = f.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                let late = origin.as_deref() == Some(CUSTODIAN) && number % 2 == 1;
                let to = if late { second } else { first };
                let sub = to.join(dir.file_name().unwrap());
                std::fs::create_dir_all(&sub).unwrap();
                std::fs::write(sub.join(f.file_name().unwrap()), &bytes).unwrap();
                if late { n2 += 1 } else { n1 += 1 }
            }
        }
        (n1, n2)
    }

    fn import(dir: &Path, brokers: &str) -> u64 {
        let o = retain(&[
            "import",
            dir.to_str().unwrap(),
            "--brokers",
            brokers,
            "--topic",
            "retain.mail",
            "--format",
            "json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["failed"].as_array().unwrap().len(), 0, "{v}");
        v["produced"].as_u64().unwrap()
    }

    /// One row of `records`, with what the checks need.
    #[derive(Debug, Clone)]
    struct Row {
        key: String,
        message_id: String,
        custodian: String,
        subject: Option<String>,
        category: String,
        scheduled: bool,
        retain_until: Option<chrono::NaiveDate>,
    }

    async fn read_rows(table: &str) -> Vec<Row> {
        let t = RecordsTable::open_or_create(table, Default::default())
            .await
            .unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("records", t.delta_table().table_provider().await.unwrap())
            .unwrap();
        let batches = ctx
            .sql(
                "SELECT record_key, message_id, custodian, subject, category, retention_status, \
                 retain_until FROM records",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for b in &batches {
            let columns: Vec<_> = (0..6).map(|i| utf8(b.column(i))).collect();
            let s = |i: usize, r: usize| {
                let c = columns[i].as_string::<i32>();
                (!c.is_null(r)).then(|| c.value(r).to_owned())
            };
            let until = b.column(6).as_primitive::<Date32Type>();
            for r in 0..b.num_rows() {
                rows.push(Row {
                    key: s(0, r).unwrap(),
                    message_id: s(1, r).unwrap(),
                    custodian: s(2, r).unwrap(),
                    subject: s(3, r),
                    category: s(4, r).unwrap(),
                    scheduled: s(5, r).as_deref() == Some("scheduled"),
                    retain_until: (!until.is_null(r)).then(|| until.value_as_date(r).unwrap()),
                });
            }
        }
        rows
    }

    /// A string column as `Utf8` (DataFusion reads Parquet strings as views).
    fn utf8(c: &ArrayRef) -> ArrayRef {
        cast(c, &DataType::Utf8).unwrap()
    }

    /// Written from docs/holds.md, not from the scope compiler: the custodian matches
    /// case-insensitively, and a keyword hold covers a record whose subject contains the word
    /// or that has no subject (unknown counts as covered).
    fn held(r: &Row) -> bool {
        r.custodian.eq_ignore_ascii_case(CUSTODIAN)
            && r.subject
                .as_ref()
                .is_none_or(|s| s.to_lowercase().contains(KEYWORD))
    }

    /// The record keys in every Parquet file physically under `table` (whatever the Delta log
    /// says), by file.
    fn keys_on_disk(table: &Path) -> BTreeMap<PathBuf, BTreeSet<String>> {
        let mut out = BTreeMap::new();
        for f in std::fs::read_dir(table).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|e| e != "parquet") {
                continue;
            }
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
                .unwrap()
                .build()
                .unwrap();
            let mut keys = BTreeSet::new();
            for b in reader {
                let b: RecordBatch = b.unwrap();
                let c = utf8(b.column_by_name("record_key").unwrap());
                keys.extend(c.as_string::<i32>().iter().map(|k| k.unwrap().to_owned()));
            }
            out.insert(f, keys);
        }
        out
    }

    /// The `disposals` table's (record key, manifest id) rows.
    async fn tombstones(location: &str) -> BTreeMap<String, String> {
        let url = retain_lake::deltalake::ensure_table_uri(location).unwrap();
        let mut t = retain_lake::deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .build()
            .unwrap();
        t.load().await.unwrap();
        let ctx = SessionContext::new();
        ctx.register_table("disposals", t.table_provider().await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("SELECT record_key, manifest_id FROM disposals")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for b in &batches {
            let (k, m) = (utf8(b.column(0)), utf8(b.column(1)));
            let (k, m) = (k.as_string::<i32>(), m.as_string::<i32>());
            for i in 0..b.num_rows() {
                let before = out.insert(k.value(i).to_owned(), m.value(i).to_owned());
                assert!(before.is_none(), "one tombstone per record");
            }
        }
        out
    }

    fn json_of(args: &[&str]) -> serde_json::Value {
        let o = retain(args);
        assert!(
            o.status.success(),
            "retain {args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Every command on the disposal-command topic, read from the beginning until `n` arrived
    /// and a further second brings no more.
    fn commands(brokers: &str, n: usize) -> Vec<retain_codec::DisposalCommandMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "lifecycle-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset("retain.disposal-commands", p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let registry = SchemaRegistry::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut quiet_since = None;
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(m) => {
                    let m = m.unwrap();
                    let c = decode_disposal_command(m.payload().unwrap(), &registry).unwrap();
                    assert_eq!(
                        m.key().unwrap(),
                        c.key_hash.as_bytes(),
                        "keyed by record key"
                    );
                    out.push(c);
                    quiet_since = None;
                }
                None if out.len() >= n => {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        return out;
                    }
                }
                None => assert!(
                    Instant::now() < deadline,
                    "only {} of {n} commands after 60 s",
                    out.len()
                ),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hold_land_more_then_dispose_the_enron_sample() {
        let Some(corpus) = corpus() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have the Enron sample"
            );
            return;
        };
        let started = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (n1, n2) = split(&corpus, &dir.join("mail-1"), &dir.join("mail-2"));
        assert!(n2 > 100, "{n2} late messages of {CUSTODIAN}");
        let (broker, env) = setup(dir, 500).await;
        broker
            .create_topic("retain.disposal-commands", 2)
            .await
            .unwrap();
        let lake = dir.to_str().unwrap().to_owned();
        let brokers = env.brokers.clone();
        let mut pipeline = Stage::start("all", "all", &env);

        // The first batch lands.
        let b = brokers.clone();
        let m1 = dir.join("mail-1");
        let produced = tokio::task::spawn_blocking(move || import(&m1, &b))
            .await
            .unwrap();
        assert_eq!(produced as usize, n1);
        wait_rows(
            &env.table,
            n1 as i64,
            Duration::from_secs(300),
            &mut [&mut pipeline],
        )
        .await;

        // The hold, by custodian and keyword, while the pipeline runs.
        let custodian_arg = ["--custodian", CUSTODIAN, "--keyword", KEYWORD];
        let mut args = vec!["hold", "preview", "--lake", &lake, "--json"];
        args.extend(custodian_arg);
        let preview = json_of(&args);
        let mut args = vec![
            "hold",
            "create",
            "--lake",
            &lake,
            "--json",
            "--matter",
            "Doe v. Clinic",
            "--reason",
            "complaint served",
            "--by",
            "counsel",
        ];
        args.extend(custodian_arg);
        let hold = json_of(&args);
        let first = read_rows(&env.table).await;
        let held_first = first.iter().filter(|r| held(r)).count() as u64;
        assert!(held_first > 0);
        assert_eq!(preview["records"].as_u64(), Some(held_first), "{preview}");
        assert_eq!(
            hold["records_covered_now"].as_u64(),
            Some(held_first),
            "{hold}"
        );
        let hold_id = hold["hold"]["id"].as_str().unwrap().to_owned();

        // More of the custodian's mail lands after the hold.
        let b = brokers.clone();
        let m2 = dir.join("mail-2");
        let produced = tokio::task::spawn_blocking(move || import(&m2, &b))
            .await
            .unwrap();
        assert_eq!(produced as usize, n2);
        let total = (n1 + n2) as i64;
        wait_rows(
            &env.table,
            total,
            Duration::from_secs(300),
            &mut [&mut pipeline],
        )
        .await;
        let (code, log) = pipeline.terminate();
        assert_eq!(code, Some(0), "{log}");
        assert_eq!(
            scalar(&env.table, "SELECT count(DISTINCT record_key) FROM records").await,
            total
        );

        let rows = read_rows(&env.table).await;
        let today = chrono::Utc::now().date_naive();
        let late: BTreeSet<&str> = rows[..]
            .iter()
            .filter(|r| held(r) && !first.iter().any(|f| f.key == r.key))
            .map(|r| r.key.as_str())
            .collect();
        assert!(!late.is_empty(), "held mail landed after the hold");
        let due_by_date = |r: &Row| r.scheduled && r.retain_until.is_some_and(|d| d <= today);
        let due: BTreeMap<&str, &Row> = rows
            .iter()
            .filter(|r| due_by_date(r) && !held(r))
            .map(|r| (r.key.as_str(), r))
            .collect();
        let held_due = rows.iter().filter(|r| due_by_date(r) && held(r)).count();
        assert!(!due.is_empty(), "something is due");
        assert!(held_due > 0, "some held records are past their date");
        eprintln!(
            "{} records ({n1} then {n2}), {} held ({} landed after the hold), {} due and unheld, {held_due} due but held",
            rows.len(),
            rows.iter().filter(|r| held(r)).count(),
            late.len(),
            due.len()
        );
        let mut args = vec!["hold", "preview", "--lake", &lake, "--json"];
        args.extend(custodian_arg);
        let now_covered = json_of(&args);
        assert_eq!(
            now_covered["records"].as_u64(),
            Some(rows.iter().filter(|r| held(r)).count() as u64),
            "the hold's scope covers the late mail too: {now_covered}"
        );

        // Plan, approve, execute, as of today.
        let today_s = today.to_string();
        let plan = json_of(&[
            "dispose",
            "plan",
            "--as-of",
            &today_s,
            "--by",
            "records.manager",
            "--lake",
            &lake,
            "--json",
        ]);
        assert_eq!(plan["records"].as_u64(), Some(due.len() as u64), "{plan}");
        let manifest = plan["manifest"].as_str().unwrap().to_owned();
        json_of(&[
            "dispose",
            "approve",
            &manifest,
            "--by",
            "compliance",
            "--lake",
            &lake,
            "--json",
        ]);
        let table = Path::new(&env.table);
        let before = keys_on_disk(table);
        let doomed: BTreeSet<&PathBuf> = before
            .iter()
            .filter(|(_, keys)| keys.iter().any(|k| due.contains_key(k.as_str())))
            .map(|(f, _)| f)
            .collect();
        assert!(!doomed.is_empty());
        let certs = dir.join("certs");
        let done = json_of(&[
            "dispose",
            "execute",
            &manifest,
            "--by",
            "cron",
            "--for-real",
            "--brokers",
            &brokers,
            "--grace",
            "0s",
            "--certificate-dir",
            certs.to_str().unwrap(),
            "--lake",
            &lake,
            "--json",
        ]);

        // The rows: exactly the due, unheld ones are gone; every held one survives.
        let after = read_rows(&env.table).await;
        let left: BTreeSet<&str> = after.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(after.len(), rows.len() - due.len());
        for r in &rows {
            assert_eq!(
                left.contains(r.key.as_str()),
                !due.contains_key(r.key.as_str()),
                "record {} (held {})",
                r.key,
                held(r)
            );
        }
        // The bytes: no Parquet file on disk holds a disposed record, and every file that held
        // one is gone.
        let now_on_disk = keys_on_disk(table);
        for f in &doomed {
            assert!(!f.exists(), "{} should have been vacuumed", f.display());
        }
        for (f, keys) in &now_on_disk {
            assert!(
                keys.iter().all(|k| !due.contains_key(k.as_str())),
                "{} still holds a disposed record",
                f.display()
            );
        }
        // The certificate.
        let cert = &done["certificate"];
        assert_eq!(cert["disposed"].as_u64(), Some(due.len() as u64));
        assert_eq!(cert["skipped_held"].as_u64(), Some(0));
        let mut by_category: BTreeMap<String, u64> = BTreeMap::new();
        for r in due.values() {
            *by_category.entry(r.category.clone()).or_default() += 1;
        }
        let got: BTreeMap<String, u64> =
            serde_json::from_value(cert["by_category"].clone()).unwrap();
        assert_eq!(got, by_category);
        let by_rule: u64 = cert["by_rule"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(by_rule, due.len() as u64);
        assert_eq!(
            cert["files_removed"].as_array().unwrap().len(),
            doomed.len(),
            "the certificate lists the files the vacuum removed"
        );
        let md = std::fs::read_to_string(certs.join(format!("{manifest}.md"))).unwrap();
        assert!(
            md.contains(&format!("| records disposed of | {} |", due.len())),
            "{md}"
        );
        // The tombstones: one per disposed record, no PHI.
        let tombstones = tombstones(&dir.join("disposals").display().to_string()).await;
        assert_eq!(tombstones.len(), due.len());
        for (key, in_manifest) in &tombstones {
            assert!(due.contains_key(key.as_str()), "tombstone {key}");
            assert_eq!(in_manifest, &manifest);
        }
        // The commands: one per disposed message, naming it for the mail system.
        let b = brokers.clone();
        let n = due.len();
        let sent = tokio::task::spawn_blocking(move || commands(&b, n))
            .await
            .unwrap();
        assert_eq!(sent.len(), due.len());
        for c in &sent {
            let r = due.get(c.key_hash.as_str()).expect("a disposed record");
            assert_eq!(c.message_id, r.message_id);
            assert_eq!(c.manifest_id, manifest);
            assert_eq!(c.command_id, format!("{manifest}/{}", c.key_hash));
            assert!(c.retain_until <= today);
            assert!(!c.policy_version.is_empty());
        }
        // Released later, the held records that are past their date are due at the next run.
        json_of(&[
            "hold",
            "release",
            &hold_id,
            "--justification",
            "settled",
            "--approved-by",
            "general.counsel",
            "--by",
            "counsel",
            "--lake",
            &lake,
            "--json",
        ]);
        let next = json_of(&[
            "dispose",
            "plan",
            "--as-of",
            &today_s,
            "--by",
            "records.manager",
            "--lake",
            &lake,
            "--json",
        ]);
        assert_eq!(next["records"].as_u64(), Some(held_due as u64), "{next}");

        // The audit trail: every step is in it, it verifies, and tampering is caught.
        let v = json_of(&["audit", "verify", "--lake", &lake, "--json"]);
        for action in [
            "hold_previewed",
            "hold_created",
            "hold_released",
            "disposal_planned",
            "disposal_approved",
            "disposal_executed",
        ] {
            assert!(v["actions"][action].as_u64() >= Some(1), "{action}: {v}");
        }
        let root = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            super::audit_verifies_then_catches_a_tampered_entry(&root, total)
        })
        .await
        .unwrap();
        broker.shutdown().await.unwrap();
        eprintln!("lifecycle test took {:.0?}", started.elapsed());
    }
}

// ---------------------------------------------------------------------------------------------
// `retain sql`: read-only SQL over a demo lake with holds; output formats, files, exit codes,
// and the audit trail.

mod sql {
    use std::collections::BTreeMap;
    use std::io::Write as _;
    use std::path::Path;
    use std::process::{Command, Output, Stdio};

    use super::{json, ok, retain_in, stderr, stdout};

    /// JSON Lines: one object per row.
    fn rows(o: &Output) -> Vec<serde_json::Value> {
        stdout(o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// A demo lake of 200 messages with an active hold on clinical mail and a released hold on
    /// administrative mail; returns the demo's counts by category.
    fn lake(d: &Path) -> BTreeMap<String, u64> {
        let demo = json(&retain_in(d, &["demo", "-n", "200", "--json"]));
        for (category, release) in [("clinical", false), ("administrative", true)] {
            let created = json(&retain_in(
                d,
                &[
                    "hold",
                    "create",
                    "--matter",
                    "Doe v. Clinic",
                    "--reason",
                    "served",
                    "--by",
                    "counsel",
                    "--category",
                    category,
                    "--json",
                ],
            ));
            if release {
                let id = created["hold"]["id"].as_str().unwrap();
                ok(retain_in(
                    d,
                    &[
                        "hold",
                        "release",
                        id,
                        "--justification",
                        "settled",
                        "--approved-by",
                        "general.counsel",
                        "--by",
                        "counsel",
                    ],
                ));
            }
        }
        demo["by_category"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_u64().unwrap()))
            .collect()
    }

    #[test]
    fn sql_queries_the_lake_in_csv_and_json_and_audits_each_statement() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let by_category = lake(d);
        let total: u64 = by_category.values().sum();

        // CSV: a header, then the rows.
        let o = ok(retain_in(
            d,
            &[
                "sql",
                "-c",
                "SELECT count(*) AS n FROM records",
                "--format",
                "csv",
            ],
        ));
        assert_eq!(stdout(&o), format!("n\n{total}\n"));

        // JSON Lines: one object per row; counts by category are the demo's.
        let o = ok(retain_in(
            d,
            &[
                "sql",
                "--by",
                "analyst",
                "--format",
                "json",
                "--timing",
                "-c",
                "SELECT category, count(*) AS n FROM records GROUP BY category ORDER BY category",
            ],
        ));
        let got: BTreeMap<String, u64> = rows(&o)
            .iter()
            .map(|r| {
                (
                    r["category"].as_str().unwrap().to_owned(),
                    r["n"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, by_category);
        assert!(stderr(&o).contains("statement 1:"), "{}", stderr(&o));

        // Only the clinical hold is active; what it covers is what the demo landed as clinical.
        let o = ok(retain_in(
            d,
            &[
                "sql",
                "--format",
                "json",
                "-c",
                "SELECT hold_id, (SELECT count(*) FROM records_on_hold) AS held, \
                 (SELECT count(*) FROM records WHERE is_held()) AS held_too FROM active_holds",
            ],
        ));
        let active = rows(&o);
        assert_eq!(active.len(), 1, "{active:?}");
        assert_eq!(
            active[0]["held"].as_u64(),
            by_category.get("clinical").copied()
        );
        assert_eq!(active[0]["held_too"], active[0]["held"]);

        // -f: two statements, printed one after the other; NULLs are written out in JSON.
        let file = d.join("two.sql");
        std::fs::write(
            &file,
            "-- counts\nSELECT count(*) AS n FROM records;\n\
             SELECT count(*) AS due FROM disposal_candidates('2030-01-01');\n",
        )
        .unwrap();
        let o = ok(retain_in(
            d,
            &[
                "sql",
                "--by",
                "analyst",
                "-f",
                file.to_str().unwrap(),
                "--format",
                "csv",
            ],
        ));
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], "n");
        assert_eq!(lines[1], total.to_string());
        assert_eq!(lines[2], "due");
        assert!(lines[3].parse::<u64>().unwrap() <= total);

        // Standard input that is not a terminal is read as a file.
        let mut child = Command::new(env!("CARGO_BIN_EXE_retain"))
            .args(["sql", "--format", "csv"])
            .current_dir(d)
            .env_remove("RETAIN_LAKE_ROOT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"SELECT 1 AS one;")
            .unwrap();
        let o = ok(child.wait_with_output().unwrap());
        assert_eq!(stdout(&o), "one\n1\n");

        // The table format prints a row count.
        let o = ok(retain_in(d, &["sql", "-c", "SELECT 1 AS one"]));
        assert!(stdout(&o).ends_with("1 row\n"), "{}", stdout(&o));

        // --mask-phi: PHI columns read as NULL, everything else (hold coverage too) as stored;
        // EXPLAIN, which prints the holds' conditions, is refused before anything runs.
        let phi = "SELECT count(*) AS n, count(subject) AS subjects, count(from_address) AS senders, \
                   count(DISTINCT category) AS categories FROM records";
        let o = ok(retain_in(d, &["sql", "--format", "csv", "-c", phi]));
        let stored: Vec<u64> = stdout(&o)
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(
            stored[1] > 0 && stored[2] > 0,
            "the demo's mail has subjects and senders: {stored:?}"
        );
        let o = ok(retain_in(
            d,
            &[
                "sql",
                "--mask-phi",
                "--format",
                "csv",
                "-c",
                &format!("{phi}; SELECT count(*) AS held FROM records_on_hold"),
            ],
        ));
        assert_eq!(
            stdout(&o),
            format!(
                "n,subjects,senders,categories\n{total},0,0,{}\nheld\n{}\n",
                by_category.len(),
                by_category["clinical"]
            )
        );
        let o = retain_in(
            d,
            &[
                "sql",
                "--mask-phi",
                "-c",
                "SELECT 1; EXPLAIN SELECT * FROM records_on_hold",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("statement 2: EXPLAIN is not available with --mask-phi"),
            "{}",
            stderr(&o)
        );
        assert_eq!(stdout(&o), "", "nothing runs");

        // Every statement run is in the audit trail: who, which tables, a hash, no query text.
        let show = json(&retain_in(
            d,
            &["audit", "show", "--json", "--limit", "100"],
        ));
        let queries: Vec<&serde_json::Value> = show
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "sql_query")
            .collect();
        assert_eq!(queries.len(), 10, "{queries:?}");
        let masked = queries
            .iter()
            .filter(|e| e["details"]["masked"] == true)
            .count();
        assert_eq!(masked, 2, "the two statements run with --mask-phi say so");
        let by_analyst = queries.iter().filter(|e| e["actor"] == "analyst").count();
        assert_eq!(by_analyst, 3);
        for e in &queries {
            assert_eq!(e["details"]["query_sha256"].as_str().unwrap().len(), 64);
            assert!(!e.to_string().contains("count(*)"), "no query text: {e}");
        }
        assert!(queries.iter().any(|e| e["target"] == "records"
            && e["details"]["tables"] == serde_json::json!(["records"])));
        let verify = json(&retain_in(d, &["audit", "verify", "--json"]));
        assert_eq!(verify["intact"], true, "{verify}");
    }

    #[test]
    fn sql_refuses_bad_queries_with_exit_2_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        lake(d);
        let audited = |d: &Path| {
            json(&retain_in(d, &["audit", "verify", "--json"]))["actions"]["sql_query"]
                .as_u64()
                .unwrap_or(0)
        };

        let o = retain_in(d, &["sql", "-c", "SELECT categry FROM records"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("categry"), "{}", stderr(&o));

        for ddl in [
            "CREATE TABLE t AS SELECT 1",
            "DROP TABLE records",
            "DELETE FROM records",
            "INSERT INTO holds SELECT * FROM holds",
        ] {
            let o = retain_in(d, &["sql", "-c", ddl]);
            assert_eq!(o.status.code(), Some(2), "{ddl}: {}", stderr(&o));
            assert!(stderr(&o).contains("read-only"), "{ddl}: {}", stderr(&o));
        }

        // A file with a bad second statement runs nothing.
        let file = d.join("bad.sql");
        std::fs::write(&file, "SELECT 1 AS one; SELECT nope FROM records;").unwrap();
        let o = retain_in(d, &["sql", "-f", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
        assert!(stderr(&o).contains("statement 2") && stderr(&o).contains("nope"));

        let o = retain_in(d, &["sql", "-c", "SELEC 1"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

        // A lake root without records is refused, and nothing is created there.
        let o = retain_in(d, &["sql", "--lake", "elsewhere", "-c", "SELECT 1"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(!d.join("elsewhere").exists());

        // Refused statements never ran, so none is audited; the holds are as they were.
        assert_eq!(audited(d), 0);
        let o = ok(retain_in(
            d,
            &[
                "sql",
                "--format",
                "csv",
                "-c",
                "SELECT count(*) AS n FROM holds",
            ],
        ));
        assert_eq!(stdout(&o), "n\n3\n");
    }
}

/// `retain serve`: the PostgreSQL-wire endpoint with real clients (`psql`, psycopg). Skips
/// (SKIP on standard error) without them outside CI; CI installs both (.ci/run).
mod serve {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::path::Path;
    use std::process::{Child, Command, Output, Stdio};

    use super::{ok, retain_in, stderr, stdout};

    /// Whether a client is installed; outside CI a missing one is a SKIP, in CI a failure.
    fn have(what: &str, program: &str, args: &[&str]) -> bool {
        let found = Command::new(program)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have {what} (.ci/run installs it)"
            );
            eprintln!(
                "SKIP: {what} is not installed (apt-get install postgresql-client; pip install 'psycopg[binary]')"
            );
        }
        found
    }

    /// A running `retain serve`; killed when dropped.
    struct Served {
        child: Child,
        port: u16,
        banner: String,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start(dir: &Path, extra: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_retain"))
            .args(["serve", "--lake", "lake", "--users", "users.toml"])
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(dir)
            .env_remove("RETAIN_LAKE_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut banner = String::new();
        let port = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("retain serve ended before listening: {banner}");
            };
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        // Keep draining its standard error so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Served {
            child,
            port,
            banner,
        }
    }

    /// `psql -c SQL` as `user` (no password when `None`), unaligned, tuples only, NULL shown as
    /// `<NULL>`, fields separated by `|`.
    fn psql(port: u16, user: &str, password: Option<&str>, ssl: &str, sql: &str) -> Output {
        let mut c = Command::new("psql");
        c.arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=retain sslmode={ssl} connect_timeout=20"
        ))
        .args(["-X", "-w", "-A", "-t", "-F", "|", "-P", "null=<NULL>"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE");
        if let Some(p) = password {
            c.env("PGPASSWORD", p);
        }
        c.output().unwrap()
    }

    fn lines(o: &Output) -> Vec<String> {
        stdout(o).lines().map(str::to_owned).collect()
    }

    /// A demo lake with an active hold, an analyst `ana` (password on standard input) and a
    /// records manager `rita` (password file).
    fn setup(d: &Path) {
        ok(retain_in(d, &["demo", "-n", "200", "--json"]));
        ok(retain_in(
            d,
            &[
                "hold",
                "create",
                "--matter",
                "Doe v. Clinic",
                "--reason",
                "served",
                "--by",
                "counsel",
                "--category",
                "clinical",
                "--json",
            ],
        ));
        let mut add = Command::new(env!("CARGO_BIN_EXE_retain"))
            .args(["serve", "user", "add", "ana", "--role", "analyst"])
            .args(["--users", "users.toml"])
            .current_dir(d)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        add.stdin
            .take()
            .unwrap()
            .write_all(b"ana-Secret-1\n")
            .unwrap();
        ok(add.wait_with_output().unwrap());
        std::fs::write(d.join("rita.pw"), "rita-Secret-2\n").unwrap();
        ok(retain_in(
            d,
            &[
                "serve",
                "user",
                "add",
                "rita",
                "--role",
                "records_manager",
                "--users",
                "users.toml",
                "--password-file",
                "rita.pw",
            ],
        ));
        let file = std::fs::read_to_string(d.join("users.toml")).unwrap();
        assert!(
            !file.contains("ana-Secret-1") && !file.contains("rita-Secret-2"),
            "no password in the users file: {file}"
        );
        assert_eq!(file.matches("$argon2id$").count(), 2, "{file}");
    }

    /// The subjects and senders the lake holds (as `retain sql` reads them), less the
    /// workforce addresses that are also a mailbox or custodian (not PHI, shown to analysts).
    fn phi(d: &Path) -> BTreeSet<String> {
        let o = ok(retain_in(
            d,
            &[
                "sql",
                "--format",
                "json",
                "-c",
                "SELECT subject, from_address, mailbox, custodian FROM records",
            ],
        ));
        let mut out = BTreeSet::new();
        let mut workforce = BTreeSet::new();
        for l in stdout(&o).lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in ["subject", "from_address"] {
                if let Some(s) = v[k].as_str().filter(|s| s.len() > 3) {
                    out.insert(s.to_owned());
                }
            }
            for k in ["mailbox", "custodian"] {
                workforce.insert(v[k].as_str().unwrap().to_owned());
            }
        }
        out.retain(|s| !workforce.iter().any(|w| w.contains(s.as_str())));
        out
    }

    #[test]
    fn psql_logins_roles_masking_read_only_and_audit() {
        if !have("psql (postgresql-client)", "psql", &["--version"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        setup(d);
        let mut secrets = phi(d);
        assert!(secrets.len() > 50, "the demo lake has subjects and senders");
        // A retention event naming a patient, in the lake's `events` table.
        let mrn = "MRN-SECRET-7731";
        secrets.insert(mrn.to_owned());
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut events = retain_events::EventsTable::open_or_create(
                d.join("lake/events").to_str().unwrap(),
                Default::default(),
            )
            .await
            .unwrap();
            let message = retain_codec::RetentionEventMessage {
                event_id: "ev-discharge-secret".into(),
                kind: retain_codec::EventType::Clock(retain_model::EventKind::Discharged),
                date: chrono::NaiveDate::from_ymd_opt(2030, 1, 1).unwrap(),
                action: None,
                keys: retain_codec::EventKeys {
                    patient_mrn: Some(mrn.into()),
                    ..Default::default()
                },
                recorded_at: chrono::Utc::now(),
                source: "ehr-adt".into(),
            };
            let stored = retain_events::StoredEvent {
                message,
                stored_at: chrono::Utc::now(),
                partition: -1,
                offset: -1,
            };
            events
                .append(vec![stored], "test", Vec::new())
                .await
                .unwrap();
        });
        let served = start(d, &[]);
        let port = served.port;
        assert!(served.banner.contains("no TLS"), "{}", served.banner);
        let ana = |sql: &str| psql(port, "ana", Some("ana-Secret-1"), "disable", sql);
        let rita = |sql: &str| psql(port, "rita", Some("rita-Secret-2"), "disable", sql);

        // Logins: no password, a wrong one, an unknown user all fail.
        for (user, password) in [
            ("ana", None),
            ("ana", Some("ana-Secret-2")),
            ("rita", Some("ana-Secret-1")),
            ("mallory", Some("ana-Secret-1")),
        ] {
            let o = psql(port, user, password, "disable", "SELECT 1");
            assert!(!o.status.success(), "{user} logged in with {password:?}");
            assert!(
                stderr(&o).contains("assword authentication failed")
                    || stderr(&o).contains("no password supplied"),
                "{}",
                stderr(&o)
            );
        }

        // Same count as `retain sql`.
        let count = ok(retain_in(
            d,
            &[
                "sql",
                "--format",
                "csv",
                "-c",
                "SELECT count(*) AS n FROM records",
            ],
        ));
        let expected = stdout(&count).lines().nth(1).unwrap().to_owned();
        assert_eq!(
            lines(&ok(ana("SELECT count(*) FROM records"))),
            std::slice::from_ref(&expected)
        );
        assert_eq!(expected, "200");

        // Analyst: PHI reads as NULL by every route.
        // (With a stored column beside the masked ones: a select of constants only ignores
        // LIMIT on a Delta scan, in `retain sql` too.)
        let masked = lines(&ok(ana(
            "SELECT subject, from_address, to_addresses, patient_refs, folder, record_key FROM records LIMIT 3",
        )));
        assert_eq!(masked.len(), 3, "{masked:?}");
        for l in &masked {
            assert!(
                l.starts_with("<NULL>|<NULL>|<NULL>|<NULL>|<NULL>|") && l.len() > 40,
                "analyst columns are masked, the record key is not: {l}"
            );
        }
        for sql in [
            "SELECT * FROM records",
            "SELECT * FROM records_on_hold",
            "SELECT max(subject), min(from_address), count(subject) FROM records",
            "SELECT upper(subject) FROM records WHERE subject IS NOT NULL",
            "SELECT r.subject FROM records r JOIN hold_coverage c ON r.record_key = c.record_key",
            "SELECT * FROM disposal_candidates('2100-01-01')",
            "SELECT * FROM holds",
            "SELECT * FROM active_holds",
            "SELECT * FROM current_holds",
            "SELECT table_name, definition FROM information_schema.views",
            "SELECT s FROM (SELECT subject AS s FROM records) t",
            "WITH x AS (SELECT from_address FROM records) SELECT * FROM x",
            "SELECT * FROM events",
            "SELECT * FROM ba_manifests",
            "SELECT * FROM dead_letters",
        ] {
            let out = stdout(&ok(ana(sql)));
            for s in &secrets {
                assert!(
                    !out.contains(s.as_str()),
                    "`{sql}` showed PHI to an analyst"
                );
            }
            assert!(!out.contains("Doe v. Clinic"), "`{sql}` showed a matter");
        }
        assert_eq!(
            lines(&ok(ana(
                "SELECT count(*) FROM records WHERE subject IS NOT NULL"
            ))),
            ["0"]
        );
        // Coverage is still exact: the hold on clinical mail covers what it covers.
        let held = ok(rita("SELECT count(*) FROM records_on_hold"));
        assert_eq!(
            lines(&ok(ana("SELECT count(*) FROM records_on_hold"))),
            lines(&held)
        );
        let o = ana("EXPLAIN SELECT * FROM records_on_hold");
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("EXPLAIN is not available"),
            "{}",
            stderr(&o)
        );
        let o = ana("SELECT count(*) FROM records WHERE is_held()");
        assert!(!o.status.success(), "is_held() is not offered to analysts");
        // The event is there for both; its patient only for the records manager.
        assert_eq!(
            lines(&ok(ana("SELECT event_id, patient_mrn FROM events"))),
            ["ev-discharge-secret|<NULL>"]
        );
        assert_eq!(
            lines(&ok(rita("SELECT event_id, patient_mrn FROM events"))),
            [format!("ev-discharge-secret|{mrn}")]
        );

        // Read-only, for both roles.
        for sql in [
            "DELETE FROM records",
            "CREATE TABLE x AS SELECT 1",
            "DROP TABLE records",
            "INSERT INTO holds SELECT * FROM holds",
            "SET datafusion.execution.batch_size = 1",
        ] {
            for (who, o) in [("ana", ana(sql)), ("rita", rita(sql))] {
                assert!(!o.status.success(), "{who} ran `{sql}`");
                assert!(stderr(&o).contains("read-only"), "`{sql}`: {}", stderr(&o));
            }
        }
        assert_eq!(lines(&ok(ana("SELECT count(*) FROM records"))), ["200"]);

        // Records manager: the real subjects, as `retain sql` shows them.
        let sql = "SELECT record_key, subject FROM records ORDER BY record_key";
        let expected: Vec<String> =
            stdout(&ok(retain_in(d, &["sql", "--format", "json", "-c", sql])))
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    format!(
                        "{}|{}",
                        v["record_key"].as_str().unwrap(),
                        v["subject"].as_str().unwrap_or("<NULL>")
                    )
                })
                .collect();
        assert_eq!(lines(&ok(rita(sql))), expected);
        let out = stdout(&ok(rita("SELECT matter FROM active_holds")));
        assert!(out.contains("Doe v. Clinic"), "{out}");
        // `\d records`: the columns the catalog reads as dictionaries are text to a client.
        let described = lines(&ok(rita("\\d records")));
        for column in ["custodian", "category", "retention_status", "subject"] {
            assert!(
                described
                    .iter()
                    .any(|l| l.starts_with(&format!("{column}|text|"))),
                "{column}: {described:?}"
            );
        }

        // psycopg (extended protocol, parameters, transactions).
        psycopg_checks(port, &expected);

        // Every statement audited under its login, and the chain verifies.
        let o = ok(retain_in(
            d,
            &["audit", "show", "--lake", "lake", "--limit", "0", "--json"],
        ));
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        let mut by: BTreeMap<(String, String), usize> = BTreeMap::new();
        for e in entries.iter().filter(|e| e["action"] == "sql_query") {
            if e["details"]["via"] == "serve" {
                *by.entry((
                    e["actor"].as_str().unwrap().to_owned(),
                    e["details"]["role"].as_str().unwrap().to_owned(),
                ))
                .or_default() += 1;
                assert!(e["details"]["query_sha256"].as_str().unwrap().len() == 64);
            }
        }
        assert!(by[&("ana".into(), "analyst".into())] >= 15, "{by:?}");
        assert!(
            by[&("rita".into(), "records_manager".into())] >= 2,
            "{by:?}"
        );
        let text = stdout(&o);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "the audit trail holds PHI");
        }
        // The same counts with the JSON operators over `details`, in retain sql and over the
        // wire (a new login reads the entries written so far).
        let o = ok(retain_in(
            d,
            &[
                "sql",
                "--format",
                "csv",
                "-c",
                "SELECT actor, details->>'role' AS role, count(*) AS n FROM audit \
                 WHERE action = 'sql_query' AND details->>'via' = 'serve' GROUP BY 1, 2 ORDER BY 1",
            ],
        ));
        let counted: BTreeMap<(String, String), usize> = stdout(&o)
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                ((f[0].to_owned(), f[1].to_owned()), f[2].parse().unwrap())
            })
            .collect();
        assert_eq!(counted, by);
        let o = ok(rita(
            "SELECT DISTINCT details->>'role' FROM audit WHERE actor = 'ana' AND json_get_str(details, 'via') = 'serve'",
        ));
        assert_eq!(lines(&o), ["analyst"]);
        let v: serde_json::Value = serde_json::from_slice(
            &ok(retain_in(
                d,
                &["audit", "verify", "--lake", "lake", "--json"],
            ))
            .stdout,
        )
        .unwrap();
        assert_eq!(v["intact"], true, "{v}");

        // Dev trust: loopback only, with a warning.
        let o = retain_in(
            d,
            &[
                "serve",
                "--lake",
                "lake",
                "--dev-trust",
                "--listen",
                "0.0.0.0:0",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("loopback"), "{}", stderr(&o));
        let trusted = start(d, &["--dev-trust"]);
        assert!(trusted.banner.contains("WARNING"), "{}", trusted.banner);
        let o = ok(psql(
            trusted.port,
            "someone",
            None,
            "disable",
            "SELECT subject, record_key FROM records LIMIT 1",
        ));
        let got = lines(&o);
        assert!(
            got.len() == 1 && got[0].starts_with("<NULL>|"),
            "an unknown dev-trust login is an analyst: {got:?}"
        );
    }

    fn psycopg_checks(port: u16, expected: &[String]) {
        if !have("psycopg (Python)", "python3", &["-c", "import psycopg"]) {
            return;
        }
        let script = r#"
import json, sys
import psycopg
port = int(sys.argv[1])
def conn(user, password):
    return psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                           dbname="retain", sslmode="disable", connect_timeout=20)
out = {}
try:
    conn("ana", "wrong").close()
    out["wrong_password"] = "accepted"
except psycopg.OperationalError as e:
    out["wrong_password"] = "refused" if "password authentication failed" in str(e).lower() else str(e)
with conn("ana", "ana-Secret-1") as c:
    out["count"] = c.execute("SELECT count(*) FROM records").fetchone()[0]
    out["subjects"] = [r[0] for r in c.execute(
        "SELECT subject FROM records WHERE record_key > %s ORDER BY record_key LIMIT 3", ("",))]
    try:
        c.execute("DELETE FROM records")
        out["delete"] = "ran"
    except psycopg.Error as e:
        out["delete"] = "refused" if "read-only" in str(e) else str(e)
with conn("rita", "rita-Secret-2") as c:
    out["rows"] = ["%s|%s" % (k, s if s is not None else "<NULL>") for k, s in c.execute(
        "SELECT record_key, subject FROM records ORDER BY record_key")]
    # Columns the catalog reads as dictionaries arrive as text, grouped or not.
    cur = c.execute("SELECT custodian, category, retention_status, count(*) FROM records "
                    "WHERE lower(custodian) <> %s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", ("",))
    out["dictionary_types"] = [d.type_code for d in cur.description][:3]
    out["dictionary_values"] = all(isinstance(v, str) for r in cur.fetchall() for v in r[:3])
print(json.dumps(out))
"#;
        let o = Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "python: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["wrong_password"], "refused", "{v}");
        assert_eq!(v["count"], 200, "{v}");
        assert_eq!(v["subjects"], serde_json::json!([null, null, null]), "{v}");
        assert_eq!(v["delete"], "refused", "{v}");
        let rows: Vec<String> = serde_json::from_value(v["rows"].clone()).unwrap();
        assert_eq!(rows, expected, "psycopg reads what retain sql reads");
        // 25: PostgreSQL's `text`.
        assert_eq!(
            v["dictionary_types"],
            serde_json::json!([25, 25, 25]),
            "{v}"
        );
        assert_eq!(v["dictionary_values"], true, "{v}");
    }

    #[test]
    fn tls_with_a_certificate_and_sslmode_require() {
        if !have("psql (postgresql-client)", "psql", &["--version"])
            || !have("openssl", "openssl", &["version"])
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        setup(d);
        let o = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "openssl: {}", stderr(&o));
        // TLS from the configuration file's [serve] section (the flags work the same way).
        std::fs::write(
            d.join("serve.toml"),
            "[serve]\ntls-cert = \"cert.pem\"\ntls-key = \"key.pem\"\n",
        )
        .unwrap();
        let served = start(d, &["--config", "serve.toml"]);
        assert!(served.banner.contains("(TLS)"), "{}", served.banner);
        let o = ok(psql(
            served.port,
            "rita",
            Some("rita-Secret-2"),
            "require",
            "SELECT count(*) FROM records",
        ));
        assert_eq!(lines(&o), ["200"]);
        let plain = start(d, &[]);
        let o = psql(
            plain.port,
            "rita",
            Some("rita-Secret-2"),
            "require",
            "SELECT 1",
        );
        assert!(!o.status.success(), "sslmode=require must fail without TLS");
        let o = Command::new(env!("CARGO_BIN_EXE_retain"))
            .args([
                "serve",
                "--lake",
                "lake",
                "--users",
                "users.toml",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--tls-cert", "cert.pem", "--tls-key", "users.toml"])
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("users.toml"), "{}", stderr(&o));
        // A certificate without its key in the file is refused, naming the keys.
        std::fs::write(d.join("half.toml"), "[serve]\ntls-cert = \"cert.pem\"\n").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_retain"))
            .args(["serve", "--lake", "lake", "--config", "half.toml"])
            .args(["--users", "users.toml", "--listen", "127.0.0.1:0"])
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("tls-cert and tls-key"),
            "{}",
            stderr(&o)
        );
    }
}

mod report {
    use std::collections::BTreeMap;

    use super::{json, ok, retain_in, stderr, stdout};

    /// The rows of CSV section `heading` (after its `# heading` line and header).
    fn csv_section(out: &str, heading: &str) -> Vec<Vec<String>> {
        out.split("\n\n")
            .find_map(|s| {
                s.split_once(&format!("# {heading}\n"))
                    .map(|(_, rows)| rows)
            })
            .unwrap_or_else(|| panic!("no section {heading} in {out}"))
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn reports_print_in_every_format_and_each_run_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        // An unknown report is refused before anything is opened, naming the valid ones.
        let o = retain_in(d, &["report", "inventroy"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("inventory, forecast, holds, disposals, access"),
            "{}",
            stderr(&o)
        );
        assert!(!d.join("lake").exists());
        // A lake root without records is refused too.
        let o = retain_in(d, &["report", "inventory"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

        let demo = json(&retain_in(d, &["demo", "-n", "200", "--json"]));
        let by_category: BTreeMap<String, u64> = demo["by_category"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_u64().unwrap()))
            .collect();
        ok(retain_in(
            d,
            &[
                "hold",
                "create",
                "--matter",
                "Doe v. Clinic",
                "--reason",
                "served",
                "--by",
                "counsel",
                "--category",
                "clinical",
            ],
        ));

        // inventory as CSV: the categories and counts the demo landed.
        let o = ok(retain_in(d, &["report", "inventory", "--format", "csv"]));
        let out = stdout(&o);
        assert!(out.starts_with("# Inventory"), "{out}");
        let got: BTreeMap<String, u64> = csv_section(&out, "By category")
            .iter()
            .map(|r| (r[0].clone(), r[1].parse().unwrap()))
            .collect();
        assert_eq!(got, by_category);

        // holds as JSON: the one active hold covers the clinical records.
        let o = ok(retain_in(
            d,
            &[
                "report",
                "holds",
                "--format",
                "json",
                "--by",
                "records.manager",
            ],
        ));
        let holds: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(holds["report"], "holds");
        let active = holds["sections"][0]["rows"].as_array().unwrap();
        assert_eq!(active.len(), 1, "{holds}");
        assert_eq!(
            active[0]["records"].as_u64(),
            by_category.get("clinical").copied()
        );
        assert_eq!(active[0]["age_days"], 0);
        assert!(
            !stdout(&o).contains("Doe v. Clinic"),
            "no matter: {}",
            stdout(&o)
        );

        // forecast as HTML from a given month: one page, no scripts or outside assets.
        let o = ok(retain_in(
            d,
            &[
                "report",
                "forecast",
                "--format",
                "html",
                "--as-of",
                "2027-03-15",
            ],
        ));
        let html = stdout(&o);
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        assert!(
            html.contains("<svg") && html.contains(">2027-03</text>"),
            "{html}"
        );
        assert!(html.contains(">2029-02</text>") && !html.contains(">2029-03</text>"));
        for outside in ["<script", "<link", "src=", "@import"] {
            assert!(!html.contains(outside), "{outside} in the page");
        }

        // disposals and access as tables; a bad date or format is exit 2.
        let o = ok(retain_in(d, &["report", "disposals"]));
        assert!(stdout(&o).contains("Manifests"), "{}", stdout(&o));
        let o = ok(retain_in(d, &["report", "access", "--by", "auditor"]));
        assert!(stdout(&o).contains("records.manager"), "{}", stdout(&o));
        for bad in [
            &["report", "forecast", "--as-of", "soon"][..],
            &["report", "forecast", "--format", "pdf"][..],
        ] {
            let o = retain_in(d, bad);
            assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        }

        // Each run that printed a report wrote one export entry: who, which, what it read.
        let show = json(&retain_in(
            d,
            &["audit", "show", "--json", "--limit", "100"],
        ));
        let exports: Vec<&serde_json::Value> = show
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "export")
            .collect();
        assert_eq!(exports.len(), 5, "{exports:?}");
        let mut targets: Vec<&str> = exports
            .iter()
            .map(|e| e["target"].as_str().unwrap())
            .collect();
        targets.sort_unstable();
        assert_eq!(
            targets,
            [
                "report:access",
                "report:disposals",
                "report:forecast",
                "report:holds",
                "report:inventory"
            ]
        );
        let holds_entry = exports
            .iter()
            .find(|e| e["target"] == "report:holds")
            .unwrap();
        assert_eq!(holds_entry["actor"], "records.manager");
        assert_eq!(
            holds_entry["details"]["tables"],
            serde_json::json!(["holds", "records"])
        );
        assert_eq!(holds_entry["details"]["format"], "json");
        let forecast_entry = exports
            .iter()
            .find(|e| e["target"] == "report:forecast")
            .unwrap();
        assert_eq!(forecast_entry["details"]["as_of"], "2027-03-15");
        for e in &exports {
            assert_eq!(e["details"]["outcome"], "ok", "{e}");
            assert!(!e.to_string().contains("Doe v. Clinic"), "{e}");
        }
        let verify = json(&retain_in(d, &["audit", "verify", "--json"]));
        assert_eq!(verify["intact"], true, "{verify}");
    }
}

// ---------------------------------------------------------------------------------------------
// Event clocks (docs/events.md) and policy changes (docs/policy-changes.md): `retain run events`
// on the embedded broker, `retain policy diff|apply|lock` and `retain patient find`.

mod events {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use chrono::{Months, NaiveDate, Utc};
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use retain_codec::{
        EventKeys, EventType, Framing, RetentionEventMessage, encode_mail_message,
        encode_retention_event,
    };
    use retain_events::EventsTable;
    use retain_events::events_table::{StoredEvent, apply_events, match_rows};
    use retain_events::rows::{conform, row_views};
    use retain_generate::Generator;
    use retain_lake::RecordsTable;
    use retain_lake::deltalake::datafusion::prelude::SessionContext;
    use retain_model::{EventKind, MailMessage};
    use retain_policy::Policy;

    use super::run::{Env, setup, wait_rows};
    use super::{json, retain_in, root, stderr};

    const TOPIC: &str = "retain.retention-events";

    /// A `retain run` child (SIGKILLed and reaped on drop).
    struct Proc {
        name: String,
        child: Child,
        log: PathBuf,
    }

    impl Proc {
        fn start(name: &str, stage: &str, env: &Env) -> Proc {
            let log = env.dir.join(format!("{name}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let err = out.try_clone().unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_retain"))
                .args(["run", stage, "--config"])
                .arg(&env.config)
                .env("RETAIN_BROKERS", &env.brokers)
                .env("RETAIN_LAKE", &env.table)
                .env("RETAIN__EVENTS__MAX_LATENCY", "200ms")
                .env("RETAIN__EVENTS__MAX_EVENTS", "7")
                .env("RETAIN__SCHEDULER__EVENTS_REFRESH", "500ms")
                .env("RETAIN_LOG", "warn,librdkafka=error")
                .env_remove("RETAIN_POLICY")
                .env_remove("RETAIN_GROUP")
                .current_dir(root())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap();
            Proc {
                name: name.to_owned(),
                child,
                log,
            }
        }

        fn kill9(mut self) {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }

        fn assert_running(&mut self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited with {status}:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
        }

        /// SIGTERM; the exit code and everything it printed.
        fn terminate(mut self) -> (Option<i32>, String) {
            let pid = self.child.id().to_string();
            assert!(
                Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return (status.code(), std::fs::read_to_string(&self.log).unwrap());
                }
                assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            if self.child.try_wait().ok().flatten().is_none() {
                _ = self.child.kill();
                _ = self.child.wait();
            }
        }
    }

    /// What a user checks of a row.
    #[derive(Debug, Clone, PartialEq)]
    struct Row {
        category: String,
        created: Option<NaiveDate>,
        until: Option<NaiveDate>,
        status: String,
        governing: Option<String>,
        /// Ids of the events recorded on the row.
        events: BTreeSet<String>,
        refs: Vec<String>,
        tenant: String,
        custodian: String,
        mailbox: String,
        message_id: String,
    }

    /// Every row of `records` by record key.
    async fn snapshot(table: &str) -> BTreeMap<String, Row> {
        let t = RecordsTable::open_or_create(table, Default::default())
            .await
            .unwrap();
        let ctx = SessionContext::new();
        t.delta_table()
            .update_datafusion_session(&ctx.state())
            .unwrap();
        ctx.register_table("records", t.delta_table().table_provider().await.unwrap())
            .unwrap();
        let batches = ctx
            .sql("SELECT * FROM records")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for b in batches {
            let b = conform(&b).unwrap();
            for (v, m) in row_views(&b)
                .unwrap()
                .into_iter()
                .zip(match_rows(&b).unwrap())
            {
                let row = Row {
                    category: v.category.as_str().to_owned(),
                    created: v.created,
                    until: v.stored.retain_until,
                    status: v.stored.status.clone(),
                    governing: v.stored.governing.clone(),
                    events: v
                        .stored
                        .entries
                        .iter()
                        .filter(|e| e.status == "event")
                        .map(|e| e.citation.clone())
                        .collect(),
                    refs: m.patient_refs,
                    tenant: m.tenant,
                    custodian: m.custodian,
                    mailbox: m.mailbox,
                    message_id: m.message_id,
                };
                assert!(out.insert(v.record_key, row).is_none(), "one row per key");
            }
        }
        out
    }

    fn event(id: &str, kind: EventKind, date: NaiveDate, keys: EventKeys) -> RetentionEventMessage {
        RetentionEventMessage {
            event_id: id.to_owned(),
            kind: EventType::Clock(kind),
            date,
            action: None,
            keys,
            recorded_at: Utc::now(),
            source: "test".to_owned(),
        }
    }

    async fn produce_events(brokers: &str, events: &[RetentionEventMessage]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .create()
            .unwrap();
        for e in events {
            let bytes = encode_retention_event(e, Framing::SingleObject).unwrap();
            let r = FutureRecord::to(TOPIC)
                .key(e.event_id.as_bytes())
                .payload(&bytes);
            producer
                .send(r, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    /// The rows `retain sql` prints for `sql` over the lake at `lake`, as JSON objects.
    fn sql_rows(lake: &Path, sql: &str) -> Vec<serde_json::Value> {
        let o = super::retain(&[
            "sql",
            "--lake",
            lake.to_str().unwrap(),
            "--format",
            "json",
            "-c",
            sql,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn produce_raw(brokers: &str, key: &[u8], payload: &[u8]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .create()
            .unwrap();
        producer
            .send(
                FutureRecord::to(TOPIC).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// Every record on the events' dead-letter topic (payload, headers), read until a second
    /// brings nothing more.
    fn dead_letters(brokers: &str) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "events-dlq-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&format!("{TOPIC}.dlq"), 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut quiet = Instant::now();
        while quiet.elapsed() < Duration::from_secs(2) {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                                (h.key.to_owned(), v.into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((m.payload().unwrap_or_default().to_vec(), headers));
                quiet = Instant::now();
            }
        }
        out
    }

    async fn produce_mail(brokers: &str, mail: &[MailMessage]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for m in mail {
            let bytes = encode_mail_message(m, Framing::SingleObject).unwrap();
            let r = FutureRecord::to("retain.mail")
                .key(m.message_id.as_bytes())
                .payload(&bytes);
            producer
                .send(r, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }

    /// Topic records the events stage has committed (`retain-events-{p}` in `records`).
    async fn applied(table: &str) -> i64 {
        let mut t = RecordsTable::open_or_create(table, Default::default())
            .await
            .unwrap();
        t.committed_offsets("retain-events", [0, 1])
            .await
            .unwrap()
            .values()
            .sum()
    }

    /// Waits until the events stage has committed `n` topic records (its `retain-events-{p}`
    /// offsets in `records`), i.e. stored, applied and moved past all of them.
    async fn wait_applied(table: &str, n: i64, stage: &mut Proc) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = applied(table).await;
            if done >= n {
                return;
            }
            stage.assert_running();
            assert!(
                Instant::now() < deadline,
                "only {done} of {n} events applied"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn plus_years(d: NaiveDate, years: u32) -> NaiveDate {
        d.checked_add_months(Months::new(12 * years)).unwrap()
    }

    fn keys(tenant: &str) -> EventKeys {
        EventKeys {
            tenant: Some(tenant.to_owned()),
            ..EventKeys::default()
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn events_redate_landed_records_once_even_when_killed_or_replayed() {
        const N: usize = 400;
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let (broker, env) = setup(dir.path(), 100).await;
        // `retain run` has no facts source: a default jurisdiction and holder let clinical
        // mail be scheduled (otherwise it waits for a jurisdiction, whatever the events say).
        let policy_file = dir.path().join("ct.toml");
        std::fs::write(
            &policy_file,
            "[policy]\ndefault-jurisdiction = \"CT\"\ndefault-record-holder = \"hospital\"\n",
        )
        .unwrap();
        let config = std::fs::read_to_string(&env.config).unwrap();
        std::fs::write(
            &env.config,
            format!("policy = {:?}\n{config}", policy_file.to_str().unwrap()),
        )
        .unwrap();
        let policy = Policy::load(&policy_file).unwrap();
        let mail: Vec<MailMessage> = Generator::new(11).take(N).map(|g| g.message).collect();
        // Two HIPAA documentation messages, as the classifier will see them.
        let hipaa: Vec<&MailMessage> = mail
            .iter()
            .filter(|m| {
                policy.classify(m).category.as_str() == "hipaa_documentation"
                    && m.created_date().is_some()
            })
            .take(2)
            .collect();
        assert_eq!(hipaa.len(), 2, "the generator makes HIPAA documentation");
        let (h1, h2) = (hipaa[0], hipaa[1]);
        let (c1, c2) = (h1.created_date().unwrap(), h2.created_date().unwrap());

        // 1. An event produced before its record: h1's document superseded 3 years after the
        // message (last in effect + 6 years is the later date).
        let mut events = Proc::start("events-1", "events", &env);
        let d1 = plus_years(c1, 3);
        let mut k1 = keys(&h1.tenant);
        k1.message_id = Some(h1.message_id.clone());
        let e1 = event("ev-superseded-1", EventKind::Superseded, d1, k1);
        produce_events(&env.brokers, std::slice::from_ref(&e1)).await;
        wait_applied(&env.table, 1, &mut events).await;
        let mut stored = EventsTable::open_or_create(
            dir.path().join("events").to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            stored.all().await.unwrap().len(),
            1,
            "stored before any record"
        );

        // The classifier and the scheduler (`all` would start a second events stage).
        let mut classifier = super::run::Stage::start("classifier", "classifier", &env);
        let mut scheduler = super::run::Stage::start("scheduler", "scheduler", &env);
        produce_mail(&env.brokers, &mail).await;
        wait_rows(
            &env.table,
            N as i64,
            Duration::from_secs(90),
            &mut [&mut classifier, &mut scheduler],
        )
        .await;
        let landed = snapshot(&env.table).await;
        assert_eq!(landed.len(), N);
        let key_of =
            |m: &MailMessage| retain_lake::record_key(&m.tenant, &m.mailbox, &m.message_id);
        let r1 = &landed[&key_of(h1)];
        assert_eq!(r1.category, "hipaa_documentation");
        assert_eq!(r1.until, Some(plus_years(d1, 6)), "{r1:?}");
        assert!(r1.events.contains("ev-superseded-1"), "{r1:?}");
        // Without an event HIPAA documentation has no date (kept while in effect).
        let r2 = &landed[&key_of(h2)];
        assert_eq!(r2.until, None, "{r2:?}");
        assert_ne!(r2.status, "scheduled", "{r2:?}");

        // 2. After landing: h2's document was superseded two years before the message was
        // written (creation + 6 years is the later date), and one patient is discharged.
        let by_patient: BTreeMap<&str, usize> = landed
            .values()
            .filter(|r| r.category == "clinical")
            .flat_map(|r| r.refs.iter().map(String::as_str))
            .fold(BTreeMap::new(), |mut m, p| {
                *m.entry(p).or_default() += 1;
                m
            });
        assert!(by_patient.len() >= 2, "clinical mail of several patients");
        let mrn = by_patient
            .iter()
            .max_by_key(|(_, n)| **n)
            .unwrap()
            .0
            .to_string();
        let tenant = &h1.tenant;
        let mut k2 = keys(&h2.tenant);
        k2.message_id = Some(h2.message_id.clone());
        let e2 = event(
            "ev-superseded-2",
            EventKind::Superseded,
            c2 - chrono::Days::new(730),
            k2,
        );
        let mut k3 = keys(tenant);
        k3.patient_mrn = Some(mrn.clone());
        let discharged = NaiveDate::from_ymd_opt(2031, 6, 1).unwrap();
        let e3 = event("ev-discharged-1", EventKind::Discharged, discharged, k3);
        produce_events(&env.brokers, &[e2.clone(), e3.clone()]).await;
        wait_applied(&env.table, 3, &mut events).await;
        let after = snapshot(&env.table).await;
        assert_eq!(
            after[&key_of(h2)].until,
            Some(plus_years(c2, 6)),
            "{:?}",
            after[&key_of(h2)]
        );
        let mut moved = 0;
        for (key, before) in &landed {
            let now = &after[key];
            let patient = before.refs.contains(&mrn) && before.tenant == *tenant;
            if key == &key_of(h2) {
                continue;
            }
            if patient {
                assert!(now.events.contains("ev-discharged-1"), "{key}: {now:?}");
                if now.category == "clinical" {
                    // Connecticut hospitals: 10 years from the latest of discharge, last
                    // encounter and creation.
                    assert_eq!(
                        now.until,
                        Some(plus_years(discharged, 10)),
                        "{key}: {now:?}"
                    );
                    moved += 1;
                }
            } else {
                assert_eq!(now, before, "{key}: a record of another patient changed");
            }
        }
        assert!(
            moved > 0,
            "the discharge re-dated that patient's clinical records"
        );

        // 2b. A business-associate contract ends with `return`: every message of the custodian
        // the event names (in another case) is in the manifest for the mail system.
        let custodian = landed
            .values()
            .find(|r| r.tenant == *tenant)
            .unwrap()
            .custodian
            .clone();
        let mut kb = keys(tenant);
        kb.custodian = Some(custodian.to_uppercase());
        let mut eb = event(
            "ev-ba-return-1",
            EventKind::ContractTerminated,
            NaiveDate::from_ymd_opt(2030, 3, 1).unwrap(),
            kb,
        );
        eb.action = Some(retain_model::ContractAction::Return);
        produce_events(&env.brokers, std::slice::from_ref(&eb)).await;
        wait_applied(&env.table, 4, &mut events).await;
        let expected: BTreeSet<String> = landed
            .values()
            .filter(|r| {
                r.tenant == *tenant
                    && (r.custodian.eq_ignore_ascii_case(&custodian)
                        || r.mailbox.eq_ignore_ascii_case(&custodian))
            })
            .map(|r| r.message_id.clone())
            .collect();
        let manifest = sql_rows(
            &env.dir,
            "SELECT message_id, action, CAST(terminated AS VARCHAR) AS terminated \
             FROM ba_manifests WHERE event_id = 'ev-ba-return-1'",
        );
        assert!(
            manifest
                .iter()
                .all(|r| r["action"] == "return" && r["terminated"] == "2030-03-01")
        );
        let listed: BTreeSet<String> = manifest
            .iter()
            .map(|r| r["message_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed.len(), manifest.len(), "each message once");
        assert_eq!(listed, expected, "the manifest is the custodian's mail");

        // 3. Many events at once, the stage SIGKILLed while it works: after a restart the table
        // is what applying the same events without a kill gives.
        let baseline = dir.path().join("baseline");
        copy_dir(Path::new(&env.table), &baseline);
        let mut batch = Vec::new();
        for (i, p) in by_patient.keys().enumerate() {
            let mut k = keys(tenant);
            k.patient_mrn = Some((*p).to_owned());
            batch.push(event(
                &format!("ev-encounter-{i}"),
                EventKind::Encounter,
                NaiveDate::from_ymd_opt(2030, 1, 1).unwrap() + chrono::Days::new(i as u64),
                k,
            ));
        }
        produce_events(&env.brokers, &batch).await;
        tokio::time::sleep(Duration::from_millis(
            100 + u64::from(Utc::now().timestamp_subsec_millis()) % 800,
        ))
        .await;
        let at_kill = applied(&env.table).await;
        events.kill9();
        eprintln!(
            "killed the events stage with {} of {} events applied",
            at_kill,
            4 + batch.len()
        );
        let mut events = Proc::start("events-2", "events", &env);
        let total = 4 + batch.len() as i64;
        wait_applied(&env.table, total, &mut events).await;
        let killed = snapshot(&env.table).await;
        let mut expected =
            RecordsTable::open_or_create(baseline.to_str().unwrap(), Default::default())
                .await
                .unwrap();
        let as_stored: Vec<StoredEvent> = batch
            .iter()
            .map(|m| StoredEvent {
                message: m.clone(),
                stored_at: Utc::now(),
                partition: 0,
                offset: 0,
            })
            .collect();
        apply_events(&mut expected, &policy, &as_stored, Vec::new(), None)
            .await
            .unwrap();
        assert_eq!(
            killed,
            snapshot(baseline.to_str().unwrap()).await,
            "same table as without the kill"
        );
        assert_ne!(killed, after, "the batch changed records");
        assert_eq!(
            stored.all().await.unwrap().len() as i64,
            total,
            "each event stored once"
        );

        // 4. Replaying every event changes nothing; an undecodable one goes to the dead letters.
        let mut all = vec![e1, e2, e3, eb];
        all.extend(batch);
        produce_events(&env.brokers, &all).await;
        let garbage = b"not an event".as_slice();
        produce_raw(&env.brokers, b"bad-1", garbage).await;
        wait_applied(&env.table, 2 * total + 1, &mut events).await;
        let dead = dead_letters(&env.brokers);
        assert_eq!(dead.len(), 1, "one dead letter");
        assert_eq!(dead[0].0, garbage, "the payload as it came");
        assert!(
            dead[0].1.contains_key("retain.error") && dead[0].1["retain.source.topic"] == TOPIC,
            "{:?}",
            dead[0].1
        );
        // The dead-letter sink keeps a row for it in `dead_letters` (where it came from and why,
        // never the payload), once, across a restart.
        let dead_sql = || sql_rows(&env.dir, "SELECT * FROM dead_letters");
        for round in 0..2 {
            let mut sink =
                super::run::Stage::start(&format!("dead-letters-{round}"), "dead-letters", &env);
            let deadline = Instant::now() + Duration::from_secs(30);
            while dead_sql().is_empty() {
                sink.assert_running();
                assert!(Instant::now() < deadline, "no dead letter stored");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let (code, out) = sink.terminate();
            assert_eq!(code, Some(0), "{out}");
            let rows = dead_sql();
            assert_eq!(rows.len(), 1, "stored once: {rows:?}");
            let r = &rows[0];
            assert_eq!(r["dlq_topic"], format!("{TOPIC}.dlq"));
            assert_eq!(r["source_topic"], TOPIC);
            assert_eq!(r["message_key"], "bad-1");
            assert_eq!(r["payload_bytes"], garbage.len());
            assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
            assert!(!r.to_string().contains("not an event"), "no payload: {r}");
        }
        assert_eq!(
            snapshot(&env.table).await,
            killed,
            "a replay changes nothing"
        );
        assert_eq!(
            stored.all().await.unwrap().len() as i64,
            total,
            "a replay stores nothing"
        );

        let (code, out) = events.terminate();
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("1 dead-lettered"), "stats on exit: {out}");
        for stage in [classifier, scheduler] {
            let (code, out) = stage.terminate();
            assert_eq!(code, Some(0), "{out}");
        }
        // No PHI in what the stages print.
        for name in ["events-1", "events-2", "classifier", "scheduler"] {
            let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
            assert!(!log.contains(&mrn), "{name} printed a patient reference");
        }
        // One audit entry per applied event, naming the event id (never the patient).
        let o = super::retain(&[
            "audit",
            "show",
            "--lake",
            env.dir.to_str().unwrap(),
            "--limit",
            "0",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let entries: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        let applied: BTreeSet<&str> = entries
            .iter()
            .filter(|e| e["action"] == "retention_event_applied")
            .filter_map(|e| e["target"].as_str())
            .collect();
        assert!(applied.contains("ev-discharged-1"), "{applied:?}");
        assert!(!String::from_utf8_lossy(&o.stdout).contains(&mrn));
        broker.shutdown().await.unwrap();
        eprintln!("events stage test in {:?}", started.elapsed());
    }

    /// Administrative mail kept 1 year (was 3: earlier), transient mail 3 years (was 1: later).
    const CHANGED: &str = r#"
[[obligation]]
id = "org.administrative"
citation = "Records schedule RS-2: administrative mail kept 1 year"
source-quality = "organisational policy"
categories = ["administrative"]
jurisdictions = ["US"]
retain = { years = 1, from = "created" }

[[obligation]]
id = "org.transient"
citation = "Records schedule RS-2: transient mail kept 3 years"
source-quality = "organisational policy"
categories = ["transient"]
jurisdictions = ["US"]
retain = { years = 3, from = "created" }
"#;

    #[test]
    fn policy_diff_apply_lock_and_patient_find_on_the_demo_lake() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        json(&retain_in(d, &["demo", "-n", "300", "--json"]));
        let table = d.join("lake/records");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let before = rt.block_on(snapshot(table.to_str().unwrap()));
        // PHI a report must never print: every patient reference of the lake.
        let phi: BTreeSet<String> = before.values().flat_map(|r| r.refs.clone()).collect();
        assert!(!phi.is_empty(), "the demo lands patient mail");
        let no_phi = |o: &Output| {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o));
            for p in &phi {
                assert!(!text.contains(p.as_str()), "printed a patient reference");
            }
        };
        std::fs::write(d.join("changed.toml"), CHANGED).unwrap();

        // diff: what-if only; JSON counts; nothing written to records.
        let o = retain_in(
            d,
            &[
                "policy",
                "diff",
                "changed.toml",
                "--by",
                "records.manager",
                "--json",
            ],
        );
        no_phi(&o);
        let diff = json(&o);
        let t = &diff["total"];
        let changed = t["later"].as_u64().unwrap()
            + t["earlier"].as_u64().unwrap()
            + t["same_date"].as_u64().unwrap();
        assert!(t["earlier"].as_u64().unwrap() > 0, "{diff}");
        assert!(t["later"].as_u64().unwrap() > 0, "{diff}");
        assert_eq!(
            changed + t["unchanged"].as_u64().unwrap(),
            before.len() as u64
        );
        assert_eq!(
            rt.block_on(snapshot(table.to_str().unwrap())),
            before,
            "diff writes nothing"
        );
        let text = retain_in(
            d,
            &["policy", "diff", "changed.toml", "--by", "records.manager"],
        );
        assert!(text.status.success(), "{}", stderr(&text));
        no_phi(&text);
        assert!(String::from_utf8_lossy(&text.stdout).contains("later: "));

        // apply: needs a second person; rewrites exactly what diff counted; then idempotent.
        let o = retain_in(
            d,
            &[
                "policy",
                "apply",
                "changed.toml",
                "--by",
                "a.b",
                "--approved-by",
                "A.B",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let o = retain_in(
            d,
            &[
                "policy",
                "apply",
                "changed.toml",
                "--by",
                "records.manager",
                "--approved-by",
                "compliance.officer",
                "--json",
            ],
        );
        no_phi(&o);
        let applied = json(&o);
        assert_eq!(applied["rows_changed"].as_u64(), Some(changed), "{applied}");
        let after = rt.block_on(snapshot(table.to_str().unwrap()));
        let rewritten = before.iter().filter(|(k, r)| after[*k] != **r).count() as u64;
        assert!(rewritten > 0 && rewritten <= changed);
        let o = retain_in(
            d,
            &[
                "policy",
                "apply",
                "changed.toml",
                "--by",
                "records.manager",
                "--approved-by",
                "compliance.officer",
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(3),
            "nothing left to apply: {}",
            stderr(&o)
        );

        // lock: from then on a policy moving dates earlier (the pack's 3 years for
        // administrative mail is later, transient's 1 year earlier) is refused, exit 2.
        let o = retain_in(
            d,
            &["policy", "lock", "--by", "compliance.officer", "--json"],
        );
        assert_eq!(json(&o)["locked"], true);
        let o = retain_in(
            d,
            &[
                "policy",
                "apply",
                "builtin",
                "--by",
                "records.manager",
                "--approved-by",
                "compliance.officer",
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        no_phi(&o);
        assert_eq!(
            rt.block_on(snapshot(table.to_str().unwrap())),
            after,
            "refused: unchanged"
        );

        // patient find: the one command that prints patient data, audited by a hash.
        let mrn = phi.iter().next().unwrap();
        let o = retain_in(d, &["patient", "find", mrn]);
        assert_eq!(o.status.code(), Some(2), "--by is required: {}", stderr(&o));
        let found = json(&retain_in(
            d,
            &["patient", "find", mrn, "--by", "privacy.officer", "--json"],
        ));
        let keys: BTreeSet<&str> = found
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["record_key"].as_str().unwrap())
            .collect();
        let expected: BTreeSet<&str> = after
            .iter()
            .filter(|(_, r)| r.refs.contains(mrn))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, expected);

        // The audit trail: the dry run, the apply with its approver, the lock, the access.
        let audit = json(&retain_in(d, &["audit", "show", "--limit", "0", "--json"]));
        let text = audit.to_string();
        assert!(
            !text.contains(mrn.as_str()),
            "the audit trail names no patient"
        );
        let entries = audit.as_array().unwrap();
        let of = |action: &str| -> Vec<&serde_json::Value> {
            entries.iter().filter(|e| e["action"] == action).collect()
        };
        let policy = of("policy_applied");
        assert!(
            policy.iter().any(|e| e["details"]["dry_run"] == true),
            "{policy:?}"
        );
        assert!(
            policy
                .iter()
                .any(|e| e["details"]["approved_by"] == "compliance.officer"
                    && e["details"]["changed"].as_u64() == Some(changed)),
            "{policy:?}"
        );
        assert!(
            policy.iter().any(|e| e["target"] == "policy-lock"),
            "{policy:?}"
        );
        let access = of("patient_access");
        assert_eq!(access.len(), 1, "{access:?}");
        assert_eq!(access[0]["actor"], "privacy.officer");
        assert_eq!(
            access[0]["details"]["rows"].as_u64(),
            Some(expected.len() as u64)
        );
        let o = retain_in(d, &["audit", "verify"]);
        assert_eq!(o.status.code(), Some(0), "{}", super::stdout(&o));
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
}
