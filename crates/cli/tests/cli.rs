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

/// Python `deltalake` (delta-rs, installed by .ci/run) reads the demo's table: same row count,
/// same counts per category, every record key once.
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
print(json.dumps({"rows": t.num_rows, "distinct": len(set(keys)),
                  "by_category": collections.Counter(t.column("category").to_pylist())}))
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
}
