//! The policy file format as written by people (TOML, kebab-case keys), and how files layer.
//!
//! A policy is a stack of documents: the built-in pack first, then the organisation's file.
//! Later documents replace rules, obligations and categories with the same id, can disable any
//! of them, and set the header fields they name. See `docs/policy.md`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Error, Result, line_col};

/// `[policy]`: name, defaults and what to disable.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct HeaderDoc {
    pub name: Option<String>,
    pub label: Option<String>,
    /// `builtin` (default) or `none`.
    pub extends: Option<String>,
    pub default_jurisdiction: Option<String>,
    pub default_record_holder: Option<String>,
    pub age_of_majority: Option<u32>,
    #[serde(default)]
    pub disable_rules: Vec<String>,
    #[serde(default)]
    pub disable_obligations: Vec<String>,
}

/// `[phi]`: what the engine's own PHI detector looks for.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct PhiDoc {
    pub mrn_patterns: Option<Vec<String>>,
    pub icd10: Option<bool>,
    pub dob: Option<bool>,
    pub patient_terms: Option<Vec<String>>,
}

/// `[[category]]`: a record category.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct CategoryDoc {
    pub code: String,
    #[serde(default)]
    pub description: String,
    /// Retention comes from state law: without a rule for the record's jurisdiction and
    /// holder, the record is kept indefinitely and flagged.
    #[serde(default)]
    pub state_law: bool,
}

/// `[jurisdiction.XX]`: per-jurisdiction settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct JurisdictionDoc {
    pub age_of_majority: Option<u32>,
    pub name: Option<String>,
}

/// The conditions of a rule (`when`) or its exceptions (`unless`). Within a field any value
/// may match; all fields given must match.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ConditionsDoc {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excerpt_keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_regex: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excerpt_regex: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_regex: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_domain: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_domain: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participant_domain: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mailbox: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folder: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_name: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_type: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direction: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phi: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_attachment: Option<bool>,
}

/// `[[rule]]`: a classification rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RuleDoc {
    pub id: String,
    pub category: String,
    /// Higher wins; equal priorities go by order (earlier file, earlier in file).
    pub priority: i32,
    #[serde(default = "default_confidence")]
    pub confidence: f32,
    #[serde(default)]
    pub description: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub when: ConditionsDoc,
    #[serde(default)]
    pub unless: ConditionsDoc,
}

fn default_confidence() -> f32 {
    0.8
}

fn yes() -> bool {
    true
}

/// `[[obligation]]`: one retention obligation with its citation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ObligationDoc {
    pub id: String,
    pub citation: String,
    #[serde(default)]
    pub source: String,
    pub source_quality: String,
    pub categories: Vec<String>,
    /// `US` applies in every jurisdiction; otherwise two-letter state codes.
    pub jurisdictions: Vec<String>,
    #[serde(default = "any_holder")]
    pub record_holders: Vec<String>,
    /// Applies only when the record falls under one of these programs (empty: always).
    #[serde(default)]
    pub programs: Vec<String>,
    /// Applies only when an event of this type is known for the record.
    pub when_event: Option<String>,
    pub retain: Spanned<toml::Value>,
    #[serde(default)]
    pub note: String,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn any_holder() -> Vec<String> {
    vec!["*".to_owned()]
}

/// One policy file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct PolicyDoc {
    #[serde(default)]
    pub policy: HeaderDoc,
    #[serde(default)]
    pub phi: PhiDoc,
    #[serde(default)]
    pub category: Vec<Spanned<CategoryDoc>>,
    #[serde(default)]
    pub jurisdiction: BTreeMap<String, JurisdictionDoc>,
    #[serde(default)]
    pub rule: Vec<Spanned<RuleDoc>>,
    #[serde(default)]
    pub obligation: Vec<Spanned<ObligationDoc>>,
}

/// Where an item was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: Arc<str>,
    pub line: usize,
}

