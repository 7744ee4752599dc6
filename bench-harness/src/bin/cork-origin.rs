//! `cork-origin`: runs the bench/test HTTPS origin until killed.
//!
//! Writes the test CA to `DIR/ca.pem`, then prints exactly one line,
//! `ready https=ADDR http=ADDR` (`http=none` without `--http`), once both listeners are bound.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use bench_harness::origin::{default_alpn, Origin, OriginConfig};
use clap::Parser;

#[derive(Parser)]
#[command(name = "cork-origin", about = "Deterministic HTTPS test origin with its own CA")]
struct Args {
    /// HTTPS listen address (port 0 picks a free port).
    #[arg(long)]
    https: SocketAddr,
    /// Optional plain-HTTP listen address.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// DNS name for the server certificate (repeatable). Default: origin.test.
    #[arg(long = "name")]
    names: Vec<String>,
    /// IP address for the server certificate (repeatable). Default: the HTTPS listen IP.
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// Directory to write ca.pem into (created if missing).
    #[arg(long)]
    ca_out: PathBuf,
    /// Offer only HTTP/1.1 in ALPN.
    #[arg(long)]
    http1_only: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut cfg = OriginConfig::new(args.https);
    cfg.http = args.http;
    if !args.names.is_empty() {
        cfg.names = args.names;
    }
    if !args.ips.is_empty() {
        cfg.ips = args.ips;
    }
    cfg.alpn = if args.http1_only { vec![b"http/1.1".to_vec()] } else { default_alpn() };

    let origin = Origin::start(cfg).await.context("starting the origin")?;
    std::fs::create_dir_all(&args.ca_out)
        .with_context(|| format!("creating {}", args.ca_out.display()))?;
    let ca_path = args.ca_out.join("ca.pem");
    std::fs::write(&ca_path, origin.ca_pem())
        .with_context(|| format!("writing {}", ca_path.display()))?;

    let http = origin.http_addr().map_or("none".to_string(), |a| a.to_string());
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready https={} http={}", origin.https_addr(), http)?;
    out.flush()?;
    drop(out);

    tokio::signal::ctrl_c().await.ok();
    origin.shutdown().await;
    Ok(())
}
