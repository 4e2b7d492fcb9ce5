//! Retain's Avro schemas, embedded from `schemas/*.avsc` at build time and parsed once.

use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use digest::Digest;

/// One of Retain's record schemas (one per topic value type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordSchema {
    /// `org.retain.v1.MailMessage`: what the importers produce.
    MailMessage,
    /// `org.retain.v1.ClassifiedRecord`: what the classifier emits.
    ClassifiedRecord,
    /// `org.retain.v1.RetentionEvent`: events that start or move retention clocks.
    RetentionEvent,
    /// `org.retain.v1.HoldEvent`: legal holds created and released.
    HoldEvent,
    /// `org.retain.v1.DisposalCommand`: instructions to dispose of one record.
    DisposalCommand,
    /// `org.retain.v1.AuditEvent`: entries of the hash-chained audit log.
    AuditEvent,
}

/// The Avro namespace of every Retain schema.
pub const NAMESPACE: &str = "org.retain.v1";

struct Parsed {
    schema: Schema,
    fingerprint: u64,
}

static PARSED: LazyLock<Vec<Parsed>> = LazyLock::new(|| {
    RecordSchema::ALL
        .iter()
        .map(|kind| {
            let schema = Schema::parse_str(kind.source()).unwrap_or_else(|e| {
                // The files are checked by this crate's tests; failing here is a build defect.
                panic!(
                    "embedded schema schemas/{} does not parse: {e}",
                    kind.file_name()
                )
            });
            let fingerprint = fingerprint(&schema);
            Parsed {
                schema,
                fingerprint,
            }
        })
        .collect()
});

impl RecordSchema {
    /// Every schema, in documentation order.
    pub const ALL: [RecordSchema; 6] = [
        RecordSchema::MailMessage,
        RecordSchema::ClassifiedRecord,
        RecordSchema::RetentionEvent,
        RecordSchema::HoldEvent,
        RecordSchema::DisposalCommand,
        RecordSchema::AuditEvent,
    ];

    /// The record name without namespace, e.g. `MailMessage`.
    pub fn name(self) -> &'static str {
        match self {
            RecordSchema::MailMessage => "MailMessage",
            RecordSchema::ClassifiedRecord => "ClassifiedRecord",
            RecordSchema::RetentionEvent => "RetentionEvent",
            RecordSchema::HoldEvent => "HoldEvent",
            RecordSchema::DisposalCommand => "DisposalCommand",
            RecordSchema::AuditEvent => "AuditEvent",
        }
    }

    /// The full name, e.g. `org.retain.v1.MailMessage`.
    pub fn full_name(self) -> &'static str {
        match self {
            RecordSchema::MailMessage => "org.retain.v1.MailMessage",
            RecordSchema::ClassifiedRecord => "org.retain.v1.ClassifiedRecord",
            RecordSchema::RetentionEvent => "org.retain.v1.RetentionEvent",
            RecordSchema::HoldEvent => "org.retain.v1.HoldEvent",
            RecordSchema::DisposalCommand => "org.retain.v1.DisposalCommand",
            RecordSchema::AuditEvent => "org.retain.v1.AuditEvent",
        }
    }

    /// The file under `schemas/`, e.g. `mail_message.avsc`.
    pub fn file_name(self) -> &'static str {
        match self {
            RecordSchema::MailMessage => "mail_message.avsc",
            RecordSchema::ClassifiedRecord => "classified_record.avsc",
            RecordSchema::RetentionEvent => "retention_event.avsc",
            RecordSchema::HoldEvent => "hold_event.avsc",
            RecordSchema::DisposalCommand => "disposal_command.avsc",
            RecordSchema::AuditEvent => "audit_event.avsc",
        }
    }

    /// The schema's JSON text as shipped.
    pub fn source(self) -> &'static str {
        match self {
            RecordSchema::MailMessage => include_str!("../../../schemas/mail_message.avsc"),
            RecordSchema::ClassifiedRecord => {
                include_str!("../../../schemas/classified_record.avsc")
            }
            RecordSchema::RetentionEvent => include_str!("../../../schemas/retention_event.avsc"),
            RecordSchema::HoldEvent => include_str!("../../../schemas/hold_event.avsc"),
            RecordSchema::DisposalCommand => {
                include_str!("../../../schemas/disposal_command.avsc")
            }
            RecordSchema::AuditEvent => include_str!("../../../schemas/audit_event.avsc"),
        }
    }

    /// The parsed schema (parsed on first use).
    pub fn schema(self) -> &'static Schema {
        &PARSED[self as usize].schema
    }

    /// The schema's CRC-64-AVRO fingerprint (see [`fingerprint`]).
    pub fn fingerprint(self) -> u64 {
        PARSED[self as usize].fingerprint
    }
}

