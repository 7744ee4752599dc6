//! `cork mcp proxy`: MCP's checks outside bumped traffic.
//!
//! - `cork mcp proxy [--config F] [--audit F] -- CMD ARGS` runs CMD as a stdio MCP server and
//!   relays newline-delimited JSON-RPC between it and this process's stdin/stdout.
//! - `cork mcp proxy --upstream https://HOST/PATH` bridges stdio to a remote server speaking
//!   streamable HTTP (see `mcp_http`).
//! - `cork mcp proxy --listen ADDR --upstream URL` is an HTTP reverse proxy in front of one.
//!
//! Every message goes through one [`McpSession`] (see [`Relay`]). A refused client request is
//! answered with a JSON-RPC error (same id, a message naming the rule) and never forwarded; a
//! refused server response is replaced by such an error; refused notifications are dropped.
//! One audit line (JSON) per message goes to `--audit F` or standard error.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use cork_policy::Policy;
use cork_scan::mcp::{error_reply, McpDirection, McpSession, MessageKind, MessageVerdict, Observation};
use cork_scan::Action;
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Subcommand)]
pub enum McpCommand {
    /// Relay an MCP server through cork's MCP checks (stdio wrapper, stdio-to-remote bridge, or
    /// HTTP reverse proxy).
    Proxy(ProxyArgs),
}

#[derive(Args)]
pub struct ProxyArgs {
    /// Policy whose `scan` section (including `scan.mcp`) configures the checks (default: the
    /// embedded policy).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Audit log (JSON lines); standard error when absent.
    #[arg(long)]
    pub audit: Option<PathBuf>,
    /// Remote MCP server (`https://…` streamable HTTP) instead of a local command.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Serve an HTTP reverse proxy on this address in front of `--upstream`.
    #[arg(long, requires = "upstream")]
    pub listen: Option<std::net::SocketAddr>,
    /// Extra root certificates (PEM) trusted for `--upstream`, besides the system roots.
    #[arg(long)]
    pub ca: Vec<PathBuf>,
    /// Server name used in audit lines (default: the command's file name or the upstream host).
    #[arg(long)]
    pub name: Option<String>,
    /// The stdio MCP server to run, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub fn main(command: McpCommand) -> Result<std::process::ExitCode> {
    match command {
        McpCommand::Proxy(args) => proxy(args),
    }
}

fn proxy(args: ProxyArgs) -> Result<std::process::ExitCode> {
    // Standard output may be the MCP channel: logs go to standard error only.
    crate::setup::init_logging("text");
    let policy = match &args.config {
        Some(path) => Policy::from_file(path)?,
        None => Policy::embedded_default(),
    };
    let engine = cork_scan::Engine::new(&policy.scan)?;
    let audit = AuditSink::open(args.audit.as_ref())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match (&args.upstream, args.command.is_empty(), args.listen) {
        (None, false, None) => {
            let name = args.name.clone().unwrap_or_else(|| {
                std::path::Path::new(&args.command[0]).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            });
            let relay = Arc::new(Relay::new(&engine, &name, audit));
            rt.block_on(stdio_wrap(relay, &args.command, engine.mcp_policy().config().max_message_bytes))
        }
        (Some(url), true, listen) => {
            let upstream = crate::mcp_http::Upstream::parse(url, &args.ca)?;
            let name = args.name.clone().unwrap_or_else(|| upstream.host.clone());
            let max = engine.mcp_policy().config().max_message_bytes;
            match listen {
                None if upstream.websocket => {
                    let relay = Arc::new(Relay::new(&engine, &name, audit));
                    rt.block_on(crate::mcp_ws::stdio_bridge(relay, upstream, max))
                }
                None => {
                    let relay = Arc::new(Relay::new(&engine, &name, audit));
                    rt.block_on(crate::mcp_http::stdio_bridge(relay, upstream, max))
                }
                Some(_) if upstream.websocket => bail!("--listen serves streamable HTTP: give it an https:// upstream"),
                Some(addr) => rt.block_on(crate::mcp_http::reverse_proxy(engine, name, audit, addr, upstream, max)),
            }
        }
        (Some(_), false, _) => bail!("give either --upstream URL or a command after --, not both"),
        (None, _, Some(_)) => bail!("--listen needs --upstream"),
        (None, true, None) => bail!("nothing to proxy: give a command after -- or --upstream URL"),
    }
}

/// Where audit lines go.
#[derive(Clone)]
pub struct AuditSink(Arc<Mutex<Box<dyn Write + Send>>>);

