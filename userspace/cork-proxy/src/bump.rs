//! TLS interception of a CONNECT tunnel (or, later, a transparently steered connection).
//!
//! The ClientHello is read first, without answering it. Its SNI must name the destination that
//! was checked. Then cork connects to the real destination and completes a fully verified
//! handshake with it, and only then finishes the client's handshake with a leaf for that
//! destination signed by this instance's CA. After that the tunnel is a series of HTTP/1.1
//! exchanges relayed through the scanner, or an HTTP/2 connection relayed stream by stream.
//!
//! ALPN is negotiated end to end: the upstream is offered what the client offered (of `h2` and
//! `http/1.1`), and the client is given exactly what the upstream chose. A client offering `h2`
//! gets `h2` whenever the upstream speaks it; cork never translates between the two versions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cork_ca::LeafName;
use cork_http::RequestHead;
use cork_policy::normalize_host;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use crate::audit::AuditRecord;
use crate::exchange::{head_limits, read_head, After, Destination, Exchange};
use crate::inspect::record_block;
use crate::ktls_leg::{self, IntoTcp, RecordExact};
use crate::linger::Linger;
use crate::state::{crypto_provider, ProxyState, Snapshot};
use crate::upstream;
use crate::wire::Wire;

const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

#[derive(Debug)]
struct FixedLeaf(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedLeaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Records a connection-level decision (no HTTP request was read).
pub(crate) fn connection_record(state: &ProxyState, snap: &Snapshot, client: SocketAddr, dest: &Destination, kind: &'static str, rule: &str, reason: &str) {
    let mut record = AuditRecord::new(&state.instance, kind, state.next_request_id(), client.to_string());
    record.host = Some(dest.host.clone());
    record.port = Some(dest.port);
    record_block(&mut record, if rule.starts_with("fronting") { snap.policy.mode } else { cork_policy::Mode::Enforce }, rule, reason);
    state.metrics.error(rule);
    state.audit.write(&record);
}

/// Intercepts TLS on `client_io` for `dest`, then relays HTTP/1.1 exchanges until either side
/// closes. Every failure is audited.
pub async fn intercept<S>(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, client_io: S, dest: Destination)
where
    S: AsyncRead + AsyncWrite + IntoTcp + Unpin + Send + 'static,
{
    // Two boxed phases: the handshakes' state is freed once they are done, so a connection that
    // idles between exchanges (most of those a proxy holds) keeps only its two legs.
    if let Some(bumped) = Box::pin(handshake(state, snap, client, client_io, dest)).await {
        Box::pin(keep_alive(bumped)).await
    }
}

/// A bumped HTTP/1.1 connection between its handshakes and its first exchange.
struct Bumped<C, U> {
    state: Arc<ProxyState>,
    snap: Arc<Snapshot>,
    client: SocketAddr,
    dest: Destination,
    client_wire: Wire<ktls_leg::Leg<C>>,
    upstream_wire: Wire<ktls_leg::Leg<U>>,
}

/// For the handshake's early ends: the record is written, and nothing goes on.
fn audited<T>(_: ()) -> Option<T> {
    None
}

type ClientTls<S> = tokio_rustls::server::TlsStream<RecordExact<S>>;
type UpstreamTls = tokio_rustls::client::TlsStream<RecordExact<tokio::net::TcpStream>>;

/// Both handshakes, and HTTP/2 to its end. Returns the legs when HTTP/1.1 goes on.
async fn handshake<S>(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, client_io: S, dest: Destination) -> Option<Bumped<ClientTls<S>, UpstreamTls>>
where
    S: AsyncRead + AsyncWrite + IntoTcp + Unpin + Send + 'static,
{
    let limits = &snap.policy.limits;
    let handshake = Duration::from_secs(limits.handshake_timeout_secs);
    let conn = ktls_leg::Conn { state: &state, client, dest: &dest };
    let ktls = ktls_leg::plan(&conn, &snap);
    let client_io = RecordExact::new(client_io, ktls);
    let start = match tokio::time::timeout(handshake, LazyConfigAcceptor::new(Acceptor::default(), client_io)).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return audited(connection_record(&state, &snap, client, &dest, "connection", "tls.client_hello", &format!("not a TLS ClientHello: {e}"))),
        Err(_) => return audited(connection_record(&state, &snap, client, &dest, "connection", "tls.handshake_timeout", "the client did not send a ClientHello in time")),
    };
    let sni = start.client_hello().server_name().map(normalize_host);
    if let Some(sni) = &sni {
        if *sni != normalize_host(&dest.host) {
            let reason = format!("TLS SNI {sni} does not match the CONNECT target {}", dest.host);
            if snap.policy.mode == cork_policy::Mode::Enforce {
                return audited(connection_record(&state, &snap, client, &dest, "connection", "fronting.sni_mismatch", &reason));
            }
            connection_record(&state, &snap, client, &dest, "connection", "fronting.sni_mismatch", &reason);
        }
    }

    let (offers_h2, offers_h1) = match start.client_hello().alpn() {
        Some(protocols) => protocols.fold((false, false), |(h2, h1), p| (h2 || p == H2, h1 || p == HTTP11)),
        // No ALPN at all means HTTP/1.1.
        None => (false, true),
    };

    // Upstream first: its failure is reported to the client over the intercepted connection.
    let upstream_tls = snap.upstream_tls_for(offers_h2, offers_h1).clone();
    let upstream_result = upstream::connect_leg(&snap.policy, &upstream_tls, &dest.host, dest.port, ktls).await;
    let chosen: Option<Vec<u8>> = match &upstream_result {
        Ok(stream) => stream.alpn_protocol().map(<[u8]>::to_vec),
        // Nothing upstream to mirror: the refusal is given in HTTP/1.1 when the client speaks it.
        Err(_) if offers_h1 => Some(HTTP11.to_vec()),
        Err(_) => None,
    };

    let leaf = match LeafName::parse(&dest.host).and_then(|name| state.leaves.get(&name)) {
        Ok(leaf) => leaf,
        Err(e) => return audited(connection_record(&state, &snap, client, &dest, "connection", "tls.leaf", &e.to_string())),
    };
    let mut server_config = match rustls::ServerConfig::builder_with_provider(crypto_provider()).with_safe_default_protocol_versions() {
        Ok(b) => b.with_no_client_auth().with_cert_resolver(Arc::new(FixedLeaf(leaf))),
        Err(e) => return audited(connection_record(&state, &snap, client, &dest, "connection", "tls.config", &e.to_string())),
    };
    // Exactly the upstream's choice (or none, when the upstream chose none).
    server_config.alpn_protocols = chosen.clone().into_iter().collect();
    // The client leg goes to the kernel only when there is an upstream leg to relay to.
    let ktls_client = ktls && upstream_result.is_ok();
    server_config.enable_secret_extraction = ktls_client;
    let tls = match tokio::time::timeout(handshake, ktls_leg::accept(start, Arc::new(server_config), ktls_client)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return audited(connection_record(&state, &snap, client, &dest, "connection", "tls.client_handshake", &e.to_string())),
        Err(_) => return audited(connection_record(&state, &snap, client, &dest, "connection", "tls.handshake_timeout", "the client did not finish its handshake in time")),
    };
    // Both legs move to the kernel here when they were handshaken for it; a refusal now ends the
    // connection (see ktls_leg::plan).
    let upstream_result = match upstream_result {
        Ok(stream) => match ktls_leg::offload(&conn, "upstream", stream) {
            Ok(leg) => Ok(leg),
            Err(e) => return audited(connection_record(&state, &snap, client, &dest, "connection", "tls.ktls_offload", &e.to_string())),
        },
        Err(err) => Err(err),
    };
    let client_leg = match ktls_leg::offload(&conn, "client", tls) {
        Ok(leg) => leg,
        Err(e) => return audited(connection_record(&state, &snap, client, &dest, "connection", "tls.ktls_offload", &e.to_string())),
    };
    if chosen.as_deref() == Some(H2) {
        match upstream_result {
            Ok(upstream) => {
                // cork may end this connection with a GOAWAY while the client still sends.
                let linger = client_leg.socket().and_then(|fd| Linger::hold(fd).ok());
                let reports = (client_leg.report(), upstream.report());
                // Boxed: the h2 relay's state is only needed on this path.
                Box::pin(crate::h2relay::relay(state.clone(), snap.clone(), client, dest.clone(), client_leg, upstream)).await;
                ktls_leg::audit_key_updates(&ktls_leg::Conn { state: &state, client, dest: &dest }, &snap, reports.0.as_deref(), reports.1.as_deref());
                if let Some(linger) = linger {
                    linger.drain().await;
                }
            }
            Err(err) => {
                state.metrics.error(err.rule());
                connection_record(&state, &snap, client, &dest, "connection", err.rule(), &err.to_string());
            }
        }
        return None;
    }
    if upstream_result.is_err() && !offers_h1 {
        // An h2-only client whose upstream failed: no common protocol to answer in.
        if let Err(err) = &upstream_result {
            state.metrics.error(err.rule());
            connection_record(&state, &snap, client, &dest, "connection", err.rule(), &err.to_string());
        }
        return None;
    }
    let mut client_wire = Wire::new(client_leg).with_plain_fd(ktls_leg::Leg::plain_fd);
    let upstream_wire = match upstream_result {
        Ok(stream) => Wire::new(stream).with_plain_fd(ktls_leg::Leg::plain_fd),
        Err(err) => {
            // Read the request so the refusal is audited with it, then answer 502.
            let exchange = Exchange { state: &state, snap: &snap, client, dest: &dest };
            let head_timeout = Duration::from_secs(limits.head_timeout_secs);
            if let Ok(Some(head)) = read_head(&mut client_wire, &head_limits(&snap), head_timeout, head_timeout, RequestHead::parse).await {
                exchange.refuse(&mut client_wire, &head, 502, err.rule(), &err.to_string()).await;
            } else {
                connection_record(&state, &snap, client, &dest, "connection", err.rule(), &err.to_string());
            }
            state.metrics.error(err.rule());
            return None;
        }
    };
    Some(Bumped { state, snap, client, dest, client_wire, upstream_wire })
}

