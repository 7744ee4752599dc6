//! MCP over streamable HTTP inside bumped exchanges (HTTP/1.1 and HTTP/2 streams alike).
//!
//! A request is MCP when it is a `POST` of `application/json` that accepts `text/event-stream`
//! or carries `Mcp-Session-Id` / `MCP-Protocol-Version` (what the streamable-HTTP transport
//! requires of clients), or a `GET` for `text/event-stream` with an `Mcp-Session-Id` (the
//! server's own stream). For such exchanges:
//!
//! - The request body (within `limits.body_buffer_bytes`, else refused) is one JSON-RPC message
//!   or batch, judged by the session's [`McpSession`] before the origin sees anything. When
//!   only `Accept` made the request look like MCP (LLM APIs stream SSE too), a body that is not
//!   JSON-RPC (no `"jsonrpc"` member) makes it an ordinary exchange, left to the engine's scan.
//! - `Accept-Encoding` is removed, so the response comes back uncompressed and can be judged;
//!   a response that is compressed anyway is refused.
//! - An `application/json` response is judged whole (bounded the same way); a
//!   `text/event-stream` response is judged event by event, and bytes of an event are held back
//!   until the event is complete and judged.
//!
//! Sessions are kept per (client address, host, `Mcp-Session-Id`) in [`McpSessions`], so tool
//! listings, rug pulls and chains are followed across requests and connections.
//!
//! A2A Agent Cards (`GET /.well-known/agent-card.json`, or the older `agent.json`) are judged the
//! same way: the answer (bounded likewise) goes to the [`A2aSession`] of (client address, host),
//! which checks it for poisoning and for drift from the card first seen there.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cork_http::RequestHead;
use cork_policy::Mode;
use cork_scan::a2a::A2aSession;
use cork_scan::mcp::{McpDirection, McpSession};
use cork_scan::{Action, Finding, Severity};

use crate::body::{BodyCheck, Effect};
use crate::inspect::effect;

/// Sessions kept at most; the oldest is forgotten first.
const MAX_SESSIONS: usize = 4096;

type Key = (IpAddr, String, String);

/// Every MCP session cork follows, shared by all connections.
#[derive(Default)]
pub struct McpSessions {
    inner: Mutex<Sessions>,
}

struct Sessions {
    mcp: Bounded<McpSession>,
    a2a: Bounded<A2aSession>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions { mcp: Bounded { map: HashMap::new(), order: VecDeque::new() }, a2a: Bounded { map: HashMap::new(), order: VecDeque::new() } }
    }
}

/// Sessions by key, forgetting the oldest beyond [`MAX_SESSIONS`].
struct Bounded<T> {
    map: HashMap<Key, Arc<Mutex<T>>>,
    order: VecDeque<Key>,
}

impl<T> Bounded<T> {
    fn get(&mut self, key: Key, make: impl FnOnce() -> T) -> Arc<Mutex<T>> {
        if let Some(found) = self.map.get(&key) {
            return found.clone();
        }
        let session = Arc::new(Mutex::new(make()));
        self.map.insert(key.clone(), session.clone());
        self.order.push_back(key);
        while self.order.len() > MAX_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        session
    }
}

impl McpSessions {
    fn mcp(&self, key: Key, engine: &cork_scan::Engine) -> Arc<Mutex<McpSession>> {
        let host = key.1.clone();
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).mcp.get(key, || McpSession::new(engine, &host))
    }

    fn a2a(&self, key: Key, engine: &cork_scan::Engine) -> Arc<Mutex<A2aSession>> {
        let host = key.1.clone();
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).a2a.get(key, || A2aSession::new(engine, &host))
    }
}

/// Whether a request fetches an A2A Agent Card.
pub fn is_agent_card_request(head: &RequestHead) -> bool {
    let path = head.target.split(['?', '#']).next().unwrap_or("");
    head.method.eq_ignore_ascii_case("GET") && (path == cork_scan::a2a::AGENT_CARD_PATH || path == "/.well-known/agent.json")
}

fn header_str<'a>(head: &'a RequestHead, name: &str) -> Option<&'a str> {
    head.header(name).and_then(|h| h.value_str())
}

