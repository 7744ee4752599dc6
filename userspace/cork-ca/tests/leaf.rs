//! Leaves verify under a real rustls client that trusts only the CA, and the cache issues once.

use std::sync::Arc;

use cork_ca::{BottleCa, LeafCache, LeafName};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);
impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Runs a full in-memory handshake of a client trusting only `ca` against a server presenting
/// `leaf`, for `name`. Returns the client's error, if any.
fn handshake(ca: &BottleCa, leaf: Arc<rustls::sign::CertifiedKey>, name: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).unwrap();
    let client_cfg = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth();
    let server_cfg = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap().with_no_client_auth().with_cert_resolver(Arc::new(Fixed(leaf)));
    let mut client = ClientConnection::new(Arc::new(client_cfg), ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets().map_err(|e| e)?;
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn a_dns_leaf_verifies_for_its_name_only() {
    let ca = BottleCa::generate("test").unwrap();
    let leaf = ca.issue(&LeafName::parse("API.Example.test").unwrap()).unwrap();
    handshake(&ca, leaf.clone(), "api.example.test").expect("the leaf verifies against its CA");
    let err = handshake(&ca, leaf, "other.example.test").unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn an_ip_leaf_carries_an_ip_san() {
    let ca = BottleCa::generate("test").unwrap();
    let leaf = ca.issue(&LeafName::parse("[::1]").unwrap()).unwrap();
    handshake(&ca, leaf, "::1").expect("IP SAN verifies");
    let leaf = ca.issue(&LeafName::parse("127.0.0.7").unwrap()).unwrap();
    handshake(&ca, leaf, "127.0.0.7").expect("IPv4 SAN verifies");
}

#[test]
fn another_ca_does_not_vouch_for_the_leaf() {
    let ca = BottleCa::generate("a").unwrap();
    let other = BottleCa::generate("b").unwrap();
    let leaf = ca.issue(&LeafName::parse("x.test").unwrap()).unwrap();
    assert!(handshake(&other, leaf, "x.test").is_err());
}

#[test]
fn concurrent_first_requests_issue_one_leaf() {
    let cache = Arc::new(LeafCache::new(Arc::new(BottleCa::generate("t").unwrap()), 16));
    let name = LeafName::parse("same.test").unwrap();
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (cache, name) = (cache.clone(), name.clone());
            std::thread::spawn(move || cache.get(&name).unwrap())
        })
        .collect();
    let leaves: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(leaves.iter().all(|l| Arc::ptr_eq(l, &leaves[0])), "everyone got the same leaf");
    let stats = cache.stats();
    assert_eq!((stats.issued, stats.hits, stats.entries), (1, 15, 1));
}

#[test]
fn the_cache_is_bounded() {
    let cache = LeafCache::new(Arc::new(BottleCa::generate("t").unwrap()), 3);
    for i in 0..10 {
        cache.get(&LeafName::parse(&format!("h{i}.test")).unwrap()).unwrap();
    }
    assert_eq!(cache.stats().entries, 3);
    // The most recent names are still there.
    cache.get(&LeafName::parse("h9.test").unwrap()).unwrap();
    assert_eq!(cache.stats().issued, 10);
}

#[test]
fn invalid_names_are_refused() {
    for bad in ["", "a b", "bad..name", "-x.test/..", &"a".repeat(300)] {
        assert!(LeafName::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn debug_output_shows_no_key_material() {
    let ca = BottleCa::generate("dbg").unwrap();
    let shown = format!("{ca:?}");
    assert!(shown.contains("dbg"));
    assert!(!shown.to_lowercase().contains("secret"), "{shown}");
    assert!(shown.len() < 200, "only a short public summary: {shown}");
}