/// Relays HTTP/1.1 exchanges until either side closes.
async fn keep_alive<C, U>(bumped: Bumped<C, U>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Bumped { state, snap, client, dest, mut client_wire, mut upstream_wire } = bumped;
    let limits = &snap.policy.limits;
    let exchange = Exchange { state: &state, snap: &snap, client, dest: &dest };
    let head_limits = head_limits(&snap);
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let head_timeout = Duration::from_secs(limits.head_timeout_secs);
    loop {
        let head = match read_head(&mut client_wire, &head_limits, idle, head_timeout, RequestHead::parse).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(e) => {
                connection_record(&state, &snap, client, &dest, "connection", e.rule(), &e.to_string());
                if matches!(e, crate::exchange::HeadReadError::Malformed(_)) {
                    let id = state.next_request_id();
                    let _ = client_wire.send(&crate::respond::bad_request(e.rule(), &e.to_string(), &id)).await;
                }
                break;
            }
        };
        if exchange.relay(&mut client_wire, &mut upstream_wire, head).await == After::Close {
            break;
        }
        // Between exchanges the upstream side idles too; it needs no buffer then.
        upstream_wire.release_if_empty();
    }
    ktls_leg::audit_key_updates(&ktls_leg::Conn { state: &state, client, dest: &dest }, &snap, client_wire.io.report().as_deref(), upstream_wire.io.report().as_deref());
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut client_wire.io).await;
}
