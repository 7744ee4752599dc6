//! How a message body is delimited (RFC 9112 §6), decided strictly.

use crate::head::{Header, HeadError, RequestHead, ResponseHead};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body runs until the server closes the connection (responses only).
    UntilClose,
}

fn declared(headers: &[Header]) -> Result<(Option<u64>, bool), HeadError> {
    let mut length = None;
    let mut chunked = false;
    for h in headers {
        if h.is("content-length") {
            if length.is_some() {
                return Err(HeadError::DuplicateLength);
            }
            let text = h.value_str().map(str::trim).unwrap_or("");
            if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::InvalidLength);
            }
            length = Some(text.parse().map_err(|_| HeadError::InvalidLength)?);
        } else if h.is("transfer-encoding") {
            let text = String::from_utf8_lossy(&h.value).trim().to_ascii_lowercase();
            // Only a single, plain `chunked` is accepted: anything layered under it (`gzip,
            // chunked`) or repeated is a classic way to make two parsers disagree.
            if text != "chunked" || chunked {
                return Err(HeadError::UnsupportedEncoding(text));
            }
            chunked = true;
        }
    }
    if length.is_some() && chunked {
        return Err(HeadError::LengthAndChunked);
    }
    Ok((length, chunked))
}

/// The framing of a request body.
pub fn request_framing(head: &RequestHead) -> Result<BodyFraming, HeadError> {
    Ok(match declared(&head.headers)? {
        (_, true) => BodyFraming::Chunked,
        (Some(0), false) | (None, false) => BodyFraming::Empty,
        (Some(n), false) => BodyFraming::Length(n),
    })
}

/// The framing of a response body, which also depends on the request method and the status.
pub fn response_framing(request_method: &str, head: &ResponseHead) -> Result<BodyFraming, HeadError> {
    let (length, chunked) = declared(&head.headers)?;
    if request_method.eq_ignore_ascii_case("HEAD") || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(BodyFraming::Empty);
    }
    Ok(match (length, chunked) {
        (_, true) => BodyFraming::Chunked,
        (Some(0), false) => BodyFraming::Empty,
        (Some(n), false) => BodyFraming::Length(n),
        (None, false) => BodyFraming::UntilClose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Limits;

    fn req(raw: &str) -> RequestHead {
        RequestHead::parse(raw.as_bytes(), &Limits::default()).unwrap().unwrap().0
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let both = req("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(request_framing(&both), Err(HeadError::LengthAndChunked));
        let dup = req("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(request_framing(&dup), Err(HeadError::DuplicateLength));
        let signed = req("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n");
        assert_eq!(request_framing(&signed), Err(HeadError::InvalidLength));
        let layered = req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(request_framing(&layered), Err(HeadError::UnsupportedEncoding(_))));
        let twice = req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(request_framing(&twice), Err(HeadError::UnsupportedEncoding(_))));
    }

    #[test]
    fn ordinary_requests_frame_as_expected() {
        assert_eq!(request_framing(&req("GET / HTTP/1.1\r\n\r\n")), Ok(BodyFraming::Empty));
        assert_eq!(request_framing(&req("PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")), Ok(BodyFraming::Length(10)));
        assert_eq!(request_framing(&req("PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")), Ok(BodyFraming::Chunked));
    }

    #[test]
    fn responses_without_bodies() {
        let ok = ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &Limits::default()).unwrap().unwrap().0;
        assert_eq!(response_framing("HEAD", &ok), Ok(BodyFraming::Empty));
        assert_eq!(response_framing("GET", &ok), Ok(BodyFraming::Length(5)));
        let no_content = ResponseHead::parse(b"HTTP/1.1 204 No Content\r\n\r\n", &Limits::default()).unwrap().unwrap().0;
        assert_eq!(response_framing("GET", &no_content), Ok(BodyFraming::Empty));
        let until_close = ResponseHead::parse(b"HTTP/1.1 200 OK\r\n\r\n", &Limits::default()).unwrap().unwrap().0;
        assert_eq!(response_framing("GET", &until_close), Ok(BodyFraming::UntilClose));
    }
}
