//! The hot path: `MailMessage` and `ClassifiedRecord` written and read straight between the model
//! and Avro binary, without apache-avro's generic `Value` tree.
//!
//! apache-avro 0.21 resolves the schema's names again on every `to_avro_datum` /
//! `from_avro_datum` call and goes through a `Value` tree with a hash map per record (to encode)
//! and per decoded record (ours, to take fields out by name); per message that cost several times
//! what classifying it does. This module does the same work field by field in schema order.
//!
//! It is written for one version of each schema, named by fingerprint ([`covers`]): the codec
//! uses it only while the embedded schema is that version, and otherwise falls back to the
//! generic `Value` path (which stays the reference: the tests check both paths produce the same
//! bytes and the same records). Decoding here only ever sees datums that [`crate::check`] has
//! already walked against the writer schema (every length and count within the input, UTF-8,
//! union and enum indexes in range, nothing trailing); the reader below still checks every read
//! and reports a malformed datum rather than trusting that.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use retain_model::{
    Address, Attachment, Category, Classification, Direction, MailMessage, PhiIndicators,
};

use crate::classified::{ClassifiedRecord, Lineage};
use crate::error::{Error, Result};
use crate::framing::Framing;
use crate::schemas::RecordSchema;
use crate::value::to_long;

/// The `MailMessage` schema version this module encodes and decodes (its fingerprint).
const MAIL_MESSAGE: u64 = 0x20cf_c3f5_f9d1_2fa7;
/// The `ClassifiedRecord` schema version this module encodes and decodes (its fingerprint).
const CLASSIFIED_RECORD: u64 = 0x1f29_218c_f666_67f4;

/// The `direction` enum's symbols in schema order.
const DIRECTIONS: [Direction; 4] = [
    Direction::Inbound,
    Direction::Outbound,
    Direction::Internal,
    Direction::Unknown,
];

/// Whether this module is written for the current version of `kind`.
pub(crate) fn covers(kind: RecordSchema) -> bool {
    match kind {
        RecordSchema::MailMessage => kind.fingerprint() == MAIL_MESSAGE,
        RecordSchema::ClassifiedRecord => kind.fingerprint() == CLASSIFIED_RECORD,
        _ => false,
    }
}

// ---- encoding ------------------------------------------------------------------------------

/// An Avro binary encoder into a growing buffer.
struct Out {
    buf: Vec<u8>,
}

impl Out {
    fn new(kind: RecordSchema, framing: Framing) -> Self {
        let mut buf = Vec::with_capacity(512);
        framing.write_header(kind.fingerprint(), &mut buf);
        Out { buf }
    }

    /// A zig-zag variable-length `long` (and `int`: the same encoding).
    fn long(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            self.buf.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.buf.push(z as u8);
    }

    fn int(&mut self, v: i32) {
        self.long(i64::from(v));
    }

