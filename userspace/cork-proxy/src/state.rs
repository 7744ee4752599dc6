//! What every connection shares: the current policy snapshot, the CA's leaf cache, the audit log
//! and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use cork_ca::{BottleCa, LeafCache};
use cork_policy::Policy;

use crate::audit::AuditLog;
use crate::metrics::{ExternalFigures, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the scanning engine rejected the policy: {0}")]
    Scan(#[from] cork_scan::BuildError),
    #[error("cannot load upstream root {path}: {reason}")]
    ExtraRoot { path: String, reason: String },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// A policy with everything compiled from it. Connections take one snapshot when they start and
/// keep it, so a reload never changes the rules under a connection that is already running.
pub struct Snapshot {
    pub policy: Policy,
    pub engine: cork_scan::Engine,
    /// Upstream TLS offering only `http/1.1` (clients that offer no h2).
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// The same, offering `h2` first and `http/1.1` second (clients that offer both).
    pub upstream_tls_h2: Arc<rustls::ClientConfig>,
    /// The same, offering only `h2` (clients that speak nothing else).
    pub upstream_tls_h2_only: Arc<rustls::ClientConfig>,
    /// Where the policy came from, for logs: a path or `<embedded default>`.
    pub source: String,
}

impl Snapshot {
    pub fn build(policy: Policy, source: String) -> Result<Snapshot, StateError> {
        let engine = cork_scan::Engine::new(&policy.scan)?;
        let mut base = upstream_client_config(&policy)?;
        // kTLS needs the traffic secrets after the handshake; otherwise rustls need not keep them.
        base.enable_secret_extraction = crate::ktls_leg::wanted_for(&policy);
        let with_alpn = |alpn: &[&[u8]]| {
            let mut config = base.clone();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        let upstream_tls = with_alpn(&[b"http/1.1"]);
        let upstream_tls_h2 = with_alpn(&[b"h2", b"http/1.1"]);
        let upstream_tls_h2_only = with_alpn(&[b"h2"]);
        Ok(Snapshot { policy, engine, upstream_tls, upstream_tls_h2, upstream_tls_h2_only, source })
    }

    /// The upstream TLS configuration that offers what the client offered (of `h2` and
    /// `http/1.1`), so the upstream's choice can be handed to the client unchanged.
    pub fn upstream_tls_for(&self, client_offers_h2: bool, client_offers_h1: bool) -> &Arc<rustls::ClientConfig> {
        match (client_offers_h2, client_offers_h1) {
            (true, true) => &self.upstream_tls_h2,
            (true, false) => &self.upstream_tls_h2_only,
            // No ALPN at all means HTTP/1.1.
            _ => &self.upstream_tls,
        }
    }
}

/// The cipher suites cork negotiates on either leg: those of [`crypto_provider`], ring's
/// default provider, which offers exactly ring's default suites.
pub const CIPHER_SUITES: &[rustls::SupportedCipherSuite] = rustls::crypto::ring::DEFAULT_CIPHER_SUITES;

pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Full verification against the system roots plus the policy's extra roots.
fn upstream_client_config(policy: &Policy) -> Result<rustls::ClientConfig, StateError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for path in &policy.upstream.extra_roots {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| StateError::ExtraRoot { path: shown.clone(), reason: e.to_string() })?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| StateError::ExtraRoot { path: shown.clone(), reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(StateError::ExtraRoot { path: shown, reason: "no PEM certificates in the file".into() });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| StateError::ExtraRoot { path: shown.clone(), reason: e.to_string() })?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub struct ProxyState {
    pub instance: String,
    snapshot: ArcSwap<Snapshot>,
    pub leaves: LeafCache,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// MCP sessions seen in bumped traffic.
    pub mcp: crate::mcp::McpSessions,
    id_prefix: String,
    next_id: AtomicU64,
}

impl ProxyState {
    pub fn new(instance: &str, ca: Arc<BottleCa>, snapshot: Snapshot, audit: AuditLog) -> ProxyState {
        let leaves = LeafCache::new(ca, snapshot.policy.limits.leaf_cache_entries);
        ProxyState {
            instance: instance.to_string(),
            snapshot: ArcSwap::from_pointee(snapshot),
            leaves,
            audit,
            metrics: Metrics::default(),
            mcp: crate::mcp::McpSessions::default(),
            id_prefix: hex::encode(rand::random::<[u8; 3]>()),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Installs a new policy for connections that start from now on.
    pub fn reload(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.metrics.reloaded();
    }

    /// A request id unique within this process: a random per-process prefix and a counter.
    pub fn next_request_id(&self) -> String {
        format!("{}-{:06}", self.id_prefix, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn render_metrics(&self) -> String {
        let stats = self.leaves.stats();
        self.metrics.render(&ExternalFigures {
            leaf_issued: stats.issued,
            leaf_cache_hits: stats.hits,
            leaf_cache_entries: stats.entries,
            max_connections: self.snapshot().policy.limits.max_connections,
            ktls_supported: *crate::ktls_leg::support() == cork_ktls::KtlsSupport::Supported,
            io_uring_supported: *crate::uring::support() == crate::uring::UringSupport::Supported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kTLS is planned on CIPHER_SUITES; the configs negotiate crypto_provider's.
    #[test]
    fn planned_suites_are_the_negotiated_ones() {
        let named = |suites: &[rustls::SupportedCipherSuite]| suites.iter().map(|s| s.suite()).collect::<Vec<_>>();
        assert_eq!(named(CIPHER_SUITES), named(&crypto_provider().cipher_suites));
    }
}
