//! Request and response heads.

use std::fmt::Write as _;

/// Bounds on a head. A head that exceeds them is refused, not truncated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_head_bytes: 64 * 1024, max_headers: 128 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self { name: name.into(), value: value.into() }
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head is larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("obsolete line folding in a header field")]
    ObsFold,
    #[error("bare LF line ending in the head")]
    BareLf,
    #[error("unsupported HTTP version")]
    Version,
    #[error("both Content-Length and Transfer-Encoding are present")]
    LengthAndChunked,
    #[error("more than one Content-Length")]
    DuplicateLength,
    #[error("invalid Content-Length")]
    InvalidLength,
    #[error("unsupported Transfer-Encoding {0:?}")]
    UnsupportedEncoding(String),
}

/// HTTP/1.x minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    fn from_minor(minor: u8) -> Result<Self, HeadError> {
        match minor {
            0 => Ok(Version::Http10),
            1 => Ok(Version::Http11),
            _ => Err(HeadError::Version),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: Vec<Header>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
}

/// Where a complete head ends in `buf`, if it is complete. Fails early on size and line endings so
/// that a slow client cannot make cork buffer an unbounded head.
fn head_end(buf: &[u8], limits: &Limits) -> Result<Option<usize>, HeadError> {
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    match memchr::memmem::find(window, b"\r\n\r\n") {
        Some(pos) => {
            let head = &window[..pos + 4];
            check_line_endings(head)?;
            Ok(Some(pos + 4))
        }
        None if buf.len() >= limits.max_head_bytes => Err(HeadError::TooLarge(limits.max_head_bytes)),
        None => {
            check_line_endings(window)?;
            Ok(None)
        }
    }
}

fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    for pos in memchr::memchr_iter(b'\n', head) {
        if pos == 0 || head[pos - 1] != b'\r' {
            return Err(HeadError::BareLf);
        }
        if matches!(head.get(pos + 1), Some(b' ' | b'\t')) {
            return Err(HeadError::ObsFold);
        }
    }
    Ok(())
}

fn collect_headers(raw: &[httparse::Header<'_>]) -> Vec<Header> {
    raw.iter().map(|h| Header { name: h.name.to_string(), value: h.value.to_vec() }).collect()
}

fn map_parse_error(err: httparse::Error, limits: &Limits) -> HeadError {
    match err {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders(limits.max_headers),
        httparse::Error::Version => HeadError::Version,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status"),
        httparse::Error::Token => HeadError::Malformed("invalid token"),
    }
}

impl RequestHead {
    /// Parses a request head from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((head, len)))` gives the head and how many bytes of `buf` it used.
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HeadError> {
        let Some(end) = head_end(buf, limits)? else { return Ok(None) };
        let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut req = httparse::Request::new(&mut storage);
        match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete request line")),
            Err(e) => return Err(map_parse_error(e, limits)),
        }
        let head = RequestHead {
            method: req.method.ok_or(HeadError::Malformed("no method"))?.to_string(),
            target: req.path.ok_or(HeadError::Malformed("no target"))?.to_string(),
            version: Version::from_minor(req.version.ok_or(HeadError::Version)?)?,
            headers: collect_headers(req.headers),
        };
        Ok(Some((head, end)))
    }

    pub fn header(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.is(name))
    }

    /// Serialises the head as sent on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version.as_str()).into_bytes();
        write_headers(&mut out, &self.headers);
        out
    }

    /// Whether the client asked to keep the connection open after this exchange.
    pub fn keep_alive(&self) -> bool {
        connection_keep_alive(self.version, &self.headers)
    }
}

impl ResponseHead {
    /// Parses a response head; see [`RequestHead::parse`].
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(ResponseHead, usize)>, HeadError> {
        let Some(end) = head_end(buf, limits)? else { return Ok(None) };
        let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut res = httparse::Response::new(&mut storage);
        match res.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete status line")),
            Err(e) => return Err(map_parse_error(e, limits)),
        }
        let head = ResponseHead {
            version: Version::from_minor(res.version.ok_or(HeadError::Version)?)?,
            status: res.code.ok_or(HeadError::Malformed("no status"))?,
            reason: res.reason.unwrap_or("").to_string(),
            headers: collect_headers(res.headers),
        };
        Ok(Some((head, end)))
    }

    /// A fresh response head with the given status and headers.
    pub fn new(status: u16, reason: &str, headers: Vec<Header>) -> Self {
        Self { version: Version::Http11, status, reason: reason.to_string(), headers }
    }

    pub fn header(&self, name: &str) -> Option<&Header> {
        self.headers.iter().find(|h| h.is(name))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        let _ = write!(out, "{} {} {}\r\n", self.version.as_str(), self.status, self.reason);
        let mut out = out.into_bytes();
        write_headers(&mut out, &self.headers);
        out
    }

    pub fn keep_alive(&self) -> bool {
        connection_keep_alive(self.version, &self.headers)
    }
}

