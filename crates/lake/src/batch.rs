//! Rows of the `records` table and the builder that turns them into Arrow batches.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float32Builder, Int32Builder, Int64Builder,
    ListBuilder, StringBuilder, StructBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::Date32Type;
use deltalake::arrow::record_batch::RecordBatch;
use retain_codec::ClassifiedRecord;
use retain_model::{Address, RetentionDecision, Until};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::schema::{
    RECORDS_TABLE, UTC, attachment_fields, columns, obligation_fields, records_schema,
    string_element, struct_element,
};

/// The stable identity hash of a record: the first 16 bytes of SHA-256 over tenant, mailbox and
/// message id, each preceded by its length in bytes (8-byte little-endian), as 32 lower-case hex
/// digits. The length prefixes make the encoding unambiguous whatever the fields contain.
pub fn record_key(tenant: &str, mailbox: &str, message_id: &str) -> String {
    let mut h = Sha256::new();
    for part in [tenant, mailbox, message_id] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// One row of the `records` table: a classified record, its retention decision and the
/// jurisdiction and record holder it was scheduled under. Validated on construction, so adding
/// it to a [`RecordBatchBuilder`] cannot fail.
#[derive(Debug, Clone)]
pub struct RecordRow<'a> {
    record: &'a ClassifiedRecord,
    decision: &'a RetentionDecision,
    jurisdiction: Option<String>,
    record_holder: Option<String>,
    record_key: String,
    size_bytes: i64,
    attachment_sizes: Vec<i64>,
}

impl<'a> RecordRow<'a> {
    /// A row for `record` scheduled as `decision`; fails (bad input) when a size does not fit
    /// the table's signed 64-bit columns or the lineage offset is negative.
    pub fn new(
        record: &'a ClassifiedRecord,
        decision: &'a RetentionDecision,
        jurisdiction: Option<String>,
        record_holder: Option<String>,
    ) -> Result<Self> {
        let bad = |column: &'static str, reason: &str| Error::Record {
            topic: record.lineage.topic.clone(),
            partition: record.lineage.partition,
            offset: record.lineage.offset,
            column,
            reason: reason.to_owned(),
        };
        if record.lineage.partition < 0 {
            return Err(bad(columns::SOURCE_PARTITION, "negative partition"));
        }
        if record.lineage.offset < 0 {
            return Err(bad(columns::SOURCE_OFFSET, "negative offset"));
        }
        let m = &record.message;
        let size_bytes = i64::try_from(m.size_bytes)
            .map_err(|_| bad(columns::SIZE_BYTES, "does not fit a signed 64-bit integer"))?;
        let attachment_sizes = m
            .attachments
            .iter()
            .map(|a| i64::try_from(a.size_bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                bad(
                    columns::ATTACHMENTS,
                    "an attachment size does not fit a signed 64-bit integer",
                )
            })?;
        Ok(RecordRow {
            record,
            decision,
            jurisdiction,
            record_holder,
            record_key: record_key(&m.tenant, &m.mailbox, &m.message_id),
            size_bytes,
            attachment_sizes,
        })
    }

    /// The row's `record_key`.
    pub fn record_key(&self) -> &str {
        &self.record_key
    }

    /// The Kafka partition the record was read from.
    pub fn partition(&self) -> i32 {
        self.record.lineage.partition
    }

    /// The Kafka offset the record was read from.
    pub fn offset(&self) -> i64 {
        self.record.lineage.offset
    }
}

