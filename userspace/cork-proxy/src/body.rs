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
//!
//! A long body of known length between two plaintext sockets (plain TCP, or kTLS legs) moves on
//! io_uring once its head is out ([`crate::uring::Pool::body`]): the same scanner judges each read
//! in the ring's buffer, with the same hold-back, and the write leaves from that buffer. Anything
//! the ring cannot carry on with (a kTLS control record, end of stream) comes back here with the
//! bytes it still held, and the body goes on on this path.
//!
//! A response body of a type the policy leaves unscanned (`scan.unscanned_response_types`) is
//! not held at all: its head goes out at once, and between plaintext sockets the rest moves by
//! `splice` ([`crate::splice::body`]) without entering userspace.

use std::any::Any;
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use cork_http::chunked::{chunk_header, ChunkedDecoder, CHUNK_TRAILER, LAST_CHUNK};
use cork_http::BodyFraming;
use cork_scan::{BodyScan, Finding};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::splice::BodySpliceStop;
use crate::uring::{BodyEnd, BodyFilter, BodyMoved, Judgement, Pool, BODY_MAX_HELD};
use crate::wire::Wire;

/// Pieces smaller than this are not released on their own, to avoid tiny writes and chunks.
const MIN_RELEASE: usize = 16 * 1024;
/// Bodies with at least this much left after the head is out move on io_uring (when they can):
/// below it, setting up a transfer costs more than it saves.
const RING_MIN_BODY: u64 = 256 * 1024;
/// Unscanned bodies with at least this much left are spliced (a pipe and two registrations).
const SPLICE_MIN_BODY: u64 = 64 * 1024;

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

    /// Payload bytes still to come, where the framing says how many.
    fn length_left(&self) -> Option<u64> {
        (matches!(self.framing, BodyFraming::Length(_)) && !self.done).then_some(self.remaining)
    }

    /// Counts `n` payload bytes that were read past this reader (by the ring).
    fn advance(&mut self, n: u64) {
        self.remaining -= n.min(self.remaining);
        self.done = self.remaining == 0;
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
    /// True when the check never looks at the payload, so the body may bypass it.
    fn is_noop(&self) -> bool {
        false
    }
}

/// Whether a body goes unscanned: its type is one the policy leaves unscanned, and no protocol
/// check (MCP) needs to see it either.
pub fn unscanned(scan: &BodyScan, check: &dyn BodyCheck) -> bool {
    scan.is_unscanned() && check.is_noop()
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

    fn is_noop(&self) -> bool {
        true
    }
}

/// Decides what a finding does (the rule's action under the policy's mode).
pub type Decide = Arc<dyn Fn(&Finding) -> Effect + Send + Sync>;

pub struct ScannedRelay {
    /// Away only while the ring has it.
    scan: Option<BodyScan>,
    decide: Decide,
    /// Bodies up to this many bytes are scanned whole before the head is sent.
    buffer_limit: usize,
    idle: Duration,
    /// The io_uring relay, where the policy and the kernel allow it.
    ring: Option<&'static Pool>,
    /// Body bytes that moved on io_uring.
    pub ring_bytes: u64,
    /// Unscanned body bytes that moved by splice.
    pub spliced_bytes: u64,
}

impl ScannedRelay {
    pub fn new(scan: BodyScan, decide: Decide, buffer_limit: usize, idle: Duration, ring: Option<&'static Pool>) -> Self {
        Self { scan: Some(scan), decide, buffer_limit, idle, ring, ring_bytes: 0, spliced_bytes: 0 }
    }

    /// Whether this relay passes its body on unscanned next to `check` (see [`unscanned`]).
    pub fn is_unscanned(&self, check: &dyn BodyCheck) -> bool {
        self.scan.as_ref().is_some_and(|scan| unscanned(scan, check))
    }

