//! A TCP socket whose records the kernel encrypts and decrypts.
//!
//! Application data is plain `read`/`write` on the socket. Records of other content types
//! (alerts, post-handshake handshake messages) arrive through `recvmsg` with a
//! `TLS_GET_RECORD_TYPE` control message; the kernel refuses to hand them to a plain `read`, so
//! every read goes through [`KtlsStream::recv_record`].

use std::io::{self, IoSlice, Read, Write};
use std::mem;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

use crate::sys::{self, Direction, KernelCipher};
use crate::RecordError;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
/// KeyUpdate's one-byte body (RFC 8446 §4.6.3).
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;
/// The largest plaintext a record may carry (RFC 8446 §5.1), plus room for a TLS 1.2 peer's
/// allowed expansion; the kernel delivers at most one non-data record per `recvmsg`.
const RECORD_BUF: usize = 16 * 1024 + 256;
/// The least a `recvmsg` asks for: a whole non-data record must fit.
const MAX_PLAINTEXT: usize = 16 * 1024;

/// Writes between two reads of the kernel's send record count.
const WRITES_PER_CHECK: u32 = 256;

/// Why cork's send key could not be changed.
enum RotateError {
    /// No rustls kernel state, or a kernel that takes keys once.
    Unsupported,
    Failed(String),
}

/// A stream's key changes, readable after the stream itself is gone (an h2 connection drops
/// its transport when it ends).
#[derive(Debug, Default)]
pub struct KeyUpdateCounts {
    /// The peer's KeyUpdates followed (new receive keys).
    pub peer: AtomicU64,
    /// cork's own (new send keys).
    pub own: AtomicU64,
}

/// rustls's side of an offloaded connection: what derives the next traffic keys.
pub(crate) enum KernelKeys {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl KernelKeys {
    fn update(&mut self, dir: Direction) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match (self, dir) {
            (KernelKeys::Client(k), Direction::Rx) => k.update_rx_secret(),
            (KernelKeys::Client(k), Direction::Tx) => k.update_tx_secret(),
            (KernelKeys::Server(k), Direction::Rx) => k.update_rx_secret(),
            (KernelKeys::Server(k), Direction::Tx) => k.update_tx_secret(),
        }
    }
}

/// A connection offloaded to the kernel. Reads return the peer's application data; a
/// close_notify reads as end of stream. A TLS 1.3 KeyUpdate is followed, by installing the
/// next keys, when the stream came from a [`crate::Handshake`] and the kernel can rekey (Linux
/// 6.14 and later). Anything the kernel cannot continue with (a KeyUpdate it cannot follow, a
/// fatal alert, a truncated stream) fails every later read and write with a [`RecordError`]
/// inside the `io::Error`.
pub struct KtlsStream {
    sock: TcpStream,
    version: ProtocolVersion,
    cipher: KernelCipher,
    is_client: bool,
    /// `None` for a stream made from a buffered rustls connection, which cannot rekey.
    keys: Option<KernelKeys>,
    /// Key updates so far, shared with whoever asked for [`KtlsStream::key_update_counts`].
    rekeys: Arc<KeyUpdateCounts>,
    /// Records under one send key after which cork changes it (below the suite's
    /// confidentiality limit), and writes since the kernel's count was last read.
    send_key_records: u64,
    writes_unchecked: u32,
    /// Set when the socket may have been written directly (splice, io_uring), so the next
    /// write reads the kernel's count whatever the write count says.
    written_directly: AtomicBool,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    peer_closed: bool,
    failed: Option<RecordError>,
}

