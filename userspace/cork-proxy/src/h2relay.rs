//! HTTP/2 inside a bumped tunnel, relayed stream by stream through the scanner.
//!
//! When the client and the upstream both negotiated `h2`, cork speaks HTTP/2 on both sides: an
//! `h2` server toward the client and an `h2` client toward the upstream. Each client stream
//! becomes one upstream stream. Nothing is ever translated to HTTP/1.1, so the h2 → h1 header
//! injection class (CR/LF/NUL in values, `transfer-encoding`, pseudo-header tricks) has no
//! downstream parser to fool; `h2` itself refuses connection-specific headers and invalid header
//! bytes as malformed.
//!
//! Per stream, the same checks as an HTTP/1.1 exchange apply: `:authority` (and `host`, if sent)
//! must name the tunnel's destination, the URL and headers are scanned, and the bodies pass
//! through [`BodyScan`] with its hold-back. A blocked stream gets a 403 JSON answer (or, once its
//! response has started, RST_STREAM); other streams on the connection carry on.
//!
//! Flow control: data is acknowledged to the sender (capacity released) as soon as it is in the
//! relay's bounded hold buffer, and written onward only as the receiver grants capacity, so a
//! large download runs at the receiver's pace without unbounded buffering. SETTINGS, PING and
//! GOAWAY are `h2`'s. Concurrent streams, header list size and locally reset streams are bounded
//! (rapid-reset and HPACK-bomb defences).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cork_http::Header;
use cork_scan::{BodyMeta, BodyScan, Finding};
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::AuditRecord;
use crate::body::{unscanned, BodyCheck, Effect, NoCheck};
use crate::bump::connection_record;
use crate::exchange::{Destination, Exchange};
use crate::inspect::{effect, record_block, record_findings};
use crate::respond::refusal_body;
use crate::state::{ProxyState, Snapshot};

/// Streams one client may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams cork may reset for protocol errors before it gives up on the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 64;
/// Streams the client may open and reset before cork accepts them (rapid reset).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Receive windows: large enough that one download is not throttled by round trips.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Smallest piece written onward once a body is committed, so frames are not tiny.
const MIN_RELEASE: usize = 16 * 1024;
/// How much of a refused upload's rest is read and dropped, and for how long, before the
/// stream is reset instead (see [`drain_refused_upload`]).
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why one direction of a stream's body relay stopped.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("reading the body failed: {0}")]
    Read(h2::Error),
    #[error("writing the body failed: {0}")]
    Write(h2::Error),
    #[error("no body data for {0:?}")]
    Idle(Duration),
}

/// How a body relay ended. `sink` is the onward stream if its head was sent.
enum BodyEnd {
    Complete { findings: Vec<(Finding, Effect)>, bytes: u64 },
    Blocked { findings: Vec<(Finding, Effect)>, sink: Option<SendStream<Bytes>> },
}

/// What every stream of one connection shares.
struct Conn {
    state: Arc<ProxyState>,
    snap: Arc<Snapshot>,
    client: SocketAddr,
    dest: Destination,
}

impl Conn {
    fn exchange(&self) -> Exchange<'_> {
        Exchange { state: &self.state, snap: &self.snap, client: self.client, dest: &self.dest }
    }
}

