//! `GET /fetch?url=URL` on the explicit listener: cork fetches a page on the agent's behalf and
//! answers with its readable text, or with a block.
//!
//! This is for agents whose tools want "the text of that page" rather than a proxy. Every hop
//! goes through the same policy as proxied traffic: the host allow list, the URL scan, the SSRF
//! guard and full upstream TLS verification. Redirects are followed (at most [`MAX_REDIRECTS`]),
//! each hop checked and audited as its own request, so a redirect cannot walk the fetch to a
//! host the policy would refuse.
//!
//! Both the raw page and its extracted text are scanned for prompt injection: the raw HTML
//! because comments and hidden elements are where injected instructions hide, the text because
//! that is what the agent will read. A finding that blocks (or would redact: there is no sound
//! way to redact a page's meaning) refuses the fetch with a 403 naming the rule.
//!
//! The answer is `text/plain; charset=utf-8` with the final URL and the origin's status in
//! `X-Cork-Final-Url` and `X-Cork-Upstream-Status`. Non-text content is refused. Bodies are read
//! up to [`MAX_BODY_BYTES`] (after decompression); a longer page is cut there, and what is cut is
//! neither scanned nor returned (`X-Cork-Truncated: true`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cork_http::{Header, RequestHead, ResponseHead};
use cork_policy::HostVerdict;
use cork_scan::decompress::{parse_codings, Decompressor};
use cork_scan::{BodyMeta, Finding};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::audit::AuditRecord;
use crate::body::{BodyReader, Effect};
use crate::exchange::{head_limits, read_head, After, Destination, Exchange};
use crate::inspect::{effect, record_block, record_findings};
use crate::state::{ProxyState, Snapshot};
use crate::wire::Wire;
use crate::{respond, upstream};

/// Redirects followed before the fetch is refused.
pub const MAX_REDIRECTS: usize = 5;
/// Most body bytes (decoded) read, scanned and turned into text.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Largest decompression ratio accepted, against bombs.
const MAX_RATIO: u64 = 200;

/// True for a request to cork's own `/fetch` endpoint.
pub fn is_fetch(head: &RequestHead) -> bool {
    head.target == "/fetch" || head.target.starts_with("/fetch?")
}

/// Why a fetch ended without a page.
struct Refusal {
    status: u16,
    rule: String,
    reason: String,
    /// The audited hop that refused, when one did.
    request_id: Option<String>,
}

impl Refusal {
    fn new(status: u16, rule: &str, reason: impl Into<String>) -> Refusal {
        Refusal { status, rule: rule.into(), reason: reason.into(), request_id: None }
    }
}

/// A page fetched and judged.
struct Page {
    text: String,
    final_url: String,
    status: u16,
    truncated: bool,
}

