//! Known writer schemas, and the generic encode/decode of framed Avro values.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::headers::HeaderBuilder;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, Schema};

use crate::check::{self, Names};
use crate::error::{Error, Result};
use crate::framing::{self, Framing, WriterRef};
use crate::schemas::{RecordSchema, fingerprint};

/// A writer schema with what decoding needs precomputed.
struct Writer {
    schema: Schema,
    fingerprint: u64,
    full_name: String,
    names: Names,
    /// The schema with its names resolved once: apache-avro's `from_avro_datum` resolves them
    /// again on every call. `None` if they do not resolve (decoding then reports why).
    decoder: Option<GenericSingleObjectReader>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("full_name", &self.full_name)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish_non_exhaustive()
    }
}

/// No header: the framing is read by [`framing::split`], the reader decodes the bare datum.
struct NoHeader;

impl HeaderBuilder for NoHeader {
    fn build_header(&self) -> Vec<u8> {
        Vec::new()
    }
}

impl Writer {
    fn new(schema: Schema) -> Self {
        Writer {
            fingerprint: fingerprint(&schema),
            full_name: schema
                .name()
                .map(|n| n.fullname(None))
                .unwrap_or_else(|| "(unnamed schema)".to_owned()),
            names: Names::of(&schema),
            decoder: GenericSingleObjectReader::new_with_header_builder(schema.clone(), NoHeader)
                .ok(),
            schema,
        }
    }
}

/// The writer schemas a reader knows, by single-object fingerprint and by Confluent schema id.
///
/// [`SchemaRegistry::new`] knows Retain's current schemas by fingerprint. Older versions still
/// found on topics are added with [`SchemaRegistry::register`]; Confluent ids, which an external
/// registry assigns, with [`SchemaRegistry::register_id`]. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    by_fingerprint: HashMap<u64, Arc<Writer>>,
    by_id: HashMap<u32, Arc<Writer>>,
}

impl Default for SchemaRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl SchemaRegistry {
    /// A registry that knows every current Retain schema by fingerprint.
    pub fn new() -> Self {
        let mut registry = Self::empty();
        for kind in RecordSchema::ALL {
            registry.register(kind.schema().clone());
        }
        // Released versions that may still be on topics (docs/schemas.md, evolution rules).
        registry
            .register_json(crate::event::RETENTION_EVENT_V1)
            .expect("the released RetentionEvent v1 schema parses");
        registry
    }

    /// A registry that knows no schema.
    pub fn empty() -> Self {
        SchemaRegistry {
            by_fingerprint: HashMap::new(),
            by_id: HashMap::new(),
        }
    }

    /// Adds a writer schema under its fingerprint and returns the fingerprint. A schema with the
    /// same canonical form already known is kept (docs and defaults do not change the encoding).
    pub fn register(&mut self, schema: Schema) -> u64 {
        let writer = Writer::new(schema);
        let fp = writer.fingerprint;
        self.by_fingerprint
            .entry(fp)
            .or_insert_with(|| Arc::new(writer));
        fp
    }

    /// Parses a writer schema's JSON text and [registers](Self::register) it.
    pub fn register_json(&mut self, json: &str) -> Result<u64> {
        let schema = Schema::parse_str(json).map_err(|source| Error::SchemaParse { source })?;
        Ok(self.register(schema))
    }

    /// Adds a writer schema under a Confluent schema id (and its fingerprint). Registering the
    /// same schema twice is fine; an id already taken by another schema is refused.
    pub fn register_id(&mut self, id: u32, schema: Schema) -> Result<()> {
        let fp = self.register(schema);
        let writer = Arc::clone(&self.by_fingerprint[&fp]);
        match self.by_id.get(&id) {
            Some(existing) if existing.fingerprint != fp => Err(Error::RegistryConflict {
                id,
                existing: existing.fingerprint,
                new: fp,
            }),
            Some(_) => Ok(()),
            None => {
                self.by_id.insert(id, writer);
                Ok(())
            }
        }
    }

    /// The writer schema with this fingerprint, if known.
    pub fn by_fingerprint(&self, fingerprint: u64) -> Option<&Schema> {
        self.by_fingerprint.get(&fingerprint).map(|w| &w.schema)
    }

    /// The writer schema registered under this Confluent id, if known.
    pub fn by_id(&self, id: u32) -> Option<&Schema> {
        self.by_id.get(&id).map(|w| &w.schema)
    }

    /// Fingerprints of every known writer schema, sorted.
    pub fn fingerprints(&self) -> Vec<u64> {
        let mut fps: Vec<u64> = self.by_fingerprint.keys().copied().collect();
        fps.sort_unstable();
        fps
    }

    fn writer(&self, schema: &'static str, r: WriterRef) -> Result<&Writer> {
        match r {
            WriterRef::Fingerprint(fingerprint) => {
                self.by_fingerprint.get(&fingerprint).map(|w| &**w).ok_or(
                    Error::UnknownFingerprint {
                        schema,
                        fingerprint,
                    },
                )
            }
            WriterRef::SchemaId(id) => self
                .by_id
                .get(&id)
                .map(|w| &**w)
                .ok_or(Error::UnknownSchemaId { schema, id }),
        }
    }
}

/// Encodes a value of one of Retain's schemas with the given framing.
///
/// The value must match the current schema (records as `Value::Record` with every field in
/// order, enums as `Value::Enum` or `Value::String`, nullable fields as `Value::Union`).
pub fn encode_value(kind: RecordSchema, value: Value, framing: Framing) -> Result<Vec<u8>> {
    let datum = apache_avro::to_avro_datum(kind.schema(), value).map_err(|_| {
        // The avro error quotes the value, which may be PHI: keep it out of the message.
        Error::Encode {
            schema: kind.name(),
        }
    })?;
    let mut out = Vec::with_capacity(framing::SINGLE_OBJECT_HEADER_LEN + datum.len());
    framing.write_header(kind.fingerprint(), &mut out);
    out.extend_from_slice(&datum);
    Ok(out)
}

