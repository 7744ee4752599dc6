//! cork's test and benchmark harness: a deterministic HTTPS origin with its own test CA
//! ([`origin`]), a load generator that can tunnel through an explicit proxy ([`loadgen`]),
//! and the process helpers `cargo xtask bench` relies on.

pub mod error;
pub mod loadgen;
pub mod origin;
pub mod testca;

pub use error::HarnessError;