    fn string(&mut self, s: &str) {
        // A length is at most isize::MAX, which fits a long.
        self.long(s.len() as i64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// The branch of a `["null", T]` union: 0 for null, 1 for the value.
    fn branch(&mut self, present: bool) {
        self.long(i64::from(present));
    }

    fn opt_string(&mut self, s: Option<&str>) {
        self.branch(s.is_some());
        if let Some(s) = s {
            self.string(s);
        }
    }

    fn opt_timestamp(&mut self, t: Option<DateTime<Utc>>) {
        self.branch(t.is_some());
        if let Some(t) = t {
            // timestamp-micros: sub-microsecond precision is truncated.
            self.long(t.timestamp_micros());
        }
    }

    fn boolean(&mut self, b: bool) {
        self.buf.push(u8::from(b));
    }

    fn float(&mut self, f: f32) {
        self.buf.extend_from_slice(&f.to_le_bytes());
    }

    /// An array as apache-avro writes it: one block of every item, then the empty block.
    fn array<T>(
        &mut self,
        items: &[T],
        mut item: impl FnMut(&mut Self, usize, &T) -> Result<()>,
    ) -> Result<()> {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for (i, v) in items.iter().enumerate() {
                item(self, i, v)?;
            }
        }
        self.long(0);
        Ok(())
    }

    fn strings<S: AsRef<str>>(&mut self, items: &[S]) {
        if !items.is_empty() {
            self.long(items.len() as i64);
            for s in items {
                self.string(s.as_ref());
            }
        }
        self.long(0);
    }

    fn address(&mut self, a: &Address) {
        self.opt_string(a.name.as_deref());
        self.string(&a.address);
    }

    fn addresses(&mut self, list: &[Address]) {
        // Infallible: the closure never fails.
        let _ = self.array(list, |o, _, a| {
            o.address(a);
            Ok(())
        });
    }
}

/// Every message field but `excerpt`, in schema order (shared by both records).
fn message_fields(o: &mut Out, schema: &'static str, m: &MailMessage) -> Result<()> {
    o.string(&m.message_id);
    o.string(&m.tenant);
    o.string(&m.mailbox);
    o.opt_string(m.custodian.as_deref());
    o.int(direction_index(m.direction));
    o.branch(m.from.is_some());
    if let Some(a) = &m.from {
        o.address(a);
    }
    o.addresses(&m.to);
    o.addresses(&m.cc);
    o.addresses(&m.bcc);
    o.opt_string(m.subject.as_deref());
    o.opt_timestamp(m.sent_at);
    o.opt_timestamp(m.received_at);
    o.long(to_long(schema, "size_bytes", m.size_bytes)?);
    o.opt_string(m.folder.as_deref());
    o.strings(&m.labels);
    o.opt_string(m.thread_id.as_deref());
    o.opt_string(m.in_reply_to.as_deref());
    o.strings(&m.references);
    o.array(&m.attachments, |o, i, a| {
        o.string(&a.name);
        o.string(&a.media_type);
        let size = to_long(
            schema,
            &format!("attachments[{i}].size_bytes"),
            a.size_bytes,
        )?;
        o.long(size);
        Ok(())
    })
}

fn direction_index(d: Direction) -> i32 {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
        Direction::Internal => 2,
        Direction::Unknown => 3,
    }
}

/// Encodes a message (call only when [`covers`] the `MailMessage` schema).
pub(crate) fn encode_mail_message(m: &MailMessage, framing: Framing) -> Result<Vec<u8>> {
    let kind = RecordSchema::MailMessage;
    let mut o = Out::new(kind, framing);
    message_fields(&mut o, kind.name(), m)?;
    o.opt_string(m.excerpt.as_deref());
    Ok(o.buf)
}

/// Encodes a classified record (call only when [`covers`] the `ClassifiedRecord` schema).
pub(crate) fn encode_classified_record(r: &ClassifiedRecord, framing: Framing) -> Result<Vec<u8>> {
    let kind = RecordSchema::ClassifiedRecord;
    let c = &r.classification;
    let mut o = Out::new(kind, framing);
    message_fields(&mut o, kind.name(), &r.message)?;
    o.string(c.category.as_str());
    o.opt_string(c.rule.as_deref());
    o.float(c.confidence);
    o.boolean(c.forced);
    o.boolean(c.phi.mrn);
    o.boolean(c.phi.icd10);
    o.boolean(c.phi.dob);
    o.boolean(c.phi.patient_terms);
    o.strings(&c.patient_refs);
    o.strings(&c.also_matched);
    o.string(&c.policy_version);
    o.string(&r.classifier_version);
    o.string(&r.lineage.topic);
    o.int(r.lineage.partition);
    o.long(r.lineage.offset);
    Ok(o.buf)
}

// ---- decoding ------------------------------------------------------------------------------

/// An Avro binary reader over one checked datum.
struct In<'a> {
    schema: &'static str,
    buf: &'a [u8],
    pos: usize,
    /// The framing header's length, so offsets count from the start of the input.
    header_len: usize,
}

