//! Small helpers for the hand-written conversions between the model and Avro values.

use std::collections::HashMap;

use apache_avro::types::Value;
use chrono::{DateTime, NaiveDate, Utc};

use crate::error::{Error, Result};

// ---- model -> Avro -------------------------------------------------------------------------

/// A `string`.
pub(crate) fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// A `["null", "string"]` union.
pub(crate) fn opt_string(s: Option<&str>) -> Value {
    nullable(s.map(string))
}

/// A `["null", T]` union.
pub(crate) fn nullable(v: Option<Value>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

/// An `array` of `string`.
pub(crate) fn strings<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(items.iter().map(|s| string(s.as_ref())).collect())
}

/// A `timestamp-micros` long (sub-microsecond precision is truncated).
pub(crate) fn timestamp(t: DateTime<Utc>) -> Value {
    Value::TimestampMicros(t.timestamp_micros())
}

/// A `date` int (days since 1970-01-01).
pub(crate) fn date(d: NaiveDate) -> Value {
    Value::Date(d.to_epoch_days())
}

/// An enum symbol (apache-avro finds its index in the schema).
pub(crate) fn symbol(code: &str) -> Value {
    Value::String(code.to_owned())
}

/// A `u64` as an Avro `long`, refused above `i64::MAX`.
pub(crate) fn long_u64(schema: &'static str, field: &str, v: u64) -> Result<Value> {
    to_long(schema, field, v).map(Value::Long)
}

/// A `u64` as the `i64` of an Avro `long`, refused above `i64::MAX`.
pub(crate) fn to_long(schema: &'static str, field: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::OutOfRange {
        schema,
        field: field.to_owned(),
        value: v,
        avro_type: "long",
    })
}

/// A record from its fields in schema order.
pub(crate) fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

// ---- Avro -> model -------------------------------------------------------------------------

/// The fields of one decoded record, taken out by name with errors naming the field path.
pub(crate) struct Fields {
    schema: &'static str,
    path: String,
    map: HashMap<String, Value>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Long(_) => "long",
        Value::Float(_) => "float",
        Value::Double(_) => "double",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "string",
        Value::Fixed(..) => "fixed",
        Value::Enum(..) => "enum",
        Value::Union(..) => "union",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Record(_) => "record",
        Value::Date(_) => "date",
        Value::TimestampMicros(_) => "timestamp-micros",
        _ => "another logical type",
    }
}

impl Fields {
    /// The fields of a top-level record value.
    pub(crate) fn top(schema: &'static str, value: Value) -> Result<Self> {
        Self::new(schema, String::new(), value)
    }

    fn new(schema: &'static str, path: String, value: Value) -> Result<Self> {
        match value {
            Value::Record(fields) => Ok(Fields {
                schema,
                path,
                map: fields.into_iter().collect(),
            }),
            other => Err(Error::Field {
                schema,
                field: if path.is_empty() {
                    "(top level)".to_owned()
                } else {
                    path
                },
                problem: format!("expected a record, found {}", kind(&other)),
            }),
        }
    }

    fn path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// An error about field `name`.
    pub(crate) fn error(&self, name: &str, problem: impl Into<String>) -> Error {
        Error::Field {
            schema: self.schema,
            field: self.path(name),
            problem: problem.into(),
        }
    }

    fn wrong(&self, name: &str, expected: &str, found: &Value) -> Error {
        self.error(name, format!("expected {expected}, found {}", kind(found)))
    }

    fn take(&mut self, name: &str) -> Result<Value> {
        self.map
            .remove(name)
            .ok_or_else(|| self.error(name, "missing"))
    }

