//! kTLS for the two legs of a bumped connection (HTTP/1.1 and HTTP/2 alike).
//!
//! Both handshakes are done by rustls. Where kTLS is planned for a connection ([`plan`]), they
//! run on rustls's unbuffered API ([`cork_ktls::Handshake`]) and each leg's record layer then
//! moves into the kernel ([`offload`]), keeping rustls's `KernelConnection` so the leg can
//! follow a TLS 1.3 KeyUpdate; the relays read and write plaintext on the socket
//! ([`KernelIo`]). Otherwise tokio-rustls does the handshakes and the legs stay on rustls.
//!
//! # Reading exactly to the end of the handshake
//! Offloading is only correct if rustls has consumed no byte that belongs to the kernel's
//! record stream: a client's first request often shares a TCP segment with its Finished. While
//! kTLS is planned, the ClientHello is read through [`RecordExact`], which never returns bytes
//! past the end of a record and keeps a copy of what it read; the unbuffered server replays
//! that copy, and both handshakes then read one whole record at a time ([`drive`]).
//!
//! # Fallback and failure
//! A handshake run for the kernel cannot go back to rustls records, so every reason to stay on
//! rustls is found before the handshakes start: the process-wide [`support`] probe, the policy
//! switch (`limits.ktls`), and whether the kernel runs every cipher suite cork may negotiate
//! ([`cork_ktls::accepts_all`], tried on a scratch socket). A refusal keeps both legs on
//! rustls, logged, audited (`tls.ktls_fallback`, an allowed connection record with the reason)
//! and counted. A refusal after the handshakes (the kernel refusing keys it accepted on the
//! scratch socket) fails the connection (`tls.ktls_offload`); it never continues in clear. The
//! client leg is handshaken for the kernel only when the upstream leg exists.
//!
//! # Control records
//! TLS 1.3 NewSessionTickets from cork to the client are written before its state is extracted
//! (the handshake ends only once rustls has nothing left to send). Tickets an upstream sends
//! later go to rustls's session store through [`cork_ktls::KtlsStream`], so the next upstream
//! connection can resume. A close_notify reads as end of stream and is sent on shutdown. A
//! TLS 1.3 KeyUpdate is followed where the kernel takes new keys (Linux 6.14 and later), and
//! answered with cork's own when the peer asks; [`audit_key_updates`] counts them
//! (`cork_ktls_key_updates_total`). Before 6.14 the leg fails before anything under the new
//! key is read, audited as `tls.key_update_unsupported`.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use cork_ktls::{Handshake, KtlsStream, KtlsSupport, Progress, RecordError, MAX_RECORD_BODY, RECORD_HEADER as HEADER};
use tokio::io::unix::AsyncFd;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use std::net::SocketAddr;

use crate::audit::AuditRecord;
use crate::exchange::Destination;
use crate::state::{ProxyState, Snapshot};
use crate::wire::Prefixed;

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
        (KtlsSupport::Supported, cork_policy::KtlsMode::Auto) if cork_ktls::rekey_supported() => {
            "ktls: supported (bumped connections use it where the kernel runs every cipher suite; this kernel changes keys, so TLS 1.3 KeyUpdates are followed)".into()
        }
        (KtlsSupport::Supported, cork_policy::KtlsMode::Auto) => {
            "ktls: supported (bumped connections use it where the kernel runs every cipher suite; this kernel cannot change keys (before 6.14), so a TLS 1.3 KeyUpdate ends the connection)".into()
        }
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
    #[error("preparing the {leg} leg's socket for kTLS: {source}")]
    Socket { leg: &'static str, source: io::Error },
}

/// Reads that never cross the end of a TLS record while `exact` is set; a pass-through after.
/// While exact, it also keeps a copy of what it read (the ClientHello, until
/// [`RecordExact::take_tape`]), for an unbuffered rustls server to replay.
pub struct RecordExact<S> {
    inner: S,
    exact: bool,
    header: [u8; HEADER],
    header_len: usize,
    body_left: usize,
    tape: Option<Vec<u8>>,
}