/// Relays an HTTP/2 connection: `client_io` and `upstream_io` both negotiated `h2`.
pub async fn relay<C, U>(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, dest: Destination, client_io: C, upstream_io: U)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &snap.policy.limits;
    let handshake = Duration::from_secs(limits.handshake_timeout_secs);
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let header_list = u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX);

    let upstream = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(header_list)
        .handshake::<_, Bytes>(upstream_io);
    let (send_request, upstream_conn) = match tokio::time::timeout(handshake, upstream).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return connection_record(&state, &snap, client, &dest, "connection", "upstream.h2", &format!("upstream HTTP/2 handshake failed: {e}")),
        Err(_) => return connection_record(&state, &snap, client, &dest, "connection", "upstream.h2", "upstream HTTP/2 handshake timed out"),
    };
    // The upstream connection is driven on its own; it ends when every `SendRequest` is gone.
    let upstream_task = tokio::spawn(async move {
        if let Err(e) = upstream_conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });

    let server = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(header_list)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(client_io);
    let mut server = match tokio::time::timeout(handshake, server).await {
        Ok(Ok(server)) => server,
        Ok(Err(e)) => {
            upstream_task.abort();
            return connection_record(&state, &snap, client, &dest, "connection", "h2.protocol_error", &format!("HTTP/2 preface or settings refused: {e}"));
        }
        Err(_) => {
            upstream_task.abort();
            return connection_record(&state, &snap, client, &dest, "connection", "tls.handshake_timeout", "the client did not send the HTTP/2 preface in time");
        }
    };

    let conn = Arc::new(Conn { state, snap, client, dest });
    loop {
        let next = match tokio::time::timeout(idle, server.accept()).await {
            Ok(next) => next,
            // Idle with nothing in flight: say goodbye; keep polling so the GOAWAY goes out.
            Err(_) if !server.has_streams() => {
                server.graceful_shutdown();
                continue;
            }
            Err(_) => continue,
        };
        match next {
            None => break,
            Some(Ok((request, respond))) => {
                let conn = conn.clone();
                let upstream = send_request.clone();
                tokio::spawn(async move { relay_stream(&conn, request, respond, upstream).await });
            }
            Some(Err(e)) => {
                // A client that just hangs up is not a protocol error.
                if !e.is_io() && e.reason() != Some(Reason::NO_ERROR) {
                    connection_record(&conn.state, &conn.snap, conn.client, &conn.dest, "connection", "h2.protocol_error", &format!("HTTP/2 connection error: {e}"));
                }
                break;
            }
        }
    }
    drop(send_request);
    // Streams still running hold their own `SendRequest`; the driver finishes after them.
    let _ = upstream_task.await;
}

/// Answers a stream with a JSON refusal.
fn refuse_stream(mut respond: h2::server::SendResponse<Bytes>, status: u16, error: &str, rule: &str, reason: &str, request_id: &str) -> u64 {
    let body = Bytes::from(refusal_body(error, rule, reason, request_id));
    let len = body.len() as u64;
    let head = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .header("x-cork-request-id", request_id)
        .body(())
        .expect("a fixed response head is valid");
    match respond.send_response(head, false) {
        // A small body fits the initial window of any sane client; h2 buffers it otherwise.
        Ok(mut stream) => {
            let _ = stream.send_data(body, true);
            len
        }
        Err(_) => 0,
    }
}

/// Reads and drops what is left of a refused request's body, within [`DRAIN_LIMIT`] and
/// [`DRAIN_TIME`], once the refusal is queued. Resetting the stream at once (RST_STREAM with
/// NO_ERROR, which `h2` sends when the stream is dropped) is what RFC 9113 §8.1 allows, but a
/// client still uploading may then fail the transfer without reading the answer (curl 7.88 does,
/// now and then, with error 92), so the refusal would be lost. Nothing read here goes anywhere.
async fn drain_refused_upload(body: &mut RecvStream) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut dropped = 0u64;
    while !body.is_end_stream() && dropped <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.data()).await {
            Ok(Some(Ok(chunk))) => {
                dropped += chunk.len() as u64;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            _ => return,
        }
    }
}

