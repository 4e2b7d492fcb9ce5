//! `ClassifiedRecord` ⇄ `org.retain.v1.ClassifiedRecord`.

use std::sync::Arc;

use apache_avro::types::Value;
use retain_model::{Category, Classification, MailMessage, PhiIndicators};

use crate::direct;
use crate::error::Result;
use crate::framing::Framing;
use crate::mail::{message_fields, message_from_fields};
use crate::registry::{SchemaRegistry, checked, encode_value};
use crate::schemas::RecordSchema;
use crate::value::{Fields, opt_string, record, string, strings};

/// Where a classified message was read from: its Kafka topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lineage {
    /// The topic the `MailMessage` was consumed from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
}

/// What the classifier emits for one message: the metadata, its classification and lineage.
///
/// The message's `excerpt` is never encoded (the schema has no such field) and is always `None`
/// after decoding: body text stops at the classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifiedRecord {
    /// The message metadata; `excerpt` is ignored when encoding.
    pub message: MailMessage,
    /// The category, rule, PHI indicators and policy version.
    pub classification: Classification,
    /// The version of the classifier that produced this record.
    pub classifier_version: String,
    /// Where the message was read from.
    pub lineage: Lineage,
}

impl ClassifiedRecord {
    /// A classified record; drops the message's excerpt.
    pub fn new(
        mut message: MailMessage,
        classification: Classification,
        classifier_version: impl Into<String>,
        lineage: Lineage,
    ) -> Self {
        message.excerpt = None;
        ClassifiedRecord {
            message,
            classification,
            classifier_version: classifier_version.into(),
            lineage,
        }
    }
}

/// Encodes a classified record with the current `ClassifiedRecord` schema (without the excerpt).
pub fn encode_classified_record(r: &ClassifiedRecord, framing: Framing) -> Result<Vec<u8>> {
    let kind = RecordSchema::ClassifiedRecord;
    if direct::covers(kind) {
        return direct::encode_classified_record(r, framing);
    }
    encode_value(kind, classified_record_value(r)?, framing)
}

/// The record as a generic Avro value: the reference for [`direct`], and the fallback when the
/// schema has changed under it.
pub(crate) fn classified_record_value(r: &ClassifiedRecord) -> Result<Value> {
    let c = &r.classification;
    let mut fields = message_fields(RecordSchema::ClassifiedRecord.name(), &r.message)?;
    fields.extend([
        ("category", string(c.category.as_str())),
        ("rule", opt_string(c.rule.as_deref())),
        ("confidence", Value::Float(c.confidence)),
        ("forced", Value::Boolean(c.forced)),
        (
            "phi",
            record(vec![
                ("mrn", Value::Boolean(c.phi.mrn)),
                ("icd10", Value::Boolean(c.phi.icd10)),
                ("dob", Value::Boolean(c.phi.dob)),
                ("patient_terms", Value::Boolean(c.phi.patient_terms)),
            ]),
        ),
        ("patient_refs", strings(&c.patient_refs)),
        ("also_matched", strings(&c.also_matched)),
        ("policy_version", string(&c.policy_version)),
        ("classifier_version", string(&r.classifier_version)),
        ("source_topic", string(&r.lineage.topic)),
        ("source_partition", Value::Int(r.lineage.partition)),
        ("source_offset", Value::Long(r.lineage.offset)),
    ]);
    Ok(record(fields))
}

/// Decodes a framed `ClassifiedRecord` written with any schema version `registry` knows.
pub fn decode_classified_record(
    input: &[u8],
    registry: &SchemaRegistry,
) -> Result<ClassifiedRecord> {
    let kind = RecordSchema::ClassifiedRecord;
    let datum = checked(input, kind, registry)?;
    if datum.is_current(kind) && direct::covers(kind) {
        return direct::decode_classified_record(datum.datum, datum.header_len);
    }
    classified_record_from_value(datum.into_value(kind)?)
}

/// A classified record from a generic value of the current schema.
pub(crate) fn classified_record_from_value(value: Value) -> Result<ClassifiedRecord> {
    let mut f = Fields::top(RecordSchema::ClassifiedRecord.name(), value)?;
    let message = message_from_fields(&mut f)?;
    let code = f.string("category")?;
    let category = Category::new(&code).map_err(|e| f.error("category", e.to_string()))?;
    let mut phi = f.record("phi")?;
    let classification = Classification {
        category,
        rule: f.opt_string("rule")?.map(Arc::from),
        confidence: f.float("confidence")?,
        forced: f.boolean("forced")?,
        phi: PhiIndicators {
            mrn: phi.boolean("mrn")?,
            icd10: phi.boolean("icd10")?,
            dob: phi.boolean("dob")?,
            patient_terms: phi.boolean("patient_terms")?,
        },
        patient_refs: f.strings("patient_refs")?,
        also_matched: f
            .strings("also_matched")?
            .into_iter()
            .map(Arc::from)
            .collect(),
        policy_version: Arc::from(f.string("policy_version")?),
    };
    Ok(ClassifiedRecord {
        message,
        classification,
        classifier_version: f.string("classifier_version")?,
        lineage: Lineage {
            topic: f.string("source_topic")?,
            partition: f.int("source_partition")?,
            offset: f.long("source_offset")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn classification(code: &str) -> Classification {
        Classification {
            category: Category::new(code).unwrap(),
            rule: Some(Arc::from("clinical.mrn")),
            confidence: 0.875,
            forced: false,
            phi: PhiIndicators {
                mrn: true,
                icd10: false,
                dob: true,
                patient_terms: false,
            },
            patient_refs: vec!["MRN-1".into()],
            also_matched: vec![Arc::from("admin.any")],
            policy_version: Arc::from("sha256:abc"),
        }
    }

    fn lineage() -> Lineage {
        Lineage {
            topic: "mail.raw".into(),
            partition: 3,
            offset: 42,
        }
    }

    #[test]
    fn the_excerpt_never_leaves_the_classifier() {
        let mut m = MailMessage::new("a@b", "jdoe");
        m.excerpt = Some("patient notes".into());
        let mut r = ClassifiedRecord::new(m.clone(), classification("clinical"), "1.0", lineage());
        assert_eq!(r.message.excerpt, None);
        // Even when set afterwards, it is not encoded.
        r.message.excerpt = m.excerpt.clone();
        let bytes = encode_classified_record(&r, Framing::SingleObject).unwrap();
        assert!(!bytes.windows(13).any(|w| w == b"patient notes"));
        let back = decode_classified_record(&bytes, &SchemaRegistry::new()).unwrap();
        assert_eq!(back.message.excerpt, None);
        r.message.excerpt = None;
        assert_eq!(back, r);
    }

    #[test]
    fn an_invalid_category_code_is_a_field_error() {
        let r = ClassifiedRecord::new(
            MailMessage::new("a@b", "jdoe"),
            classification("clinical"),
            "1.0",
            lineage(),
        );
        let bytes = encode_classified_record(&r, Framing::SingleObject).unwrap();
        // Rewrite the category "clinical" to "Clinical" in place (same length).
        let at = bytes.windows(8).position(|w| w == b"clinical").unwrap();
        let mut bad = bytes.clone();
        bad[at] = b'C';
        let err = decode_classified_record(&bad, &SchemaRegistry::new()).unwrap_err();
        assert!(
            matches!(err, Error::Field { ref field, .. } if field == "category"),
            "{err}"
        );
        assert!(err.is_bad_input());
    }
}
