//! Moving a body from one side to the other through the scanner.
//!
//! A body is read in whatever pieces arrive, decoded from its framing, pushed through the scanner
//! and re-framed on the way out. Two rules keep a secret from leaking while the body streams:
//!
//! - Bodies up to the configured buffer size are scanned whole before the message head is even
//!   sent, so a blocked message never reaches the other side at all.
//! - Beyond that, the last [`cork_scan::BodyScan::hold_back`] bytes are always held back, so a
//!   match that completes in a later piece can still be redacted in place or stop the message
//!   before its bytes leave. A block at that stage cuts the exchange.

use std::time::Duration;

use cork_http::chunked::{chunk_header, ChunkedDecoder, CHUNK_TRAILER, LAST_CHUNK};
use cork_http::BodyFraming;
use cork_scan::{BodyScan, Finding};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::wire::Wire;

/// Pieces smaller than this are not released on their own, to avoid tiny writes and chunks.
const MIN_RELEASE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading the body failed: {0}")]
    Read(std::io::Error),
    #[error("the body ended early: {0}")]
    Truncated(&'static str),
    #[error("invalid chunked body: {0}")]
    Chunked(#[from] cork_http::chunked::ChunkedError),
    #[error("writing the body failed: {0}")]
    Write(std::io::Error),
    #[error("no body data for {0:?}")]
    Idle(Duration),
}

/// Reads a body's payload according to its framing.
pub struct BodyReader {
    framing: BodyFraming,
    remaining: u64,
    chunked: ChunkedDecoder,
    done: bool,
}

impl BodyReader {
    pub fn new(framing: BodyFraming) -> Self {
        let remaining = if let BodyFraming::Length(n) = framing { n } else { 0 };
        Self { framing, remaining, chunked: ChunkedDecoder::default(), done: framing == BodyFraming::Empty }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Appends the next payload bytes to `out`, reading from the socket if nothing is buffered.
    /// Returns `false` once the body is complete.
    pub async fn read_into<S: AsyncRead + Unpin>(&mut self, wire: &mut Wire<S>, out: &mut Vec<u8>, idle: Duration) -> Result<bool, RelayError> {
        if self.done {
            return Ok(false);
        }
        if wire.buffered().is_empty() {
            let n = match wire.fill_within(idle).await {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(RelayError::Idle(idle)),
                Err(e) => return Err(RelayError::Read(e)),
            };
            if n == 0 {
                return match self.framing {
                    BodyFraming::UntilClose => {
                        self.done = true;
                        Ok(false)
                    }
                    _ => Err(RelayError::Truncated("connection closed inside the body")),
                };
            }
        }
        match self.framing {
            BodyFraming::Empty => self.done = true,
            BodyFraming::UntilClose => {
                out.extend_from_slice(wire.buffered());
                let n = wire.buffered().len();
                wire.consume(n);
            }
            BodyFraming::Length(_) => {
                let n = wire.buffered().len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                out.extend_from_slice(&wire.buffered()[..n]);
                wire.consume(n);
                self.remaining -= n as u64;
                self.done = self.remaining == 0;
            }
            BodyFraming::Chunked => {
                while !wire.buffered().is_empty() && !self.chunked.is_done() {
                    let step = self.chunked.decode(wire.buffered())?;
                    if let Some(range) = step.data.clone() {
                        out.extend_from_slice(&wire.buffered()[range]);
                    }
                    wire.consume(step.consumed);
                }
                self.done = self.chunked.is_done();
            }
        }
        Ok(!self.done)
    }
}

/// How released bytes are framed on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// Written as they are: the head carries the length, or the body runs to the close.
    Raw,
    Chunked,
}

async fn write_piece<W: AsyncWrite + Unpin>(dst: &mut Wire<W>, framing: OutFraming, data: &[u8]) -> Result<(), RelayError> {
    if data.is_empty() {
        return Ok(());
    }
    if framing == OutFraming::Chunked {
        dst.send(&chunk_header(data.len())).await.map_err(RelayError::Write)?;
        dst.send(data).await.map_err(RelayError::Write)?;
        dst.send(CHUNK_TRAILER).await.map_err(RelayError::Write)
    } else {
        dst.send(data).await.map_err(RelayError::Write)
    }
}

/// What to do about one finding; decided by the caller from the rule's action and the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Block,
    Redact,
    Record,
}

/// How a scanned relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The whole body went through (possibly with redactions).
    Complete { findings: Vec<(Finding, Effect)>, bytes: u64 },
    /// A finding blocked the body. If `committed`, the head and part of the body had already been
    /// sent and the exchange must be cut; otherwise nothing was sent.
    Blocked { findings: Vec<(Finding, Effect)>, committed: bool },
}

