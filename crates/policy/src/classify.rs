//! The classifier: rules compiled into a few set matchers, so the cost per message grows with
//! the text, not with the number of rules.
//!
//! Every field condition of every rule (`when` and `unless`) becomes one *atom* (a bit). For a
//! message: one pass over each text field cuts it into words (64 bytes at a time) and looks
//! each word up in a table of the keywords' first words (all rules' keywords and the
//! patient-care terms), noting on the way where the default PHI patterns could start; the PHI
//! detectors run only there; one `GlobSet` per name field (answers cached per thread) and hash
//! lookups for addresses, domains and labels set the atoms; the `RegexSet` of a text field runs
//! only if a rule that needs it has its other conditions met. A rule matches when every `when`
//! atom is set and no `unless` atom is. Only rules indexed under a set atom are looked at, in
//! precedence order (priority, then order written); the first match decides.

use std::collections::HashMap;
use std::sync::Arc;

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
#[derive(Default)]
struct Bits {
    words: Vec<u64>,
    list: Vec<AtomId>,
}

impl Bits {
    /// Empties the set (only the words that were set are touched) and makes room for `n` atoms.
    fn reset(&mut self, n: usize) {
        for &a in &self.list {
            self.words[(a / 64) as usize] = 0;
        }
        self.list.clear();
        let words = n.div_ceil(64).max(1);
        if self.words.len() < words {
            self.words.resize(words, 0);
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

/// The word bytes (see [`is_word`]), as a table.
static WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c >= 0x80 || c.is_ascii_alphanumeric() || c == b'_';
        b += 1;
    }
    t
};

/// The key of the word `text[start..end]`: its first eight bytes, ASCII-lower-cased,
/// little-endian, zero-padded.
#[inline]
fn word_prefix(text: &[u8], start: usize, end: usize) -> u64 {
    let n = (end - start).min(8);
    let v = match text.get(start..start + 8) {
        // One load and a mask (copying a short word into a buffer first stalls the load).
        Some(eight) => {
            let v = u64::from_le_bytes([
                eight[0], eight[1], eight[2], eight[3], eight[4], eight[5], eight[6], eight[7],
            ]);
            if n == 8 {
                v
            } else {
                v & ((1u64 << (8 * n)) - 1)
            }
        }
        None => {
            let mut buf = [0u8; 8];
            buf[..n].copy_from_slice(&text[start..start + n]);
            u64::from_le_bytes(buf)
        }
    };
    // ASCII upper case to lower case, eight bytes at once (see `word_mask`).
    let x = v & !TOP;
    let at_least = |c: u8| (x + ONES * (0x80 - u64::from(c))) & TOP;
    let upper = at_least(b'A') & !at_least(b'Z' + 1) & !(v & TOP);
    v | (upper >> 2)
}

/// Eight bytes' worth of 0x01 and of 0x80: the lanes of the eight-at-a-time byte tests.
const ONES: u64 = 0x0101_0101_0101_0101;
const TOP: u64 = 0x8080_8080_8080_8080;

/// A keyword's first word (the run of word bytes it starts with), the key of the hash table.
struct FirstWord {
    word: Box<[u8]>,
    /// Indexes of the keywords that start with this word.
    keywords: Vec<u32>,
}

/// A slot of the first-word table: the word's key and length, and `firsts[index - 1]`
/// (0: empty).
#[derive(Clone, Copy, Default)]
struct Slot {
    prefix: u64,
    len: u32,
    index: u32,
}

/// Keywords for one text field, matched whole-word and case-insensitively.
///
/// A keyword that starts with a word character can only match where a text word starts, and
/// that text word must then be exactly the keyword's first word (a word character after it
/// would break the boundary, a non-word character would end it). So the text is cut into words
/// in one pass; a word whose first byte and length no first word has is dropped after one
/// load, the others are looked up by their key in an open-addressing table kept at most an
/// eighth full, and only the keywords found there are compared byte by byte. Keywords that
/// start with punctuation (`#tag`, `.net`) are tried wherever their first byte occurs.
struct KeywordField {
    /// The keywords, ASCII-lower-cased and trimmed.
    patterns: Vec<Box<[u8]>>,
    atoms: Vec<Vec<AtomId>>,
    index: HashMap<String, usize>,
    /// Bit `min(len, 63)` of entry `b` is set when some first word starts with byte `b` and
    /// has that length.
    lengths: Box<[u64; 256]>,
    /// The same by the word's first byte in either case, with every length of the letters a
    /// default PHI pattern starts with ([`PhiTriggers`]): the words worth a closer look.
    wanted: Box<[u64; 256]>,
    /// Open addressing by [`slot_of`], linear probing.
    slots: Vec<Slot>,
    firsts: Vec<FirstWord>,
    /// Keywords starting with a non-word byte, by that byte.
    odd: HashMap<u8, Vec<u32>>,
}

impl Default for KeywordField {
    fn default() -> Self {
        KeywordField {
            patterns: Vec::new(),
            atoms: Vec::new(),
            index: HashMap::new(),
            lengths: Box::new([0; 256]),
            wanted: Box::new(PhiTriggers::wanted()),
            slots: vec![Slot::default()],
            firsts: Vec::new(),
            odd: HashMap::new(),
        }
    }
}

/// A word length as kept in a [`Slot`] (longer words are told apart by their bytes).
fn word_len(len: usize) -> u32 {
    len.min(u32::MAX as usize) as u32
}

fn slot_of(prefix: u64, len: usize, mask: usize) -> usize {
    let h = (prefix ^ (len as u64).rotate_right(8)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize & mask
}

impl KeywordField {
    fn add(&mut self, keyword: &str, atom: AtomId) {
        let k = keyword.trim().to_ascii_lowercase();
        let i = *self.index.entry(k.clone()).or_insert_with(|| {
            self.patterns.push(k.into_bytes().into_boxed_slice());
            self.atoms.push(Vec::new());
            self.patterns.len() - 1
        });
        self.atoms[i].push(atom);
    }

    fn build(&mut self) -> std::result::Result<(), String> {
        let mut by_first: Vec<(Box<[u8]>, Vec<u32>)> = Vec::new();
        for (i, p) in self.patterns.iter().enumerate() {
            let first_len = p.iter().take_while(|b| is_word(**b)).count();
            if first_len == 0 {
                // Non-empty: `field` refuses empty values.
                self.odd.entry(p[0]).or_default().push(i as u32);
                continue;
            }
            let first = &p[..first_len];
            match by_first.iter_mut().find(|(w, _)| **w == *first) {
                Some((_, ks)) => ks.push(i as u32),
                None => by_first.push((first.into(), vec![i as u32])),
            }
        }
        let capacity = (by_first.len() * 8).next_power_of_two().max(64);
        let mask = capacity - 1;
        self.slots = vec![Slot::default(); capacity];
        for (word, keywords) in by_first {
            let bit = 1 << word.len().min(63);
            self.lengths[word[0] as usize] |= bit;
            self.wanted[word[0] as usize] |= bit;
            self.wanted[word[0].to_ascii_uppercase() as usize] |= bit;
            let prefix = word_prefix(&word, 0, word.len());
            let mut s = slot_of(prefix, word.len(), mask);
            while self.slots[s].index != 0 {
                s = (s + 1) & mask;
            }
            self.slots[s] = Slot {
                prefix,
                len: word_len(word.len()),
                index: self.firsts.len() as u32 + 1,
            };
            self.firsts.push(FirstWord { word, keywords });
        }
        Ok(())
    }

    /// Whether keyword `k` occurs at `at` of `text`, with a boundary after it (the boundary
    /// before it is the caller's: a word start, or a keyword starting with punctuation).
    fn matches_at(&self, k: u32, text: &[u8], at: usize) -> bool {
        let p = &self.patterns[k as usize];
        let end = at + p.len();
        end <= text.len()
            && text[at..end].eq_ignore_ascii_case(p)
            && (end == text.len() || !is_word(p[p.len() - 1]) || !is_word(text[end]))
    }

    /// Calls `hit` with the index of every keyword found as a whole word in `text`, and
    /// returns the PHI detectors the text calls for ([`PhiTriggers`]), found in the same pass.
    fn scan(&self, text: &[u8], mut hit: impl FnMut(usize)) -> PhiTriggers {
        let mut found = 0u8;
        let mut mrn = MrnStarts::default();
        if !self.odd.is_empty() {
            for (i, b) in text.iter().enumerate() {
                if let Some(ks) = self.odd.get(b) {
                    for &k in ks {
                        if self.matches_at(k, text, i) {
                            hit(k as usize);
                        }
                    }
                }
            }
        }
        let ascii = text.is_ascii();
        let mask = self.slots.len().wrapping_sub(1);
        for (start, end) in Words::new(text) {
            let word = &text[start..end];
            if !ascii && !word.is_ascii() {
                // A regex `\b` also sits between a non-ASCII non-word character and an ASCII
                // letter; try every ASCII position after a non-ASCII byte (a superset).
                for p in start + 1..end {
                    if text[p - 1] >= 0x80 && text[p].is_ascii_alphabetic() {
                        let f = PhiTriggers::word_start(text, p);
                        if f & PhiTriggers::MRN != 0 {
                            mrn.push(p);
                        }
                        found |= f;
                    }
                }
            }
            let len = word.len();
            // Most words start no keyword and no PHI pattern: one load tells.
            if self.wanted[word[0] as usize] & (1 << len.min(63)) == 0 {
                continue;
            }
            let prefix = word_prefix(text, start, end);
            let f = PhiTriggers::word(prefix, text, end);
            if f & PhiTriggers::MRN != 0 {
                mrn.push(start);
            }
            found |= f;
            if self.lengths[word[0].to_ascii_lowercase() as usize] & (1 << len.min(63)) == 0 {
                continue;
            }
            let mut s = slot_of(prefix, len, mask);
            loop {
                let slot = self.slots[s];
                if slot.index == 0 {
                    break;
                }
                if slot.prefix == prefix
                    && slot.len == word_len(len)
                    && (len <= 8
                        || word.eq_ignore_ascii_case(&self.firsts[slot.index as usize - 1].word))
                {
                    let first = &self.firsts[slot.index as usize - 1];
                    for &k in &first.keywords {
                        if self.matches_at(k, text, start) {
                            hit(k as usize);
                        }
                    }
                    break;
                }
                s = (s + 1) & mask;
            }
        }
        PhiTriggers::from_bits(found, mrn)
    }
}

/// The words of a text (maximal runs of word bytes, see [`is_word`]) as `(start, end)`, in
/// order. Found 64 bytes at a time from a bit mask of word bytes ([`word_mask`]): a few
/// operations per byte and per word, no branch per byte.
struct Words<'a> {
    text: &'a [u8],
    /// Where the next block starts.
    next: usize,
    /// The block being read: where it starts, its word starts and word ends not yet taken.
    base: usize,
    starts: u64,
    ends: u64,
    /// The start of a word whose end is not found yet.
    open: Option<usize>,
}

impl<'a> Words<'a> {
    fn new(text: &'a [u8]) -> Self {
        Words {
            text,
            next: 0,
            base: 0,
            starts: 0,
            ends: 0,
            open: None,
        }
    }
}

impl Iterator for Words<'_> {
    type Item = (usize, usize);

