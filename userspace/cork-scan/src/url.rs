//! URL layers: pure functions over a URL or a host name, and two small state machines (per-host
//! rate limit, per-bottle data budget) that take the current time as an argument so the crate
//! stays free of I/O and clocks.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::validate::shannon_entropy;

/// The parts of an absolute URL, borrowed from it. Parsing is deliberately lenient: the goal is
/// to find what a server would see, not to validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts<'a> {
    pub scheme: &'a str,
    pub userinfo: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub fragment: Option<&'a str>,
}

/// Splits `scheme://[userinfo@]host[:port]/path?query#fragment`; `None` without `://`.
pub fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let auth_end = rest.find(['/', '?', '\\']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
        match stripped.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (stripped, None),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            _ => (hostport, None),
        }
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    Some(UrlParts { scheme, userinfo, host, port, path, query, fragment })
}

/// What an IP address is, for SSRF purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    /// 169.254.169.254 and friends: cloud instance metadata services.
    Metadata,
    Unspecified,
    SharedCgnat,
    Multicast,
    Broadcast,
    Reserved,
}

impl IpClass {
    /// Whether a request to this address from a bottle is server-side request forgery.
    pub fn is_internal(self) -> bool {
        !matches!(self, IpClass::Public)
    }
}

/// Parses an IPv4 literal the way `inet_aton` does: one to four parts, each decimal, octal
/// (leading `0`) or hex (`0x`), the last part filling the remaining bytes. So `2130706433`,
/// `0x7f.1` and `0177.0.0.01` are all 127.0.0.1.
pub fn parse_ipv4_lenient(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let v = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            if h.is_empty() { 0 } else { u64::from_str_radix(h, 16).ok()? }
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8).ok()?
        } else {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse::<u64>().ok()?
        };
        nums.push(v);
    }
    let last = nums.pop()?;
    let mut addr: u64 = 0;
    for (i, &n) in nums.iter().enumerate() {
        if n > 255 {
            return None;
        }
        addr |= n << (24 - 8 * i);
    }
    let room = 32 - 8 * nums.len();
    if room < 64 && last >= (1u64 << room) {
        return None;
    }
    addr |= last;
    Some(Ipv4Addr::from(addr as u32))
}

/// Parses a host that is an IP literal in any of the forms servers accept.
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let h = h.split('%').next().unwrap_or(h); // zone id
    if let Ok(v6) = h.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    parse_ipv4_lenient(h).map(IpAddr::V4)
}

/// Classifies an address; IPv4-mapped and IPv4-compatible IPv6 addresses are classified as the
/// IPv4 address they carry.
pub fn classify_addr(ip: IpAddr) -> IpClass {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(169, 254, 170, 2) || v4 == Ipv4Addr::new(100, 100, 100, 200) {
                IpClass::Metadata
            } else if o[0] == 127 {
                IpClass::Loopback
            } else if o[0] == 10 || (o[0] == 172 && (16..32).contains(&o[1])) || (o[0] == 192 && o[1] == 168) {
                IpClass::Private
            } else if o[0] == 169 && o[1] == 254 {
                IpClass::LinkLocal
            } else if o[0] == 0 {
                IpClass::Unspecified
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                IpClass::SharedCgnat
            } else if (224..240).contains(&o[0]) {
                IpClass::Multicast
            } else if v4 == Ipv4Addr::BROADCAST {
                IpClass::Broadcast
            } else if o[0] >= 240 || (o[0] == 192 && o[1] == 0 && o[2] == 0) || (o[0] == 198 && (18..20).contains(&o[1])) {
                IpClass::Reserved
            } else {
                IpClass::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_addr(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                IpClass::Loopback
            } else if v6.is_unspecified() {
                IpClass::Unspecified
            } else if seg[..6] == [0, 0, 0, 0, 0, 0] {
                classify_addr(IpAddr::V4(Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8)))
            } else if seg[0] & 0xfe00 == 0xfc00 {
                IpClass::Private
            } else if seg[0] & 0xffc0 == 0xfe80 {
                IpClass::LinkLocal
            } else if seg[0] & 0xff00 == 0xff00 {
                IpClass::Multicast
            } else if v6 == "fd00:ec2::254".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED) {
                IpClass::Metadata
            } else {
                IpClass::Public
            }
        }
    }
}

/// Classifies a URL host: IP literals in any notation, plus names that always mean "this
/// machine" or "the metadata service". `None` for ordinary names (resolve and classify again).
pub fn classify_ip(host: &str) -> Option<(IpAddr, IpClass)> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h == "localhost" || h.ends_with(".localhost") {
        return Some((IpAddr::V4(Ipv4Addr::LOCALHOST), IpClass::Loopback));
    }
    if h == "metadata.google.internal" || h == "metadata" || h == "instance-data" {
        return Some((IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), IpClass::Metadata));
    }
    let ip = parse_ip_literal(&h)?;
    Some((ip, classify_addr(ip)))
}

/// Why a host name looks like data is being carried in it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelExfil {
    pub label: String,
    pub reason: &'static str,
    pub entropy: f32,
}

