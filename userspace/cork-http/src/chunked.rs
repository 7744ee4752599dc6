//! Incremental decoding and encoding of chunked bodies.
//!
//! [`ChunkedDecoder`] is fed whatever bytes have arrived and hands back the payload ranges it
//! finds in them, so a body of any size passes through with constant memory. Chunk extensions and
//! trailers are read, bounded, and dropped: cork re-frames every body it forwards.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size line")]
    InvalidSize,
    #[error("chunk size line or trailer section too long")]
    LineTooLong,
    #[error("missing CRLF after chunk data")]
    MissingCrlf,
}

/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

/// What one call to [`ChunkedDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input consumed; the caller drops them.
    pub consumed: usize,
    /// Payload bytes inside the consumed input, if this step produced any.
    pub data: Option<std::ops::Range<usize>>,
    /// The final chunk and trailers have been read; the body is over.
    pub done: bool,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self { state: State::Size, line: Vec::new(), trailer_bytes: 0 }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from the front of `input`. Returns after at most one run of payload bytes, so call
    /// it in a loop until `consumed == input.len()` or `done`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkedError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Done => break,
                State::Size => {
                    let Some(taken) = self.take_line(&input[pos..], MAX_LINE)? else {
                        return Ok(Decoded { consumed: input.len(), data: None, done: false });
                    };
                    pos += taken;
                    let size = parse_size_line(&self.line)?;
                    self.line.clear();
                    self.state = if size == 0 { State::Trailers } else { State::Data(size) };
                }
                State::Data(left) => {
                    let n = (input.len() - pos).min(usize::try_from(left).unwrap_or(usize::MAX));
                    let start = pos;
                    pos += n;
                    self.state = if left == n as u64 { State::DataCrlf } else { State::Data(left - n as u64) };
                    return Ok(Decoded { consumed: pos, data: Some(start..pos), done: false });
                }
                State::DataCrlf => {
                    // Exactly CR LF, checked byte by byte so the verdict cannot depend on where
                    // the input happened to be split.
                    let expected = if self.line.is_empty() { b'\r' } else { b'\n' };
                    if input[pos] != expected {
                        return Err(ChunkedError::MissingCrlf);
                    }
                    pos += 1;
                    if expected == b'\r' {
                        self.line.push(b'\r');
                    } else {
                        self.line.clear();
                        self.state = State::Size;
                    }
                }
                State::Trailers => {
                    let Some(taken) = self.take_line(&input[pos..], MAX_LINE)? else {
                        return Ok(Decoded { consumed: input.len(), data: None, done: false });
                    };
                    pos += taken;
                    self.trailer_bytes += taken;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkedError::LineTooLong);
                    }
                    if self.line.is_empty() {
                        self.state = State::Done;
                        return Ok(Decoded { consumed: pos, data: None, done: true });
                    }
                    self.line.clear();
                }
            }
        }
        Ok(Decoded { consumed: pos, data: None, done: self.state == State::Done })
    }

    /// Accumulates one CRLF-terminated line into `self.line` (without the CRLF). Returns how many
    /// input bytes were used once the line is complete, or `None` if all were used and it is not.
    fn take_line(&mut self, input: &[u8], max: usize) -> Result<Option<usize>, ChunkedError> {
        match memchr::memchr(b'\n', input) {
            Some(nl) => {
                self.line.extend_from_slice(&input[..nl]);
                if self.line.pop() != Some(b'\r') {
                    return Err(ChunkedError::MissingCrlf);
                }
                if self.line.len() > max {
                    return Err(ChunkedError::LineTooLong);
                }
                Ok(Some(nl + 1))
            }
            None => {
                self.line.extend_from_slice(input);
                if self.line.len() > max + 1 {
                    return Err(ChunkedError::LineTooLong);
                }
                Ok(None)
            }
        }
    }
}

fn parse_size_line(line: &[u8]) -> Result<u64, ChunkedError> {
    let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
    // Whitespace before extensions is tolerated by RFC 9112's BWS; inside the number it is not.
    let digits = trim_ascii_end(size_part);
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(ChunkedError::InvalidSize);
    }
    let text = std::str::from_utf8(digits).map_err(|_| ChunkedError::InvalidSize)?;
    u64::from_str_radix(text, 16).map_err(|_| ChunkedError::InvalidSize)
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(0, |p| p + 1);
    &bytes[..end]
}

/// The header that precedes a chunk of `len` bytes.
pub fn chunk_header(len: usize) -> Vec<u8> {
    format!("{len:x}\r\n").into_bytes()
}

pub const CHUNK_TRAILER: &[u8] = b"\r\n";
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes and returns the payload.
    fn decode_in_steps(wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), ChunkedError> {
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() && !dec.is_done() {
                let d = dec.decode(rest)?;
                if let Some(r) = d.data.clone() {
                    out.extend_from_slice(&rest[r]);
                }
                rest = &rest[d.consumed..];
            }
        }
        Ok((out, dec.is_done()))
    }

    #[test]
    fn decodes_at_every_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..wire.len() {
            assert_eq!(decode_in_steps(wire, step).unwrap(), (b"hello world".to_vec(), true), "step {step}");
        }
    }

    #[test]
    fn rejects_bad_sizes_and_missing_crlf() {
        assert_eq!(decode_in_steps(b"zz\r\n", 64), Err(ChunkedError::InvalidSize));
        assert_eq!(decode_in_steps(b"-1\r\n", 64), Err(ChunkedError::InvalidSize));
        assert_eq!(decode_in_steps(b"1ffffffffffffffff\r\n", 64), Err(ChunkedError::InvalidSize));
        assert_eq!(decode_in_steps(b"3\r\nabcX\r\n", 64), Err(ChunkedError::MissingCrlf));
        assert_eq!(decode_in_steps(b"3\nabc", 64), Err(ChunkedError::MissingCrlf));
    }

    #[test]
    fn endless_size_line_is_bounded() {
        let wire = vec![b'1'; MAX_LINE * 4];
        assert!(decode_in_steps(&wire, 1000).is_err());
    }

    #[test]
    fn incomplete_body_is_not_done() {
        assert_eq!(decode_in_steps(b"5\r\nhel", 2).unwrap(), (b"hel".to_vec(), false));
    }
}
