//! The `records` table's schema, in Arrow and in Delta terms.
//!
//! One row per record: one copy of one message in one mailbox, with its classification, its
//! retention decision and where it was read from. `docs/tables.md` documents every column.
//! There is no excerpt or body column, ever: body text stops at the classifier.

use std::sync::{Arc, LazyLock};

use deltalake::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;

/// The table's name (also written into the Delta metadata).
pub const RECORDS_TABLE: &str = "records";

/// The Arrow name of list elements; the Delta kernel's Arrow conversion uses the same, so the
/// batches we build and the schema the table reports are identical.
pub(crate) const LIST_ELEMENT: &str = "element";

/// The time zone of every timestamp column (Delta `timestamp` is UTC).
pub(crate) const UTC: &str = "UTC";

/// Column names of the `records` table, in table order.
pub mod columns {
    /// Stable hash of tenant, mailbox and message id (32 hex digits).
    pub const RECORD_KEY: &str = "record_key";
    /// The organisation.
    pub const TENANT: &str = "tenant";
    /// The mailbox holding the copy.
    pub const MAILBOX: &str = "mailbox";
    /// RFC 5322 Message-ID without angle brackets.
    pub const MESSAGE_ID: &str = "message_id";
    /// The person responsible for the mailbox (the mailbox when none is named).
    pub const CUSTODIAN: &str = "custodian";
    /// `inbound`, `outbound`, `internal` or `unknown`.
    pub const DIRECTION: &str = "direction";
    /// The From address. PHI.
    pub const FROM_ADDRESS: &str = "from_address";
    /// To addresses. PHI.
    pub const TO_ADDRESSES: &str = "to_addresses";
    /// Cc addresses. PHI.
    pub const CC_ADDRESSES: &str = "cc_addresses";
    /// Bcc addresses. PHI.
    pub const BCC_ADDRESSES: &str = "bcc_addresses";
    /// Subject line. PHI.
    pub const SUBJECT: &str = "subject";
    /// When the message was sent.
    pub const SENT_AT: &str = "sent_at";
    /// When the mailbox received it.
    pub const RECEIVED_AT: &str = "received_at";
    /// Sent date, else received date (UTC): what `created` retention clocks run from.
    pub const CREATED_DATE: &str = "created_date";
    /// Size of the raw message in bytes.
    pub const SIZE_BYTES: &str = "size_bytes";
    /// Mailbox folder path.
    pub const FOLDER: &str = "folder";
    /// Labels or categories set on the copy.
    pub const LABELS: &str = "labels";
    /// Conversation id.
    pub const THREAD_ID: &str = "thread_id";
    /// Attachment metadata: list of struct {name, media_type, size_bytes}.
    pub const ATTACHMENTS: &str = "attachments";
    /// Record category code.
    pub const CATEGORY: &str = "category";
    /// Id of the deciding rule.
    pub const RULE: &str = "rule";
    /// The deciding rule's confidence, 0..=1.
    pub const CONFIDENCE: &str = "confidence";
    /// Whether the category was forced by facts.
    pub const FORCED: &str = "forced";
    /// A medical record number was found.
    pub const PHI_MRN: &str = "phi_mrn";
    /// An ICD-10-CM code was found.
    pub const PHI_ICD10: &str = "phi_icd10";
    /// A date of birth was found.
    pub const PHI_DOB: &str = "phi_dob";
    /// Patient-care terms were found.
    pub const PHI_PATIENT_TERMS: &str = "phi_patient_terms";
    /// Medical record numbers found. PHI.
    pub const PATIENT_REFS: &str = "patient_refs";
    /// Other rules that matched with another category.
    pub const ALSO_MATCHED: &str = "also_matched";
    /// Every applicable obligation with its computed date.
    pub const OBLIGATIONS: &str = "obligations";
    /// The date the record may be disposed of on or after.
    pub const RETAIN_UNTIL: &str = "retain_until";
    /// `scheduled`, `indefinite` or `pending`.
    pub const RETENTION_STATUS: &str = "retention_status";
    /// The obligation that sets the outcome.
    pub const GOVERNING: &str = "governing";
    /// Facts and events still needed for a date.
    pub const WAITING_FOR: &str = "waiting_for";
    /// Two-letter state the record was scheduled under.
    pub const JURISDICTION: &str = "jurisdiction";
    /// Who holds the record.
    pub const RECORD_HOLDER: &str = "record_holder";
    /// Content hash of the policy that scheduled the record.
    pub const POLICY_VERSION: &str = "policy_version";
    /// Content hash of the policy that classified the record.
    pub const CLASSIFIER_POLICY_VERSION: &str = "classifier_policy_version";
    /// Version of the classifier program.
    pub const CLASSIFIER_VERSION: &str = "classifier_version";
    /// Kafka topic the message was read from.
    pub const SOURCE_TOPIC: &str = "source_topic";
    /// Its partition.
    pub const SOURCE_PARTITION: &str = "source_partition";
    /// Its offset.
    pub const SOURCE_OFFSET: &str = "source_offset";
    /// When the row was committed to the table.
    pub const LANDED_AT: &str = "landed_at";
}

