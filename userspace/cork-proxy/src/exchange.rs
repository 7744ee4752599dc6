//! One HTTP/1.1 request and its response, relayed through the scanner.
//!
//! The same relay serves bumped TLS tunnels and plain forward proxying: the caller has already
//! checked the destination against the host rules, and hands over a client and an upstream
//! connection to that destination. Here the request's own claims are checked against it (the
//! `Host` header must name the same host, which closes domain fronting), the head and body are
//! scanned on the way out, and the response is scanned on the way back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cork_http::framing::{request_framing, response_framing};
use cork_http::head::{header_tokens, strip_hop_by_hop};
use cork_http::{BodyFraming, Header, HeadError, Limits, RequestHead, ResponseHead};
use cork_policy::normalize_host;
use cork_scan::BodyMeta;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::{AuditRecord, Verdict};
use crate::body::{BodyCheck, BodyReader, Effect, NoCheck, OutFraming, RelayEnd, RelayError, ScannedRelay};
use crate::inspect::{effect, record_block, record_findings};
use crate::respond;
use crate::state::{ProxyState, Snapshot};
use crate::wire::Wire;

/// Why reading a head failed.
#[derive(Debug, thiserror::Error)]
pub enum HeadReadError {
    #[error("timed out waiting for a complete head")]
    Timeout,
    #[error("{0}")]
    Malformed(#[from] HeadError),
    #[error("connection closed inside a head")]
    Truncated,
    #[error("read failed: {0}")]
    Io(std::io::Error),
}

impl HeadReadError {
    pub fn rule(&self) -> &'static str {
        match self {
            HeadReadError::Timeout => "http.head_timeout",
            HeadReadError::Malformed(_) => "http.malformed",
            HeadReadError::Truncated | HeadReadError::Io(_) => "http.truncated",
        }
    }
}

/// Reads a head. `Ok(None)` is a clean close (or an idle timeout) before its first byte.
/// `idle` bounds the wait for the first byte; `complete` bounds the time from it to the end.
pub async fn read_head<S, H>(
    wire: &mut Wire<S>,
    limits: &Limits,
    idle: Duration,
    complete: Duration,
    parse: fn(&[u8], &Limits) -> Result<Option<(H, usize)>, HeadError>,
) -> Result<Option<H>, HeadReadError>
where
    S: AsyncRead + Unpin,
{
    let mut deadline: Option<Instant> = None;
    wire.release_if_empty();
    loop {
        if !wire.buffered().is_empty() {
            if let Some((head, used)) = parse(wire.buffered(), limits)? {
                wire.consume(used);
                return Ok(Some(head));
            }
        }
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None if wire.buffered().is_empty() => idle,
            None => {
                let d = Instant::now() + complete;
                deadline = Some(d);
                complete
            }
        };
        match wire.fill_within(wait).await {
            Ok(0) if wire.buffered().is_empty() => return Ok(None),
            Ok(0) => return Err(HeadReadError::Truncated),
            Ok(_) => {
                if deadline.is_none() {
                    deadline = Some(Instant::now() + complete);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return if deadline.is_none() && wire.buffered().is_empty() { Ok(None) } else { Err(HeadReadError::Timeout) };
            }
            Err(e) => return Err(HeadReadError::Io(e)),
        }
    }
}

pub fn head_limits(snap: &Snapshot) -> Limits {
    Limits { max_head_bytes: snap.policy.limits.max_head_bytes, max_headers: snap.policy.limits.max_headers }
}

/// The destination the caller already checked and connected to.
#[derive(Debug, Clone)]
pub struct Destination {
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
}

impl Destination {
    fn default_port(&self) -> u16 {
        if self.scheme == "https" { 443 } else { 80 }
    }

    /// `host[:port]` as it appears in a URL, with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == self.default_port() { host } else { format!("{host}:{}", self.port) }
    }

    /// Whether an authority (`Host` value or absolute-URI authority) names this destination.
    pub(crate) fn admits(&self, authority: &str) -> bool {
        let (host, port) = split_authority(authority);
        let port_ok = match port {
            None => true,
            Some(p) => p.parse::<u16>().is_ok_and(|p| p == self.port),
        };
        port_ok && normalize_host(host) == normalize_host(&self.host)
    }
}

