//! kTLS proof, run as PID 1's child inside the `cargo xtask vm` guest (Debian's 6.1 cloud
//! kernel). It needs a kernel with `tls.ko` and loads modules itself, in phases:
//!
//! 1. nothing loaded: `probe` refuses, `offload` falls back and the connection still works;
//! 2. `tls` loaded but no AEAD modules: the cipher trial refuses, `offload` falls back;
//! 3. everything loaded: every version x cipher, offloaded on the server, the client or both,
//!    moves data both ways and ends with close_notify; NewSessionTickets reach a userspace
//!    client; a peer KeyUpdate fails a stream offloaded from a buffered connection cleanly; the
//!    kernel's counters rise;
//! 4. KeyUpdates on streams whose handshake ran unbuffered ([`cork_ktls::Handshake`]), with the
//!    kernel on either end, for each TLS 1.3 suite: followed both ways where the kernel can
//!    rekey, a clean failure where it cannot. `cargo xtask vm` says which to expect through the
//!    kernel command line (`cork_rekey=1` from Linux 6.14), so a kernel that should rekey and
//!    does not is a failure, not a skip. Then cork's own send key past a (lowered)
//!    confidentiality limit: changed by a KeyUpdate of its own, or the stream ends cleanly.
//!
//! `/init` sets `kernel.modprobe` to `/bin/false`, so nothing is autoloaded behind our back.
//! Exit status 0 only if every check passed.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use cork_ktls::{complete_handshake, complete_unbuffered, offload, offload_handshake, probe, tls_stat, Handshake, KtlsStream, KtlsSupport, Offloaded, RecordError};
use rustls::client::{ClientSessionMemoryCache, UnbufferedClientConnection};
use rustls::server::UnbufferedServerConnection;
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection, StreamOwned, SupportedCipherSuite};

type Result<T> = std::result::Result<T, String>;

/// Bytes sent each way per connection: several full records, small enough for TCG.
const PAYLOAD: usize = 200 * 1024;

struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn identity() -> Identity {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    Identity { cert: cert.cert.der().clone(), key: PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()) }
}

fn suite(id: CipherSuite) -> SupportedCipherSuite {
    *ring::ALL_CIPHER_SUITES.iter().find(|s| s.suite() == id).expect("ring has the suite")
}

fn provider(id: CipherSuite) -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider { cipher_suites: vec![suite(id)], ..ring::default_provider() })
}

fn version_of(id: CipherSuite) -> &'static rustls::SupportedProtocolVersion {
    if format!("{id:?}").starts_with("TLS13") {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    }
}

#[path = "support/ticket_store.rs"]
mod ticket_store;
use ticket_store::CountingStore;

#[path = "support/guest_env.rs"]
mod guest_env;
use guest_env::rekey_expected;

fn configs(id: &Identity, cs: CipherSuite, store: Arc<CountingStore>) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let mut server = ServerConfig::builder_with_provider(provider(cs))
        .with_protocol_versions(&[version_of(cs)])
        .expect("server versions")
        .with_no_client_auth()
        .with_single_cert(vec![id.cert.clone()], PrivateKeyDer::Pkcs8(id.key.clone_key()))
        .expect("server cert");
    server.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.cert.clone()).expect("root");
    let mut client = ClientConfig::builder_with_provider(provider(cs)).with_protocol_versions(&[version_of(cs)]).expect("client versions").with_root_certificates(roots).with_no_client_auth();
    client.enable_secret_extraction = true;
    client.resumption = rustls::client::Resumption::store(store);
    (Arc::new(server), Arc::new(client))
}

