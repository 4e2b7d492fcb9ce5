//! Record categories: stable lower-case codes that analysts and policies use.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A record category code such as `clinical` or `hipaa_documentation`.
///
/// The codes that ship are associated constants; a policy may define more. Codes are
/// `[a-z][a-z0-9_]*`, at most 64 bytes. Cloning is cheap (shared string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Category(Arc<str>);

/// A category code that is not `[a-z][a-z0-9_]*` (at most 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid category code {code:?}: expected lower-case letters, digits and '_', starting with a letter (at most 64)"
)]
pub struct InvalidCategory {
    /// The code as given.
    pub code: String,
}

impl Category {
    /// Patient-care mail that belongs to the designated record set.
    pub const CLINICAL: &'static str = "clinical";
    /// HIPAA policies, procedures, risk assessments, BAAs and other required documentation.
    pub const HIPAA_DOCUMENTATION: &'static str = "hipaa_documentation";
    /// Workforce training records.
    pub const TRAINING_RECORD: &'static str = "training_record";
    /// Security incident reports and their handling.
    pub const SECURITY_INCIDENT: &'static str = "security_incident";
    /// Marketing authorisations and their revocations.
    pub const MARKETING_AUTHORIZATION: &'static str = "marketing_authorization";
    /// Correspondence with business associates (vendors handling PHI).
    pub const BUSINESS_ASSOCIATE: &'static str = "business_associate";
    /// Medicare/Medicaid program records.
    pub const PROGRAM_RECORD: &'static str = "program_record";
    /// Quality-improvement work.
    pub const QUALITY_IMPROVEMENT: &'static str = "quality_improvement";
    /// Ordinary administrative mail.
    pub const ADMINISTRATIVE: &'static str = "administrative";
    /// Transient mail of no lasting value (notifications, scheduling, newsletters).
    pub const TRANSIENT: &'static str = "transient";
    /// Nothing matched: retained indefinitely and flagged for review, never scheduled.
    pub const UNCLASSIFIED: &'static str = "unclassified";

    /// The categories that ship with Retain, in documentation order.
    pub const BUILT_IN: [&'static str; 11] = [
        Self::CLINICAL,
        Self::HIPAA_DOCUMENTATION,
        Self::TRAINING_RECORD,
        Self::SECURITY_INCIDENT,
        Self::MARKETING_AUTHORIZATION,
        Self::BUSINESS_ASSOCIATE,
        Self::PROGRAM_RECORD,
        Self::QUALITY_IMPROVEMENT,
        Self::ADMINISTRATIVE,
        Self::TRANSIENT,
        Self::UNCLASSIFIED,
    ];

    /// Validates and wraps a code.
    pub fn new(code: &str) -> Result<Self, InvalidCategory> {
        let bytes = code.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 64
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
        if ok {
            Ok(Category(Arc::from(code)))
        } else {
            Err(InvalidCategory {
                code: code.to_owned(),
            })
        }
    }

    /// The `unclassified` category.
    pub fn unclassified() -> Self {
        Category(Arc::from(Self::UNCLASSIFIED))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is `unclassified`.
    pub fn is_unclassified(&self) -> bool {
        &*self.0 == Self::UNCLASSIFIED
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Category {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Category::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_codes_are_valid() {
        for c in Category::BUILT_IN {
            assert_eq!(Category::new(c).unwrap().as_str(), c);
        }
    }

    #[test]
    fn bad_codes_are_refused() {
        for bad in ["", "Clinical", "1abc", "a-b", "a b", &"x".repeat(65)] {
            assert!(Category::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
