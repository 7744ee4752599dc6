//! `GET /ws?url=wss://host/path` on the explicit listener: a WebSocket client that names its
//! destination in the URL (the pipelock-style form) instead of tunnelling to it with CONNECT.
//!
//! The client's upgrade request is addressed to cork itself. cork checks the destination against
//! the host rules, connects (resolved by cork, with the SSRF guard; `wss` with a fully verified
//! TLS handshake), rewrites the request for the destination (origin-form target, `Host` naming
//! it) and relays it through the same exchange as any other request: the head scan, the upgrade
//! and the scanned frame relay of [`crate::websocket`].

use std::net::SocketAddr;
use std::sync::Arc;

use cork_http::{Header, RequestHead};
use cork_policy::HostVerdict;
use tokio::net::TcpStream;

use crate::exchange::{split_authority, Destination, Exchange};
use crate::state::{ProxyState, Snapshot};
use crate::upstream;
use crate::wire::Wire;

/// Whether a request on the explicit listener is for this endpoint.
pub fn is_route(target: &str) -> bool {
    target == "/ws" || target.starts_with("/ws?")
}

/// Why a `/ws` request could not name a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsUrlError {
    #[error("missing url= parameter")]
    Missing,
    #[error("url= is not valid percent-encoding")]
    Encoding,
    #[error("url= must start with ws:// or wss://")]
    Scheme,
    #[error("url= has an invalid authority")]
    Authority,
}

/// The destination and origin-form target named by a `/ws?url=` request target.
pub fn parse_target(target: &str) -> Result<(Destination, String), WsUrlError> {
    let query = target.split_once('?').map(|(_, q)| q).ok_or(WsUrlError::Missing)?;
    let raw = query.split('&').find_map(|p| p.strip_prefix("url=")).ok_or(WsUrlError::Missing)?;
    let url = percent_decode(raw).ok_or(WsUrlError::Encoding)?;
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("wss://") {
        ("https", rest)
    } else if let Some(rest) = url.strip_prefix("ws://") {
        ("http", rest)
    } else {
        return Err(WsUrlError::Scheme);
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // Fragments are never sent; userinfo is refused rather than forwarded.
    let path = path.split('#').next().unwrap_or("/");
    let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
    if authority.contains('@') || path.bytes().any(|b| b <= b' ' || b == 0x7F) {
        return Err(WsUrlError::Authority);
    }
    let (host, port) = split_authority(authority);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(WsUrlError::Authority)?,
    };
    let host = cork_policy::normalize_host(host);
    if host.is_empty() || cork_ca::LeafName::parse(&host).is_err() {
        return Err(WsUrlError::Authority);
    }
    Ok((Destination { scheme, host, port }, path))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Serves one `/ws?url=` request; the connection ends with the session.
pub async fn serve(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, mut wire: Wire<TcpStream>, mut head: RequestHead) {
    state.metrics.connection("websocket_endpoint");
    let none = Destination { scheme: "http", host: String::new(), port: 0 };
    let (dest, path) = match parse_target(&head.target) {
        Ok(found) => found,
        Err(e) => {
            Exchange { state: &state, snap: &snap, client, dest: &none }.refuse(&mut wire, &head, 400, "websocket.bad_url", &e.to_string()).await;
            return;
        }
    };
    let exchange = Exchange { state: &state, snap: &snap, client, dest: &dest };
    if !crate::websocket::is_upgrade(&head) {
        exchange.refuse(&mut wire, &head, 400, "websocket.not_an_upgrade", "/ws?url= takes a WebSocket upgrade request").await;
        return;
    }
    // Passthrough hosts are not special here: cork is the TLS client itself, so there is no
    // client pin to respect, and the session is scanned like any other.
    if let HostVerdict::Block { rule, reason } = snap.policy.hosts.check(&dest.host, dest.port) {
        if snap.policy.mode == cork_policy::Mode::Enforce {
            exchange.refuse(&mut wire, &head, 403, &rule, &reason).await;
            return;
        }
    }
    head.target = path;
    head.headers.retain(|h| !h.is("host"));
    head.headers.push(Header::new("Host", dest.authority()));
    if dest.scheme == "https" {
        let tls = snap.upstream_tls_for(false, true).clone();
        match upstream::connect_tls(&snap.policy, &tls, &dest.host, dest.port).await {
            Ok(stream) => {
                exchange.relay(&mut wire, &mut Wire::new(stream), head).await;
            }
            Err(e) => {
                state.metrics.error(e.rule());
                exchange.refuse(&mut wire, &head, 502, e.rule(), &e.to_string()).await;
            }
        }
    } else {
        match upstream::connect_tcp(&snap.policy, &dest.host, dest.port).await {
            Ok(stream) => {
                exchange.relay(&mut wire, &mut Wire::new(stream), head).await;
            }
            Err(e) => {
                state.metrics.error(e.rule());
                exchange.refuse(&mut wire, &head, 502, e.rule(), &e.to_string()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(target: &str) -> (String, String, u16, String) {
        let (d, path) = parse_target(target).unwrap_or_else(|e| panic!("{target}: {e}"));
        (d.scheme.to_string(), d.host, d.port, path)
    }

    #[test]
    fn routes() {
        assert!(is_route("/ws?url=x"));
        assert!(is_route("/ws"));
        assert!(!is_route("/wsx?url=x"));
        assert!(!is_route("/fetch?url=x"));
    }

    #[test]
    fn targets() {
        assert_eq!(ok("/ws?url=wss://a.test/chat"), ("https".into(), "a.test".into(), 443, "/chat".into()));
        assert_eq!(ok("/ws?url=ws://a.test:8080"), ("http".into(), "a.test".into(), 8080, "/".into()));
        assert_eq!(ok("/ws?x=1&url=wss%3A%2F%2FA.test%3A8443%2Fp%3Fq%3D1"), ("https".into(), "a.test".into(), 8443, "/p?q=1".into()));
        assert_eq!(ok("/ws?url=wss://a.test?q=1"), ("https".into(), "a.test".into(), 443, "/?q=1".into()));
        assert_eq!(ok("/ws?url=wss://[::1]:9/x#frag"), ("https".into(), "::1".into(), 9, "/x".into()));
    }

    #[test]
    fn bad_targets() {
        assert_eq!(parse_target("/ws").unwrap_err(), WsUrlError::Missing);
        assert_eq!(parse_target("/ws?u=1").unwrap_err(), WsUrlError::Missing);
        assert_eq!(parse_target("/ws?url=https://a.test/").unwrap_err(), WsUrlError::Scheme);
        assert_eq!(parse_target("/ws?url=wss://a.test%zz").unwrap_err(), WsUrlError::Encoding);
        assert_eq!(parse_target("/ws?url=wss://a.test:0/").unwrap_err(), WsUrlError::Authority);
        assert_eq!(parse_target("/ws?url=wss://u:p@a.test/").unwrap_err(), WsUrlError::Authority);
        assert_eq!(parse_target("/ws?url=wss:///x").unwrap_err(), WsUrlError::Authority);
        assert_eq!(parse_target("/ws?url=wss://bad host/").unwrap_err(), WsUrlError::Authority);
    }
}