/// One end of a test connection, on kernel or rustls records.
enum End {
    Kernel(KtlsStream),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

/// Dispatches a method call to whichever stream `End` holds.
macro_rules! each {
    ($end:expr, $s:ident => $e:expr) => {
        match $end {
            End::Kernel($s) => $e,
            End::Client($s) => $e,
            End::Server($s) => $e,
        }
    };
}

impl End {
    fn user(conn: Connection, sock: TcpStream) -> Self {
        match conn {
            Connection::Client(c) => End::Client(Box::new(StreamOwned::new(c, sock))),
            Connection::Server(c) => End::Server(Box::new(StreamOwned::new(c, sock))),
        }
    }
    fn close(&mut self) -> io::Result<()> {
        match self {
            End::Kernel(k) => k.close_notify(),
            End::Client(u) => {
                u.conn.send_close_notify();
                u.flush()
            }
            End::Server(u) => {
                u.conn.send_close_notify();
                u.flush()
            }
        }
    }
    fn is_kernel(&self) -> bool {
        matches!(self, End::Kernel(_))
    }
}

impl Read for End {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each!(self, s => s.read(buf))
    }
}

impl Write for End {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(self, s => s.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush())
    }
}

/// Handshakes, then offloads if asked. Returns the end and, on fallback, the reason.
fn establish(mut sock: TcpStream, mut conn: Connection, want_kernel: bool) -> Result<(End, Option<String>)> {
    complete_handshake(&mut sock, &mut conn).map_err(|e| format!("handshake: {e}"))?;
    if !want_kernel {
        return Ok((End::user(conn, sock), None));
    }
    match offload(sock, conn).map_err(|e| format!("offload: {e}"))? {
        Offloaded::Kernel(k) => Ok((End::Kernel(k), None)),
        Offloaded::Userspace { sock, conn, reason } => Ok((End::user(conn, sock), Some(reason))),
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Outcome {
    server_kernel: bool,
    client_kernel: bool,
    fallback: Vec<String>,
    tickets: usize,
}

/// A client sends PAYLOAD bytes and close_notify; the server reads to close_notify, checks
/// them, sends its own PAYLOAD bytes and close_notify; the client checks those.
fn exchange(id: &Identity, cs: CipherSuite, server_kernel: bool, client_kernel: bool) -> Result<Outcome> {
    let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(8), tickets: AtomicUsize::new(0) });
    let (server_cfg, client_cfg) = configs(id, cs, store.clone());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let up = pattern(PAYLOAD, 1);
    let down = pattern(PAYLOAD, 2);
    let (up2, down2) = (up.clone(), down.clone());
    let server = thread::spawn(move || -> Result<(bool, Option<String>)> {
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        let conn = ServerConnection::new(server_cfg).map_err(|e| e.to_string())?;
        let (mut end, fallback) = establish(sock, conn.into(), server_kernel)?;
        let mut got = Vec::new();
        end.read_to_end(&mut got).map_err(|e| format!("server read: {e}"))?;
        if got != up2 {
            return Err(format!("server received {} bytes that differ from the {} sent", got.len(), up2.len()));
        }
        end.write_all(&down2).map_err(|e| format!("server write: {e}"))?;
        end.close().map_err(|e| format!("server close_notify: {e}"))?;
        Ok((end.is_kernel(), fallback))
    });
    let client = (|| -> Result<(bool, Option<String>)> {
        let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let conn = ClientConnection::new(client_cfg, ServerName::try_from("localhost").unwrap()).map_err(|e| e.to_string())?;
        let (mut end, fallback) = establish(sock, conn.into(), client_kernel)?;
        end.write_all(&up).map_err(|e| format!("client write: {e}"))?;
        end.close().map_err(|e| format!("client close_notify: {e}"))?;
        let mut got = Vec::new();
        end.read_to_end(&mut got).map_err(|e| format!("client read: {e}"))?;
        if got != down {
            return Err(format!("client received {} bytes that differ from the {} sent", got.len(), down.len()));
        }
        Ok((end.is_kernel(), fallback))
    })();
    let server = server.join().map_err(|_| "server thread panicked".to_string())?;
    let (client_is_kernel, client_fallback) = client?;
    let (server_is_kernel, server_fallback) = server?;
    Ok(Outcome {
        server_kernel: server_is_kernel,
        client_kernel: client_is_kernel,
        fallback: server_fallback.into_iter().chain(client_fallback).collect(),
        tickets: store.tickets.load(Ordering::SeqCst),
    })
}