/// Fields of one `attachments` element.
pub(crate) fn attachment_fields() -> Fields {
    Fields::from(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("media_type", DataType::Utf8, false),
        Field::new("size_bytes", DataType::Int64, false),
    ])
}

/// Fields of one `obligations` element.
pub(crate) fn obligation_fields() -> Fields {
    Fields::from(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("citation", DataType::Utf8, false),
        Field::new("source_quality", DataType::Utf8, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("until", DataType::Date32, true),
        Field::new("status", DataType::Utf8, false),
    ])
}

/// The element field of a non-null list of non-null strings.
pub(crate) fn string_element() -> Arc<Field> {
    Arc::new(Field::new(LIST_ELEMENT, DataType::Utf8, false))
}

/// The element field of a non-null list of non-null structs.
pub(crate) fn struct_element(fields: Fields) -> Arc<Field> {
    Arc::new(Field::new(LIST_ELEMENT, DataType::Struct(fields), false))
}

fn string_list(name: &str) -> Field {
    Field::new(name, DataType::List(string_element()), false)
}

fn timestamp(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        nullable,
    )
}

static RECORDS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    use columns::*;
    let s = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let b = |name: &str| Field::new(name, DataType::Boolean, false);
    Arc::new(Schema::new(vec![
        s(RECORD_KEY, false),
        s(TENANT, false),
        s(MAILBOX, false),
        s(MESSAGE_ID, false),
        s(CUSTODIAN, false),
        s(DIRECTION, false),
        s(FROM_ADDRESS, true),
        string_list(TO_ADDRESSES),
        string_list(CC_ADDRESSES),
        string_list(BCC_ADDRESSES),
        s(SUBJECT, true),
        timestamp(SENT_AT, true),
        timestamp(RECEIVED_AT, true),
        Field::new(CREATED_DATE, DataType::Date32, true),
        Field::new(SIZE_BYTES, DataType::Int64, false),
        s(FOLDER, true),
        string_list(LABELS),
        s(THREAD_ID, true),
        Field::new(
            ATTACHMENTS,
            DataType::List(struct_element(attachment_fields())),
            false,
        ),
        s(CATEGORY, false),
        s(RULE, true),
        Field::new(CONFIDENCE, DataType::Float32, false),
        b(FORCED),
        b(PHI_MRN),
        b(PHI_ICD10),
        b(PHI_DOB),
        b(PHI_PATIENT_TERMS),
        string_list(PATIENT_REFS),
        string_list(ALSO_MATCHED),
        Field::new(
            OBLIGATIONS,
            DataType::List(struct_element(obligation_fields())),
            false,
        ),
        Field::new(RETAIN_UNTIL, DataType::Date32, true),
        s(RETENTION_STATUS, false),
        s(GOVERNING, true),
        string_list(WAITING_FOR),
        s(JURISDICTION, true),
        s(RECORD_HOLDER, true),
        s(POLICY_VERSION, false),
        s(CLASSIFIER_POLICY_VERSION, false),
        s(CLASSIFIER_VERSION, false),
        s(SOURCE_TOPIC, false),
        Field::new(SOURCE_PARTITION, DataType::Int32, false),
        Field::new(SOURCE_OFFSET, DataType::Int64, false),
        timestamp(LANDED_AT, false),
    ]))
});