    /// Takes a nullable field: `None` for null, else the inner value.
    fn take_opt(&mut self, name: &str) -> Result<Option<Value>> {
        Ok(match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => None,
                v => Some(v),
            },
            Value::Null => None,
            v => Some(v),
        })
    }

    pub(crate) fn string(&mut self, name: &str) -> Result<String> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.wrong(name, "a string", &other)),
        }
    }

    pub(crate) fn opt_string(&mut self, name: &str) -> Result<Option<String>> {
        match self.take_opt(name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(name, "a string or null", &other)),
        }
    }

    pub(crate) fn boolean(&mut self, name: &str) -> Result<bool> {
        match self.take(name)? {
            Value::Boolean(b) => Ok(b),
            other => Err(self.wrong(name, "a boolean", &other)),
        }
    }

    pub(crate) fn int(&mut self, name: &str) -> Result<i32> {
        match self.take(name)? {
            Value::Int(i) => Ok(i),
            other => Err(self.wrong(name, "an int", &other)),
        }
    }

    pub(crate) fn long(&mut self, name: &str) -> Result<i64> {
        match self.take(name)? {
            Value::Long(i) => Ok(i),
            Value::Int(i) => Ok(i64::from(i)),
            other => Err(self.wrong(name, "a long", &other)),
        }
    }

    /// A long that must not be negative (sizes).
    pub(crate) fn u64(&mut self, name: &str) -> Result<u64> {
        let v = self.long(name)?;
        u64::try_from(v).map_err(|_| self.error(name, format!("negative size {v}")))
    }

    pub(crate) fn float(&mut self, name: &str) -> Result<f32> {
        match self.take(name)? {
            Value::Float(f) => Ok(f),
            other => Err(self.wrong(name, "a float", &other)),
        }
    }

    fn to_timestamp(&self, name: &str, v: Value) -> Result<DateTime<Utc>> {
        let micros = match v {
            Value::TimestampMicros(m) | Value::Long(m) => m,
            other => return Err(self.wrong(name, "a timestamp-micros", &other)),
        };
        DateTime::from_timestamp_micros(micros).ok_or_else(|| {
            self.error(
                name,
                format!("timestamp {micros} µs is outside the representable range"),
            )
        })
    }

    pub(crate) fn timestamp(&mut self, name: &str) -> Result<DateTime<Utc>> {
        let v = self.take(name)?;
        self.to_timestamp(name, v)
    }

    pub(crate) fn opt_timestamp(&mut self, name: &str) -> Result<Option<DateTime<Utc>>> {
        match self.take_opt(name)? {
            None => Ok(None),
            Some(v) => self.to_timestamp(name, v).map(Some),
        }
    }

    pub(crate) fn date(&mut self, name: &str) -> Result<NaiveDate> {
        let days = match self.take(name)? {
            Value::Date(d) | Value::Int(d) => d,
            other => return Err(self.wrong(name, "a date", &other)),
        };
        NaiveDate::from_epoch_days(days).ok_or_else(|| {
            self.error(
                name,
                format!("date {days} days from 1970-01-01 is outside the representable range"),
            )
        })
    }

    fn to_symbol(&self, name: &str, v: Value) -> Result<String> {
        match v {
            Value::Enum(_, s) | Value::String(s) => Ok(s),
            other => Err(self.wrong(name, "an enum symbol", &other)),
        }
    }

    pub(crate) fn symbol(&mut self, name: &str) -> Result<String> {
        let v = self.take(name)?;
        self.to_symbol(name, v)
    }

    pub(crate) fn opt_symbol(&mut self, name: &str) -> Result<Option<String>> {
        match self.take_opt(name)? {
            None => Ok(None),
            Some(v) => self.to_symbol(name, v).map(Some),
        }
    }

    pub(crate) fn strings(&mut self, name: &str) -> Result<Vec<String>> {
        let items = self.array(name)?;
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(self.wrong(&format!("{name}[{i}]"), "a string", &other)),
            })
            .collect()
    }

    fn array(&mut self, name: &str) -> Result<Vec<Value>> {
        match self.take(name)? {
            Value::Array(items) => Ok(items),
            other => Err(self.wrong(name, "an array", &other)),
        }
    }

    /// A nested record field.
    pub(crate) fn record(&mut self, name: &str) -> Result<Fields> {
        let v = self.take(name)?;
        Fields::new(self.schema, self.path(name), v)
    }

    /// A nullable nested record field.
    pub(crate) fn opt_record(&mut self, name: &str) -> Result<Option<Fields>> {
        match self.take_opt(name)? {
            None => Ok(None),
            Some(v) => Fields::new(self.schema, self.path(name), v).map(Some),
        }
    }

    /// An array of records, each converted by `f`.
    pub(crate) fn records<T>(
        &mut self,
        name: &str,
        mut f: impl FnMut(Fields) -> Result<T>,
    ) -> Result<Vec<T>> {
        let items = self.array(name)?;
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                f(Fields::new(
                    self.schema,
                    self.path(&format!("{name}[{i}]")),
                    v,
                )?)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Vec<(&str, Value)>) -> Fields {
        Fields::top("T", record(v)).unwrap()
    }

    #[test]
    fn errors_name_the_field_path() {
        let mut f = fields(vec![(
            "to",
            Value::Array(vec![record(vec![("address", Value::Int(1))])]),
        )]);
        let err = f
            .records("to", |mut a| a.string("address"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "T: field to[0].address: expected a string, found int");
        assert_eq!(
            f.string("gone").unwrap_err().to_string(),
            "T: field gone: missing"
        );
    }

    #[test]
    fn out_of_range_values_are_field_errors() {
        let mut f = fields(vec![
            ("size", Value::Long(-1)),
            ("at", Value::TimestampMicros(i64::MAX)),
            ("on", Value::Date(i32::MAX)),
        ]);
        assert!(f.u64("size").unwrap_err().to_string().contains("negative"));
        assert!(f.timestamp("at").unwrap_err().is_bad_input());
        assert!(f.date("on").unwrap_err().to_string().contains("range"));
        assert!(matches!(
            long_u64("T", "size_bytes", u64::MAX),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn nullable_round_trip() {
        let mut f = fields(vec![("a", opt_string(None)), ("b", opt_string(Some("x")))]);
        assert_eq!(f.opt_string("a").unwrap(), None);
        assert_eq!(f.opt_string("b").unwrap().as_deref(), Some("x"));
    }
}