/// A userspace client sends data, a KeyUpdate, more data; the kTLS server must return the
/// first data intact and then fail with RecordError::KeyUpdate, never further bytes.
fn key_update(id: &Identity) -> Result<()> {
    let cs = CipherSuite::TLS13_AES_128_GCM_SHA256;
    let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(8), tickets: AtomicUsize::new(0) });
    let (server_cfg, client_cfg) = configs(id, cs, store);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let before = pattern(5000, 3);
    let expect = before.clone();
    let server = thread::spawn(move || -> Result<()> {
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        let conn = ServerConnection::new(server_cfg).map_err(|e| e.to_string())?;
        let (mut end, fallback) = establish(sock, conn.into(), true)?;
        if let Some(reason) = fallback {
            return Err(format!("expected kTLS, fell back: {reason}"));
        }
        let mut got = vec![0; expect.len()];
        end.read_exact(&mut got).map_err(|e| format!("reading the data before the KeyUpdate: {e}"))?;
        if got != expect {
            return Err("data before the KeyUpdate differs".into());
        }
        let mut more = [0u8; 64];
        let err = match end.read(&mut more) {
            Ok(n) => return Err(format!("read {n} bytes after the peer's KeyUpdate; expected a clean failure")),
            Err(e) => e,
        };
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<RecordError>());
        if inner != Some(&RecordError::KeyUpdate) {
            return Err(format!("expected RecordError::KeyUpdate, got {err}"));
        }
        // The connection stays failed.
        if end.write(b"x").is_ok() {
            return Err("write succeeded on a connection failed by KeyUpdate".into());
        }
        println!("[guest]   server error after KeyUpdate: {err}");
        Ok(())
    });
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(client_cfg, ServerName::try_from("localhost").unwrap()).map_err(|e| e.to_string())?;
    let (end, _) = establish(sock, conn.into(), false)?;
    let End::Client(mut client) = end else { unreachable!("a userspace client") };
    client.write_all(&before).map_err(|e| e.to_string())?;
    client.conn.refresh_traffic_keys().map_err(|e| format!("refresh_traffic_keys: {e}"))?;
    client.write_all(b"after the key update").map_err(|e| e.to_string())?;
    client.flush().map_err(|e| e.to_string())?;
    server.join().map_err(|_| "server thread panicked".to_string())?
}

