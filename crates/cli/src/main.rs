//! `retain`: the command line. A thin layer that parses arguments, calls the crates and prints.
//!
//! Exit codes: 0 success; 1 failure (an outside system or a bug); 2 bad input (a policy file,
//! case or argument that must be fixed).

/// `print!` to standard output that ends the process quietly when the reader has gone away
/// (`retain ... | head`), instead of panicking on a broken pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::emit(&format!($($arg)*)) };
}

/// `println!` counterpart of [`out!`].
macro_rules! outln {
    () => { $crate::output::emit("\n") };
    ($($arg:tt)*) => { $crate::output::emit(&format!("{}\n", format!($($arg)*))) };
}

mod audit_cmd;
mod config;
mod demo;
mod dispose_cmd;
mod generate;
mod hold_cmd;
mod import;
mod lake_cmd;
mod output;
mod patient_cmd;
mod policy_cmd;
mod policy_demo;
mod report_cmd;
mod run;
mod serve_cmd;
mod sql_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Retain: e-mail retention for healthcare, from Kafka to Delta Lake.
#[derive(Parser, Debug)]
#[command(
    name = "retain",
    version,
    about = "Retain: e-mail retention for healthcare: classify, schedule, hold and dispose, with every date explained"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Verify and show the tamper-evident audit trail (the `audit` Delta table).
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// The whole pipeline on embedded defaults: broker, generated mail, classifier, scheduler,
    /// Delta table in ./lake, and a summary.
    Demo(demo::DemoArgs),
    /// Scheduled disposal: plan a manifest, approve it, execute it (dry run unless --for-real).
    #[command(subcommand)]
    Dispose(dispose_cmd::DisposeCommand),
    /// Write synthetic healthcare mail metadata (JSON Lines of explain cases).
    Generate(generate::GenerateArgs),
    /// Litigation holds: create, preview, list, show, release.
    #[command(subcommand)]
    Hold(hold_cmd::HoldCommand),
    /// Read maildir/mbox/.eml files and produce them as Avro MailMessages to Kafka.
    Import(import::ImportArgs),
    /// Maintain the records table: compact its files, cluster them by retain_until.
    #[command(subcommand)]
    Lake(lake_cmd::LakeCommand),
    /// Patient requests: every record referencing a patient (audited PHI access).
    #[command(subcommand)]
    Patient(patient_cmd::PatientCommand),
    /// Check, explain and try out retention policies.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// A standard report (inventory, forecast, holds, disposals, access) as a table, CSV, JSON
    /// or HTML (docs/reports.md); audited.
    Report(report_cmd::ReportArgs),
    /// Run the streaming stages (classifier, scheduler or both) until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// The PostgreSQL-wire SQL endpoint for psql, drivers and BI tools (password logins, PHI
    /// masked for analysts, read-only, audited); `serve user add` manages its users.
    Serve(serve_cmd::ServeArgs),
    /// Read-only SQL over the lake's tables, views and functions (docs/sql.md); audited.
    Sql(sql_cmd::SqlArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RETAIN_LOG")
                // librdkafka's configuration notes (e.g. that the gapless guarantee the
                // classifier relies on is marked experimental) are not the operator's business.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,librdkafka=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Dispose(cmd) => dispose_cmd::run(cmd),
        Command::Generate(args) => generate::run(args),
        Command::Hold(cmd) => hold_cmd::run(cmd),
        Command::Import(args) => import::run(args),
        Command::Lake(cmd) => lake_cmd::run(cmd),
        Command::Patient(cmd) => patient_cmd::run(cmd),
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Report(args) => report_cmd::run(args),
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve_cmd::run(args),
        Command::Sql(args) => sql_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if is_bad_input(&err) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Bad input (policy, case, arguments) exits 2; everything else 1.
fn is_bad_input(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<retain_policy::Error>().is_some()
            || c.downcast_ref::<output::BadInput>().is_some()
    })
}
