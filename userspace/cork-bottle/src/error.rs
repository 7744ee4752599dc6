//! The loader's errors.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BottleError {
    #[error("invalid bottle name {0:?}: use 1-64 characters from [A-Za-z0-9_-]")]
    InvalidName(String),

    #[error("the eBPF object is not available: {0}")]
    ObjectMissing(String),

    #[error("reading the eBPF object {path}: {source}")]
    ObjectRead { path: PathBuf, source: io::Error },

    #[error(
        "no cgroup v2 hierarchy is mounted (looked for a cgroup2 entry in /proc/self/mountinfo)"
    )]
    NoCgroup2,

    #[error("bottle {0:?} already exists (a crashed loader leaves it closed; run cleanup_stale)")]
    AlreadyExists(String),

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),

    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },

    #[error("eBPF program {0} is missing from the object")]
    ProgramMissing(&'static str),

    #[error("eBPF map {0} is missing from the object")]
    MapMissing(&'static str),

    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },

    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },

    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },

    #[error("the processes of {0} did not exit after being killed")]
    ProcessesRemain(PathBuf),
}

impl BottleError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