impl<'a> In<'a> {
    fn malformed(&self, field: &str, problem: impl Into<String>) -> Error {
        Error::Malformed {
            schema: self.schema,
            offset: self.header_len + self.pos,
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    fn field_error(&self, field: &str, problem: impl Into<String>) -> Error {
        Error::Field {
            schema: self.schema,
            field: field.to_owned(),
            problem: problem.into(),
        }
    }

    fn long(&mut self, field: &str) -> Result<i64> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.malformed(field, "truncated: variable-length integer cut off"));
            };
            self.pos += 1;
            z |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(self.malformed(field, "variable-length integer longer than 10 bytes"))
    }

    fn int(&mut self, field: &str) -> Result<i32> {
        let v = self.long(field)?;
        i32::try_from(v)
            .map_err(|_| self.malformed(field, format!("int {v} out of the 32-bit range")))
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let bytes = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.get(..n))
            .ok_or_else(|| self.malformed(field, "truncated"))?;
        self.pos += n;
        Ok(bytes)
    }

    /// A length or count, which must fit in the bytes left.
    fn len(&mut self, field: &str) -> Result<usize> {
        let n = self.long(field)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.buf.len() - self.pos => Ok(n),
            _ => Err(self.malformed(field, format!("length or count {n} out of range"))),
        }
    }

    fn str(&mut self, field: &str) -> Result<&'a str> {
        let n = self.len(field)?;
        let bytes = self.take(n, field)?;
        std::str::from_utf8(bytes)
            .map_err(|e| self.malformed(field, format!("string is not UTF-8 ({e})")))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        self.str(field).map(str::to_owned)
    }

    /// Whether a `["null", T]` union holds a value.
    fn branch(&mut self, field: &str) -> Result<bool> {
        match self.long(field)? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(self.malformed(field, format!("union index {i} out of range (2 branches)"))),
        }
    }

    fn opt_string(&mut self, field: &str) -> Result<Option<String>> {
        Ok(if self.branch(field)? {
            Some(self.string(field)?)
        } else {
            None
        })
    }

    fn timestamp(&mut self, field: &str) -> Result<DateTime<Utc>> {
        let micros = self.long(field)?;
        DateTime::from_timestamp_micros(micros).ok_or_else(|| {
            self.field_error(
                field,
                format!("timestamp {micros} µs is outside the representable range"),
            )
        })
    }

    fn opt_timestamp(&mut self, field: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(if self.branch(field)? {
            Some(self.timestamp(field)?)
        } else {
            None
        })
    }

    /// A long that must not be negative (sizes); `path` names the field in errors.
    fn size(&mut self, path: impl Fn() -> String) -> Result<u64> {
        let v = self.long("size_bytes")?;
        u64::try_from(v).map_err(|_| self.field_error(&path(), format!("negative size {v}")))
    }

    fn boolean(&mut self, field: &str) -> Result<bool> {
        match self.take(1, field)? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(self.malformed(field, "boolean byte is neither 0 nor 1")),
        }
    }

    fn float(&mut self, field: &str) -> Result<f32> {
        let bytes = self.take(4, field)?;
        let mut b = [0_u8; 4];
        b.copy_from_slice(bytes);
        Ok(f32::from_le_bytes(b))
    }

    /// An array's items, block by block.
    fn array<T>(
        &mut self,
        field: &str,
        mut item: impl FnMut(&mut Self, usize) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        loop {
            let count = self.long(field)?;
            let count = if count < 0 {
                // A negative count is followed by the block's size in bytes.
                self.long(field)?;
                count.checked_neg().unwrap_or(i64::MAX)
            } else {
                count
            };
            let count = match usize::try_from(count) {
                Ok(0) => return Ok(items),
                Ok(n) if n <= self.buf.len() - self.pos => n,
                _ => return Err(self.malformed(field, format!("block count {count} out of range"))),
            };
            items.reserve(count);
            for _ in 0..count {
                let i = items.len();
                items.push(item(self, i)?);
            }
        }
    }

    fn strings(&mut self, field: &str) -> Result<Vec<String>> {
        self.array(field, |r, _| r.string(field))
    }

    fn address(&mut self, field: &str) -> Result<Address> {
        Ok(Address {
            name: self.opt_string(field)?,
            address: self.string(field)?,
        })
    }

    fn addresses(&mut self, field: &str) -> Result<Vec<Address>> {
        self.array(field, |r, _| r.address(field))
    }

    fn end(&self) -> Result<()> {
        let left = self.buf.len() - self.pos;
        if left == 0 {
            Ok(())
        } else {
            Err(self.malformed("", format!("{left} bytes left over after the datum")))
        }
    }
}