impl std::fmt::Display for RecordSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The current `MailMessage` schema.
pub fn mail_message() -> &'static Schema {
    RecordSchema::MailMessage.schema()
}

/// The current `ClassifiedRecord` schema.
pub fn classified_record() -> &'static Schema {
    RecordSchema::ClassifiedRecord.schema()
}

/// The current `RetentionEvent` schema.
pub fn retention_event() -> &'static Schema {
    RecordSchema::RetentionEvent.schema()
}

/// The current `HoldEvent` schema.
pub fn hold_event() -> &'static Schema {
    RecordSchema::HoldEvent.schema()
}

/// The current `DisposalCommand` schema.
pub fn disposal_command() -> &'static Schema {
    RecordSchema::DisposalCommand.schema()
}

/// The current `AuditEvent` schema.
pub fn audit_event() -> &'static Schema {
    RecordSchema::AuditEvent.schema()
}

/// The schema's Parsing Canonical Form as the Avro specification defines it.
///
/// apache-avro 0.21 leaves a logical type's base as `{"type":"long"}` after stripping
/// `logicalType`; the specification's \[PRIMITIVES\] rule (and the Java and Python
/// implementations) reduce it to `"long"`. This function applies that rule so fingerprints agree
/// with other languages' single-object encoders.
pub fn canonical_form(schema: &Schema) -> String {
    let mut form = schema.canonical_form();
    for primitive in [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ] {
        // Names in a canonical form cannot contain braces or quotes, so this only matches a
        // primitive type object.
        form = form.replace(
            &format!("{{\"type\":\"{primitive}\"}}"),
            &format!("\"{primitive}\""),
        );
    }
    form
}

/// The schema's CRC-64-AVRO (Rabin) fingerprint over its [`canonical_form`], as a `u64` (the
/// single-object header carries it little-endian).
pub fn fingerprint(schema: &Schema) -> u64 {
    let digest = Rabin::digest(canonical_form(schema).as_bytes());
    let mut bytes = [0_u8; 8];
    bytes.copy_from_slice(&digest);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_parses_with_its_full_name() {
        for kind in RecordSchema::ALL {
            let name = kind.schema().name().expect("a record has a name");
            assert_eq!(name.fullname(None), kind.full_name());
            assert_eq!(name.name, kind.name());
            assert!(kind.full_name().starts_with(NAMESPACE));
        }
    }

    #[test]
    fn fingerprints_are_distinct() {
        let mut fps: Vec<u64> = RecordSchema::ALL.iter().map(|k| k.fingerprint()).collect();
        fps.sort_unstable();
        fps.dedup();
        assert_eq!(fps.len(), RecordSchema::ALL.len());
    }

    #[test]
    fn canonical_form_reduces_logical_types_to_their_primitive() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"T","namespace":"n","doc":"d","fields":[
                {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"},"doc":"x"},
                {"name":"on","type":["null",{"type":"int","logicalType":"date"}],"default":null}]}"#,
        )
        .unwrap();
        assert_eq!(
            canonical_form(&schema),
            r#"{"name":"n.T","type":"record","fields":[{"name":"at","type":"long"},{"name":"on","type":["null","int"]}]}"#
        );
    }

    #[test]
    fn fingerprint_matches_the_specification_test_vector() {
        // The Avro specification's CRC-64-AVRO of the schema "int" is 0x7275d51a3f395c8f
        // (as used by the Java SchemaNormalization test suite: fingerprint64 of "\"int\"").
        assert_eq!(fingerprint(&Schema::Int), 0x7275_d51a_3f39_5c8f);
    }
}
