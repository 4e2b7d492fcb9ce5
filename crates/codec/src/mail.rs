//! `MailMessage` ⇄ `org.retain.v1.MailMessage`.

use apache_avro::types::Value;
use retain_model::{Address, Attachment, Direction, MailMessage};

use crate::direct;
use crate::error::Result;
use crate::framing::Framing;
use crate::registry::{SchemaRegistry, checked, encode_value};
use crate::schemas::RecordSchema;
use crate::value::{
    Fields, long_u64, nullable, opt_string, record, string, strings, symbol, timestamp,
};

/// Encodes a message with the current `MailMessage` schema.
///
/// Timestamps are written as whole microseconds (finer precision is truncated). Fails only when a
/// size exceeds `i64::MAX` ([`Error::OutOfRange`](crate::Error::OutOfRange)).
pub fn encode_mail_message(message: &MailMessage, framing: Framing) -> Result<Vec<u8>> {
    let kind = RecordSchema::MailMessage;
    if direct::covers(kind) {
        return direct::encode_mail_message(message, framing);
    }
    encode_value(kind, mail_message_value(message)?, framing)
}

/// The message as a generic Avro value: the reference for [`direct`], and the fallback when the
/// schema has changed under it.
pub(crate) fn mail_message_value(message: &MailMessage) -> Result<Value> {
    let mut fields = message_fields(RecordSchema::MailMessage.name(), message)?;
    fields.push(("excerpt", opt_string(message.excerpt.as_deref())));
    Ok(record(fields))
}

/// Decodes a framed `MailMessage` written with any schema version `registry` knows.
pub fn decode_mail_message(input: &[u8], registry: &SchemaRegistry) -> Result<MailMessage> {
    let kind = RecordSchema::MailMessage;
    let datum = checked(input, kind, registry)?;
    if datum.is_current(kind) && direct::covers(kind) {
        return direct::decode_mail_message(datum.datum, datum.header_len);
    }
    mail_message_from_value(datum.into_value(kind)?)
}

/// A message from a generic value of the current schema.
pub(crate) fn mail_message_from_value(value: Value) -> Result<MailMessage> {
    let mut fields = Fields::top(RecordSchema::MailMessage.name(), value)?;
    let mut message = message_from_fields(&mut fields)?;
    message.excerpt = fields.opt_string("excerpt")?;
    Ok(message)
}

/// The message's fields in schema order, every one but `excerpt` (shared with the classified
/// record, which has the same fields without it).
pub(crate) fn message_fields(
    schema: &'static str,
    m: &MailMessage,
) -> Result<Vec<(&'static str, Value)>> {
    let attachments = m
        .attachments
        .iter()
        .enumerate()
        .map(|(i, a)| attachment(schema, i, a))
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![
        ("message_id", string(&m.message_id)),
        ("tenant", string(&m.tenant)),
        ("mailbox", string(&m.mailbox)),
        ("custodian", opt_string(m.custodian.as_deref())),
        ("direction", symbol(m.direction.as_str())),
        ("from", nullable(m.from.as_ref().map(address))),
        ("to", addresses(&m.to)),
        ("cc", addresses(&m.cc)),
        ("bcc", addresses(&m.bcc)),
        ("subject", opt_string(m.subject.as_deref())),
        ("sent_at", nullable(m.sent_at.map(timestamp))),
        ("received_at", nullable(m.received_at.map(timestamp))),
        ("size_bytes", long_u64(schema, "size_bytes", m.size_bytes)?),
        ("folder", opt_string(m.folder.as_deref())),
        ("labels", strings(&m.labels)),
        ("thread_id", opt_string(m.thread_id.as_deref())),
        ("in_reply_to", opt_string(m.in_reply_to.as_deref())),
        ("references", strings(&m.references)),
        ("attachments", Value::Array(attachments)),
    ])
}

fn address(a: &Address) -> Value {
    record(vec![
        ("name", opt_string(a.name.as_deref())),
        ("address", string(&a.address)),
    ])
}

