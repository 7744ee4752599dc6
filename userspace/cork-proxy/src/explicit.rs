//! The explicit proxy listener: `CONNECT host:port` (intercepted or passed through) and
//! absolute-URI forward proxying of plain HTTP, plus cork's own endpoints (`/ws?url=`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cork_http::RequestHead;
use cork_policy::HostVerdict;
use tokio::net::{TcpListener, TcpStream};

use crate::audit::AuditRecord;
use crate::exchange::{head_limits, read_head, split_authority, After, Destination, Exchange};
use crate::inspect::record_block;
use crate::state::{ProxyState, Snapshot};
use crate::wire::{Prefixed, Wire};
use crate::{bump, fetch, respond, tunnel, upstream};

/// Serves explicit-proxy clients on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) {
    crate::accept::accept_loop(listener, state, handle).await
}

async fn handle(state: Arc<ProxyState>, stream: TcpStream, client: SocketAddr) {
    let snap = state.snapshot();
    let limits = head_limits(&snap);
    let first = Duration::from_secs(snap.policy.limits.handshake_timeout_secs);
    let complete = Duration::from_secs(snap.policy.limits.head_timeout_secs);
    let mut wire = Wire::new(stream).with_plain_fd(crate::wire::tcp_fd);
    let head = match read_head(&mut wire, &limits, first, complete, RequestHead::parse).await {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(e) => {
            let mut record = AuditRecord::new(&state.instance, "connection", state.next_request_id(), client.to_string());
            record_block(&mut record, cork_policy::Mode::Enforce, e.rule(), e.to_string());
            state.metrics.error(e.rule());
            if matches!(e, crate::exchange::HeadReadError::Malformed(_)) {
                let _ = wire.send(&respond::bad_request(e.rule(), &e.to_string(), &record.request_id)).await;
            }
            state.audit.write(&record);
            return;
        }
    };
    // Each kind of connection is boxed, so a connection's task is as large as its own kind needs
    // (an idle bumped connection is in memory for as long as the agent keeps it).
    if head.method.eq_ignore_ascii_case("CONNECT") {
        state.metrics.connection("connect");
        Box::pin(connect(state, snap, client, wire, head)).await
    } else if fetch::is_fetch(&head) {
        state.metrics.connection("fetch");
        Box::pin(fetch::serve(state.clone(), snap, client, &mut wire, &head)).await;
    } else if head.target.starts_with("http://") {
        state.metrics.connection("forward");
        Box::pin(forward(state, snap, client, wire, head)).await
    } else if crate::ws_endpoint::is_route(&head.target) {
        Box::pin(crate::ws_endpoint::serve(state, snap, client, wire, head)).await
    } else {
        state.metrics.connection("invalid");
        let (rule, reason) = if head.target.starts_with("https://") {
            ("proxy.https_absolute_uri", "send https:// requests through CONNECT")
        } else {
            ("proxy.not_a_proxy_request", "cork is a proxy: send CONNECT host:port or an absolute http:// URI")
        };
        let dest = Destination { scheme: "http", host: String::new(), port: 0 };
        let exchange = Exchange { state: &state, snap: &snap, client, dest: &dest };
        exchange.refuse(&mut wire, &head, 400, rule, reason).await;
    }
}

/// Parses a CONNECT target: `host:port`, port required.
fn connect_target(target: &str) -> Option<(String, u16)> {
    let (host, port) = split_authority(target);
    let port: u16 = port?.parse().ok().filter(|p| *p != 0)?;
    let host = cork_policy::normalize_host(host);
    (!host.is_empty() && cork_ca::LeafName::parse(&host).is_ok()).then_some((host, port))
}

