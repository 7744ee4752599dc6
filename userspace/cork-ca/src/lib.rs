//! cork's per-bottle certificate authority.
//!
//! Every cork instance, and every bottle it runs, owns one [`BottleCa`]: an ECDSA P-256 CA
//! generated at start-up whose private key exists only in this process's memory. It is never
//! serialised, never logged (its `Debug` shows the public half only) and is zeroized when the CA is
//! dropped. Only the public certificate leaves the process, through [`export`].
//!
//! Leaf certificates for intercepted hosts are signed on demand with one P-256 leaf key per CA and
//! kept in a bounded [`LeafCache`]. The cache issues at most one certificate per name at a time:
//! concurrent first requests for a host wait for the same signature instead of racing.

mod authority;
mod cache;
pub mod export;
mod key;

pub use authority::{BottleCa, LeafName};
pub use cache::{LeafCache, LeafCacheStats};

/// Errors from generating the CA or issuing leaves.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the leaf key was refused by the TLS provider: {0}")]
    LeafKey(rustls::Error),
    #[error("invalid leaf name {0:?}")]
    InvalidName(String),
    #[error("could not write {path}: {source}")]
    Write { path: std::path::PathBuf, source: std::io::Error },
}