/// The Arrow schema of the `records` table (what [`crate::RecordBatchBuilder`] produces).
pub fn records_schema() -> SchemaRef {
    RECORDS_SCHEMA.clone()
}

/// The Delta schema of the `records` table (what the table is created with).
pub fn records_delta_schema() -> StructType {
    // The conversion is total for the types used above; a failure is a bug caught by the tests.
    records_schema()
        .as_ref()
        .try_into_kernel()
        .expect("the records schema converts to a Delta schema")
}

/// Describes how `actual` differs from `expected` (column names and types), or `None` when they
/// match. Field metadata is ignored.
pub(crate) fn schema_diff(expected: &Schema, actual: &Schema) -> Option<String> {
    let mut problems = Vec::new();
    for f in expected.fields() {
        match actual.field_with_name(f.name()) {
            Err(_) => problems.push(format!("missing column `{}`", f.name())),
            Ok(a)
                if !same_type(a.data_type(), f.data_type())
                    || a.is_nullable() != f.is_nullable() =>
            {
                problems.push(format!(
                    "column `{}` is {}{}, expected {}{}",
                    f.name(),
                    a.data_type(),
                    if a.is_nullable() { " (nullable)" } else { "" },
                    f.data_type(),
                    if f.is_nullable() { " (nullable)" } else { "" },
                ));
            }
            Ok(_) => {}
        }
    }
    for a in actual.fields() {
        if expected.field_with_name(a.name()).is_err() {
            problems.push(format!("unexpected column `{}`", a.name()));
        }
    }
    if problems.is_empty() {
        let order_differs = expected
            .fields()
            .iter()
            .zip(actual.fields().iter())
            .any(|(e, a)| e.name() != a.name());
        if order_differs {
            problems.push("columns are in a different order".to_owned());
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Type equality ignoring field metadata at every nesting level.
fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::List(x), DataType::List(y)) => {
            x.name() == y.name()
                && x.is_nullable() == y.is_nullable()
                && same_type(x.data_type(), y.data_type())
        }
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter().zip(y.iter()).all(|(x, y)| {
                    x.name() == y.name()
                        && x.is_nullable() == y.is_nullable()
                        && same_type(x.data_type(), y.data_type())
                })
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::kernel::engine::arrow_conversion::TryIntoArrow as _;

    #[test]
    fn arrow_and_delta_schemas_round_trip() {
        let delta = records_delta_schema();
        let back: Schema = (&delta).try_into_arrow().unwrap();
        assert_eq!(schema_diff(&records_schema(), &back), None);
    }

    #[test]
    fn column_names_are_unique_and_lower_snake_case() {
        let schema = records_schema();
        let mut names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert!(names.iter().all(|n| {
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn diff_names_the_columns() {
        let expected = records_schema();
        let mut fields: Vec<Field> = expected
            .fields()
            .iter()
            .filter(|f| f.name() != columns::SUBJECT)
            .map(|f| f.as_ref().clone())
            .collect();
        fields[0] = Field::new(columns::RECORD_KEY, DataType::Int64, false);
        fields.push(Field::new("excerpt", DataType::Utf8, true));
        let diff = schema_diff(&expected, &Schema::new(fields)).unwrap();
        assert!(diff.contains("missing column `subject`"), "{diff}");
        assert!(diff.contains("column `record_key` is Int64"), "{diff}");
        assert!(diff.contains("unexpected column `excerpt`"), "{diff}");
    }
}
