//! `retain patient find MRN`: every record that references a patient, with category, dates and
//! message ids (what an access request must produce). The one command that prints patient data;
//! every use is audited as `patient_access` (the target is a hash of the reference).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::output::{BadInput, table};

/// `retain patient ...`
#[derive(Subcommand, Debug)]
pub enum PatientCommand {
    /// Every record referencing the patient (designated record set candidates); audited.
    Find(FindArgs),
}

/// Arguments of `retain patient find`.
#[derive(Args, Debug)]
pub struct FindArgs {
    /// The patient's medical record number.
    mrn: String,
    /// Who looks (written to the audit trail).
    #[arg(long, env = "RETAIN_BY")]
    by: String,
    #[command(flatten)]
    lake: crate::hold_cmd::LakeArgs,
}

/// Runs a `retain patient` command.
pub fn run(cmd: PatientCommand) -> Result<ExitCode> {
    let PatientCommand::Find(a) = cmd;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let options = crate::hold_cmd::storage(&a.lake)?;
        let mut records = crate::hold_cmd::records(&a.lake, &options).await?;
        let mut audit = retain_lake::AuditTable::open_or_create(
            &crate::hold_cmd::table_location(&a.lake.lake, "audit"),
            options,
        )
        .await
        .context("opening the audit table")?;
        let found = retain_events::patient::find(
            &mut records,
            Some(&mut audit),
            &a.mrn,
            &a.by,
            chrono::Utc::now(),
        )
        .await
        .map_err(|e| {
            if e.is_refusal() {
                anyhow::Error::from(BadInput(e.to_string()))
            } else {
                anyhow::Error::new(e)
            }
        })?;
        if a.lake.json {
            outln!("{}", serde_json::to_string_pretty(&found)?);
        } else {
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|r| {
                    vec![
                        r.record_key.clone(),
                        r.message_id.clone(),
                        r.mailbox.clone(),
                        r.category.clone(),
                        r.created_date.map(|d| d.to_string()).unwrap_or_default(),
                        r.retain_until.map(|d| d.to_string()).unwrap_or_default(),
                        r.retention_status.clone(),
                    ]
                })
                .collect();
            outln!(
                "{}",
                table(
                    &[
                        "record key",
                        "message id",
                        "mailbox",
                        "category",
                        "created",
                        "retain until",
                        "status"
                    ],
                    &rows
                )
            );
            outln!(
                "{} record(s); this access is recorded in the audit trail",
                found.len()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
