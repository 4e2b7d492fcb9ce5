//! The classifier: rules compiled into a few set matchers, so the cost per message grows with
//! the text, not with the number of rules.
//!
//! Every field condition of every rule (`when` and `unless`) becomes one *atom* (a bit). For a
//! message: one keyword automaton per text field (all rules' keywords and the patient-care
//! terms, walked from word starts), the PHI detectors, one `GlobSet` per name field and hash
//! lookups for addresses, domains and labels set the atoms; the `RegexSet` of a text field runs
//! only if a rule that needs it has its other conditions met. A rule matches when every `when`
//! atom is set and no `unless` atom is. Only rules indexed under a set atom are looked at, in
//! precedence order (priority, then order written); the first match decides.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::MatchKind;
use aho_corasick::automaton::Automaton as _;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::{Regex, RegexSet, RegexSetBuilder};
use retain_model::{Category, Classification, Direction, MailMessage, PhiIndicators};

use crate::doc::{ConditionsDoc, Located, MergedDoc, RuleDoc};
use crate::error::Result;

/// Default MRN pattern: "MRN" followed by 6-10 digits. Group 1 is the number.
pub(crate) const DEFAULT_MRN_PATTERN: &str = r"(?i)\bMRN\s*(?:#|:|no\.?|number)?\s*([0-9]{6,10})\b";
/// "ICD-10: I10": a code named as one (dotted codes are found by [`has_dotted_icd10`]).
const ICD10_LABELLED_PATTERN: &str =
    r"(?i:\bICD-?10(?:-CM)?\s*(?:code)?\s*[:#]?\s*)[A-TV-Z][0-9][0-9AB]\b";
/// A date next to a date-of-birth marker.
const DOB_PATTERN: &str = r"(?i)\b(?:DOB|D\.O\.B\.?|date of birth|birth ?date)\s*[:#-]?\s*(?:\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}|[A-Za-z]{3,9}\.? \d{1,2},? \d{4})";
/// Default patient-care terms.
pub(crate) const DEFAULT_PATIENT_TERMS: &[&str] = &[
    "patient",
    "patients",
    "diagnosis",
    "dx",
    "discharge summary",
    "lab results",
    "lab result",
    "prescription",
    "medication",
    "medications",
    "referral",
    "treatment plan",
    "progress note",
    "admitted",
    "admission",
    "consult note",
    "radiology report",
    "pathology report",
];

type AtomId = u32;

/// A keyword effect that is not a rule atom: the PHI indicator "patient-care terms".
const PATIENT_TERM: AtomId = AtomId::MAX;

/// A set of atoms, remembering which were set (there are few per message).
struct Bits {
    words: Vec<u64>,
    list: Vec<AtomId>,
}

impl Bits {
    fn new(n: usize) -> Self {
        Bits {
            words: vec![0; n.div_ceil(64).max(1)],
            list: Vec::new(),
        }
    }
    fn set(&mut self, a: AtomId) {
        let w = &mut self.words[(a / 64) as usize];
        let bit = 1 << (a % 64);
        if *w & bit == 0 {
            *w |= bit;
            self.list.push(a);
        }
    }
    fn get(&self, a: AtomId) -> bool {
        self.words[(a / 64) as usize] & (1 << (a % 64)) != 0
    }
    fn set_all(&mut self, atoms: &[AtomId]) {
        for a in atoms {
            self.set(*a);
        }
    }
}

/// Keywords for one text field, matched whole-word and case-insensitively.
struct KeywordField {
    patterns: Vec<String>,
    atoms: Vec<Vec<AtomId>>,
    index: HashMap<String, usize>,
    automaton: Option<aho_corasick::dfa::DFA>,
    start: aho_corasick::automaton::StateID,
    /// Bytes that are not word characters but start some keyword (e.g. `#` or `.`).
    odd_starts: Vec<bool>,
}

impl Default for KeywordField {
    fn default() -> Self {
        KeywordField {
            patterns: Vec::new(),
            atoms: Vec::new(),
            index: HashMap::new(),
            automaton: None,
            start: aho_corasick::automaton::StateID::ZERO,
            odd_starts: vec![false; 256],
        }
    }
}