/// Decodes a framed datum as a value of the current `kind` schema.
///
/// The framing is detected from the first bytes; the writer schema is looked up by fingerprint
/// or schema id in `registry`, and the datum resolved to the current schema when the writer's
/// differs (fields it lacks get their defaults).
pub fn decode_value(input: &[u8], kind: RecordSchema, registry: &SchemaRegistry) -> Result<Value> {
    checked(input, kind, registry)?.into_value(kind)
}

/// A framed datum whose writer schema is known and whose structure has been checked against it.
pub(crate) struct Checked<'a> {
    writer: &'a Writer,
    /// The datum after the framing header.
    pub(crate) datum: &'a [u8],
    /// The header's length (offsets in errors count from the start of the input).
    pub(crate) header_len: usize,
}

/// Splits the framing, finds the writer schema of `kind` in `registry` and walks the datum
/// against it ([`check::check`]): what every decode does before reading values.
pub(crate) fn checked<'a>(
    input: &'a [u8],
    kind: RecordSchema,
    registry: &'a SchemaRegistry,
) -> Result<Checked<'a>> {
    let schema = kind.name();
    let (writer_ref, header_len) = framing::split(schema, input)?;
    let writer = registry.writer(schema, writer_ref)?;
    if writer.full_name != kind.full_name() {
        return Err(Error::WrongWriterSchema {
            schema,
            writer: writer.full_name.clone(),
            expected: kind.full_name(),
        });
    }
    let datum = &input[header_len..];
    check::check(&writer.schema, &writer.names, datum).map_err(|p| Error::Malformed {
        schema,
        offset: header_len + p.offset,
        field: p.field,
        problem: p.problem,
    })?;
    Ok(Checked {
        writer,
        datum,
        header_len,
    })
}

impl Checked<'_> {
    /// Whether the datum was written with the current `kind` schema (no resolution needed).
    pub(crate) fn is_current(&self, kind: RecordSchema) -> bool {
        self.writer.fingerprint == kind.fingerprint()
    }

    /// The datum as a generic value of the current `kind` schema.
    pub(crate) fn into_value(self, kind: RecordSchema) -> Result<Value> {
        let schema = kind.name();
        let writer = self.writer;
        let mut reader = self.datum;
        let decoded = match &writer.decoder {
            Some(decoder) => decoder.read_value(&mut reader),
            None => apache_avro::from_avro_datum(&writer.schema, &mut reader, None),
        };
        let value = decoded.map_err(|source| Error::Datum {
            schema,
            fingerprint: writer.fingerprint,
            source,
        })?;
        if self.is_current(kind) {
            return Ok(value);
        }
        value.resolve(kind.schema()).map_err(|_| Error::Resolve {
            schema,
            fingerprint: writer.fingerprint,
            // The avro error quotes the value; a schema-level check says why without it.
            reason: match SchemaCompatibility::can_read(&writer.schema, kind.schema()) {
                Err(e) => e.to_string(),
                Ok(()) => "a value does not fit the reader schema".to_owned(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_registry_knows_every_current_schema() {
        let r = SchemaRegistry::new();
        for kind in RecordSchema::ALL {
            assert!(r.by_fingerprint(kind.fingerprint()).is_some(), "{kind}");
        }
        // Plus the released RetentionEvent v1.
        assert_eq!(r.fingerprints().len(), RecordSchema::ALL.len() + 1);
        assert!(SchemaRegistry::empty().fingerprints().is_empty());
    }

    #[test]
    fn confluent_ids_are_not_reassigned() {
        let mut r = SchemaRegistry::new();
        r.register_id(1, RecordSchema::MailMessage.schema().clone())
            .unwrap();
        r.register_id(1, RecordSchema::MailMessage.schema().clone())
            .unwrap();
        let err = r
            .register_id(1, RecordSchema::AuditEvent.schema().clone())
            .unwrap_err();
        assert!(
            matches!(err, Error::RegistryConflict { id: 1, .. }),
            "{err}"
        );
        assert!(!err.is_bad_input());
    }

    #[test]
    fn a_datum_of_another_record_is_refused_by_name() {
        let r = SchemaRegistry::new();
        let bytes = Framing::SingleObject.header(RecordSchema::AuditEvent.fingerprint());
        let err = decode_value(&bytes, RecordSchema::MailMessage, &r).unwrap_err();
        assert!(
            matches!(err, Error::WrongWriterSchema { ref writer, .. } if writer == "org.retain.v1.AuditEvent"),
            "{err}"
        );
    }

    #[test]
    fn unknown_writers_are_named() {
        let r = SchemaRegistry::new();
        let err = decode_value(
            &Framing::SingleObject.header(0xdead_beef),
            RecordSchema::MailMessage,
            &r,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "MailMessage: unknown writer schema fingerprint 00000000deadbeef (single-object framing); register the writer schema"
        );
        let err = decode_value(
            &Framing::Confluent { schema_id: 9 }.header(0),
            RecordSchema::MailMessage,
            &r,
        )
        .unwrap_err();
        assert!(matches!(err, Error::UnknownSchemaId { id: 9, .. }), "{err}");
        assert!(err.is_bad_input());
    }

    #[test]
    fn bad_schema_text_is_a_parse_error() {
        let err = SchemaRegistry::empty()
            .register_json("{\"type\":\"record\"}")
            .unwrap_err();
        assert!(matches!(err, Error::SchemaParse { .. }), "{err}");
    }
}
