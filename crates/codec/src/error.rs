//! The codec's one error type.
//!
//! Messages name the schema, the field, the framing byte or the fingerprint involved, and never
//! a value taken from the datum: decoded values are PHI (addresses, subjects, patient numbers).

/// Everything that can go wrong while encoding, decoding or registering schemas.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was empty.
    #[error("{schema}: empty input, expected a framed Avro datum")]
    Empty {
        /// The schema being decoded (`MailMessage`, ...).
        schema: &'static str,
    },

    /// The input starts with neither the single-object magic `C3 01` nor the Confluent magic `00`.
    #[error(
        "{schema}: unknown framing: input starts with {found:02x?}, expected c3 01 (Avro single-object) or 00 (Confluent)"
    )]
    UnknownFraming {
        /// The schema being decoded.
        schema: &'static str,
        /// The first one or two bytes seen.
        found: Vec<u8>,
    },

    /// The framing header is shorter than its framing requires.
    #[error("{schema}: {framing} header truncated: {len} bytes, the header needs {need}")]
    TruncatedHeader {
        /// The schema being decoded.
        schema: &'static str,
        /// `single-object` or `Confluent`.
        framing: &'static str,
        /// How many bytes there were.
        len: usize,
        /// How many the header needs.
        need: usize,
    },

    /// A single-object datum names a writer schema fingerprint the registry does not know.
    #[error(
        "{schema}: unknown writer schema fingerprint {fingerprint:016x} (single-object framing); register the writer schema"
    )]
    UnknownFingerprint {
        /// The schema being decoded.
        schema: &'static str,
        /// The CRC-64-AVRO fingerprint read from the header.
        fingerprint: u64,
    },

    /// A Confluent-framed datum names a schema id the registry does not know.
    #[error("{schema}: unknown Confluent schema id {id}; register the writer schema under that id")]
    UnknownSchemaId {
        /// The schema being decoded.
        schema: &'static str,
        /// The schema id read from the header.
        id: u32,
    },

    /// The writer schema is a different record than the one being decoded.
    #[error("{schema}: the datum was written with schema {writer}, not {expected}")]
    WrongWriterSchema {
        /// The schema being decoded.
        schema: &'static str,
        /// Full name of the writer schema.
        writer: String,
        /// Full name of the reader schema.
        expected: &'static str,
    },

    /// The datum does not have the shape its writer schema describes (truncated, garbage or
    /// trailing bytes).
    #[error(
        "{schema}: malformed datum at byte {offset}{}: {problem}",
        field_suffix(field)
    )]
    Malformed {
        /// The schema being decoded.
        schema: &'static str,
        /// Offset in the input (framing header included) where the problem was found.
        offset: usize,
        /// The field path, e.g. `to[2].address`; empty at the top level.
        field: String,
        /// What is wrong, e.g. `length 4096 exceeds the 12 bytes left`.
        problem: String,
    },

    /// apache-avro refused a datum that passed the structural check.
    #[error("{schema}: datum does not decode with writer schema {fingerprint:016x}: {source}")]
    Datum {
        /// The schema being decoded.
        schema: &'static str,
        /// Fingerprint of the writer schema.
        fingerprint: u64,
        /// The decoder's error (it names positions and kinds, not values).
        source: apache_avro::Error,
    },

    /// The writer schema cannot be resolved to the current reader schema.
    #[error(
        "{schema}: writer schema {fingerprint:016x} cannot be read with the current schema: {reason}"
    )]
    Resolve {
        /// The schema being decoded.
        schema: &'static str,
        /// Fingerprint of the writer schema.
        fingerprint: u64,
        /// Why, from a schema-level compatibility check (no values).
        reason: String,
    },

    /// A decoded field does not fit the domain model (e.g. an invalid category code, a negative
    /// size, a timestamp outside chrono's range).
    #[error("{schema}: field {field}: {problem}")]
    Field {
        /// The schema being decoded.
        schema: &'static str,
        /// The field path, e.g. `attachments[0].size_bytes`.
        field: String,
        /// What is wrong.
        problem: String,
    },

    /// A model value does not fit its Avro type (e.g. a `u64` size above `i64::MAX`).
    #[error("{schema}: field {field}: value {value} does not fit an Avro {avro_type}")]
    OutOfRange {
        /// The schema being encoded.
        schema: &'static str,
        /// The field path.
        field: String,
        /// The value (a size or count, never content).
        value: u64,
        /// The Avro type it has to fit.
        avro_type: &'static str,
    },

    /// The codec built a value its own schema refuses: a bug in the codec.
    #[error("{schema}: encoded value does not match the schema (a codec bug)")]
    Encode {
        /// The schema being encoded.
        schema: &'static str,
    },

    /// A schema given to the registry does not parse.
    #[error("schema does not parse: {source}")]
    SchemaParse {
        /// The parser's error.
        source: apache_avro::Error,
    },

    /// A Confluent schema id is already registered for a different schema.
    #[error(
        "Confluent schema id {id} is already registered for schema {existing:016x}, refusing {new:016x}"
    )]
    RegistryConflict {
        /// The schema id.
        id: u32,
        /// Fingerprint of the schema registered first.
        existing: u64,
        /// Fingerprint of the schema refused.
        new: u64,
    },
}

/// `Result` with the codec's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the input is at fault: the record should be dead-lettered and the stage go on.
    ///
    /// False for codec bugs and registry misconfiguration, which should stop the stage.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::Empty { .. }
            | Error::UnknownFraming { .. }
            | Error::TruncatedHeader { .. }
            | Error::UnknownFingerprint { .. }
            | Error::UnknownSchemaId { .. }
            | Error::WrongWriterSchema { .. }
            | Error::Malformed { .. }
            | Error::Datum { .. }
            | Error::Resolve { .. }
            | Error::Field { .. }
            | Error::OutOfRange { .. } => true,
            Error::Encode { .. } | Error::SchemaParse { .. } | Error::RegistryConflict { .. } => {
                false
            }
        }
    }
}

fn field_suffix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(" in field {field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_are_bad_input_and_bugs_are_not() {
        let e = Error::UnknownFraming {
            schema: "MailMessage",
            found: vec![0x7b],
        };
        assert!(e.is_bad_input());
        assert_eq!(
            e.to_string(),
            "MailMessage: unknown framing: input starts with [7b], expected c3 01 (Avro single-object) or 00 (Confluent)"
        );
        assert!(!Error::Encode { schema: "X" }.is_bad_input());
    }

    #[test]
    fn malformed_names_the_field_when_known() {
        let e = Error::Malformed {
            schema: "MailMessage",
            offset: 17,
            field: "to[2].address".into(),
            problem: "truncated".into(),
        };
        assert_eq!(
            e.to_string(),
            "MailMessage: malformed datum at byte 17 in field to[2].address: truncated"
        );
    }
}
