//! The transparent listener: where a bottle's TCP connects land after the eBPF programs rewrote
//! them.
//!
//! The client believes it is talking to its original destination, so there is no CONNECT head:
//! cork looks up where the connection was going (the bottle's map, keyed by the client's port),
//! then reads the first bytes. A TLS ClientHello is judged by its SNI, plain HTTP by its `Host`
//! header; anything else is refused. The name is what the host rules check, and cork connects
//! upstream to that name, resolved by cork itself (pins first, internal addresses refused), never
//! to the IP the bottle dialled. When the dialled IP is not among the name's addresses the
//! connection's `steer` audit line says so (`steer.ip_mismatch`).
//!
//! Each connection writes one `steer` line (its decision, the dialled address and the pid), and
//! then the usual `request` lines of the relay, which carry the same `client` and `pid`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cork_http::RequestHead;
use cork_policy::{normalize_host, HostVerdict};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::audit::AuditRecord;
use crate::exchange::{head_limits, read_head, split_authority, After, Destination, Exchange};
use crate::inspect::record_block;
use crate::state::{ProxyState, Snapshot};
use crate::tunnel::{read_client_hello, Hello};
use crate::wire::{Prefixed, Wire};
use crate::{bump, tunnel, upstream};

/// How many bytes are read at most before the protocol must be clear.
const MAX_PEEK: usize = 16;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS handshake record.
    Tls,
    /// An HTTP/1 request line (`TOKEN ` with an upper-case method).
    Http,
    /// Not enough bytes to tell yet.
    NeedMore,
    Unknown,
}

/// Classifies the first bytes a client sent.
pub fn classify(bytes: &[u8]) -> FirstBytes {
    match bytes.first() {
        None => FirstBytes::NeedMore,
        Some(0x16) => FirstBytes::Tls,
        Some(_) => {
            for (i, b) in bytes.iter().enumerate().take(MAX_PEEK) {
                match b {
                    b' ' if i > 0 => return FirstBytes::Http,
                    b'A'..=b'Z' => {}
                    _ => return FirstBytes::Unknown,
                }
            }
            if bytes.len() >= MAX_PEEK {
                FirstBytes::Unknown
            } else {
                FirstBytes::NeedMore
            }
        }
    }
}

/// An IPv4-mapped IPv6 destination as the IPv4 address it is.
pub fn unmap(addr: SocketAddr) -> (SocketAddr, bool) {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (SocketAddr::new(IpAddr::V4(v4), addr.port()), true),
            None => (addr, false),
        },
        IpAddr::V4(_) => (addr, false),
    }
}

/// Accepts steered connections until the task is dropped. `lookup` maps a client's address (the
/// peer cork sees) to the destination it dialled and the pid that dialled it.
pub async fn serve<F>(listener: TcpListener, state: Arc<ProxyState>, lookup: F)
where
    F: Fn(SocketAddr) -> Option<(SocketAddr, u32)> + Send + Sync + 'static,
{
    crate::accept::accept_loop(listener, state, move |state, stream, peer| {
        // Looked up right away, while the bottle's map entry is fresh.
        let found = lookup(peer);
        handle(state, stream, peer, found)
    })
    .await
}

/// Forgets a client's pid when its connection ends.
struct PidRegistration<'a> {
    state: &'a ProxyState,
    client: String,
}

impl Drop for PidRegistration<'_> {
    fn drop(&mut self) {
        self.state.audit.forget_client(&self.client);
    }
}

/// The connection's decision line.
fn steer_record(state: &ProxyState, client: SocketAddr, pid: Option<u32>, orig: Option<SocketAddr>) -> AuditRecord {
    let mut record = AuditRecord::new(&state.instance, "steer", state.next_request_id(), client.to_string());
    record.pid = pid;
    if let Some(orig) = orig {
        record.host = Some(orig.ip().to_string());
        record.port = Some(orig.port());
        record.reason = Some(format!("dialled {orig}"));
    }
    record
}

fn refuse(state: &ProxyState, mut record: AuditRecord, rule: &str, reason: String) {
    let dialled = record.reason.take();
    let reason = match dialled {
        Some(d) => format!("{reason} ({d})"),
        None => reason,
    };
    record_block(&mut record, cork_policy::Mode::Enforce, rule, reason);
    state.metrics.error(rule);
    state.audit.write(&record);
}