impl AuditSink {
    fn open(path: Option<&PathBuf>) -> Result<AuditSink> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))?),
            None => Box::new(std::io::stderr()),
        };
        Ok(AuditSink(Arc::new(Mutex::new(out))))
    }

    fn write(&self, record: &Value) {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = out.write_all(&line).and_then(|_| out.flush()) {
            tracing::warn!(error = %e, "writing an MCP audit line");
        }
    }
}

/// What to do with one transport message after the checks.
#[derive(Debug, Default)]
pub struct Routed {
    /// Bytes to pass on toward the message's destination (the original, or a replacement).
    pub onward: Option<Vec<u8>>,
    /// Bytes to send back to the message's sender (errors for refused requests).
    pub back: Option<Vec<u8>>,
}

/// One MCP session's checks between a client and a server, shared by both directions.
pub struct Relay {
    session: Mutex<McpSession>,
    server: String,
    audit: AuditSink,
}

impl Relay {
    pub fn new(engine: &cork_scan::Engine, server: &str, audit: AuditSink) -> Relay {
        Relay { session: Mutex::new(McpSession::new(engine, server)), server: server.to_string(), audit }
    }

    /// Checks one message (or batch) and says where its parts go.
    pub fn route(&self, dir: McpDirection, raw: &[u8]) -> Routed {
        let obs = self.session.lock().unwrap_or_else(|p| p.into_inner()).observe(dir, raw);
        for m in &obs.messages {
            self.audit(dir, m);
        }
        route(dir, raw, &obs)
    }

    /// Reads the next non-blank line from `reader` and routes it; `None` at end of input or on a
    /// read error.
    pub async fn next_line<R: AsyncBufRead + Unpin>(&self, reader: &mut R, buf: &mut Vec<u8>, dir: McpDirection, max: usize) -> Option<Routed> {
        loop {
            return match read_line_bounded(reader, buf, max).await {
                Ok(None) | Err(_) => None,
                Ok(Some(Err(len))) => Some(self.overlong(dir, len, max)),
                Ok(Some(Ok(()))) if buf.trim_ascii().is_empty() => continue,
                Ok(Some(Ok(()))) => Some(self.route(dir, buf)),
            };
        }
    }

    /// A message too long to read: refused without being parsed.
    pub fn overlong(&self, dir: McpDirection, len: usize, max: usize) -> Routed {
        let reason = format!("message of at least {len} bytes exceeds mcp.max_message_bytes ({max})");
        self.audit.write(&json!({
            "time": now(), "kind": "mcp", "server": self.server, "direction": dir, "message_kind": "invalid",
            "verdict": "block", "rules": ["mcp.malformed"], "reason": reason,
        }));
        let reply = json!({"jsonrpc": "2.0", "id": null, "error": {"code": cork_scan::mcp::codes::INVALID_REQUEST, "message": format!("blocked by cork: mcp.malformed: {reason}"), "data": {"rules": ["mcp.malformed"]}}});
        let line = line_of(&reply);
        match dir {
            McpDirection::ToServer => Routed { onward: None, back: Some(line) },
            McpDirection::ToClient => Routed { onward: Some(line), back: None },
        }
    }

    fn audit(&self, dir: McpDirection, m: &MessageVerdict) {
        let verdict = match m.action() {
            Some(Action::Block) => "block",
            Some(_) => "audit",
            None => "allow",
        };
        let rules: Vec<&str> = m.findings.iter().map(|f| f.finding.rule.as_str()).collect();
        let mut rec = json!({
            "time": now(), "kind": "mcp", "server": self.server, "direction": dir, "message_kind": m.kind,
            "method": m.method, "id": m.id, "tool": m.tool, "verdict": verdict, "rules": rules, "findings": m.findings,
        });
        if m.blocked() {
            rec["reason"] = Value::String(m.block_reason());
        }
        self.audit.write(&rec);
    }
}

