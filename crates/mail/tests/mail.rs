//! Reads the categorised Enron corpus (`shared/data/enron-categorized`) end to end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use retain_mail::{Error, MailSource, MailboxRule, MessageContext, SkipReason};
use retain_model::{Direction, MailMessage};

fn corpus() -> Option<PathBuf> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/enron-categorized");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: Enron corpus not found at {} (shared/data is laid beside the workspace)",
            dir.display()
        );
        None
    }
}

fn ctx() -> MessageContext {
    MessageContext::new(
        "enron",
        MailboxRule::FromXOrigin {
            fallback: "unknown".into(),
        },
        "2024-01-01T00:00:00Z".parse().unwrap(),
    )
    .with_internal_domains(["enron.com"])
}

/// The `Date:` header line of a corpus file, read straight from the bytes.
fn raw_date_header(path: &std::path::Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap();
    raw.lines()
        .take_while(|l| !l.trim().is_empty())
        .find(|l| l.starts_with("Date:"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn enron_corpus() {
    let Some(dir) = corpus() else { return };
    let ctx = ctx();
    let mut messages: Vec<(PathBuf, MailMessage)> = Vec::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut skipped_names: Vec<PathBuf> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for item in MailSource::new(&dir, ctx.clone()) {
        match item {
            Ok((at, m)) => {
                assert!(at.mbox.is_none(), "{at}");
                messages.push((at.path, m));
            }
            Err(Error::NotAMessage { at, reason }) => {
                assert_eq!(reason, SkipReason::NoHeaderBlock, "{at}");
                let ext = at.path.extension().unwrap().to_string_lossy().into_owned();
                *skipped.entry(ext).or_default() += 1;
                skipped_names.push(at.path);
            }
            Err(other) => failures.push(other.to_string()),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Every message file (`<category>/<id>.txt`) parses; the `.cats` label files and the
    // top-level `categories.txt` description are reported as skipped.
    assert_eq!(messages.len(), 1702);
    assert!(
        messages
            .iter()
            .all(|(p, _)| p.extension().unwrap() == "txt" && p.parent().unwrap() != dir)
    );
    assert_eq!(skipped.get("cats"), Some(&1702));
    assert_eq!(skipped.get("txt"), Some(&1));
    assert!(skipped_names.contains(&dir.join("categories.txt")));

    // Identity: every file has its own Message-ID.
    assert!(
        messages
            .iter()
            .all(|(_, m)| !m.message_id.starts_with("sha256:"))
    );
    let ids: BTreeSet<_> = messages.iter().map(|(_, m)| &m.message_id).collect();
    assert_eq!(ids.len(), 1702);

    // Custodians from X-Origin, case-folded (the export writes KEAN-S and Kean-S).
    let custodians: BTreeSet<_> = messages
        .iter()
        .map(|(_, m)| m.custodian.clone().expect("every file has X-Origin"))
        .collect();
    assert_eq!(custodians.len(), 60);
    assert!(custodians.contains("kean-s") && custodians.contains("skilling-j"));
    assert!(
        messages
            .iter()
            .all(|(_, m)| Some(m.mailbox.as_str()) == m.custodian.as_deref())
    );

    // The 13 messages dated `Mon, 31 Dec 1979 16:00:00 -0800` (the PST zero date) have no
    // sent date; every other Date header is plausible.
    let bogus: Vec<_> = messages
        .iter()
        .filter(|(p, _)| raw_date_header(p).contains(" 1979 "))
        .collect();
    assert_eq!(bogus.len(), 13);
    assert!(bogus.iter().all(|(_, m)| m.sent_at.is_none()));
    assert_eq!(
        messages.iter().filter(|(_, m)| m.sent_at.is_none()).count(),
        13
    );
    let warnings = ctx.warnings.snapshot();
    assert_eq!(warnings.implausible_date, 13);
    assert_eq!(warnings.total(), 13, "{warnings:?}");
    let years: BTreeSet<_> = messages
        .iter()
        .filter_map(|(_, m)| m.created_date())
        .map(|d| chrono::Datelike::year(&d))
        .collect();
    assert_eq!(years.first(), Some(&1997));
    assert_eq!(years.last(), Some(&2002));

    // Folders come from X-Folder; the text/plain exports carry no MIME attachments.
    assert!(messages.iter().all(|(_, m)| m.folder.is_some()));
    assert!(
        messages.iter().any(|(_, m)| {
            m.folder.as_deref() == Some("JSKILLIN (Non-Privileged)/Deleted Items")
        })
    );
    let attachments: usize = messages.iter().map(|(_, m)| m.attachments.len()).sum();
    assert_eq!(attachments, 0);

    // Every message gets a thread and a bounded excerpt; direction is known for most.
    assert!(messages.iter().all(|(_, m)| m.thread_id.is_some()));
    assert!(messages.iter().all(|(_, m)| {
        m.excerpt
            .as_ref()
            .is_none_or(|e| e.chars().count() <= MessageContext::DEFAULT_EXCERPT_CHARS)
    }));
    let mut directions: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, m) in &messages {
        *directions.entry(m.direction.as_str()).or_default() += 1;
    }
    eprintln!("directions: {directions:?}");
    assert!(
        directions
            .get(Direction::Internal.as_str())
            .copied()
            .unwrap_or(0)
            > 800
    );

    // Deterministic: a second walk yields the same files in the same order.
    let again: Vec<PathBuf> = MailSource::new(&dir, ctx.clone())
        .filter_map(|item| item.ok().map(|(at, _)| at.path))
        .collect();
    let first: Vec<PathBuf> = messages.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(again, first);
}
