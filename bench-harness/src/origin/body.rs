//! The origin's response body: empty, one prebuilt buffer, or a generated pattern stream.
//!
//! Pattern bodies are sliced out of one shared 64 KiB buffer (zero-copy `Bytes::slice`), so a
//! 1 GiB download costs no allocation per chunk and the origin stays far cheaper than the proxy
//! it is measuring.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// The 64-byte alphabet the pattern repeats: byte `i` of any pattern body is `PATTERN[i % 64]`.
pub const PATTERN: &[u8; 64] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";

/// Size of the frames pattern bodies are sent in; a multiple of 64 so every frame starts the
/// pattern afresh and concatenated frames stay continuous.
const CHUNK: usize = 64 * 1024;

fn pattern_chunk() -> &'static Bytes {
    static CHUNK_BYTES: OnceLock<Bytes> = OnceLock::new();
    CHUNK_BYTES.get_or_init(|| {
        let v: Vec<u8> = (0..CHUNK).map(|i| PATTERN[i % PATTERN.len()]).collect();
        Bytes::from(v)
    })
}

/// Returns the first `n` bytes of the pattern (for checking downloads in tests).
pub fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| PATTERN[i % PATTERN.len()]).collect()
}

pub enum OriginBody {
    Empty,
    Full(Option<Bytes>),
    /// `exact` announces the length up front (Content-Length); otherwise HTTP/1.1 sends it chunked.
    Pattern { remaining: u64, exact: bool },
    /// These bytes, then nothing more and no end: a response whose origin stalls mid-body.
    Stalled(Option<Bytes>),
}

impl OriginBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        OriginBody::Full(Some(b.into()))
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            OriginBody::Empty => Poll::Ready(None),
            OriginBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            // Never woken: the body ends only when the client goes away.
            OriginBody::Stalled(b) => match b.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            },
            OriginBody::Pattern { remaining, .. } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(CHUNK as u64) as usize;
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(pattern_chunk().slice(0..n)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OriginBody::Empty => true,
            OriginBody::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            OriginBody::Stalled(_) => false,
            OriginBody::Pattern { remaining, exact } => *exact && *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OriginBody::Empty => SizeHint::with_exact(0),
            OriginBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            OriginBody::Pattern { remaining, exact: true } => SizeHint::with_exact(*remaining),
            OriginBody::Pattern { exact: false, .. } | OriginBody::Stalled(_) => SizeHint::default(),
        }
    }
}