async fn connect(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, mut wire: Wire<TcpStream>, head: RequestHead) {
    let mut record = AuditRecord::new(&state.instance, "connect", state.next_request_id(), client.to_string());
    record.method = Some("CONNECT".into());
    let Some((host, port)) = connect_target(&head.target) else {
        record_block(&mut record, cork_policy::Mode::Enforce, "proxy.bad_connect_target", format!("invalid CONNECT target {:?}", head.target));
        let _ = wire.send(&respond::bad_request("proxy.bad_connect_target", "CONNECT needs host:port", &record.request_id)).await;
        state.audit.write(&record);
        return;
    };
    record.host = Some(host.clone());
    record.port = Some(port);
    let verdict = snap.policy.hosts.check(&host, port);
    if let HostVerdict::Block { rule, reason } = &verdict {
        record_block(&mut record, snap.policy.mode, rule, reason.clone());
        if record.enforced {
            record.status = Some(403);
            let _ = wire.send(&respond::blocked(rule, reason, &record.request_id, false)).await;
            state.audit.write(&record);
            return;
        }
    }
    let dest = Destination { scheme: "https", host, port };
    if wire.send(respond::CONNECT_ESTABLISHED).await.is_err() {
        return;
    }
    record.status = Some(200);
    let passthrough = verdict == HostVerdict::Passthrough;
    if passthrough {
        record.rules.push("host.passthrough".into());
    }
    state.audit.write(&record);
    // Bytes the client sent right behind the CONNECT head (a pipelined ClientHello) are kept.
    let (stream, early) = wire.into_parts();
    if passthrough {
        Box::pin(tunnel::passthrough(state, snap, client, stream, early, dest)).await
    } else {
        Box::pin(bump::intercept(state, snap, client, Prefixed::new(early, stream), dest)).await
    }
}

/// Absolute-URI forward proxying of plain HTTP, one request at a time.
async fn forward(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, mut wire: Wire<TcpStream>, first: RequestHead) {
    let limits = head_limits(&snap);
    let idle = Duration::from_secs(snap.policy.limits.idle_timeout_secs);
    let complete = Duration::from_secs(snap.policy.limits.head_timeout_secs);
    let mut upstream_conn: Option<(String, u16, Wire<TcpStream>)> = None;
    let mut next = Some(first);
    while let Some(mut head) = next.take() {
        let Some(rest) = head.target.strip_prefix("http://").map(str::to_string) else {
            let dest = Destination { scheme: "http", host: String::new(), port: 0 };
            Exchange { state: &state, snap: &snap, client, dest: &dest }
                .refuse(&mut wire, &head, 400, "proxy.mixed_request_forms", "a forward-proxy connection carries only absolute http:// URIs")
                .await;
            return;
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.clone(), "/".to_string()),
        };
        let (host, port) = split_authority(&authority);
        let port = match port {
            None => Some(80),
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0),
        };
        let dest = Destination { scheme: "http", host: cork_policy::normalize_host(host), port: port.unwrap_or(0) };
        let exchange = Exchange { state: &state, snap: &snap, client, dest: &dest };
        if port.is_none() || dest.host.is_empty() {
            exchange.refuse(&mut wire, &head, 400, "http.malformed", "invalid URI authority").await;
            return;
        }
        if let HostVerdict::Block { rule, reason } = snap.policy.hosts.check(&dest.host, dest.port) {
            if snap.policy.mode == cork_policy::Mode::Enforce {
                if exchange.refuse(&mut wire, &head, 403, &rule, &reason).await == After::Close {
                    return;
                }
                next = read_head(&mut wire, &limits, idle, complete, RequestHead::parse).await.ok().flatten();
                continue;
            }
        }
        let reuse = matches!(&upstream_conn, Some((h, p, _)) if *h == dest.host && *p == dest.port);
        if !reuse {
            match upstream::connect_tcp(&snap.policy, &dest.host, dest.port).await {
                Ok(stream) => upstream_conn = Some((dest.host.clone(), dest.port, Wire::new(stream).with_plain_fd(crate::wire::tcp_fd))),
                Err(e) => {
                    exchange.refuse(&mut wire, &head, 502, e.rule(), &e.to_string()).await;
                    return;
                }
            }
        }
        let (_, _, upstream_wire) = upstream_conn.as_mut().expect("connected above");
        head.target = if path.starts_with('?') { format!("/{path}") } else { path };
        if exchange.relay(&mut wire, upstream_wire, head).await == After::Close {
            return;
        }
        upstream_wire.release_if_empty();
        next = match read_head(&mut wire, &limits, idle, complete, RequestHead::parse).await {
            Ok(head) => head,
            Err(e) => {
                crate::bump::connection_record(&state, &snap, client, &dest, "connection", e.rule(), &e.to_string());
                None
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets() {
        assert_eq!(connect_target("a.test:443"), Some(("a.test".into(), 443)));
        assert_eq!(connect_target("[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(connect_target("a.test"), None);
        assert_eq!(connect_target("a.test:0"), None);
        assert_eq!(connect_target("a.test:99999"), None);
        assert_eq!(connect_target("bad host:443"), None);
    }
}
