//! The load generator: HTTP/1.1 keep-alive, a new connection per request, or HTTP/2 multiplexed,
//! direct or tunnelled through an explicit proxy with `CONNECT`, always verifying the server
//! certificate against the CA it is given.
//!
//! Every run is bounded: by a duration, a request count, or both, and every request by a
//! timeout, so a stuck proxy produces errors in the report rather than a hang.

mod connect;
mod stats;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::task::JoinSet;

pub use connect::Connector;
pub use stats::Report;

use crate::error::HarnessError;
use crate::origin::OriginBody;
use stats::WorkerStats;

/// How requests are spread over connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1, one long-lived connection per worker.
    KeepAlive,
    /// HTTP/1.1, a fresh TCP (+ CONNECT) + TLS connection for every request.
    NewConn,
    /// HTTP/2, `concurrency` streams multiplexed over `h2_connections` connections.
    H2,
    /// Open `concurrency` HTTP/1.1 connections, one request each, then hold them idle
    /// (see [`open_idle`]); for measuring memory per connection.
    Idle,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keepalive" | "ka" | "h1" => Ok(Mode::KeepAlive),
            "newconn" | "close" => Ok(Mode::NewConn),
            "h2" => Ok(Mode::H2),
            "idle" => Ok(Mode::Idle),
            _ => Err(format!("unknown mode {s:?}: expected keepalive, newconn, h2 or idle")),
        }
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keepalive",
            Mode::NewConn => "newconn",
            Mode::H2 => "h2",
            Mode::Idle => "idle",
        }
    }
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `https://name:port/path` (or `http://`).
    pub url: String,
    /// Where the URL's host is reached when there is no proxy (like curl's `--resolve`);
    /// `None` resolves it with the system resolver.
    pub connect_to: Option<SocketAddr>,
    /// An explicit HTTP proxy, used with `CONNECT host:port`.
    pub proxy: Option<SocketAddr>,
    /// PEM CA certificate(s) the server certificate must chain to (required for https).
    pub ca_pem: Option<String>,
    pub mode: Mode,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// HTTP/2 only: how many connections the streams are spread over.
    pub h2_connections: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    /// Non-zero: every request is a POST with this many body bytes.
    pub upload_bytes: u64,
    pub request_timeout: Duration,
    /// Allow TLS session resumption (off measures a full handshake per new connection).
    pub resumption: bool,
    /// Paced load: at most this many requests per second in total (open loop, evenly spaced).
    /// Used to measure latency at a fixed fraction of the peak rate; `None` runs flat out.
    pub rate: Option<f64>,
}

impl LoadConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_to: None,
            proxy: None,
            ca_pem: None,
            mode: Mode::KeepAlive,
            concurrency: 8,
            h2_connections: 1,
            duration: Some(Duration::from_secs(10)),
            requests: None,
            upload_bytes: 0,
            request_timeout: Duration::from_secs(30),
            resumption: false,
            rate: None,
        }
    }
}

/// Decides when workers stop: after the deadline, or once the request budget is spent.
struct Budget {
    deadline: Option<Instant>,
    limit: Option<u64>,
    issued: AtomicU64,
    /// Paced runs: the start and the spacing between requests, and the next request's slot.
    pace: Option<(Instant, Duration)>,
    paced: AtomicU64,
}

impl Budget {
    fn take(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        match self.limit {
            Some(limit) => self.issued.fetch_add(1, Ordering::Relaxed) < limit,
            None => true,
        }
    }

    /// Paced runs: waits for this request's slot. Latency is timed from the slot, not from
    /// when the worker became free, so time a request waits behind a slow one is not hidden.
    async fn wait_turn(&self) -> Instant {
        match self.pace {
            None => Instant::now(),
            Some((start, every)) => {
                let n = self.paced.fetch_add(1, Ordering::Relaxed);
                let slot = start + every.mul_f64(n as f64);
                tokio::time::sleep_until(slot.into()).await;
                slot
            }
        }
    }
}

/// What every worker shares.
struct Plan {
    connector: Connector,
    budget: Budget,
    method: Method,
    /// Origin-form for HTTP/1.1, absolute form for HTTP/2.
    path: Uri,
    absolute: Uri,
    /// HTTP/1.1 requests carry the absolute form (plain HTTP through a forward proxy).
    forward: bool,
    host_header: HeaderValue,
    upload_bytes: u64,
    timeout: Duration,
    close: bool,
}

