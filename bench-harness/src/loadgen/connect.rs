//! Opening one client connection: TCP, an optional `CONNECT` tunnel through an explicit proxy,
//! then TLS verified against the given CA, with ALPN chosen for the protocol under test.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::HarnessError;

/// Any byte stream a hyper client connection can run on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Largest proxy `CONNECT` response head accepted.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// Everything needed to open a connection to the target, reused by every worker.
pub struct Connector {
    /// `host:port` as written in the `CONNECT` request line.
    authority: String,
    /// Where the TCP connection goes: the proxy, or the target itself.
    dial: SocketAddr,
    via_proxy: bool,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Connector {
    /// `tls_roots` empty means plain HTTP to the target; `via_proxy` tunnels with `CONNECT`.
    pub fn new(
        host: &str,
        port: u16,
        dial: SocketAddr,
        via_proxy: bool,
        tls_roots: Option<Vec<CertificateDer<'static>>>,
        alpn: Vec<Vec<u8>>,
        resumption: bool,
    ) -> Result<Self, HarnessError> {
        let tls = match tls_roots {
            None => None,
            Some(roots) => {
                let mut store = rustls::RootCertStore::empty();
                for cert in roots {
                    store
                        .add(cert)
                        .map_err(|e| HarnessError::Config(format!("bad CA certificate: {e}")))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(store)
                    .with_no_client_auth();
                cfg.alpn_protocols = alpn;
                if !resumption {
                    // Measure full handshakes: a resumed session would skip the proxy's leaf work.
                    cfg.resumption = rustls::client::Resumption::disabled();
                }
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| HarnessError::Config(format!("bad server name {host:?}: {e}")))?;
                Some((TlsConnector::from(Arc::new(cfg)), name))
            }
        };
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Self { authority, dial, via_proxy, tls })
    }

    /// Opens a fresh connection and returns it with the ALPN protocol the server chose.
    pub async fn open(&self) -> Result<(Box<dyn Io>, Option<Vec<u8>>), String> {
        let mut tcp = TcpStream::connect(self.dial)
            .await
            .map_err(|e| format!("connect {}: {e}", self.dial))?;
        let _ = tcp.set_nodelay(true);
        if self.via_proxy {
            connect_tunnel(&mut tcp, &self.authority).await?;
        }
        match &self.tls {
            None => Ok((Box::new(tcp), None)),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
                Ok((Box::new(tls), alpn))
            }
        }
    }
}

/// Sends `CONNECT authority` and reads the proxy's answer head; anything but 2xx is an error.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> Result<(), String> {
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = tcp.read(&mut buf).await.map_err(|e| format!("reading CONNECT reply: {e}"))?;
        if n == 0 {
            return Err("proxy closed the connection during CONNECT".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_head_end(&head) {
            break end;
        }
        if head.len() > MAX_CONNECT_HEAD {
            return Err("proxy CONNECT reply head too large".into());
        }
    };
    let status_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line);
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if !(code.starts_with('2') && code.len() == 3) {
        return Err(format!("proxy refused CONNECT: {}", status_line.trim_end()));
    }
    // The client speaks first in TLS, so a proxy that accepted has no reason to send more.
    if end != head.len() {
        return Err("proxy sent data after its CONNECT reply".into());
    }
    Ok(())
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

impl Connector {
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}