    #[inline]
    fn next(&mut self) -> Option<(usize, usize)> {
        loop {
            match self.open {
                Some(s) if self.ends != 0 => {
                    let e = self.base + self.ends.trailing_zeros() as usize;
                    self.ends &= self.ends - 1;
                    self.open = None;
                    return Some((s, e));
                }
                None if self.starts != 0 => {
                    self.open = Some(self.base + self.starts.trailing_zeros() as usize);
                    self.starts &= self.starts - 1;
                    continue;
                }
                _ => {}
            }
            // This block is used up: read the next one, or close the last word at the end.
            if self.next >= self.text.len() {
                return self.open.take().map(|s| (s, self.text.len()));
            }
            let chunk = &self.text[self.next..self.text.len().min(self.next + 64)];
            let m = word_mask(chunk);
            let carry = u64::from(self.open.is_some());
            let valid = u64::MAX >> (64 - chunk.len());
            self.base = self.next;
            self.next += chunk.len();
            self.starts = m & !((m << 1) | carry);
            self.ends = !m & ((m << 1) | carry) & valid;
        }
    }
}

/// Bit `i` is set when `chunk[i]` is a word byte (`chunk` holds at most 64 bytes). Eight bytes
/// at a time in a `u64` (SWAR): for a byte below 0x80, adding `0x80 - c` sets its top bit
/// exactly when it is at least `c`, so each range test is an add and a mask.
fn word_mask(chunk: &[u8]) -> u64 {
    fn eight(v: u64) -> u64 {
        let x = v & !TOP;
        let at_least = |c: u8| (x + ONES * (0x80 - u64::from(c))) & TOP;
        let digit = at_least(b'0') & !at_least(b'9' + 1);
        let upper = at_least(b'A') & !at_least(b'Z' + 1);
        let lower = at_least(b'a') & !at_least(b'z' + 1);
        let underscore = !((x ^ (ONES * u64::from(b'_'))) + ONES * 0x7F) & TOP;
        let word = (v & TOP) | digit | upper | lower | underscore;
        // The top bit of each byte, gathered into the low eight bits.
        ((word >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
    }
    let mut m = 0u64;
    let mut parts = chunk.chunks_exact(8);
    let mut shift = 0;
    for p in &mut parts {
        let v = u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
        m |= eight(v) << shift;
        shift += 8;
    }
    for (j, &b) in parts.remainder().iter().enumerate() {
        m |= u64::from(is_word(b)) << (shift + j);
    }
    m
}

/// Which of the PHI regexes a text calls for: each of the default patterns can only match
/// where an ASCII word starts with its first letters (`MRN`, `ICD`, `DOB`, `D.`, `date`,
/// `birth`, any case), so the keyword pass notes those starts and the regexes run only on the
/// texts that have them. Found at a superset of the places a regex `\b` allows.
#[derive(Default, Clone, Copy)]
struct PhiTriggers {
    icd10: bool,
    dob: bool,
    /// Where the words starting with `MRN` start, for [`default_mrns`] (none: the default MRN
    /// pattern cannot match).
    mrn_starts: MrnStarts,
}

/// The first few places an `MRN` word starts (more than fit: `overflow`, and the regex runs).
#[derive(Default, Clone, Copy)]
struct MrnStarts {
    at: [usize; 4],
    len: usize,
    overflow: bool,
}

impl MrnStarts {
    fn any(&self) -> bool {
        self.len > 0 || self.overflow
    }

    fn push(&mut self, at: usize) {
        match self.at.get_mut(self.len) {
            Some(slot) => {
                *slot = at;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }
}

impl PhiTriggers {
    const MRN: u8 = 1;
    const ICD10: u8 = 2;
    const DOB: u8 = 4;

    fn from_bits(bits: u8, mrn_starts: MrnStarts) -> Self {
        PhiTriggers {
            icd10: bits & Self::ICD10 != 0,
            dob: bits & Self::DOB != 0,
            mrn_starts,
        }
    }

    /// Words starting with these letters (either case), whatever their length, may start a
    /// default PHI pattern.
    fn wanted() -> [u64; 256] {
        let mut t = [0u64; 256];
        for b in [b'm', b'i', b'd', b'b'] {
            t[b as usize] = u64::MAX;
            t[b.to_ascii_uppercase() as usize] = u64::MAX;
        }
        t
    }

    /// The detectors a word calls for, from its key ([`word_prefix`]) and where it ends.
    #[inline]
    fn word(prefix: u64, text: &[u8], end: usize) -> u8 {
        const fn key(s: &[u8]) -> u64 {
            let mut k = 0u64;
            let mut i = 0;
            while i < s.len() {
                k |= (s[i] as u64) << (8 * i);
                i += 1;
            }
            k
        }
        let three = prefix & 0xFF_FFFF;
        let dob = three == key(b"dob")
            || prefix & 0xFFFF_FFFF == key(b"date")
            || prefix & 0xFF_FFFF_FFFF == key(b"birth")
            // "D.O.B.": the word `d`, then a dot.
            || (prefix == key(b"d") && text.get(end) == Some(&b'.'));
        (u8::from(three == key(b"mrn")) * Self::MRN)
            | (u8::from(three == key(b"icd")) * Self::ICD10)
            | (u8::from(dob) * Self::DOB)
    }

    /// The same for a place inside a word (after a non-ASCII byte), read from the text.
    fn word_start(text: &[u8], at: usize) -> u8 {
        let end = at + text[at..].iter().take_while(|b| is_word(**b)).count();
        Self::word(word_prefix(text, at, end), text, end)
    }
}

/// A word character: an ASCII letter or digit, `_`, or any byte of a non-ASCII character.
fn is_word(b: u8) -> bool {
    WORD[b as usize]
}

#[cfg(test)]
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
        // Most texts match none: `is_match` stops at the literal prefilter.
        if let Some(set) = &self.set
            && set.is_match(text)
        {
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
    /// Tells this field's answers apart in a thread's [`GlobCache`] (unique in the process).
    id: u64,
}

/// The last answers of the glob fields, by field and name. A mailbox has a few dozen folder
/// names and an organisation a few thousand mailboxes, so most names were matched before;
/// globset builds a candidate path and runs its matchers for each, which costs several times
/// a hash and a compare. Direct-mapped: a name that lands on a taken entry replaces it.
#[derive(Default)]
struct GlobCache {
    entries: Vec<GlobEntry>,
    lower: String,
}

#[derive(Default)]
struct GlobEntry {
    /// The field's id; 0 for an empty entry.
    field: u64,
    name: String,
    matches: Vec<usize>,
}

impl GlobCache {
    const ENTRIES: usize = 256;
}

impl Default for GlobField {
    fn default() -> Self {
        GlobField {
            builder: GlobSetBuilder::new(),
            atoms: Vec::new(),
            set: None,
            id: 0,
        }
    }
}

impl GlobField {
    fn add(&mut self, glob: &str, atom: AtomId) -> std::result::Result<(), String> {
        // Case-insensitive as both sides are lower-cased: globset matches case-insensitive
        // globs with regexes, lower-case literal ones with its much faster literal strategies.
        let g = GlobBuilder::new(&glob.to_lowercase())
            .case_insensitive(false)
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
            static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            self.id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn scan(&self, name: &str, bits: &mut Bits, cache: &mut GlobCache) {
        let Some(set) = &self.set else { return };
        let GlobCache { entries, lower } = cache;
        if entries.is_empty() {
            entries.resize_with(GlobCache::ENTRIES, GlobEntry::default);
        }
        let hash = std::hash::BuildHasher::hash_one(
            &foldhash::fast::FixedState::with_seed(0),
            (self.id, name),
        );
        let entry = &mut entries[hash as usize % GlobCache::ENTRIES];
        if entry.field != self.id || entry.name != name {
            lower.clear();
            if name.is_ascii() {
                lower.extend(name.bytes().map(|b| b.to_ascii_lowercase() as char));
            } else {
                lower.extend(name.chars().flat_map(char::to_lowercase));
            }
            set.matches_into(lower.as_str(), &mut entry.matches);
            entry.field = self.id;
            entry.name.clear();
            entry.name.push_str(name);
        }
        for i in &entry.matches {
            bits.set(self.atoms[*i]);
        }
    }
}

/// Exact lookups (addresses, domains, labels), lower-cased.
#[derive(Default)]
struct LookupField(foldhash::HashMap<String, Vec<AtomId>>);

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

/// The domains of one message already looked up in a field (the first eight; a ninth and
/// later are looked up again, which gives the same answer).
#[derive(Default)]
struct Domains<'a> {
    seen: [&'a str; 8],
    len: usize,
}

impl<'a> Domains<'a> {
    fn first_time(&mut self, domain: &'a str) -> bool {
        if self.seen[..self.len].contains(&domain) {
            return false;
        }
        if self.len < self.seen.len() {
            self.seen[self.len] = domain;
            self.len += 1;
        }
        true
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
/// Patient-care terms are found by the keyword scan (the [`PATIENT_TERM`] effect).
/// Each pattern is its own `Regex` so each gets its own literal prefilter. The default patterns
/// run only when the keyword pass saw a word they can start with ([`PhiTriggers`]); patterns
/// an organisation writes itself always run.
struct Phi {
    /// Each MRN pattern, and whether it is the default one (run only on an `MRN` word).
    mrn: Vec<(Regex, bool)>,
    /// Codes labelled "ICD-10"; `Some` when ICD-10 detection is on.
    icd10: Option<Regex>,
    dob: Option<Regex>,
}

impl Phi {
    fn scan(
        &self,
        text: &str,
        triggers: PhiTriggers,
        phi: &mut PhiIndicators,
        refs: &mut Vec<String>,
    ) {
        let mut found = |phi: &mut PhiIndicators, number: &str| {
            phi.mrn = true;
            if !refs.iter().any(|r| r == number) {
                refs.push(number.to_owned());
            }
        };
        for (re, default) in &self.mrn {
            if *default {
                if !triggers.mrn_starts.any() {
                    continue;
                }
                if let Some(numbers) = default_mrns(text.as_bytes(), &triggers.mrn_starts) {
                    for (from, to) in numbers.iter().flatten() {
                        found(phi, &text[*from..*to]);
                    }
                    continue;
                }
            }
            for c in re.captures_iter(text) {
                if let Some(g) = c.get(1) {
                    found(phi, g.as_str());
                } else {
                    phi.mrn = true;
                }
            }
        }
        if !phi.icd10
            && let Some(labelled) = &self.icd10
            && (has_dotted_icd10(text.as_bytes()) || (triggers.icd10 && labelled.is_match(text)))
        {
            phi.icd10 = true;
        }
        if !phi.dob && triggers.dob && self.dob.as_ref().is_some_and(|re| re.is_match(text)) {
            phi.dob = true;
        }
    }
}

/// The numbers [`DEFAULT_MRN_PATTERN`] captures in `text`, found by hand from the places an
/// `MRN` word starts (the pattern can start nowhere else): `MRN`, optional spaces, optionally
/// `#`, `:`, `no.`, `no` or `number`, optional spaces, then 6-10 digits ending a word. `None`
/// when that cannot be told without Unicode rules (a non-ASCII character next to the match, or
/// more starts than were kept): then the regex decides.
fn default_mrns(text: &[u8], starts: &MrnStarts) -> Option<[Option<(usize, usize)>; 4]> {
    if starts.overflow {
        return None;
    }
    let mut out = [None; 4];
    let mut after = 0;
    for (slot, &at) in out.iter_mut().zip(&starts.at[..starts.len]) {
        if at < after {
            continue;
        }
        if at > 0 && text[at - 1] >= 0x80 {
            return None;
        }
        let spaces = |mut i: usize| -> Option<usize> {
            while let Some(&b) = text.get(i) {
                match b {
                    b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C => i += 1,
                    // Unicode white space (no-break space, ...) is the regex's call.
                    0x80.. => return None,
                    _ => break,
                }
            }
            Some(i)
        };
        let after_mrn = spaces(at + 3)?;
        // The alternatives in the pattern's order: the first that leads to a number wins.
        let mut number = None;
        for marker in [&b"#"[..], b":", b"no.", b"no", b"number", b""] {
            let end = after_mrn + marker.len();
            if !text
                .get(after_mrn..end)
                .is_some_and(|t| t.eq_ignore_ascii_case(marker))
            {
                continue;
            }
            let from = spaces(end)?;
            let digits = text[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            let to = from + digits;
            match text.get(to) {
                Some(0x80..) => return None,
                Some(&b) if is_word(b) => continue,
                _ => {}
            }
            if (6..=10).contains(&digits) {
                number = Some((from, to));
                break;
            }
        }
        if let Some((from, to)) = number {
            *slot = Some((from, to));
            after = to;
        }
    }
    Some(out)
}

/// Buffers [`Classifier::classify`] reuses from one message to the next on a thread.
#[derive(Default)]
struct Scratch {
    bits: Bits,
    candidates: Vec<u32>,
    globs: GlobCache,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
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
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.classify_with(m, policy_version, &mut scratch),
            // Only if a classification ever ran inside another on this thread.
            Err(_) => self.classify_with(m, policy_version, &mut Scratch::default()),
        })
    }

    fn classify_with(
        &self,
        m: &MailMessage,
        policy_version: &Arc<str>,
        scratch: &mut Scratch,
    ) -> Classification {
        let Scratch {
            bits,
            candidates,
            globs,
        } = scratch;
        bits.reset(self.atom_count);
        let mut phi = PhiIndicators::default();
        let mut refs = Vec::new();

        let subject = m.subject.as_deref().unwrap_or("");
        let excerpt = m.excerpt.as_deref().unwrap_or("");
        for (text, keywords) in [(subject, &self.subject_kw), (excerpt, &self.excerpt_kw)] {
            if text.is_empty() {
                continue;
            }
            let triggers = keywords.scan(text.as_bytes(), |i| {
                for &a in &keywords.atoms[i] {
                    if a == PATIENT_TERM {
                        phi.patient_terms = true;
                    } else {
                        bits.set(a);
                    }
                }
            });
            self.phi.scan(text, triggers, &mut phi, &mut refs);
        }

        // Most mail is among a few domains (often one): each is looked up once per field.
        let mut participants = Domains::default();
        let mut recipients = Domains::default();
        if let Some(from) = &m.from {
            self.from.scan(&from.address, bits);
            if let Some(d) = from.domain() {
                self.from_domain.scan_domain(d, bits);
                if participants.first_time(d) {
                    self.participant_domain.scan_domain(d, bits);
                }
            }
        }
        for r in m.recipients() {
            self.to.scan(&r.address, bits);
            if let Some(d) = r.domain() {
                if recipients.first_time(d) {
                    self.to_domain.scan_domain(d, bits);
                }
                if participants.first_time(d) {
                    self.participant_domain.scan_domain(d, bits);
                }
            }
        }
        for l in &m.labels {
            self.labels.scan(l, bits);
        }
        self.mailbox.scan(&m.mailbox, bits, globs);
        if let Some(c) = &m.custodian {
            self.mailbox.scan(c, bits, globs);
        }
        if let Some(f) = &m.folder {
            self.folder.scan(f, bits, globs);
        }
        for a in &m.attachments {
            if !a.name.is_empty() {
                self.attachment_name.scan(&a.name, bits, globs);
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
            self.subject_re.scan(subject, bits);
        }
        if need & EXCERPT != 0 && !excerpt.is_empty() {
            self.excerpt_re.scan(excerpt, bits);
        }

        // The rules that could match, in precedence order.
        candidates.clear();
        candidates.extend_from_slice(&self.unkeyed);
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
            let triggers = keywords.scan(text.as_bytes(), |i| {
                phi.patient_terms |= keywords.atoms[i].contains(&PATIENT_TERM)
            });
            self.phi.scan(text, triggers, &mut phi, &mut refs);
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
        mrn.push((re, p == DEFAULT_MRN_PATTERN));
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
    use proptest::prelude::*;

    /// Pieces of text that exercise word edges, case, punctuation and non-ASCII bytes.
    const PIECES: &[&str] = &[
        "baa",
        "BAA",
        "Baal",
        "lab result",
        "lab results",
        "dx",
        "DX",
        "accepted:",
        "#tag",
        ".net",
        "alpha-3",
        "ALPHA-3x",
        "project alpha-12",
        "a_b",
        "_",
        " ",
        "  ",
        ", ",
        "(",
        ")",
        ".",
        "-",
        "\n",
        "é",
        "Café",
        "CAFÉ",
        "«",
        "»",
        "\u{a0}",
        "0",
        "42",
        "x",
        "MRN 1234567",
        "mrn#12345678",
        "MRN12345678",
        "«MRN 7654321",
        "DOB: 01/02/1990",
        "d.o.b. 3/4/1950",
        "Date of Birth 1/1/2001",
        "birthdate 2000-01-01",
        "birth date Jan 5, 1999",
        "ICD-10: I10",
        "icd10 code E11",
        "E11.9",
        "xICD-10: I10",
        "_DOB 1/1/2000",
        "éDOB 1/1/2000",
        "MRN no. 12345678",
        "mrn No 1234567",
        "MRN number 123456",
        "MRN:123456789",
        "MRN # 0123456",
        "MRN 12345",
        "MRN 12345678901",
        "MRN\u{a0}1234567",
        "MRN 1234567\u{e9}",
        "MRN nope 1234567",
        "MRN  \t 123456",
        "MRNno1234567",
        "mrn:",
        "1234567",
        "MRN 1234567_",
        "MRN 1234567x",
    ];

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..40).prop_map(|p| p.concat())
    }

    fn field(keywords: &[&str]) -> KeywordField {
        let mut f = KeywordField::default();
        for (i, k) in keywords.iter().enumerate() {
            f.add(k, i as AtomId);
        }
        f.build().unwrap();
        f
    }

    /// The glob answers a thread keeps are per policy and per field: the same name, read by
    /// two policies and as a folder and a mailbox, gets each one's own answer.
    #[test]
    fn glob_answers_are_kept_per_policy_and_field() {
        let policy = |folder: &str| {
            let text = format!(
                "[policy]\nname = \"t\"\n\n[[rule]]\nid = \"org.folder\"\ncategory = \"quality_improvement\"\npriority = 900\nwhen.folder = [\"{folder}\"]\n"
            );
            crate::Policy::from_sources(&[("t.toml", &text)]).unwrap()
        };
        let (qi, other) = (policy("Inbox/QI*"), policy("Inbox/Other*"));
        let mut m = MailMessage::new("1@x.example", "inbox/qi/team1");
        m.folder = Some("INBOX/QI/Team1".into());
        for _ in 0..3 {
            assert_eq!(qi.classify(&m).rule.as_deref(), Some("org.folder"));
            assert_ne!(other.classify(&m).rule.as_deref(), Some("org.folder"));
        }
        // The mailbox has the folder's name, but only the folder field has the glob.
        m.folder = Some("Inbox".into());
        assert_ne!(qi.classify(&m).rule.as_deref(), Some("org.folder"));
        m.folder = Some("Inbox/QI/x".into());
        assert_eq!(qi.classify(&m).rule.as_deref(), Some("org.folder"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The word-table scan finds exactly the keywords a naive search finds: every
        /// position where the lower-cased text holds the keyword with word boundaries.
        #[test]
        fn keyword_scan_matches_a_naive_search(text in text()) {
            let keywords = [
                "baa", "lab result", "lab results", "dx", "accepted:", "#tag", ".net", "alpha-3",
                "project alpha-12", "a_b", "café", "_", "42", "x", "mrn", "dob",
                "a-very-long-first-word", "longerthaneight",
            ];
            let f = field(&keywords);
            let mut found = std::collections::BTreeSet::new();
            f.scan(text.as_bytes(), |i| { found.insert(i); });
            let lower = text.as_bytes().to_ascii_lowercase();
            let mut want = std::collections::BTreeSet::new();
            for (i, k) in f.patterns.iter().enumerate() {
                for at in 0..lower.len() {
                    if lower[at..].starts_with(k) && whole_word(&lower, at, at + k.len()) {
                        want.insert(i);
                    }
                }
            }
            prop_assert_eq!(found, want);
        }

        /// Running the default PHI regexes only when the scan saw their first letters finds
        /// the same as running them always.
        #[test]
        fn phi_triggers_never_skip_a_match(text in text()) {
            let doc = crate::doc::MergedDoc::default();
            let phi = compile_phi(&doc).unwrap();
            let f = field(&["patient"]);
            let triggers = f.scan(text.as_bytes(), |_| {});
            let all = PhiTriggers {
                icd10: true,
                dob: true,
                mrn_starts: MrnStarts { overflow: true, ..MrnStarts::default() },
            };
            let (mut a, mut b) = (PhiIndicators::default(), PhiIndicators::default());
            let (mut ra, mut rb) = (Vec::new(), Vec::new());
            phi.scan(&text, triggers, &mut a, &mut ra);
            phi.scan(&text, all, &mut b, &mut rb);
            prop_assert_eq!((a.mrn, a.icd10, a.dob, ra), (b.mrn, b.icd10, b.dob, rb));
        }

        /// The eight-bytes-at-a-time word mask agrees with [`is_word`] on every byte.
        #[test]
        fn word_mask_agrees_with_is_word(bytes in prop::collection::vec(any::<u8>(), 0..=64)) {
            let m = word_mask(&bytes);
            for (i, b) in bytes.iter().enumerate() {
                prop_assert_eq!(m >> i & 1 == 1, is_word(*b), "byte {} at {}", b, i);
            }
            if bytes.len() < 64 {
                prop_assert_eq!(m >> bytes.len(), 0);
            }
        }

        /// The eight-at-a-time lower-casing agrees with `to_ascii_lowercase`.
        #[test]
        fn word_prefix_lower_cases_the_first_eight_bytes(bytes in prop::collection::vec(any::<u8>(), 0..12)) {
            let mut want = [0u8; 8];
            for (w, b) in want.iter_mut().zip(&bytes) {
                *w = b.to_ascii_lowercase();
            }
            prop_assert_eq!(word_prefix(&bytes, 0, bytes.len()), u64::from_le_bytes(want));
            // A word inside a longer text: only its own bytes count.
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"XYZXYZXYZ");
            prop_assert_eq!(word_prefix(&longer, 0, bytes.len()), u64::from_le_bytes(want));
        }

        /// Words found 64 bytes at a time are the maximal runs of word bytes.
        #[test]
        fn words_are_maximal_runs(bytes in prop::collection::vec(
            prop::sample::select(&[b'a', b' ', b'_', 0xC3, b'.', b'9'][..]), 0..300)) {
            let got: Vec<_> = Words::new(&bytes).collect();
            let mut want = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if is_word(bytes[i]) {
                    let s = i;
                    while i < bytes.len() && is_word(bytes[i]) { i += 1; }
                    want.push((s, i));
                } else {
                    i += 1;
                }
            }
            prop_assert_eq!(got, want);
        }
    }

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
