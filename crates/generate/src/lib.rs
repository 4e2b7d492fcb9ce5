//! Synthetic healthcare mail for demos, tests and benchmarks, deterministic per seed.
//!
//! A [`Generator`] yields [`Generated`] items: the metadata of one message as an importer would
//! produce it, the facts the EHR or contract system knows about the record (jurisdiction and
//! holder of the facility, the patient's birth date and encounters), and the retention events
//! that apply to it (a policy superseded, a contract terminated, an authorisation revoked, a
//! discharge). The mix imitates a multi-state health system: clinical threads about patients
//! (MRNs, ICD-10 codes, some minors), HIPAA policies and risk assessments, BAAs and vendor
//! mail, training, security incidents, marketing consents, Medicare/Medicaid work, quality
//! improvement, administrative and transient mail, and chatter no rule knows.
//!
//! Everything is invented: names, MRNs and addresses are synthetic (`*.example` domains).

use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use retain_model::{
    Address, Attachment, ContractAction, Direction, EventKind, Facts, MailMessage, RetentionEvent,
};

/// A small deterministic pseudo-random generator (xorshift64*): the same seed gives the same
/// sequence on every platform and version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is mapped to 1).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One of `items` (non-empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One generated record: message, facts and events, and the category it was written as.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The message metadata (with a bounded excerpt).
    pub message: MailMessage,
    /// What the EHR / contract system knows about the record.
    pub facts: Facts,
    /// Retention events that apply to the record.
    pub events: Vec<RetentionEvent>,
    /// The category the generator meant (for tests of the classifier; not ground truth law).
    pub intended: &'static str,
}

/// A facility of the synthetic health system.
#[derive(Debug, Clone, Copy)]
struct Facility {
    state: &'static str,
    holder: &'static str,
}

const FACILITIES: [Facility; 7] = [
    Facility {
        state: "CO",
        holder: "hospital",
    },
    Facility {
        state: "CO",
        holder: "physician",
    },
    Facility {
        state: "AZ",
        holder: "hospital",
    },
    Facility {
        state: "NY",
        holder: "hospital",
    },
    Facility {
        state: "TX",
        holder: "hospital",
    },
    Facility {
        state: "WA",
        holder: "hospital",
    },
    Facility {
        state: "CA",
        holder: "hospital",
    },
];

const TENANT: &str = "mercy";
const DOMAIN: &str = "mercyhealth.example";
const VENDORS: [&str; 6] = [
    "acme-billing.example",
    "cloudfax.example",
    "transcribe-pro.example",
    "labnet.example",
    "shredco.example",
    "claimsbridge.example",
];
const FIRST: [&str; 12] = [
    "alex", "jordan", "sam", "taylor", "morgan", "casey", "riley", "jamie", "drew", "quinn",
    "avery", "reese",
];
const LAST: [&str; 12] = [
    "garcia", "nguyen", "smith", "patel", "kim", "johnson", "lopez", "brown", "chen", "davis",
    "wilson", "martin",
];
const ICD: [&str; 10] = [
    "E11.9", "I10", "J45.901", "N18.3", "F32.A", "S72.001A", "Z79.4", "K21.9", "M54.50", "R07.9",
];
const FILLER: [&str; 8] = [
    "Please see the notes below and let me know if anything needs to change before Friday.",
    "Thanks for the quick turnaround; the team reviewed it this morning.",
    "I have copied the unit manager so the schedule can be updated.",
    "We discussed this at the huddle and agreed to revisit it next week.",
    "Attached are the figures from last quarter, by department and site.",
    "Following up on yesterday's call, here is what we agreed.",
    "Let me know if you have questions.",
    "Adding the team for visibility.",
];

/// How the generator spreads messages over kinds (percent, must sum to 100).
const MIX: [(Kind, usize); 11] = [
    (Kind::Clinical, 30),
    (Kind::Administrative, 18),
    (Kind::Transient, 12),
    (Kind::HipaaDocumentation, 6),
    (Kind::BusinessAssociate, 6),
    (Kind::Training, 5),
    (Kind::Program, 5),
    (Kind::Quality, 4),
    (Kind::Incident, 3),
    (Kind::Marketing, 3),
    (Kind::Chatter, 8),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Clinical,
    Administrative,
    Transient,
    HipaaDocumentation,
    BusinessAssociate,
    Training,
    Program,
    Quality,
    Incident,
    Marketing,
    Chatter,
}

