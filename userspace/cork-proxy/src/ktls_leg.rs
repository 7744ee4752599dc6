//! kTLS for the two legs of a bumped HTTP/1.1 connection.
//!
//! Both handshakes are done by rustls, as before. What changes is what happens next: where the kernel can run the negotiated version and cipher, each leg's record
//! layer is moved into the kernel ([`cork_ktls::offload`]) and the HTTP/1.1 relay reads and
//! writes plaintext on the socket ([`KernelIo`]). Otherwise the leg stays on rustls. The two
//! legs are judged separately, so one may be in the kernel and the other not.
//!
//! # Reading exactly to the end of the handshake
//! Offloading is only correct if rustls has consumed no byte that belongs to the kernel's
//! record stream: a client's first request often shares a TCP segment with its Finished, and
//! tokio-rustls's handshake keeps reading while data is there. While kTLS is wanted, cork drives
//! both handshakes itself ([`accept`], [`connect`]), one whole record at a time, and hands the
//! finished connection to tokio-rustls; the ClientHello is read through [`RecordExact`], which
//! never returns bytes past the end of a record. Once the leg's fate is known the adapter is a
//! plain pass-through. Without kTLS, tokio-rustls does the handshakes as before.
//!
//! # Fallback and failure
//! tokio-rustls cannot take a connection back once it is split into socket and rustls state,
//! so every reason to stay on rustls is found first, on the live stream: the process-wide
//! [`support`] probe, the policy switch (`limits.ktls`), the version and cipher (with
//! [`cork_ktls::preflight`]'s trial of the cipher on a scratch socket), any handshake byte or
//! plaintext still buffered. Those keep the leg on rustls, logged, audited
//! (`tls.ktls_fallback`, an allowed connection record with the reason) and counted. A refusal after
//! the split (the secrets are gone by then) fails the connection; it never continues in clear.
//!
//! # Control records
//! TLS 1.3 NewSessionTickets from cork to the client are written before its state is extracted
//! (the handshake driver flushes everything rustls queued; `offload` flushes anything left). Tickets an upstream sends later are read and dropped by [`cork_ktls::KtlsStream`].
//! A close_notify reads as end of stream and is sent on shutdown. A TLS 1.3 KeyUpdate cannot be
//! followed by kernels before 6.14: the leg fails before anything under the new key is read,
//! and [`key_update`] tells the caller, who audits it as `tls.key_update_unsupported`.

use std::io::{self, Read, Write};
use std::ops::DerefMut;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use cork_ktls::{KtlsStream, KtlsSupport, Offloaded, RecordError};
use tokio::io::unix::AsyncFd;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use std::net::SocketAddr;

use crate::audit::AuditRecord;
use crate::exchange::Destination;
use crate::state::{ProxyState, Snapshot};
use crate::wire::Prefixed;

/// A TLS record header: type, version, length.
const HEADER: usize = 5;
/// Largest read handed to the kernel at once: one record's worth of plaintext.
const KERNEL_READ: usize = 16 * 1024;

/// Whether this kernel runs kTLS, probed once per process.
pub fn support() -> &'static KtlsSupport {
    static SUPPORT: OnceLock<KtlsSupport> = OnceLock::new();
    SUPPORT.get_or_init(cork_ktls::probe)
}

/// One line for start-up output and `/status`, e.g. `ktls: supported`.
pub fn describe(mode: cork_policy::KtlsMode) -> String {
    match (support(), mode) {
        (KtlsSupport::Supported, cork_policy::KtlsMode::Auto) => "ktls: supported (bumped HTTP/1.1 connections use it where the cipher allows)".into(),
        (KtlsSupport::Supported, cork_policy::KtlsMode::Off) => "ktls: supported, switched off by policy (limits.ktls: off)".into(),
        (KtlsSupport::Unsupported { reason }, _) => format!("ktls: unsupported ({reason}); TLS records stay in rustls"),
    }
}

/// Whether connections started on `snap` should try kTLS at all.
pub fn wanted(snap: &Snapshot) -> bool {
    wanted_for(&snap.policy)
}

/// Whether `policy` and this kernel allow kTLS.
pub fn wanted_for(policy: &cork_policy::Policy) -> bool {
    policy.limits.ktls == cork_policy::KtlsMode::Auto && *support() == KtlsSupport::Supported
}