impl Plan {
    fn request(&self, h2: bool) -> Request<OriginBody> {
        let body = if self.upload_bytes > 0 {
            OriginBody::Pattern { remaining: self.upload_bytes, exact: true }
        } else {
            OriginBody::Empty
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        if h2 {
            *req.uri_mut() = self.absolute.clone();
            *req.version_mut() = http::Version::HTTP_2;
        } else {
            *req.uri_mut() = if self.forward { self.absolute.clone() } else { self.path.clone() };
            req.headers_mut().insert(header::HOST, self.host_header.clone());
            if self.close {
                req.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        req
    }
}

/// Runs the load and returns the merged report. Fails only on bad configuration; connection and
/// request failures are counted in the report.
pub async fn run(cfg: LoadConfig) -> Result<Report, HarnessError> {
    if cfg.mode == Mode::Idle {
        let (held, report) = open_idle(cfg).await?;
        drop(held);
        return Ok(report);
    }
    let plan = Arc::new(plan(&cfg).await?);
    let concurrency = cfg.concurrency.max(1);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    match cfg.mode {
        Mode::KeepAlive | Mode::NewConn => {
            for _ in 0..concurrency {
                tasks.spawn(h1_worker(plan.clone(), cfg.mode == Mode::NewConn));
            }
        }
        Mode::Idle => unreachable!("handled above"),
        Mode::H2 => {
            let conns = cfg.h2_connections.clamp(1, concurrency);
            let slots: Vec<Arc<H2Slot>> =
                (0..conns).map(|_| Arc::new(H2Slot::default())).collect();
            for i in 0..concurrency {
                tasks.spawn(h2_worker(plan.clone(), slots[i % conns].clone()));
            }
        }
    }
    let mut workers = Vec::with_capacity(concurrency);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(stats) => workers.push(stats),
            Err(e) => {
                let mut s = WorkerStats::default();
                s.error(format!("worker task failed: {e}"));
                workers.push(s);
            }
        }
    }
    Ok(stats::merge(cfg.mode.name(), concurrency, start.elapsed(), workers))
}

async fn plan(cfg: &LoadConfig) -> Result<Plan, HarnessError> {
    let uri: Uri = cfg
        .url
        .parse()
        .map_err(|e| HarnessError::Config(format!("bad URL {:?}: {e}", cfg.url)))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(HarnessError::Config(format!("URL must be http:// or https://: {}", cfg.url))),
    };
    let host = uri
        .host()
        .ok_or_else(|| HarnessError::Config(format!("URL has no host: {}", cfg.url)))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if cfg.duration.is_none() && cfg.requests.is_none() {
        return Err(HarnessError::Config("give a duration, a request count, or both".into()));
    }
    let dial = match (cfg.proxy, cfg.connect_to) {
        (Some(p), _) => p,
        (None, Some(a)) => a,
        (None, None) => tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| HarnessError::Config(format!("{host} does not resolve")))?,
    };
    let roots = if tls {
        let pem = cfg
            .ca_pem
            .as_deref()
            .ok_or_else(|| HarnessError::Config("https needs a CA certificate (--cacert)".into()))?;
        let certs = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| HarnessError::Config(format!("reading CA PEM: {e}")))?;
        if certs.is_empty() {
            return Err(HarnessError::Config("the CA file holds no certificate".into()));
        }
        Some(certs)
    } else {
        None
    };
    let alpn = match cfg.mode {
        Mode::H2 => vec![b"h2".to_vec()],
        _ => vec![b"http/1.1".to_vec()],
    };
    // Plain HTTP through a proxy is forwarded (absolute-form request lines, as curl does);
    // HTTPS is tunnelled with CONNECT.
    let forward = cfg.proxy.is_some() && !tls;
    let connector = Connector::new(&host, port, dial, cfg.proxy.is_some() && tls, roots, alpn, cfg.resumption)?;
    let path: Uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| HarnessError::Config(format!("bad path: {e}")))?;
    let authority = uri.authority().map_or(host.clone(), |a| a.as_str().to_owned());
    let host_header = HeaderValue::from_str(&authority)
        .map_err(|e| HarnessError::Config(format!("bad host: {e}")))?;
    Ok(Plan {
        connector,
        budget: Budget {
            deadline: cfg.duration.map(|d| Instant::now() + d),
            limit: cfg.requests,
            issued: AtomicU64::new(0),
            pace: cfg.rate.filter(|r| r.is_finite() && *r > 0.0).map(|r| (Instant::now(), Duration::from_secs_f64(1.0 / r))),
            paced: AtomicU64::new(0),
        },
        method: if cfg.upload_bytes > 0 { Method::POST } else { Method::GET },
        path,
        absolute: uri,
        forward,
        host_header,
        upload_bytes: cfg.upload_bytes,
        timeout: cfg.request_timeout,
        close: cfg.mode == Mode::NewConn,
    })
}

/// A pause after a failed connect, so a dead proxy yields errors at a modest rate, not a spin.
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);