/// Serves one `/fetch` request and closes the connection.
pub async fn serve(state: Arc<ProxyState>, snap: Arc<Snapshot>, client: SocketAddr, wire: &mut Wire<TcpStream>, head: &RequestHead) -> After {
    let started = Instant::now();
    let request_id = state.next_request_id();
    let result = if !head.method.eq_ignore_ascii_case("GET") {
        Err(Refusal::new(405, "fetch.method", "the fetch endpoint answers GET only"))
    } else {
        match requested_url(&head.target) {
            Some(url) => fetch(&state, &snap, client, url, &request_id).await,
            None => Err(Refusal::new(400, "fetch.bad_url", "use /fetch?url=http(s)://host/path, with the URL percent-encoded")),
        }
    };
    let response = match result {
        Ok(page) => {
            let body = page.text.into_bytes();
            let mut headers = vec![
                Header::new("Content-Type", "text/plain; charset=utf-8"),
                Header::new("Content-Length", body.len().to_string()),
                Header::new("Cache-Control", "no-store"),
                Header::new("X-Cork-Request-Id", request_id.as_str()),
                Header::new("X-Cork-Final-Url", page.final_url.as_str()),
                Header::new("X-Cork-Upstream-Status", page.status.to_string()),
                Header::new("Connection", "close"),
            ];
            if page.truncated {
                headers.push(Header::new("X-Cork-Truncated", "true"));
            }
            let mut out = ResponseHead::new(200, "OK", headers).to_bytes();
            out.extend_from_slice(&body);
            out
        }
        Err(refusal) => {
            // Refusals before any hop (bad method or URL) have no hop record: audit them here.
            if refusal.request_id.is_none() {
                let mut record = AuditRecord::new(&state.instance, "request", request_id.clone(), client.to_string());
                record.method = Some(head.method.clone());
                record.via = Some("fetch");
                record.set_target(&head.target);
                record_block(&mut record, cork_policy::Mode::Enforce, &refusal.rule, refusal.reason.clone());
                record.status = Some(refusal.status);
                record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                state.audit.write(&record);
            }
            let (phrase, error) = match refusal.status {
                403 => ("Forbidden", "blocked"),
                405 => ("Method Not Allowed", "bad_request"),
                415 => ("Unsupported Media Type", "bad_request"),
                502 => ("Bad Gateway", "upstream"),
                _ => ("Bad Request", "bad_request"),
            };
            let id = refusal.request_id.as_deref().unwrap_or(&request_id);
            respond::refusal(refusal.status, phrase, error, &refusal.rule, &refusal.reason, id, false)
        }
    };
    let _ = wire.send(&response).await;
    let _ = wire.flush().await;
    After::Close
}

/// The `url` query parameter, percent-decoded.
fn requested_url(target: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    let raw = query.split('&').find_map(|pair| pair.strip_prefix("url="))?;
    let bytes = percent_decode(raw.as_bytes());
    String::from_utf8(bytes).ok().filter(|u| !u.is_empty())
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match (s[i], s.get(i + 1).copied().and_then(hex), s.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// One absolute URL, split into what a request needs.
struct Target {
    dest: Destination,
    /// Origin-form request target: path and query.
    path: String,
}

fn parse_target(url: &str) -> Result<Target, Refusal> {
    let bad = |why: &str| Refusal::new(400, "fetch.bad_url", format!("{why}: {url}"));
    let parts = cork_scan::url::split_url(url).ok_or_else(|| bad("not an absolute URL"))?;
    let scheme = match parts.scheme.to_ascii_lowercase().as_str() {
        "https" => "https",
        "http" => "http",
        _ => return Err(bad("only http and https URLs can be fetched")),
    };
    if parts.userinfo.is_some() {
        return Err(Refusal::new(403, "fetch.credentials_in_url", "URLs carrying credentials are not fetched"));
    }
    let host = cork_policy::normalize_host(parts.host);
    if host.is_empty() || cork_ca::LeafName::parse(&host).is_err() {
        return Err(bad("invalid host"));
    }
    let port = match parts.port {
        None | Some("") => if scheme == "https" { 443 } else { 80 },
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("invalid port"))?,
    };
    let mut path = if parts.path.is_empty() { "/".to_string() } else { parts.path.replace('\\', "/") };
    if let Some(q) = parts.query {
        path.push('?');
        path.push_str(q);
    }
    Ok(Target { dest: Destination { scheme, host, port }, path })
}

/// Resolves a `Location` against the URL it came from.
fn resolve_location(base: &Target, location: &str) -> String {
    let location = location.trim();
    if location.contains("://") {
        return location.to_string();
    }
    let origin = format!("{}://{}", base.dest.scheme, base.dest.authority());
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{}://{rest}", base.dest.scheme);
    }
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = base.path.split('?').next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{origin}{}{location}", if dir.is_empty() { "/" } else { dir })
}

