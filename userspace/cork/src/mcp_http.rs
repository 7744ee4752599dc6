//! `cork mcp proxy --upstream https://…`: MCP over streamable HTTP to a remote server, either
//! bridged to stdio or behind an HTTP reverse proxy (`--listen`).
//!
//! Each JSON-RPC message is POSTed on its own verified TLS connection (system roots plus `--ca`)
//! with `Accept: application/json, text/event-stream`; the `Mcp-Session-Id` the server gives is
//! sent back on later requests. A JSON answer is one message, an SSE answer one message per event;
//! each goes through the same [`Relay`] as stdio. Not done: keep-alive, the server's own GET
//! stream, resumption (`Last-Event-ID`). `wss://` upstreams are bridged by [`crate::mcp_ws`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cork_http::chunked::ChunkedDecoder;
use cork_http::framing::{request_framing, response_framing};
use cork_http::{BodyFraming, Limits, RequestHead, ResponseHead};
use cork_scan::mcp::McpDirection;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::mcp_cmd::{line_of, AuditSink, Relay, Routed};

/// Head bytes accepted from either side.
const MAX_HEAD: usize = 64 * 1024;
/// Sessions the reverse proxy keeps; the oldest is forgotten first.
const MAX_SESSIONS: usize = 1024;

/// A remote MCP endpoint.
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// A `wss://` URL: the server speaks MCP over WebSocket.
    pub websocket: bool,
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

impl Upstream {
    pub fn parse(url: &str, extra_roots: &[PathBuf]) -> Result<Upstream> {
        let (rest, websocket) = match (url.strip_prefix("https://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => bail!("--upstream must be an https:// or wss:// URL: {url}"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or(p))),
                None => bail!("bad --upstream URL: {url}"),
            },
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| anyhow!("bad port in {url}"))?,
            None => 443,
        };
        if host.is_empty() || authority.contains('@') {
            bail!("bad --upstream URL: {url}");
        }
        Ok(Upstream { host: host.to_string(), port, path: path.to_string(), websocket, tls: tls_config(extra_roots)? })
    }

    pub(crate) fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == 443 { host } else { format!("{host}:{}", self.port) }
    }
}

