//! `cork-bench-tls`: in-process ceilings for what a bumping proxy does per new connection.
//!
//! - rustls handshake pairs: one client and one server handshake (TLS 1.3, P-256 leaf, no
//!   resumption) run back to back in memory on one thread. A bumped connection costs a proxy one
//!   server-side and one client-side handshake, so pairs/s on one core is the per-core ceiling for
//!   new bumped connections.
//! - cork-ca leaf issuance: `BottleCa::issue` (uncached, one ECDSA signature) and `LeafCache::get`
//!   on a hit.
//!
//! Prints one JSON object. Bounded by `--seconds` per measurement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bench_harness::testca::TestCa;
use cork_ca::{BottleCa, LeafCache, LeafName};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

fn main() -> Result<()> {
    let mut seconds = 2.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().context("--seconds needs a value")?.parse()?,
            other => anyhow::bail!("unknown argument {other:?} (cork-bench-tls [--seconds S])"),
        }
    }
    let budget = Duration::from_secs_f64(seconds.clamp(0.1, 30.0));

    let (pairs, pair_secs) = handshake_pairs(budget)?;
    let (issued, issue_secs) = leaf_issue(budget)?;
    let (hits, hit_secs) = leaf_cache_hits(budget)?;
    let report = serde_json::json!({
        "handshake_pairs": pairs,
        "handshake_pair_secs": pair_secs,
        "handshake_pairs_per_sec": pairs as f64 / pair_secs,
        "leaf_issue_count": issued,
        "leaf_issue_us": issue_secs * 1e6 / issued as f64,
        "leaf_cache_hit_count": hits,
        "leaf_cache_hit_us": hit_secs * 1e6 / hits as f64,
    });
    println!("{report}");
    Ok(())
}

fn tls_configs() -> Result<(Arc<ClientConfig>, Arc<ServerConfig>)> {
    let ca = TestCa::generate()?;
    let leaf = ca.issue_server(&["origin.test".to_string()], &[])?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca_der())?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only, as in the bench's new-connection scenario.
    client.resumption = rustls::client::Resumption::disabled();
    Ok((Arc::new(client), Arc::new(server)))
}

/// Runs client+server handshakes in memory until the budget is spent.
fn handshake_pairs(budget: Duration) -> Result<(u64, f64)> {
    let (client_cfg, server_cfg) = tls_configs()?;
    let name = ServerName::try_from("origin.test")?;
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = Vec::with_capacity(16 * 1024);
    while start.elapsed() < budget {
        let mut client = ClientConnection::new(client_cfg.clone(), name.clone())?;
        let mut server = ServerConnection::new(server_cfg.clone())?;
        while client.is_handshaking() || server.is_handshaking() {
            let mut progressed = false;
            while client.wants_write() {
                buf.clear();
                client.write_tls(&mut buf)?;
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    server.read_tls(&mut rd)?;
                }
                server.process_new_packets()?;
                progressed = true;
            }
            while server.wants_write() {
                buf.clear();
                server.write_tls(&mut buf)?;
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd)?;
                }
                client.process_new_packets()?;
                progressed = true;
            }
            anyhow::ensure!(progressed, "handshake stalled");
        }
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Uncached leaf issuance: a distinct name each time.
fn leaf_issue(budget: Duration) -> Result<(u64, f64)> {
    let ca = BottleCa::generate("bench")?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n == 0 {
        let name = LeafName::parse(&format!("host{n}.example.test"))?;
        std::hint::black_box(ca.issue(&name)?);
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

/// Cached leaf lookups: one name, already issued.
fn leaf_cache_hits(budget: Duration) -> Result<(u64, f64)> {
    let cache = LeafCache::new(Arc::new(BottleCa::generate("bench")?), 1024);
    let name = LeafName::parse("origin.test")?;
    cache.get(&name)?;
    let start = Instant::now();
    let mut n = 0u64;
    // Check the clock every 1024 lookups: a lookup is far cheaper than reading the clock.
    while start.elapsed() < budget {
        for _ in 0..1024 {
            std::hint::black_box(cache.get(&name)?);
        }
        n += 1024;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}
