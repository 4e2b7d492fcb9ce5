//! The two ways a datum is framed on a Kafka topic.

use crate::error::{Error, Result};

/// The magic bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// The magic byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// Length of a single-object header: magic and the 8-byte fingerprint.
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;
/// Length of a Confluent header: magic and the 4-byte schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;

/// How a datum is framed: which header says what schema wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Framing {
    /// Avro single-object encoding: `C3 01`, the writer schema's CRC-64-AVRO fingerprint
    /// (8 bytes, little-endian), then the datum. Self-describing given a registry of schemas.
    #[default]
    SingleObject,
    /// Confluent wire format: `00`, the schema id from a Confluent-compatible schema registry
    /// (4 bytes, big-endian), then the datum.
    Confluent {
        /// The id under which the writer schema is registered.
        schema_id: u32,
    },
}

impl Framing {
    /// The header for a datum written with the schema of this `fingerprint` (ignored by the
    /// Confluent framing, which names the schema by id).
    pub fn header(self, fingerprint: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(SINGLE_OBJECT_HEADER_LEN);
        self.write_header(fingerprint, &mut out);
        out
    }

    /// Appends the header (see [`Framing::header`]) to `out`.
    pub fn write_header(self, fingerprint: u64, out: &mut Vec<u8>) {
        match self {
            Framing::SingleObject => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&fingerprint.to_le_bytes());
            }
            Framing::Confluent { schema_id } => {
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&schema_id.to_be_bytes());
            }
        }
    }

    /// The framing's name in messages: `single-object` or `Confluent`.
    pub fn name(self) -> &'static str {
        match self {
            Framing::SingleObject => "single-object",
            Framing::Confluent { .. } => "Confluent",
        }
    }
}

/// What a header says about the writer schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterRef {
    /// A single-object fingerprint.
    Fingerprint(u64),
    /// A Confluent schema id.
    SchemaId(u32),
}

/// Splits framed input into what names the writer schema, the header length and the datum.
pub(crate) fn split(schema: &'static str, input: &[u8]) -> Result<(WriterRef, usize)> {
    match input {
        [] => Err(Error::Empty { schema }),
        [0xC3] | [0xC3, 0x01, ..] => {
            let Some(header) = input.get(..SINGLE_OBJECT_HEADER_LEN) else {
                return Err(Error::TruncatedHeader {
                    schema,
                    framing: Framing::SingleObject.name(),
                    len: input.len(),
                    need: SINGLE_OBJECT_HEADER_LEN,
                });
            };
            let mut fp = [0_u8; 8];
            fp.copy_from_slice(&header[2..]);
            Ok((
                WriterRef::Fingerprint(u64::from_le_bytes(fp)),
                SINGLE_OBJECT_HEADER_LEN,
            ))
        }
        [CONFLUENT_MAGIC, ..] => {
            let Some(header) = input.get(..CONFLUENT_HEADER_LEN) else {
                return Err(Error::TruncatedHeader {
                    schema,
                    framing: "Confluent",
                    len: input.len(),
                    need: CONFLUENT_HEADER_LEN,
                });
            };
            let mut id = [0_u8; 4];
            id.copy_from_slice(&header[1..]);
            Ok((
                WriterRef::SchemaId(u32::from_be_bytes(id)),
                CONFLUENT_HEADER_LEN,
            ))
        }
        [first, rest @ ..] => Err(Error::UnknownFraming {
            schema,
            found: std::iter::once(*first)
                .chain(rest.first().copied())
                .collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_have_the_documented_layout() {
        assert_eq!(
            Framing::SingleObject.header(0x0102_0304_0506_0708),
            [0xC3, 0x01, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(
            Framing::Confluent {
                schema_id: 0x0A0B_0C0D
            }
            .header(99),
            [0, 0x0A, 0x0B, 0x0C, 0x0D]
        );
    }

    #[test]
    fn split_reads_back_what_the_header_says() {
        let h = Framing::SingleObject.header(42);
        assert_eq!(split("T", &h).unwrap(), (WriterRef::Fingerprint(42), 10));
        let h = Framing::Confluent { schema_id: 7 }.header(0);
        assert_eq!(split("T", &h).unwrap(), (WriterRef::SchemaId(7), 5));
    }

    #[test]
    fn split_names_what_it_saw() {
        assert!(matches!(split("T", &[]), Err(Error::Empty { .. })));
        assert!(matches!(
            split("T", &[0xC3, 0x01, 1, 2]),
            Err(Error::TruncatedHeader {
                len: 4,
                need: 10,
                ..
            })
        ));
        assert!(matches!(
            split("T", &[0xC3]),
            Err(Error::TruncatedHeader { len: 1, .. })
        ));
        assert!(matches!(
            split("T", &[0, 1]),
            Err(Error::TruncatedHeader { need: 5, .. })
        ));
        match split("T", b"{\"json\":1}") {
            Err(Error::UnknownFraming { found, .. }) => assert_eq!(found, b"{\""),
            other => panic!("{other:?}"),
        }
        match split("T", &[0xC3, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]) {
            Err(Error::UnknownFraming { found, .. }) => assert_eq!(found, [0xC3, 0x02]),
            other => panic!("{other:?}"),
        }
    }
}
