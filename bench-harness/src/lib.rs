//! cork's test and benchmark harness: a deterministic HTTPS origin with its own test CA
//! ([`origin`]), a load generator that can tunnel through an explicit proxy ([`loadgen`]),
//! and the scanner benchmark ([`scan`]) that `cargo xtask bench` runs.

pub mod error;
pub mod loadgen;
pub mod origin;
pub mod scan;
pub mod testca;

pub use error::HarnessError;