    fn scan(&mut self) -> &mut BodyScan {
        self.scan.as_mut().expect("the scanner is only away during a ring transfer")
    }

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
        let mut held: Vec<u8> = Vec::new();
        let mut scanned = 0usize; // bytes of `held` already pushed to the scanner
        let mut released: u64 = 0; // stream offset of held[0]
        let mut committed = false;
        let mut seen: Vec<(Finding, Effect)> = Vec::new();
        let mut ring_allowed = self.ring.is_some() && out == OutFraming::Raw && check.is_noop();
        // Nothing looks at an unscanned body: nothing is held, and it may bypass userspace.
        let unscanned = self.is_unscanned(check);
        let mut splice_allowed = unscanned && out == OutFraming::Raw;
        let min_release = if unscanned { 1 } else { MIN_RELEASE };
        loop {
            let more = reader.read_into(src, &mut held, self.idle).await?;
            let mut fresh = self.scan().push(&held[scanned..]);
            let checked = check.push(&held[scanned..], !more);
            scanned = held.len();
            if !more {
                fresh.extend(self.scan().finish());
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
            if !committed && (unscanned || released + held.len() as u64 > self.buffer_limit as u64) {
                dst.send(head).await.map_err(RelayError::Write)?;
                committed = true;
            }
            // The scanner's hold-back grows with what it has seen; ask after every push.
            let hold = self.scan().hold_back().max(check.hold_back());
            if committed && held.len() >= hold + min_release {
                let n = held.len() - hold;
                write_piece(dst, out, &held[..n]).await?;
                held.drain(..n);
                scanned -= n;
                released += n as u64;
            }
            let left = reader.length_left().unwrap_or(0);
            if splice_allowed && committed && held.is_empty() && left >= SPLICE_MIN_BODY && src.buffered().is_empty() {
                if let (Some(from), Some(to)) = (src.plain_fd(), dst.plain_fd()) {
                    // What the wire still holds must reach the socket before the kernel's bytes.
                    dst.flush().await.map_err(RelayError::Write)?;
                    let mut moved = 0u64;
                    let stopped = crate::splice::body(from, to, left, self.idle, &mut moved).await;
                    reader.advance(moved);
                    src.bytes_in += moved;
                    dst.bytes_out += moved;
                    self.spliced_bytes += moved;
                    released += moved;
                    match stopped {
                        Ok(()) => return Ok(RelayEnd::Complete { findings: seen, bytes: released }),
                        Err(BodySpliceStop::Handback(reason)) => {
                            // This path reads on and meets whatever stopped the splice itself.
                            tracing::debug!(%reason, "the body splice handed back");
                            splice_allowed = false;
                        }
                        Err(BodySpliceStop::Read(e)) => return Err(RelayError::Read(e)),
                        Err(BodySpliceStop::Write(e)) => return Err(RelayError::Write(e)),
                        Err(BodySpliceStop::Ended) => return Err(RelayError::Truncated("connection closed inside the body")),
                        Err(BodySpliceStop::Idle) => return Err(RelayError::Idle(self.idle)),
                    }
                    continue;
                }
                splice_allowed = false;
            }
            if ring_allowed && committed && left >= RING_MIN_BODY && src.buffered().is_empty() && held.len() <= BODY_MAX_HELD {
                if let (Some(from), Some(to), Some(pool)) = (src.plain_fd(), dst.plain_fd(), self.ring) {
                    // SAFETY: both descriptors belong to the wires, which outlive this call.
                    let (from, to) = unsafe { (BorrowedFd::borrow_raw(from), BorrowedFd::borrow_raw(to)) };
                    let filter = Box::new(RingFilter { scan: self.scan.take().expect("the scanner is here"), decide: self.decide.clone(), found: Vec::new() });
                    let moved = pool.body(from, to, &held, released, left, filter).await.map_err(|e| RelayError::Write(std::io::Error::other(e)))?;
                    let BodyMoved { read, written, end, filter } = moved;
                    let filter = filter.into_any().downcast::<RingFilter>().expect("the ring gives back the filter it was given");
                    self.scan = Some(filter.scan);
                    seen.extend(filter.found);
                    reader.advance(read);
                    src.bytes_in += read;
                    dst.bytes_out += written;
                    self.ring_bytes += read;
                    released += written;
                    match end {
                        BodyEnd::Complete => {
                            dst.flush().await.map_err(RelayError::Write)?;
                            return Ok(RelayEnd::Complete { findings: seen, bytes: released });
                        }
                        BodyEnd::Refused(_) => return Ok(RelayEnd::Blocked { findings: seen, committed }),
                        BodyEnd::Handback { held: rest, reason } => {
                            // This path reads on and meets whatever stopped the ring itself.
                            tracing::debug!(%reason, "the io_uring body transfer handed back");
                            held = rest;
                            scanned = held.len();
                            ring_allowed = false;
                        }
                    }
                }
            }
        }
    }
}

