//! `DisposalCommandMessage` ⇄ `org.retain.v1.DisposalCommand`: what the mail system is told to
//! delete, one command per message, when a disposal manifest is executed.

use chrono::{DateTime, NaiveDate, Utc};

use crate::error::Result;
use crate::framing::Framing;
use crate::registry::{SchemaRegistry, decode_value, encode_value};
use crate::schemas::RecordSchema;
use crate::value::{Fields, date, opt_string, record, string, timestamp};

/// One disposal command: delete this copy of this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisposalCommandMessage {
    /// `<manifest id>/<record key>`: the same for every publication of the same disposal, so
    /// the mail system can ignore a repeat.
    pub command_id: String,
    /// The approved manifest the command belongs to.
    pub manifest_id: String,
    /// The organisation.
    pub tenant: String,
    /// The mailbox holding the copy.
    pub mailbox: String,
    /// The copy's message id.
    pub message_id: String,
    /// The record key (no PHI): what logs and the `disposals` table name the record by.
    pub key_hash: String,
    /// The record category.
    pub category: String,
    /// The classification rule that decided the category, if one did.
    pub rule: Option<String>,
    /// The policy version that computed `retain_until`.
    pub policy_version: String,
    /// The record was kept through this date.
    pub retain_until: NaiveDate,
    /// When the command was issued (whole microseconds on the wire).
    pub issued_at: DateTime<Utc>,
}

/// Encodes a disposal command with the current `DisposalCommand` schema.
pub fn encode_disposal_command(c: &DisposalCommandMessage, framing: Framing) -> Result<Vec<u8>> {
    let value = record(vec![
        ("command_id", string(&c.command_id)),
        ("manifest_id", string(&c.manifest_id)),
        ("tenant", string(&c.tenant)),
        ("mailbox", string(&c.mailbox)),
        ("message_id", string(&c.message_id)),
        ("key_hash", string(&c.key_hash)),
        ("category", string(&c.category)),
        ("rule", opt_string(c.rule.as_deref())),
        ("policy_version", string(&c.policy_version)),
        ("retain_until", date(c.retain_until)),
        ("issued_at", timestamp(c.issued_at)),
    ]);
    encode_value(RecordSchema::DisposalCommand, value, framing)
}

/// Decodes a framed `DisposalCommand` written with any schema version `registry` knows.
pub fn decode_disposal_command(
    input: &[u8],
    registry: &SchemaRegistry,
) -> Result<DisposalCommandMessage> {
    let kind = RecordSchema::DisposalCommand;
    let value = decode_value(input, kind, registry)?;
    let mut f = Fields::top(kind.name(), value)?;
    Ok(DisposalCommandMessage {
        command_id: f.string("command_id")?,
        manifest_id: f.string("manifest_id")?,
        tenant: f.string("tenant")?,
        mailbox: f.string("mailbox")?,
        message_id: f.string("message_id")?,
        key_hash: f.string("key_hash")?,
        category: f.string("category")?,
        rule: f.opt_string("rule")?,
        policy_version: f.string("policy_version")?,
        retain_until: f.date("retain_until")?,
        issued_at: f.timestamp("issued_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(rule: Option<&str>) -> DisposalCommandMessage {
        DisposalCommandMessage {
            command_id: "D-20261204-0badf00d/0123456789abcdef0123456789abcdef".into(),
            manifest_id: "D-20261204-0badf00d".into(),
            tenant: "clinic".into(),
            mailbox: "kay.mann".into(),
            message_id: "<1.2@example.org>".into(),
            key_hash: "0123456789abcdef0123456789abcdef".into(),
            category: "transient".into(),
            rule: rule.map(str::to_owned),
            policy_version: "p-1234".into(),
            retain_until: "2025-02-28".parse().unwrap(),
            issued_at: "2026-12-04T22:00:00.123456Z".parse().unwrap(),
        }
    }

    #[test]
    fn round_trips_with_and_without_a_rule() {
        let mut registry = SchemaRegistry::new();
        registry
            .register_id(7, RecordSchema::DisposalCommand.schema().clone())
            .unwrap();
        for framing in [Framing::SingleObject, Framing::Confluent { schema_id: 7 }] {
            for rule in [Some("newsletters"), None] {
                let c = command(rule);
                let bytes = encode_disposal_command(&c, framing).unwrap();
                assert_eq!(decode_disposal_command(&bytes, &registry).unwrap(), c);
            }
        }
    }

    #[test]
    fn another_record_type_is_refused_with_its_name() {
        let registry = SchemaRegistry::new();
        let event = crate::event::RetentionEventMessage {
            event_id: "e".into(),
            kind: retain_model::EventKind::ALL[0].into(),
            date: "2024-01-01".parse().unwrap(),
            action: None,
            keys: Default::default(),
            recorded_at: "2024-01-01T00:00:00Z".parse().unwrap(),
            source: "test".into(),
        };
        let bytes = crate::event::encode_retention_event(&event, Framing::SingleObject).unwrap();
        let err = decode_disposal_command(&bytes, &registry).unwrap_err();
        assert!(err.to_string().contains("RetentionEvent"), "{err}");
    }
}