async fn handle(state: Arc<ProxyState>, mut stream: TcpStream, client: SocketAddr, found: Option<(SocketAddr, u32)>) {
    state.metrics.connection("transparent");
    let Some((dialled, pid)) = found else {
        let record = steer_record(&state, client, None, None);
        return refuse(
            &state,
            record,
            "steer.no_original_destination",
            "no original destination is recorded for this connection (not from a bottle, or a stale entry)".into(),
        );
    };
    let (orig, mapped) = unmap(dialled);
    let client_key = client.to_string();
    state.audit.register_client(&client_key, pid);
    let _registration = PidRegistration { state: &state, client: client_key };
    let snap = state.snapshot();
    let mut record = steer_record(&state, client, Some(pid), Some(orig));
    if mapped {
        record.reason = Some(format!("dialled {orig} (as IPv4-mapped {dialled})"));
    }

    // Checked before peeking: in most raw protocols (SSH, SMTP, databases) the server speaks
    // first, so the client would send nothing to peek at.
    if let Some(entry) = raw_tcp_entry(&snap, orig).await {
        return raw_tcp(&state, stream, orig, entry, record).await;
    }

    let wait = Duration::from_secs(snap.policy.limits.handshake_timeout_secs);
    let peeked = match tokio::time::timeout(wait, peek(&mut stream)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return refuse(&state, record, "steer.unknown_protocol", format!("reading the first bytes failed: {e}")),
        Err(_) => return refuse(&state, record, "steer.unknown_protocol", format!("the client sent nothing recognisable within {} s", wait.as_secs())),
    };
    match classify(&peeked) {
        FirstBytes::Tls => tls(state.clone(), snap, client, stream, peeked, orig, record).await,
        FirstBytes::Http => http(state.clone(), snap, client, stream, peeked, orig, record).await,
        FirstBytes::NeedMore if peeked.is_empty() => refuse(&state, record, "steer.unknown_protocol", "the client closed without sending anything".into()),
        FirstBytes::NeedMore | FirstBytes::Unknown => {
            let shown: String = peeked.iter().take(8).map(|b| format!("{b:02x}")).collect();
            refuse(&state, record, "steer.unknown_protocol", format!("neither TLS nor HTTP (first bytes {shown})"))
        }
    }
}

/// The `hosts.raw_tcp` entry that names the dialled address, if any: an IP literal equal to it,
/// or a name that cork resolves (pins first) to it, on the same port.
async fn raw_tcp_entry(snap: &Snapshot, orig: SocketAddr) -> Option<String> {
    for (host, port) in snap.policy.hosts.raw_tcp_entries() {
        if port != orig.port() {
            continue;
        }
        let matches = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip == orig.ip(),
            Err(_) => upstream::resolve(&snap.policy, &host, port).await.is_ok_and(|addrs| addrs.iter().any(|a| unmap(*a).0.ip() == orig.ip())),
        };
        if matches {
            return Some(format!("{host}:{port}"));
        }
    }
    None
}

/// Tunnels an allowed raw TCP connection to the address the bottle dialled (which the entry
/// vouches for), unscanned, and audits it with the bytes moved each way.
async fn raw_tcp(state: &ProxyState, stream: TcpStream, orig: SocketAddr, entry: String, mut record: AuditRecord) {
    let started = std::time::Instant::now();
    record.rules.push("steer.raw_tcp".into());
    let note = format!("raw TCP allowed by hosts.raw_tcp entry {entry}; not scanned");
    record.reason = Some(match record.reason.take() {
        Some(r) => format!("{r}; {note}"),
        None => note,
    });
    let limit = Duration::from_secs(state.snapshot().policy.upstream.connect_timeout_secs.max(1));
    let upstream_io = match tokio::time::timeout(limit, TcpStream::connect(orig)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(state, record, "upstream.unreachable", format!("connecting to {orig} failed: {e}")),
        Err(_) => return refuse(state, record, "upstream.unreachable", format!("connecting to {orig} timed out")),
    };
    match crate::relay::tunnel(state.snapshot().policy.limits.io_uring, stream, upstream_io).await {
        Ok((up, down, path)) => {
            record.bytes_up = up;
            record.bytes_down = down;
            record.relay = Some(path.as_str());
            state.metrics.connection(&format!("raw_tcp_{}", path.as_str()));
            state.metrics.relay_path(path.as_str());
        }
        Err(e) => record.reason = record.reason.take().map(|r| format!("{r}; ended with an error: {e}")),
    }
    record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    state.metrics.bytes(record.bytes_up, record.bytes_down);
    state.audit.write(&record);
}

