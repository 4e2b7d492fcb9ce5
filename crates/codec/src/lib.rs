//! Retain's wire codec: the Avro schemas of its topics and the framed encoding of its records.
//!
//! The schemas live in `schemas/*.avsc` (namespace `org.retain.v1`) and are embedded here and
//! parsed once ([`schemas`]). Records are converted to and from Avro values by hand, field by
//! field, so the wire format is exactly what the schemas say and the model can change without
//! silently changing it.
//!
//! Two framings are read and written ([`Framing`]): Avro single-object encoding (`C3 01` + the
//! writer schema's CRC-64-AVRO fingerprint) and the Confluent wire format (`00` + a schema-registry
//! id). Decoding detects the framing, finds the writer schema in a [`SchemaRegistry`], checks the
//! datum's structure against it and resolves it to the current schema, so data written with an
//! older schema is read with the new fields' defaults.
//!
//! `MailMessage` and `ClassifiedRecord`, the pipeline's per-message records, skip the generic
//! `Value` tree at their current schema version: they are written and read field by field
//! straight to and from Avro binary (`direct.rs`, checked against the generic path by its tests).
//!
//! Decode errors are bad input ([`Error::is_bad_input`]): the pipeline dead-letters the record
//! and goes on. No error message quotes a decoded value (they are PHI).

mod check;
mod classified;
mod direct;
mod disposal;
mod error;
mod event;
mod framing;
mod mail;
mod registry;
pub mod schemas;
mod value;

pub use apache_avro;
pub use apache_avro::Schema;
pub use apache_avro::types::Value;

pub use classified::{
    ClassifiedRecord, Lineage, decode_classified_record, encode_classified_record,
};
pub use disposal::{DisposalCommandMessage, decode_disposal_command, encode_disposal_command};
pub use error::{Error, Result};
pub use event::{
    EventKeys, EventType, RETENTION_EVENT_V1, RetentionEventMessage, action_code,
    decode_retention_event, encode_retention_event, parse_action,
};
pub use framing::{
    CONFLUENT_HEADER_LEN, CONFLUENT_MAGIC, Framing, SINGLE_OBJECT_HEADER_LEN, SINGLE_OBJECT_MAGIC,
};
pub use mail::{decode_mail_message, encode_mail_message};
pub use registry::{SchemaRegistry, decode_value, encode_value};
pub use schemas::{RecordSchema, fingerprint};
