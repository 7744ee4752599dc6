//! The configuration file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hosts::{HostPattern, HostRules};

/// The policy cork runs on when no `--config` is given. Written by `cork config init`.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../default-policy.yaml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// Whether bumped HTTP/1.1 connections move their TLS records into the kernel (kTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KtlsMode {
    /// Where the kernel supports it, per connection; otherwise rustls.
    #[default]
    Auto,
    /// Always rustls.
    Off,
}

/// Whether tunnels that need no scanning (passthrough, raw TCP) are relayed on io_uring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoUringMode {
    /// Where the kernel and the process allow it; otherwise `splice`.
    #[default]
    Auto,
    /// Always `splice` (or a copy where the kernel refuses that).
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub mode: Mode,
    pub hosts: HostRules,
    #[serde(default)]
    pub scan: cork_scan::ScanConfig,
    #[serde(default)]
    pub credentials: Vec<CredentialGrant>,
    #[serde(default)]
    pub upstream: Upstream,
    #[serde(default)]
    pub limits: Limits,
}

/// Secrets a bottle may send to their own service: the named scanner rules do not block when
/// they match a request *header* sent to one of `hosts`. The same secret in a body, a URL, or to
/// any other host is still blocked; every granted use is audited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialGrant {
    pub hosts: Vec<String>,
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    pub extra_roots: Vec<PathBuf>,
    pub resolve: BTreeMap<String, IpAddr>,
    pub connect_timeout_secs: u64,
}