/// Follows `first` through its redirects. Hop records are `request_id`, then `request_id-r1`, ...
async fn fetch(state: &ProxyState, snap: &Snapshot, client: SocketAddr, first: String, request_id: &str) -> Result<Page, Refusal> {
    let mut url = first;
    for hop in 0..=MAX_REDIRECTS {
        let target = parse_target(&url)?;
        let hop_id = if hop == 0 { request_id.to_string() } else { format!("{request_id}-r{hop}") };
        match hop_once(state, snap, client, &target, hop, hop_id).await? {
            Hop::Redirect(location) => url = resolve_location(&target, &location),
            Hop::Page(page) => return Ok(Page { final_url: url, ..page }),
        }
    }
    Err(Refusal::new(403, "fetch.too_many_redirects", format!("more than {MAX_REDIRECTS} redirects")))
}

enum Hop {
    Redirect(String),
    Page(Page),
}

/// Fetches one URL, audited as one request record.
async fn hop_once(state: &ProxyState, snap: &Snapshot, client: SocketAddr, target: &Target, hop: usize, hop_id: String) -> Result<Hop, Refusal> {
    let started = Instant::now();
    let exchange = Exchange { state, snap, client, dest: &target.dest };
    let head = get_request(&target.path, &target.dest.authority());
    let mut record = exchange.new_record(&head);
    record.via = Some("fetch");
    record.request_id = hop_id;
    let mut result = hop_judged(&exchange, target, &mut record, hop).await;
    match &mut result {
        Ok(Hop::Redirect(location)) => record.reason = Some(format!("redirect to {location}")),
        Ok(Hop::Page(_)) => {}
        Err(refusal) => {
            refusal.request_id = Some(record.request_id.clone());
            let mode = if refusal.status == 403 { snap.policy.mode } else { cork_policy::Mode::Enforce };
            if !record.rules.contains(&refusal.rule) || record.reason.is_none() {
                record_block(&mut record, mode, &refusal.rule, refusal.reason.clone());
            }
            record.status = Some(refusal.status);
        }
    }
    exchange.finish(record, started, 0, 0);
    result
}