impl KtlsStream {
    /// `confidentiality_limit` is the negotiated suite's: records one key may seal.
    pub(crate) fn new(sock: TcpStream, version: ProtocolVersion, cipher: KernelCipher, is_client: bool, keys: Option<KernelKeys>, confidentiality_limit: u64) -> Self {
        Self {
            sock,
            version,
            cipher,
            is_client,
            keys,
            rekeys: Arc::default(),
            send_key_records: confidentiality_limit / 8 * 7,
            writes_unchecked: 0,
            written_directly: AtomicBool::new(false),
            buf: vec![0; RECORD_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            peer_closed: false,
            failed: None,
        }
    }

    /// Changes the send key after `records` records instead of 7/8 of the suite's
    /// confidentiality limit (for tests, which cannot send 2^23 records).
    pub fn set_send_key_records(&mut self, records: u64) {
        self.send_key_records = records;
    }

    /// Says that the socket is about to be written directly (by splice or io_uring), past this
    /// stream's count of writes.
    pub fn note_direct_writes(&self) {
        self.written_directly.store(true, Ordering::Relaxed);
    }

    /// The counts behind [`KtlsStream::key_updates`], shared.
    pub fn key_update_counts(&self) -> Arc<KeyUpdateCounts> {
        self.rekeys.clone()
    }

    /// Key changes so far: the peer's KeyUpdates followed (new receive keys), and cork's own
    /// (new send keys: answers to a peer that asked, and changes before the confidentiality
    /// limit).
    pub fn key_updates(&self) -> (u64, u64) {
        (self.rekeys.peer.load(Ordering::Relaxed), self.rekeys.own.load(Ordering::Relaxed))
    }

    pub fn protocol_version(&self) -> ProtocolVersion {
        self.version
    }

    pub fn cipher(&self) -> KernelCipher {
        self.cipher
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.sock
    }

    /// Sends close_notify and shuts down the write half.
    pub fn close_notify(&mut self) -> io::Result<()> {
        self.check()?;
        send_record(&self.sock, CONTENT_ALERT, &[1, ALERT_CLOSE_NOTIFY])?;
        self.sock.shutdown(Shutdown::Write)
    }

    /// Whether the socket may be read and written directly (by io_uring, say): no plaintext is
    /// buffered here, the peer has not closed and nothing failed. A direct reader must stop at a
    /// non-data record (the kernel fails a read without a control buffer with `EIO`) and come
    /// back here, where control records are handled.
    pub fn holds_nothing(&self) -> bool {
        self.start == self.end && !self.peer_closed && self.failed.is_none()
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(e) => Err(io::Error::other(e.clone())),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: RecordError) -> io::Error {
        self.failed = Some(e.clone());
        // Nothing more may be read or written on this connection; tell the peer by closing.
        let _ = self.sock.shutdown(Shutdown::Both);
        io::Error::other(e)
    }

    /// Receives records of one content type into `self.buf`, at most `want` bytes of data
    /// (the kernel joins data records to fill a read); returns the type and length.
    fn recv_record(&mut self, want: usize) -> io::Result<(u8, usize)> {
        // u64 alignment, as cmsghdr requires.
        let mut control = [0u64; 8];
        // Never more data than the caller asked for: bytes left over here would keep the
        // socket from being read directly (by splice or io_uring) for the rest of a body. A
        // whole non-data record must still fit.
        let len = want.clamp(MAX_PLAINTEXT, self.buf.len());
        let mut iov = libc::iovec { iov_base: self.buf.as_mut_ptr().cast(), iov_len: len };
        // SAFETY: msghdr is plain data; all-zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control);
        let n = loop {
            // SAFETY: msg points at live buffers (`self.buf`, `control`) of the stated lengths.
            let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, 0) };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if err.raw_os_error() == Some(libc::EBADMSG) {
                return Err(self.fail(RecordError::BadRecord));
            }
            return Err(err);
        };
        let mut content_type = CONTENT_APPLICATION_DATA;
        // SAFETY: the CMSG_* helpers walk the control buffer the kernel filled in.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == sys::SOL_TLS && (*cmsg).cmsg_type == sys::TLS_GET_RECORD_TYPE {
                    content_type = *libc::CMSG_DATA(cmsg);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok((content_type, n))
    }

    /// Handles a non-data record. Returns `Ok(true)` on close_notify.
    fn control_record(&mut self, content_type: u8, len: usize) -> io::Result<bool> {
        let body = &self.buf[..len];
        match content_type {
            CONTENT_ALERT => match body {
                [_, ALERT_CLOSE_NOTIFY] => Ok(true),
                [_, desc] => Err(self.fail(RecordError::Alert(*desc))),
                _ => Err(self.fail(RecordError::Malformed("alert record"))),
            },
            CONTENT_HANDSHAKE => {
                let mut at = 0;
                while at < len {
                    let [kind, a, b, c, ..] = self.buf[at..len] else {
                        return Err(self.fail(RecordError::Malformed("fragmented post-handshake message")));
                    };
                    let msg_len = u32::from_be_bytes([0, a, b, c]) as usize;
                    if len - at < 4 + msg_len {
                        return Err(self.fail(RecordError::Malformed("fragmented post-handshake message")));
                    }
                    let payload = at + 4..at + 4 + msg_len;
                    at = payload.end;
                    match kind {
                        HANDSHAKE_NEW_SESSION_TICKET if self.is_client && self.version == ProtocolVersion::TLSv1_3 => self.session_ticket(payload),
                        // The new key starts with the next record (RFC 8446 §5.1), so nothing may follow.
                        HANDSHAKE_KEY_UPDATE if self.version == ProtocolVersion::TLSv1_3 && at != len => {
                            return Err(self.fail(RecordError::Malformed("a KeyUpdate not at the end of its record")))
                        }
                        HANDSHAKE_KEY_UPDATE if self.version == ProtocolVersion::TLSv1_3 => self.key_update(payload)?,
                        other => return Err(self.fail(RecordError::UnexpectedHandshake(other))),
                    }
                }
                Ok(false)
            }
            other => Err(self.fail(RecordError::UnexpectedContentType(other))),
        }
    }

    /// Hands a server's TLS 1.3 session ticket to rustls, so that a later connection to the
    /// same server may resume. A ticket rustls rejects is only logged in the error it returns:
    /// losing a ticket costs a full handshake, not data.
    fn session_ticket(&mut self, payload: std::ops::Range<usize>) {
        if let Some(KernelKeys::Client(keys)) = &mut self.keys {
            let _ = keys.handle_new_session_ticket(&self.buf[payload]);
        }
    }

    /// Keeps the send key under its confidentiality limit, which the kernel does not count
    /// against: every [`WRITES_PER_CHECK`] writes (and after direct writes) it reads the
    /// kernel's record sequence, and past [`KtlsStream::set_send_key_records`] it sends a
    /// KeyUpdate and installs cork's next send keys. Where that is impossible (TLS 1.2, no
    /// rustls kernel state, a kernel before 6.14) the stream fails with
    /// [`RecordError::ConfidentialityLimit`] instead of sealing more under a worn key.
    fn mind_send_key(&mut self) -> io::Result<()> {
        self.writes_unchecked += 1;
        if self.writes_unchecked < WRITES_PER_CHECK && !self.written_directly.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        self.writes_unchecked = 0;
        let sealed = sys::tx_record_seq(&self.sock, self.cipher)?;
        if sealed < self.send_key_records {
            return Ok(());
        }
        if self.version != ProtocolVersion::TLSv1_3 || self.keys.is_none() {
            return Err(self.fail(RecordError::ConfidentialityLimit(sealed)));
        }
        self.rotate_send_key(true).map_err(|e| match e {
            RotateError::Unsupported => self.fail(RecordError::ConfidentialityLimit(sealed)),
            RotateError::Failed(why) => self.fail(RecordError::Rekey(why)),
        })
    }

    /// Sends cork's KeyUpdate and installs its next send keys. The message goes under the old
    /// keys and everything after it under the new ones; reads and writes share `&mut self`, so
    /// no write comes between the two. A kernel before 6.14 refuses the second `TLS_TX`, but
    /// only after the KeyUpdate is out, so the kernel is asked first ([`crate::rekey_supported`])
    /// and a refusal after sending always ends the stream.
    fn rotate_send_key(&mut self, probe_kernel: bool) -> Result<(), RotateError> {
        let version = sys::kernel_version(self.version).expect("an offloaded stream has a kernel version");
        // Known before anything is sent, so that an old kernel's refusal costs no KeyUpdate
        // (answering the peer's KeyUpdate, the receive side has proved it already).
        if probe_kernel && !crate::rekey_supported() {
            return Err(RotateError::Unsupported);
        }
        let Some(keys) = &mut self.keys else { return Err(RotateError::Unsupported) };
        let (seq, secrets) = keys.update(Direction::Tx).map_err(|e| RotateError::Failed(format!("rustls could not derive cork's next send keys: {e}")))?;
        send_record(&self.sock, CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED]).map_err(|e| RotateError::Failed(format!("sending cork's KeyUpdate: {e}")))?;
        match sys::install(&self.sock, Direction::Tx, version, seq, &secrets) {
            Ok(()) => {
                self.rekeys.own.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(RotateError::Unsupported),
            Err(e) => Err(RotateError::Failed(format!("installing cork's next send keys: {e}"))),
        }
    }

    /// Follows the peer's KeyUpdate: installs the peer's next keys for receiving, and when the
    /// peer asks, sends cork's own KeyUpdate and installs its next keys for sending. The
    /// kernel stops decrypting after a KeyUpdate until new receive keys are in, so nothing is
    /// read under a stale key; a kernel that cannot rekey (before 6.14) refuses the second
    /// TLS_RX and the stream fails with [`RecordError::KeyUpdate`] before it reads further.
    fn key_update(&mut self, payload: std::ops::Range<usize>) -> io::Result<()> {
        let requested = match self.buf[payload] {
            [UPDATE_NOT_REQUESTED] => false,
            [UPDATE_REQUESTED] => true,
            _ => return Err(self.fail(RecordError::Malformed("KeyUpdate message"))),
        };
        let Some(keys) = &mut self.keys else {
            return Err(self.fail(RecordError::KeyUpdate));
        };
        let version = sys::kernel_version(self.version).expect("an offloaded stream has a kernel version");
        let rx = match keys.update(Direction::Rx) {
            Ok((seq, secrets)) => sys::install(&self.sock, Direction::Rx, version, seq, &secrets),
            Err(e) => return Err(self.fail(RecordError::Rekey(format!("rustls could not derive the next receive keys: {e}")))),
        };
        match rx {
            Ok(()) => {
                self.rekeys.peer.fetch_add(1, Ordering::Relaxed);
            }
            // Before Linux 6.14 a socket's keys are set once.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(self.fail(RecordError::KeyUpdate)),
            Err(e) => return Err(self.fail(RecordError::Rekey(format!("the kernel refused the next receive keys: {e}")))),
        }
        if requested {
            // The receive side took new keys, so this kernel can rekey: any refusal is a failure.
            if let Err(e) = self.rotate_send_key(false) {
                let why = match e {
                    RotateError::Failed(why) => why,
                    RotateError::Unsupported => "the kernel refused cork's next send keys after taking the peer's".into(),
                };
                return Err(self.fail(RecordError::Rekey(why)));
            }
        }
        Ok(())
    }
}