/// One client stream: checked, scanned, relayed to one upstream stream and back.
async fn relay_stream(conn: &Conn, request: Request<RecvStream>, respond: h2::server::SendResponse<Bytes>, upstream: h2::client::SendRequest<Bytes>) {
    let started = Instant::now();
    let ex = conn.exchange();
    let snap = &conn.snap;
    let mode = snap.policy.mode;
    let (parts, mut body) = request.into_parts();
    let mut target = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let mut record = AuditRecord::new(&conn.state.instance, "request", conn.state.next_request_id(), conn.client.to_string());
    record.method = Some(parts.method.as_str().to_string());
    record.http_version = Some("HTTP/2");
    record.host = Some(conn.dest.host.clone());
    record.port = Some(conn.dest.port);
    record.set_target(&target);

    macro_rules! refuse {
        ($status:expr, $error:expr, $rule:expr, $reason:expr, $mode:expr) => {{
            let reason: String = $reason;
            record_block(&mut record, $mode, $rule, reason.clone());
            record.status = Some($status);
            let down = refuse_stream(respond, $status, $error, $rule, &reason, &record.request_id);
            ex.finish(record, started, 0, down);
            drain_refused_upload(&mut body).await;
            return;
        }};
    }

    if parts.method == http::Method::CONNECT {
        refuse!(400, "bad_request", "http.nested_connect", "CONNECT inside an intercepted tunnel".into(), cork_policy::Mode::Enforce);
    }
    // Domain fronting: :authority and any Host header must both name the destination.
    let mut claimed: Vec<String> = parts.uri.authority().map(|a| a.as_str().to_string()).into_iter().collect();
    for host in parts.headers.get_all(http::header::HOST) {
        claimed.push(String::from_utf8_lossy(host.as_bytes()).trim().to_string());
    }
    if let Some(bad) = claimed.iter().find(|a| !conn.dest.admits(a)) {
        let reason = format!(":authority/Host {bad} does not match the connection's destination {}", conn.dest.authority());
        refuse!(403, "blocked", "fronting.host_mismatch", reason, mode);
    }

    // Scan the URL and headers exactly as for HTTP/1.1. Host is carried by :authority upstream.
    let mut headers: Vec<Header> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != http::header::HOST)
        .map(|(name, value)| Header::new(name.as_str(), value.as_bytes()))
        .collect();
    let findings = ex.scan_head(&mut target, &mut headers, &mut record);
    if let Some((finding, _)) = findings.iter().find(|(_, e)| *e == Effect::Block) {
        let reason = format!("{} found in {}", finding.rule, finding.location);
        record.reason = Some(reason.clone());
        record.status = Some(403);
        let down = refuse_stream(respond, 403, "blocked", &finding.rule, &reason, &record.request_id);
        ex.finish(record, started, 0, down);
        drain_refused_upload(&mut body).await;
        return;
    }
    let mcp = crate::mcp::McpExchange::start_h2(&conn.state.mcp, &snap.engine, mode, conn.client.ip(), &conn.dest.host, parts.method.as_str(), &target, &mut headers);
    let upstream_request = match build_request(&parts.method, &conn.dest, &target, &headers) {
        Ok(r) => r,
        Err(reason) => refuse!(400, "bad_request", "http.malformed", reason, cork_policy::Mode::Enforce),
    };
    let request_meta = meta_of(&parts.headers);
    let up_head = head_size(parts.method.as_str().len() + conn.dest.authority().len() + target.len() + 16, upstream_request.headers());

    let mut upstream = match upstream.ready().await {
        Ok(u) => u,
        Err(e) => refuse!(502, "upstream", "upstream.bad_response", format!("the upstream HTTP/2 connection is gone: {e}"), cork_policy::Mode::Enforce),
    };
    let limits = &snap.policy.limits;
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let decide = |f: &Finding| effect(mode, f);

    // The request body, scanned on its way upstream. The head goes out with the first released
    // byte (or at the end, for bodies within the buffer limit).
    let mut pending = Some(upstream_request);
    let mut response_future = None;
    let mut open_upstream = |end: bool| -> Result<SendStream<Bytes>, h2::Error> {
        let request = pending.take().expect("the upstream head is sent once");
        let (future, stream) = upstream.send_request(request, end)?;
        response_future = Some(future);
        Ok(stream)
    };
    let mut scan = snap.engine.request_body(BodyMeta { content_type: request_meta.0.as_deref(), content_encoding: request_meta.1.as_deref() });
    let mut check: Box<dyn BodyCheck> = match &mcp {
        Some(m) => Box::new(m.request_check(limits.body_buffer_bytes)),
        None => Box::new(NoCheck),
    };
    let up_bytes = match relay_body(&mut body, &mut scan, &mut *check, &decide, snap, true, limits.body_buffer_bytes, idle, &mut open_upstream).await {
        Ok(BodyEnd::Complete { findings, bytes }) => {
            record_findings(&mut record, mode, &findings);
            up_head + bytes
        }
        Ok(BodyEnd::Blocked { findings, sink }) => {
            record_findings(&mut record, mode, &findings);
            let (finding, _) = findings.iter().find(|(_, e)| *e == Effect::Block).expect("blocked relays carry a blocking finding");
            let mut reason = check.reason().unwrap_or_else(|| format!("{} found in {}", finding.rule, finding.location));
            if let Some(mut sink) = sink {
                sink.send_reset(Reason::CANCEL);
                reason.push_str("; the upstream stream was reset before the secret was sent");
            }
            let rule = finding.rule.clone();
            record.reason = Some(reason.clone());
            record.status = Some(403);
            let down = refuse_stream(respond, 403, "blocked", &rule, &reason, &record.request_id);
            ex.finish(record, started, 0, down);
            drain_refused_upload(&mut body).await;
            return;
        }
        Err(BodyError::Write(e)) => refuse!(502, "upstream", "upstream.bad_response", format!("sending the request upstream failed: {e}"), cork_policy::Mode::Enforce),
        Err(e) => {
            // The client gave up on (or stalled) its own request: nothing to answer.
            let rule = if matches!(e, BodyError::Idle(_)) { "http.body_timeout" } else { "http.truncated" };
            conn.state.metrics.error(rule);
            record_block(&mut record, cork_policy::Mode::Enforce, rule, e.to_string());
            drop(respond);
            ex.finish(record, started, 0, 0);
            return;
        }
    };

    let response = match response_future.take() {
        Some(future) => tokio::time::timeout(idle, future).await,
        None => unreachable!("the request body relay always sends the head before completing"),
    };
    let response = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => refuse!(502, "upstream", "upstream.bad_response", format!("the upstream refused the stream: {e}"), cork_policy::Mode::Enforce),
        Err(_) => refuse!(502, "upstream", "upstream.bad_response", "the upstream did not answer in time".into(), cork_policy::Mode::Enforce),
    };
    let (resp_parts, mut resp_body) = response.into_parts();
    record.status = Some(resp_parts.status.as_u16());
    let response_meta = meta_of(&resp_parts.headers);
    let down_head = head_size(16, &resp_parts.headers);
    let mut head = Response::new(());
    *head.status_mut() = resp_parts.status;
    *head.headers_mut() = resp_parts.headers;

    let mut pending = Some(head);
    let mut respond_slot = Some(respond);
    let mut open_client = |end: bool| -> Result<SendStream<Bytes>, h2::Error> {
        let head = pending.take().expect("the response head is sent once");
        respond_slot.as_mut().expect("the client stream is open").send_response(head, end)
    };
    let mut scan = snap.engine.response_body(BodyMeta { content_type: response_meta.0.as_deref(), content_encoding: response_meta.1.as_deref() });
    let mut check: Box<dyn BodyCheck> = match &mcp {
        Some(m) => Box::new(m.response_check(response_meta.0.as_deref(), response_meta.1.as_deref(), limits.body_buffer_bytes)),
        None => Box::new(NoCheck),
    };
    if unscanned(&scan, &*check) {
        conn.state.metrics.body_unscanned(0);
        record.unscanned = response_meta.0.clone();
    }
    let down_bytes = match relay_body(&mut resp_body, &mut scan, &mut *check, &decide, snap, false, limits.body_buffer_bytes, idle, &mut open_client).await {
        Ok(BodyEnd::Complete { findings, bytes }) => {
            record_findings(&mut record, mode, &findings);
            down_head + bytes
        }
        Ok(BodyEnd::Blocked { findings, sink }) => {
            record_findings(&mut record, mode, &findings);
            let (finding, _) = findings.iter().find(|(_, e)| *e == Effect::Block).expect("blocked relays carry a blocking finding");
            let mut reason = check.reason().unwrap_or_else(|| format!("{} found in the response {}", finding.rule, finding.location));
            let rule = finding.rule.clone();
            let down;
            match sink {
                // The head is out already: resetting the stream is the only way left.
                Some(mut sink) => {
                    sink.send_reset(Reason::CANCEL);
                    down = down_head;
                    reason.push_str("; the response stream was reset mid-body");
                }
                None => {
                    record.status = Some(403);
                    down = refuse_stream(respond_slot.take().expect("the client stream is open"), 403, "blocked", &rule, &reason, &record.request_id);
                }
            }
            record.reason = Some(reason);
            ex.finish(record, started, up_bytes, down);
            return;
        }
        Err(e) => {
            let rule = match e {
                BodyError::Idle(_) => "http.body_timeout",
                BodyError::Write(_) => "io.write_failed",
                BodyError::Read(_) => "http.truncated",
            };
            conn.state.metrics.error(rule);
            record_block(&mut record, cork_policy::Mode::Enforce, rule, e.to_string());
            if let Some(mut respond) = respond_slot.take() {
                respond.send_reset(Reason::INTERNAL_ERROR);
            }
            0
        }
    };
    ex.finish(record, started, up_bytes, down_bytes);
}