fn media_type(ct: &str) -> String {
    ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Whether a request head is MCP streamable HTTP (see the module docs).
pub fn is_mcp_request(head: &RequestHead) -> bool {
    let accepts_sse = header_str(head, "accept").is_some_and(|a| a.to_ascii_lowercase().contains("text/event-stream"));
    let marked = head.header("mcp-session-id").is_some() || head.header("mcp-protocol-version").is_some();
    if head.method.eq_ignore_ascii_case("POST") {
        let json = header_str(head, "content-type").is_some_and(|ct| media_type(ct) == "application/json");
        json && (accepts_sse || marked)
    } else if head.method.eq_ignore_ascii_case("GET") {
        accepts_sse && head.header("mcp-session-id").is_some()
    } else {
        false
    }
}

/// One MCP exchange (or Agent Card fetch): its session, and the policy mode for effects.
pub struct McpExchange {
    session: Followed,
    mode: Mode,
    /// False once a request that only looked like MCP turned out not to carry JSON-RPC.
    is_mcp: Arc<AtomicBool>,
    /// Whether MCP headers (not just `Accept`) marked the request.
    marked: bool,
}

#[derive(Clone)]
enum Followed {
    Mcp(Arc<Mutex<McpSession>>),
    /// An Agent Card fetch, with the card's location.
    Card(Arc<Mutex<A2aSession>>, String),
}

impl McpExchange {
    /// Recognises an MCP request and prepares it (drops `Accept-Encoding`). `None` for other
    /// requests, which are left untouched.
    pub fn start(sessions: &McpSessions, engine: &cork_scan::Engine, mode: Mode, client: IpAddr, host: &str, head: &mut RequestHead) -> Option<McpExchange> {
        let marked = head.header("mcp-session-id").is_some() || head.header("mcp-protocol-version").is_some() || is_agent_card_request(head);
        let session = if is_mcp_request(head) {
            let id = header_str(head, "mcp-session-id").unwrap_or("").to_string();
            Followed::Mcp(sessions.mcp((client, host.to_string(), id), engine))
        } else if is_agent_card_request(head) {
            let location = format!("https://{host}{}", head.target);
            Followed::Card(sessions.a2a((client, host.to_string(), String::new()), engine), location)
        } else {
            return None;
        };
        head.headers.retain(|h| !h.is("accept-encoding"));
        Some(McpExchange { session, mode, is_mcp: Arc::new(AtomicBool::new(true)), marked })
    }

    /// [`McpExchange::start`] for an HTTP/2 stream, whose head is not a [`RequestHead`]:
    /// `headers` (without `Host`) are those sent upstream, and lose `Accept-Encoding` likewise.
    #[allow(clippy::too_many_arguments)]
    pub fn start_h2(
        sessions: &McpSessions,
        engine: &cork_scan::Engine,
        mode: Mode,
        client: IpAddr,
        host: &str,
        method: &str,
        target: &str,
        headers: &mut Vec<cork_http::Header>,
    ) -> Option<McpExchange> {
        let mut head = RequestHead { method: method.to_string(), target: target.to_string(), version: cork_http::head::Version::Http11, headers: std::mem::take(headers) };
        let started = McpExchange::start(sessions, engine, mode, client, host, &mut head);
        *headers = head.headers;
        started
    }

    /// The check for the request body: one JSON-RPC message or batch, to the server.
    pub fn request_check(&self, limit: usize) -> McpBodyCheck {
        let framing = if matches!(self.session, Followed::Card(..)) { Framing::Ignore } else { Framing::Json };
        let mut check = McpBodyCheck::new(self.session.clone(), self.mode, McpDirection::ToServer, framing, limit);
        if !self.marked {
            check.tentative = Some(self.is_mcp.clone());
        }
        check
    }

    /// The check for the response body, by its content type and coding.
    pub fn response_check(&self, content_type: Option<&str>, content_encoding: Option<&str>, limit: usize) -> McpBodyCheck {
        let framing = match content_type.map(media_type).as_deref() {
            _ if !self.is_mcp.load(Ordering::Relaxed) => Framing::Ignore,
            // A card is judged whatever it claims to be; a non-JSON card is malformed.
            _ if matches!(self.session, Followed::Card(..)) => Framing::Json,
            Some("application/json") => Framing::Json,
            Some("text/event-stream") => Framing::EventStream,
            // Other responses (errors, 202 Accepted) carry no JSON-RPC.
            _ => Framing::Ignore,
        };
        let mut check = McpBodyCheck::new(self.session.clone(), self.mode, McpDirection::ToClient, framing, limit);
        if framing != Framing::Ignore && content_encoding.is_some_and(|c| !c.trim().eq_ignore_ascii_case("identity")) {
            check.refuse_all = Some("a compressed MCP response although cork asked for none".into());
        }
        check
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Json,
    EventStream,
    Ignore,
}

/// Judges a body's JSON-RPC with the session, beside the scanner.
pub struct McpBodyCheck {
    session: Followed,
    mode: Mode,
    dir: McpDirection,
    framing: Framing,
    limit: usize,
    /// Bytes not judged yet: the whole JSON body, or the current partial event.
    pending: Vec<u8>,
    stopped: bool,
    refuse_all: Option<String>,
    reasons: Vec<String>,
    /// Set when only `Accept` marked the request: cleared if the body is not JSON-RPC.
    tentative: Option<Arc<AtomicBool>>,
}

impl McpBodyCheck {
    fn new(session: Followed, mode: Mode, dir: McpDirection, framing: Framing, limit: usize) -> McpBodyCheck {
        McpBodyCheck { session, mode, dir, framing, limit, pending: Vec::new(), stopped: false, refuse_all: None, reasons: Vec::new(), tentative: None }
    }

    fn refuse(&mut self, why: String) -> Vec<(Finding, Effect)> {
        self.stopped = true;
        let finding = Finding { rule: "mcp.malformed".into(), severity: Severity::High, action: Action::Block, location: "mcp".into(), span: None, encoding: String::new() };
        self.reasons.push(format!("mcp.malformed: {why}"));
        // Failures are blocks in any mode: cork cannot say what it would let through.
        vec![(finding, Effect::Block)]
    }

    fn judge(&mut self, message: &[u8], out: &mut Vec<(Finding, Effect)>) {
        let messages = match &self.session {
            Followed::Mcp(s) => s.lock().unwrap_or_else(|p| p.into_inner()).observe(self.dir, message).messages,
            Followed::Card(s, location) => vec![s.lock().unwrap_or_else(|p| p.into_inner()).observe_card(location, message)],
        };
        for m in &messages {
            if m.blocked() {
                self.reasons.push(m.block_reason());
            }
            for f in &m.findings {
                let mut finding = f.finding.clone();
                finding.location = match &m.tool {
                    Some(tool) => format!("{}:{tool}", finding.location),
                    None => finding.location,
                };
                let eff = effect(self.mode, &finding);
                out.push((finding, eff));
            }
        }
    }

    /// Complete SSE events at the front of `pending`: each one's `data:` lines, joined.
    fn take_events(&mut self, done: bool) -> Vec<Vec<u8>> {
        let mut events = Vec::new();
        loop {
            let end = cork_http::sse::event_end(&self.pending);
            let (event_len, used) = match end {
                Some((e, u)) => (e, u),
                None if done && !self.pending.is_empty() => (self.pending.len(), self.pending.len()),
                None => break,
            };
            let data = cork_http::sse::event_data(&self.pending[..event_len]);
            self.pending.drain(..used);
            if !data.is_empty() {
                events.push(data);
            }
        }
        events
    }
}

/// Whether a body is JSON with a `"jsonrpc"` member (in the object, or the first of a batch).
fn looks_like_json_rpc(body: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(o)) => o.contains_key("jsonrpc"),
        Ok(serde_json::Value::Array(a)) => a.first().and_then(|m| m.as_object()).is_some_and(|o| o.contains_key("jsonrpc")),
        _ => false,
    }
}