impl AsRawFd for KtlsStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

impl Read for KtlsStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        loop {
            if self.start < self.end {
                let n = out.len().min(self.end - self.start);
                out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                return Ok(n);
            }
            if self.peer_closed || out.is_empty() {
                return Ok(0);
            }
            let (content_type, len) = self.recv_record(out.len())?;
            if content_type == CONTENT_APPLICATION_DATA {
                if len == 0 {
                    // recvmsg returns 0 only at TCP end of stream: the peer never sent
                    // close_notify, so the data may have been cut short.
                    return Err(self.fail(RecordError::Truncated));
                }
                self.start = 0;
                self.end = len;
            } else if self.control_record(content_type, len)? {
                self.peer_closed = true;
            }
        }
    }
}

impl Write for KtlsStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.mind_send_key()?;
        self.sock.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends one record of `content_type` through the kernel's TX state.
fn send_record(sock: &TcpStream, content_type: u8, body: &[u8]) -> io::Result<()> {
    let mut control = [0u64; 4];
    let iov = [IoSlice::new(body)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic; the header is written inside `control`,
    // which is large enough for one cmsg with one byte of data.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(1) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = sys::SOL_TLS;
        (*cmsg).cmsg_type = sys::TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as usize;
        *libc::CMSG_DATA(cmsg) = content_type;
    }
    // SAFETY: msg points at live buffers of the stated lengths.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != body.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write of a control record"));
    }
    Ok(())
}