impl Loc {
    pub fn invalid(
        &self,
        item: String,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            file: self.file.to_string(),
            line: self.line,
            item,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An item and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    pub loc: Loc,
    pub item: T,
}

/// The effective policy after layering: what gets compiled and hashed.
#[derive(Debug, Clone, Default)]
pub(crate) struct MergedDoc {
    pub header: HeaderDoc,
    pub phi: PhiDoc,
    pub categories: Vec<Located<CategoryDoc>>,
    pub jurisdictions: BTreeMap<String, JurisdictionDoc>,
    pub rules: Vec<Located<RuleDoc>>,
    pub obligations: Vec<Located<ObligationDoc>>,
    /// The files layered, in order.
    pub sources: Vec<String>,
}

/// Parses one policy document.
pub(crate) fn parse(file: &str, text: &str) -> Result<(PolicyDoc, Arc<str>)> {
    let doc: PolicyDoc = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        Error::Syntax {
            file: file.to_owned(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    Ok((doc, Arc::from(file)))
}

impl MergedDoc {
    /// Layers `doc` (from `file`, with source `text`) over what is merged so far.
    pub fn layer(&mut self, file: Arc<str>, text: &str, doc: PolicyDoc) -> Result<()> {
        let loc = |offset: usize| Loc {
            file: file.clone(),
            line: line_col(text, offset).0,
        };
        let h = doc.policy;
        let header = &mut self.header;
        macro_rules! set {
            ($($f:ident),*) => { $( if h.$f.is_some() { header.$f = h.$f; } )* };
        }
        set!(
            name,
            label,
            extends,
            default_jurisdiction,
            default_record_holder,
            age_of_majority
        );
        let (disable_rules, disable_obligations) = (h.disable_rules, h.disable_obligations);

        let p = doc.phi;
        if p.mrn_patterns.is_some() {
            self.phi.mrn_patterns = p.mrn_patterns;
        }
        if p.icd10.is_some() {
            self.phi.icd10 = p.icd10;
        }
        if p.dob.is_some() {
            self.phi.dob = p.dob;
        }
        if p.patient_terms.is_some() {
            self.phi.patient_terms = p.patient_terms;
        }

        for (code, j) in doc.jurisdiction {
            if !(code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic())) {
                let at = text.find(&format!("jurisdiction.{code}")).unwrap_or(0);
                return Err(loc(at).invalid(
                    format!("[jurisdiction.{code}]"),
                    "jurisdiction",
                    format!("\"{code}\" is not a two-letter state code (e.g. CO)"),
                ));
            }
            let e = self
                .jurisdictions
                .entry(code.to_ascii_uppercase())
                .or_default();
            if j.age_of_majority.is_some() {
                e.age_of_majority = j.age_of_majority;
            }
            if j.name.is_some() {
                e.name = j.name;
            }
        }

        let categories = located(doc.category, &loc, "category", |c| &c.code)?;
        replace_by_key(&mut self.categories, categories, |c| &c.code);
        let rules = located(doc.rule, &loc, "rule", |r| &r.id)?;
        replace_by_key(&mut self.rules, rules, |r| &r.id);
        let obligations = located(doc.obligation, &loc, "obligation", |o| &o.id)?;
        replace_by_key(&mut self.obligations, obligations, |o| &o.id);

        // A typo in a disable list would silently disable nothing: refuse unknown ids.
        for (field, ids, known) in [
            (
                "disable-rules",
                &disable_rules,
                self.rules.iter().map(|r| &r.item.id).collect::<Vec<_>>(),
            ),
            (
                "disable-obligations",
                &disable_obligations,
                self.obligations
                    .iter()
                    .map(|o| &o.item.id)
                    .collect::<Vec<_>>(),
            ),
        ] {
            for id in ids {
                if !known.contains(&id) {
                    let at = text.find(&format!("\"{id}\"")).unwrap_or(0);
                    return Err(loc(at).invalid(
                        "[policy]".to_owned(),
                        field,
                        format!("no rule or obligation has the id \"{id}\" (ids are listed by `retain policy check --list`)"),
                    ));
                }
            }
        }
        self.header.disable_rules.extend(disable_rules);
        self.header.disable_obligations.extend(disable_obligations);
        self.sources.push(file.to_string());
        Ok(())
    }

    /// A canonical JSON rendering of the effective policy, for the content hash.
    pub fn canonical_json(&self) -> String {
        #[derive(Serialize)]
        struct Canon<'a> {
            header: &'a HeaderDoc,
            phi: &'a PhiDoc,
            categories: Vec<&'a CategoryDoc>,
            jurisdictions: &'a BTreeMap<String, JurisdictionDoc>,
            rules: Vec<&'a RuleDoc>,
            obligations: Vec<&'a ObligationDoc>,
        }
        let canon = Canon {
            header: &self.header,
            phi: &self.phi,
            categories: self.categories.iter().map(|c| &c.item).collect(),
            jurisdictions: &self.jurisdictions,
            rules: self.rules.iter().map(|r| &r.item).collect(),
            obligations: self.obligations.iter().map(|o| &o.item).collect(),
        };
        // Serialising plain data structures to JSON cannot fail.
        serde_json::to_string(&canon).unwrap_or_default()
    }
}

/// Attaches locations to one document's items, refusing an id used twice in the same file.
fn located<T>(
    items: Vec<Spanned<T>>,
    loc: &impl Fn(usize) -> Loc,
    what: &str,
    key: impl Fn(&T) -> &String,
) -> Result<Vec<Located<T>>> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for s in items {
        let l = loc(s.span().start);
        let item = s.into_inner();
        let k = key(&item).clone();
        if let Some(first) = seen.insert(k.clone(), l.line) {
            let id = if what == "category" { "code" } else { "id" };
            return Err(l.invalid(
                format!("{what} `{k}`"),
                id,
                format!("duplicate {id}: already used on line {first} of this file"),
            ));
        }
        out.push(Located { loc: l, item });
    }
    Ok(out)
}

/// Replaces items with the same key in place (keeping their position), appends new ones.
fn replace_by_key<T>(
    into: &mut Vec<Located<T>>,
    new: Vec<Located<T>>,
    key: impl Fn(&T) -> &String,
) {
    for item in new {
        match into.iter_mut().find(|e| key(&e.item) == key(&item.item)) {
            Some(slot) => *slot = item,
            None => into.push(item),
        }
    }
}
