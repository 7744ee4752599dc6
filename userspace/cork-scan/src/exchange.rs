//! `cork scan`: offline scanning of recorded exchanges, one JSON object per line.
//!
//! Input lines (lines sharing `"session"` are one session, scanned in order):
//! ```json
//! {"kind":"request","method":"POST","url":"https://api.example.com/v1","headers":[["content-type","application/json"]],"body":"{...}"}
//! {"kind":"response","url":"https://example.com/","status":200,"headers":[],"body_base64":"..."}
//! {"kind":"mcp","direction":"to_server","server":"fs","message":{}}
//! {"kind":"websocket","url":"wss://x.test/","direction":"to_server","frames":["...",{"opcode":"text","fin":false,"payload":"..."},{"opcode":"continuation","payload":"..."}]}
//! ```
//! Output, one line per input line:
//! ```json
//! {"line":1,"verdict":"block","findings":[{"rule":"github.pat_classic","severity":"critical","location":"body.json","action":"block"}],"redacted":null}
//! ```
//! `verdict` is `allow`, `redact`, `block` or `error` (malformed line; counted as blocked).
//! `redacted` holds the masked URL, headers and body when the verdict is `redact`.
//!
//! `mcp` lines are JSON-RPC messages (or batches) between an MCP client and the server named by
//! `server`; `direction` is `to_server` or `to_client`. Lines with the same `session` and
//! `server` are one [`crate::mcp::McpSession`], judged in order (lines without `session` share
//! one anonymous session per server), so tool listings, rug pulls, unlisted tools and chains are
//! seen across lines. Their findings carry a `reason`.
//!
//! `a2a` lines carry an A2A JSON-RPC message (`"direction"` and `"message"`) or an Agent Card
//! (`"card"`, and optionally `"card_url"`), for the agent named by `"agent"`; lines with the
//! same `session` and `agent` are one [`crate::a2a::A2aSession`]:
//! ```json
//! {"kind":"a2a","session":"s1","agent":"travel","card_url":"https://t.example/.well-known/agent-card.json","card":{"name":"Travel"}}
//! {"kind":"a2a","session":"s1","agent":"travel","direction":"to_server","message":{"jsonrpc":"2.0","id":1,"method":"message/send","params":{}}}
//! ```

use std::io::{BufRead, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::a2a::A2aSession;
use crate::mcp::{McpDirection, McpSession, MessageVerdict};
use crate::{redact_in_place, Action, BodyMeta, Engine, Finding};

/// MCP sessions kept at most; a line that would open one more is an error.
pub const MAX_MCP_SESSIONS: usize = 10_000;

/// Longest line accepted; longer lines get an `error` verdict.
pub const MAX_LINE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("reading input: {0}")]
    Read(std::io::Error),
    #[error("writing output: {0}")]
    Write(std::io::Error),
}

/// Totals over a whole input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanSummary {
    pub lines: u64,
    pub allowed: u64,
    pub redacted: u64,
    pub blocked: u64,
    pub unsupported: u64,
    pub errors: u64,
}

impl ScanSummary {
    /// Whether anything was blocked or could not be judged (the `cork scan` exit status).
    pub fn any_blocked(&self) -> bool {
        self.blocked > 0 || self.errors > 0
    }
}

// Some fields are accepted only so that recorded exchanges parse strictly; they do not change
// the verdict yet.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum Exchange {
    Request {
        #[serde(default)]
        session: Option<String>,
        #[serde(default)]
        method: Option<String>,
        url: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        body_base64: Option<String>,
    },
    Response {
        #[serde(default)]
        session: Option<String>,
        #[serde(default)]
        url: Option<String>,
        #[serde(default)]
        status: Option<u16>,
        #[serde(default)]
        headers: Vec<(String, String)>,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        body_base64: Option<String>,
    },
    Mcp {
        #[serde(default)]
        session: Option<String>,
        direction: String,
        server: String,
        message: serde_json::Value,
    },
    A2a {
        #[serde(default)]
        session: Option<String>,
        agent: String,
        #[serde(default)]
        direction: Option<String>,
        #[serde(default)]
        message: Option<serde_json::Value>,
        #[serde(default)]
        card: Option<serde_json::Value>,
        #[serde(default)]
        card_url: Option<String>,
    },
    Websocket {
        #[serde(default)]
        session: Option<String>,
        url: String,
        direction: String,
        frames: Vec<serde_json::Value>,
    },
}

