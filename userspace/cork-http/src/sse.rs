//! Server-sent events (`text/event-stream`) framing: where one event ends and what its data is.
//! Used wherever cork judges a stream event by event (MCP over streamable HTTP).

/// The end of the first complete event in `buf` (before its blank line) and how many bytes to
/// drop with it; `None` until a blank line (`\n\n` or `\n\r\n`) arrives.
pub fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    memchr::memchr_iter(b'\n', buf).find_map(|i| match (buf.get(i + 1), buf.get(i + 2)) {
        (Some(b'\n'), _) => Some((i, i + 2)),
        (Some(b'\r'), Some(b'\n')) => Some((i, i + 3)),
        _ => None,
    })
}

/// The `data:` lines of one event, joined with newlines, as an EventSource would deliver them.
pub fn event_data(event: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_at_a_blank_line() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some((7, 9)));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some((8, 11)));
        assert_eq!(event_end(b"data: a\n"), None);
        assert_eq!(event_end(b""), None);
    }

    #[test]
    fn data_lines_join() {
        assert_eq!(event_data(b"event: message\ndata: {\"a\":\ndata: 1}\nid: 3"), b"{\"a\":\n1}");
        assert_eq!(event_data(b": comment"), b"");
        assert_eq!(event_data(b"data:x\r"), b"x");
    }
}