fn addresses(list: &[Address]) -> Value {
    Value::Array(list.iter().map(address).collect())
}

fn attachment(schema: &'static str, i: usize, a: &Attachment) -> Result<Value> {
    Ok(record(vec![
        ("name", string(&a.name)),
        ("media_type", string(&a.media_type)),
        (
            "size_bytes",
            long_u64(
                schema,
                &format!("attachments[{i}].size_bytes"),
                a.size_bytes,
            )?,
        ),
    ]))
}

/// Reads the message fields (all but `excerpt`, which is left `None`).
pub(crate) fn message_from_fields(f: &mut Fields) -> Result<MailMessage> {
    let direction = f.symbol("direction")?;
    let direction = Direction::parse(&direction)
        .ok_or_else(|| f.error("direction", format!("unknown direction {direction:?}")))?;
    Ok(MailMessage {
        message_id: f.string("message_id")?,
        tenant: f.string("tenant")?,
        mailbox: f.string("mailbox")?,
        custodian: f.opt_string("custodian")?,
        direction,
        from: f.opt_record("from")?.map(address_from).transpose()?,
        to: f.records("to", address_from)?,
        cc: f.records("cc", address_from)?,
        bcc: f.records("bcc", address_from)?,
        subject: f.opt_string("subject")?,
        sent_at: f.opt_timestamp("sent_at")?,
        received_at: f.opt_timestamp("received_at")?,
        size_bytes: f.u64("size_bytes")?,
        folder: f.opt_string("folder")?,
        labels: f.strings("labels")?,
        thread_id: f.opt_string("thread_id")?,
        in_reply_to: f.opt_string("in_reply_to")?,
        references: f.strings("references")?,
        attachments: f.records("attachments", |mut a| {
            Ok(Attachment {
                name: a.string("name")?,
                media_type: a.string("media_type")?,
                size_bytes: a.u64("size_bytes")?,
            })
        })?,
        excerpt: None,
    })
}

fn address_from(mut f: Fields) -> Result<Address> {
    Ok(Address {
        name: f.opt_string("name")?,
        address: f.string("address")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> MailMessage {
        let mut m = MailMessage::new("a@b", "jdoe");
        m.direction = Direction::Outbound;
        m.to = vec![Address::new("x@y")];
        m.excerpt = Some("excerpt".into());
        m.attachments = vec![Attachment {
            name: "a.pdf".into(),
            media_type: "application/pdf".into(),
            size_bytes: 3,
        }];
        m
    }

    #[test]
    fn round_trips_in_both_framings() {
        let registry = {
            let mut r = SchemaRegistry::new();
            r.register_id(5, RecordSchema::MailMessage.schema().clone())
                .unwrap();
            r
        };
        for framing in [Framing::SingleObject, Framing::Confluent { schema_id: 5 }] {
            let bytes = encode_mail_message(&full(), framing).unwrap();
            assert_eq!(decode_mail_message(&bytes, &registry).unwrap(), full());
        }
    }

    #[test]
    fn sizes_above_i64_are_refused_with_the_field() {
        let mut m = full();
        m.attachments[0].size_bytes = u64::MAX;
        let err = encode_mail_message(&m, Framing::SingleObject).unwrap_err();
        assert_eq!(
            err.to_string(),
            "MailMessage: field attachments[0].size_bytes: value 18446744073709551615 does not fit an Avro long"
        );
    }

    #[test]
    fn direction_symbols_are_the_model_codes() {
        let apache_avro::Schema::Record(r) = RecordSchema::MailMessage.schema() else {
            panic!("a record")
        };
        let field = r.fields.iter().find(|f| f.name == "direction").unwrap();
        let apache_avro::Schema::Enum(e) = &field.schema else {
            panic!("an enum")
        };
        let codes: Vec<&str> = [
            Direction::Inbound,
            Direction::Outbound,
            Direction::Internal,
            Direction::Unknown,
        ]
        .map(Direction::as_str)
        .to_vec();
        assert_eq!(e.symbols, codes);
    }
}
