//! `cork scan`: offline evaluation of recorded exchanges (JSON lines in, one verdict per line out).

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cork_policy::Policy;

/// Exit codes: 0 when nothing was blocked, 1 when a line was blocked or could not be read.
pub fn scan(input: &str, config: Option<&Path>) -> Result<ExitCode> {
    let policy = match config {
        Some(path) => Policy::from_file(path)?,
        None => Policy::embedded_default(),
    };
    let engine = cork_scan::Engine::new(&policy.scan)?;
    let reader: Box<dyn BufRead> = if input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(input).with_context(|| format!("opening {input}"))?))
    };
    let stdout = std::io::stdout().lock();
    let summary = cork_scan::exchange::scan_jsonl(reader, std::io::BufWriter::new(stdout), &engine)?;
    eprintln!(
        "cork scan: {} lines: {} allowed, {} redacted, {} blocked, {} unsupported, {} errors",
        summary.lines, summary.allowed, summary.redacted, summary.blocked, summary.unsupported, summary.errors
    );
    Ok(if summary.blocked > 0 || summary.errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
