//! Kernel TLS (kTLS) offload of finished rustls connections.
//!
//! rustls does the handshake; the kernel then does the record layer, so the relay can move
//! plaintext with plain `read`/`write` (and later io_uring or `splice`) without a userspace
//! encryption pass. This crate is the bridge between the two and the judge of whether a given
//! connection can be offloaded at all.
//!
//! # Entry points
//! - [`probe`] says whether this kernel accepts the "tls" upper-layer protocol at all, and why
//!   not if it does not.
//! - [`complete_handshake`] drives a blocking rustls handshake reading exactly one TLS record
//!   at a time, so rustls never buffers bytes that belong to the kernel's record stream, and
//!   flushes everything rustls queued, including TLS 1.3 NewSessionTickets, whose sequence
//!   numbers are part of the extracted state.
//! - [`offload`] moves a finished connection into the kernel and returns a [`KtlsStream`], or,
//!   when the kernel refuses before anything irreversible happened, returns the connection
//!   untouched as [`Offloaded::Userspace`] with the reason, so the caller stays on rustls
//!   records for that connection. Such a stream cannot follow a KeyUpdate.
//! - [`Handshake`] (sans-I/O) or [`complete_unbuffered`] (blocking) drive a handshake on
//!   rustls's unbuffered connections, and [`offload_handshake`] moves the result into the
//!   kernel with what it needs to rekey. There is no fallback after such a handshake, so
//!   [`accepts_all`] says beforehand whether the kernel can run every suite it may negotiate.
//!
//! # What the kernel is asked to do
//! TLS 1.2 and 1.3 with AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, both directions. The
//! config the connection came from must set `enable_secret_extraction = true`.
//!
//! # Fallback and failure
//! Refusals found before the secrets are extracted — no "tls" ULP, a protocol version or
//! cipher suite the kernel cannot run, a cipher whose crypto module is missing (tried on a
//! scratch loopback socket, remembered once it works) — give [`Offloaded::Userspace`].
//! Extraction consumes the rustls connection, so a refusal after it is an [`Error`]: the
//! connection is lost, never continued unencrypted or half-offloaded.
//!
//! # KeyUpdate
//! A TLS 1.3 peer may rotate its keys at any time (rustls does by itself near AES-GCM's usage
//! limits). Following it needs two things: rustls's `kernel::KernelConnection`, which derives
//! the next traffic keys and which rustls hands out only from its unbuffered connections, and a
//! kernel that accepts new keys on a live socket (Linux 6.14 and later).
//! - A connection whose handshake ran in a [`Handshake`] and went to the kernel with
//!   [`offload_handshake`] follows KeyUpdates: on the peer's, the next receive keys are
//!   installed (the kernel pauses decryption until they are), and if the peer asked, cork
//!   sends its own KeyUpdate and installs its next send keys. The kernel's `TlsRxRekeyOk` and
//!   `TlsTxRekeyOk` counters and [`KtlsStream::key_updates`] count them.
//! - Where the kernel refuses new keys (before 6.14), or the stream came from a buffered
//!   connection through [`offload`], a KeyUpdate fails the connection with
//!   [`RecordError::KeyUpdate`] before the kernel decrypts anything with the stale key: data
//!   read before it is intact and nothing after it is returned.
//!
//! Session tickets a server sends after the handshake go to rustls (so later connections can
//! resume) when the stream has its `KernelConnection`, and are dropped otherwise.

mod handshake;
mod stream;
pub mod sys;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Mutex;

use rustls::{CipherSuite, CommonState, Connection};

pub use handshake::{Handshake, HandshakeError, Progress};
pub use stream::{KeyUpdateCounts, KtlsStream};
use stream::KernelKeys;
pub use sys::KernelCipher;
use sys::Direction;

/// Largest TLS record body the handshake reader accepts (RFC 8446 §5.2's ciphertext limit).
pub const MAX_RECORD_BODY: usize = 16 * 1024 + 256;
/// A TLS record header: type, version, length.
pub const RECORD_HEADER: usize = 5;

/// Whether this kernel can run kTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KtlsSupport {
    Supported,
    Unsupported { reason: String },
}

