//! `cork config init|check`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cork_policy::{Policy, DEFAULT_POLICY_YAML};

pub fn init(file: &str, force: bool) -> Result<()> {
    if file == "-" {
        std::io::stdout().write_all(DEFAULT_POLICY_YAML.as_bytes())?;
        return Ok(());
    }
    let path = Path::new(file);
    if path.exists() && !force {
        bail!("{file} exists; pass --force to overwrite it");
    }
    std::fs::write(path, DEFAULT_POLICY_YAML).with_context(|| format!("writing {file}"))?;
    eprintln!("wrote the default policy to {file}");
    Ok(())
}

pub fn check(file: &Path) -> Result<ExitCode> {
    match Policy::from_file(file) {
        Ok(policy) => {
            if let Err(e) = cork_scan::Engine::new(&policy.scan) {
                eprintln!("{}: scan: {e}", file.display());
                return Ok(ExitCode::from(1));
            }
            println!(
                "{}: ok ({:?} mode, {} allowed, {} blocked, {} passthrough hosts)",
                file.display(),
                policy.mode,
                policy.hosts.allow.len(),
                policy.hosts.block.len(),
                policy.hosts.passthrough.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}
