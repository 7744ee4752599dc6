//! A connection with a read buffer: heads are parsed from the buffer, bodies drained from it.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much is read from the socket at a time while a message streams.
const READ_CHUNK: usize = 64 * 1024;
/// The first read into an empty, released buffer: enough for most heads, small for idle
/// keep-alive connections, which are most of the connections a proxy holds.
const HEAD_CHUNK: usize = 4 * 1024;

pub struct Wire<S> {
    pub io: S,
    /// Finds the socket under `io` when it carries the plaintext itself (plain TCP, a kTLS leg)
    /// and holds no bytes of its own; such a wire can move bodies on io_uring.
    plain: Option<fn(&S) -> Option<RawFd>>,
    buf: Vec<u8>,
    start: usize,
    /// Bytes read from the socket so far.
    pub bytes_in: u64,
    /// Bytes written to the socket so far.
    pub bytes_out: u64,
}

impl<S> Wire<S> {
    pub fn new(io: S) -> Self {
        Self { io, plain: None, buf: Vec::with_capacity(8 * 1024), start: 0, bytes_in: 0, bytes_out: 0 }
    }

    /// Wraps `io` with bytes that were already read from it.
    pub fn with_buffered(io: S, buffered: Vec<u8>) -> Self {
        let bytes_in = buffered.len() as u64;
        Self { io, plain: None, buf: buffered, start: 0, bytes_in, bytes_out: 0 }
    }

    /// Says how to find the plaintext socket under `io` (see [`Wire::plain_fd`]).
    pub fn with_plain_fd(mut self, plain: fn(&S) -> Option<RawFd>) -> Self {
        self.plain = Some(plain);
        self
    }

    /// The socket that carries this wire's plaintext, if there is one and nothing is buffered
    /// above it.
    pub fn plain_fd(&self) -> Option<RawFd> {
        self.plain.and_then(|f| f(&self.io))
    }

    /// Bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Frees the read buffer if nothing is buffered, so an idle connection holds no buffer.
    pub fn release_if_empty(&mut self) {
        if self.buffered().is_empty() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    pub fn into_parts(self) -> (S, Vec<u8>) {
        let rest = self.buf[self.start..].to_vec();
        (self.io, rest)
    }
}

impl<S: AsyncRead + Unpin> Wire<S> {
    /// Reads more bytes into the buffer. Returns how many; 0 means end of stream.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Read into spare capacity: no zero-fill of the read buffer on every call.
        self.buf.reserve(if self.buf.capacity() == 0 { HEAD_CHUNK } else { READ_CHUNK });
        let n = self.io.read_buf(&mut self.buf).await?;
        self.bytes_in += n as u64;
        Ok(n)
    }

    /// Like [`Wire::fill`], failing with `TimedOut` after `limit`.
    pub async fn fill_within(&mut self, limit: Duration) -> std::io::Result<usize> {
        match tokio::time::timeout(limit, self.fill()).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out")),
        }
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.bytes_out += bytes.len() as u64;
        Ok(())
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.io.flush().await
    }
}

/// A stream that first yields bytes already read from it, then reads on. Used when cork has peeked
/// at a connection (a CONNECT head with a pipelined ClientHello, or a transparent connection's
/// first bytes) and must hand the whole stream to a TLS acceptor.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self { prefix, pos: 0, inner }
    }

    /// The inner stream, once every prefixed byte has been read.
    pub fn drained_inner(&self) -> Option<&S> {
        (self.pos >= self.prefix.len()).then_some(&self.inner)
    }

    /// The inner stream; prefixed bytes not yet read are dropped (check `drained_inner` first).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// [`Wire::with_plain_fd`] for plain TCP.
pub fn tcp_fd(stream: &tokio::net::TcpStream) -> Option<RawFd> {
    Some(stream.as_raw_fd())
}
