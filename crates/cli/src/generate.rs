//! `retain generate`: synthetic healthcare mail metadata, deterministic per seed.
//!
//! Writes one explain case per line (JSON Lines: `message`, `facts`, `events`), which
//! `retain policy explain --input -` reads one at a time. Producing to Kafka comes with the
//! streaming pipeline.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use retain_generate::Generator;

use crate::output::BadInput;

/// Arguments of `retain generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// How many records.
    #[arg(
        long,
        short = 'n',
        default_value_t = 1000,
        env = "RETAIN_GENERATE_COUNT"
    )]
    count: u64,
    /// Seed: the same seed gives the same records.
    #[arg(long, default_value_t = 42, env = "RETAIN_GENERATE_SEED")]
    seed: u64,
    /// Output file (`-` for standard output).
    #[arg(long, short, default_value = "-", env = "RETAIN_GENERATE_OUT")]
    out: PathBuf,
}

/// Runs `retain generate`.
pub fn run(a: GenerateArgs) -> Result<ExitCode> {
    let mut writer: Box<dyn std::io::Write> = if a.out.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = std::fs::File::create(&a.out)
            .map_err(|e| BadInput(format!("cannot create {}: {e}", a.out.display())))?;
        Box::new(std::io::BufWriter::new(f))
    };
    for r in Generator::new(a.seed).take(a.count as usize) {
        let line = serde_json::json!({"message": r.message, "facts": r.facts, "events": r.events});
        if let Err(e) = writeln!(writer, "{line}") {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e).context("writing generated records");
        }
    }
    match writer.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing generated records")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