/// Accumulates [`RecordRow`]s column by column in Arrow builders and finishes them into one
/// `records` [`RecordBatch`]. No per-record serialisation on the way.
#[derive(Debug)]
pub struct RecordBatchBuilder {
    len: usize,
    record_key: StringBuilder,
    tenant: StringBuilder,
    mailbox: StringBuilder,
    message_id: StringBuilder,
    custodian: StringBuilder,
    direction: StringBuilder,
    from_address: StringBuilder,
    to_addresses: ListBuilder<StringBuilder>,
    cc_addresses: ListBuilder<StringBuilder>,
    bcc_addresses: ListBuilder<StringBuilder>,
    subject: StringBuilder,
    sent_at: TimestampMicrosecondBuilder,
    received_at: TimestampMicrosecondBuilder,
    created_date: Date32Builder,
    size_bytes: Int64Builder,
    folder: StringBuilder,
    labels: ListBuilder<StringBuilder>,
    thread_id: StringBuilder,
    attachments: ListBuilder<StructBuilder>,
    category: StringBuilder,
    rule: StringBuilder,
    confidence: Float32Builder,
    forced: BooleanBuilder,
    phi_mrn: BooleanBuilder,
    phi_icd10: BooleanBuilder,
    phi_dob: BooleanBuilder,
    phi_patient_terms: BooleanBuilder,
    patient_refs: ListBuilder<StringBuilder>,
    also_matched: ListBuilder<StringBuilder>,
    obligations: ListBuilder<StructBuilder>,
    retain_until: Date32Builder,
    retention_status: StringBuilder,
    governing: StringBuilder,
    waiting_for: ListBuilder<StringBuilder>,
    jurisdiction: StringBuilder,
    record_holder: StringBuilder,
    policy_version: StringBuilder,
    classifier_policy_version: StringBuilder,
    classifier_version: StringBuilder,
    source_topic: StringBuilder,
    source_partition: Int32Builder,
    source_offset: Int64Builder,
}

impl Default for RecordBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn string_list() -> ListBuilder<StringBuilder> {
    ListBuilder::new(StringBuilder::new()).with_field(string_element())
}

fn timestamps() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone(UTC)
}

