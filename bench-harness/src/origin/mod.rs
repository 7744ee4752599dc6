//! The test/bench HTTPS origin: a real hyper server with its own test CA.
//!
//! `Origin::start` binds an HTTPS listener (and optionally a plain-HTTP one) and serves the
//! deterministic endpoints in [`routes`] in the background on the current tokio runtime.
//! HTTP/1.1 (keep-alive, `Expect: 100-continue`) and HTTP/2 are both served on every listener;
//! on TLS the protocol follows ALPN, on plain HTTP hyper detects the h2 preface.

mod body;
mod routes;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub use crate::testca::{ServerCert, TestCa};
pub use body::{pattern_bytes, OriginBody, PATTERN};
pub use routes::{media_body, ECHO_BODY_CAP, INJECT_HTML};

use crate::error::HarnessError;

/// Where and as whom the origin listens.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    /// DNS names in the server certificate.
    pub names: Vec<String>,
    /// IP addresses in the server certificate.
    pub ips: Vec<IpAddr>,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
}

impl OriginConfig {
    /// HTTPS on `https`, certificate for `origin.test` and the listener's IP, h2 + http/1.1.
    pub fn new(https: SocketAddr) -> Self {
        Self {
            https,
            http: None,
            names: vec!["origin.test".into()],
            ips: vec![https.ip()],
            alpn: default_alpn(),
        }
    }
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
    }
}

/// `h2` then `http/1.1`.
pub fn default_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// A running origin. Dropping it stops the listeners too; `shutdown` also waits for them.
pub struct Origin {
    https_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    ca: TestCa,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Origin {
    /// Generates the CA and server certificate, binds the listeners and starts serving.
    pub async fn start(cfg: OriginConfig) -> Result<Origin, HarnessError> {
        let ca = TestCa::generate()?;
        let leaf = ca.issue_server(&cfg.names, &cfg.ips)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(leaf.chain, leaf.key)?;
        tls.alpn_protocols = cfg.alpn.clone();
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let (stop, stop_rx) = watch::channel(false);
        let https = bind(cfg.https).await?;
        let https_addr = https.local_addr()?;
        let mut tasks = vec![tokio::spawn(accept_loop(https, Some(acceptor), stop_rx.clone()))];
        let mut http_addr = None;
        if let Some(addr) = cfg.http {
            let http = bind(addr).await?;
            http_addr = Some(http.local_addr()?);
            tasks.push(tokio::spawn(accept_loop(http, None, stop_rx)));
        }
        Ok(Origin { https_addr, http_addr, ca, stop, tasks })
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The test CA certificate clients must trust, PEM encoded.
    pub fn ca_pem(&self) -> String {
        self.ca.ca_pem()
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Stops accepting, closes every open connection and waits for the listeners to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, HarnessError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HarnessError::Bind { addr, source })
}

/// Accepts until told to stop; the connection tasks live in a JoinSet so stopping (dropping
/// the set) closes them all.
async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(serve_conn(tcp, tls.clone()));
                }
                Err(e) => {
                    // Typically EMFILE under a connection-count benchmark: back off, don't spin.
                    tracing::warn!(error = %e, "origin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    conns.shutdown().await;
}

async fn serve_conn(tcp: TcpStream, tls: Option<TlsAcceptor>) {
    let _ = tcp.set_nodelay(true);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(1024);
    let svc = service_fn(routes::handle);
    let result = match tls {
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(stream) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let io = TokioIo::new(stream);
                if h2 {
                    builder.http2_only().serve_connection(io, svc).await
                } else {
                    builder.serve_connection(io, svc).await
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "origin TLS handshake failed");
                return;
            }
        },
        None => builder.serve_connection(TokioIo::new(tcp), svc).await,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "origin connection ended with an error");
    }
}