async fn hop_judged(exchange: &Exchange<'_>, target: &Target, record: &mut AuditRecord, hop: usize) -> Result<Hop, Refusal> {
    let snap = exchange.snap;
    let mode = snap.policy.mode;
    let enforce = mode == cork_policy::Mode::Enforce;
    let dest = &target.dest;
    if let HostVerdict::Block { rule, reason } = snap.policy.hosts.check(&dest.host, dest.port) {
        let reason = if hop > 0 { format!("{reason} (reached by a redirect)") } else { reason };
        if enforce {
            return Err(Refusal { status: 403, rule, reason, request_id: None });
        }
        record_block(record, mode, &rule, reason);
    }
    let mut path = target.path.clone();
    let findings = exchange.scan_head(&mut path, &mut [], record);
    if let Some((f, _)) = findings.iter().find(|(_, e)| *e != Effect::Record) {
        return Err(Refusal::new(403, &f.rule, format!("{} found in {}", f.rule, f.location)));
    }
    let idle = Duration::from_secs(snap.policy.limits.idle_timeout_secs);
    let connect_failed = |e: upstream::UpstreamError| Refusal::new(502, e.rule(), e.to_string());
    let request = get_request(&target.path, &dest.authority());
    let (response, raw, truncated) = if dest.scheme == "https" {
        let tls = upstream::connect_tls(&snap.policy, &snap.upstream_tls, &dest.host, dest.port).await.map_err(connect_failed)?;
        exchange_once(snap, &mut Wire::new(tls), &request, idle).await?
    } else {
        let tcp = upstream::connect_tcp(&snap.policy, &dest.host, dest.port).await.map_err(connect_failed)?;
        exchange_once(snap, &mut Wire::new(tcp), &request, idle).await?
    };
    record.status = Some(response.status);
    record.bytes_down = raw.len() as u64;
    if (300..400).contains(&response.status) {
        if let Some(location) = response.header("location").and_then(|h| h.value_str()) {
            return Ok(Hop::Redirect(location.to_string()));
        }
    }
    let content_type = response.header("content-type").and_then(|h| h.value_str()).unwrap_or("").to_ascii_lowercase();
    let body = decode_body(&response, raw)?;
    let is_html = content_type.contains("html") || (content_type.is_empty() && looks_like_html(&body));
    let is_text = is_html
        || content_type.is_empty()
        || content_type.starts_with("text/")
        || ["json", "xml", "javascript", "yaml", "markdown"].iter().any(|t| content_type.contains(t));
    if !is_text {
        return Err(Refusal::new(415, "fetch.not_text", format!("the fetch endpoint returns text; the page is {content_type}")));
    }
    let mut findings = scan(snap, &body, Some(&content_type), "body");
    let text = if is_html {
        let readable = cork_scan::html::readable_text(&body, MAX_BODY_BYTES);
        findings.extend(scan(snap, readable.text.as_bytes(), Some("text/plain"), "text"));
        readable.text
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    let judged: Vec<(Finding, Effect)> = findings.into_iter().map(|f| (fetch_effect(mode, &f), f)).map(|(e, f)| (f, e)).collect();
    record_findings(record, mode, &judged);
    if let Some((f, _)) = judged.iter().find(|(_, e)| *e != Effect::Record) {
        return Err(Refusal::new(403, &f.rule, format!("{} found in the fetched page's {}", f.rule, f.location)));
    }
    Ok(Hop::Page(Page { text, final_url: String::new(), status: response.status, truncated }))
}

/// A page cannot be redacted in any meaningful way: what would redact blocks.
fn fetch_effect(mode: cork_policy::Mode, finding: &Finding) -> Effect {
    match effect(mode, finding) {
        Effect::Redact => Effect::Block,
        other => other,
    }
}

/// `GET target HTTP/1.1` with the headers a fetch sends.
fn get_request(target: &str, authority: &str) -> RequestHead {
    RequestHead {
        method: "GET".into(),
        target: target.into(),
        version: cork_http::head::Version::Http11,
        headers: vec![
            Header::new("Host", authority),
            Header::new("User-Agent", concat!("cork-fetch/", env!("CARGO_PKG_VERSION"))),
            Header::new("Accept", "text/html, text/plain;q=0.9, */*;q=0.1"),
            Header::new("Accept-Encoding", "gzip, deflate, br, zstd"),
            Header::new("Connection", "close"),
        ],
    }
}

/// Scans `data` as a response body, with findings located under `label`.
fn scan(snap: &Snapshot, data: &[u8], content_type: Option<&str>, label: &str) -> Vec<Finding> {
    let mut scan = snap.engine.response_body(BodyMeta { content_type, content_encoding: None });
    let mut findings = scan.push(data);
    findings.extend(scan.finish());
    for f in &mut findings {
        f.location = match f.location.strip_prefix("body") {
            Some(rest) => format!("{label}{rest}"),
            None => format!("{label}:{}", f.location),
        };
    }
    findings
}

fn looks_like_html(body: &[u8]) -> bool {
    let start = &body[..body.len().min(512)];
    let lower: Vec<u8> = start.iter().map(u8::to_ascii_lowercase).collect();
    lower.windows(5).any(|w| w == b"<html")
}

/// Sends `request` and reads the response head and up to [`MAX_BODY_BYTES`] of its body.
async fn exchange_once<S>(snap: &Snapshot, wire: &mut Wire<S>, request: &RequestHead, idle: Duration) -> Result<(ResponseHead, Vec<u8>, bool), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let upstream_failed = |reason: String| Refusal::new(502, "upstream.bad_response", reason);
    wire.send(&request.to_bytes()).await.map_err(|e| upstream_failed(format!("sending the request: {e}")))?;
    wire.flush().await.map_err(|e| upstream_failed(format!("sending the request: {e}")))?;
    let limits = head_limits(snap);
    let response = loop {
        match read_head(wire, &limits, idle, idle, ResponseHead::parse).await {
            Ok(Some(r)) if (100..200).contains(&r.status) => continue,
            Ok(Some(r)) => break r,
            Ok(None) => return Err(upstream_failed("the upstream closed without a response".into())),
            Err(e) => return Err(upstream_failed(format!("invalid upstream response: {e}"))),
        }
    };
    let framing = cork_http::framing::response_framing("GET", &response).map_err(|e| upstream_failed(format!("invalid upstream response framing: {e}")))?;
    let mut reader = BodyReader::new(framing);
    let mut body = Vec::new();
    let mut truncated = false;
    while reader.read_into(wire, &mut body, idle).await.map_err(|e| upstream_failed(format!("reading the body: {e}")))? {
        if body.len() >= MAX_BODY_BYTES {
            truncated = !reader.is_done();
            body.truncate(MAX_BODY_BYTES);
            break;
        }
    }
    Ok((response, body, truncated))
}

