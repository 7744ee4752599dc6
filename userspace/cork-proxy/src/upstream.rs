//! Reaching the real destination: name resolution with an SSRF guard, TCP, and verified TLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cork_policy::Policy;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::ktls_leg::{Handshaken, RecordExact};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("{host} resolves to internal address {addr}, which only an upstream.resolve pin or an allowed IP literal may reach")]
    InternalAddress { host: String, addr: IpAddr },
    #[error("connecting to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connecting to {host} timed out")]
    ConnectTimeout { host: String },
    #[error("upstream TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("invalid upstream server name {0:?}")]
    ServerName(String),
}

impl UpstreamError {
    /// The audit rule this failure is reported under.
    pub fn rule(&self) -> &'static str {
        match self {
            UpstreamError::InternalAddress { .. } => "upstream.internal_address",
            UpstreamError::Tls { .. } => "upstream.tls",
            _ => "upstream.unreachable",
        }
    }
}

/// Addresses that an arbitrary public name must never lead to: loopback, private ranges,
/// link-local (which covers the 169.254.169.254 metadata service), CGNAT and unique-local IPv6.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] == 0
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                v6.is_loopback() || v6.is_unspecified() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

/// Resolves `host` the way policy says: a pin in `upstream.resolve` wins; an IP literal is used as
/// is; otherwise DNS, with internal answers refused.
pub async fn resolve(policy: &Policy, host: &str, port: u16) -> Result<Vec<SocketAddr>, UpstreamError> {
    let name = cork_policy::normalize_host(host);
    if let Some(ip) = policy.upstream.resolve.get(&name) {
        return Ok(vec![SocketAddr::new(*ip, port)]);
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        // A literal reaches an internal address only when that literal is itself on the allow list.
        let listed = policy.hosts.allow.iter().chain(&policy.hosts.passthrough).any(|e| cork_policy::normalize_host(e) == name);
        if is_internal(ip) && !listed {
            return Err(UpstreamError::InternalAddress { host: name, addr: ip });
        }
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
        .await
        .map_err(|e| UpstreamError::Resolve { host: name.clone(), reason: e.to_string() })?
        .collect();
    if let Some(bad) = found.iter().find(|a| is_internal(a.ip())) {
        return Err(UpstreamError::InternalAddress { host: name, addr: bad.ip() });
    }
    if found.is_empty() {
        return Err(UpstreamError::Resolve { host: name, reason: "no addresses".into() });
    }
    Ok(found)
}

/// Connects to the first address that answers.
pub async fn connect_tcp(policy: &Policy, host: &str, port: u16) -> Result<TcpStream, UpstreamError> {
    let limit = Duration::from_secs(policy.upstream.connect_timeout_secs.max(1));
    let addrs = resolve(policy, host, port).await?;
    let attempt = async {
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(source) => last = Some(UpstreamError::Connect { addr, source }),
            }
        }
        Err(last.expect("resolve never returns an empty list"))
    };
    tokio::time::timeout(limit, attempt).await.map_err(|_| UpstreamError::ConnectTimeout { host: host.to_string() })?
}

/// Connects and completes a fully verified TLS handshake on rustls, sending `host` as SNI.
pub async fn connect_tls(policy: &Policy, tls: &Arc<rustls::ClientConfig>, host: &str, port: u16) -> Result<TlsStream<RecordExact<TcpStream>>, UpstreamError> {
    match connect_leg(policy, tls, host, port, false).await? {
        Handshaken::Rustls(stream) => Ok(stream),
        Handshaken::Kernel(_) => unreachable!("a handshake not meant for the kernel stays on rustls"),
    }
}

/// As [`connect_tls`], but with `kernel` the handshake runs for kTLS (see [`crate::ktls_leg`]):
/// its reads stop at the last handshake record, and the leg is ready to move into the kernel.
pub async fn connect_leg(policy: &Policy, tls: &Arc<rustls::ClientConfig>, host: &str, port: u16, kernel: bool) -> Result<Handshaken<TlsStream<RecordExact<TcpStream>>>, UpstreamError> {
    let tcp = RecordExact::new(connect_tcp(policy, host, port).await?, kernel);
    let bare = cork_policy::normalize_host(host);
    let server_name = ServerName::try_from(bare.clone()).map_err(|_| UpstreamError::ServerName(host.to_string()))?;
    let limit = Duration::from_secs(policy.limits.handshake_timeout_secs.max(1));
    match tokio::time::timeout(limit, crate::ktls_leg::connect(tls.clone(), server_name, tcp, kernel)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(UpstreamError::Tls { host: bare, reason: e.to_string() }),
        Err(_) => Err(UpstreamError::Tls { host: bare, reason: "handshake timed out".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges() {
        for ip in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1"] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
