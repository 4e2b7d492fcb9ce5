//! Workloads for the benchmarks: deterministic synthetic healthcare mail and a large policy.
//!
//! The messages imitate what the classifier sees in production: short subjects, bounded
//! excerpts (200-600 characters), a mix of clinical mail with MRNs and ICD-10 codes, compliance
//! documents, vendor mail, administrative and transient mail, and mail no rule knows.

use chrono::{Days, NaiveDate, TimeZone, Utc};
use retain_model::{Address, Attachment, Direction, Facts, MailMessage};

pub use retain_generate::Rng;

const FILLER: &[&str] = &[
    "Please see the notes below and let me know if anything needs to change before Friday.",
    "Thanks for the quick turnaround on this; the team reviewed it this morning.",
    "I have copied the unit manager so that the schedule can be updated accordingly.",
    "We discussed this at the huddle and agreed to revisit it after the audit window closes.",
    "Attached are the figures from last quarter, broken down by department and site.",
    "Following up on yesterday's call, here is the summary of what we agreed.",
];

const ICD: &[&str] = &[
    "E11.9", "I10", "J45.901", "N18.3", "F32.A", "S72.001A", "Z79.4",
];

/// A synthetic message of the given kind index (0..10) with a realistic excerpt.
pub fn message(rng: &mut Rng, i: usize) -> MailMessage {
    let kind = rng.below(10);
    let mut m = MailMessage::new(
        format!("{i}.{}@mercy.example", rng.next_u64() % 1_000_000),
        format!("user{}", rng.below(500)),
    );
    m.tenant = "mercy".into();
    m.direction = *rng.pick(&[Direction::Internal, Direction::Inbound, Direction::Outbound]);
    m.from = Some(Address::new(format!(
        "user{}@mercy.example",
        rng.below(500)
    )));
    m.to = (0..1 + rng.below(3))
        .map(|_| Address::new(format!("user{}@mercy.example", rng.below(500))))
        .collect();
    let day = rng.below(3650) as u64;
    let created =
        NaiveDate::from_ymd_opt(2015, 1, 1).and_then(|d| d.checked_add_days(Days::new(day)));
    m.sent_at = created.and_then(|d| Utc.from_local_datetime(&d.and_hms_opt(9, 30, 0)?).single());
    m.folder = Some(
        rng.pick(&["Inbox", "Sent Items", "Inbox/Projects", "Archive/2019"])
            .to_string(),
    );
    let filler = |rng: &mut Rng, n: usize| {
        (0..n)
            .map(|_| *rng.pick(FILLER))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (subject, excerpt) = match kind {
        0 | 1 => (
            rng.pick(&[
                "Follow-up on bed 12",
                "Re: labs this morning",
                "Discharge summary",
                "Consult request",
            ])
            .to_string(),
            format!(
                "Patient MRN {:08} seen today, dx {}. {} Plan: recheck in two weeks.",
                rng.below(100_000_000),
                rng.pick(ICD),
                filler(rng, 3)
            ),
        ),
        2 => (
            rng.pick(&[
                "Updated HIPAA policy on device encryption",
                "Security risk assessment 2021",
                "Notice of Privacy Practices revision",
            ])
            .to_string(),
            filler(rng, 4),
        ),
        3 => (
            rng.pick(&[
                "Annual HIPAA training completion",
                "Phishing report from ED",
                "Medicare cost report FY2020",
            ])
            .to_string(),
            filler(rng, 3),
        ),
        4 => (
            "Vendor onboarding".to_string(),
            format!(
                "Our business associate needs the data processing addendum. {}",
                filler(rng, 3)
            ),
        ),
        5 | 6 => (
            rng.pick(&[
                "Budget meeting",
                "Staffing for March",
                "Agenda for Thursday",
                "Invoice 4471",
            ])
            .to_string(),
            filler(rng, 4),
        ),
        7 => (
            rng.pick(&["Out of office", "Lunch on Friday", "Newsletter: December"])
                .to_string(),
            filler(rng, 2),
        ),
        _ => (
            rng.pick(&["hello", "quick question", "fyi", "see below"])
                .to_string(),
            filler(rng, 3),
        ),
    };
    m.subject = Some(subject);
    m.excerpt = Some(excerpt);
    if rng.below(5) == 0 {
        m.attachments.push(Attachment {
            name: rng
                .pick(&["scan.pdf", "Policy-4.2.pdf", "figures.xlsx", "photo.jpg"])
                .to_string(),
            media_type: "application/pdf".into(),
            size_bytes: 10_000 + rng.below(1_000_000) as u64,
        });
    }
    m
}

/// `n` synthetic messages, deterministic for a seed.
pub fn messages(n: usize, seed: u64) -> Vec<MailMessage> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| message(&mut rng, i)).collect()
}

/// Facts for clinical scheduling: a state, a holder and a patient.
pub fn facts(rng: &mut Rng) -> Facts {
    let states = ["CO", "CA", "NY", "TX", "WA", "AZ", "MA", "NC", "FL", "PA"];
    let birth = NaiveDate::from_ymd_opt(1940, 1, 1)
        .and_then(|d| d.checked_add_days(Days::new(rng.below(30_000) as u64)));
    let enc = NaiveDate::from_ymd_opt(2015, 1, 1)
        .and_then(|d| d.checked_add_days(Days::new(rng.below(3650) as u64)));
    Facts {
        jurisdiction: Some(rng.pick(&states).to_string()),
        record_holder: Some(rng.pick(&["hospital", "physician"]).to_string()),
        patient_birth_date: birth,
        last_encounter_date: enc,
        ..Facts::default()
    }
}

/// An organisation policy adding `n` rules of the kinds organisations write (vendor domains,
/// project keywords, folders, subject regexes) over the built-in pack.
pub fn large_policy(n: usize) -> String {
    let mut s = String::from("[policy]\nname = \"bench\"\n");
    for i in 0..n {
        let (category, cond) = match i % 4 {
            0 => (
                "business_associate",
                format!(
                    "when.participant-domain = [\"vendor{i}.example\", \"svc{i}.vendor.example\"]"
                ),
            ),
            1 => (
                "administrative",
                format!("when.text-keywords = [\"project alpha-{i}\", \"initiative {i}x\"]"),
            ),
            2 => (
                "quality_improvement",
                format!("when.folder = [\"Inbox/QI/Team{i}*\"]"),
            ),
            _ => (
                "program_record",
                format!("when.subject-regex = ['(?i)\\bclaim\\s+#?{i}-\\d{{4}}\\b']"),
            ),
        };
        s.push_str(&format!(
            "\n[[rule]]\nid = \"org.rule{i}\"\ncategory = \"{category}\"\npriority = {}\n{cond}\n",
            100 + (i * 7) % 900
        ));
    }
    s
}