/// Full verification against the system roots and `--ca`.
fn tls_config(extra_roots: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for path in extra_roots {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>().with_context(|| format!("parsing {}", path.display()))?;
        if certs.is_empty() {
            bail!("no PEM certificates in {}", path.display());
        }
        for cert in certs {
            roots.add(cert).with_context(|| format!("adding a root from {}", path.display()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

type Stream = Box<dyn AsyncRead + Unpin + Send>;

/// A response from the upstream, its body still to be read.
struct Reply {
    status: u16,
    session_id: Option<String>,
    kind: BodyKind,
    body: HttpBody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    EventStream,
    Other,
}

/// Reads a body according to its framing.
struct HttpBody {
    stream: Stream,
    buf: Vec<u8>,
    framing: BodyFraming,
    remaining: u64,
    chunked: ChunkedDecoder,
    done: bool,
    /// Decoded payload not yet handed out.
    payload: Vec<u8>,
}

impl HttpBody {
    fn new(stream: Stream, buf: Vec<u8>, framing: BodyFraming) -> HttpBody {
        let remaining = if let BodyFraming::Length(n) = framing { n } else { 0 };
        HttpBody { stream, buf, framing, remaining, chunked: ChunkedDecoder::default(), done: framing == BodyFraming::Empty, payload: Vec::new() }
    }

    /// Moves more payload into `self.payload`; `false` once the body is over.
    async fn fill(&mut self) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        if self.buf.is_empty() {
            let mut chunk = vec![0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                if self.framing == BodyFraming::UntilClose {
                    self.done = true;
                    return Ok(false);
                }
                bail!("the upstream closed inside a body");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        match self.framing {
            BodyFraming::Empty => self.done = true,
            BodyFraming::UntilClose => self.payload.append(&mut self.buf),
            BodyFraming::Length(_) => {
                let n = self.buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.payload.extend(self.buf.drain(..n));
                self.remaining -= n as u64;
                self.done = self.remaining == 0;
            }
            BodyFraming::Chunked => {
                while !self.buf.is_empty() && !self.chunked.is_done() {
                    let step = self.chunked.decode(&self.buf)?;
                    if let Some(r) = step.data.clone() {
                        self.payload.extend_from_slice(&self.buf[r]);
                    }
                    self.buf.drain(..step.consumed);
                }
                self.done = self.chunked.is_done();
            }
        }
        Ok(!self.done)
    }

    /// The whole body, at most `max` bytes.
    async fn read_all(&mut self, max: usize) -> Result<Vec<u8>> {
        loop {
            if self.payload.len() > max {
                bail!("an upstream body over {max} bytes");
            }
            if !self.fill().await? {
                return Ok(std::mem::take(&mut self.payload));
            }
        }
    }

    /// The next SSE event's data (events without data are skipped); `None` at the end.
    async fn next_event(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some((end, used)) = cork_http::sse::event_end(&self.payload) {
                let data = cork_http::sse::event_data(&self.payload[..end]);
                self.payload.drain(..used);
                if data.is_empty() {
                    continue;
                }
                return Ok(Some(data));
            }
            if self.payload.len() > max {
                bail!("an upstream event over {max} bytes");
            }
            if !self.fill().await? {
                let rest = std::mem::take(&mut self.payload);
                let data = cork_http::sse::event_data(&rest);
                return Ok((!data.is_empty()).then_some(data));
            }
        }
    }
}

/// POSTs one JSON-RPC payload to the upstream and reads the response head.
async fn post(up: &Upstream, session_id: Option<&str>, body: &[u8]) -> Result<Reply> {
    let tcp = tokio::net::TcpStream::connect((up.host.as_str(), up.port)).await.with_context(|| format!("connecting to {}", up.authority()))?;
    let name = rustls::pki_types::ServerName::try_from(up.host.clone()).map_err(|e| anyhow!("bad server name {}: {e}", up.host))?;
    let mut tls = tokio_rustls::TlsConnector::from(up.tls.clone()).connect(name, tcp).await.with_context(|| format!("TLS with {}", up.authority()))?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
        up.path,
        up.authority(),
        body.len()
    );
    if let Some(id) = session_id {
        head.push_str(&format!("Mcp-Session-Id: {id}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.flush().await?;
    let mut stream: Stream = Box::new(tls);
    let mut buf = Vec::new();
    let response = loop {
        let limits = Limits { max_head_bytes: MAX_HEAD, max_headers: 128 };
        if let Some((r, used)) = ResponseHead::parse(&buf, &limits)? {
            buf.drain(..used);
            if r.status == 100 {
                continue;
            }
            break r;
        }
        let mut chunk = vec![0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the upstream closed without a response");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let framing = response_framing("POST", &response)?;
    let media = response.header("content-type").and_then(|h| h.value_str()).map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let coded = response.header("content-encoding").and_then(|h| h.value_str()).is_some_and(|c| !c.trim().eq_ignore_ascii_case("identity"));
    let kind = match media.as_deref() {
        _ if coded => BodyKind::Other,
        Some("application/json") => BodyKind::Json,
        Some("text/event-stream") => BodyKind::EventStream,
        _ => BodyKind::Other,
    };
    Ok(Reply {
        status: response.status,
        session_id: response.header("mcp-session-id").and_then(|h| h.value_str()).map(str::to_string),
        kind,
        body: HttpBody::new(stream, buf, framing),
    })
}

/// The request ids in a JSON-RPC payload, for errors when the upstream fails.
fn request_ids(payload: &[u8]) -> Vec<Value> {
    let value: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let items = match value {
        Value::Array(a) => a,
        other => vec![other],
    };
    items.into_iter().filter(|m| m.get("method").is_some()).filter_map(|m| m.get("id").cloned()).collect()
}

fn upstream_error(id: Value, why: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32002, "message": format!("cork: the MCP upstream failed: {why}")}})
}

/// Sends `payload` upstream and hands every checked message of the answer to `deliver`.
/// Messages the checks send back toward the server are POSTed in turn (their answers ignored).
async fn exchange<F>(relay: &Relay, up: &Upstream, session: &Mutex<Option<String>>, payload: &[u8], max: usize, deliver: &mut F) -> Result<u16>
where
    F: FnMut(Vec<u8>),
{
    let sid = session.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut reply = match post(up, sid.as_deref(), payload).await {
        Ok(r) => r,
        Err(e) => {
            for id in request_ids(payload) {
                deliver(line_of(&upstream_error(id, &format!("{e:#}"))));
            }
            return Ok(502);
        }
    };
    if let Some(id) = reply.session_id.take() {
        *session.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }
    let status = reply.status;
    if !(200..300).contains(&status) || reply.kind == BodyKind::Other {
        if status != 202 && status != 204 {
            // Nothing cork can judge goes to the client: each request gets an error instead.
            let why = if (200..300).contains(&status) { "an answer that is neither JSON nor SSE (or is compressed)".to_string() } else { format!("HTTP {status}") };
            for id in request_ids(payload) {
                deliver(line_of(&upstream_error(id, &why)));
            }
        }
        return Ok(status);
    }
    let mut backs = Vec::new();
    let mut handle = |routed: Routed, backs: &mut Vec<Vec<u8>>| {
        if let Some(on) = routed.onward {
            deliver(on);
        }
        backs.extend(routed.back);
    };
    match reply.kind {
        BodyKind::Json => match reply.body.read_all(max).await {
            Ok(body) => handle(relay.route(McpDirection::ToClient, &body), &mut backs),
            Err(e) => {
                tracing::warn!(error = %e, "reading the upstream's answer");
                handle(relay.overlong(McpDirection::ToClient, max + 1, max), &mut backs);
            }
        },
        BodyKind::EventStream => loop {
            match reply.body.next_event(max).await {
                Ok(Some(data)) => handle(relay.route(McpDirection::ToClient, &data), &mut backs),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the upstream's event stream");
                    break;
                }
            }
        },
        BodyKind::Other => {}
    }
    for back in backs {
        let sid = session.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(e) = post(up, sid.as_deref(), &back).await {
            tracing::warn!(error = %e, "answering the upstream's refused request");
        }
    }
    Ok(status)
}

/// stdio ↔ remote server: one client line at a time.
pub async fn stdio_bridge(relay: Arc<Relay>, upstream: Upstream, max: usize) -> Result<std::process::ExitCode> {
    let mut reader = BufReader::new(tokio::io::stdin());
    let mut stdout = tokio::io::stdout();
    let session = Mutex::new(None);
    let mut buf = Vec::new();
    loop {
        let Some(routed) = relay.next_line(&mut reader, &mut buf, McpDirection::ToServer, max).await else { break };
        let mut out: Vec<Vec<u8>> = routed.back.into_iter().collect();
        if let Some(on) = routed.onward {
            exchange(&relay, &upstream, &session, &on, max, &mut |line| out.push(line)).await?;
        }
        for line in out {
            stdout.write_all(&line).await?;
        }
        stdout.flush().await?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Relays by session id, and the ids in the order they came (to forget the oldest).
type SessionMap = (HashMap<String, Arc<Relay>>, std::collections::VecDeque<String>);

/// Per-`Mcp-Session-Id` relays of the reverse proxy.
struct Sessions {
    engine: cork_scan::Engine,
    name: String,
    audit: AuditSink,
    map: Mutex<SessionMap>,
}

impl Sessions {
    fn get(&self, id: &str) -> Arc<Relay> {
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        if let Some(r) = map.get(id) {
            return r.clone();
        }
        let relay = Arc::new(Relay::new(&self.engine, &self.name, self.audit.clone()));
        map.insert(id.to_string(), relay.clone());
        order.push_back(id.to_string());
        while order.len() > MAX_SESSIONS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        relay
    }
}

/// `--listen ADDR --upstream URL`: an HTTP reverse proxy in front of a remote MCP server.
pub async fn reverse_proxy(engine: cork_scan::Engine, name: String, audit: AuditSink, addr: std::net::SocketAddr, upstream: Upstream, max: usize) -> Result<std::process::ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    // The address, for whoever started us (port 0 picks one).
    println!("cork mcp proxy listening on http://{}{} for {}", listener.local_addr()?, upstream.path, upstream.authority());
    let sessions = Arc::new(Sessions { engine, name, audit, map: Mutex::new((HashMap::new(), Default::default())) });
    let upstream = Arc::new(upstream);
    loop {
        let (conn, peer) = listener.accept().await?;
        let (sessions, upstream) = (sessions.clone(), upstream.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(conn, &sessions, &upstream, max).await {
                tracing::debug!(%peer, error = %e, "MCP reverse-proxy connection ended");
            }
        });
    }
}

fn respond_head(status: u16, reason: &str, headers: &[(&str, String)]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

async fn send_json<W: AsyncWrite + Unpin>(conn: &mut W, status: u16, body: &[u8], session: Option<&str>) -> Result<()> {
    let mut headers = vec![("Content-Type", "application/json".to_string()), ("Content-Length", body.len().to_string())];
    if let Some(id) = session {
        headers.push(("Mcp-Session-Id", id.to_string()));
    }
    conn.write_all(&respond_head(status, if status == 200 { "OK" } else { "Error" }, &headers)).await?;
    conn.write_all(body).await?;
    conn.flush().await?;
    Ok(())
}

/// One request per connection: read it, check it, forward it, check and relay the answer.
async fn serve(mut conn: tokio::net::TcpStream, sessions: &Sessions, up: &Upstream, max: usize) -> Result<()> {
    let mut buf = Vec::new();
    let limits = Limits { max_head_bytes: MAX_HEAD, max_headers: 128 };
    let head = loop {
        if let Some((h, used)) = RequestHead::parse(&buf, &limits)? {
            buf.drain(..used);
            break h;
        }
        let mut chunk = vec![0u8; 16 * 1024];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if !head.method.eq_ignore_ascii_case("POST") {
        conn.write_all(&respond_head(405, "Method Not Allowed", &[("Allow", "POST".into()), ("Content-Length", "0".into())])).await?;
        return Ok(());
    }
    let framing = request_framing(&head)?;
    let (read_half, mut write_half) = conn.into_split();
    let mut body = HttpBody::new(Box::new(read_half), buf, framing);
    let payload = match body.read_all(max).await {
        Ok(p) => p,
        Err(e) => {
            let reply = json!({"jsonrpc":"2.0","id":null,"error":{"code":cork_scan::mcp::codes::INVALID_REQUEST,"message":format!("blocked by cork: mcp.malformed: {e:#}")}});
            return send_json(&mut write_half, 413, &serde_json::to_vec(&reply)?, None).await;
        }
    };
    let client_sid = head.header("mcp-session-id").and_then(|h| h.value_str()).map(str::to_string);
    let relay = sessions.get(client_sid.as_deref().unwrap_or(""));
    let routed = relay.route(McpDirection::ToServer, &payload);
    let mut answers: Vec<Vec<u8>> = routed.back.into_iter().collect();
    let session = Mutex::new(client_sid.clone());
    let mut status = 202;
    if let Some(on) = routed.onward {
        status = exchange(&relay, up, &session, &on, max, &mut |line| answers.push(line)).await?;
    }
    let new_sid = session.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if new_sid != client_sid {
        // The session the server just opened starts with what this exchange taught the checks.
        if let Some(id) = &new_sid {
            let mut guard = sessions.map.lock().unwrap_or_else(|p| p.into_inner());
            guard.0.insert(id.clone(), relay.clone());
            guard.1.push_back(id.clone());
        }
    }
    if answers.is_empty() {
        let code = if (200..300).contains(&status) { 202 } else { status };
        write_half.write_all(&respond_head(code, "Accepted", &[("Content-Length", "0".into())])).await?;
        return Ok(());
    }
    // Answers are relayed as JSON: one message, or an array when there are several.
    let messages: Vec<Value> = answers.iter().filter_map(|l| serde_json::from_slice(l).ok()).collect();
    let body = if messages.len() == 1 { serde_json::to_vec(&messages[0])? } else { serde_json::to_vec(&messages)? };
    send_json(&mut write_half, 200, &body, new_sid.as_deref()).await
}