fn date32(d: NaiveDate) -> i32 {
    Date32Type::from_naive_date(d)
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn append_addresses(list: &mut ListBuilder<StringBuilder>, addresses: &[Address]) {
    for a in addresses {
        list.values().append_value(&a.address);
    }
    list.append(true);
}

fn append_strings<S: AsRef<str>>(list: &mut ListBuilder<StringBuilder>, values: &[S]) {
    for v in values {
        list.values().append_value(v.as_ref());
    }
    list.append(true);
}

impl RecordBatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        let s = StringBuilder::new;
        RecordBatchBuilder {
            len: 0,
            record_key: s(),
            tenant: s(),
            mailbox: s(),
            message_id: s(),
            custodian: s(),
            direction: s(),
            from_address: s(),
            to_addresses: string_list(),
            cc_addresses: string_list(),
            bcc_addresses: string_list(),
            subject: s(),
            sent_at: timestamps(),
            received_at: timestamps(),
            created_date: Date32Builder::new(),
            size_bytes: Int64Builder::new(),
            folder: s(),
            labels: string_list(),
            thread_id: s(),
            attachments: ListBuilder::new(StructBuilder::from_fields(attachment_fields(), 0))
                .with_field(struct_element(attachment_fields())),
            category: s(),
            rule: s(),
            confidence: Float32Builder::new(),
            forced: BooleanBuilder::new(),
            phi_mrn: BooleanBuilder::new(),
            phi_icd10: BooleanBuilder::new(),
            phi_dob: BooleanBuilder::new(),
            phi_patient_terms: BooleanBuilder::new(),
            patient_refs: string_list(),
            also_matched: string_list(),
            obligations: ListBuilder::new(StructBuilder::from_fields(obligation_fields(), 0))
                .with_field(struct_element(obligation_fields())),
            retain_until: Date32Builder::new(),
            retention_status: s(),
            governing: s(),
            waiting_for: string_list(),
            jurisdiction: s(),
            record_holder: s(),
            policy_version: s(),
            classifier_policy_version: s(),
            classifier_version: s(),
            source_topic: s(),
            source_partition: Int32Builder::new(),
            source_offset: Int64Builder::new(),
        }
    }

    /// How many rows have been added since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no rows have been added since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Builds the row for a record and adds it (see [`RecordRow::new`] for the errors).
    pub fn push_record(
        &mut self,
        record: &ClassifiedRecord,
        decision: &RetentionDecision,
        jurisdiction: Option<String>,
        record_holder: Option<String>,
    ) -> Result<()> {
        let row = RecordRow::new(record, decision, jurisdiction, record_holder)?;
        self.push(&row);
        Ok(())
    }

    /// Adds one row.
    pub fn push(&mut self, row: &RecordRow<'_>) {
        let r = row.record;
        let m = &r.message;
        let c = &r.classification;
        let d = row.decision;

        self.record_key.append_value(&row.record_key);
        self.tenant.append_value(&m.tenant);
        self.mailbox.append_value(&m.mailbox);
        self.message_id.append_value(&m.message_id);
        self.custodian.append_value(m.custodian_or_mailbox());
        self.direction.append_value(m.direction.as_str());
        self.from_address
            .append_option(m.from.as_ref().map(|a| a.address.as_str()));
        append_addresses(&mut self.to_addresses, &m.to);
        append_addresses(&mut self.cc_addresses, &m.cc);
        append_addresses(&mut self.bcc_addresses, &m.bcc);
        self.subject.append_option(m.subject.as_deref());
        self.sent_at.append_option(m.sent_at.map(micros));
        self.received_at.append_option(m.received_at.map(micros));
        self.created_date
            .append_option(m.created_date().map(date32));
        self.size_bytes.append_value(row.size_bytes);
        self.folder.append_option(m.folder.as_deref());
        append_strings(&mut self.labels, &m.labels);
        self.thread_id.append_option(m.thread_id.as_deref());

        {
            let s = self.attachments.values();
            for (a, size) in m.attachments.iter().zip(&row.attachment_sizes) {
                field::<StringBuilder>(s, 0).append_value(&a.name);
                field::<StringBuilder>(s, 1).append_value(&a.media_type);
                field::<Int64Builder>(s, 2).append_value(*size);
                s.append(true);
            }
            self.attachments.append(true);
        }

        self.category.append_value(c.category.as_str());
        self.rule.append_option(c.rule.as_deref());
        self.confidence.append_value(c.confidence);
        self.forced.append_value(c.forced);
        self.phi_mrn.append_value(c.phi.mrn);
        self.phi_icd10.append_value(c.phi.icd10);
        self.phi_dob.append_value(c.phi.dob);
        self.phi_patient_terms.append_value(c.phi.patient_terms);
        append_strings(&mut self.patient_refs, &c.patient_refs);
        append_strings(&mut self.also_matched, &c.also_matched);

        {
            let s = self.obligations.values();
            for o in &d.obligations {
                field::<StringBuilder>(s, 0).append_value(&o.id);
                field::<StringBuilder>(s, 1).append_value(&o.citation);
                field::<StringBuilder>(s, 2).append_value(&o.source_quality);
                field::<StringBuilder>(s, 3).append_value(&o.trigger);
                field::<Date32Builder>(s, 4).append_option(o.until.date().map(date32));
                field::<StringBuilder>(s, 5).append_value(until_status(&o.until));
                s.append(true);
            }
            self.obligations.append(true);
        }

        self.retain_until.append_option(d.retain_until.map(date32));
        self.retention_status.append_value(d.status.as_str());
        self.governing.append_option(d.governing.as_deref());
        append_strings(&mut self.waiting_for, &d.waiting_for);
        self.jurisdiction.append_option(row.jurisdiction.as_deref());
        self.record_holder
            .append_option(row.record_holder.as_deref());
        self.policy_version.append_value(&d.policy_version);
        self.classifier_policy_version
            .append_value(&c.policy_version);
        self.classifier_version.append_value(&r.classifier_version);
        self.source_topic.append_value(&r.lineage.topic);
        self.source_partition.append_value(r.lineage.partition);
        self.source_offset.append_value(r.lineage.offset);
        self.len += 1;
    }

    /// Finishes the rows added so far into a `records` batch, stamping every row's `landed_at`,
    /// and leaves the builder empty for the next batch.
    pub fn finish(&mut self, landed_at: DateTime<Utc>) -> Result<RecordBatch> {
        let len = self.len;
        self.len = 0;
        let landed_at: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![micros(landed_at); len]).with_timezone(UTC),
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.record_key.finish()),
            Arc::new(self.tenant.finish()),
            Arc::new(self.mailbox.finish()),
            Arc::new(self.message_id.finish()),
            Arc::new(self.custodian.finish()),
            Arc::new(self.direction.finish()),
            Arc::new(self.from_address.finish()),
            Arc::new(self.to_addresses.finish()),
            Arc::new(self.cc_addresses.finish()),
            Arc::new(self.bcc_addresses.finish()),
            Arc::new(self.subject.finish()),
            Arc::new(self.sent_at.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.created_date.finish()),
            Arc::new(self.size_bytes.finish()),
            Arc::new(self.folder.finish()),
            Arc::new(self.labels.finish()),
            Arc::new(self.thread_id.finish()),
            Arc::new(self.attachments.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.rule.finish()),
            Arc::new(self.confidence.finish()),
            Arc::new(self.forced.finish()),
            Arc::new(self.phi_mrn.finish()),
            Arc::new(self.phi_icd10.finish()),
            Arc::new(self.phi_dob.finish()),
            Arc::new(self.phi_patient_terms.finish()),
            Arc::new(self.patient_refs.finish()),
            Arc::new(self.also_matched.finish()),
            Arc::new(self.obligations.finish()),
            Arc::new(self.retain_until.finish()),
            Arc::new(self.retention_status.finish()),
            Arc::new(self.governing.finish()),
            Arc::new(self.waiting_for.finish()),
            Arc::new(self.jurisdiction.finish()),
            Arc::new(self.record_holder.finish()),
            Arc::new(self.policy_version.finish()),
            Arc::new(self.classifier_policy_version.finish()),
            Arc::new(self.classifier_version.finish()),
            Arc::new(self.source_topic.finish()),
            Arc::new(self.source_partition.finish()),
            Arc::new(self.source_offset.finish()),
            landed_at,
        ];
        RecordBatch::try_new(records_schema(), columns).map_err(|source| Error::Arrow {
            table: RECORDS_TABLE,
            source,
        })
    }
}