/// Splits `host[:port]`, understanding bracketed IPv6 literals.
pub fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let port = rest[end + 1..].strip_prefix(':');
            return (&authority[..end + 2], port);
        }
        return (authority, None);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (authority, None),
    }
}

/// What the connection should do after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    Close,
}

pub struct Exchange<'a> {
    pub state: &'a ProxyState,
    pub snap: &'a Snapshot,
    pub client: SocketAddr,
    pub dest: &'a Destination,
}

/// How a request failed before a response was given, as rule and reason for the audit log.
struct Refused {
    status: u16,
    rule: String,
    reason: String,
}

impl Exchange<'_> {
    pub(crate) fn new_record(&self, head: &RequestHead) -> AuditRecord {
        let mut record = AuditRecord::new(&self.state.instance, "request", self.state.next_request_id(), self.client.to_string());
        record.method = Some(head.method.clone());
        record.host = Some(self.dest.host.clone());
        record.port = Some(self.dest.port);
        record.set_target(&head.target);
        record
    }

    pub(crate) fn finish(&self, mut record: AuditRecord, started: Instant, up: u64, down: u64) {
        record.bytes_up = up;
        record.bytes_down = down;
        record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        for f in &record.findings {
            self.state.metrics.finding(&f.rule);
        }
        let label = match (record.verdict, record.enforced) {
            (Verdict::Block, true) => "block",
            (Verdict::Block, false) => "audit_block",
            (Verdict::Redact, true) => "redact",
            (Verdict::Redact, false) => "audit_redact",
            (Verdict::Allow, _) => "allow",
        };
        self.state.metrics.request(label);
        self.state.metrics.bytes(up, down);
        self.state.audit.write(&record);
    }

    /// Relays one exchange that starts with `head`, already read from `client`.
    pub async fn relay<C, U>(&self, client: &mut Wire<C>, upstream: &mut Wire<U>, head: RequestHead) -> After
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        // An exchange's state (body relays, scanners' futures, MCP and WebSocket sessions) is
        // tens of KiB. Boxed, it exists only while a request is in flight: an idle keep-alive
        // connection's task holds just the pointer.
        Box::pin(self.relay_unboxed(client, upstream, head)).await
    }

    async fn relay_unboxed<C, U>(&self, client: &mut Wire<C>, upstream: &mut Wire<U>, mut head: RequestHead) -> After
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let (client_in0, client_out0, up_out0) = (client.bytes_in, client.bytes_out, upstream.bytes_out);
        let mut record = self.new_record(&head);
        let mode = self.snap.policy.mode;
        let limits = &self.snap.policy.limits;

        let framing = match self.check_request(&mut head, &mut record) {
            Ok(framing) => framing,
            Err(refused) => {
                record_block(&mut record, mode, &refused.rule, refused.reason.clone());
                record.status = Some(refused.status);
                // A malformed head leaves the stream position unknown, so the connection closes.
                let response = if refused.status == 400 {
                    respond::bad_request(&refused.rule, &refused.reason, &record.request_id)
                } else {
                    respond::blocked(&refused.rule, &refused.reason, &record.request_id, false)
                };
                let _ = client.send(&response).await;
                let _ = client.flush().await;
                self.finish(record, started, upstream.bytes_out - up_out0, client.bytes_out - client_out0);
                return After::Close;
            }
        };

        let head_findings = self.scan_head(&mut head.target, &mut head.headers, &mut record);
        if let Some((finding, _)) = head_findings.iter().find(|(_, e)| *e == Effect::Block) {
            let reason = format!("{} found in {}", finding.rule, finding.location);
            record.reason = Some(reason.clone());
            record.status = Some(403);
            let body_pending = framing != BodyFraming::Empty;
            let _ = client.send(&respond::blocked(&finding.rule, &reason, &record.request_id, !body_pending && head.keep_alive())).await;
            let _ = client.flush().await;
            self.finish(record, started, upstream.bytes_out - up_out0, client.bytes_out - client_out0);
            return if body_pending || !head.keep_alive() { After::Close } else { After::KeepAlive };
        }

        if crate::websocket::is_upgrade(&head) {
            return crate::websocket::upgrade(self, client, upstream, head, framing, record, started).await;
        }

        // `Expect: 100-continue` is answered here once the head is allowed; the body is then
        // scanned before the origin sees the request, so the origin is not asked to expect it.
        let expects_continue = header_tokens(&head.headers, "expect").iter().any(|t| t == "100-continue");
        head.headers.retain(|h| !h.is("expect"));
        if expects_continue && framing != BodyFraming::Empty && client.send(respond::CONTINUE).await.is_err() {
            return After::Close;
        }

        let mcp = crate::mcp::McpExchange::start(&self.state.mcp, &self.snap.engine, mode, self.client.ip(), &self.dest.host, &mut head);
        let client_keep_alive = head.keep_alive();
        let method = head.method.clone();
        let content_type = head.header("content-type").and_then(|h| h.value_str().map(str::to_string));
        let content_encoding = head.header("content-encoding").and_then(|h| h.value_str().map(str::to_string));
        strip_hop_by_hop(&mut head.headers);
        let upstream_head = head.to_bytes();

        // The request body, scanned on its way upstream.
        let scan = self.snap.engine.request_body(BodyMeta { content_type: content_type.as_deref(), content_encoding: content_encoding.as_deref() });
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        let mut relay = ScannedRelay::new(scan, Arc::new(move |f| effect(mode, f)), limits.body_buffer_bytes, idle, self.ring());
        let out = if framing == BodyFraming::Chunked { OutFraming::Chunked } else { OutFraming::Raw };
        let mut reader = BodyReader::new(framing);
        let mut check: Box<dyn BodyCheck> = match &mcp {
            Some(m) => Box::new(m.request_check(limits.body_buffer_bytes)),
            None => Box::new(NoCheck),
        };
        let relayed = relay.run_checked(client, &mut reader, upstream, out, &upstream_head, &mut *check).await;
        self.note_ring(&relay, &mut record);
        match relayed {
            Ok(RelayEnd::Complete { findings, .. }) => record_findings(&mut record, mode, &findings),
            Ok(RelayEnd::Blocked { findings, committed }) => {
                record_findings(&mut record, mode, &findings);
                let (finding, _) = findings.iter().find(|(_, e)| *e == Effect::Block).expect("blocked relays carry a blocking finding");
                let mut reason = check.reason().unwrap_or_else(|| format!("{} found in {}", finding.rule, finding.location));
                if committed {
                    reason.push_str("; the upstream request was cut before the secret was sent");
                }
                record.reason = Some(reason.clone());
                record.status = Some(403);
                let _ = client.send(&respond::blocked(&finding.rule, &reason, &record.request_id, false)).await;
                let _ = client.flush().await;
                self.finish(record, started, upstream.bytes_out - up_out0, client.bytes_out - client_out0);
                return After::Close;
            }
            Err(err) => {
                self.fail(&mut record, client, &err).await;
                self.finish(record, started, upstream.bytes_out - up_out0, client.bytes_out - client_out0);
                return After::Close;
            }
        }

        // The response.
        let snap_limits = head_limits(self.snap);
        let response = loop {
            match read_head(upstream, &snap_limits, idle, idle, ResponseHead::parse).await {
                Ok(Some(r)) if r.status == 100 => continue,
                Ok(Some(r)) if (102..200).contains(&r.status) => {
                    // Interim responses (103 Early Hints) are passed on; the final one follows.
                    let mut interim = r;
                    strip_hop_by_hop(&mut interim.headers);
                    if client.send(&interim.to_bytes()).await.is_err() {
                        return After::Close;
                    }
                }
                Ok(Some(r)) => break r,
                Ok(None) => {
                    self.upstream_failed(&mut record, client, "the upstream closed without a response").await;
                    self.finish(record, started, upstream.bytes_out - up_out0, client.bytes_out - client_out0);
                    return After::Close;
                }
                Err(e) => {
                    self.upstream_failed(&mut record, client, &format!("invalid upstream response: {e}")).await;
                    self.finish(record, started, upstream.bytes_out - up_out0, client.bytes_out - client_out0);
                    return After::Close;
                }
            }
        };
        record.status = Some(response.status);
        let after = self.relay_response(client, upstream, &method, response, client_keep_alive, &mut record, mcp.as_ref()).await;
        self.finish(record, started, upstream.bytes_out - up_out0, client.bytes_out - client_out0);
        let _ = client_in0;
        after
    }

    /// The io_uring pool bodies may move on, where the policy and the kernel allow it.
    fn ring(&self) -> Option<&'static crate::uring::Pool> {
        crate::uring::wanted(self.snap.policy.limits.io_uring).then(crate::uring::pool).and_then(Result::ok)
    }

    fn note_ring(&self, relay: &ScannedRelay, record: &mut AuditRecord) {
        if relay.ring_bytes > 0 {
            self.state.metrics.body_on_ring(relay.ring_bytes);
            record.relay = Some("uring");
        }
    }

    /// Scans the URL and every header of a request, redacting in place where rules say so, and
    /// records the findings. The caller refuses the request if any finding blocks.
    pub(crate) fn scan_head(&self, target: &mut String, headers: &mut [Header], record: &mut AuditRecord) -> Vec<(cork_scan::Finding, Effect)> {
        let mode = self.snap.policy.mode;
        let url = format!("{}://{}{}", self.dest.scheme, self.dest.authority(), target);
        let mut head_findings = Vec::new();
        for finding in self.snap.engine.scan_url(&url) {
            let mut eff = effect(mode, &finding);
            if eff == Effect::Redact {
                let target_start = (url.len() - target.len()) as u64;
                match finding.span.clone().filter(|s| s.start >= target_start && s.end <= url.len() as u64) {
                    Some(s) => {
                        let mut bytes = target.as_bytes().to_vec();
                        cork_scan::redact_in_place(&mut bytes, (s.start - target_start) as usize..(s.end - target_start) as usize);
                        *target = String::from_utf8_lossy(&bytes).into_owned();
                    }
                    None => eff = Effect::Block,
                }
            }
            head_findings.push((finding, eff));
        }
        for header in headers.iter_mut() {
            for mut finding in self.snap.engine.scan_header(&header.name, &header.value) {
                if finding.action != cork_scan::Action::Audit && self.snap.policy.credential_granted(&self.dest.host, &finding.rule) {
                    // The service's own credential on its way to it: recorded, not refused.
                    finding.action = cork_scan::Action::Audit;
                    if !record.rules.iter().any(|r| r == "credential.granted") {
                        record.rules.push("credential.granted".into());
                    }
                }
                let mut eff = effect(mode, &finding);
                if eff == Effect::Redact {
                    match finding.span.clone().filter(|s| s.end <= header.value.len() as u64) {
                        Some(s) => cork_scan::redact_in_place(&mut header.value, s.start as usize..s.end as usize),
                        None => eff = Effect::Block,
                    }
                }
                head_findings.push((finding, eff));
            }
        }
        record_findings(record, mode, &head_findings);
        head_findings
    }

    /// Checks a request's own claims against the destination and fixes up its target.
    fn check_request(&self, head: &mut RequestHead, record: &mut AuditRecord) -> Result<BodyFraming, Refused> {
        let framing = request_framing(head).map_err(|e| Refused { status: 400, rule: "http.malformed".into(), reason: e.to_string() })?;
        if head.method.eq_ignore_ascii_case("CONNECT") {
            return Err(Refused { status: 400, rule: "http.nested_connect".into(), reason: "CONNECT inside an intercepted tunnel".into() });
        }
        // An absolute-form target inside a tunnel must name the tunnel's destination.
        if let Some(rest) = head.target.strip_prefix("https://").or_else(|| head.target.strip_prefix("http://")) {
            let (authority, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if !self.dest.admits(authority) {
                return Err(Refused {
                    status: 403,
                    rule: "fronting.target_mismatch".into(),
                    reason: format!("request target names {authority} but the connection is to {}", self.dest.authority()),
                });
            }
            head.target = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
            record.set_target(&head.target);
        } else if !head.target.starts_with('/') && head.target != "*" {
            return Err(Refused { status: 400, rule: "http.malformed".into(), reason: "invalid request target".into() });
        }
        let hosts: Vec<&Header> = head.headers.iter().filter(|h| h.is("host")).collect();
        match hosts.as_slice() {
            [] => {
                if head.version == cork_http::head::Version::Http11 {
                    return Err(Refused { status: 400, rule: "http.missing_host".into(), reason: "HTTP/1.1 request without Host".into() });
                }
                head.headers.push(Header::new("Host", self.dest.authority()));
            }
            [host] => {
                let value = host.value_str().unwrap_or("").trim().to_string();
                if !self.dest.admits(&value) {
                    return Err(Refused {
                        status: 403,
                        rule: "fronting.host_mismatch".into(),
                        reason: format!("Host {value} does not match the connection's destination {}", self.dest.authority()),
                    });
                }
            }
            _ => return Err(Refused { status: 400, rule: "http.duplicate_host".into(), reason: "more than one Host header".into() }),
        }
        Ok(framing)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn relay_response<C, U>(
        &self,
        client: &mut Wire<C>,
        upstream: &mut Wire<U>,
        method: &str,
        mut response: ResponseHead,
        client_keep_alive: bool,
        record: &mut AuditRecord,
        mcp: Option<&crate::mcp::McpExchange>,
    ) -> After
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let mode = self.snap.policy.mode;
        let limits = &self.snap.policy.limits;
        let framing = match response_framing(method, &response) {
            Ok(f) => f,
            Err(e) => {
                self.upstream_failed(record, client, &format!("invalid upstream response framing: {e}")).await;
                return After::Close;
            }
        };
        let keep_alive = client_keep_alive && response.keep_alive() && framing != BodyFraming::UntilClose;
        let content_type = response.header("content-type").and_then(|h| h.value_str().map(str::to_string));
        let content_encoding = response.header("content-encoding").and_then(|h| h.value_str().map(str::to_string));
        strip_hop_by_hop(&mut response.headers);
        if !keep_alive {
            response.headers.push(Header::new("Connection", "close"));
        }
        let head_bytes = response.to_bytes();
        let scan = self.snap.engine.response_body(BodyMeta { content_type: content_type.as_deref(), content_encoding: content_encoding.as_deref() });
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        let mut relay = ScannedRelay::new(scan, Arc::new(move |f| effect(mode, f)), limits.body_buffer_bytes, idle, self.ring());
        let out = if framing == BodyFraming::Chunked { OutFraming::Chunked } else { OutFraming::Raw };
        let mut reader = BodyReader::new(framing);
        let mut check: Box<dyn BodyCheck> = match mcp {
            Some(m) => Box::new(m.response_check(content_type.as_deref(), content_encoding.as_deref(), limits.body_buffer_bytes)),
            None => Box::new(NoCheck),
        };
        let unscanned = relay.is_unscanned(&*check);
        let relayed = relay.run_checked(upstream, &mut reader, client, out, &head_bytes, &mut *check).await;
        self.note_ring(&relay, record);
        if unscanned {
            self.state.metrics.body_unscanned(relay.spliced_bytes);
            record.unscanned = content_type.clone();
            if relay.spliced_bytes > 0 {
                record.relay = Some("splice");
            }
        }
        match relayed {
            Ok(RelayEnd::Complete { findings, .. }) => {
                record_findings(record, mode, &findings);
                if keep_alive { After::KeepAlive } else { After::Close }
            }
            Ok(RelayEnd::Blocked { findings, committed }) => {
                record_findings(record, mode, &findings);
                let (finding, _) = findings.iter().find(|(_, e)| *e == Effect::Block).expect("blocked relays carry a blocking finding");
                let mut reason = check.reason().unwrap_or_else(|| format!("{} found in the response {}", finding.rule, finding.location));
                if committed {
                    // The head and part of the body already went out: cutting the connection is
                    // the only way left to keep the rest from the client.
                    reason.push_str("; the response was cut mid-body");
                } else {
                    let _ = client.send(&respond::blocked(&finding.rule, &reason, &record.request_id, false)).await;
                    let _ = client.flush().await;
                    record.status = Some(403);
                }
                record.reason = Some(reason);
                After::Close
            }
            Err(err) => {
                self.fail(record, client, &err).await;
                After::Close
            }
        }
    }

    /// Records a relay failure. Nothing is sent to the client: its head may be half out already.
    async fn fail<C: AsyncWrite + Unpin>(&self, record: &mut AuditRecord, _client: &mut Wire<C>, err: &RelayError) {
        let rule = match err {
            RelayError::Chunked(_) => "http.malformed_body",
            RelayError::Idle(_) => "http.body_timeout",
            RelayError::Write(_) => "io.write_failed",
            _ => "http.truncated",
        };
        self.state.metrics.error(rule);
        record_block(record, cork_policy::Mode::Enforce, rule, err.to_string());
    }

    async fn upstream_failed<C: AsyncWrite + Unpin>(&self, record: &mut AuditRecord, client: &mut Wire<C>, reason: &str) {
        self.state.metrics.error("upstream.bad_response");
        record_block(record, cork_policy::Mode::Enforce, "upstream.bad_response", reason);
        record.status = Some(502);
        let _ = client.send(&respond::bad_gateway("upstream.bad_response", reason, &record.request_id)).await;
        let _ = client.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_and_match() {
        assert_eq!(split_authority("a.test:8443"), ("a.test", Some("8443")));
        assert_eq!(split_authority("[::1]:443"), ("[::1]", Some("443")));
        assert_eq!(split_authority("[::1]"), ("[::1]", None));
        assert_eq!(split_authority("a.test"), ("a.test", None));
        let d = Destination { scheme: "https", host: "a.test".into(), port: 8443 };
        assert!(d.admits("A.test:8443"));
        assert!(d.admits("a.test"));
        assert!(!d.admits("a.test:443"));
        assert!(!d.admits("b.test:8443"));
        assert!(!d.admits("a.test:x"));
        let v6 = Destination { scheme: "https", host: "::1".into(), port: 443 };
        assert!(v6.admits("[::1]"));
        assert_eq!(v6.authority(), "[::1]");
    }
}

impl Exchange<'_> {
    /// Answers `head` with a refusal without contacting any upstream, and audits it. Returns
    /// whether the connection may carry on (only when the request had no body to skip).
    pub async fn refuse<C>(&self, client: &mut Wire<C>, head: &RequestHead, status: u16, rule: &str, reason: &str) -> After
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let out0 = client.bytes_out;
        let mut record = self.new_record(head);
        // Upstream failures are blocks in any mode: nothing was reached.
        let mode = if status == 403 { self.snap.policy.mode } else { cork_policy::Mode::Enforce };
        record_block(&mut record, mode, rule, reason);
        record.status = Some(status);
        let bodyless = matches!(request_framing(head), Ok(BodyFraming::Empty));
        let keep = bodyless && head.keep_alive() && status == 403;
        let response = match status {
            403 => respond::blocked(rule, reason, &record.request_id, keep),
            502 => respond::bad_gateway(rule, reason, &record.request_id),
            _ => respond::bad_request(rule, reason, &record.request_id),
        };
        let _ = client.send(&response).await;
        let _ = client.flush().await;
        self.finish(record, started, 0, client.bytes_out - out0);
        if keep { After::KeepAlive } else { After::Close }
    }
}