/// A protocol-level check that sees a body's payload next to the scanner (MCP JSON-RPC, see
/// [`crate::mcp`]). Its blocking findings stop the body like the scanner's; bytes it has not
/// judged yet are held back.
pub trait BodyCheck: Send {
    /// The next payload bytes (`done` at the end of the body); returns findings now certain.
    fn push(&mut self, data: &[u8], done: bool) -> Vec<(Finding, Effect)>;
    /// Trailing payload bytes not judged yet, which must not be released.
    fn hold_back(&self) -> usize;
    /// Why it blocked, for the audit record, when it says more than a rule and a location.
    fn reason(&self) -> Option<String> {
        None
    }
}

/// No check beyond the scanner.
pub struct NoCheck;

impl BodyCheck for NoCheck {
    fn push(&mut self, _: &[u8], _: bool) -> Vec<(Finding, Effect)> {
        Vec::new()
    }

    fn hold_back(&self) -> usize {
        0
    }
}

pub struct ScannedRelay<'a> {
    pub scan: &'a mut BodyScan,
    pub decide: &'a (dyn Fn(&Finding) -> Effect + Sync),
    /// Bodies up to this many bytes are scanned whole before the head is sent.
    pub buffer_limit: usize,
    pub idle: Duration,
}

impl ScannedRelay<'_> {
    /// Relays a body from `src` to `dst`. `head` is written to `dst` before the first body byte
    /// (and only once nothing can block the body any more, for bodies within the buffer limit).
    pub async fn run<R, W>(
        &mut self,
        src: &mut Wire<R>,
        reader: &mut BodyReader,
        dst: &mut Wire<W>,
        out: OutFraming,
        head: &[u8],
    ) -> Result<RelayEnd, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.run_checked(src, reader, dst, out, head, &mut NoCheck).await
    }

    /// [`ScannedRelay::run`] with a protocol check beside the scanner.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_checked<R, W>(
        &mut self,
        src: &mut Wire<R>,
        reader: &mut BodyReader,
        dst: &mut Wire<W>,
        out: OutFraming,
        head: &[u8],
        check: &mut dyn BodyCheck,
    ) -> Result<RelayEnd, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let hold = self.scan.hold_back();
        let mut held: Vec<u8> = Vec::new();
        let mut scanned = 0usize; // bytes of `held` already pushed to the scanner
        let mut released: u64 = 0; // stream offset of held[0]
        let mut committed = false;
        let mut seen: Vec<(Finding, Effect)> = Vec::new();
        loop {
            let more = reader.read_into(src, &mut held, self.idle).await?;
            let mut fresh = self.scan.push(&held[scanned..]);
            let checked = check.push(&held[scanned..], !more);
            scanned = held.len();
            if !more {
                fresh.extend(self.scan.finish());
            }
            for finding in fresh {
                let mut effect = (self.decide)(&finding);
                if effect == Effect::Redact {
                    match finding.span.clone().filter(|s| s.start >= released && s.end <= released + held.len() as u64) {
                        Some(span) => cork_scan::redact_in_place(&mut held, (span.start - released) as usize..(span.end - released) as usize),
                        // Not redactable where it sits (already released, or inside an encoding
                        // cork cannot rewrite): refuse rather than let it through.
                        None => effect = Effect::Block,
                    }
                }
                seen.push((finding, effect));
            }
            seen.extend(checked);
            if seen.iter().any(|(_, e)| *e == Effect::Block) {
                return Ok(RelayEnd::Blocked { findings: seen, committed });
            }
            if !more {
                if !committed {
                    dst.send(head).await.map_err(RelayError::Write)?;
                }
                write_piece(dst, out, &held).await?;
                if out == OutFraming::Chunked {
                    dst.send(LAST_CHUNK).await.map_err(RelayError::Write)?;
                }
                dst.flush().await.map_err(RelayError::Write)?;
                return Ok(RelayEnd::Complete { findings: seen, bytes: released + held.len() as u64 });
            }
            if !committed && released + held.len() as u64 > self.buffer_limit as u64 {
                dst.send(head).await.map_err(RelayError::Write)?;
                committed = true;
            }
            let hold = hold.max(check.hold_back());
            if committed && held.len() >= hold + MIN_RELEASE {
                let n = held.len() - hold;
                write_piece(dst, out, &held[..n]).await?;
                held.drain(..n);
                scanned -= n;
                released += n as u64;
            }
        }
    }
}