/// Looks at the labels below the registrable part of a DNS name (the guard for DNS tunnelling
/// and the `dns.label_exfil` rule). Flags labels that are long and random, hex or base32 blobs,
/// or names whose subdomain part is oversized.
pub fn scan_hostname(name: &str) -> Option<LabelExfil> {
    let name = name.trim_end_matches('.');
    if parse_ip_literal(name).is_some() {
        return None;
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 3 {
        return None;
    }
    let sub = &labels[..labels.len() - 2];
    let sub_len: usize = sub.iter().map(|l| l.len() + 1).sum();
    for l in sub {
        let e = shannon_entropy(l.as_bytes());
        let lb = l.as_bytes();
        let hexy = lb.len() >= 24 && lb.iter().all(u8::is_ascii_hexdigit);
        let b32 = lb.len() >= 24 && lb.iter().all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(b)) && lb.iter().filter(|b| b.is_ascii_digit()).count() >= 3;
        if hexy || b32 {
            return Some(LabelExfil { label: l.to_string(), reason: "encoded-looking label", entropy: e });
        }
        if lb.len() >= 20 && e >= 3.8 && lb.iter().filter(|b| b.is_ascii_digit()).count() >= 2 {
            return Some(LabelExfil { label: l.to_string(), reason: "long random label", entropy: e });
        }
    }
    if sub_len > 120 {
        return Some(LabelExfil { label: sub.join("."), reason: "oversized subdomain", entropy: shannon_entropy(sub.join("").as_bytes()) });
    }
    None
}

/// Token bucket per host: `burst` requests, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct HostRateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<String, (f64, Instant)>,
    max_hosts: usize,
}

impl HostRateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        HostRateLimiter { per_second, burst: f64::from(burst), buckets: HashMap::new(), max_hosts: 100_000 }
    }

    /// Takes one token for `host` at time `now`; `false` means over the limit.
    pub fn check(&mut self, host: &str, now: Instant) -> bool {
        if self.buckets.len() >= self.max_hosts && !self.buckets.contains_key(host) {
            // Bound memory: forget buckets that have fully refilled.
            let full = Duration::from_secs_f64(self.burst / self.per_second.max(1e-9));
            self.buckets.retain(|_, (_, t)| now.saturating_duration_since(*t) < full);
        }
        let (tokens, last) = self.buckets.entry(host.to_ascii_lowercase()).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.per_second).min(self.burst);
        *last = now.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Bytes a bottle may send per window; sliding over fixed windows.
#[derive(Debug, Clone)]
pub struct DataBudget {
    limit: u64,
    window: Duration,
    start: Option<Instant>,
    used: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("data budget exceeded: {used} of {limit} bytes in the current window")]
pub struct BudgetExceeded {
    pub used: u64,
    pub limit: u64,
}

impl DataBudget {
    pub fn new(limit: u64, window: Duration) -> Self {
        DataBudget { limit, window, start: None, used: 0 }
    }

    /// Accounts `bytes` at `now`. Once exceeded, stays exceeded until the window rolls over.
    pub fn spend(&mut self, bytes: u64, now: Instant) -> Result<u64, BudgetExceeded> {
        let start = *self.start.get_or_insert(now);
        if now.saturating_duration_since(start) >= self.window {
            self.start = Some(now);
            self.used = 0;
        }
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            Err(BudgetExceeded { used: self.used, limit: self.limit })
        } else {
            Ok(self.limit - self.used)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_notations() {
        for h in ["127.0.0.1", "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.01", "127.1", "[::ffff:127.0.0.1]", "::1", "localhost", "127.0.0.1."] {
            assert_eq!(classify_ip(h).map(|c| c.1), Some(IpClass::Loopback), "{h}");
        }
        assert_eq!(classify_ip("169.254.169.254").unwrap().1, IpClass::Metadata);
        assert_eq!(classify_ip("0xa9fea9fe").unwrap().1, IpClass::Metadata);
        assert_eq!(classify_ip("10.1.2.3").unwrap().1, IpClass::Private);
        assert_eq!(classify_ip("[fd00::1]").unwrap().1, IpClass::Private);
        assert_eq!(classify_ip("8.8.8.8").unwrap().1, IpClass::Public);
        assert!(classify_ip("example.com").is_none());
        assert!(classify_ip("1.2.3.4.5").is_none());
        assert!(classify_ip("256.1.1.1").is_none());
        assert!(classify_ip("99999999999999999999999").is_none());
    }

    #[test]
    fn url_split() {
        let p = split_url("https://u:p@[::1]:8443/a/b?x=1#f").unwrap();
        assert_eq!((p.scheme, p.userinfo, p.host, p.port, p.path, p.query, p.fragment), ("https", Some("u:p"), "::1", Some("8443"), "/a/b", Some("x=1"), Some("f")));
    }

    #[test]
    fn dns_labels() {
        assert!(scan_hostname("4a6f686e20446f652073656372657420746f6b656e.attacker.test").is_some());
        assert!(scan_hostname("q8zr2lmx0pv7kt4nb9wy6sh1xx.attacker.test").is_some());
        assert!(scan_hostname("www.example.com").is_none());
        assert!(scan_hostname("api.github.com").is_none());
        assert!(scan_hostname("example.com").is_none());
    }

    #[test]
    fn limiter_and_budget() {
        let t0 = Instant::now();
        let mut rl = HostRateLimiter::new(1.0, 2);
        assert!(rl.check("a.test", t0));
        assert!(rl.check("a.test", t0));
        assert!(!rl.check("a.test", t0));
        assert!(rl.check("b.test", t0));
        assert!(rl.check("a.test", t0 + Duration::from_millis(1100)));
        let mut b = DataBudget::new(100, Duration::from_secs(60));
        assert_eq!(b.spend(60, t0), Ok(40));
        assert!(b.spend(60, t0 + Duration::from_secs(1)).is_err());
        assert_eq!(b.spend(10, t0 + Duration::from_secs(61)), Ok(90));
    }
}