/// A synthetic patient: MRN, birth date, home facility, last encounter.
#[derive(Debug, Clone)]
struct Patient {
    mrn: String,
    birth: NaiveDate,
    facility: Facility,
    thread: Option<String>,
}

/// Generates records deterministically: the same seed and options give the same sequence.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    index: u64,
    start: NaiveDate,
    span_days: u64,
    patients: Vec<Patient>,
}

impl Generator {
    /// A generator for `seed`, with sent dates from 2012-01-01 over 15 years (some records are
    /// due today, most are not).
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5EED_0F2E_7A1D_u64);
        let start = NaiveDate::from_ymd_opt(2012, 1, 1).unwrap_or_default();
        let patients = (0..2_000)
            .map(|i| {
                // One patient in five is a child at the time of their mail.
                let age_days = if rng.chance(20) {
                    rng.below(18 * 365)
                } else {
                    18 * 365 + rng.below(70 * 365)
                };
                let birth = NaiveDate::from_ymd_opt(2020, 1, 1)
                    .unwrap_or_default()
                    .checked_sub_days(Days::new(age_days as u64))
                    .unwrap_or_default();
                Patient {
                    mrn: format!("{:08}", 10_000_000 + i * 7919 % 89_999_999),
                    birth,
                    facility: *rng.pick(&FACILITIES),
                    thread: None,
                }
            })
            .collect();
        Generator {
            rng,
            index: 0,
            start,
            span_days: 15 * 365,
            patients,
        }
    }

    /// Sent dates from `start` over `span_days` days instead (at least one day): a run of
    /// generators over consecutive periods gives mail in the order a live stream lands it.
    pub fn with_period(mut self, start: NaiveDate, span_days: u64) -> Self {
        self.start = start;
        self.span_days = span_days.max(1);
        self
    }

    fn person(&mut self) -> (String, String) {
        let first = *self.rng.pick(&FIRST);
        let last = *self.rng.pick(&LAST);
        (
            format!("{} {}", capitalise(first), capitalise(last)),
            format!("{first}.{last}@{DOMAIN}"),
        )
    }

    fn filler(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| *self.rng.pick(&FILLER))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn sent(&mut self) -> DateTime<Utc> {
        let day = self.start + Days::new(self.rng.below(self.span_days as usize) as u64);
        let secs = self.rng.below(10 * 3600) as u32 + 7 * 3600;
        let t = day
            .and_hms_opt(secs / 3600, (secs / 60) % 60, secs % 60)
            .unwrap_or_default();
        Utc.from_utc_datetime(&t)
    }

    /// The next record.
    pub fn next_record(&mut self) -> Generated {
        self.index += 1;
        let mut roll = self.rng.below(100);
        let kind = MIX
            .iter()
            .find(|(_, pct)| {
                if roll < *pct {
                    true
                } else {
                    roll -= pct;
                    false
                }
            })
            .map_or(Kind::Chatter, |(k, _)| *k);
        let (from_name, from_addr) = self.person();
        let sent = self.sent();
        let mut m = MailMessage::new(
            format!(
                "{}.{:x}@{DOMAIN}",
                self.index,
                self.rng.next_u64() & 0xffff_ffff
            ),
            from_addr.split('@').next().unwrap_or("mailbox").to_owned(),
        );
        m.tenant = TENANT.to_owned();
        m.from = Some(Address {
            name: Some(from_name),
            address: from_addr,
        });
        let (_, to) = self.person();
        m.to = vec![Address::new(to)];
        if self.rng.chance(30) {
            let (_, cc) = self.person();
            m.cc.push(Address::new(cc));
        }
        m.direction = Direction::Internal;
        m.sent_at = Some(sent);
        m.received_at = Some(sent + chrono::Duration::seconds(1 + self.rng.below(90) as i64));
        m.folder = Some(
            if self.rng.chance(25) {
                "Sent Items"
            } else {
                "Inbox"
            }
            .to_owned(),
        );
        let facility = *self.rng.pick(&FACILITIES);
        let mut facts = Facts::default();
        let mut events = Vec::new();
        let sent_day = sent.date_naive();
        let intended = match kind {
            Kind::Clinical => {
                let pi = self.rng.below(self.patients.len());
                let p = self.patients[pi].clone();
                let icd = *self.rng.pick(&ICD);
                let subject = *self.rng.pick(&[
                    "Discharge summary",
                    "Lab results",
                    "Consult note",
                    "Patient update",
                    "Referral",
                    "Re: bed 12",
                    "Follow-up",
                ]);
                let dob = if self.rng.chance(20) {
                    format!(" DOB: {}.", p.birth.format("%m/%d/%Y"))
                } else {
                    String::new()
                };
                m.subject = Some(subject.to_owned());
                m.excerpt = Some(format!(
                    "Patient MRN {} seen today, dx {icd}.{dob} {} Plan: recheck in two weeks.",
                    p.mrn,
                    self.filler(2)
                ));
                // Threads: replies keep the patient's thread.
                match &p.thread {
                    Some(t) if self.rng.chance(50) => {
                        m.thread_id = Some(t.clone());
                        m.in_reply_to = Some(t.clone());
                        m.subject = Some(format!("Re: {subject}"));
                    }
                    _ => {
                        m.thread_id = Some(m.message_id.clone());
                        self.patients[pi].thread = Some(m.message_id.clone());
                    }
                }
                facts.jurisdiction = Some(p.facility.state.to_owned());
                facts.record_holder = Some(p.facility.holder.to_owned());
                facts.patient_birth_date = Some(p.birth);
                let encounter = sent_day
                    .checked_sub_days(Days::new(self.rng.below(5) as u64))
                    .unwrap_or(sent_day);
                facts.last_encounter_date = Some(encounter);
                if p.facility.holder == "hospital" && self.rng.chance(40) {
                    let discharge = sent_day + Days::new(self.rng.below(10) as u64);
                    events.push(RetentionEvent::new(EventKind::Discharged, discharge));
                }
                if self.rng.chance(10) {
                    facts.programs.push("medicare".to_owned());
                }
                "clinical"
            }
            Kind::HipaaDocumentation => {
                let doc = self.rng.below(40);
                let (subject, file) = *self.rng.pick(&[
                    ("Updated HIPAA policy", "Policy-{doc}-rev{rev}.pdf"),
                    ("Security risk assessment", "Risk-Assessment-{doc}.pdf"),
                    ("Notice of Privacy Practices revision", "NPP-rev{rev}.pdf"),
                    (
                        "Revised policy on device encryption",
                        "Policy-{doc}-rev{rev}.pdf",
                    ),
                ]);
                let rev = 1 + self.rng.below(5);
                m.subject = Some(format!("{subject} {doc}.{rev}"));
                m.excerpt = Some(format!(
                    "The attached document replaces the previous revision. {}",
                    self.filler(1)
                ));
                m.attachments.push(Attachment {
                    name: file
                        .replace("{doc}", &doc.to_string())
                        .replace("{rev}", &rev.to_string()),
                    media_type: "application/pdf".into(),
                    size_bytes: 80_000 + self.rng.below(400_000) as u64,
                });
                // Most documents have since been superseded.
                if self.rng.chance(70) {
                    let later = sent_day + Days::new(200 + self.rng.below(2_000) as u64);
                    events.push(RetentionEvent::new(EventKind::Superseded, later));
                }
                "hipaa_documentation"
            }
            Kind::BusinessAssociate => {
                let vendor = *self.rng.pick(&VENDORS);
                m.direction = Direction::Outbound;
                m.to = vec![Address::new(format!("accounts@{vendor}"))];
                m.subject = Some(
                    self.rng
                        .pick(&[
                            "Vendor onboarding",
                            "Data processing addendum",
                            "Offboarding: return or destroy PHI",
                            "Quarterly vendor review",
                        ])
                        .to_string(),
                );
                m.excerpt = Some(format!(
                    "As our business associate you handle PHI for us. {}",
                    self.filler(2)
                ));
                if self.rng.chance(40) {
                    let end = sent_day + Days::new(30 + self.rng.below(1_500) as u64);
                    events.push(RetentionEvent {
                        kind: EventKind::ContractTerminated,
                        date: end,
                        action: Some(*self.rng.pick(&[
                            ContractAction::Destroy,
                            ContractAction::Return,
                            ContractAction::Transfer,
                        ])),
                    });
                }
                "business_associate"
            }
            Kind::Training => {
                m.subject = Some(
                    self.rng
                        .pick(&[
                            "Annual HIPAA training completion",
                            "Security awareness training reminder",
                            "Certificate of completion",
                        ])
                        .to_string(),
                );
                m.excerpt = Some(self.filler(2));
                "training_record"
            }
            Kind::Incident => {
                m.subject = Some(
                    self.rng
                        .pick(&[
                            "Security incident report",
                            "Phishing report from the ED",
                            "Lost laptop",
                            "Privacy incident: misdirected fax",
                        ])
                        .to_string(),
                );
                m.excerpt = Some(format!(
                    "Reported to the privacy officer. {}",
                    self.filler(2)
                ));
                "security_incident"
            }
            Kind::Marketing => {
                m.direction = Direction::Inbound;
                m.from = Some(Address::new(format!(
                    "patient{}@mail.example",
                    self.rng.below(10_000)
                )));
                m.subject = Some(
                    self.rng
                        .pick(&[
                            "Marketing authorization",
                            "Revoke my authorization",
                            "Opt out of marketing",
                        ])
                        .to_string(),
                );
                m.excerpt = Some("I am writing about my marketing authorization.".to_owned());
                if self.rng.chance(50) {
                    events.push(RetentionEvent::new(
                        EventKind::AuthorizationRevoked,
                        sent_day + Days::new(self.rng.below(900) as u64),
                    ));
                }
                "marketing_authorization"
            }
            Kind::Program => {
                m.subject = Some(
                    self.rng
                        .pick(&[
                            "Medicare cost report",
                            "Medicaid managed care audit",
                            "CMS conditions of participation survey",
                            "RAC audit request",
                        ])
                        .to_string(),
                );
                m.excerpt = Some(self.filler(3));
                facts.programs.push(
                    self.rng
                        .pick(&["medicare", "medicaid_managed_care", "medicare_advantage"])
                        .to_string(),
                );
                "program_record"
            }
            Kind::Quality => {
                m.subject = Some(
                    self.rng
                        .pick(&[
                            "QI committee agenda",
                            "Root cause analysis: fall on 4W",
                            "Patient safety huddle notes",
                        ])
                        .to_string(),
                );
                m.excerpt = Some(self.filler(2));
                "quality_improvement"
            }
            Kind::Administrative => {
                m.subject = Some(
                    self.rng
                        .pick(&[
                            "Budget meeting",
                            "Staffing for March",
                            "Agenda for Thursday",
                            "Invoice 4471",
                            "Project timeline",
                        ])
                        .to_string(),
                );
                m.excerpt = Some(self.filler(3));
                "administrative"
            }
            Kind::Transient => {
                m.subject = Some(
                    self.rng
                        .pick(&[
                            "Out of office",
                            "Lunch on Friday",
                            "Newsletter: December",
                            "Parking garage closed",
                        ])
                        .to_string(),
                );
                m.excerpt = Some(self.filler(1));
                "transient"
            }
            Kind::Chatter => {
                m.subject = Some(
                    self.rng
                        .pick(&["hello", "quick question", "fyi", "see below", "thoughts?"])
                        .to_string(),
                );
                m.excerpt = Some(self.filler(2));
                "unclassified"
            }
        };
        if facts.jurisdiction.is_none() {
            facts.jurisdiction = Some(facility.state.to_owned());
            facts.record_holder = Some(facility.holder.to_owned());
        }
        m.custodian = Some(format!("{}@{DOMAIN}", m.mailbox));
        m.size_bytes = 2_000
            + m.excerpt.as_deref().map_or(0, str::len) as u64 * 3
            + m.attachments.iter().map(|a| a.size_bytes).sum::<u64>();
        Generated {
            message: m,
            facts,
            events,
            intended,
        }
    }
}

impl Iterator for Generator {
    type Item = Generated;

    fn next(&mut self) -> Option<Generated> {
        Some(self.next_record())
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}