/// Undoes `Content-Encoding`, bounded against bombs.
fn decode_body(response: &ResponseHead, raw: Vec<u8>) -> Result<Vec<u8>, Refusal> {
    let Some(header) = response.header("content-encoding").and_then(|h| h.value_str()) else {
        return Ok(raw);
    };
    let codings = parse_codings(header).map_err(|e| Refusal::new(502, "fetch.bad_encoding", e))?;
    let mut data = raw;
    // Codings are listed in the order they were applied: undo them last to first.
    for coding in codings.into_iter().rev() {
        let mut out = Vec::new();
        let mut dec = Decompressor::new(coding, MAX_BODY_BYTES as u64, MAX_RATIO);
        let mut emit = |piece: &[u8]| out.extend_from_slice(piece);
        dec.feed(&data, &mut emit).and_then(|()| dec.finish(&mut emit)).map_err(|e| Refusal::new(403, "fetch.bad_encoding", e.to_string()))?;
        data = out;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_parameter_is_decoded() {
        assert_eq!(requested_url("/fetch?url=https%3A%2F%2Fa.test%2Fp%3Fq%3D1").as_deref(), Some("https://a.test/p?q=1"));
        assert_eq!(requested_url("/fetch?x=1&url=http://a.test/").as_deref(), Some("http://a.test/"));
        assert_eq!(requested_url("/fetch"), None);
        assert_eq!(requested_url("/fetch?url="), None);
        assert_eq!(requested_url("/fetch?url=%ff"), None);
    }

    #[test]
    fn targets_parse_and_refuse() {
        let t = parse_target("https://A.test:8443/x?y=1").ok().unwrap();
        assert_eq!((t.dest.scheme, t.dest.host.as_str(), t.dest.port, t.path.as_str()), ("https", "a.test", 8443, "/x?y=1"));
        let t = parse_target("http://a.test").ok().unwrap();
        assert_eq!((t.dest.port, t.path.as_str()), (80, "/"));
        for bad in ["ftp://a.test/", "a.test/x", "https://:443/", "https://a.test:0/", "https://a.test:99999/"] {
            assert_eq!(parse_target(bad).err().map(|r| r.rule), Some("fetch.bad_url".to_string()), "{bad}");
        }
        assert_eq!(parse_target("https://u:p@a.test/").err().map(|r| r.rule), Some("fetch.credentials_in_url".to_string()));
    }

    #[test]
    fn locations_resolve_against_the_hop() {
        let base = parse_target("https://a.test:8443/dir/page?x=1").ok().unwrap();
        assert_eq!(resolve_location(&base, "https://b.test/"), "https://b.test/");
        assert_eq!(resolve_location(&base, "//b.test/p"), "https://b.test/p");
        assert_eq!(resolve_location(&base, "/top"), "https://a.test:8443/top");
        assert_eq!(resolve_location(&base, "next"), "https://a.test:8443/dir/next");
    }
}