async fn open_h1(plan: &Plan) -> Result<http1::SendRequest<OriginBody>, String> {
    let (io, _alpn) = plan.connector.open().await?;
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn h1_worker(plan: Arc<Plan>, new_conn: bool) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut sender: Option<http1::SendRequest<OriginBody>> = None;
    while plan.budget.take() {
        let started = plan.budget.wait_turn().await;
        let outcome = tokio::time::timeout(plan.timeout, async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) || new_conn {
                sender = Some(open_h1(&plan).await.map_err(|e| (e, true))?);
            }
            let s = sender.as_mut().expect("just opened");
            s.ready().await.map_err(|e| (format!("connection not ready: {e}"), false))?;
            exchange(s.send_request(plan.request(false))).await.map_err(|e| (e, false))
        })
        .await;
        match outcome {
            Ok(Ok(down)) => record_ok(&mut stats, &plan, started, down),
            Ok(Err((e, connect_failed))) => {
                stats.error(e);
                sender = None;
                if connect_failed {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
            Err(_) => {
                stats.error(format!("request timed out after {:?}", plan.timeout));
                sender = None;
            }
        }
        if new_conn {
            sender = None;
        }
    }
    stats
}

/// One HTTP/2 connection shared by several workers; reopened by whichever worker finds it dead.
#[derive(Default)]
struct H2Slot {
    sender: tokio::sync::Mutex<Option<http2::SendRequest<OriginBody>>>,
}

impl H2Slot {
    async fn get(&self, plan: &Plan) -> Result<http2::SendRequest<OriginBody>, String> {
        let mut guard = self.sender.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let (io, alpn) = plan.connector.open().await?;
        if plan.connector.is_tls() && alpn.as_deref() != Some(b"h2".as_slice()) {
            return Err("the server did not negotiate h2".into());
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .adaptive_window(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *guard = Some(sender.clone());
        Ok(sender)
    }
}

async fn h2_worker(plan: Arc<Plan>, slot: Arc<H2Slot>) -> WorkerStats {
    let mut stats = WorkerStats::default();
    while plan.budget.take() {
        let started = Instant::now();
        let outcome = tokio::time::timeout(plan.timeout, async {
            let mut s = slot.get(&plan).await.map_err(|e| (e, true))?;
            s.ready().await.map_err(|e| (format!("stream not ready: {e}"), false))?;
            exchange(s.send_request(plan.request(true))).await.map_err(|e| (e, false))
        })
        .await;
        match outcome {
            Ok(Ok(down)) => record_ok(&mut stats, &plan, started, down),
            Ok(Err((e, connect_failed))) => {
                stats.error(e);
                if connect_failed {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
            Err(_) => stats.error(format!("request timed out after {:?}", plan.timeout)),
        }
    }
    stats
}

fn record_ok(stats: &mut WorkerStats, plan: &Plan, started: Instant, down: u64) {
    let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
    stats.latencies_us.push(us);
    stats.ok += 1;
    stats.bytes_down += down;
    stats.bytes_up += plan.upload_bytes;
}

/// Sends one request and drains the response body; a non-2xx status is an error.
async fn exchange(
    send: impl std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
) -> Result<u64, String> {
    let resp = send.await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("response body: {e}"))?;
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
        }
    }
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    Ok(n)
}

/// Connections opened by [`open_idle`]; they close when this is dropped.
pub struct IdleConnections {
    senders: Vec<http1::SendRequest<OriginBody>>,
}

impl IdleConnections {
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// How many are still open.
    pub fn open(&self) -> usize {
        self.senders.iter().filter(|s| !s.is_closed()).count()
    }
}

/// How many idle connections are being opened at once.
const IDLE_OPEN_PARALLELISM: usize = 32;

/// Opens `cfg.concurrency` HTTP/1.1 connections, completes one request on each (so a proxy has
/// fully set both legs up), and returns them still open. The report counts the ones that worked.
pub async fn open_idle(cfg: LoadConfig) -> Result<(IdleConnections, Report), HarnessError> {
    let mut cfg = cfg;
    cfg.mode = Mode::Idle;
    cfg.requests = None;
    cfg.duration = Some(Duration::from_secs(3600));
    let plan = Arc::new(plan(&cfg).await?);
    let target = cfg.concurrency.max(1);
    let start = Instant::now();
    let mut stats = WorkerStats::default();
    let mut senders = Vec::with_capacity(target);
    let mut tasks = JoinSet::new();
    let mut launched = 0;
    while launched < target || !tasks.is_empty() {
        while launched < target && tasks.len() < IDLE_OPEN_PARALLELISM {
            launched += 1;
            let plan = plan.clone();
            tasks.spawn(async move {
                let started = Instant::now();
                let r = tokio::time::timeout(plan.timeout, async {
                    let mut s = open_h1(&plan).await?;
                    s.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
                    let n = exchange(s.send_request(plan.request(false))).await?;
                    Ok::<_, String>((s, n))
                })
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {:?}", plan.timeout)));
                (started, r)
            });
        }
        if let Some(done) = tasks.join_next().await {
            match done {
                Ok((started, Ok((sender, n)))) => {
                    record_ok(&mut stats, &plan, started, n);
                    senders.push(sender);
                }
                Ok((_, Err(e))) => stats.error(e),
                Err(e) => stats.error(format!("task failed: {e}")),
            }
        }
    }
    let report = stats::merge("idle", target, start.elapsed(), vec![stats]);
    Ok((IdleConnections { senders }, report))
}