/// A head's uncompressed size (names, values, and a pseudo-header line's worth), so audit byte
/// counts mean roughly what they mean for HTTP/1.1: head plus body.
fn head_size(first_line: usize, headers: &HeaderMap) -> u64 {
    (first_line + headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum::<usize>()) as u64
}

/// The content type and encoding a body scanner needs.
fn meta_of(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    (get("content-type"), get("content-encoding"))
}

/// The upstream request: the checked destination as `:authority`, the (possibly redacted)
/// target, and the scanned headers.
fn build_request(method: &http::Method, dest: &Destination, target: &str, headers: &[Header]) -> Result<Request<()>, String> {
    let uri: Uri = format!("https://{}{}", dest.authority(), target).parse().map_err(|e| format!("invalid request target: {e}"))?;
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    let map = request.headers_mut();
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| format!("invalid header name: {e}"))?;
        let value = HeaderValue::from_bytes(&h.value).map_err(|e| format!("invalid header value: {e}"))?;
        map.append(name, value);
    }
    Ok(request)
}

/// Writes `data` to `dst` as the peer grants capacity.
async fn send_all(dst: &mut SendStream<Bytes>, mut data: Bytes, end: bool, idle: Duration) -> Result<(), BodyError> {
    if data.is_empty() {
        return if end { dst.send_data(data, true).map_err(BodyError::Write) } else { Ok(()) };
    }
    while !data.is_empty() {
        dst.reserve_capacity(data.len());
        let granted = match tokio::time::timeout(idle, poll_fn(|cx| dst.poll_capacity(cx))).await {
            Err(_) => return Err(BodyError::Idle(idle)),
            Ok(None) => return Err(BodyError::Write(h2::Error::from(Reason::STREAM_CLOSED))),
            Ok(Some(granted)) => granted.map_err(BodyError::Write)?,
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        dst.send_data(piece, end && data.is_empty()).map_err(BodyError::Write)?;
    }
    Ok(())
}

/// Relays one body from `src` through `scan`. `open` sends the onward head and returns the
/// onward stream; it is called once, when the first byte must go out or at the end (`true`
/// when nothing follows the head). Bodies within `buffer_limit` are scanned whole before
/// `open` is called, so a blocked small body never reaches the other side.
#[allow(clippy::too_many_arguments)]
async fn relay_body(
    src: &mut RecvStream,
    scan: &mut BodyScan,
    check: &mut dyn BodyCheck,
    decide: &(dyn Fn(&Finding) -> Effect + Sync),
    snap: &Snapshot,
    scan_trailers: bool,
    buffer_limit: usize,
    idle: Duration,
    open: &mut (dyn FnMut(bool) -> Result<SendStream<Bytes>, h2::Error> + Send),
) -> Result<BodyEnd, BodyError> {
    let mut held: Vec<u8> = Vec::new();
    let mut scanned = 0usize;
    let mut released: u64 = 0;
    let mut sink: Option<SendStream<Bytes>> = None;
    let mut seen: Vec<(Finding, Effect)> = Vec::new();
    // A body nothing judges (scan.unscanned_response_types) is not held: its head goes out now
    // and its bytes as they come, as on HTTP/1.1.
    let at_once = unscanned(scan, check);
    if at_once {
        sink = Some(open(false).map_err(BodyError::Write)?);
    }
    loop {
        let more = match tokio::time::timeout(idle, src.data()).await {
            Err(_) => return Err(BodyError::Idle(idle)),
            Ok(None) => false,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(chunk))) => {
                held.extend_from_slice(&chunk);
                // Acknowledged now: `held` is bounded below, so the sender may go on.
                let _ = src.flow_control().release_capacity(chunk.len());
                true
            }
        };
        let mut fresh = scan.push(&held[scanned..]);
        let checked = check.push(&held[scanned..], !more);
        scanned = held.len();
        let mut trailers = None;
        if !more {
            fresh.extend(scan.finish());
            trailers = match tokio::time::timeout(idle, src.trailers()).await {
                Err(_) => return Err(BodyError::Idle(idle)),
                Ok(t) => t.map_err(BodyError::Read)?,
            };
        }
        for finding in fresh {
            let mut eff = decide(&finding);
            if eff == Effect::Redact {
                match finding.span.clone().filter(|s| s.start >= released && s.end <= released + held.len() as u64) {
                    Some(span) => cork_scan::redact_in_place(&mut held, (span.start - released) as usize..(span.end - released) as usize),
                    None => eff = Effect::Block,
                }
            }
            seen.push((finding, eff));
        }
        seen.extend(checked);
        if let (true, Some(trailers)) = (scan_trailers, trailers.as_ref()) {
            // Trailers are headers too; they are not rewritten, so redaction becomes a block.
            for (name, value) in trailers {
                for finding in snap.engine.scan_header(name.as_str(), value.as_bytes()) {
                    let eff = match decide(&finding) {
                        Effect::Redact => Effect::Block,
                        e => e,
                    };
                    seen.push((finding, eff));
                }
            }
        }
        if seen.iter().any(|(_, e)| *e == Effect::Block) {
            return Ok(BodyEnd::Blocked { findings: seen, sink });
        }
        if !more {
            let bytes = released + held.len() as u64;
            let nothing_follows = held.is_empty() && trailers.is_none();
            let mut dst = match sink.take() {
                Some(dst) => dst,
                None => {
                    let dst = open(nothing_follows).map_err(BodyError::Write)?;
                    if nothing_follows {
                        return Ok(BodyEnd::Complete { findings: seen, bytes });
                    }
                    dst
                }
            };
            send_all(&mut dst, Bytes::from(held), trailers.is_none(), idle).await?;
            if let Some(trailers) = trailers {
                dst.send_trailers(trailers).map_err(BodyError::Write)?;
            }
            return Ok(BodyEnd::Complete { findings: seen, bytes });
        }
        if sink.is_none() && released + held.len() as u64 > buffer_limit as u64 {
            sink = Some(open(false).map_err(BodyError::Write)?);
        }
        if let Some(dst) = sink.as_mut() {
            // The scanner's hold-back grows with what it has seen; ask after every push.
            let hold = scan.hold_back().max(check.hold_back());
            if held.len() >= hold + if at_once { 1 } else { MIN_RELEASE } {
                let n = held.len() - hold;
                let piece = Bytes::copy_from_slice(&held[..n]);
                held.drain(..n);
                scanned -= n;
                released += n as u64;
                send_all(dst, piece, false, idle).await?;
            }
        }
    }
}
