//! Passthrough: tunnelling TLS without interception, for clients that pin certificates.
//!
//! Only names are checked. The ClientHello is parsed (not answered) so that its SNI can be held
//! against the CONNECT target, then the bytes read so far and everything after them are copied
//! between the two sides unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cork_policy::normalize_host;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::AuditRecord;
use crate::bump::connection_record;
use crate::exchange::Destination;
use crate::state::{ProxyState, Snapshot};
use crate::upstream;

/// A ClientHello larger than this is refused (they are a few hundred bytes, post-quantum ones a
/// couple of kilobytes).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

pub(crate) enum Hello {
    Sni(Option<String>),
    NotTls(String),
}

/// Reads until rustls has a complete ClientHello. Returns the raw bytes read and what they said.
pub(crate) async fn read_client_hello<S: AsyncRead + Unpin>(io: &mut S, mut raw: Vec<u8>) -> std::io::Result<(Vec<u8>, Hello)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    loop {
        while fed < raw.len() {
            let mut rest = &raw[fed..];
            match acceptor.read_tls(&mut rest) {
                Ok(n) => fed += n,
                Err(e) => return Ok((raw, Hello::NotTls(e.to_string()))),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(normalize_host);
                return Ok((raw, Hello::Sni(sni)));
            }
            Ok(None) => {}
            Err((e, _)) => return Ok((raw, Hello::NotTls(e.to_string()))),
        }
        if raw.len() > MAX_CLIENT_HELLO {
            return Ok((raw, Hello::NotTls("ClientHello too large".into())));
        }
        let mut buf = [0u8; 8192];
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok((raw, Hello::NotTls("connection closed before a ClientHello".into())));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

pub async fn passthrough(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, mut client_io: TcpStream, already_read: Vec<u8>, dest: Destination) {
    let started = Instant::now();
    let handshake = Duration::from_secs(snap.policy.limits.handshake_timeout_secs);
    let (raw, hello) = match tokio::time::timeout(handshake, read_client_hello(&mut client_io, already_read)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return connection_record(&state, &snap, client, &dest, "tunnel", "tls.client_hello", &e.to_string()),
        Err(_) => return connection_record(&state, &snap, client, &dest, "tunnel", "tls.handshake_timeout", "no ClientHello in time"),
    };
    match hello {
        Hello::NotTls(reason) => {
            return connection_record(&state, &snap, client, &dest, "tunnel", "tls.client_hello", &format!("not a TLS ClientHello: {reason}"))
        }
        Hello::Sni(Some(sni)) if sni != normalize_host(&dest.host) => {
            let reason = format!("TLS SNI {sni} does not match the CONNECT target {}", dest.host);
            connection_record(&state, &snap, client, &dest, "tunnel", "fronting.sni_mismatch", &reason);
            if snap.policy.mode == cork_policy::Mode::Enforce {
                return;
            }
        }
        Hello::Sni(_) => {}
    }
    let mut upstream_io = match upstream::connect_tcp(&snap.policy, &dest.host, dest.port).await {
        Ok(s) => s,
        Err(e) => return connection_record(&state, &snap, client, &dest, "tunnel", e.rule(), &e.to_string()),
    };
    let mut record = AuditRecord::new(&state.instance, "tunnel", state.next_request_id(), client.to_string());
    record.host = Some(dest.host.clone());
    record.port = Some(dest.port);
    record.rules.push("host.passthrough".into());
    let copied = async {
        upstream_io.write_all(&raw).await?;
        crate::relay::tunnel(snap.policy.limits.io_uring, client_io, upstream_io).await
    }
    .await;
    match copied {
        Ok((up, down, path)) => {
            record.bytes_up = up + raw.len() as u64;
            record.bytes_down = down;
            record.relay = Some(path.as_str());
            state.metrics.connection(&format!("tunnel_{}", path.as_str()));
            state.metrics.relay_path(path.as_str());
        }
        Err(e) => record.reason = Some(format!("tunnel ended with an error: {e}")),
    }
    record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    state.metrics.bytes(record.bytes_up, record.bytes_down);
    state.audit.write(&record);
}