/// Splits an observation into what goes on and what goes back: see the module docs.
fn route(dir: McpDirection, raw: &[u8], obs: &Observation) -> Routed {
    if !obs.blocked() {
        let mut line = raw.trim_ascii().to_vec();
        line.push(b'\n');
        return Routed { onward: Some(line), back: None };
    }
    let mut onward = Vec::new();
    let mut back = Vec::new();
    for m in &obs.messages {
        let Some(msg) = &m.message else {
            back_or_onward(dir, &mut back, &mut onward, error_reply(m));
            continue;
        };
        if !m.blocked() {
            onward.push(msg.clone());
            continue;
        }
        match m.kind {
            // The sender waits for an answer to its request.
            MessageKind::Request => back.push(error_reply(m)),
            // The receiver waits for this response: it gets an error in its place.
            MessageKind::Response => onward.push(error_reply(m)),
            MessageKind::Notification => {}
            MessageKind::Invalid => back_or_onward(dir, &mut back, &mut onward, error_reply(m)),
        }
    }
    let pack = |v: Vec<Value>| -> Option<Vec<u8>> {
        match (obs.batch, v.len()) {
            (_, 0) => None,
            (false, _) => Some(line_of(&v[0])),
            (true, _) => Some(line_of(&Value::Array(v))),
        }
    };
    Routed { onward: pack(onward), back: pack(back) }
}

/// Garbage is answered to the client, whichever side sent it: the client is the one waiting.
fn back_or_onward(dir: McpDirection, back: &mut Vec<Value>, onward: &mut Vec<Value>, reply: Value) {
    match dir {
        McpDirection::ToServer => back.push(reply),
        McpDirection::ToClient => onward.push(reply),
    }
}

pub fn line_of(v: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    line
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Reads one line of at most `max` bytes (without its newline). `Ok(None)` at end of input; an
/// overlong line is consumed to its end and reported as `Err(length)`.
pub async fn read_line_bounded<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<Result<(), usize>>> {
    buf.clear();
    let mut overlong = 0usize;
    let mut any = false;
    loop {
        let avail = reader.fill_buf().await?;
        if avail.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match memchr_newline(avail) {
            Some(p) => (p + 1, true),
            None => (avail.len(), false),
        };
        if overlong > 0 || buf.len() + take > max + 2 {
            overlong += buf.len() + take;
            buf.clear();
        } else {
            buf.extend_from_slice(&avail[..take]);
        }
        reader.consume(take);
        if done {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(if overlong > 0 { Err(overlong) } else { Ok(()) }))
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Messages for the writer that owns the child's stdin.
enum ToChild {
    Line(Vec<u8>),
    Close,
}

async fn stdio_wrap(relay: Arc<Relay>, command: &[String], max: usize) -> Result<std::process::ExitCode> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", command[0]))?;
    let mut child_in = child.stdin.take().context("child stdin")?;
    let child_out = child.stdout.take().context("child stdout")?;
    let stdout = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
    let (to_child, mut to_child_rx) = tokio::sync::mpsc::channel::<ToChild>(64);

    // The only writer of the child's stdin; closing it tells the server the client is gone.
    let child_writer = tokio::spawn(async move {
        while let Some(m) = to_child_rx.recv().await {
            match m {
                ToChild::Line(l) => {
                    if child_in.write_all(&l).await.is_err() || child_in.flush().await.is_err() {
                        break;
                    }
                }
                ToChild::Close => break,
            }
        }
        drop(child_in);
        // Drain, so senders never block on a server that stopped reading.
        while to_child_rx.recv().await.is_some() {}
    });

    let client_side = {
        let relay = relay.clone();
        let stdout = stdout.clone();
        let to_child = to_child.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(tokio::io::stdin());
            let mut buf = Vec::new();
            loop {
                let Some(routed) = relay.next_line(&mut reader, &mut buf, McpDirection::ToServer, max).await else { break };
                if let Some(back) = routed.back {
                    let mut out = stdout.lock().await;
                    if out.write_all(&back).await.is_err() || out.flush().await.is_err() {
                        break;
                    }
                }
                if let Some(on) = routed.onward {
                    if to_child.send(ToChild::Line(on)).await.is_err() {
                        break;
                    }
                }
            }
            let _ = to_child.send(ToChild::Close).await;
        })
    };

    let mut reader = BufReader::new(child_out);
    let mut buf = Vec::new();
    loop {
        let Some(routed) = relay.next_line(&mut reader, &mut buf, McpDirection::ToClient, max).await else { break };
        if let Some(on) = routed.onward {
            let mut out = stdout.lock().await;
            if out.write_all(&on).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
        if let Some(back) = routed.back {
            let _ = to_child.send(ToChild::Line(back)).await;
        }
    }
    drop(to_child);
    let status = child.wait().await.context("waiting for the MCP server")?;
    client_side.abort();
    child_writer.abort();
    Ok(match status.code() {
        Some(0) => std::process::ExitCode::SUCCESS,
        Some(c) => std::process::ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => std::process::ExitCode::from(1),
    })
}