impl BodyCheck for McpBodyCheck {
    fn push(&mut self, data: &[u8], done: bool) -> Vec<(Finding, Effect)> {
        if self.stopped || self.framing == Framing::Ignore {
            return Vec::new();
        }
        if let Some(why) = self.refuse_all.take() {
            return self.refuse(why);
        }
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        match self.framing {
            Framing::Json => {
                if self.pending.len() > self.limit {
                    return self.refuse(format!("MCP JSON body over limits.body_buffer_bytes ({} bytes)", self.limit));
                }
                if done {
                    let body = std::mem::take(&mut self.pending);
                    if let Some(flag) = &self.tentative {
                        if !looks_like_json_rpc(&body) {
                            flag.store(false, Ordering::Relaxed);
                            return out;
                        }
                    }
                    // An empty body (a 202 to a notification) carries no message.
                    if !body.trim_ascii().is_empty() {
                        self.judge(&body, &mut out);
                    }
                }
            }
            Framing::EventStream => {
                for event in self.take_events(done) {
                    self.judge(&event, &mut out);
                }
                if self.pending.len() > self.limit {
                    return self.refuse(format!("an MCP event over limits.body_buffer_bytes ({} bytes)", self.limit));
                }
            }
            Framing::Ignore => {}
        }
        out
    }

    fn hold_back(&self) -> usize {
        self.pending.len()
    }

    /// The MCP rules that blocked and why.
    fn reason(&self) -> Option<String> {
        (!self.reasons.is_empty()).then(|| self.reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rpc_is_told_from_other_json() {
        assert!(looks_like_json_rpc(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#));
        assert!(looks_like_json_rpc(br#"[{"jsonrpc":"2.0","method":"x"}]"#));
        assert!(!looks_like_json_rpc(br#"{"model":"m","stream":true,"messages":[]}"#));
        assert!(!looks_like_json_rpc(b"not json"));
    }
}
