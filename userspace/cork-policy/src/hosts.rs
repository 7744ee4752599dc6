//! Host rules: allow, block and passthrough lists with exact and `*.` wildcard entries.

use serde::{Deserialize, Serialize};

fn default_ports() -> Vec<u16> {
    vec![80, 443]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub block: Vec<String>,
    #[serde(default)]
    pub passthrough: Vec<String>,
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// `host:port` destinations a bottle may reach with raw TCP (neither TLS nor HTTP: SSH, a
    /// database). Tunnelled unscanned and audited; only for transparent (bottle) connections.
    #[serde(default)]
    pub raw_tcp: Vec<String>,
}

/// One entry of a host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.suffix`: any name that ends in `.suffix`, but not `suffix` itself.
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(entry: &str) -> Result<HostPattern, String> {
        let lower = entry.trim().to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, lower),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            || (!wild && name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok());
        if !valid {
            return Err(format!("invalid host entry {entry:?}: expected a DNS name, an IP address or *.name"));
        }
        Ok(if wild { HostPattern::Subdomains(name) } else { HostPattern::Exact(name) })
    }

    /// `host` must already be lower-case without a trailing dot.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() + 1 && host.ends_with(suffix.as_str()) && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

/// Parses a `host:port` entry (IPv6 in brackets), with the host normalised.
pub fn parse_host_port(entry: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid raw_tcp entry {entry:?}: expected host:port");
    let (host, port) = entry.trim().rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let host = normalize_host(host);
    HostPattern::parse(&host).map_err(|_| bad())?;
    Ok((host, port))
}

/// What the host rules say about a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostVerdict {
    /// Intercept and scan.
    Allow,
    /// Tunnel without interception.
    Passthrough,
    Block { rule: String, reason: String },
}

/// Normalises a host for matching: lower-case, no trailing dot, no IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).map(str::to_string).unwrap_or(h)
}

impl HostRules {
    /// The `raw_tcp` entries as (host, port). Entries were validated when the policy was read.
    pub fn raw_tcp_entries(&self) -> impl Iterator<Item = (String, u16)> + '_ {
        self.raw_tcp.iter().filter_map(|e| parse_host_port(e).ok())
    }

    fn find<'a>(list: &'a [String], host: &str) -> Option<&'a String> {
        list.iter().find(|entry| HostPattern::parse(entry).is_ok_and(|p| p.matches(host)))
    }

    /// Decides about `host:port`. The block list wins over everything, then passthrough, then allow.
    pub fn check(&self, host: &str, port: u16) -> HostVerdict {
        let host = normalize_host(host);
        if let Some(entry) = Self::find(&self.block, &host) {
            return HostVerdict::Block { rule: "host.blocklist".into(), reason: format!("{host} matches block entry {entry}") };
        }
        let listed = Self::find(&self.passthrough, &host).map(|_| HostVerdict::Passthrough).or_else(|| Self::find(&self.allow, &host).map(|_| HostVerdict::Allow));
        match listed {
            None => HostVerdict::Block { rule: "host.not_allowed".into(), reason: format!("{host} is not in the allow list") },
            Some(_) if !self.ports.contains(&port) => {
                HostVerdict::Block { rule: "host.port_not_allowed".into(), reason: format!("port {port} is not in hosts.ports") }
            }
            Some(verdict) => verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> HostRules {
        HostRules {
            allow: vec!["api.example.com".into(), "*.cdn.example".into(), "127.0.0.9".into()],
            block: vec!["evil.cdn.example".into()],
            passthrough: vec!["pinned.example.com".into()],
            ports: vec![443],
            raw_tcp: vec!["[::1]:22".into(), "db.example:5432".into()],
        }
    }

    #[test]
    fn exact_wildcard_and_ip_entries() {
        let r = rules();
        assert_eq!(r.check("API.example.com.", 443), HostVerdict::Allow);
        assert_eq!(r.check("a.cdn.example", 443), HostVerdict::Allow);
        assert_eq!(r.check("127.0.0.9", 443), HostVerdict::Allow);
        assert!(matches!(r.check("cdn.example", 443), HostVerdict::Block { .. }), "the apex is not covered by *.");
        assert!(matches!(r.check("xcdn.example", 443), HostVerdict::Block { .. }));
        assert!(matches!(r.check("api.example.com.evil.test", 443), HostVerdict::Block { .. }));
    }

    #[test]
    fn raw_tcp_entries_parse() {
        let entries: Vec<_> = rules().raw_tcp_entries().collect();
        assert_eq!(entries, [("::1".to_string(), 22), ("db.example".to_string(), 5432)]);
        for bad in ["db.example", "db.example:0", "db.example:x", "bad host:22"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn block_beats_allow_and_ports_are_enforced() {
        let r = rules();
        assert!(matches!(r.check("evil.cdn.example", 443), HostVerdict::Block { ref rule, .. } if rule == "host.blocklist"));
        assert!(matches!(r.check("api.example.com", 22), HostVerdict::Block { ref rule, .. } if rule == "host.port_not_allowed"));
        assert_eq!(r.check("pinned.example.com", 443), HostVerdict::Passthrough);
    }
}