#[derive(Debug, Serialize)]
struct FindingOut<'a> {
    rule: &'a str,
    severity: crate::Severity,
    action: Action,
    location: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    encoding: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Redacted {
    url: String,
    headers: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

#[derive(Debug, Serialize)]
struct LineOut<'a> {
    line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    findings: Vec<FindingOut<'a>>,
    redacted: Option<Redacted>,
}

/// Reads one line of at most [`MAX_LINE`] bytes; `Ok(None)` at end of input. An overlong line is
/// consumed to its end and returned as `Err(len)`.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Result<(), usize>>> {
    buf.clear();
    let mut overlong = 0usize;
    let mut any = false;
    loop {
        let avail = reader.fill_buf()?;
        if avail.is_empty() {
            break;
        }
        any = true;
        let (take, done) = match memchr::memchr(b'\n', avail) {
            Some(p) => (p + 1, true),
            None => (avail.len(), false),
        };
        if overlong > 0 || buf.len() + take > MAX_LINE {
            overlong += take;
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

/// Scans every line of `reader`, writes one verdict line per input line to `writer`.
pub fn scan_jsonl(mut reader: impl BufRead, mut writer: impl Write, engine: &Engine) -> Result<ScanSummary, ExchangeError> {
    let mut summary = ScanSummary::default();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut mcp_sessions: std::collections::HashMap<(Option<String>, String), McpSession> = std::collections::HashMap::new();
    let mut a2a_sessions: std::collections::HashMap<(Option<String>, String), A2aSession> = std::collections::HashMap::new();
    while let Some(read) = read_line(&mut reader, &mut buf).map_err(ExchangeError::Read)? {
        line_no += 1;
        let trimmed = buf.trim_ascii();
        if read.is_ok() && trimmed.is_empty() {
            continue;
        }
        summary.lines += 1;
        let out = match read {
            Err(len) => error_line(line_no, format!("line of {len} bytes exceeds {MAX_LINE}")),
            Ok(()) => match serde_json::from_slice::<Exchange>(trimmed) {
                Err(e) => error_line(line_no, format!("malformed exchange: {e}")),
                Ok(Exchange::Mcp { session, direction, server, message }) => judge_mcp(line_no, session, &direction, server, &message, engine, &mut mcp_sessions),
                Ok(Exchange::A2a { session, agent, direction, message, card, card_url }) => {
                    judge_a2a(line_no, (session, agent), A2aLine { direction, message, card, card_url }, engine, &mut a2a_sessions)
                }
                Ok(x) => judge(line_no, x, engine),
            },
        };
        match out.0 {
            "allow" => summary.allowed += 1,
            "redact" => summary.redacted += 1,
            "block" => summary.blocked += 1,
            "unsupported" => summary.unsupported += 1,
            _ => summary.errors += 1,
        }
        writer.write_all(&out.1).map_err(ExchangeError::Write)?;
        writer.write_all(b"\n").map_err(ExchangeError::Write)?;
    }
    writer.flush().map_err(ExchangeError::Write)?;
    Ok(summary)
}

fn error_line(line: u64, error: String) -> (&'static str, Vec<u8>) {
    let out = LineOut { line, session: None, verdict: "error", error: Some(error), findings: Vec::new(), redacted: None };
    ("error", serde_json::to_vec(&out).unwrap_or_else(|_| b"{\"verdict\":\"error\"}".to_vec()))
}

/// The verdict line for a WebSocket exchange. cork's relay cannot rewrite a held message, so a
/// finding that asks for redaction blocks it, and the line says `block`.
fn websocket_line(line: u64, session: Option<&str>, findings: &[Finding]) -> (&'static str, Vec<u8>) {
    let verdict = match findings.iter().map(|f| f.action).max() {
        Some(Action::Block | Action::Redact) => "block",
        _ => "allow",
    };
    let findings = findings
        .iter()
        .map(|f| FindingOut { rule: &f.rule, severity: f.severity, action: f.action, location: &f.location, encoding: &f.encoding, reason: None })
        .collect();
    let out = LineOut { line, session, verdict, error: None, findings, redacted: None };
    (verdict, serde_json::to_vec(&out).unwrap_or_default())
}

fn body_bytes(body: Option<String>, body_base64: Option<String>) -> Result<Vec<u8>, String> {
    match (body, body_base64) {
        (Some(_), Some(_)) => Err("both body and body_base64 given".into()),
        (Some(b), None) => Ok(b.into_bytes()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b.trim()).map_err(|e| format!("body_base64: {e}")),
        (None, None) => Ok(Vec::new()),
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn judge(line: u64, x: Exchange, engine: &Engine) -> (&'static str, Vec<u8>) {
    let mut findings: Vec<Finding> = Vec::new();
    let (session, url, headers, body, is_request) = match x {
        Exchange::Request { session, method: _, url, headers, body, body_base64 } => match body_bytes(body, body_base64) {
            Ok(b) => (session, url, headers, b, true),
            Err(e) => return error_line(line, e),
        },
        Exchange::Response { session, url, status: _, headers, body, body_base64 } => match body_bytes(body, body_base64) {
            Ok(b) => (session, url.unwrap_or_default(), headers, b, false),
            Err(e) => return error_line(line, e),
        },
        Exchange::Websocket { session, url: _, direction, frames } => {
            return match crate::websocket::scan_frames(engine, &direction, &frames) {
                Ok(findings) => websocket_line(line, session.as_deref(), &findings),
                Err(e) => error_line(line, e),
            };
        }
        Exchange::Mcp { session, .. } | Exchange::A2a { session, .. } => {
            // MCP lines are judged by `judge_mcp`, which keeps their session.
            let out = LineOut { line, session: session.as_deref(), verdict: "unsupported", error: None, findings: Vec::new(), redacted: None };
            return ("unsupported", serde_json::to_vec(&out).unwrap_or_default());
        }
    };
    let mut red_url = url.clone().into_bytes();
    let mut red_headers: Vec<(String, Vec<u8>)> = headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    let mut red_body = body.clone();
    if is_request {
        for f in engine.scan_url(&url) {
            if let (Action::Redact, Some(s)) = (f.action, &f.span) {
                redact_in_place(&mut red_url, s.start as usize..s.end as usize);
            }
            findings.push(f);
        }
        for (i, (k, v)) in headers.iter().enumerate() {
            for f in engine.scan_header(k, v.as_bytes()) {
                if let (Action::Redact, Some(s)) = (f.action, &f.span) {
                    redact_in_place(&mut red_headers[i].1, s.start as usize..s.end as usize);
                }
                findings.push(f);
            }
        }
    }
    let meta = BodyMeta { content_type: header(&headers, "content-type"), content_encoding: header(&headers, "content-encoding") };
    let mut scan = if is_request { engine.request_body(meta) } else { engine.response_body(meta) };
    let mut body_findings = scan.push(&body);
    body_findings.extend(scan.finish());
    for f in body_findings {
        if let (Action::Redact, Some(s)) = (f.action, &f.span) {
            redact_in_place(&mut red_body, s.start as usize..s.end as usize);
        }
        findings.push(f);
    }
    let worst = findings.iter().map(|f| f.action).max();
    let verdict = match worst {
        Some(Action::Block) => "block",
        Some(Action::Redact) => "redact",
        _ => "allow",
    };
    let redacted = (verdict == "redact").then(|| {
        let (body, body_base64) = match String::from_utf8(red_body) {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))),
        };
        Redacted {
            url: String::from_utf8_lossy(&red_url).into_owned(),
            headers: red_headers.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect(),
            body,
            body_base64,
        }
    });
    let out = LineOut {
        line,
        session: session.as_deref(),
        verdict,
        error: None,
        findings: findings
            .iter()
            .map(|f| FindingOut { rule: &f.rule, severity: f.severity, action: f.action, location: &f.location, encoding: &f.encoding, reason: None })
            .collect(),
        redacted,
    };
    (verdict, serde_json::to_vec(&out).unwrap_or_default())
}

fn judge_mcp(
    line: u64,
    session: Option<String>,
    direction: &str,
    server: String,
    message: &serde_json::Value,
    engine: &Engine,
    sessions: &mut std::collections::HashMap<(Option<String>, String), McpSession>,
) -> (&'static str, Vec<u8>) {
    let dir = match direction {
        "to_server" => McpDirection::ToServer,
        "to_client" => McpDirection::ToClient,
        other => return error_line(line, format!("direction must be to_server or to_client, not {other:?}")),
    };
    let key = (session, server);
    if !sessions.contains_key(&key) && sessions.len() >= MAX_MCP_SESSIONS {
        return error_line(line, format!("more than {MAX_MCP_SESSIONS} MCP sessions"));
    }
    let mcp = sessions.entry(key.clone()).or_insert_with(|| McpSession::new(engine, &key.1));
    // Through bytes, so the message-size limit applies as it does on the wire.
    let raw = serde_json::to_vec(message).unwrap_or_default();
    let obs = mcp.observe(dir, &raw);
    session_line(line, key.0.as_deref(), &obs.messages)
}

/// The verdict line of a message judged by a session.
fn session_line(line: u64, session: Option<&str>, messages: &[MessageVerdict]) -> (&'static str, Vec<u8>) {
    let findings = || messages.iter().flat_map(|m| m.findings.iter());
    let worst = findings().map(|f| f.finding.action).max();
    let verdict = match worst {
        Some(Action::Block) => "block",
        Some(Action::Redact) => "redact",
        _ => "allow",
    };
    let out = LineOut {
        line,
        session,
        verdict,
        error: None,
        findings: findings()
            .map(|f| FindingOut {
                rule: &f.finding.rule,
                severity: f.finding.severity,
                action: f.finding.action,
                location: &f.finding.location,
                encoding: &f.finding.encoding,
                reason: Some(&f.reason),
            })
            .collect(),
        redacted: None,
    };
    (verdict, serde_json::to_vec(&out).unwrap_or_default())
}

/// The fields of an `a2a` line besides its session: a JSON-RPC message with its direction, or
/// an Agent Card with where it came from.
struct A2aLine {
    direction: Option<String>,
    message: Option<serde_json::Value>,
    card: Option<serde_json::Value>,
    card_url: Option<String>,
}

fn judge_a2a(
    line: u64,
    key: (Option<String>, String),
    x: A2aLine,
    engine: &Engine,
    sessions: &mut std::collections::HashMap<(Option<String>, String), A2aSession>,
) -> (&'static str, Vec<u8>) {
    if !sessions.contains_key(&key) && sessions.len() >= MAX_MCP_SESSIONS {
        return error_line(line, format!("more than {MAX_MCP_SESSIONS} A2A sessions"));
    }
    let a2a = sessions.entry(key.clone()).or_insert_with(|| A2aSession::new(engine, &key.1));
    let messages = match (x.message, x.card) {
        (Some(message), None) => {
            let dir = match x.direction.as_deref() {
                Some("to_server") => McpDirection::ToServer,
                Some("to_client") => McpDirection::ToClient,
                other => return error_line(line, format!("direction must be to_server or to_client, not {other:?}")),
            };
            a2a.observe(dir, &serde_json::to_vec(&message).unwrap_or_default()).messages
        }
        (None, Some(card)) => {
            let location = x.card_url.unwrap_or_else(|| crate::a2a::AGENT_CARD_PATH.to_string());
            vec![a2a.observe_card(&location, &serde_json::to_vec(&card).unwrap_or_default())]
        }
        _ => return error_line(line, "an a2a line carries exactly one of message and card".into()),
    };
    session_line(line, key.0.as_deref(), &messages)
}