/// The stable status code of one obligation's outcome (the same codes as `retention_status`).
fn until_status(until: &Until) -> &'static str {
    match until {
        Until::Date(_) => "scheduled",
        Until::Indefinite => "indefinite",
        Until::Pending(_) => "pending",
    }
}

/// The `i`-th child builder of a struct builder, whose type the schema fixes.
fn field<T: deltalake::arrow::array::ArrayBuilder>(s: &mut StructBuilder, i: usize) -> &mut T {
    s.field_builder::<T>(i)
        .expect("struct child builder types follow the records schema")
}

/// Hand-made records for the crate's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use retain_codec::Lineage;
    use retain_model::{
        Attachment, Category, Classification, MailMessage, ObligationOutcome, PhiIndicators,
        RetentionStatus,
    };

    pub(crate) fn record(offset: i64) -> ClassifiedRecord {
        let mut m = MailMessage::new(format!("m{offset}@example.org"), "jdoe");
        m.to = vec![Address::new("a@example.org"), Address::new("b@example.org")];
        m.subject = Some("Lab results".into());
        m.sent_at = Some("2024-02-29T12:00:00Z".parse().unwrap());
        m.size_bytes = 1234;
        m.attachments = vec![Attachment {
            name: "scan.pdf".into(),
            media_type: "application/pdf".into(),
            size_bytes: 99,
        }];
        m.excerpt = Some("never stored".into());
        ClassifiedRecord::new(
            m,
            Classification {
                category: Category::new("clinical").unwrap(),
                rule: Some(Arc::from("clinical.mrn")),
                confidence: 0.9,
                forced: false,
                phi: PhiIndicators {
                    mrn: true,
                    ..PhiIndicators::default()
                },
                patient_refs: vec!["MRN-1".into()],
                also_matched: vec![],
                policy_version: Arc::from("sha256:p"),
            },
            "classifier-1",
            Lineage {
                topic: "mail.classified".into(),
                partition: 1,
                offset,
            },
        )
    }

    pub(crate) fn decision() -> RetentionDecision {
        RetentionDecision {
            retain_until: NaiveDate::from_ymd_opt(2030, 3, 1),
            status: RetentionStatus::Scheduled,
            governing: Some(Arc::from("hipaa")),
            waiting_for: vec![],
            obligations: vec![
                ObligationOutcome {
                    id: Arc::from("hipaa"),
                    citation: Arc::from("45 CFR 164.316"),
                    source_quality: Arc::from("primary text"),
                    trigger: Arc::from("created + 6 years"),
                    until: Until::Date(NaiveDate::from_ymd_opt(2030, 3, 1).unwrap()),
                },
                ObligationOutcome {
                    id: Arc::from("state"),
                    citation: Arc::from("x"),
                    source_quality: Arc::from("secondary"),
                    trigger: Arc::from("discharge + 10 years"),
                    until: Until::Pending(vec!["discharge_date".into()]),
                },
            ],
            policy_version: Arc::from("sha256:p"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::Int64Type;

    use super::fixtures::{decision, record};

    #[test]
    fn record_key_is_stable_and_unambiguous() {
        let k = record_key("default", "jdoe", "a@b");
        assert_eq!(k.len(), 32);
        assert_eq!(k, record_key("default", "jdoe", "a@b"));
        // Moving a character across a field boundary changes the key.
        assert_ne!(record_key("ab", "c", "d"), record_key("a", "bc", "d"));
    }

    #[test]
    fn rows_become_columns() {
        let (r0, r1, d) = (record(10), record(11), decision());
        let mut b = RecordBatchBuilder::new();
        b.push_record(&r0, &d, Some("CO".into()), None).unwrap();
        b.push(&RecordRow::new(&r1, &d, None, Some("hospital".into())).unwrap());
        assert_eq!(b.len(), 2);
        let landed: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
        let batch = b.finish(landed).unwrap();
        assert!(b.is_empty());
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), records_schema());

        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let keys = col(columns::RECORD_KEY);
        assert_eq!(
            keys.as_string::<i32>().value(0),
            record_key("default", "jdoe", "m10@example.org")
        );
        let to = col(columns::TO_ADDRESSES);
        assert_eq!(to.as_list::<i32>().value(0).len(), 2);
        let created = col(columns::CREATED_DATE);
        assert_eq!(
            created
                .as_primitive::<deltalake::arrow::datatypes::Date32Type>()
                .value(0),
            date32(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())
        );
        let offsets = col(columns::SOURCE_OFFSET);
        assert_eq!(offsets.as_primitive::<Int64Type>().values(), &[10, 11]);
        let obligations = col(columns::OBLIGATIONS);
        let first = obligations.as_list::<i32>().value(0);
        let first = first.as_struct();
        assert_eq!(first.len(), 2);
        assert!(first.column(4).is_valid(0));
        assert!(first.column(4).is_null(1));
        assert_eq!(first.column(5).as_string::<i32>().value(1), "pending");
        let jurisdiction = col(columns::JURISDICTION);
        assert_eq!(jurisdiction.as_string::<i32>().value(0), "CO");
        assert!(jurisdiction.is_null(1));
    }

    #[test]
    fn oversized_sizes_are_bad_input_naming_the_column() {
        let mut r = record(5);
        r.message.size_bytes = u64::MAX;
        let err = RecordRow::new(&r, &decision(), None, None).unwrap_err();
        assert!(err.is_bad_input());
        assert!(matches!(
            err,
            Error::Record {
                column: "size_bytes",
                offset: 5,
                ..
            }
        ));
    }

    #[test]
    fn an_empty_builder_finishes_an_empty_batch() {
        let batch = RecordBatchBuilder::new().finish(Utc::now()).unwrap();
        assert_eq!(batch.num_rows(), 0);
        assert_eq!(batch.schema(), records_schema());
    }
}
