//! `retain patient find`: every record that references a patient (designated record set
//! candidates), for an access request. An audited PHI access.

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::functions_nested::expr_fn::array_has;
use datafusion::prelude::{col, lit};
use futures::StreamExt as _;
use retain_lake::schema::columns;
use retain_lake::{AuditAction, AuditEntry, AuditTable, RecordsTable};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::recompute::scan_records;
use crate::rows::Columns;

/// One record referencing the patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatientRecord {
    /// The record key.
    pub record_key: String,
    /// The organisation.
    pub tenant: String,
    /// The mailbox holding the copy.
    pub mailbox: String,
    /// The message id (what the mail system needs to produce the message).
    pub message_id: String,
    /// The category.
    pub category: String,
    /// The creation date.
    pub created_date: Option<NaiveDate>,
    /// `retain_until`.
    pub retain_until: Option<NaiveDate>,
    /// `retention_status`.
    pub retention_status: String,
}

/// The audit target for a patient reference: `mrn:` + 16 bytes of SHA-256 in hex, never the
/// reference itself.
pub fn patient_hash(mrn: &str) -> String {
    let digest = Sha256::digest(format!("retain.patient.v1:{mrn}").as_bytes());
    format!("mrn:{}", hex::encode(&digest[..16]))
}

/// Every record whose `patient_refs` holds `mrn`, ordered by creation date then key; audited
/// as `patient_access` by `by` (the target is [`patient_hash`]).
pub async fn find(
    records: &mut RecordsTable,
    audit: Option<&mut AuditTable>,
    mrn: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Vec<PatientRecord>> {
    if mrn.trim().is_empty() || by.trim().is_empty() {
        return Err(Error::Refused(
            "the patient reference and --by must not be blank".to_owned(),
        ));
    }
    records.refresh().await?;
    let wanted = [
        columns::RECORD_KEY,
        columns::TENANT,
        columns::MAILBOX,
        columns::MESSAGE_ID,
        columns::CATEGORY,
        columns::CREATED_DATE,
        columns::RETAIN_UNTIL,
        columns::RETENTION_STATUS,
    ];
    let filter = array_has(col(columns::PATIENT_REFS), lit(mrn.to_owned()));
    let mut stream = scan_records(records.delta_table(), &wanted, Some(filter)).await?;
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let c = Columns::new(&batch);
        let s = |n| c.strings(n);
        let (key, tenant, mailbox, message, category, status) = (
            s(columns::RECORD_KEY)?,
            s(columns::TENANT)?,
            s(columns::MAILBOX)?,
            s(columns::MESSAGE_ID)?,
            s(columns::CATEGORY)?,
            s(columns::RETENTION_STATUS)?,
        );
        let (created, until) = (
            c.dates(columns::CREATED_DATE)?,
            c.dates(columns::RETAIN_UNTIL)?,
        );
        use datafusion::arrow::array::Array as _;
        let date = |a: &datafusion::arrow::array::Date32Array, i: usize| {
            a.is_valid(i)
                .then(|| NaiveDate::from_epoch_days(a.value(i)).unwrap_or_default())
        };
        for i in 0..batch.num_rows() {
            out.push(PatientRecord {
                record_key: key.value(i).to_owned(),
                tenant: tenant.value(i).to_owned(),
                mailbox: mailbox.value(i).to_owned(),
                message_id: message.value(i).to_owned(),
                category: category.value(i).to_owned(),
                created_date: date(created, i),
                retain_until: date(until, i),
                retention_status: status.value(i).to_owned(),
            });
        }
    }
    out.sort_by(|a, b| (a.created_date, &a.record_key).cmp(&(b.created_date, &b.record_key)));
    if let Some(audit) = audit {
        let entry = AuditEntry::new(AuditAction::PatientAccess, by, now, patient_hash(mrn))
            .with_details(&serde_json::json!({ "rows": out.len(), "purpose": "patient find" }))
            .with_table_version(records.version() as i64);
        audit.append(&[entry]).await?;
    }
    Ok(out)
}