/// Reads every message field but `excerpt` (left `None`).
fn read_message(r: &mut In<'_>) -> Result<MailMessage> {
    let message_id = r.string("message_id")?;
    let tenant = r.string("tenant")?;
    let mailbox = r.string("mailbox")?;
    let custodian = r.opt_string("custodian")?;
    let i = r.int("direction")?;
    let direction = usize::try_from(i)
        .ok()
        .and_then(|i| DIRECTIONS.get(i))
        .copied()
        .ok_or_else(|| r.field_error("direction", format!("unknown direction index {i}")))?;
    let from = if r.branch("from")? {
        Some(r.address("from")?)
    } else {
        None
    };
    Ok(MailMessage {
        message_id,
        tenant,
        mailbox,
        custodian,
        direction,
        from,
        to: r.addresses("to")?,
        cc: r.addresses("cc")?,
        bcc: r.addresses("bcc")?,
        subject: r.opt_string("subject")?,
        sent_at: r.opt_timestamp("sent_at")?,
        received_at: r.opt_timestamp("received_at")?,
        size_bytes: r.size(|| "size_bytes".to_owned())?,
        folder: r.opt_string("folder")?,
        labels: r.strings("labels")?,
        thread_id: r.opt_string("thread_id")?,
        in_reply_to: r.opt_string("in_reply_to")?,
        references: r.strings("references")?,
        attachments: r.array("attachments", |r, i| {
            Ok(Attachment {
                name: r.string("attachments")?,
                media_type: r.string("attachments")?,
                size_bytes: r.size(|| format!("attachments[{i}].size_bytes"))?,
            })
        })?,
        excerpt: None,
    })
}

/// Decodes a checked `MailMessage` datum of the version this module covers.
pub(crate) fn decode_mail_message(datum: &[u8], header_len: usize) -> Result<MailMessage> {
    let mut r = In {
        schema: RecordSchema::MailMessage.name(),
        buf: datum,
        pos: 0,
        header_len,
    };
    let mut m = read_message(&mut r)?;
    m.excerpt = r.opt_string("excerpt")?;
    r.end()?;
    Ok(m)
}