/// Why an offload failed after the point of no return.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("moving the {leg} leg to kTLS failed: {source}")]
    Ktls { leg: &'static str, source: cork_ktls::Error },
    #[error("the kernel refused the {leg} leg after its preflight passed: {reason}")]
    LateRefusal { leg: &'static str, reason: String },
    #[error("preparing the {leg} leg's socket for kTLS: {source}")]
    Socket { leg: &'static str, source: io::Error },
}

/// Reads that never cross the end of a TLS record while `exact` is set; a pass-through after.
pub struct RecordExact<S> {
    inner: S,
    exact: bool,
    header: [u8; HEADER],
    header_len: usize,
    body_left: usize,
}

impl<S> RecordExact<S> {
    pub fn new(inner: S, exact: bool) -> Self {
        Self { inner, exact, header: [0; HEADER], header_len: 0, body_left: 0 }
    }

    /// Whether a read stopped inside a record (so rustls holds part of one).
    fn mid_record(&self) -> bool {
        self.header_len != 0 || self.body_left != 0
    }

    fn relax(&mut self) {
        self.exact = false;
    }
}

impl<S: IntoTcp> RecordExact<S> {
    /// The TCP socket underneath, when reads come straight from it.
    pub fn tcp(&self) -> Option<&TcpStream> {
        self.inner.tcp()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RecordExact<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.exact {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let in_header = this.body_left == 0;
        let want = if in_header { HEADER - this.header_len } else { this.body_left };
        let dst = buf.initialize_unfilled_to(want.min(buf.remaining()));
        let mut part = ReadBuf::new(dst);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        if in_header {
            this.header[this.header_len..this.header_len + n].copy_from_slice(part.filled());
            this.header_len += n;
            if this.header_len == HEADER {
                this.header_len = 0;
                this.body_left = u16::from_be_bytes([this.header[3], this.header[4]]) as usize;
            }
        } else {
            this.body_left -= n;
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RecordExact<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Largest TLS record body accepted during the handshake (RFC 8446 §5.2's ciphertext limit).
const MAX_RECORD_BODY: usize = 16 * 1024 + 256;

/// Drives `conn`'s handshake on `io` to completion, one whole record at a time, and flushes
/// everything rustls queued (TLS 1.3 NewSessionTickets included). tokio-rustls's own handshake
/// keeps reading after the last handshake record while data is there, which would pull the
/// peer's first application records into rustls; this stops exactly at the end.
async fn finish_handshake<IO, C, D>(io: &mut IO, conn: &mut C) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    let mut out = Vec::new();
    let mut record = Vec::with_capacity(HEADER + MAX_RECORD_BODY);
    loop {
        out.clear();
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        record.resize(HEADER, 0);
        io.read_exact(&mut record).await?;
        let len = u16::from_be_bytes([record[3], record[4]]) as usize;
        if len > MAX_RECORD_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a TLS record of {len} bytes, more than the protocol allows")));
        }
        record.resize(HEADER + len, 0);
        io.read_exact(&mut record[HEADER..]).await?;
        let mut rest = &record[..];
        while !rest.is_empty() {
            conn.read_tls(&mut rest)?;
            if let Err(e) = conn.process_new_packets() {
                // Send the alert rustls queued, so the peer learns why.
                out.clear();
                while conn.wants_write() && conn.write_tls(&mut out).is_ok() {}
                let _ = io.write_all(&out).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// Finishes the client-facing handshake. With `record_exact` (kTLS wanted) cork drives it one
/// record at a time and hands the finished connection to tokio-rustls; otherwise tokio-rustls
/// does it all, as without kTLS.
pub async fn accept<IO>(start: tokio_rustls::StartHandshake<IO>, config: Arc<rustls::ServerConfig>, record_exact: bool) -> io::Result<tokio_rustls::server::TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if !record_exact {
        return start.into_stream(config).await;
    }
    let mut io = start.io;
    let mut conn = match start.accepted.into_connection(config.clone()) {
        Ok(conn) => conn,
        Err((error, mut alert)) => {
            let mut out = Vec::new();
            while alert.write(&mut out).map(|n| n > 0).unwrap_or(false) {}
            let _ = io.write_all(&out).await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
    };
    finish_handshake(&mut io, &mut conn).await?;
    // The connection is past its handshake, so tokio-rustls only flushes before handing it back.
    tokio_rustls::TlsAcceptor::from(config).accept_with(io, move |fresh| *fresh = conn).await
}

/// Connects TLS over `io` as [`accept`] does for the client side.
pub async fn connect<IO>(config: Arc<rustls::ClientConfig>, name: ServerName<'static>, mut io: IO, record_exact: bool) -> io::Result<tokio_rustls::client::TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    if !record_exact {
        return connector.connect(name, io).await;
    }
    let mut conn = rustls::ClientConnection::new(config, name.clone()).map_err(io::Error::other)?;
    finish_handshake(&mut io, &mut conn).await?;
    connector.connect_with(name, io, move |fresh| *fresh = conn).await
}

/// A transport that may be reduced to its TCP socket once nothing is buffered above it.
pub trait IntoTcp: Sized {
    /// The socket, when every byte still to come will be read from it.
    fn tcp(&self) -> Option<&TcpStream>;
    /// The socket; only called after [`IntoTcp::tcp`] said `Some`.
    fn into_tcp(self) -> TcpStream;
}

impl IntoTcp for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
    fn into_tcp(self) -> TcpStream {
        self
    }
}

impl IntoTcp for Prefixed<TcpStream> {
    fn tcp(&self) -> Option<&TcpStream> {
        self.drained_inner()
    }
    fn into_tcp(self) -> TcpStream {
        self.into_inner()
    }
}

/// The two tokio-rustls stream types, seen the same way.
pub trait FinishedTls: Sized {
    type Io: IntoTcp;
    fn transport(&mut self) -> &mut RecordExact<Self::Io>;
    fn common(&self) -> &rustls::CommonState;
    /// Whether rustls holds decrypted application data no one has read yet.
    fn plaintext_buffered(&mut self) -> bool;
    fn split(self) -> (RecordExact<Self::Io>, rustls::Connection);
}

macro_rules! finished_tls {
    ($stream:ty) => {
        impl<IO: IntoTcp + AsyncRead + AsyncWrite + Unpin> FinishedTls for $stream {
            type Io = IO;
            fn transport(&mut self) -> &mut RecordExact<IO> {
                self.get_mut().0
            }
            fn common(&self) -> &rustls::CommonState {
                self.get_ref().1
            }
            fn plaintext_buffered(&mut self) -> bool {
                // An error here is a broken connection: not one to offload.
                self.get_mut().1.process_new_packets().map(|s| s.plaintext_bytes_to_read() > 0).unwrap_or(true)
            }
            fn split(self) -> (RecordExact<IO>, rustls::Connection) {
                let (io, conn) = self.into_inner();
                (io, conn.into())
            }
        }
    };
}

finished_tls!(tokio_rustls::server::TlsStream<RecordExact<IO>>);
finished_tls!(tokio_rustls::client::TlsStream<RecordExact<IO>>);

/// One leg of a bumped connection after its handshake.
pub enum Leg<T> {
    Rustls(T),
    Kernel(KernelIo),
}

/// Why `stream` must stay on rustls, or `None` when it can move to the kernel (in which case
/// its socket has the "tls" ULP attached).
fn refusal<T: FinishedTls>(stream: &mut T) -> Option<String> {
    if stream.transport().mid_record() {
        return Some("rustls holds part of a TLS record".into());
    }
    if stream.plaintext_buffered() {
        return Some("application data arrived with the last handshake record".into());
    }
    let Some(fd) = stream.transport().inner.tcp().map(AsRawFd::as_raw_fd) else {
        return Some("bytes read before the handshake are still buffered".into());
    };
    cork_ktls::preflight(&RawSocket(fd), stream.common()).err()
}

/// A socket the stream being judged owns, named by descriptor so that the stream's rustls
/// state can be borrowed at the same time; only used while that stream is borrowed.
struct RawSocket(RawFd);

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The connection a leg belongs to, for its audit record.
pub struct Conn<'a> {
    pub state: &'a ProxyState,
    pub client: SocketAddr,
    pub dest: &'a Destination,
}

impl Conn<'_> {
    /// An allowed connection's note that `leg` stays on rustls, and why.
    fn audit_fallback(&self, leg: &str, reason: &str) {
        let mut record = AuditRecord::new(&self.state.instance, "connection", self.state.next_request_id(), self.client.to_string());
        record.host = Some(self.dest.host.clone());
        record.port = Some(self.dest.port);
        record.rules.push("tls.ktls_fallback".into());
        record.reason = Some(format!("the {leg} leg stays on rustls: {reason}"));
        self.state.audit.write(&record);
    }
}

/// Moves `stream` to the kernel when kTLS is `wanted` and possible; otherwise returns it on
/// rustls, with the reason logged, audited and counted. `leg` is `client` or `upstream`.
pub fn offload<T: FinishedTls>(conn: &Conn<'_>, wanted: bool, leg: &'static str, mut stream: T) -> Result<Leg<T>, OffloadError> {
    let metrics = &conn.state.metrics;
    if !wanted {
        stream.transport().relax();
        return Ok(Leg::Rustls(stream));
    }
    if let Some(reason) = refusal(&mut stream) {
        tracing::info!(leg, %reason, "kTLS refused; this leg stays on rustls");
        conn.audit_fallback(leg, &reason);
        metrics.ktls_leg(leg, false);
        stream.transport().relax();
        return Ok(Leg::Rustls(stream));
    }
    let (io, conn) = stream.split();
    let tcp = io.inner.into_tcp();
    let socket_err = |source| OffloadError::Socket { leg, source };
    let std_sock = tcp.into_std().map_err(socket_err)?;
    // `offload` flushes what rustls still queued with blocking writes (normally nothing).
    std_sock.set_nonblocking(false).map_err(socket_err)?;
    let kernel = match cork_ktls::offload(std_sock, conn) {
        Ok(Offloaded::Kernel(k)) => k,
        Ok(Offloaded::Userspace { reason, .. }) => return Err(OffloadError::LateRefusal { leg, reason }),
        Err(source) => return Err(OffloadError::Ktls { leg, source }),
    };
    kernel.get_ref().set_nonblocking(true).map_err(socket_err)?;
    // SAFETY: the descriptor is the KtlsStream's own socket, open for as long as the stream
    // lives, and `as_raw_fd` always returns it; the AsyncFd owns the stream.
    let fd = unsafe { AsyncFd::register(kernel) }.map_err(|e| socket_err(io::Error::from(e)))?;
    tracing::debug!(leg, "TLS records moved into the kernel");
    metrics.ktls_leg(leg, true);
    Ok(Leg::Kernel(KernelIo { fd, failure: None, closed: false }))
}

/// Leaves `stream` on rustls for good (h2, or no kTLS wanted): reads stop at record bounds no more.
pub fn keep_on_rustls<T: FinishedTls>(stream: &mut T) {
    stream.transport().relax();
}

/// The KeyUpdate that ended a kernel leg, if that is what ended it.
pub fn key_update<T>(leg: &Leg<T>) -> Option<RecordError> {
    match leg {
        Leg::Kernel(k) if k.failure == Some(RecordError::KeyUpdate) => k.failure.clone(),
        _ => None,
    }
}

/// A leg whose records the kernel seals and opens; plaintext in and out.
pub struct KernelIo {
    fd: AsyncFd<KtlsStream>,
    /// What ended the stream, when the kernel path ended it.
    failure: Option<RecordError>,
    closed: bool,
}

impl KernelIo {
    fn note(&mut self, err: &io::Error) {
        if let Some(e) = err.get_ref().and_then(|e| e.downcast_ref::<RecordError>()) {
            self.failure.get_or_insert_with(|| e.clone());
        }
    }
}

impl AsyncRead for KernelIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready_mut(cx))?;
            let dst = buf.initialize_unfilled_to(buf.remaining().min(KERNEL_READ));
            match guard.try_io(|k| k.get_mut().read(dst)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => {
                    this.note(&e);
                    return Poll::Ready(Err(e));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for KernelIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_write_ready_mut(cx))?;
            match guard.try_io(|k| k.get_mut().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends close_notify, then shuts down the write half.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(this.fd.poll_write_ready_mut(cx))?;
            match guard.try_io(|k| k.get_mut().close_notify()) {
                Ok(result) => {
                    this.closed = true;
                    return Poll::Ready(result);
                }
                Err(_would_block) => continue,
            }
        }
    }
}

impl<T> Leg<T> {
    /// For [`crate::wire::Wire::with_plain_fd`]: a kernel leg's socket carries plaintext.
    pub fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Leg::Kernel(k) if k.failure.is_none() && !k.closed && k.fd.get_ref().holds_nothing() => Some(k.fd.as_raw_fd()),
            _ => None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Leg<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Rustls(t) => Pin::new(t).poll_read(cx, buf),
            Leg::Kernel(k) => Pin::new(k).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Leg<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Leg::Rustls(t) => Pin::new(t).poll_write(cx, data),
            Leg::Kernel(k) => Pin::new(k).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Rustls(t) => Pin::new(t).poll_flush(cx),
            Leg::Kernel(k) => Pin::new(k).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Leg::Rustls(t) => Pin::new(t).poll_shutdown(cx),
            Leg::Kernel(k) => Pin::new(k).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const TWO_RECORDS: &[u8] = b"\x16\x03\x03\x00\x03abc\x17\x03\x03\x00\x02xy";

    #[tokio::test]
    async fn exact_reads_never_cross_a_record_end() {
        let mut io = RecordExact::new(TWO_RECORDS, true);
        let mut buf = [0u8; 64];
        let mut ends = Vec::new();
        let mut total = 0;
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
            ends.push(total);
        }
        assert_eq!(total, TWO_RECORDS.len());
        // The first record (5 + 3 bytes) ends a read, as does the header of each.
        assert!(ends.contains(&5) && ends.contains(&8) && ends.contains(&13), "{ends:?}");
        assert!(!io.mid_record());
    }

    #[tokio::test]
    async fn a_partial_header_is_remembered() {
        let mut io = RecordExact::new(&TWO_RECORDS[..3], true);
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        assert!(io.mid_record());
    }

    #[tokio::test]
    async fn relaxed_reads_pass_through() {
        let mut io = RecordExact::new(TWO_RECORDS, true);
        io.relax();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), TWO_RECORDS.len());
    }
}