fn write_headers(out: &mut Vec<u8>, headers: &[Header]) {
    for h in headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Comma-separated tokens of every `name` field, lower-cased.
pub fn header_tokens(headers: &[Header], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|h| h.is(name))
        .flat_map(|h| String::from_utf8_lossy(&h.value).split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect()
}

fn connection_keep_alive(version: Version, headers: &[Header]) -> bool {
    let tokens = header_tokens(headers, "connection");
    match version {
        Version::Http11 => !tokens.iter().any(|t| t == "close"),
        Version::Http10 => tokens.iter().any(|t| t == "keep-alive"),
    }
}

/// Fields that describe one hop, not the message (RFC 9110 §7.6.1), plus every field that
/// `Connection` names. A proxy must not forward them. `Transfer-Encoding` and `Content-Length` are
/// left in place: the framing module decides them.
pub fn strip_hop_by_hop(headers: &mut Vec<Header>) {
    let named = header_tokens(headers, "connection");
    const FIXED: [&str; 8] =
        ["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade"];
    headers.retain(|h| {
        let lower = h.name.to_ascii_lowercase();
        !FIXED.contains(&lower.as_str()) && !named.iter().any(|n| n == &lower && n != "transfer-encoding" && n != "content-length")
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_req(raw: &str) -> Result<Option<(RequestHead, usize)>, HeadError> {
        RequestHead::parse(raw.as_bytes(), &Limits::default())
    }

    #[test]
    fn parses_a_request_and_reports_its_length() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nAccept: */*\r\n\r\nBODY";
        let (head, len) = parse_req(raw).unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/a?b=1");
        assert_eq!(head.header("host").unwrap().value, b"x.test");
        assert_eq!(&raw[len..], "BODY");
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        assert_eq!(parse_req("GET / HTTP/1.1\r\nHost: x").unwrap(), None);
    }

    #[test]
    fn refuses_obs_fold_and_bare_lf() {
        assert_eq!(parse_req("GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n"), Err(HeadError::ObsFold));
        assert_eq!(parse_req("GET / HTTP/1.1\nHost: x\r\n\r\n"), Err(HeadError::BareLf));
    }

    #[test]
    fn refuses_oversized_heads_before_they_complete() {
        let limits = Limits { max_head_bytes: 64, max_headers: 8 };
        let raw = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(100));
        assert_eq!(RequestHead::parse(raw.as_bytes(), &limits), Err(HeadError::TooLarge(64)));
    }

    #[test]
    fn refuses_too_many_headers() {
        let limits = Limits { max_head_bytes: 4096, max_headers: 2 };
        let raw = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(RequestHead::parse(raw.as_bytes(), &limits), Err(HeadError::TooManyHeaders(2)));
    }

    #[test]
    fn refuses_http2_preface_and_garbage() {
        assert!(parse_req("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_err());
        assert!(RequestHead::parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", &Limits::default()).is_err());
    }

    #[test]
    fn round_trips_a_response_head() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        let (head, len) = ResponseHead::parse(raw.as_bytes(), &Limits::default()).unwrap().unwrap();
        assert_eq!(len, raw.len());
        assert_eq!(head.to_bytes(), raw.as_bytes());
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_fields() {
        let mut headers = vec![
            Header::new("Connection", "keep-alive, X-Secret-Hop"),
            Header::new("X-Secret-Hop", "1"),
            Header::new("Proxy-Authorization", "Basic x"),
            Header::new("Keep-Alive", "timeout=5"),
            Header::new("Upgrade", "websocket"),
            Header::new("Host", "a.test"),
            Header::new("Transfer-Encoding", "chunked"),
        ];
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Host", "Transfer-Encoding"]);
    }

    #[test]
    fn keep_alive_follows_version_defaults() {
        let (h11, _) = parse_req("GET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        let (h10, _) = parse_req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        let (close, _) = parse_req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(h11.keep_alive());
        assert!(!h10.keep_alive());
        assert!(!close.keep_alive());
    }
}
