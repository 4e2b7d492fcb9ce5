//! A structural check of a datum against its writer schema, before apache-avro decodes it.
//!
//! apache-avro 0.21 reserves room for a whole array or map block before reading it, trusting the
//! block count in the data up to 512 Mi items (a count of 500 million asks for 28 GB of its
//! 56-byte `Value`s, and the process aborts), and reads a union index cut off by the end of input
//! as `null`. Either would let a truncated or garbage
//! message through the pipeline: one as an out-of-memory abort, the other as a silently
//! shortened record. This walk reads the datum without building values and refuses any length or
//! count larger than the bytes left, any truncation and any trailing bytes, naming the byte
//! offset and the field.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::schema::{DecimalSchema, Name, Namespace};

/// How deeply values may nest (records in arrays in records ...) before the datum is refused.
const MAX_DEPTH: usize = 64;

/// The named types (records, enums, fixed) of a schema by full name, to follow references.
#[derive(Debug, Clone, Default)]
pub(crate) struct Names(HashMap<Name, Schema>);

impl Names {
    /// Collects the named types defined anywhere in `schema`.
    pub(crate) fn of(schema: &Schema) -> Self {
        let mut names = Names::default();
        names.collect(schema, &None);
        names
    }

    fn collect(&mut self, schema: &Schema, namespace: &Namespace) {
        match schema {
            Schema::Record(record) => {
                let name = record.name.fully_qualified_name(namespace);
                let inner = name.namespace.clone();
                self.0.insert(name, schema.clone());
                for field in &record.fields {
                    self.collect(&field.schema, &inner);
                }
            }
            Schema::Enum(e) => {
                self.0
                    .insert(e.name.fully_qualified_name(namespace), schema.clone());
            }
            Schema::Fixed(f) => {
                self.0
                    .insert(f.name.fully_qualified_name(namespace), schema.clone());
            }
            Schema::Array(a) => self.collect(&a.items, namespace),
            Schema::Map(m) => self.collect(&m.types, namespace),
            Schema::Union(u) => {
                for variant in u.variants() {
                    self.collect(variant, namespace);
                }
            }
            Schema::Decimal(DecimalSchema { inner, .. }) => self.collect(inner, namespace),
            _ => {}
        }
    }
}

/// Where and why a datum is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// Offset from the start of the datum.
    pub offset: usize,
    /// Field path such as `to[2].address`; empty at the top level.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// Checks that `datum` is exactly one well-formed value of `schema`.
pub(crate) fn check<'a>(
    schema: &'a Schema,
    names: &'a Names,
    datum: &'a [u8],
) -> Result<(), Problem> {
    let mut cursor = Cursor {
        buf: datum,
        pos: 0,
        names,
    };
    let result = cursor.value(schema, None, 0).and_then(|()| {
        let left = datum.len() - cursor.pos;
        if left == 0 {
            Ok(())
        } else {
            Err(cursor.fail(format!("{left} bytes left over after the datum")))
        }
    });
    result.map_err(|fail| {
        let mut field = String::new();
        for seg in fail.path.iter().rev() {
            if !field.is_empty() && !seg.starts_with('[') {
                field.push('.');
            }
            field.push_str(seg);
        }
        Problem {
            offset: fail.offset,
            field,
            problem: fail.problem,
        }
    })
}