/// Decodes a checked `ClassifiedRecord` datum of the version this module covers.
pub(crate) fn decode_classified_record(
    datum: &[u8],
    header_len: usize,
) -> Result<ClassifiedRecord> {
    let mut r = In {
        schema: RecordSchema::ClassifiedRecord.name(),
        buf: datum,
        pos: 0,
        header_len,
    };
    let message = read_message(&mut r)?;
    let code = r.str("category")?;
    let category = Category::new(code).map_err(|e| r.field_error("category", e.to_string()))?;
    let rule = r.opt_string("rule")?.map(Arc::from);
    let classification = Classification {
        category,
        rule,
        confidence: r.float("confidence")?,
        forced: r.boolean("forced")?,
        phi: PhiIndicators {
            mrn: r.boolean("phi.mrn")?,
            icd10: r.boolean("phi.icd10")?,
            dob: r.boolean("phi.dob")?,
            patient_terms: r.boolean("phi.patient_terms")?,
        },
        patient_refs: r.strings("patient_refs")?,
        also_matched: r.array("also_matched", |r, _| r.str("also_matched").map(Arc::from))?,
        policy_version: Arc::from(r.str("policy_version")?),
    };
    let record = ClassifiedRecord {
        message,
        classification,
        classifier_version: r.string("classifier_version")?,
        lineage: Lineage {
            topic: r.string("source_topic")?,
            partition: r.int("source_partition")?,
            offset: r.long("source_offset")?,
        },
    };
    r.end()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::classified::{classified_record_from_value, classified_record_value};
    use crate::mail::{mail_message_from_value, mail_message_value};
    use crate::registry::encode_value;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z0-9@._-]{1,24}", "\\PC{0,80}"]
    }

    fn texts() -> impl Strategy<Value = Vec<String>> {
        // Up to 70 items: more than one byte of varint count.
        prop_oneof![
            proptest::collection::vec(text(), 0..4),
            proptest::collection::vec(text(), 60..70)
        ]
    }

    fn address() -> impl Strategy<Value = Address> {
        (proptest::option::of(text()), text()).prop_map(|(name, address)| Address { name, address })
    }

    fn timestamp() -> impl Strategy<Value = Option<DateTime<Utc>>> {
        proptest::option::of(
            (-62_135_596_800_000_000_i64..253_402_300_800_000_000)
                .prop_map(|m| DateTime::from_timestamp_micros(m).unwrap()),
        )
    }

    fn size() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(i64::MAX as u64), 0..=i64::MAX as u64]
    }

    prop_compose! {
        fn message()(
            ids in (text(), text(), text(), proptest::option::of(text())),
            direction in 0..4_usize,
            from in proptest::option::of(address()),
            to in proptest::collection::vec(address(), 0..70),
            cc_bcc in (proptest::collection::vec(address(), 0..3), proptest::collection::vec(address(), 0..3)),
            subject in proptest::option::of(text()),
            times in (timestamp(), timestamp()),
            size_bytes in size(),
            folder in proptest::option::of(text()),
            labels in texts(),
            thread in (proptest::option::of(text()), proptest::option::of(text()), texts()),
            attachments in proptest::collection::vec((text(), text(), size()), 0..3),
            excerpt in proptest::option::of(text()),
        ) -> MailMessage {
            MailMessage {
                message_id: ids.0,
                tenant: ids.1,
                mailbox: ids.2,
                custodian: ids.3,
                direction: DIRECTIONS[direction],
                from,
                to,
                cc: cc_bcc.0,
                bcc: cc_bcc.1,
                subject,
                sent_at: times.0,
                received_at: times.1,
                size_bytes,
                folder,
                labels,
                thread_id: thread.0,
                in_reply_to: thread.1,
                references: thread.2,
                attachments: attachments
                    .into_iter()
                    .map(|(name, media_type, size_bytes)| Attachment { name, media_type, size_bytes })
                    .collect(),
                excerpt,
            }
        }
    }

    prop_compose! {
        fn record()(
            message in message(),
            category in "[a-z][a-z0-9_]{0,20}",
            rule in proptest::option::of(text()),
            confidence in prop_oneof![Just(0.0_f32), Just(-0.0), Just(f32::MAX), any::<f32>().prop_filter("a number", |f| !f.is_nan())],
            flags in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
            refs in (texts(), texts(), text(), text(), text()),
            lineage in (any::<i32>(), any::<i64>()),
        ) -> ClassifiedRecord {
            let classification = Classification {
                category: Category::new(&category).unwrap(),
                rule: rule.map(Arc::from),
                confidence,
                forced: flags.0,
                phi: PhiIndicators { mrn: flags.1, icd10: flags.2, dob: flags.3, patient_terms: flags.4 },
                patient_refs: refs.0,
                also_matched: refs.1.into_iter().map(Arc::from).collect(),
                policy_version: Arc::from(refs.2),
            };
            let lineage = Lineage { topic: refs.4, partition: lineage.0, offset: lineage.1 };
            ClassifiedRecord::new(message, classification, refs.3, lineage)
        }
    }

    proptest! {
        /// The bytes are apache-avro's for the generic value, and both readers agree on them.
        #[test]
        fn messages_match_the_generic_path(m in message(), id in any::<u32>()) {
            let kind = RecordSchema::MailMessage;
            for framing in [Framing::SingleObject, Framing::Confluent { schema_id: id }] {
                let bytes = encode_mail_message(&m, framing).unwrap();
                let reference = encode_value(kind, mail_message_value(&m).unwrap(), framing).unwrap();
                prop_assert_eq!(&bytes, &reference);
                let header_len = framing.header(0).len();
                let datum = &bytes[header_len..];
                let value = apache_avro::from_avro_datum(kind.schema(), &mut &datum[..], None).unwrap();
                prop_assert_eq!(&mail_message_from_value(value).unwrap(), &m);
                prop_assert_eq!(&decode_mail_message(datum, header_len).unwrap(), &m);
            }
        }

        #[test]
        fn classified_records_match_the_generic_path(r in record()) {
            let kind = RecordSchema::ClassifiedRecord;
            let framing = Framing::SingleObject;
            let bytes = encode_classified_record(&r, framing).unwrap();
            let reference = encode_value(kind, classified_record_value(&r).unwrap(), framing).unwrap();
            prop_assert_eq!(&bytes, &reference);
            let datum = &bytes[crate::SINGLE_OBJECT_HEADER_LEN..];
            let value = apache_avro::from_avro_datum(kind.schema(), &mut &datum[..], None).unwrap();
            prop_assert_eq!(&classified_record_from_value(value).unwrap(), &r);
            prop_assert_eq!(
                &decode_classified_record(datum, crate::SINGLE_OBJECT_HEADER_LEN).unwrap(),
                &r
            );
        }
    }

    #[test]
    fn errors_match_the_generic_path() {
        // A size above i64::MAX names the field, as the generic path does.
        let mut m = MailMessage::new("a@b", "jdoe");
        m.attachments.push(Attachment {
            name: "a".into(),
            media_type: "b".into(),
            size_bytes: u64::MAX,
        });
        let direct = encode_mail_message(&m, Framing::SingleObject).unwrap_err();
        let generic = mail_message_value(&m).unwrap_err();
        assert_eq!(direct.to_string(), generic.to_string());

        // A negative size and an out-of-range timestamp in a well-formed datum are field errors.
        m.attachments[0].size_bytes = 1;
        let bytes = encode_mail_message(&m, Framing::SingleObject).unwrap();
        let datum = &bytes[crate::SINGLE_OBJECT_HEADER_LEN..];
        // The attachment's size is the datum's third-last byte (1 → zig-zag 2), before the
        // array's end and the excerpt's null branch.
        let at = datum.len() - 3;
        assert_eq!(datum[at], 2);
        let mut bad = datum.to_vec();
        bad[at] = 1; // -1
        let kind = RecordSchema::MailMessage;
        let value = apache_avro::from_avro_datum(kind.schema(), &mut &bad[..], None).unwrap();
        let generic = mail_message_from_value(value).unwrap_err();
        let direct = decode_mail_message(&bad, crate::SINGLE_OBJECT_HEADER_LEN).unwrap_err();
        assert_eq!(direct.to_string(), generic.to_string());
        assert_eq!(
            direct.to_string(),
            "MailMessage: field attachments[0].size_bytes: negative size -1"
        );

        let mut m = MailMessage::new("a@b", "jdoe");
        m.sent_at = Some(DateTime::from_timestamp_micros(0).unwrap());
        let bytes = encode_mail_message(&m, Framing::SingleObject).unwrap();
        let datum = &bytes[crate::SINGLE_OBJECT_HEADER_LEN..];
        // sent_at: branch 1 (0x02) then micros 0 (0x00); replace the 0 with i64::MAX.
        let at = datum.windows(3).position(|w| w == [2, 0, 0]).unwrap() + 1;
        let mut bad = datum[..at].to_vec();
        bad.extend([0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        bad.extend(&datum[at + 1..]);
        let value = apache_avro::from_avro_datum(kind.schema(), &mut &bad[..], None).unwrap();
        let generic = mail_message_from_value(value).unwrap_err();
        let direct = decode_mail_message(&bad, crate::SINGLE_OBJECT_HEADER_LEN).unwrap_err();
        assert_eq!(direct.to_string(), generic.to_string());
        assert!(
            direct
                .to_string()
                .starts_with("MailMessage: field sent_at: timestamp"),
            "{direct}"
        );
    }

    #[test]
    fn written_for_the_current_schemas() {
        for kind in [RecordSchema::MailMessage, RecordSchema::ClassifiedRecord] {
            assert!(
                covers(kind),
                "crates/codec/src/direct.rs is written for another version of {kind} than \
                 schemas/{} (fingerprint {:#018x}): bring its encoder and decoder up to date, \
                 then its constant",
                kind.file_name(),
                kind.fingerprint()
            );
        }
    }

    #[test]
    fn direction_symbols_are_in_schema_order() {
        for kind in [RecordSchema::MailMessage, RecordSchema::ClassifiedRecord] {
            let apache_avro::Schema::Record(r) = kind.schema() else {
                panic!("a record")
            };
            let field = r.fields.iter().find(|f| f.name == "direction").unwrap();
            let apache_avro::Schema::Enum(e) = &field.schema else {
                panic!("an enum")
            };
            let codes: Vec<&str> = DIRECTIONS.map(Direction::as_str).to_vec();
            assert_eq!(e.symbols, codes);
            for (i, d) in DIRECTIONS.into_iter().enumerate() {
                assert_eq!(direction_index(d), i as i32);
            }
        }
    }
}
