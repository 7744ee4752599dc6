//! Where the eBPF object comes from.
//!
//! In order: the path in `CORK_BOTTLE_EBPF_OBJECT` at run time; the object embedded at build
//! time (build.rs embeds `target/bpf/bpfel-unknown-none/release/cork-bottle-ebpf`, or the path
//! in `CORK_BOTTLE_EBPF_OBJECT` at build time, when that file exists); otherwise
//! `BottleError::ObjectMissing`.
use std::{borrow::Cow, path::PathBuf};

use crate::BottleError;

pub const OBJECT_ENV: &str = "CORK_BOTTLE_EBPF_OBJECT";

/// Which eBPF object a bottle loads.
#[derive(Clone, Debug, Default)]
pub enum ObjectSource {
    /// `CORK_BOTTLE_EBPF_OBJECT` if set, else the embedded object.
    #[default]
    Default,
    /// This file.
    Path(PathBuf),
}

#[cfg(cork_bottle_embedded)]
fn embedded() -> Option<&'static [u8]> {
    Some(aya::include_bytes_aligned!(env!(
        "CORK_BOTTLE_EBPF_EMBEDDED"
    )))
}

#[cfg(not(cork_bottle_embedded))]
fn embedded() -> Option<&'static [u8]> {
    None
}

/// True when an object was embedded at build time.
pub fn is_embedded() -> bool {
    embedded().is_some()
}

/// True when `ObjectSource::Default` would find an object.
pub fn default_object_available() -> bool {
    match std::env::var_os(OBJECT_ENV) {
        Some(path) => std::path::Path::new(&path).is_file(),
        None => is_embedded(),
    }
}

impl ObjectSource {
    pub(crate) fn bytes(&self) -> Result<Cow<'static, [u8]>, BottleError> {
        let path = match self {
            Self::Path(path) => path.clone(),
            Self::Default => match std::env::var_os(OBJECT_ENV) {
                Some(path) => PathBuf::from(path),
                None => {
                    return embedded().map(Cow::Borrowed).ok_or_else(|| {
                        BottleError::ObjectMissing(format!(
                            "none was embedded at build time and {OBJECT_ENV} is unset; \
                             run `cargo xtask build-ebpf`, then rebuild"
                        ))
                    })
                }
            },
        };
        std::fs::read(&path)
            .map(Cow::Owned)
            .map_err(|source| BottleError::ObjectRead { path, source })
    }
}