/// Why an offload failed in a way the connection cannot survive.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the TLS handshake has not finished")]
    HandshakeNotComplete,
    #[error("socket I/O during the handshake: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the peer sent a TLS record of {0} bytes, more than the protocol allows")]
    OversizedRecord(usize),
    #[error("application data arrived with the last handshake record; it would be lost by offloading")]
    PlaintextBuffered,
    #[error("rustls would not hand over the traffic secrets (is enable_secret_extraction set?): {0}")]
    Extract(rustls::Error),
    #[error("the kernel refused {direction} after the secrets were extracted: {source}")]
    Install { direction: &'static str, source: io::Error },
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("the kernel cannot take this connection, and its handshake cannot go back to rustls records: {0}")]
    Refused(String),
}

/// Why a [`KtlsStream`] stopped; carried inside the `io::Error` its reads and writes return.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the peer sent a TLS 1.3 KeyUpdate that this kTLS connection cannot follow (the kernel takes new keys only from Linux 6.14), so it is closed")]
    KeyUpdate,
    #[error("changing TLS 1.3 keys failed: {0}")]
    Rekey(String),
    #[error("{0} records went out under one key, near the cipher's confidentiality limit, and this connection cannot change keys (TLS 1.2, or a kernel before 6.14), so it is closed")]
    ConfidentialityLimit(u64),
    #[error("the peer sent TLS alert {0}")]
    Alert(u8),
    #[error("the peer sent an unexpected post-handshake message of type {0}")]
    UnexpectedHandshake(u8),
    #[error("the peer sent a record of unexpected content type {0}")]
    UnexpectedContentType(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("a record failed to authenticate (EBADMSG)")]
    BadRecord,
    #[error("the peer closed the TCP connection without close_notify")]
    Truncated,
}

/// The result of [`offload`].
pub enum Offloaded {
    Kernel(KtlsStream),
    /// The kernel refused; the connection is unchanged and stays on rustls.
    Userspace { sock: TcpStream, conn: Connection, reason: String },
}

/// Opens a connected loopback TCP pair to try socket options on.
fn scratch_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    Ok((client, server))
}

fn ulp_refusal(err: &io::Error) -> String {
    if err.raw_os_error() == Some(libc::ENOENT) {
        format!("the kernel has no \"tls\" upper-layer protocol (built without CONFIG_TLS, or the tls module is not loaded): {err}")
    } else {
        format!("setsockopt(TCP_ULP, \"tls\") failed: {err}")
    }
}

/// Tries `setsockopt(TCP_ULP, "tls")` on a connected loopback TCP pair.
pub fn probe() -> KtlsSupport {
    let result = scratch_pair().map_err(|e| format!("could not open a loopback TCP pair to probe with: {e}")).and_then(|(client, _server)| sys::attach_ulp(&client).map_err(|e| ulp_refusal(&e)));
    match result {
        Ok(()) => KtlsSupport::Supported,
        Err(reason) => KtlsSupport::Unsupported { reason },
    }
}

/// Whether this kernel takes new keys on a kTLS socket (Linux 6.14 and later), tried once on a
/// scratch socket: a TLS 1.3 send key installed twice. Before 6.14 the second install is
/// refused with `EBUSY`. The kernel counts the trial (`TlsTxSw`, and `TlsTxRekeyOk` where it
/// works; [`trial_sockets`] includes it).
pub fn rekey_supported() -> bool {
    static REKEY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REKEY.get_or_init(|| {
        let Ok((client, _server)) = scratch_pair() else { return false };
        let version = sys::kernel_version(rustls::ProtocolVersion::TLSv1_3).expect("TLS 1.3 has a kernel number");
        if sys::attach_ulp(&client).is_err() || sys::install_dummy(&client, Direction::Tx, version, KernelCipher::Aes128Gcm).is_err() {
            return false;
        }
        TRIAL_SOCKETS[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sys::install_dummy(&client, Direction::Tx, version, KernelCipher::Aes128Gcm).is_ok()
    })
}

/// (kernel version number, cipher) pairs the kernel has accepted in both directions.
static ACCEPTED: Mutex<Vec<(u16, KernelCipher)>> = Mutex::new(Vec::new());

/// Directions (TX, RX) set up on scratch sockets by trials, which the kernel's `TlsTxSw` and
/// `TlsRxSw` count like any other.
static TRIAL_SOCKETS: [std::sync::atomic::AtomicU64; 2] = [std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0)];

