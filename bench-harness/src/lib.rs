//! cork's test and benchmark harness: a deterministic HTTPS origin with its own test CA
//! ([`origin`]), a load generator that can tunnel through an explicit proxy ([`loadgen`]),
//! and the helpers `cargo xtask bench` uses.

pub mod error;
pub mod origin;
pub mod testca;

pub use error::HarnessError;