/// The userspace end sends data, a KeyUpdate that asks for one back (what rustls's
/// `refresh_traffic_keys` sends), and more data. The kTLS end, whose handshake ran unbuffered,
/// must read all of it and answer under its own new key where the kernel can rekey; elsewhere
/// it must return the first data intact and then fail with `RecordError::KeyUpdate`.
fn key_update_followed(id: &Identity, cs: CipherSuite, kernel_is_server: bool, rekey: bool) -> Result<()> {
    let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(8), tickets: AtomicUsize::new(0) });
    let (server_cfg, client_cfg) = configs(id, cs, store);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (before, after, reply) = (pattern(5000, 3), pattern(70_000, 4), pattern(30_000, 5));
    let (before2, after2, reply2) = (before.clone(), after.clone(), reply.clone());
    let (server_cfg2, client_cfg2) = (server_cfg.clone(), client_cfg.clone());
    let kernel_listener = listener.try_clone().map_err(|e| e.to_string())?;
    let kernel_end = thread::spawn(move || -> Result<(u64, u64)> {
        let name = ServerName::try_from("localhost").unwrap();
        let (mut sock, mut handshake) = if kernel_is_server {
            (kernel_listener.accept().map_err(|e| e.to_string())?.0, Handshake::Server(UnbufferedServerConnection::new(server_cfg2).map_err(|e| e.to_string())?))
        } else {
            (TcpStream::connect(addr).map_err(|e| e.to_string())?, Handshake::Client(UnbufferedClientConnection::new(client_cfg2, name).map_err(|e| e.to_string())?))
        };
        complete_unbuffered(&mut sock, &mut handshake, Vec::new()).map_err(|e| format!("unbuffered handshake: {e}"))?;
        let mut k = offload_handshake(sock, handshake).map_err(|e| format!("offload_handshake: {e}"))?;
        let mut got = vec![0; before2.len()];
        k.read_exact(&mut got).map_err(|e| format!("reading the data before the KeyUpdate: {e}"))?;
        if got != before2 {
            return Err("data before the KeyUpdate differs".into());
        }
        if !rekey {
            let mut more = [0u8; 64];
            let err = match k.read(&mut more) {
                Ok(n) => return Err(format!("read {n} bytes after the peer's KeyUpdate on a kernel that cannot rekey")),
                Err(e) => e,
            };
            if err.get_ref().and_then(|e| e.downcast_ref::<RecordError>()) != Some(&RecordError::KeyUpdate) {
                return Err(format!("expected RecordError::KeyUpdate, got {err}"));
            }
            println!("[guest]   without rekeying: {err}");
            return Ok(k.key_updates());
        }
        let mut got = vec![0; after2.len()];
        k.read_exact(&mut got).map_err(|e| format!("reading the data after the KeyUpdate: {e}"))?;
        if got != after2 {
            return Err("data after the KeyUpdate differs".into());
        }
        k.write_all(&reply2).map_err(|e| format!("writing under the new key: {e}"))?;
        k.close_notify().map_err(|e| format!("close_notify: {e}"))?;
        Ok(k.key_updates())
    });
    let user = (|| -> Result<()> {
        let (sock, conn): (TcpStream, Connection) = if kernel_is_server {
            let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            (sock, ClientConnection::new(client_cfg, ServerName::try_from("localhost").unwrap()).map_err(|e| e.to_string())?.into())
        } else {
            (listener.accept().map_err(|e| e.to_string())?.0, ServerConnection::new(server_cfg).map_err(|e| e.to_string())?.into())
        };
        let (mut end, _) = establish(sock, conn, false)?;
        end.write_all(&before).map_err(|e| e.to_string())?;
        match &mut end {
            End::Client(u) => u.conn.refresh_traffic_keys(),
            End::Server(u) => u.conn.refresh_traffic_keys(),
            End::Kernel(_) => unreachable!("a userspace end"),
        }
        .map_err(|e| format!("refresh_traffic_keys: {e}"))?;
        // Where the kTLS end cannot rekey it closes at the KeyUpdate, so these writes may fail.
        let sent = end.write_all(&after).and_then(|()| end.flush());
        if !rekey {
            // Stay connected until the kTLS end has closed: it moves to the kernel only after
            // its handshake, and the kernel takes no ULP on a socket the peer already closed.
            let _ = end.read_to_end(&mut Vec::new());
        } else {
            sent.map_err(|e| format!("writing after the KeyUpdate: {e}"))?;
            let mut got = Vec::new();
            end.read_to_end(&mut got).map_err(|e| format!("reading the kTLS end's answer: {e}"))?;
            if got != reply {
                return Err(format!("the answer under the kTLS end's new key differs ({} of {} bytes)", got.len(), reply.len()));
            }
        }
        Ok(())
    })();
    let updates = kernel_end.join().map_err(|_| "kTLS thread panicked".to_string())??;
    user?;
    let want = if rekey { (1, 1) } else { (0, 0) };
    if updates != want {
        return Err(format!("the kTLS end followed {updates:?} (peer's, own) key updates, expected {want:?}"));
    }
    Ok(())
}

/// Whether the kernel's crypto API already has an algorithm of this name (`/proc/crypto`).
fn crypto_has(name: &str) -> bool {
    std::fs::read_to_string("/proc/crypto").unwrap_or_default().lines().any(|l| l.strip_prefix("name").map(|v| v.trim_start_matches([' ', ':']).trim()) == Some(name))
}