/// The scanner's judgement on the ring: what [`ScannedRelay::run_checked`] does after each read,
/// for the bytes in the ring's buffer.
struct RingFilter {
    scan: BodyScan,
    decide: Decide,
    found: Vec<(Finding, Effect)>,
}

impl BodyFilter for RingFilter {
    fn judge(&mut self, fresh: &[u8], window: Range<u64>, last: bool) -> Judgement {
        let mut findings = self.scan.push(fresh);
        if last {
            findings.extend(self.scan.finish());
        }
        let mut judgement = Judgement::default();
        for finding in findings {
            let mut effect = (self.decide)(&finding);
            if effect == Effect::Redact {
                match finding.span.clone().filter(|s| s.start >= window.start && s.end <= window.end) {
                    Some(span) => judgement.redact.push(span),
                    // Already written, or inside an encoding: refuse rather than let it through.
                    None => effect = Effect::Block,
                }
            }
            if effect == Effect::Block && judgement.refuse.is_none() {
                judgement.refuse = Some(format!("{} found in {}", finding.rule, finding.location));
            }
            self.found.push((finding, effect));
        }
        let unwritten = window.end - window.start;
        judgement.release_to = window.end - (self.scan.hold_back() as u64).min(unwritten);
        judgement
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cork_scan::{BodyMeta, Engine, ScanConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TOKEN: &str = "ghp_Zx8Kq2Lm9Vb4Nc7Rt1Yp5Wd3Gf6Hj0Sa2QeX";

    /// A token split across two reads, past the buffered head of a body: the first half must
    /// still be held when the second arrives, so nothing of it leaves.
    #[tokio::test]
    async fn a_token_split_across_reads_is_held_back_until_it_is_judged() {
        let engine = Engine::new(&ScanConfig::default()).unwrap();
        let scan = engine.request_body(BodyMeta { content_type: Some("text/plain"), content_encoding: None });
        let mut relay = ScannedRelay::new(scan, Arc::new(|f| crate::inspect::effect(cork_policy::Mode::Enforce, f)), 1024, Duration::from_secs(20), None);
        let filler = "lorem ipsum dolor sit amet ".repeat(4000);
        let first = format!("{filler}token={}", &TOKEN[..20]);
        let second = format!("{} and more text\n", &TOKEN[20..]);
        let total = first.len() + second.len();
        let (mut client, src) = tokio::io::duplex(1 << 20);
        let (dst, mut upstream) = tokio::io::duplex(1 << 20);
        let (mut src, mut dst) = (Wire::new(src), Wire::new(dst));
        let mut reader = BodyReader::new(BodyFraming::Length(total as u64));
        client.write_all(first.as_bytes()).await.unwrap();
        let feed = async {
            // The relay reads the first part alone before the rest is written.
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(second.as_bytes()).await.unwrap();
        };
        let (end, ()) = tokio::join!(relay.run(&mut src, &mut reader, &mut dst, OutFraming::Raw, b"HEAD\r\n\r\n"), feed);
        let end = end.unwrap();
        assert!(matches!(end, RelayEnd::Blocked { committed: true, .. }), "{end:?}");
        drop(dst);
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with("HEAD\r\n\r\n"), "the head went out once the body outgrew the buffer");
        assert!(!got.contains("ghp_"), "part of the token was released before it was judged ({} bytes went out)", got.len());
    }
}
