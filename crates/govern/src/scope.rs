//! What a hold covers: a scope written by people, compiled to one SQL predicate over the
//! `records` table's columns.
//!
//! Every criterion given must match (they are ANDed); within a list, any value matches (ORed).
//! A criterion that cannot be decided for a record — its subject, date or custodian is unknown
//! (NULL) — counts as a match: a hold errs on the side of keeping. `docs/holds.md` has the
//! exact SQL each criterion becomes.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The scope of a hold. Stored as JSON in the `holds` table beside its compiled predicate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldScope {
    /// Mailboxes or custodians (case-insensitive): the record's `custodian` or `mailbox`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custodians: Vec<String>,
    /// Records created on or after this day (`created_date`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<NaiveDate>,
    /// Records created on or before this day (`created_date`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<NaiveDate>,
    /// Words or phrases in the subject (case-insensitive; bodies are not kept downstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Record categories (`clinical`, `business_associate`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Patient references (MRNs) found in the record (`patient_refs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patient_refs: Vec<String>,
    /// Any further condition, as a SQL boolean expression over `records` columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

impl HoldScope {
    /// Whether no criterion is given (refused: a hold on everything says `sql = "TRUE"`).
    pub fn is_empty(&self) -> bool {
        self.custodians.is_empty()
            && self.from.is_none()
            && self.to.is_none()
            && self.keywords.is_empty()
            && self.categories.is_empty()
            && self.patient_refs.is_empty()
            && self.sql.is_none()
    }

    /// Checks what can be checked without the schema: something is given, no blank values,
    /// the date range is not reversed.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Error::Scope { reason };
        if self.is_empty() {
            return Err(bad(
                "the scope is empty: give custodians, dates, keywords, categories, patient references or a SQL condition (a hold on every record says --sql TRUE)".to_owned(),
            ));
        }
        for (name, values) in [
            ("custodian", &self.custodians),
            ("keyword", &self.keywords),
            ("category", &self.categories),
            ("patient reference", &self.patient_refs),
        ] {
            if values.iter().any(|v| v.trim().is_empty()) {
                return Err(bad(format!("a {name} is blank")));
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from > to
        {
            return Err(bad(format!(
                "the date range is reversed: from {from} is after to {to}"
            )));
        }
        if self.sql.as_ref().is_some_and(|s| s.trim().is_empty()) {
            return Err(bad("the SQL condition is blank".to_owned()));
        }
        Ok(())
    }

    /// The scope as one SQL boolean expression over `records` columns.
    pub fn to_predicate(&self) -> Result<String> {
        self.validate()?;
        let mut parts = Vec::new();
        if !self.custodians.is_empty() {
            let list = in_list(self.custodians.iter().map(|c| c.trim().to_lowercase()));
            parts.push(format!(
                "(lower(custodian) IN ({list}) OR lower(mailbox) IN ({list}))"
            ));
        }
        if let Some(from) = self.from {
            parts.push(format!("created_date >= DATE '{from}'"));
        }
        if let Some(to) = self.to {
            parts.push(format!("created_date <= DATE '{to}'"));
        }
        if !self.keywords.is_empty() {
            let any: Vec<String> = self
                .keywords
                .iter()
                .map(|k| {
                    format!(
                        "strpos(lower(subject), {}) > 0",
                        quote(&k.trim().to_lowercase())
                    )
                })
                .collect();
            parts.push(format!("({})", any.join(" OR ")));
        }
        if !self.categories.is_empty() {
            let list = in_list(self.categories.iter().map(|c| c.trim().to_owned()));
            parts.push(format!("category IN ({list})"));
        }
        if !self.patient_refs.is_empty() {
            let list = in_list(self.patient_refs.iter().map(|c| c.trim().to_owned()));
            parts.push(format!("array_has_any(patient_refs, make_array({list}))"));
        }
        if let Some(sql) = &self.sql {
            parts.push(format!("({})", sql.trim()));
        }
        Ok(parts.join(" AND "))
    }
}

/// A SQL string literal.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn in_list(values: impl Iterator<Item = String>) -> String {
    values.map(|v| quote(&v)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_are_anded_and_values_ored_with_quotes_escaped() {
        let scope = HoldScope {
            custodians: vec!["Kay.Mann".into(), "o'brien".into()],
            from: NaiveDate::from_ymd_opt(2001, 1, 1),
            keywords: vec!["Raptor".into(), "LJM".into()],
            ..HoldScope::default()
        };
        assert_eq!(
            scope.to_predicate().unwrap(),
            "(lower(custodian) IN ('kay.mann', 'o''brien') OR lower(mailbox) IN ('kay.mann', 'o''brien')) \
             AND created_date >= DATE '2001-01-01' \
             AND (strpos(lower(subject), 'raptor') > 0 OR strpos(lower(subject), 'ljm') > 0)"
        );
    }

    #[test]
    fn empty_blank_and_reversed_scopes_are_refused() {
        let e = HoldScope::default().to_predicate().unwrap_err();
        assert!(e.to_string().contains("scope is empty"), "{e}");
        let blank = HoldScope {
            keywords: vec![" ".into()],
            ..HoldScope::default()
        };
        assert!(
            blank
                .validate()
                .unwrap_err()
                .to_string()
                .contains("keyword is blank")
        );
        let reversed = HoldScope {
            from: NaiveDate::from_ymd_opt(2002, 1, 1),
            to: NaiveDate::from_ymd_opt(2001, 1, 1),
            ..HoldScope::default()
        };
        assert!(
            reversed
                .validate()
                .unwrap_err()
                .to_string()
                .contains("reversed")
        );
    }

    #[test]
    fn scopes_round_trip_as_json_and_refuse_unknown_fields() {
        let scope = HoldScope {
            categories: vec!["clinical".into()],
            patient_refs: vec!["MRN-1".into()],
            sql: Some("size_bytes > 10".into()),
            ..HoldScope::default()
        };
        let json = serde_json::to_string(&scope).unwrap();
        assert_eq!(serde_json::from_str::<HoldScope>(&json).unwrap(), scope);
        assert!(serde_json::from_str::<HoldScope>(r#"{"custodian":["x"]}"#).is_err());
    }
}
