//! `cork scan`: offline evaluation of recorded exchanges.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use cork_policy::Policy;

pub fn scan(_input: &str, config: Option<&Path>) -> Result<ExitCode> {
    let policy = match config {
        Some(path) => Policy::from_file(path)?,
        None => Policy::embedded_default(),
    };
    let _engine = cork_scan::Engine::new(&policy.scan)?;
    anyhow::bail!("cork scan: the exchange reader lands with the scanning engine")
}