/// cork's own send key, changed before the cipher's confidentiality limit (lowered to 64
/// records here): the kTLS server writes 4 MiB in 1 KiB writes. Where the kernel can rekey it
/// sends KeyUpdates of its own and the userspace client reads everything; elsewhere the stream
/// fails with `RecordError::ConfidentialityLimit` and the client gets an intact prefix.
fn send_key_rotation(id: &Identity, rekey: bool) -> Result<u64> {
    let cs = CipherSuite::TLS13_AES_128_GCM_SHA256;
    let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(8), tickets: AtomicUsize::new(0) });
    let (server_cfg, client_cfg) = configs(id, cs, store);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let data = pattern(4 * 1024 * 1024, 9);
    let sent = data.clone();
    let kernel_end = thread::spawn(move || -> Result<u64> {
        let (mut sock, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut handshake = Handshake::Server(UnbufferedServerConnection::new(server_cfg).map_err(|e| e.to_string())?);
        complete_unbuffered(&mut sock, &mut handshake, Vec::new()).map_err(|e| format!("unbuffered handshake: {e}"))?;
        let mut k = offload_handshake(sock, handshake).map_err(|e| format!("offload_handshake: {e}"))?;
        k.set_send_key_records(64);
        let written = sent.chunks(1024).try_for_each(|piece| k.write_all(piece));
        match (written, rekey) {
            (Ok(()), true) => {
                k.close_notify().map_err(|e| format!("close_notify: {e}"))?;
                Ok(k.key_updates().1)
            }
            (Ok(()), false) => Err("4 MiB went out under one key on a kernel that cannot change keys, past the lowered limit".into()),
            (Err(e), false) if e.get_ref().and_then(|e| e.downcast_ref::<RecordError>()).is_some_and(|e| matches!(e, RecordError::ConfidentialityLimit(_))) => {
                println!("[guest]   without rekeying: {e}");
                Ok(0)
            }
            (Err(e), _) => Err(format!("writing: {e}")),
        }
    });
    let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(client_cfg, ServerName::try_from("localhost").unwrap()).map_err(|e| e.to_string())?;
    let (mut end, _) = establish(sock, conn.into(), false)?;
    let mut got = Vec::new();
    let read = end.read_to_end(&mut got);
    let own = kernel_end.join().map_err(|_| "kTLS thread panicked".to_string())??;
    if got[..] != data[..got.len().min(data.len())] {
        return Err("what the client read is not a prefix of what was sent".into());
    }
    if rekey {
        read.map_err(|e| format!("the client's read under the rotated keys: {e}"))?;
        if got.len() != data.len() || own < 8 {
            return Err(format!("the client got {} of {} bytes across {own} key changes", got.len(), data.len()));
        }
        println!("[guest]   4 MiB under {} send keys", own + 1);
    } else if got.len() < 64 * 1024 || got.len() >= data.len() {
        return Err(format!("the client got {} bytes; expected the part sent before the limit", got.len()));
    }
    Ok(own)
}

