//! `cork-load`: the load generator, direct or through an explicit proxy.
//!
//! Prints a human summary, or with `--json` one JSON object (see `loadgen::Report`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bench_harness::loadgen::{self, LoadConfig, Mode};
use clap::Parser;

#[derive(Parser)]
#[command(name = "cork-load", about = "HTTP/1.1 and HTTP/2 load generator (direct or via CONNECT proxy)")]
struct Args {
    /// Target URL, e.g. https://origin.test:8443/bytes/1024
    url: String,
    /// Explicit proxy, http://IP:PORT; the target is reached with CONNECT through it.
    #[arg(long)]
    proxy: Option<String>,
    /// CA certificate(s) (PEM) the server certificate must chain to.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Without a proxy: connect here instead of resolving the URL's host.
    #[arg(long)]
    connect_to: Option<SocketAddr>,
    /// keepalive, newconn (fresh TCP+TLS per request) or h2.
    #[arg(long, default_value = "keepalive")]
    mode: Mode,
    /// Requests in flight at once.
    #[arg(short, long, default_value_t = 8)]
    concurrency: usize,
    /// HTTP/2: number of connections the streams are spread over.
    #[arg(long, default_value_t = 1)]
    h2_conns: usize,
    /// Run for this many seconds (default 10 when no --requests is given).
    #[arg(short, long)]
    duration: Option<f64>,
    /// Stop after this many requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// POST a body of this many bytes with every request.
    #[arg(long, default_value_t = 0)]
    upload: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Allow TLS session resumption on new connections.
    #[arg(long)]
    resumption: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Paced: at most this many requests per second in total (HTTP/1.1 modes).
    #[arg(long)]
    rate: Option<f64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Idle mode: seconds to hold the connections open after printing `holding N` (default 5).
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
}

fn parse_proxy(s: &str) -> Result<SocketAddr> {
    let rest = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    rest.parse()
        .with_context(|| format!("--proxy must look like http://IP:PORT, got {s:?}"))
}

fn secs(v: f64, what: &str) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{what} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut cfg = LoadConfig::new(args.url.clone());
    cfg.proxy = args.proxy.as_deref().map(parse_proxy).transpose()?;
    cfg.connect_to = args.connect_to;
    cfg.ca_pem = match &args.cacert {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    cfg.mode = args.mode;
    cfg.concurrency = args.concurrency.max(1);
    cfg.h2_connections = args.h2_conns.max(1);
    cfg.requests = args.requests;
    cfg.duration = match (args.duration, args.requests) {
        (Some(d), _) => Some(secs(d, "--duration")?),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    cfg.upload_bytes = args.upload;
    cfg.request_timeout = secs(args.timeout, "--timeout")?;
    cfg.resumption = args.resumption;
    cfg.rate = args.rate;

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    let report = if args.mode == Mode::Idle {
        // Open, announce, hold, then report: whoever drives us samples memory while we hold.
        let hold = secs(args.hold, "--hold")?;
        rt.block_on(async {
            let (held, report) = loadgen::open_idle(cfg).await?;
            println!("holding {}", held.len());
            std::io::Write::flush(&mut std::io::stdout())?;
            tokio::time::sleep(hold).await;
            let still = held.open();
            if still < held.len() {
                eprintln!("cork-load: {} of {} idle connections closed while held", held.len() - still, held.len());
            }
            anyhow::Ok(report)
        })?
    } else {
        rt.block_on(loadgen::run(cfg))?
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.human());
    }
    Ok(())
}
