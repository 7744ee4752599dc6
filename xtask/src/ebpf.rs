//! Placeholder: the eBPF toolchain installer and program build.
use anyhow::Result;
use std::path::PathBuf;

/// Builds the eBPF object and returns its path, or `None` where eBPF is not built yet.
pub fn build() -> Result<Option<PathBuf>> {
    Ok(None)
}