struct Fail {
    offset: usize,
    problem: String,
    /// Innermost segment first (pushed while unwinding).
    path: Vec<String>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    names: &'a Names,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn fail(&self, problem: impl Into<String>) -> Fail {
        Fail {
            offset: self.pos,
            problem: problem.into(),
            path: Vec::new(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], Fail> {
        if n > self.left() {
            return Err(self.fail(format!(
                "truncated: {what} needs {n} bytes, {} left",
                self.left()
            )));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// A zig-zag variable-length long, as Avro writes `int` and `long`.
    fn long(&mut self) -> Result<i64, Fail> {
        let start = self.pos;
        let mut z: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                self.pos = start;
                return Err(self.fail("truncated: variable-length integer cut off"));
            };
            self.pos += 1;
            z |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        self.pos = start;
        Err(self.fail("variable-length integer longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, Fail> {
        let start = self.pos;
        let v = self.long()?;
        i32::try_from(v).map_err(|_| {
            self.pos = start;
            self.fail(format!("int {v} out of the 32-bit range"))
        })
    }

    /// A length or block count read at `at` that must fit in the bytes left. `what` and
    /// `suffix` name it in the error (formatted only then: this runs for every string).
    fn len(&self, what: &str, suffix: &str, n: i64, at: usize) -> Result<usize, Fail> {
        let left = self.left();
        let problem = match usize::try_from(n) {
            Ok(n) if n <= left => return Ok(n),
            Ok(n) => {
                format!("{what}{suffix} {n} exceeds the {left} bytes left (truncated or corrupt)")
            }
            Err(_) => format!("negative {what}{suffix} {n}"),
        };
        Err(Fail {
            offset: at,
            problem,
            path: Vec::new(),
        })
    }

    fn bytes(&mut self, what: &str) -> Result<&[u8], Fail> {
        let start = self.pos;
        let n = self.long()?;
        let n = self.len(what, " length", n, start)?;
        self.take(n, what)
    }

    /// The item count of the next array or map block (0 ends the sequence).
    fn block(&mut self) -> Result<usize, Fail> {
        let start = self.pos;
        let count = self.long()?;
        let count = if count < 0 {
            // A negative count is followed by the block's size in bytes.
            let at = self.pos;
            let size = self.long()?;
            self.len("block size", "", size, at)?;
            count.checked_neg().unwrap_or(i64::MAX)
        } else {
            count
        };
        self.len("block count", "", count, start)
    }

    fn string(&mut self) -> Result<(), Fail> {
        let start = self.pos;
        let bytes = self.bytes("string")?;
        if let Err(e) = std::str::from_utf8(bytes) {
            self.pos = start;
            return Err(self.fail(format!("string is not UTF-8 ({e})")));
        }
        Ok(())
    }

    /// Walks one value of `schema`; `ns` is the enclosing namespace (borrowed, not cloned: this
    /// runs for every field of every record).
    fn value(&mut self, schema: &'a Schema, ns: Option<&'a str>, depth: usize) -> Result<(), Fail> {
        if depth > MAX_DEPTH {
            return Err(self.fail(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => match self.take(1, "boolean")? {
                [0 | 1] => Ok(()),
                [b] => {
                    let b = *b;
                    self.pos -= 1;
                    Err(self.fail(format!("boolean byte {b:#04x} is neither 0 nor 1")))
                }
                _ => unreachable!("take(1) returns one byte"),
            },
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int().map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.take(4, "float").map(drop),
            Schema::Double => self.take(8, "double").map(drop),
            Schema::Bytes | Schema::BigDecimal | Schema::Uuid => self.bytes("bytes").map(drop),
            Schema::String => self.string(),
            Schema::Fixed(f) => self.take(f.size, "fixed").map(drop),
            Schema::Duration => self.take(12, "duration").map(drop),
            Schema::Decimal(d) => self.value(&d.inner, ns, depth + 1),
            Schema::Enum(e) => {
                let start = self.pos;
                let i = self.int()?;
                if usize::try_from(i).is_ok_and(|i| i < e.symbols.len()) {
                    Ok(())
                } else {
                    self.pos = start;
                    Err(self.fail(format!(
                        "enum {} index {i} out of range ({} symbols)",
                        e.name.name,
                        e.symbols.len()
                    )))
                }
            }
            Schema::Union(u) => {
                let start = self.pos;
                let i = self.long()?;
                let variants = u.variants();
                match usize::try_from(i).ok().and_then(|i| variants.get(i)) {
                    Some(variant) => self.value(variant, ns, depth + 1),
                    None => {
                        self.pos = start;
                        Err(self.fail(format!(
                            "union index {i} out of range ({} branches)",
                            variants.len()
                        )))
                    }
                }
            }
            Schema::Array(a) => {
                let mut index = 0_usize;
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        return Ok(());
                    }
                    for _ in 0..count {
                        self.value(&a.items, ns, depth + 1).map_err(|mut f| {
                            f.path.push(format!("[{index}]"));
                            f
                        })?;
                        index += 1;
                    }
                }
            }
            Schema::Map(m) => {
                let mut index = 0_usize;
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        return Ok(());
                    }
                    for _ in 0..count {
                        // Keys are named by position: they may be content.
                        self.string()
                            .and_then(|()| self.value(&m.types, ns, depth + 1))
                            .map_err(|mut f| {
                                f.path.push(format!("[{index}]"));
                                f
                            })?;
                        index += 1;
                    }
                }
            }
            Schema::Record(r) => {
                // As `Name::fully_qualified_name`: the record's own namespace, else a non-empty
                // enclosing one.
                let inner = r
                    .name
                    .namespace
                    .as_deref()
                    .or_else(|| ns.filter(|ns| !ns.is_empty()));
                for field in &r.fields {
                    self.value(&field.schema, inner, depth + 1)
                        .map_err(|mut f| {
                            f.path.push(field.name.clone());
                            f
                        })?;
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(&ns.map(str::to_owned));
                match self.names.0.get_key_value(&full) {
                    Some((defined, resolved)) => {
                        self.value(resolved, defined.namespace.as_deref(), depth + 1)
                    }
                    None => Err(self.fail(format!(
                        "the writer schema refers to {} but does not define it",
                        full.fullname(None)
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    fn run(schema: &Schema, datum: &[u8]) -> Result<(), Problem> {
        check(schema, &Names::of(schema), datum)
    }

    const REC: &str = r#"{"type":"record","name":"R","namespace":"n","fields":[
        {"name":"id","type":"string"},
        {"name":"to","type":{"type":"array","items":{"type":"record","name":"A","fields":[
            {"name":"address","type":"string"}]}}},
        {"name":"cc","type":{"type":"array","items":"A"}},
        {"name":"opt","type":["null","long"]}]}"#;

    #[test]
    fn accepts_exactly_one_well_formed_datum() {
        let s = schema(REC);
        // id "ab", to [{"x"}], cc [], opt null
        let ok = [4, b'a', b'b', 2, 2, b'x', 0, 0, 0];
        assert_eq!(run(&s, &ok), Ok(()));
        let mut trailing = ok.to_vec();
        trailing.push(0);
        let p = run(&s, &trailing).unwrap_err();
        assert_eq!(
            (p.offset, p.problem.as_str()),
            (9, "1 bytes left over after the datum")
        );
    }

    #[test]
    fn a_union_index_cut_off_is_truncation_not_null() {
        let s = schema(REC);
        let p = run(&s, &[4, b'a', b'b', 0, 0]).unwrap_err();
        assert_eq!(p.field, "opt");
        assert!(p.problem.starts_with("truncated"), "{p:?}");
    }

    #[test]
    fn huge_block_counts_are_refused_before_anything_is_allocated() {
        let s = schema(REC);
        // to: block count 2^40 (zig-zag varint), then nothing.
        let p = run(&s, &[0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0]).unwrap_err();
        assert_eq!(p.field, "to");
        assert!(p.problem.contains("block count"), "{p:?}");
    }

    #[test]
    fn names_the_field_path_through_references() {
        let s = schema(REC);
        // cc[1].address claims 100 bytes.
        let p = run(&s, &[0, 0, 4, 0, 200, 1]).unwrap_err();
        assert_eq!(p.field, "cc[1].address");
        assert_eq!(p.offset, 4);
        assert!(p.problem.contains("exceeds"), "{p:?}");
    }

    #[test]
    fn invalid_utf8_and_bad_indexes_are_named() {
        let s = schema(REC);
        let p = run(&s, &[2, 0xFF, 0, 0, 0]).unwrap_err();
        assert_eq!(p.field, "id");
        assert!(p.problem.contains("UTF-8"), "{p:?}");
        let p = run(&s, &[0, 0, 0, 4]).unwrap_err();
        assert_eq!(p.field, "opt");
        assert!(p.problem.contains("union index 2"), "{p:?}");
    }
}