impl<S> RecordExact<S> {
    pub fn new(inner: S, exact: bool) -> Self {
        Self { inner, exact, header: [0; HEADER], header_len: 0, body_left: 0, tape: exact.then(Vec::new) }
    }

    /// Everything read so far; nothing more is kept after this.
    fn take_tape(&mut self) -> Vec<u8> {
        self.tape.take().unwrap_or_default()
    }

    /// Whether a read stopped inside a record (so rustls holds part of one).
    fn mid_record(&self) -> bool {
        self.header_len != 0 || self.body_left != 0
    }

    fn relax(&mut self) {
        self.exact = false;
        self.tape = None;
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
        if let Some(tape) = &mut this.tape {
            tape.extend_from_slice(part.filled());
        }
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


/// Drives an unbuffered `handshake` on `io` to its end, one whole TLS record at a time,
/// starting from records already read into `incoming` (the ClientHello), so that no byte after
/// the handshake leaves the socket.
async fn drive<IO>(io: &mut IO, handshake: &mut Handshake, mut incoming: Vec<u8>) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut outgoing = Vec::new();
    loop {
        let progress = handshake.advance(&mut incoming, &mut outgoing);
        // On an error this is the alert, so the peer learns why.
        if !outgoing.is_empty() {
            let sent = io.write_all(&outgoing).await;
            outgoing.clear();
            if progress.is_ok() {
                sent?;
                io.flush().await?;
            }
        }
        match progress {
            Ok(Progress::Done) => return Ok(()),
            Ok(Progress::NeedRecord) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        let start = incoming.len();
        incoming.resize(start + HEADER, 0);
        io.read_exact(&mut incoming[start..]).await?;
        let len = u16::from_be_bytes([incoming[start + 3], incoming[start + 4]]) as usize;
        if len > MAX_RECORD_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a TLS record of {len} bytes, more than the protocol allows")));
        }
        incoming.resize(start + HEADER + len, 0);
        io.read_exact(&mut incoming[start + HEADER..]).await?;
    }
}

/// A leg after its handshake: on rustls, or handshaken for the kernel by rustls's unbuffered
/// API (which is what lets the kernel leg follow a KeyUpdate later).
pub enum Handshaken<T> {
    Rustls(T),
    Kernel(KernelBound),
}

/// A finished unbuffered handshake and the socket it ran on, nothing read past its end.
pub struct KernelBound {
    tcp: TcpStream,
    handshake: Handshake,
}

impl<T: FinishedTls> Handshaken<T> {
    /// The ALPN protocol the handshake settled on.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Handshaken::Rustls(t) => t.common().alpn_protocol(),
            Handshaken::Kernel(k) => k.handshake.common().alpn_protocol(),
        }
    }
}

/// Takes a finished unbuffered handshake's socket from `io`; every byte still to come must be
/// in the socket, for the kernel.
fn kernel_bound<S: IntoTcp>(io: RecordExact<S>, handshake: Handshake) -> io::Result<KernelBound> {
    if io.mid_record() || io.inner.tcp().is_none() {
        return Err(io::Error::other("bytes past the handshake were read before the kernel could take the connection"));
    }
    Ok(KernelBound { tcp: io.inner.into_tcp(), handshake })
}