fn modprobe(module: &str) -> Result<()> {
    let out = Command::new("modprobe").arg(module).output().map_err(|e| format!("starting modprobe {module}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("modprobe {module}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn stat(name: &str) -> u64 {
    tls_stat().and_then(|s| s.into_iter().find(|(n, _)| n == name).map(|(_, v)| v)).unwrap_or(0)
}

const SUITES: &[CipherSuite] = &[
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

struct Checks {
    failed: usize,
}

impl Checks {
    fn check(&mut self, name: &str, result: Result<()>) {
        match result {
            Ok(()) => println!("[guest] ok   {name}"),
            Err(e) => {
                self.failed += 1;
                println!("[guest] FAIL {name}: {e}");
            }
        }
    }
}

fn expect_fallback(id: &Identity, cs: CipherSuite, needle: &str) -> Result<()> {
    let out = exchange(id, cs, true, true)?;
    if out.server_kernel || out.client_kernel || out.fallback.len() != 2 {
        return Err("expected both ends to fall back to rustls".into());
    }
    for reason in &out.fallback {
        if !reason.contains(needle) {
            return Err(format!("fallback reason {reason:?} does not mention {needle:?}"));
        }
    }
    println!("[guest]   fallback reason: {}", out.fallback[0]);
    Ok(())
}

/// Writes `status` to QEMU's isa-debug-exit port (0xf4), which ends the VM with
/// `(status << 1) | 1`. `/init` calls this after the test, as the kernel has no /dev/port.
fn qemu_exit(status: u8) -> ! {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(0xf4, 4, 1) } != 0 {
        eprintln!("[guest] ioperm(0xf4): {}", io::Error::last_os_error());
        std::process::exit(2);
    }
    // SAFETY: port 0xf4 is QEMU's isa-debug-exit device, which the VM is started with.
    unsafe { std::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") status) };
    eprintln!("[guest] isa-debug-exit did not stop the VM");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, status] = &args[..] {
        if flag == "--qemu-exit" {
            qemu_exit(if status == "0" { 0 } else { 1 });
        }
    }
    let id = identity();
    let mut checks = Checks { failed: 0 };
    println!("[guest] kernel {}", std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim());

    // Phase 1: no tls module.
    checks.check(
        "probe refuses without the tls module",
        match probe() {
            KtlsSupport::Unsupported { reason } if reason.contains("upper-layer protocol") && tls_stat().is_none() => {
                println!("[guest]   reason: {reason}");
                Ok(())
            }
            other => Err(format!("unexpected {other:?}")),
        },
    );
    checks.check("offload falls back without the tls module", expect_fallback(&id, CipherSuite::TLS13_AES_128_GCM_SHA256, "upper-layer protocol"));

    // Phase 2: tls, but no AEAD modules.
    checks.check("modprobe tls", modprobe("tls"));
    checks.check("probe accepts with the tls module", if probe() == KtlsSupport::Supported { Ok(()) } else { Err(format!("{:?}", probe())) });
    // Only where AES-GCM needs the gcm module: 7.x's built-in aes registers gcm(aes) itself.
    if crypto_has("gcm(aes)") {
        println!("[guest] note: /proc/crypto lists gcm(aes) before gcm is loaded (built in here); the AES-GCM fallback is checked on kernels that need the module");
    } else {
        checks.check("AES-GCM falls back without the gcm module", expect_fallback(&id, CipherSuite::TLS13_AES_128_GCM_SHA256, "refused Aes128Gcm"));
    }
    checks.check("ChaCha20 falls back without its module", expect_fallback(&id, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256, "refused Chacha20Poly1305"));

    // Phase 3: everything.
    for m in ["gcm", "ctr", "chacha20poly1305"] {
        checks.check(&format!("modprobe {m}"), modprobe(m));
    }
    // The generic ChaCha20, Poly1305 and GHASH live in modules whose names differ between
    // kernels (6.1: chacha_generic, poly1305_generic, ghash_generic; 7.x: chacha, libpoly1305,
    // GHASH built in); whichever this kernel has is loaded. The offloads below, every suite in
    // the kernel, are what proves the algorithms are there. Accelerated implementations are
    // optional too: the emulated CPU may lack the instructions.
    for m in ["ghash_generic", "chacha_generic", "poly1305_generic", "chacha", "libpoly1305", "aesni_intel", "ghash_clmulni_intel", "chacha_x86_64", "poly1305_x86_64"] {
        if let Err(e) = modprobe(m) {
            println!("[guest] note {e} (the generic implementation is used)");
        }
    }
    let (tx0, rx0) = (stat("TlsTxSw"), stat("TlsRxSw"));
    let mut offloaded_tx = 0;
    for &cs in SUITES {
        for (server_kernel, client_kernel, label) in [(true, false, "server kTLS"), (false, true, "client kTLS"), (true, true, "both kTLS")] {
            let name = format!("{cs:?} {label}: {PAYLOAD} bytes each way, close_notify");
            let result = exchange(&id, cs, server_kernel, client_kernel).and_then(|out| {
                if out.server_kernel != server_kernel || out.client_kernel != client_kernel {
                    return Err(format!("not offloaded as asked: {:?}", out.fallback));
                }
                // A userspace TLS 1.3 client must have received the tickets the kTLS server
                // flushed before offloading.
                if version_of(cs) == &rustls::version::TLS13 && !client_kernel && out.tickets == 0 {
                    return Err("the client received no NewSessionTicket".into());
                }
                offloaded_tx += server_kernel as u64 + client_kernel as u64;
                Ok(())
            });
            checks.check(&name, result);
        }
    }
    let (tx1, rx1) = (stat("TlsTxSw"), stat("TlsRxSw"));
    println!("[guest]   /proc/net/tls_stat TlsTxSw {tx0} -> {tx1}, TlsRxSw {rx0} -> {rx1}, TlsDecryptError {}", stat("TlsDecryptError"));
    checks.check(
        "tls_stat counts every offloaded socket",
        if tx1 - tx0 >= offloaded_tx && rx1 - rx0 >= offloaded_tx && offloaded_tx > 0 && stat("TlsDecryptError") == 0 {
            Ok(())
        } else {
            Err(format!("expected at least {offloaded_tx} new TX and RX sockets, no decrypt errors"))
        },
    );
    checks.check("peer KeyUpdate fails a stream offloaded from a buffered connection cleanly", key_update(&id));

    // Phase 4: KeyUpdates after unbuffered handshakes.
    match rekey_expected() {
        Ok(rekey) => {
            let (rx0, tx0) = (stat("TlsRxRekeyOk"), stat("TlsTxRekeyOk"));
            let mut followed = 0;
            for cs in [CipherSuite::TLS13_AES_128_GCM_SHA256, CipherSuite::TLS13_AES_256_GCM_SHA384, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256] {
                for (kernel_is_server, side) in [(true, "server"), (false, "client")] {
                    let what = if rekey { "is followed both ways" } else { "fails the stream cleanly (no rekeying before 6.14)" };
                    let result = key_update_followed(&id, cs, kernel_is_server, rekey);
                    followed += result.is_ok() as u64;
                    checks.check(&format!("{cs:?}, kTLS {side}, unbuffered handshake: a peer KeyUpdate {what}"), result);
                }
            }
            let (rx, tx) = (stat("TlsRxRekeyOk") - rx0, stat("TlsTxRekeyOk") - tx0);
            println!("[guest]   tls_stat TlsRxRekeyOk +{rx}, TlsTxRekeyOk +{tx}, TlsRxRekeyError {}, TlsTxRekeyError {}", stat("TlsRxRekeyError"), stat("TlsTxRekeyError"));
            let want = if rekey { followed } else { 0 };
            checks.check(
                "tls_stat counts one receive and one send rekey per followed KeyUpdate",
                if rx == want && tx == want && stat("TlsDecryptError") == 0 { Ok(()) } else { Err(format!("expected +{want} each, no decrypt errors")) },
            );
            // The kernel's own answer must agree with what the VM says of it.
            checks.check(
                "cork_ktls::rekey_supported agrees with the kernel version",
                if cork_ktls::rekey_supported() == rekey { Ok(()) } else { Err(format!("rekey_supported() is {}, cork_rekey says {rekey}", !rekey)) },
            );
            // After the probe above, whose own rekey the kernel counted.
            let tx0 = stat("TlsTxRekeyOk");
            let what = if rekey { "changes keys before the limit and carries all 4 MiB" } else { "ends cleanly at the limit (no rekeying before 6.14)" };
            let result = send_key_rotation(&id, rekey).and_then(|own| {
                let tx = stat("TlsTxRekeyOk") - tx0;
                if tx == own { Ok(()) } else { Err(format!("TlsTxRekeyOk rose by {tx}, the stream counted {own} key changes")) }
            });
            checks.check(&format!("cork's send key past a lowered confidentiality limit {what}"), result);
        }
        Err(e) => checks.check("the VM says whether this kernel can rekey", Err(e)),
    }

    if checks.failed == 0 {
        println!("[guest] all kTLS checks passed");
        std::process::exit(0);
    }
    println!("[guest] {} kTLS checks failed", checks.failed);
    std::process::exit(1);
}