/// Reads until [`classify`] can tell, or the client closes.
async fn peek(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        if classify(&bytes) != FirstBytes::NeedMore {
            return Ok(bytes);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// Notes in `record` when the dialled IP is not one of the addresses cork resolves `host` to.
async fn note_mismatch(snap: &Snapshot, host: &str, orig: SocketAddr, record: &mut AuditRecord) {
    let note = match upstream::resolve(&snap.policy, host, orig.port()).await {
        Ok(addrs) if addrs.iter().any(|a| unmap(*a).0.ip() == orig.ip()) => return,
        Ok(addrs) => {
            let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            format!("the bottle dialled {} but {host} resolves to [{}]; cork connects to the name", orig.ip(), shown.join(", "))
        }
        Err(e) => format!("the bottle dialled {} but cork cannot resolve {host}: {e}", orig.ip()),
    };
    record.rules.push("steer.ip_mismatch".into());
    record.reason = Some(match record.reason.take() {
        Some(r) => format!("{r}; {note}"),
        None => note,
    });
}

/// Applies the host rules to `host`, writing the steer line. Returns the verdict to act on, or
/// `None` when the connection is refused.
fn judge(state: &ProxyState, snap: &Snapshot, host: &str, port: u16, mut record: AuditRecord) -> Option<HostVerdict> {
    record.host = Some(host.to_string());
    record.port = Some(port);
    let verdict = snap.policy.hosts.check(host, port);
    match &verdict {
        HostVerdict::Block { rule, reason } => {
            let reason = match record.reason.take() {
                Some(d) => format!("{reason} ({d})"),
                None => reason.clone(),
            };
            record_block(&mut record, snap.policy.mode, rule, reason);
            state.audit.write(&record);
            if record.enforced {
                return None;
            }
            Some(HostVerdict::Allow)
        }
        HostVerdict::Passthrough => {
            record.rules.push("host.passthrough".into());
            state.audit.write(&record);
            Some(verdict)
        }
        HostVerdict::Allow => {
            state.audit.write(&record);
            Some(verdict)
        }
    }
}

async fn tls(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, mut stream: TcpStream, peeked: Vec<u8>, orig: SocketAddr, mut record: AuditRecord) {
    let wait = Duration::from_secs(snap.policy.limits.handshake_timeout_secs);
    let (raw, hello) = match tokio::time::timeout(wait, read_client_hello(&mut stream, peeked)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return refuse(&state, record, "tls.client_hello", e.to_string()),
        Err(_) => return refuse(&state, record, "tls.handshake_timeout", "no complete ClientHello in time".into()),
    };
    let sni = match hello {
        Hello::NotTls(reason) => return refuse(&state, record, "tls.client_hello", format!("not a TLS ClientHello: {reason}")),
        Hello::Sni(None) => {
            return refuse(&state, record, "steer.no_sni", "a ClientHello without SNI names no host to check".into());
        }
        Hello::Sni(Some(sni)) => sni,
    };
    if cork_ca::LeafName::parse(&sni).is_err() || sni.parse::<IpAddr>().is_ok() {
        return refuse(&state, record, "steer.bad_sni", format!("SNI {sni:?} is not a DNS name"));
    }
    note_mismatch(&snap, &sni, orig, &mut record).await;
    let Some(verdict) = judge(&state, &snap, &sni, orig.port(), record) else { return };
    let dest = Destination { scheme: "https", host: sni, port: orig.port() };
    if verdict == HostVerdict::Passthrough {
        tunnel::passthrough(state, snap, client, stream, raw, dest).await
    } else {
        bump::intercept(state, snap, client, Prefixed::new(raw, stream), dest).await
    }
}

async fn http(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, stream: TcpStream, peeked: Vec<u8>, orig: SocketAddr, mut record: AuditRecord) {
    let limits = head_limits(&snap);
    let idle = Duration::from_secs(snap.policy.limits.idle_timeout_secs);
    let complete = Duration::from_secs(snap.policy.limits.head_timeout_secs);
    let mut wire = Wire::with_buffered(stream, peeked).with_plain_fd(crate::wire::tcp_fd);
    let head = match read_head(&mut wire, &limits, complete, complete, RequestHead::parse).await {
        Ok(Some(head)) => head,
        Ok(None) => return refuse(&state, record, "http.truncated", "the client closed inside its first head".into()),
        Err(e) => {
            if matches!(e, crate::exchange::HeadReadError::Malformed(_)) {
                let _ = wire.send(&crate::respond::bad_request(e.rule(), &e.to_string(), &record.request_id)).await;
            }
            return refuse(&state, record, e.rule(), e.to_string());
        }
    };
    let host_header = head.headers.iter().filter(|h| h.is("host")).map(|h| String::from_utf8_lossy(&h.value).into_owned()).collect::<Vec<_>>();
    let host = match host_header.as_slice() {
        [one] => normalize_host(split_authority(one.trim()).0),
        _ => String::new(),
    };
    let dest = Destination { scheme: "http", host: host.clone(), port: orig.port() };
    let exchange = Exchange { state: &state, snap: &snap, client, dest: &dest };
    if host.is_empty() || host.parse::<IpAddr>().is_ok() {
        let reason = "a steered plain-HTTP request must name its host in exactly one Host header";
        refuse(&state, record, "steer.no_host", reason.into());
        exchange.refuse(&mut wire, &head, 400, "steer.no_host", reason).await;
        return;
    }
    note_mismatch(&snap, &host, orig, &mut record).await;
    match judge(&state, &snap, &host, orig.port(), record) {
        None => {
            let (rule, reason) = match snap.policy.hosts.check(&host, orig.port()) {
                HostVerdict::Block { rule, reason } => (rule, reason),
                _ => ("host.not_allowed".into(), format!("{host} is not allowed")),
            };
            exchange.refuse(&mut wire, &head, 403, &rule, &reason).await;
            return;
        }
        Some(HostVerdict::Passthrough) => {
            exchange.refuse(&mut wire, &head, 403, "steer.passthrough_plain_http", "passthrough applies to TLS only").await;
            return;
        }
        Some(_) => {}
    }
    let mut upstream_wire = match upstream::connect_tcp(&snap.policy, &host, orig.port()).await {
        Ok(stream) => Wire::new(stream).with_plain_fd(crate::wire::tcp_fd),
        Err(e) => {
            exchange.refuse(&mut wire, &head, 502, e.rule(), &e.to_string()).await;
            return;
        }
    };
    let mut next = Some(head);
    while let Some(head) = next.take() {
        if exchange.relay(&mut wire, &mut upstream_wire, head).await == After::Close {
            return;
        }
        next = match read_head(&mut wire, &limits, idle, complete, RequestHead::parse).await {
            Ok(head) => head,
            Err(e) => {
                let mut rec = AuditRecord::new(&state.instance, "connection", state.next_request_id(), client.to_string());
                rec.host = Some(host.clone());
                rec.port = Some(orig.port());
                return refuse(&state, rec, e.rule(), e.to_string());
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes() {
        assert_eq!(classify(b""), FirstBytes::NeedMore);
        assert_eq!(classify(b"\x16\x03\x01"), FirstBytes::Tls);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), FirstBytes::Http);
        assert_eq!(classify(b"POS"), FirstBytes::NeedMore);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), FirstBytes::Unknown);
        assert_eq!(classify(b"\x00\x01garbage"), FirstBytes::Unknown);
        assert_eq!(classify(b" GET"), FirstBytes::Unknown);
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAA"), FirstBytes::Unknown);
    }

    #[test]
    fn mapped_addresses_unmap() {
        let (a, m) = unmap("[::ffff:127.0.0.2]:443".parse().unwrap());
        assert_eq!((a, m), ("127.0.0.2:443".parse().unwrap(), true));
        let (a, m) = unmap("[::1]:443".parse().unwrap());
        assert_eq!((a, m), ("[::1]:443".parse().unwrap(), false));
    }
}