/// Finishes the client-facing handshake. With `kernel`, an unbuffered rustls server replays
/// the ClientHello `start` consumed (taped by [`RecordExact`]) and runs the handshake for the
/// kernel; otherwise tokio-rustls does it all.
pub async fn accept<S>(start: tokio_rustls::StartHandshake<RecordExact<S>>, config: Arc<rustls::ServerConfig>, kernel: bool) -> io::Result<Handshaken<tokio_rustls::server::TlsStream<RecordExact<S>>>>
where
    S: IntoTcp + AsyncRead + AsyncWrite + Unpin,
{
    if !kernel {
        let mut tls = start.into_stream(config).await?;
        tls.get_mut().0.relax();
        return Ok(Handshaken::Rustls(tls));
    }
    let mut io = start.io;
    let hello = io.take_tape();
    let conn = rustls::server::UnbufferedServerConnection::new(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut handshake = Handshake::Server(conn);
    drive(&mut io, &mut handshake, hello).await?;
    kernel_bound(io, handshake).map(Handshaken::Kernel)
}

/// Connects TLS over `io` as [`accept`] does for the client side.
pub async fn connect<S>(config: Arc<rustls::ClientConfig>, name: ServerName<'static>, mut io: RecordExact<S>, kernel: bool) -> io::Result<Handshaken<tokio_rustls::client::TlsStream<RecordExact<S>>>>
where
    S: IntoTcp + AsyncRead + AsyncWrite + Unpin,
{
    if !kernel {
        io.relax();
        return Ok(Handshaken::Rustls(tokio_rustls::TlsConnector::from(config).connect(name, io).await?));
    }
    let conn = rustls::client::UnbufferedClientConnection::new(config, name).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut handshake = Handshake::Client(conn);
    drive(&mut io, &mut handshake, Vec::new()).await?;
    kernel_bound(io, handshake).map(Handshaken::Kernel)
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
    fn transport(&self) -> &RecordExact<Self::Io>;
    fn common(&self) -> &rustls::CommonState;
}

macro_rules! finished_tls {
    ($stream:ty) => {
        impl<IO: IntoTcp + AsyncRead + AsyncWrite + Unpin> FinishedTls for $stream {
            type Io = IO;
            fn transport(&self) -> &RecordExact<IO> {
                self.get_ref().0
            }
            fn common(&self) -> &rustls::CommonState {
                self.get_ref().1
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

/// Whether this connection's legs are handshaken for the kernel. Decided before the
/// handshakes, because a handshake run for the kernel cannot go back to rustls records: the
/// policy and the kernel must allow kTLS, and the kernel must run every cipher suite either
/// handshake may negotiate (tried once per suite on a scratch socket, remembered once it
/// works). A refusal keeps both legs on rustls, logged, audited and counted.
pub fn plan(conn: &Conn<'_>, snap: &Snapshot) -> bool {
    if !wanted(snap) {
        return false;
    }
    let Err(reason) = cork_ktls::accepts_all(crate::state::CIPHER_SUITES) else { return true };
    for leg in ["upstream", "client"] {
        tracing::info!(leg, %reason, "kTLS refused; this leg stays on rustls");
        conn.audit_fallback(leg, &reason);
        conn.state.metrics.ktls_leg(leg, false);
    }
    false
}

/// Moves a leg handshaken for the kernel into it; a rustls leg stays as it is. `leg` is
/// `client` or `upstream`. There is no fallback here (see [`plan`]): a refusal is an error
/// and the connection ends; it never continues in clear.
pub fn offload<T>(conn: &Conn<'_>, leg: &'static str, handshaken: Handshaken<T>) -> Result<Leg<T>, OffloadError> {
    let bound = match handshaken {
        Handshaken::Rustls(t) => return Ok(Leg::Rustls(t)),
        Handshaken::Kernel(bound) => bound,
    };
    let socket_err = |source| OffloadError::Socket { leg, source };
    let std_sock = bound.tcp.into_std().map_err(socket_err)?;
    let kernel = cork_ktls::offload_handshake(std_sock, bound.handshake).map_err(|source| OffloadError::Ktls { leg, source })?;
    // SAFETY: the descriptor is the KtlsStream's own socket, open for as long as the stream
    // lives, and `as_raw_fd` always returns it; the AsyncFd owns the stream.
    let fd = unsafe { AsyncFd::register(kernel) }.map_err(|e| socket_err(io::Error::from(e)))?;
    tracing::debug!(leg, "TLS records moved into the kernel");
    conn.state.metrics.ktls_leg(leg, true);
    let report = Arc::new(LegReport { failure: Default::default(), updates: fd.get_ref().key_update_counts() });
    Ok(Leg::Kernel(KernelIo { fd, report, closed: false }))
}

/// What ended a kernel leg over its keys (a KeyUpdate it could not follow, a failed key
/// change, the confidentiality limit), with the audit rule for it.
fn key_failure(report: &LegReport) -> Option<(&'static str, RecordError)> {
    match report.failure.lock().ok()?.clone()? {
        e @ (RecordError::KeyUpdate | RecordError::Rekey(_)) => Some(("tls.key_update_unsupported", e)),
        e @ RecordError::ConfidentialityLimit(_) => Some(("tls.confidentiality_limit", e)),
        _ => None,
    }
}

/// At a connection's end: audits a kernel leg that its keys ended
/// (`tls.key_update_unsupported`, `tls.confidentiality_limit`), and counts the key updates.
/// `client` and `upstream` come from [`Leg::report`]; rustls legs have none.
pub fn audit_key_updates(conn: &Conn<'_>, snap: &Snapshot, client: Option<&LegReport>, upstream: Option<&LegReport>) {
    use std::sync::atomic::Ordering::Relaxed;
    for (leg, report) in [("upstream", upstream), ("client", client)] {
        let Some(report) = report else { continue };
        conn.state.metrics.key_updates(leg, report.updates.peer.load(Relaxed), report.updates.own.load(Relaxed));
        if let Some((rule, e)) = key_failure(report) {
            crate::bump::connection_record(conn.state, snap, conn.client, conn.dest, "connection", rule, &format!("the {leg} leg on kTLS: {e}"));
        }
    }
}

/// A leg whose records the kernel seals and opens; plaintext in and out.
pub struct KernelIo {
    fd: AsyncFd<KtlsStream>,
    /// What the connection learns about its keys, also after the h2 relay has dropped the leg.
    report: Arc<LegReport>,
    closed: bool,
}

/// A kernel leg's key history, shared with whoever audits the connection at its end.
pub struct LegReport {
    /// What ended the stream, when the kernel path ended it.
    failure: std::sync::Mutex<Option<RecordError>>,
    /// The stream's key updates, kept by the stream itself.
    updates: Arc<cork_ktls::KeyUpdateCounts>,
}

impl KernelIo {
    /// Keeps what ended the stream, if it was the kernel path.
    fn note(&self, err: &io::Error) {
        if let Some(e) = err.get_ref().and_then(|e| e.downcast_ref::<RecordError>()) {
            if let Ok(mut failure) = self.report.failure.lock() {
                failure.get_or_insert_with(|| e.clone());
            }
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
                Ok(result) => {
                    if let Err(e) = &result {
                        this.note(e);
                    }
                    return Poll::Ready(result);
                }
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

impl<T: FinishedTls> Leg<T> {
    /// The TCP socket under the leg, when nothing above it holds bytes from it.
    pub fn socket(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Leg::Rustls(t) => t.transport().tcp().map(AsFd::as_fd),
            Leg::Kernel(k) => Some(k.fd.get_ref().get_ref().as_fd()),
        }
    }
}

impl<T> Leg<T> {
    /// A kernel leg's key history, which outlives the leg.
    pub fn report(&self) -> Option<Arc<LegReport>> {
        match self {
            Leg::Kernel(k) => Some(k.report.clone()),
            Leg::Rustls(_) => None,
        }
    }

    /// For [`crate::wire::Wire::with_plain_fd`]: a kernel leg's socket carries plaintext.
    pub fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Leg::Kernel(k) if !k.closed && k.fd.get_ref().holds_nothing() => {
                // Whoever takes the descriptor may write past the stream's count of records.
                k.fd.get_ref().note_direct_writes();
                Some(k.fd.as_raw_fd())
            }
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
