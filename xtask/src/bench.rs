//! Placeholder: `cargo xtask bench`.
use anyhow::Result;

pub fn run(_args: &[String]) -> Result<()> {
    anyhow::bail!("the benchmark harness is not written yet")
}