impl KeywordField {
    fn add(&mut self, keyword: &str, atom: AtomId) {
        let k = keyword.trim().to_ascii_lowercase();
        if let Some(&first) = k.as_bytes().first()
            && !is_word(first)
        {
            self.odd_starts[first as usize] = true;
        }
        let i = *self.index.entry(k.clone()).or_insert_with(|| {
            self.patterns.push(k);
            self.atoms.push(Vec::new());
            self.patterns.len() - 1
        });
        self.atoms[i].push(atom);
    }

    fn build(&mut self) -> std::result::Result<(), String> {
        if !self.patterns.is_empty() {
            let dfa = aho_corasick::dfa::DFA::builder()
                .match_kind(MatchKind::Standard)
                // Anchored only: it is started where a word starts, never slid over bytes.
                .start_kind(aho_corasick::StartKind::Anchored)
                .build(&self.patterns)
                .map_err(|e| e.to_string())?;
            let start = dfa
                .start_state(aho_corasick::Anchored::Yes)
                .map_err(|e| e.to_string())?;
            self.start = start;
            let ac = dfa;
            self.automaton = Some(ac);
        }
        Ok(())
    }

    /// Calls `hit` with the index of every keyword found as a whole word in `text`.
    ///
    /// A whole-word keyword can only start where a word starts, so the automaton is run
    /// anchored from each word start (and from each byte a keyword may start with that is not
    /// a word character) rather than over every byte: a few steps per word instead of one per
    /// byte through the automaton.
    fn scan(&self, text: &str, mut hit: impl FnMut(usize)) {
        let Some(ac) = &self.automaton else { return };
        // Patterns are ASCII-lower-cased; folding the text once is cheaper than a
        // case-insensitive automaton.
        let lower = text.as_bytes().to_ascii_lowercase();
        let bytes = lower.as_slice();
        let mut prev_word = false;
        for (start, &b) in bytes.iter().enumerate() {
            let word = is_word(b);
            let candidate = if word {
                !prev_word
            } else {
                self.odd_starts[b as usize]
            };
            prev_word = word;
            if !candidate {
                continue;
            }
            // Walk the DFA from here until it dies; report every keyword ending on the way.
            let mut sid = self.start;
            for (end, &byte) in bytes.iter().enumerate().skip(start) {
                sid = ac.next_state(aho_corasick::Anchored::Yes, sid, byte);
                if ac.is_special(sid) {
                    if ac.is_dead(sid) {
                        break;
                    }
                    for k in 0..ac.match_len(sid) {
                        let pid = ac.match_pattern(sid, k);
                        let from = end + 1 - ac.pattern_len(pid);
                        if whole_word(bytes, from, end + 1) {
                            hit(pid.as_usize());
                        }
                    }
                }
            }
        }
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Whether `[start, end)` is not glued to a word character on either side (edges of the match
/// that are themselves non-word characters need no boundary).
fn whole_word(text: &[u8], start: usize, end: usize) -> bool {
    let left_ok = start == 0 || !is_word(text[start]) || !is_word(text[start - 1]);
    let right_ok = end == text.len() || !is_word(text[end - 1]) || !is_word(text[end]);
    left_ok && right_ok
}

/// Regexes for one text field, matched in one pass.
#[derive(Default)]
struct RegexField {
    patterns: Vec<String>,
    atoms: Vec<AtomId>,
    set: Option<RegexSet>,
}

impl RegexField {
    fn add(&mut self, pattern: &str, atom: AtomId) -> std::result::Result<(), String> {
        Regex::new(pattern).map_err(|e| format!("invalid regex: {e}"))?;
        self.patterns.push(pattern.to_owned());
        self.atoms.push(atom);
        Ok(())
    }

    fn build(&mut self) -> std::result::Result<(), String> {
        if !self.patterns.is_empty() {
            let set = RegexSetBuilder::new(&self.patterns)
                .size_limit(64 << 20)
                .build()
                .map_err(|e| e.to_string())?;
            self.set = Some(set);
        }
        Ok(())
    }

    fn scan(&self, text: &str, bits: &mut Bits) {
        if let Some(set) = &self.set {
            for i in set.matches(text).iter() {
                bits.set(self.atoms[i]);
            }
        }
    }
}

/// Globs for one name field (folder, mailbox, attachment name), case-insensitive.
struct GlobField {
    builder: GlobSetBuilder,
    atoms: Vec<AtomId>,
    set: Option<GlobSet>,
}

impl Default for GlobField {
    fn default() -> Self {
        GlobField {
            builder: GlobSetBuilder::new(),
            atoms: Vec::new(),
            set: None,
        }
    }
}

impl GlobField {
    fn add(&mut self, glob: &str, atom: AtomId) -> std::result::Result<(), String> {
        let g = GlobBuilder::new(glob)
            .case_insensitive(true)
            .literal_separator(false)
            .build()
            .map_err(|e| e.to_string())?;
        self.builder.add(g);
        self.atoms.push(atom);
        Ok(())
    }

    fn build(&mut self) -> std::result::Result<(), String> {
        if !self.atoms.is_empty() {
            let b = std::mem::replace(&mut self.builder, GlobSetBuilder::new());
            self.set = Some(b.build().map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    fn scan(&self, name: &str, bits: &mut Bits, scratch: &mut Vec<usize>) {
        if let Some(set) = &self.set {
            set.matches_into(name, scratch);
            for i in scratch.iter() {
                bits.set(self.atoms[*i]);
            }
        }
    }
}

/// Exact lookups (addresses, domains, labels), lower-cased.
#[derive(Default)]
struct LookupField(HashMap<String, Vec<AtomId>>);

impl LookupField {
    fn add(&mut self, key: &str, atom: AtomId) {
        self.0
            .entry(key.trim().to_lowercase())
            .or_default()
            .push(atom);
    }

    fn scan(&self, key: &str, bits: &mut Bits) {
        if self.0.is_empty() {
            return;
        }
        let hit = if key.bytes().any(|b| b.is_ascii_uppercase()) {
            self.0.get(&key.to_ascii_lowercase())
        } else {
            self.0.get(key)
        };
        if let Some(atoms) = hit {
            bits.set_all(atoms);
        }
    }

    /// A domain and each parent domain (`a.b.org`, `b.org`, `org`).
    fn scan_domain(&self, domain: &str, bits: &mut Bits) {
        if self.0.is_empty() {
            return;
        }
        let mut d = domain;
        loop {
            self.scan(d, bits);
            match d.split_once('.') {
                Some((_, rest)) if !rest.is_empty() => d = rest,
                _ => break,
            }
        }
    }
}

/// One compiled rule.
struct Rule {
    id: Arc<str>,
    category: Category,
    confidence: f32,
    when: Vec<AtomId>,
    unless: Vec<AtomId>,
    /// The `when` atoms that are not regexes (decided before any regex runs).
    cheap_when: Vec<AtomId>,
    /// Which text fields' regexes this rule needs ([`SUBJECT`], [`EXCERPT`]).
    regex_fields: u8,
}

/// Regex atoms on the subject.
const SUBJECT: u8 = 1;
/// Regex atoms on the excerpt.
const EXCERPT: u8 = 2;

/// The PHI detector: MRN patterns (with capture group), ICD-10 codes and dates of birth.
/// Patient-care terms are found by the keyword automata (the [`PATIENT_TERM`] effect).
/// Each pattern is its own `Regex` so each gets its own literal prefilter: most text is
/// skipped at memchr speed, where a `RegexSet` would walk every byte through one DFA.
struct Phi {
    mrn: Vec<Regex>,
    /// Codes labelled "ICD-10"; `Some` when ICD-10 detection is on.
    icd10: Option<Regex>,
    dob: Option<Regex>,
}

impl Phi {
    fn scan(&self, text: &str, phi: &mut PhiIndicators, refs: &mut Vec<String>) {
        for re in &self.mrn {
            for c in re.captures_iter(text) {
                phi.mrn = true;
                if let Some(g) = c.get(1) {
                    let s = g.as_str();
                    if !refs.iter().any(|r| r == s) {
                        refs.push(s.to_owned());
                    }
                }
            }
        }
        if !phi.icd10
            && let Some(labelled) = &self.icd10
            && (has_dotted_icd10(text.as_bytes()) || labelled.is_match(text))
        {
            phi.icd10 = true;
        }
        if !phi.dob && self.dob.as_ref().is_some_and(|re| re.is_match(text)) {
            phi.dob = true;
        }
    }
}

/// The compiled classifier.
pub(crate) struct Classifier {
    atom_count: usize,
    rules: Vec<Rule>,
    subject_kw: KeywordField,
    excerpt_kw: KeywordField,
    subject_re: RegexField,
    excerpt_re: RegexField,
    from: LookupField,
    to: LookupField,
    from_domain: LookupField,
    to_domain: LookupField,
    participant_domain: LookupField,
    labels: LookupField,
    mailbox: GlobField,
    folder: GlobField,
    attachment_name: GlobField,
    attachment_type: Vec<(String, AtomId)>,
    direction: Vec<(Direction, AtomId)>,
    phi_atoms: Vec<(&'static str, AtomId)>,
    has_attachment: Vec<(bool, AtomId)>,
    /// Regex atoms and the fields they scan: run only when a rule could still match.
    regex_atoms: HashMap<AtomId, u8>,
    /// Rules by one of their `when` atoms (a cheap one where there is one): a rule can only
    /// match when that atom is set, so only these rules are looked at.
    keyed: Vec<Vec<u32>>,
    /// Rules with no `when` condition (match everything not excluded by `unless`).
    unkeyed: Vec<u32>,
    /// Regex fields needed whatever the message (rules whose `when` is regexes only).
    always_need: u8,
    phi: Phi,
}

const PHI_CODES: [&str; 4] = ["mrn", "icd10", "dob", "patient_terms"];

impl Classifier {
    pub fn compile(doc: &MergedDoc, categories: &HashMap<String, Category>) -> Result<Self> {
        let mut c = Classifier {
            atom_count: 0,
            rules: Vec::new(),
            subject_kw: KeywordField::default(),
            excerpt_kw: KeywordField::default(),
            subject_re: RegexField::default(),
            excerpt_re: RegexField::default(),
            from: LookupField::default(),
            to: LookupField::default(),
            from_domain: LookupField::default(),
            to_domain: LookupField::default(),
            participant_domain: LookupField::default(),
            labels: LookupField::default(),
            mailbox: GlobField::default(),
            folder: GlobField::default(),
            attachment_name: GlobField::default(),
            attachment_type: Vec::new(),
            direction: Vec::new(),
            phi_atoms: Vec::new(),
            has_attachment: Vec::new(),
            regex_atoms: HashMap::new(),
            keyed: Vec::new(),
            unkeyed: Vec::new(),
            always_need: 0,
            phi: compile_phi(doc)?,
        };

        // Precedence: priority (high first), then the order the rules were written in.
        let mut ordered: Vec<&Located<RuleDoc>> = doc
            .rules
            .iter()
            .filter(|r| r.item.enabled && !doc.header.disable_rules.contains(&r.item.id))
            .collect();
        ordered.sort_by_key(|r| std::cmp::Reverse(r.item.priority));

        for r in ordered {
            let item = format!("rule `{}`", r.item.id);
            let rule = &r.item;
            let category = categories.get(&rule.category).cloned().ok_or_else(|| {
                let mut known: Vec<&str> = categories.keys().map(String::as_str).collect();
                known.sort_unstable();
                r.loc.invalid(
                    item.clone(),
                    "category",
                    format!("unknown category \"{}\"; known: {} (add a [[category]] to define a new one)", rule.category, known.join(", ")),
                )
            })?;
            if !(0.0..=1.0).contains(&rule.confidence) {
                return Err(r.loc.invalid(item, "confidence", "must be between 0 and 1"));
            }
            if rule.id.trim().is_empty() {
                return Err(r.loc.invalid(item, "id", "must not be empty"));
            }
            let when = c
                .add_conditions(&rule.when)
                .map_err(|(f, m)| r.loc.invalid(item.clone(), format!("when.{f}"), m))?;
            let unless = c
                .add_conditions(&rule.unless)
                .map_err(|(f, m)| r.loc.invalid(item.clone(), format!("unless.{f}"), m))?;
            let regex_fields = when
                .iter()
                .chain(&unless)
                .filter_map(|a| c.regex_atoms.get(a))
                .fold(0, |acc, f| acc | f);
            let cheap_when = when
                .iter()
                .copied()
                .filter(|a| !c.regex_atoms.contains_key(a))
                .collect();
            c.rules.push(Rule {
                id: Arc::from(rule.id.as_str()),
                category,
                confidence: rule.confidence,
                when,
                unless,
                cheap_when,
                regex_fields,
            });
        }
        for t in patient_terms(doc) {
            c.subject_kw.add(&t, PATIENT_TERM);
            c.excerpt_kw.add(&t, PATIENT_TERM);
        }
        c.keyed = vec![Vec::new(); c.atom_count];
        for (i, rule) in c.rules.iter().enumerate() {
            match rule.cheap_when.first().or(rule.when.first()) {
                Some(&key) => c.keyed[key as usize].push(i as u32),
                None => c.unkeyed.push(i as u32),
            }
            if rule.cheap_when.is_empty() {
                c.always_need |= rule.regex_fields;
            }
        }

        let build_err = |field: &str, m: String| crate::Error::Invalid {
            file: doc.sources.join(" + "),
            line: 0,
            item: "rules".to_owned(),
            field: field.to_owned(),
            message: m,
        };
        c.subject_kw
            .build()
            .map_err(|m| build_err("subject keywords", m))?;
        c.excerpt_kw
            .build()
            .map_err(|m| build_err("excerpt keywords", m))?;
        c.subject_re
            .build()
            .map_err(|m| build_err("subject regexes", m))?;
        c.excerpt_re
            .build()
            .map_err(|m| build_err("excerpt regexes", m))?;
        c.mailbox
            .build()
            .map_err(|m| build_err("mailbox globs", m))?;
        c.folder.build().map_err(|m| build_err("folder globs", m))?;
        c.attachment_name
            .build()
            .map_err(|m| build_err("attachment-name globs", m))?;
        Ok(c)
    }

    fn new_atom(&mut self) -> AtomId {
        self.atom_count += 1;
        (self.atom_count - 1) as AtomId
    }

    /// Turns one non-empty condition field into one atom, adding each value with `add`.
    fn field(
        &mut self,
        atoms: &mut Vec<AtomId>,
        name: &str,
        values: &[String],
        mut add: impl FnMut(&mut Self, AtomId, &str) -> std::result::Result<(), String>,
    ) -> std::result::Result<Option<AtomId>, (String, String)> {
        if values.is_empty() {
            return Ok(None);
        }
        let atom = self.new_atom();
        atoms.push(atom);
        for (i, v) in values.iter().enumerate() {
            if v.trim().is_empty() {
                return Err((format!("{name}[{i}]"), "empty value".to_owned()));
            }
            add(self, atom, v).map_err(|m| (format!("{name}[{i}]"), m))?;
        }
        Ok(Some(atom))
    }

    /// Turns each non-empty field into one atom; errors are (field, message).
    fn add_conditions(
        &mut self,
        cond: &ConditionsDoc,
    ) -> std::result::Result<Vec<AtomId>, (String, String)> {
        let mut atoms = Vec::new();
        let a = &mut atoms;
        self.field(
            a,
            "subject-keywords",
            &cond.subject_keywords,
            |c, atom, v| {
                c.subject_kw.add(v, atom);
                Ok(())
            },
        )?;
        self.field(
            a,
            "excerpt-keywords",
            &cond.excerpt_keywords,
            |c, atom, v| {
                c.excerpt_kw.add(v, atom);
                Ok(())
            },
        )?;
        self.field(a, "text-keywords", &cond.text_keywords, |c, atom, v| {
            c.subject_kw.add(v, atom);
            c.excerpt_kw.add(v, atom);
            Ok(())
        })?;
        if let Some(atom) = self.field(a, "subject-regex", &cond.subject_regex, |c, atom, v| {
            c.subject_re.add(v, atom)
        })? {
            self.regex_atoms.insert(atom, SUBJECT);
        }
        if let Some(atom) = self.field(a, "excerpt-regex", &cond.excerpt_regex, |c, atom, v| {
            c.excerpt_re.add(v, atom)
        })? {
            self.regex_atoms.insert(atom, EXCERPT);
        }
        if let Some(atom) = self.field(a, "text-regex", &cond.text_regex, |c, atom, v| {
            c.subject_re.add(v, atom)?;
            c.excerpt_re.add(v, atom)
        })? {
            self.regex_atoms.insert(atom, SUBJECT | EXCERPT);
        }
        self.field(a, "from", &cond.from, |c, atom, v| {
            check_address(v)?;
            c.from.add(v, atom);
            Ok(())
        })?;
        self.field(a, "to", &cond.to, |c, atom, v| {
            check_address(v)?;
            c.to.add(v, atom);
            Ok(())
        })?;
        self.field(a, "from-domain", &cond.from_domain, |c, atom, v| {
            check_domain(v)?;
            c.from_domain.add(v, atom);
            Ok(())
        })?;
        self.field(a, "to-domain", &cond.to_domain, |c, atom, v| {
            check_domain(v)?;
            c.to_domain.add(v, atom);
            Ok(())
        })?;
        self.field(
            a,
            "participant-domain",
            &cond.participant_domain,
            |c, atom, v| {
                check_domain(v)?;
                c.participant_domain.add(v, atom);
                Ok(())
            },
        )?;
        self.field(a, "mailbox", &cond.mailbox, |c, atom, v| {
            c.mailbox.add(v, atom)
        })?;
        self.field(a, "folder", &cond.folder, |c, atom, v| {
            c.folder.add(v, atom)
        })?;
        self.field(a, "label", &cond.label, |c, atom, v| {
            c.labels.add(v, atom);
            Ok(())
        })?;
        self.field(a, "attachment-name", &cond.attachment_name, |c, atom, v| {
            c.attachment_name.add(v, atom)
        })?;
        self.field(a, "attachment-type", &cond.attachment_type, |c, atom, v| {
            let t = v.trim().to_ascii_lowercase();
            if !t.contains('/') {
                return Err(format!(
                    "\"{v}\" is not a media type such as application/pdf or image/*"
                ));
            }
            c.attachment_type.push((t, atom));
            Ok(())
        })?;
        self.field(a, "direction", &cond.direction, |c, atom, v| {
            let d = Direction::parse(v).ok_or_else(|| {
                format!("unknown direction \"{v}\"; known: inbound, outbound, internal, unknown")
            })?;
            c.direction.push((d, atom));
            Ok(())
        })?;
        self.field(a, "phi", &cond.phi, |c, atom, v| {
            let code = PHI_CODES
                .into_iter()
                .find(|code| *code == v)
                .ok_or_else(|| {
                    format!(
                        "unknown PHI indicator \"{v}\"; known: {}",
                        PHI_CODES.join(", ")
                    )
                })?;
            c.phi_atoms.push((code, atom));
            Ok(())
        })?;
        if let Some(want) = cond.has_attachment {
            let atom = self.new_atom();
            atoms.push(atom);
            self.has_attachment.push((want, atom));
        }
        Ok(atoms)
    }

    /// Classifies one message. Deterministic: the same message and policy give the same result.
    pub fn classify(&self, m: &MailMessage, policy_version: &Arc<str>) -> Classification {
        let mut bits = Bits::new(self.atom_count);
        let mut phi = PhiIndicators::default();
        let mut refs = Vec::new();

        let subject = m.subject.as_deref().unwrap_or("");
        let excerpt = m.excerpt.as_deref().unwrap_or("");
        for (text, keywords) in [(subject, &self.subject_kw), (excerpt, &self.excerpt_kw)] {
            if text.is_empty() {
                continue;
            }
            self.phi.scan(text, &mut phi, &mut refs);
            keywords.scan(text, |i| {
                for &a in &keywords.atoms[i] {
                    if a == PATIENT_TERM {
                        phi.patient_terms = true;
                    } else {
                        bits.set(a);
                    }
                }
            });
        }

        if let Some(from) = &m.from {
            self.from.scan(&from.address, &mut bits);
            if let Some(d) = from.domain() {
                self.from_domain.scan_domain(d, &mut bits);
                self.participant_domain.scan_domain(d, &mut bits);
            }
        }
        for r in m.recipients() {
            self.to.scan(&r.address, &mut bits);
            if let Some(d) = r.domain() {
                self.to_domain.scan_domain(d, &mut bits);
                self.participant_domain.scan_domain(d, &mut bits);
            }
        }
        for l in &m.labels {
            self.labels.scan(l, &mut bits);
        }
        let mut scratch = Vec::new();
        self.mailbox.scan(&m.mailbox, &mut bits, &mut scratch);
        if let Some(c) = &m.custodian {
            self.mailbox.scan(c, &mut bits, &mut scratch);
        }
        if let Some(f) = &m.folder {
            self.folder.scan(f, &mut bits, &mut scratch);
        }
        for a in &m.attachments {
            if !a.name.is_empty() {
                self.attachment_name.scan(&a.name, &mut bits, &mut scratch);
            }
            for (t, atom) in &self.attachment_type {
                if media_type_matches(t, &a.media_type) {
                    bits.set(*atom);
                }
            }
        }
        for (d, atom) in &self.direction {
            if *d == m.direction {
                bits.set(*atom);
            }
        }
        for (code, atom) in &self.phi_atoms {
            let on = match *code {
                "mrn" => phi.mrn,
                "icd10" => phi.icd10,
                "dob" => phi.dob,
                _ => phi.patient_terms,
            };
            if on {
                bits.set(*atom);
            }
        }
        for (want, atom) in &self.has_attachment {
            if *want != m.attachments.is_empty() {
                bits.set(*atom);
            }
        }

        // Regexes are the costly part: run a field's set only if some rule needing it has
        // all its other conditions met.
        let mut need = self.always_need;
        for &a in &bits.list {
            for &r in &self.keyed[a as usize] {
                let rule = &self.rules[r as usize];
                if rule.regex_fields & !need != 0 && rule.cheap_when.iter().all(|a| bits.get(*a)) {
                    need |= rule.regex_fields;
                }
            }
        }
        if need & SUBJECT != 0 && !subject.is_empty() {
            self.subject_re.scan(subject, &mut bits);
        }
        if need & EXCERPT != 0 && !excerpt.is_empty() {
            self.excerpt_re.scan(excerpt, &mut bits);
        }

        // The rules that could match, in precedence order.
        let mut candidates: Vec<u32> = self.unkeyed.clone();
        for &a in &bits.list {
            candidates.extend_from_slice(&self.keyed[a as usize]);
        }
        candidates.sort_unstable();
        candidates.dedup();

        let mut winner: Option<&Rule> = None;
        let mut also = Vec::new();
        for rule in candidates.iter().map(|&r| &self.rules[r as usize]) {
            let matched =
                rule.when.iter().all(|a| bits.get(*a)) && !rule.unless.iter().any(|a| bits.get(*a));
            if !matched {
                continue;
            }
            match winner {
                None => winner = Some(rule),
                Some(w) if rule.category != w.category && also.len() < 3 => {
                    also.push(rule.id.clone())
                }
                Some(_) => {}
            }
            if also.len() >= 3 {
                break;
            }
        }
        match winner {
            Some(r) => Classification {
                category: r.category.clone(),
                rule: Some(r.id.clone()),
                confidence: r.confidence,
                forced: false,
                phi,
                patient_refs: refs,
                also_matched: also,
                policy_version: policy_version.clone(),
            },
            None => Classification {
                category: Category::unclassified(),
                rule: None,
                confidence: 0.0,
                forced: false,
                phi,
                patient_refs: refs,
                also_matched: also,
                policy_version: policy_version.clone(),
            },
        }
    }

    /// Only PHI detection (for records whose category is forced).
    pub fn detect_phi(&self, m: &MailMessage) -> (PhiIndicators, Vec<String>) {
        let mut phi = PhiIndicators::default();
        let mut refs = Vec::new();
        let fields = [
            (m.subject.as_deref(), &self.subject_kw),
            (m.excerpt.as_deref(), &self.excerpt_kw),
        ];
        for (text, keywords) in fields {
            let Some(text) = text else { continue };
            self.phi.scan(text, &mut phi, &mut refs);
            keywords.scan(text, |i| {
                phi.patient_terms |= keywords.atoms[i].contains(&PATIENT_TERM)
            });
        }
        (phi, refs)
    }

    /// How many rules are in force.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

fn media_type_matches(pattern: &str, actual: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(top) => actual
            .split_once('/')
            .is_some_and(|(t, _)| t.eq_ignore_ascii_case(top)),
        None => actual.eq_ignore_ascii_case(pattern),
    }
}

fn check_address(a: &str) -> std::result::Result<(), String> {
    if a.contains('@') && !a.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(format!("\"{a}\" is not an e-mail address (local@domain)"))
    }
}

fn check_domain(d: &str) -> std::result::Result<(), String> {
    if d.contains('@') || d.contains(char::is_whitespace) || d.starts_with('.') {
        Err(format!(
            "\"{d}\" is not a domain such as example.org (subdomains match too)"
        ))
    } else {
        Ok(())
    }
}

fn compile_phi(doc: &MergedDoc) -> Result<Phi> {
    let invalid = |field: &str, m: String| crate::Error::Invalid {
        file: doc.sources.join(" + "),
        line: 0,
        item: "[phi]".to_owned(),
        field: field.to_owned(),
        message: m,
    };
    let mrn_src: Vec<String> = doc
        .phi
        .mrn_patterns
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_MRN_PATTERN.to_owned()]);
    let mut mrn = Vec::new();
    for (i, p) in mrn_src.iter().enumerate() {
        let re = Regex::new(p)
            .map_err(|e| invalid(&format!("mrn-patterns[{i}]"), format!("invalid regex: {e}")))?;
        if re.captures_len() < 2 {
            return Err(invalid(
                &format!("mrn-patterns[{i}]"),
                "needs a capture group around the number, e.g. MRN[: ]*([0-9]{6,10})".to_owned(),
            ));
        }
        mrn.push(re);
    }
    let compile = |field: &str, pattern: &str| {
        Regex::new(pattern).map_err(|e| invalid(field, format!("invalid regex: {e}")))
    };
    let icd10 = match doc.phi.icd10.unwrap_or(true) {
        true => Some(compile("icd10", ICD10_LABELLED_PATTERN)?),
        false => None,
    };
    let dob = match doc.phi.dob.unwrap_or(true) {
        true => Some(compile("dob", DOB_PATTERN)?),
        false => None,
    };
    Ok(Phi { mrn, icd10, dob })
}

/// Whether `text` holds a dotted ICD-10-CM code as a word: a letter other than U, a digit, a
/// digit or A/B, a dot, then 1-4 digits or letters other than U (E11.9, S72.001A, F32.A).
/// Hand-written because no literal prefix lets a regex skip ahead: this jumps from dot to dot.
fn has_dotted_icd10(text: &[u8]) -> bool {
    let code_char = |b: u8| b.is_ascii_digit() || (b.is_ascii_uppercase() && b != b'U');
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'.', &text[from..]) {
        let dot = from + i;
        from = dot + 1;
        if dot < 3 {
            continue;
        }
        let (a, b, c) = (text[dot - 3], text[dot - 2], text[dot - 1]);
        let head = a.is_ascii_uppercase()
            && a != b'U'
            && b.is_ascii_digit()
            && (c.is_ascii_digit() || c == b'A' || c == b'B');
        if !head || (dot > 3 && is_word(text[dot - 4])) {
            continue;
        }
        let tail = text[dot + 1..]
            .iter()
            .take_while(|b| code_char(**b))
            .count();
        let end = dot + 1 + tail;
        if (1..=4).contains(&tail) && (end == text.len() || !is_word(text[end])) {
            return true;
        }
    }
    false
}

/// The patient-care terms of a policy (its own list, or the default).
fn patient_terms(doc: &MergedDoc) -> Vec<String> {
    doc.phi.patient_terms.clone().unwrap_or_else(|| {
        DEFAULT_PATIENT_TERMS
            .iter()
            .map(|s| s.to_string())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_words_only() {
        let t = b"the BAAL and BAA, (BAA)";
        assert!(!whole_word(t, 4, 7)); // "BAA" inside "BAAL"
        assert!(whole_word(t, 13, 16));
        assert!(whole_word(t, 19, 22));
    }

    #[test]
    fn dotted_icd10_codes() {
        for yes in [
            "dx E11.9 today",
            "E11.9",
            "(S72.001A)",
            "F32.A, then",
            "code Z79.4.",
        ] {
            assert!(has_dotted_icd10(yes.as_bytes()), "{yes}");
        }
        for no in [
            "U07.1",
            "version E11",
            "XE11.9",
            "E11.",
            "E11.12345",
            "e11.9",
            "E1.9",
            "A10.9x",
            "3.14",
        ] {
            assert!(!has_dotted_icd10(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn media_types() {
        assert!(media_type_matches("image/*", "IMAGE/png"));
        assert!(media_type_matches("application/pdf", "application/PDF"));
        assert!(!media_type_matches("application/pdf", "application/pdfx"));
        assert!(!media_type_matches("image/*", "imagefoo"));
    }
}
