//! cork's policy: what a bottle may reach, and how strictly it is scanned.
//!
//! A [`Policy`] is read from YAML (with unknown keys refused and errors located by line and column)
//! or taken from the embedded default. It decides about hosts; the scanning engine's own settings
//! travel in [`Policy::scan`] to `cork_scan`. Nothing here does I/O apart from reading the file a
//! caller names in [`Policy::from_file`].

mod config;
mod hosts;

pub use config::{ConfigError, CredentialGrant, IoUringMode, KtlsMode, Limits, Mode, Policy, Upstream, DEFAULT_POLICY_YAML};
pub use hosts::{normalize_host, HostPattern, HostRules, HostVerdict};