impl Default for Upstream {
    fn default() -> Self {
        Self { extra_roots: Vec::new(), resolve: BTreeMap::new(), connect_timeout_secs: 10 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub handshake_timeout_secs: u64,
    pub head_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub body_buffer_bytes: usize,
    pub leaf_cache_entries: usize,
    /// Largest WebSocket message (all fragments together) cork buffers and scans before relaying.
    pub websocket_message_bytes: usize,
    pub ktls: KtlsMode,
    pub io_uring: IoUringMode,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout_secs: 10,
            head_timeout_secs: 30,
            idle_timeout_secs: 90,
            max_head_bytes: 64 * 1024,
            max_headers: 128,
            max_connections: 4096,
            body_buffer_bytes: 1024 * 1024,
            leaf_cache_entries: 4096,
            websocket_message_bytes: 16 * 1024 * 1024,
            ktls: KtlsMode::Auto,
            io_uring: IoUringMode::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}:{line}:{column}: {message}")]
    Syntax { origin: String, line: usize, column: usize, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl Policy {
    /// The embedded default policy.
    pub fn embedded_default() -> Policy {
        Policy::from_yaml(DEFAULT_POLICY_YAML, "<embedded default>").expect("the embedded default policy is valid")
    }

    pub fn from_file(path: &Path) -> Result<Policy, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Policy::from_yaml(&text, &path.display().to_string())
    }

    /// Parses and validates a policy. `origin` names the source in error messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Policy, ConfigError> {
        let policy: Policy = serde_yaml_ng::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            ConfigError::Syntax { origin: origin.to_string(), line, column, message: e.to_string() }
        })?;
        policy.validate().map_err(|message| ConfigError::Invalid { origin: origin.to_string(), message })?;
        Ok(policy)
    }

    /// Whether `rule` matching a request header bound for `host` is a granted credential.
    pub fn credential_granted(&self, host: &str, rule: &str) -> bool {
        let host = crate::hosts::normalize_host(host);
        self.credentials.iter().any(|g| {
            g.rules.iter().any(|r| r == rule) && g.hosts.iter().any(|h| HostPattern::parse(h).is_ok_and(|p| p.matches(&host)))
        })
    }

    fn validate(&self) -> Result<(), String> {
        for list in [&self.hosts.allow, &self.hosts.block, &self.hosts.passthrough] {
            for entry in list {
                HostPattern::parse(entry)?;
            }
        }
        for entry in &self.hosts.raw_tcp {
            crate::hosts::parse_host_port(entry)?;
        }
        let known: Vec<String> = cork_scan::rules().map(|r| r.id.to_string()).collect();
        for grant in &self.credentials {
            for host in &grant.hosts {
                HostPattern::parse(host).map_err(|e| format!("credentials: {e}"))?;
            }
            if let Some(rule) = grant.rules.iter().find(|r| !known.contains(r)) {
                return Err(format!("credentials: unknown scanner rule {rule:?}"));
            }
        }
        if self.hosts.ports.is_empty() {
            return Err("hosts.ports is empty: no destination could ever be reached".into());
        }
        for name in self.upstream.resolve.keys() {
            HostPattern::parse(name).map_err(|e| format!("upstream.resolve: {e}"))?;
        }
        let l = &self.limits;
        let positive = [
            ("handshake_timeout_secs", l.handshake_timeout_secs as usize),
            ("head_timeout_secs", l.head_timeout_secs as usize),
            ("idle_timeout_secs", l.idle_timeout_secs as usize),
            ("max_head_bytes", l.max_head_bytes),
            ("max_headers", l.max_headers),
            ("max_connections", l.max_connections),
            ("leaf_cache_entries", l.leaf_cache_entries),
            ("websocket_message_bytes", l.websocket_message_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("limits.{name} must be greater than zero"));
        }
        if l.max_head_bytes < 1024 {
            return Err("limits.max_head_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_allows_the_documented_hosts() {
        let p = Policy::embedded_default();
        assert_eq!(p.mode, Mode::Enforce);
        for host in ["api.anthropic.com", "statsig.anthropic.com", "sentry.io", "claude.ai", "platform.claude.com", "downloads.claude.ai", "raw.githubusercontent.com"] {
            assert!(p.hosts.allow.iter().any(|h| h == host), "{host}");
        }
    }

    #[test]
    fn ktls_is_auto_by_default_and_only_auto_or_off() {
        assert_eq!(Policy::embedded_default().limits.ktls, KtlsMode::Auto);
        let with = |value: &str| Policy::from_yaml(&format!("hosts:\n  allow: [a.test]\nlimits:\n  ktls: {value}\n"), "t");
        assert_eq!(with("off").unwrap().limits.ktls, KtlsMode::Off);
        assert_eq!(with("auto").unwrap().limits.ktls, KtlsMode::Auto);
        let err = with("maybe").unwrap_err().to_string();
        assert!(err.contains("maybe") || err.contains("unknown variant"), "{err}");
    }

    #[test]
    fn io_uring_is_auto_by_default_and_only_auto_or_off() {
        assert_eq!(Policy::embedded_default().limits.io_uring, IoUringMode::Auto);
        let with = |value: &str| Policy::from_yaml(&format!("hosts:\n  allow: [a.test]\nlimits:\n  io_uring: {value}\n"), "t");
        assert_eq!(with("off").unwrap().limits.io_uring, IoUringMode::Off);
        assert_eq!(with("auto").unwrap().limits.io_uring, IoUringMode::Auto);
        let err = with("on").unwrap_err().to_string();
        assert!(err.contains("unknown variant"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_a_location() {
        let err = Policy::from_yaml("hosts:\n  allow: [a.test]\n  alow: [b.test]\n", "t.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.yaml:3:"), "{msg}");
        assert!(msg.contains("alow"), "{msg}");
    }

    #[test]
    fn invalid_host_entries_are_refused() {
        let err = Policy::from_yaml("hosts:\n  allow: ['bad host']\n", "t.yaml").unwrap_err();
        assert!(err.to_string().contains("bad host"), "{err}");
    }

    #[test]
    fn credentials_are_granted_per_host_and_rule() {
        let p = Policy::embedded_default();
        assert!(p.credential_granted("API.anthropic.com", "anthropic.api_key"));
        assert!(!p.credential_granted("evil.test", "anthropic.api_key"));
        assert!(!p.credential_granted("api.anthropic.com", "aws.access_key_id"));
        let err = Policy::from_yaml("hosts: {allow: [a.test]}\ncredentials: [{hosts: [a.test], rules: [no.such_rule]}]\n", "t").unwrap_err();
        assert!(err.to_string().contains("no.such_rule"), "{err}");
    }

    #[test]
    fn zero_limits_are_refused() {
        let err = Policy::from_yaml("hosts: {allow: [a.test]}\nlimits: {max_connections: 0}\n", "t").unwrap_err();
        assert!(err.to_string().contains("max_connections"), "{err}");
    }
}