/// How many TX and RX kTLS states this process's cipher trials have set up on scratch sockets:
/// for telling offloaded connections apart from trials in `/proc/net/tls_stat`.
pub fn trial_sockets() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (TRIAL_SOCKETS[0].load(Relaxed), TRIAL_SOCKETS[1].load(Relaxed))
}

/// Whether the kernel can instantiate `cipher` for `version`, tried with a dummy key on a
/// scratch socket. Only successes are remembered: a module may be loaded later.
fn trial(version: u16, cipher: KernelCipher) -> Result<(), String> {
    if ACCEPTED.lock().map(|set| set.contains(&(version, cipher))).unwrap_or(false) {
        return Ok(());
    }
    let (client, _server) = scratch_pair().map_err(|e| format!("could not open a loopback TCP pair to try {cipher:?} on: {e}"))?;
    sys::attach_ulp(&client).map_err(|e| ulp_refusal(&e))?;
    for dir in [Direction::Tx, Direction::Rx] {
        sys::install_dummy(&client, dir, version, cipher).map_err(|e| format!("the kernel refused {cipher:?} for {}: {e}", dir.name()))?;
        TRIAL_SOCKETS[(dir == Direction::Rx) as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if let Ok(mut set) = ACCEPTED.lock() {
        set.push((version, cipher));
    }
    Ok(())
}

fn kernel_cipher(suite: CipherSuite) -> Option<KernelCipher> {
    use CipherSuite::*;
    match suite {
        TLS13_AES_128_GCM_SHA256 | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(KernelCipher::Aes128Gcm),
        TLS13_AES_256_GCM_SHA384 | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(KernelCipher::Aes256Gcm),
        TLS13_CHACHA20_POLY1305_SHA256 | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(KernelCipher::Chacha20Poly1305),
        _ => None,
    }
}

/// Drives `conn`'s handshake on blocking `sock` to completion and flushes everything rustls
/// queued (TLS 1.3 NewSessionTickets included). Reads one whole record at a time so that no
/// byte after the handshake is consumed.
pub fn complete_handshake(sock: &mut TcpStream, conn: &mut Connection) -> Result<(), Error> {
    let mut record = Vec::with_capacity(RECORD_HEADER + MAX_RECORD_BODY);
    loop {
        while conn.wants_write() {
            conn.write_tls(sock)?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        record.clear();
        read_record(sock, &mut record)?;
        let mut rest = &record[..];
        while !rest.is_empty() {
            conn.read_tls(&mut rest)?;
            match conn.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 => return Err(Error::PlaintextBuffered),
                Ok(_) => {}
                Err(e) => {
                    // Send the alert rustls queued, so the peer learns why.
                    let _ = conn.write_tls(sock);
                    return Err(e.into());
                }
            }
        }
    }
}

/// The kernel's version number and cipher for a finished connection, or why kTLS cannot run it.
fn kernel_params(conn: &CommonState) -> Result<Option<(u16, KernelCipher)>, String> {
    let (Some(version), Some(suite)) = (conn.protocol_version(), conn.negotiated_cipher_suite()) else { return Ok(None) };
    let kversion = sys::kernel_version(version).ok_or_else(|| format!("kTLS has no support for {version:?}"))?;
    let cipher = kernel_cipher(suite.suite()).ok_or_else(|| format!("kTLS has no support for cipher suite {:?}", suite.suite()))?;
    trial(kversion, cipher)?;
    Ok(Some((kversion, cipher)))
}


/// Moves a finished connection's record layer into the kernel. See the module docs for which
/// refusals fall back and which fail. A socket that already has the ULP is fine.
pub fn offload(mut sock: TcpStream, conn: impl Into<Connection>) -> Result<Offloaded, Error> {
    let mut conn = conn.into();
    if conn.is_handshaking() {
        return Err(Error::HandshakeNotComplete);
    }
    // Records rustls already sealed must reach the peer before the kernel numbers its own.
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    let Some(version) = conn.protocol_version() else { return Err(Error::HandshakeNotComplete) };
    let (kversion, cipher) = match kernel_params(&conn) {
        Ok(Some(params)) => params,
        Ok(None) => return Err(Error::HandshakeNotComplete),
        Err(reason) => return Ok(Offloaded::Userspace { sock, conn, reason }),
    };
    match sys::attach_ulp(&sock) {
        Ok(()) => {}
        // Attached by the caller already.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Ok(Offloaded::Userspace { sock, conn, reason: ulp_refusal(&e) }),
    }
    let is_client = matches!(conn, Connection::Client(_));
    let limit = confidentiality_limit(&conn);
    let secrets = conn.dangerous_extract_secrets().map_err(Error::Extract)?;
    install_keys(&sock, kversion, &secrets)?;
    Ok(Offloaded::Kernel(KtlsStream::new(sock, version, cipher, is_client, None, limit)))
}

/// Installs both directions' extracted keys; a refusal here leaves nothing to fall back to.
fn install_keys(sock: &TcpStream, kversion: u16, secrets: &rustls::ExtractedSecrets) -> Result<(), Error> {
    sys::install(sock, Direction::Tx, kversion, secrets.tx.0, &secrets.tx.1).map_err(|source| Error::Install { direction: "TLS_TX", source })?;
    sys::install(sock, Direction::Rx, kversion, secrets.rx.0, &secrets.rx.1).map_err(|source| Error::Install { direction: "TLS_RX", source })
}

/// How many records one key of the negotiated suite may seal (rustls's figure).
fn confidentiality_limit(conn: &CommonState) -> u64 {
    match conn.negotiated_cipher_suite() {
        Some(rustls::SupportedCipherSuite::Tls12(s)) => s.common.confidentiality_limit,
        Some(rustls::SupportedCipherSuite::Tls13(s)) => s.common.confidentiality_limit,
        None => u64::MAX,
    }
}

/// Whether the kernel can run every (version, cipher suite) that `suites` may negotiate, tried
/// as [`offload`] tries one. A connection driven by a [`Handshake`] cannot fall back to
/// rustls records, so callers ask this before its handshake starts.
pub fn accepts_all(suites: &[rustls::SupportedCipherSuite]) -> Result<(), String> {
    for suite in suites {
        let version = suite.version().version;
        let kversion = sys::kernel_version(version).ok_or_else(|| format!("kTLS has no support for {version:?}"))?;
        let cipher = kernel_cipher(suite.suite()).ok_or_else(|| format!("kTLS has no support for cipher suite {:?}", suite.suite()))?;
        trial(kversion, cipher)?;
    }
    Ok(())
}

/// Drives `handshake` on blocking `sock` to its end, one TLS record at a time, starting with
/// whatever records were already read into `incoming` (a ClientHello someone peeked at).
pub fn complete_unbuffered(sock: &mut TcpStream, handshake: &mut Handshake, mut incoming: Vec<u8>) -> Result<(), Error> {
    let mut outgoing = Vec::new();
    loop {
        let progress = handshake.advance(&mut incoming, &mut outgoing);
        sock.write_all(&outgoing)?;
        outgoing.clear();
        if progress? == Progress::Done {
            return Ok(());
        }
        read_record(sock, &mut incoming)?;
    }
}

/// Appends exactly one TLS record from `sock` to `buf`, header included.
fn read_record(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Error> {
    let start = buf.len();
    buf.resize(start + RECORD_HEADER, 0);
    sock.read_exact(&mut buf[start..])?;
    let len = u16::from_be_bytes([buf[start + 3], buf[start + 4]]) as usize;
    if len > MAX_RECORD_BODY {
        return Err(Error::OversizedRecord(len));
    }
    buf.resize(start + RECORD_HEADER + len, 0);
    sock.read_exact(&mut buf[start + RECORD_HEADER..])?;
    Ok(())
}

/// Moves a connection whose [`Handshake`] is done into the kernel, keeping rustls's
/// `KernelConnection` so the stream can follow KeyUpdates. There is no way back to rustls
/// records from here: every refusal is an [`Error`]. [`accepts_all`] before the handshake
/// keeps refusals to kernels that broke since. `sock` may already have the ULP.
pub fn offload_handshake(sock: TcpStream, handshake: Handshake) -> Result<KtlsStream, Error> {
    let common = handshake.common();
    if common.is_handshaking() {
        return Err(Error::HandshakeNotComplete);
    }
    let Some(version) = common.protocol_version() else { return Err(Error::HandshakeNotComplete) };
    let (kversion, cipher) = match kernel_params(common) {
        Ok(Some(params)) => params,
        Ok(None) => return Err(Error::HandshakeNotComplete),
        Err(reason) => return Err(Error::Refused(reason)),
    };
    match sys::attach_ulp(&sock) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::Refused(ulp_refusal(&e))),
    }
    let is_client = handshake.is_client();
    let limit = confidentiality_limit(common);
    let (secrets, keys) = match handshake {
        Handshake::Client(conn) => conn.dangerous_into_kernel_connection().map(|(s, k)| (s, KernelKeys::Client(k))),
        Handshake::Server(conn) => conn.dangerous_into_kernel_connection().map(|(s, k)| (s, KernelKeys::Server(k))),
    }
    .map_err(Error::Extract)?;
    install_keys(&sock, kversion, &secrets)?;
    Ok(KtlsStream::new(sock, version, cipher, is_client, Some(keys), limit))
}

/// Reads the kernel's kTLS counters (`/proc/net/tls_stat`), e.g. `TlsTxSw`. `None` when the
/// file is absent (no kTLS in this kernel or the module is not loaded).
pub fn tls_stat() -> Option<Vec<(String, u64)>> {
    let text = std::fs::read_to_string("/proc/net/tls_stat").ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On any kernel: `probe` must agree with the kernel's own sign of kTLS, the counters file
    /// that the tls module creates. (The probe's setsockopt may autoload the module, so the
    /// file is checked after it.) On a host without CONFIG_TLS this asserts the refusal and
    /// its reason.
    #[test]
    fn probe_agrees_with_the_kernel() {
        let support = probe();
        let stat = std::path::Path::new("/proc/net/tls_stat").exists();
        match support {
            KtlsSupport::Supported => assert!(stat, "probe says kTLS works but /proc/net/tls_stat is absent"),
            KtlsSupport::Unsupported { reason } => {
                assert!(!stat, "probe says no kTLS ({reason}) but /proc/net/tls_stat exists");
                assert!(reason.contains("upper-layer protocol") || reason.contains("TCP_ULP"), "unclear reason: {reason}");
            }
        }
    }

    #[test]
    fn crypto_info_layout_matches_linux_tls_h() {
        let key: Vec<u8> = (0..32).collect();
        let iv: Vec<u8> = (100..112).collect();
        // struct tls12_crypto_info_aes_gcm_128 { info; iv[8]; key[16]; salt[4]; rec_seq[8]; }
        let aes = sys::crypto_info(0x0304, KernelCipher::Aes128Gcm, &key[..16], &iv, 7);
        assert_eq!(aes.len(), 40);
        assert_eq!(&aes[..4], &[0x04, 0x03, 51, 0]);
        assert_eq!(&aes[4..12], &iv[4..]);
        assert_eq!(&aes[12..28], &key[..16]);
        assert_eq!(&aes[28..32], &iv[..4]);
        assert_eq!(&aes[32..], &7u64.to_be_bytes());
        // struct tls12_crypto_info_chacha20_poly1305 { info; iv[12]; key[32]; salt[0]; rec_seq[8]; }
        let chacha = sys::crypto_info(0x0303, KernelCipher::Chacha20Poly1305, &key, &iv, 1);
        assert_eq!(chacha.len(), 56);
        assert_eq!(&chacha[..4], &[0x03, 0x03, 54, 0]);
        assert_eq!(&chacha[4..16], &iv[..]);
        assert_eq!(&chacha[16..48], &key[..]);
        assert_eq!(&chacha[48..], &1u64.to_be_bytes());
        assert_eq!(sys::crypto_info(0x0304, KernelCipher::Aes256Gcm, &key, &iv, 0).len(), 56);
        // What getsockopt(TLS_TX) is asked for must be the same size.
        for (cipher, key) in [(KernelCipher::Aes128Gcm, &key[..16]), (KernelCipher::Aes256Gcm, &key[..]), (KernelCipher::Chacha20Poly1305, &key[..])] {
            assert_eq!(sys::crypto_info(0x0304, cipher, key, &iv, 0).len(), cipher.info_len(), "{cipher:?}");
        }
    }
}
