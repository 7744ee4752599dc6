//! cork's proxy data path on kTLS, run inside the `cargo xtask vm` guest (Debian's 6.1 kernel;
//! the host has no kTLS). The real explicit proxy (`cork_proxy::explicit::serve` with a real
//! `ProxyState`, CA and audit log) runs in this process on loopback, in front of a rustls test
//! origin; a rustls client goes through it with CONNECT, so both of cork's legs are bumped.
//!
//! `--no-tls` (run by `/init` before anything loads the tls module): the probe refuses, the
//! start-up line and `/metrics` say so, and a bumped connection still carries its data on
//! rustls.
//!
//! Default (after the cork-ktls guest has loaded tls and every AEAD): for TLS 1.3 and 1.2 with
//! AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305 (the suite forced on both legs), 1 MiB each way
//! must arrive byte for byte, both legs must be counted as kernel legs, and
//! `/proc/net/tls_stat` must rise by exactly the sockets cork offloaded; TLS 1.3 clients must
//! receive cork's NewSessionTickets; an upstream KeyUpdate (which asks for one back) must be
//! followed both ways where the kernel can rekey (`cork_rekey=1`, from Linux 6.14), with the
//! whole body intact, and elsewhere end the connection with `tls.key_update_unsupported` and no
//! corrupted byte; `limits.ktls: off` must keep both legs on
//! rustls with nothing new in the kernel; a passthrough host must be spliced; a response body of
//! a type the policy leaves unscanned must be spliced between the two kTLS sockets, and a
//! KeyUpdate in the middle of that splice must end the connection as on the other paths.
//!
//! Exit status 0 only if every check passed. The guest is TCG-emulated: no timing is measured.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use cork_ktls::{tls_stat, KtlsSupport};
use cork_proxy::{AuditLog, ProxyState, Snapshot};
use rustls::client::ClientSessionMemoryCache;
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned, SupportedCipherSuite};
use sha2::{Digest, Sha256};

type Result<T> = std::result::Result<T, String>;

/// Bytes sent each way per connection: many full records, modest for TCG.
const PAYLOAD: usize = 1024 * 1024;
/// The guest's corks scan this much of a body before sending its head (the default is 1 MiB):
/// the rest of a `PAYLOAD` body then moves on io_uring between the kTLS sockets.
const BUFFERED: usize = 64 * 1024;
const ORIGIN: &str = "origin.test";
const PASSTHROUGH: &str = "pinned.test";

const SUITES: &[CipherSuite] = &[
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

fn suite(id: CipherSuite) -> SupportedCipherSuite {
    *ring::ALL_CIPHER_SUITES.iter().find(|s| s.suite() == id).expect("ring has the suite")
}

fn provider(id: CipherSuite) -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider { cipher_suites: vec![suite(id)], ..ring::default_provider() })
}

fn is_tls13(id: CipherSuite) -> bool {
    format!("{id:?}").starts_with("TLS13")
}

fn version_of(id: CipherSuite) -> &'static rustls::SupportedProtocolVersion {
    if is_tls13(id) {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    }
}

/// Text that no scanner rule matches, numbered so a shifted or repeated record shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u32;
    while out.len() < len {
        out.extend_from_slice(format!("{seed:04} line {line:08} the quick brown fox jumps over the lazy dog\n").as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The origin: rustls on threads, one suite at a time.

struct Origin {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
}

/// Serves `POST /echo` (the body back), `GET /keyupdate?n=N` (N bytes, a KeyUpdate, N more),
/// `GET /media?n=N` (N bytes labelled `video/mp4`, which the guest's policy leaves unscanned) and
/// `GET /keyupdate-media?n=N` (the KeyUpdate one, labelled `video/mp4`).
fn start_origin(suite_id: Option<CipherSuite>) -> Origin {
    let cert = rcgen::generate_simple_self_signed(vec![ORIGIN.to_string(), PASSTHROUGH.to_string()]).expect("rcgen");
    let der = cert.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let builder = match suite_id {
        Some(id) => ServerConfig::builder_with_provider(provider(id)).with_protocol_versions(&[version_of(id)]).expect("versions"),
        None => ServerConfig::builder_with_provider(Arc::new(ring::default_provider())).with_safe_default_protocol_versions().expect("versions"),
    };
    let mut config = builder.with_no_client_auth().with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(key)).expect("origin cert");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("origin bind");
    let addr = listener.local_addr().expect("origin addr");
    thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || {
                if let Err(e) = serve_origin(config, sock) {
                    println!("[guest]   origin: {e}");
                }
            });
        }
    });
    Origin { addr, cert: der }
}

fn serve_origin(config: Arc<ServerConfig>, sock: TcpStream) -> io::Result<()> {
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    loop {
        let Some((head, mut body_start)) = read_head(&mut tls)? else { return Ok(()) };
        let first = head.lines().next().unwrap_or_default().to_string();
        let length = content_length(&head).unwrap_or(0);
        if first.starts_with("POST /echo ") {
            let mut body = std::mem::take(&mut body_start);
            read_to(&mut tls, &mut body, length)?;
            let out = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", body.len());
            tls.write_all(out.as_bytes())?;
            tls.write_all(&body)?;
            tls.flush()?;
        } else if let Some(n) = query_n(&first, "GET /media?n=") {
            let body = pattern(n, 11);
            let out = format!("HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {}\r\n\r\n", body.len());
            tls.write_all(out.as_bytes())?;
            tls.write_all(&body)?;
            tls.flush()?;
        } else if let Some((n, kind)) = query_n(&first, "GET /keyupdate?n=").map(|n| (n, "text/plain")).or_else(|| query_n(&first, "GET /keyupdate-media?n=").map(|n| (n, "video/mp4"))) {
            let body = pattern(2 * n, 7);
            let out = format!("HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n", body.len());
            tls.write_all(out.as_bytes())?;
            tls.write_all(&body[..n])?;
            tls.flush()?;
            tls.conn.refresh_traffic_keys().map_err(io::Error::other)?;
            tls.flush()?;
            // The rest under the new key: a kernel that can rekey carries it; an older one must
            // not hand any of it on.
            let _ = tls.write_all(&body[n..]);
            let _ = tls.flush();
            // Read until cork closes (taking its KeyUpdate): closing with unread bytes would
            // reset the connection and drop whatever of the body the kernel had not sent yet.
            let _ = tls.read_to_end(&mut Vec::new());
            return Ok(());
        } else {
            tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        }
        if head.to_ascii_lowercase().contains("connection: close") {
            tls.conn.send_close_notify();
            tls.flush()?;
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 helpers shared by the origin and the client.

/// `N` from a request line `PREFIX N HTTP/1.1`.
fn query_n(request_line: &str, prefix: &str) -> Option<usize> {
    request_line.strip_prefix(prefix)?.split(' ').next()?.parse().ok()
}

/// Reads a head; returns it and the bytes read after it. `None` on a clean end before any byte.
fn read_head(r: &mut impl Read) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end inside a head")) };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })
}

/// Reads until `buf` holds `len` bytes or the stream ends.
fn read_to(r: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    while buf.len() < len {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cork, in process.

/// Where a cork's `/metrics` text comes from: the in-process state, or a `cork run` child's
/// admin listener.
enum MetricsSource {
    InProcess(Arc<ProxyState>),
    Admin(SocketAddr),
}

struct Cork {
    proxy: SocketAddr,
    metrics: MetricsSource,
    ca: CertificateDer<'static>,
    audit: PathBuf,
}

impl Cork {
    fn metrics_text(&self) -> String {
        match &self.metrics {
            MetricsSource::InProcess(state) => state.render_metrics(),
            MetricsSource::Admin(admin) => admin_get(*admin, "/metrics").unwrap_or_else(|e| e),
        }
    }
}

/// A body from cork's admin listener.
fn admin_get(admin: SocketAddr, path: &str) -> Result<String> {
    let mut sock = TcpStream::connect(admin).map_err(|e| format!("admin: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    write!(sock, "GET {path} HTTP/1.1\r\nHost: cork\r\n\r\n").map_err(|e| e.to_string())?;
    let (head, mut body) = read_head(&mut sock).map_err(|e| e.to_string())?.ok_or("no admin response")?;
    read_to(&mut sock, &mut body, content_length(&head).unwrap_or(0)).map_err(|e| e.to_string())?;
    String::from_utf8(body).map_err(|e| e.to_string())
}

/// The policy the guest's corks run on: the origin allowed, `pinned.test` passed through.
fn policy_yaml(origin: &Origin, dir: &Path, ktls: &str) -> Result<String> {
    policy_yaml_with(origin, dir, &format!("  ktls: {ktls}\n"))
}

/// The guest's policy with `limits` lines (each `  key: value\n`) added.
fn policy_yaml_with(origin: &Origin, dir: &Path, limits: &str) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let roots = dir.join("origin-ca.pem");
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", base64(&origin.cert));
    std::fs::write(&roots, pem).map_err(|e| e.to_string())?;
    Ok(format!(
        "mode: enforce\nscan:\n  unscanned_response_types: [\"video/*\"]\nhosts:\n  allow: [{ORIGIN}]\n  passthrough: [{PASSTHROUGH}]\n  ports: [{port}]\nupstream:\n  extra_roots: [{roots}]\n  resolve:\n    {ORIGIN}: 127.0.0.1\n    {PASSTHROUGH}: 127.0.0.1\nlimits:\n{limits}  body_buffer_bytes: {BUFFERED}\n",
        port = origin.addr.port(),
        roots = roots.display()
    ))
}

fn start_cork(origin: &Origin, dir: &Path, ktls: &str) -> Result<Cork> {
    let yaml = policy_yaml(origin, dir, ktls)?;
    let policy = cork_policy::Policy::from_yaml(&yaml, "guest").map_err(|e| e.to_string())?;
    let snapshot = Snapshot::build(policy, "guest".into()).map_err(|e| e.to_string())?;
    let ca = Arc::new(cork_ca::BottleCa::generate("cork-guest").map_err(|e| e.to_string())?);
    let ca_der = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()).next().ok_or("no CA certificate")?.map_err(|e| e.to_string())?;
    let audit = dir.join("audit.jsonl");
    let log = AuditLog::open(&audit).map_err(|e| e.to_string())?;
    let state = Arc::new(ProxyState::new("cork-guest", ca, snapshot, log));
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let proxy = listener.local_addr().map_err(|e| e.to_string())?;
    let serving = state.clone();
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            cork_proxy::explicit::serve(listener, serving).await
        });
    });
    Ok(Cork { proxy, metrics: MetricsSource::InProcess(state), ca: ca_der, audit })
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
        if out.len() % 77 == 76 {
            out.push('\n');
        }
    }
    out
}

/// A metric's value from cork's `/metrics` text; 0 when absent.
fn metric(cork: &Cork, series: &str) -> u64 {
    cork.metrics_text().lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

fn legs(cork: &Cork, result: &str) -> u64 {
    ["client", "upstream"].iter().map(|leg| metric(cork, &format!("cork_ktls_legs_total{{leg=\"{leg}\",result=\"{result}\"}} "))).sum()
}

// ---------------------------------------------------------------------------------------------
// The client.

#[path = "../../cork-ktls/tests/support/ticket_store.rs"]
mod ticket_store;
use ticket_store::CountingStore;

#[path = "../../cork-ktls/tests/support/guest_env.rs"]
mod guest_env;
use guest_env::rekey_expected;

/// CONNECTs through cork to `host` and starts TLS with `root` trusted, offering only `cs`.
fn connect(cork: &Cork, host: &str, port: u16, root: &CertificateDer<'static>, cs: CipherSuite, store: Arc<CountingStore>) -> Result<StreamOwned<ClientConnection, TcpStream>> {
    let mut sock = TcpStream::connect(cork.proxy).map_err(|e| format!("connecting to cork: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    write!(sock, "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").map_err(|e| e.to_string())?;
    // Byte at a time, so nothing after the CONNECT answer is consumed here.
    let mut reader = BufReader::with_capacity(1, &sock);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| e.to_string())?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("CONNECT answered {status:?}"));
    }
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).map_err(|e| e.to_string())?;
    let mut config = ClientConfig::builder_with_provider(provider(cs)).with_protocol_versions(&[version_of(cs)]).map_err(|e| e.to_string())?.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::store(store);
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok(StreamOwned::new(conn, sock))
}

/// POSTs `body` to /echo and returns the response body; the connection ends with close_notify.
fn echo(tls: &mut StreamOwned<ClientConnection, TcpStream>, body: &[u8]) -> Result<Vec<u8>> {
    let head = format!("POST /echo HTTP/1.1\r\nHost: {ORIGIN}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    tls.write_all(head.as_bytes()).map_err(|e| format!("sending the request: {e}"))?;
    tls.write_all(body).map_err(|e| format!("sending the body: {e}"))?;
    tls.flush().map_err(|e| e.to_string())?;
    let (head, mut got) = read_head(tls).map_err(|e| format!("reading the response head: {e}"))?.ok_or("no response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("response {:?}", head.lines().next()));
    }
    let len = content_length(&head).ok_or("no Content-Length")?;
    read_to(tls, &mut got, len).map_err(|e| format!("reading the response body: {e}"))?;
    // cork closes with close_notify (sent by the kernel on a kTLS leg): a clean end of stream.
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).map_err(|e| format!("after the body: {e}"))?;
    got.extend_from_slice(&rest);
    Ok(got)
}

fn stat(name: &str) -> u64 {
    tls_stat().and_then(|s| s.into_iter().find(|(n, _)| n == name).map(|(_, v)| v)).unwrap_or(0)
}

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

/// Whether cork moved at least `least` body bytes on io_uring, where this kernel lets it.
fn moved_on_ring(cork: &Cork, least: u64) -> Result<()> {
    let on_ring = metric(cork, "cork_body_bytes_on_io_uring_total ");
    if metric(cork, "cork_io_uring_supported ") == 0 {
        println!("[guest]   io_uring unavailable here: bodies stayed on the tokio path ({on_ring} bytes on the ring)");
        return if on_ring == 0 { Ok(()) } else { Err(format!("{on_ring} body bytes on a ring that is not supported")) };
    }
    println!("[guest]   {on_ring} body bytes moved on io_uring");
    if on_ring < least {
        return Err(format!("only {on_ring} body bytes moved on io_uring, expected at least {least}"));
    }
    Ok(())
}

/// One bumped echo of `PAYLOAD` bytes each way with `cs` forced on both legs. Returns the tickets
/// the client received.
fn bumped_echo(cork: &Cork, origin: &Origin, cs: CipherSuite, seed: u32) -> Result<usize> {
    let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(8), tickets: AtomicUsize::new(0) });
    let mut tls = connect(cork, ORIGIN, origin.addr.port(), &cork.ca, cs, store.clone())?;
    let body = pattern(PAYLOAD, seed);
    let got = echo(&mut tls, &body)?;
    let negotiated = tls.conn.negotiated_cipher_suite().map(|s| s.suite());
    if negotiated != Some(cs) {
        return Err(format!("client leg negotiated {negotiated:?}"));
    }
    if got.len() != body.len() || sha(&got) != sha(&body) {
        return Err(format!("echo mismatch: sent {} bytes sha256 {}, got {} bytes sha256 {}", body.len(), sha(&body), got.len(), sha(&got)));
    }
    Ok(store.tickets.load(Ordering::SeqCst))
}

fn no_tls_phase() -> i32 {
    let mut checks = Checks { failed: 0 };
    let support = cork_proxy::ktls_leg::support();
    checks.check(
        "cork's probe refuses without the tls module",
        match support {
            KtlsSupport::Unsupported { reason } if tls_stat().is_none() => {
                println!("[guest]   {}", cork_proxy::ktls_leg::describe(cork_policy::KtlsMode::Auto));
                let _ = reason;
                Ok(())
            }
            other => Err(format!("unexpected {other:?}")),
        },
    );
    let origin = start_origin(Some(CipherSuite::TLS13_AES_128_GCM_SHA256));
    match start_cork(&origin, Path::new("/tmp/cork-no-tls"), "auto") {
        Ok(cork) => {
            checks.check("/metrics says cork_ktls_supported 0", if metric(&cork, "cork_ktls_supported ") == 0 && cork.metrics_text().contains("cork_ktls_supported 0") { Ok(()) } else { Err("gauge not 0".into()) });
            checks.check("a bumped connection without kTLS still carries 1 MiB each way on rustls", bumped_echo(&cork, &origin, CipherSuite::TLS13_AES_128_GCM_SHA256, 1).map(|_| ()));
            checks.check("no leg was offered to the kernel", if legs(&cork, "kernel") + legs(&cork, "userspace") == 0 { Ok(()) } else { Err("legs were counted".into()) });
        }
        Err(e) => checks.check("start cork", Err(e)),
    }
    checks.failed as i32
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--bench") {
        std::process::exit(bench_mode());
    }
    if args.get(1).map(String::as_str) == Some("--no-tls") {
        let failed = no_tls_phase();
        println!("[guest] cork --no-tls phase: {}", if failed == 0 { "all checks passed".to_string() } else { format!("{failed} checks failed") });
        std::process::exit(if failed == 0 { 0 } else { 1 });
    }
    let mut checks = Checks { failed: 0 };
    checks.check(
        "cork's probe accepts with the tls module",
        match cork_proxy::ktls_leg::support() {
            KtlsSupport::Supported => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    println!("[guest]   {}", cork_proxy::ktls_leg::describe(cork_policy::KtlsMode::Auto));

    // A cipher the kernel refuses, before this process has ever used it (cork-ktls remembers
    // only successes): with the ChaCha20-Poly1305 template module unloaded, both legs must stay
    // on rustls, with the kernel's reason audited, and the data still flow.
    checks.check("a cipher the kernel refuses keeps both legs on rustls, audited", kernel_refusal());

    // Every suite, forced on both legs: the client offers only it, the origin accepts only it.
    for (i, &cs) in SUITES.iter().enumerate() {
        let origin = start_origin(Some(cs));
        let cork = match start_cork(&origin, &PathBuf::from(format!("/tmp/cork-{i}")), "auto") {
            Ok(c) => c,
            Err(e) => {
                checks.check(&format!("{cs:?}: start cork"), Err(e));
                continue;
            }
        };
        let (tx0, rx0) = (stat("TlsTxSw"), stat("TlsRxSw"));
        let trials0 = cork_ktls::trial_sockets();
        let result = bumped_echo(&cork, &origin, cs, i as u32).and_then(|tickets| {
            if is_tls13(cs) && tickets == 0 {
                return Err("the client received no NewSessionTicket from cork's kTLS leg".into());
            }
            let kernel = legs(&cork, "kernel");
            if kernel != 2 || legs(&cork, "userspace") != 0 {
                let log = std::fs::read_to_string(&cork.audit).unwrap_or_default();
                let why: Vec<&str> = log.lines().filter(|l| l.contains("tls.ktls_fallback")).collect();
                return Err(format!("expected both legs in the kernel, metrics say {kernel} kernel, {} userspace; audit: {why:?}", legs(&cork, "userspace")));
            }
            // Two sockets (client-facing, upstream), TX and RX each, plus whatever cipher trials
            // on scratch sockets this connection started (the first connection of the process
            // tries every suite cork may negotiate).
            let trials1 = cork_ktls::trial_sockets();
            let (trial_tx, trial_rx) = (trials1.0 - trials0.0, trials1.1 - trials0.1);
            let (tx, rx) = (stat("TlsTxSw") - tx0, stat("TlsRxSw") - rx0);
            println!("[guest]   {cs:?}: {tickets} tickets; TlsTxSw +{tx}, TlsRxSw +{rx} (2 offloaded sockets + {trial_tx}/{trial_rx} trials)");
            if tx != 2 + trial_tx || rx != 2 + trial_rx {
                return Err(format!("tls_stat rose by TX {tx} / RX {rx}, expected {} / {}", 2 + trial_tx, 2 + trial_rx));
            }
            // Past the buffered head of each body, both bodies moved between the kTLS sockets.
            moved_on_ring(&cork, 2 * (PAYLOAD - BUFFERED - 64 * 1024) as u64)
        });
        checks.check(&format!("{cs:?} on both legs: {PAYLOAD} bytes each way through cork, kernel records, io_uring bodies, close_notify"), result);
    }
    let decrypt_errors = stat("TlsDecryptError");
    checks.check("no kTLS decrypt errors", if decrypt_errors == 0 { Ok(()) } else { Err(format!("TlsDecryptError {decrypt_errors}")) });

    // An upstream KeyUpdate: followed from 6.14, a clean, audited end before.
    checks.check(
        "an upstream KeyUpdate is followed (rekeying kernels) or ends the connection cleanly, audited",
        key_update("/keyupdate", "/tmp/cork-keyupdate").and_then(|cork| moved_on_ring(&cork, (512 * 1024 - BUFFERED - 64 * 1024) as u64)),
    );

    // An unscanned body is spliced between the kTLS sockets; a KeyUpdate in the middle of the
    // splice hands back to the kTLS stream, which ends the connection the same way.
    checks.check("an unscanned video/mp4 body is spliced between the kTLS sockets", media_spliced());
    // The splice starts once the relay has no body bytes of its own left; on a loaded host the
    // relay can read all 512 KiB before the KeyUpdate itself, so nothing is spliced and the
    // case is not exercised (seen once in CI, the connection still ending cleanly). Up to three
    // tries, each checked in full, and one must have spliced.
    let mut media = Err("not run".to_string());
    for attempt in 0..3 {
        media = key_update("/keyupdate-media", &format!("/tmp/cork-keyupdate-media-{attempt}")).and_then(|cork| match metric(&cork, "cork_body_bytes_spliced_total ") {
            0 => Err("nothing was spliced before the KeyUpdate".into()),
            n => {
                println!("[guest]   {n} body bytes spliced before the KeyUpdate");
                Ok(())
            }
        });
        match &media {
            Err(e) if e.starts_with("nothing was spliced") => println!("[guest]   try {}: {e}", attempt + 1),
            _ => break,
        }
    }
    checks.check("an upstream KeyUpdate in the middle of a splice is followed or ends the connection cleanly", media);

    // HTTP/2 runs on kTLS legs too.
    checks.check("an h2 connection runs on two kTLS legs, 600 KB down and 400 KB up intact", h2_on_ktls());

    // The policy switch: both legs stay on rustls, nothing new in the kernel.
    checks.check("limits.ktls: off keeps both legs on rustls and still carries the data", ktls_off());

    // A passthrough host is spliced, untouched.
    checks.check("a passthrough host is relayed with splice", passthrough());

    // The real `cork run` binary, as operators start it.
    checks.check("the cork binary says ktls: supported and runs both legs on kTLS", real_binary());

    println!("[guest]   /proc/net/tls_stat: {:?}", tls_stat().unwrap_or_default());
    if checks.failed == 0 {
        println!("[guest] all cork kTLS checks passed");
        std::process::exit(0);
    }
    println!("[guest] {} cork kTLS checks failed", checks.failed);
    std::process::exit(1);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 on kTLS: an h2 origin (tokio, h2) and an h2 client through cork.

/// Serves h2 on `cs`: `GET /h2?n=N` answers N pattern bytes, anything else echoes its body.
fn start_h2_origin(cs: CipherSuite) -> Origin {
    let cert = rcgen::generate_simple_self_signed(vec![ORIGIN.to_string()]).expect("rcgen");
    let der = cert.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let mut config = ServerConfig::builder_with_provider(provider(cs)).with_protocol_versions(&[version_of(cs)]).expect("versions").with_no_client_auth().with_single_cert(vec![der.clone()], PrivateKeyDer::Pkcs8(key)).expect("origin cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("origin bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("origin addr");
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else { return };
                    let Ok(mut conn) = h2::server::handshake(tls).await else { return };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let path = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
                            let mut body = request.into_body();
                            let mut got = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                got.extend_from_slice(&chunk);
                            }
                            let answer = match path.strip_prefix("/h2?n=").and_then(|n| n.parse().ok()) {
                                Some(n) => pattern(n, 13),
                                None => got,
                            };
                            let head = http::Response::builder().status(200).header("content-type", "application/octet-stream").body(()).expect("response");
                            let Ok(mut send) = respond.send_response(head, false) else { return };
                            let _ = send.send_data(answer.into(), true);
                        });
                    }
                });
            }
        });
    });
    Origin { addr, cert: der }
}

/// Sends `body` (empty: a GET) to `path` on `sender` and returns the answer's body.
async fn h2_request(sender: &mut h2::client::SendRequest<bytes::Bytes>, path: &str, body: Vec<u8>) -> Result<Vec<u8>> {
    let request = http::Request::builder().method(if body.is_empty() { "GET" } else { "POST" }).uri(format!("https://{ORIGIN}{path}")).body(()).map_err(|e| e.to_string())?;
    let (response, mut send) = sender.send_request(request, body.is_empty()).map_err(|e| format!("send_request: {e}"))?;
    if !body.is_empty() {
        let mut rest = bytes::Bytes::from(body);
        while !rest.is_empty() {
            send.reserve_capacity(rest.len().min(64 * 1024));
            let room = std::future::poll_fn(|cx| send.poll_capacity(cx)).await.ok_or("the stream closed")?.map_err(|e| e.to_string())?;
            let piece = rest.split_to(room.min(rest.len()));
            send.send_data(piece, rest.is_empty()).map_err(|e| e.to_string())?;
        }
    }
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("response body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    Ok(got)
}

/// An h2 client negotiates h2 end to end through cork; both of cork's legs must be kernel
/// legs, and a 600 KB download and a 400 KB upload (echoed) must arrive byte for byte.
fn h2_on_ktls() -> Result<()> {
    let cs = CipherSuite::TLS13_AES_256_GCM_SHA384;
    let origin = start_h2_origin(cs);
    let cork = start_cork(&origin, Path::new("/tmp/cork-h2"), "auto")?;
    let (tx0, rx0) = (stat("TlsTxSw"), stat("TlsRxSw"));
    // The CONNECT, as the HTTP/1.1 client does it; the rest is async.
    let mut sock = TcpStream::connect(cork.proxy).map_err(|e| format!("connecting to cork: {e}"))?;
    write!(sock, "CONNECT {ORIGIN}:{port} HTTP/1.1\r\nHost: {ORIGIN}:{port}\r\n\r\n", port = origin.addr.port()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        sock.read_exact(&mut byte).map_err(|e| format!("reading the CONNECT answer: {e}"))?;
        answer.push(byte[0]);
    }
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!("CONNECT answered {:?}", String::from_utf8_lossy(&answer)));
    }
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cork.ca.clone()).map_err(|e| e.to_string())?;
    let mut config = ClientConfig::builder_with_provider(provider(cs)).with_protocol_versions(&[version_of(cs)]).map_err(|e| e.to_string())?.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let (download, upload, echoed) = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(sock).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(ORIGIN.to_string()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| format!("TLS through cork: {e}"))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(format!("cork negotiated {:?}, not h2", tls.get_ref().1.alpn_protocol().map(String::from_utf8_lossy)));
        }
        let (mut sender, connection) = h2::client::handshake(tls).await.map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let download = tokio::time::timeout(Duration::from_secs(120), h2_request(&mut sender, "/h2?n=600000", Vec::new())).await.map_err(|_| "the download timed out".to_string())??;
        let upload = pattern(400_000, 17);
        let echoed = tokio::time::timeout(Duration::from_secs(120), h2_request(&mut sender, "/echo", upload.clone())).await.map_err(|_| "the upload timed out".to_string())??;
        Ok::<_, String>((download, upload, echoed))
    })?;
    if download != pattern(600_000, 13) {
        return Err(format!("the h2 download differs ({} bytes)", download.len()));
    }
    if echoed != upload {
        return Err(format!("the h2 upload came back different ({} of {} bytes)", echoed.len(), upload.len()));
    }
    if legs(&cork, "kernel") != 2 {
        return Err(format!("expected both h2 legs in the kernel, metrics say {} kernel, {} userspace", legs(&cork, "kernel"), legs(&cork, "userspace")));
    }
    let (tx, rx) = (stat("TlsTxSw") - tx0, stat("TlsRxSw") - rx0);
    if tx < 2 || rx < 2 {
        return Err(format!("tls_stat rose by TX {tx} / RX {rx}, expected both h2 legs"));
    }
    println!("[guest]   h2 on kTLS: 600000 bytes down, 400000 up and back; tls_stat TX +{tx}, RX +{rx}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `--bench`: figures for `cargo xtask bench`, from a boot of their own.

/// Requests per path and run. Each is a fresh bumped connection (both handshakes) carrying a
/// 1 MiB POST that the origin echoes: 2 MiB through cork per request.
const BENCH_REQUESTS: usize = 8;

/// The bumped paths this kernel can run side by side, as (name, `limits` lines, copies per byte).
const BENCH_PATHS: &[(&str, &str, &str)] = &[
    ("bumped HTTP/1.1, kTLS records, io_uring", "  ktls: auto\n  io_uring: auto\n", "2 (the kernel decrypts into the ring's buffer, scanned there, encrypted from the same buffer)"),
    ("bumped HTTP/1.1, kTLS records, tokio", "  ktls: auto\n  io_uring: off\n", "3 (the kernel decrypts into the wire buffer, copy to the scan buffer, the kernel encrypts)"),
    ("bumped HTTP/1.1, rustls records, tokio", "  ktls: off\n  io_uring: off\n", "2 + userspace decrypt/scan/encrypt (ciphertext read and written)"),
];

/// Prints one `[bench] {json}` line per path. TCG emulates the CPU, so the times say nothing
/// about speed; syscall counts and where bytes moved are what carry over to a real kTLS host.
fn bench_mode() -> i32 {
    let cs = CipherSuite::TLS13_AES_128_GCM_SHA256;
    let origin = start_origin(Some(cs));
    let strace = Path::new("/usr/bin/strace").exists();
    for (i, (name, limits, copies)) in BENCH_PATHS.iter().enumerate() {
        let dir = PathBuf::from(format!("/tmp/cork-bench-{i}"));
        let mut row = serde_json::json!({ "path": name, "copies": copies, "requests": BENCH_REQUESTS, "bytes_per_request": 2 * PAYLOAD });
        match bench_path(&origin, cs, &dir, limits, strace) {
            Ok(fields) => {
                for (k, v) in fields {
                    row[k] = v;
                }
            }
            Err(e) => row["failure"] = serde_json::Value::String(e),
        }
        println!("[bench] {row}");
    }
    0
}

/// One path: a timed run, then the same load under `strace -c -f` for the syscall count.
fn bench_path(origin: &Origin, cs: CipherSuite, dir: &Path, limits: &str, strace: bool) -> Result<Vec<(&'static str, serde_json::Value)>> {
    let (mut child, cork, _) = spawn_cork(dir, &policy_yaml_with(origin, dir, limits)?)?;
    let result = (|| {
        // One connection first, so the process's cipher trials are not timed.
        bumped_echo(&cork, origin, cs, 1)?;
        let (legs0, ring0) = (legs(&cork, "kernel"), metric(&cork, "cork_body_bytes_on_io_uring_total "));
        let started = std::time::Instant::now();
        for seed in 0..BENCH_REQUESTS {
            bumped_echo(&cork, origin, cs, 10 + seed as u32)?;
        }
        let secs = started.elapsed().as_secs_f64();
        let mut fields = vec![
            ("secs", serde_json::json!(secs)),
            ("kernel_legs", serde_json::json!(legs(&cork, "kernel") - legs0)),
            ("ring_bytes", serde_json::json!(metric(&cork, "cork_body_bytes_on_io_uring_total ") - ring0)),
        ];
        if strace {
            let (total, enters) = strace_count(child.id(), &dir.join("strace.txt"), || {
                for seed in 0..BENCH_REQUESTS {
                    bumped_echo(&cork, origin, cs, 100 + seed as u32)?;
                }
                Ok(())
            })?;
            fields.push(("syscalls", serde_json::json!(total)));
            fields.push(("io_uring_enter", serde_json::json!(enters)));
        }
        Ok(fields)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Runs `load` with `strace -c -f` attached to `pid`; returns (all syscalls, io_uring_enter).
fn strace_count(pid: u32, out: &Path, load: impl FnOnce() -> Result<()>) -> Result<(u64, u64)> {
    let mut strace = std::process::Command::new("/usr/bin/strace")
        .args(["-c", "-f", "-q", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("strace: {e}"))?;
    // Attaching to every thread takes a while under emulation.
    thread::sleep(Duration::from_secs(2));
    let loaded = load();
    // SIGINT makes strace detach and write its summary.
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(strace.id() as libc::pid_t, libc::SIGINT) };
    let _ = strace.wait();
    loaded?;
    let text = std::fs::read_to_string(out).map_err(|e| format!("reading {}: {e}", out.display()))?;
    let calls = |syscall: &str| {
        text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|f| f.last() == Some(&syscall) && f.len() >= 5).and_then(|f| f[3].parse::<u64>().ok())
    };
    let total = calls("total").ok_or_else(|| format!("no total line in strace's summary: {text}"))?;
    Ok((total, calls("io_uring_enter").unwrap_or(0)))
}

/// An upstream KeyUpdate, asking for one back, after `n` body bytes of `path` (`/keyupdate`
/// or `/keyupdate-media`). Where the kernel can rekey, cork's upstream leg must follow it both
/// ways and the whole body must arrive intact; elsewhere the connection must end cleanly,
/// audited, with only bytes sent before the KeyUpdate delivered. Returns the cork, for the
/// caller's own checks of how the body moved.
fn key_update(path: &str, dir: &str) -> Result<Cork> {
    let rekey = rekey_expected()?;
    let cs = CipherSuite::TLS13_AES_128_GCM_SHA256;
    let origin = start_origin(Some(cs));
    let cork = start_cork(&origin, Path::new(dir), "auto")?;
    let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(8), tickets: AtomicUsize::new(0) });
    let mut tls = connect(&cork, ORIGIN, origin.addr.port(), &cork.ca, cs, store)?;
    // Long enough that the body is on io_uring (or splice) when the KeyUpdate record arrives:
    // the transfer stops at it and hands back to the kTLS stream, which handles the record.
    let n = 512 * 1024;
    let head = format!("GET {path}?n={n} HTTP/1.1\r\nHost: {ORIGIN}\r\n\r\n");
    tls.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    let expected = pattern(2 * n, 7);
    // Whatever arrives (head and some body, or nothing) until the whole body or the end.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        let body_len = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| got.len() - i - 4);
        if body_len.is_some_and(|b| b >= expected.len()) {
            break Ok(());
        }
        match tls.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(k) => got.extend_from_slice(&chunk[..k]),
            Err(e) => break Err(e),
        }
    };
    drop(tls);
    let body = match got.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => got[i + 4..].to_vec(),
        None => Vec::new(),
    };
    println!("[guest]   KeyUpdate: client got {} bytes ({} of body) then {:?}", got.len(), body.len(), end.as_ref().map(|_| "the end"));
    if body[..] != expected[..body.len().min(expected.len())] || body.len() > expected.len() {
        return Err("the body that arrived is not a prefix of what the origin sent".into());
    }
    if legs(&cork, "kernel") != 2 {
        return Err(format!("expected both legs in the kernel, {} were", legs(&cork, "kernel")));
    }
    if !rekey {
        if body.len() >= expected.len() {
            return Err("the whole body arrived although half of it was sent under a key the kernel cannot have".into());
        }
        audit_line(&cork, "tls.key_update_unsupported")?;
        return Ok(cork);
    }
    if body.len() != expected.len() {
        let log = std::fs::read_to_string(&cork.audit).unwrap_or_default();
        let metrics = cork.metrics_text();
        let counters: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#') && (l.starts_with("cork_errors_total") || l.starts_with("cork_ktls") || l.starts_with("cork_body"))).collect();
        return Err(format!("only {} of {} body bytes arrived although the kernel can rekey; audit: {:?}; metrics: {counters:?}", body.len(), expected.len(), log.lines().collect::<Vec<_>>()));
    }
    // Counted when the connection ends, after the client's close.
    for by in ["peer", "cork"] {
        let series = format!("cork_ktls_key_updates_total{{leg=\"upstream\",by=\"{by}\"}} ");
        let mut seen = 0;
        for _ in 0..100 {
            seen = metric(&cork, &series);
            if seen > 0 {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if seen != 1 {
            return Err(format!("{series}is {seen}, expected 1"));
        }
    }
    let log = std::fs::read_to_string(&cork.audit).unwrap_or_default();
    if log.contains("tls.key_update_unsupported") {
        return Err("a followed KeyUpdate was audited as unsupported".into());
    }
    println!("[guest]   the upstream leg followed the origin's KeyUpdate and answered with its own");
    Ok(cork)
}

/// The first audit line containing `needle`, once cork has written it (records are written
/// after the relay ends).
fn audit_line(cork: &Cork, needle: &str) -> Result<String> {
    for _ in 0..100 {
        let log = std::fs::read_to_string(&cork.audit).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            println!("[guest]   audit: {line}");
            return Ok(line.to_string());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no audit record with {needle:?} in {}", cork.audit.display()))
}

/// A `video/mp4` response, which the guest's policy leaves unscanned: after its head, the body
/// moves between the two kTLS sockets by splice, never through userspace.
fn media_spliced() -> Result<()> {
    let cs = CipherSuite::TLS13_AES_256_GCM_SHA384;
    let origin = start_origin(Some(cs));
    let cork = start_cork(&origin, Path::new("/tmp/cork-media"), "auto")?;
    let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(8), tickets: AtomicUsize::new(0) });
    let mut tls = connect(&cork, ORIGIN, origin.addr.port(), &cork.ca, cs, store)?;
    let n = 2 * PAYLOAD;
    let head = format!("GET /media?n={n} HTTP/1.1\r\nHost: {ORIGIN}\r\nConnection: close\r\n\r\n");
    tls.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    let (head, mut got) = read_head(&mut tls).map_err(|e| format!("reading the response head: {e}"))?.ok_or("no response")?;
    if !head.starts_with("HTTP/1.1 200") || !head.contains("video/mp4") {
        return Err(format!("response head {head:?}"));
    }
    read_to(&mut tls, &mut got, n).map_err(|e| format!("reading the body: {e}"))?;
    let want = pattern(n, 11);
    if got.len() != n || sha(&got) != sha(&want) {
        return Err(format!("body mismatch: {} bytes sha256 {}, expected {n} bytes sha256 {}", got.len(), sha(&got), sha(&want)));
    }
    if legs(&cork, "kernel") != 2 {
        return Err(format!("expected both legs in the kernel, {} were", legs(&cork, "kernel")));
    }
    let spliced = metric(&cork, "cork_body_bytes_spliced_total ");
    println!("[guest]   {spliced} of {n} body bytes spliced between the kTLS sockets");
    // All but what arrived with the head (one record's worth at most).
    if spliced < (n - 16 * 1024) as u64 || spliced > n as u64 {
        return Err(format!("{spliced} bytes spliced\n{}", cork.metrics_text()));
    }
    let line = audit_line(&cork, "\"unscanned\":\"video/mp4\"")?;
    if !line.contains("\"relay\":\"splice\"") {
        return Err(format!("the audit record names no splice: {line}"));
    }
    Ok(())
}

fn ktls_off() -> Result<()> {
    let cs = CipherSuite::TLS13_AES_256_GCM_SHA384;
    let origin = start_origin(Some(cs));
    let cork = start_cork(&origin, Path::new("/tmp/cork-off"), "off")?;
    let (tx0, rx0) = (stat("TlsTxSw"), stat("TlsRxSw"));
    bumped_echo(&cork, &origin, cs, 42)?;
    let (tx, rx) = (stat("TlsTxSw") - tx0, stat("TlsRxSw") - rx0);
    if tx != 0 || rx != 0 {
        return Err(format!("tls_stat rose by TX {tx} / RX {rx} with kTLS off"));
    }
    if legs(&cork, "kernel") != 0 {
        return Err("a leg was offloaded with kTLS off".into());
    }
    // Bodies on rustls legs have no plaintext socket to move on io_uring.
    match metric(&cork, "cork_body_bytes_on_io_uring_total ") {
        0 => Ok(()),
        n => Err(format!("{n} body bytes moved on io_uring although both legs were on rustls")),
    }
}

fn passthrough() -> Result<()> {
    let cs = CipherSuite::TLS13_AES_128_GCM_SHA256;
    let origin = start_origin(Some(cs));
    let cork = start_cork(&origin, Path::new("/tmp/cork-pass"), "auto")?;
    let store = Arc::new(CountingStore { inner: ClientSessionMemoryCache::new(8), tickets: AtomicUsize::new(0) });
    // The client talks TLS with the origin itself, through cork's tunnel.
    let mut tls = connect(&cork, PASSTHROUGH, origin.addr.port(), &origin.cert, cs, store)?;
    let body = pattern(256 * 1024, 9);
    let got = echo(&mut tls, &body)?;
    if got != body {
        return Err(format!("echo mismatch through the tunnel ({} bytes back)", got.len()));
    }
    // The tunnel ends (and is counted) once both directions have ended.
    drop(tls);
    // io_uring where the guest kernel allows it, splice otherwise; never a userspace copy.
    for _ in 0..100 {
        if metric(&cork, "cork_connections_total{kind=\"tunnel_splice\"} ") + metric(&cork, "cork_connections_total{kind=\"tunnel_uring\"} ") == 1 {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no tunnel_splice or tunnel_uring connection in /metrics:\n{}", cork.metrics_text()))
}

fn busybox(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("starting {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn kernel_refusal() -> Result<()> {
    // Nothing holds it: the cork-ktls guest's sockets are gone with its process.
    busybox(&["rmmod", "chacha20poly1305"])?;
    let result = (|| {
        let cs = CipherSuite::TLS13_CHACHA20_POLY1305_SHA256;
        let origin = start_origin(Some(cs));
        let cork = start_cork(&origin, Path::new("/tmp/cork-refused"), "auto")?;
        let (tx0, rx0) = (stat("TlsTxSw"), stat("TlsRxSw"));
        let trials0 = cork_ktls::trial_sockets();
        bumped_echo(&cork, &origin, cs, 77)?;
        // Trials of the suites the kernel does run (before it meets ChaCha20) count too.
        let trials1 = cork_ktls::trial_sockets();
        let (tx, rx) = (stat("TlsTxSw") - tx0 - (trials1.0 - trials0.0), stat("TlsRxSw") - rx0 - (trials1.1 - trials0.1));
        if legs(&cork, "userspace") != 2 || legs(&cork, "kernel") != 0 {
            return Err(format!("expected both legs on rustls, metrics say {} kernel, {} userspace", legs(&cork, "kernel"), legs(&cork, "userspace")));
        }
        if tx != 0 || rx != 0 {
            return Err(format!("tls_stat rose by TX {tx} / RX {rx} although the kernel refused the cipher"));
        }
        let log = std::fs::read_to_string(&cork.audit).unwrap_or_default();
        let reasons: Vec<&str> = log.lines().filter(|l| l.contains("tls.ktls_fallback")).collect();
        if reasons.len() != 2 || !reasons.iter().all(|l| l.contains("refused Chacha20Poly1305")) {
            return Err(format!("expected two tls.ktls_fallback records naming the refused cipher, audit has {reasons:?}"));
        }
        println!("[guest]   {}", reasons[0]);
        Ok(())
    })();
    busybox(&["modprobe", "chacha20poly1305"])?;
    result
}

/// The distinct (protocol version, AEAD) pairs among the suites cork offers (ring's defaults):
/// the cipher trials a fresh cork process runs before its first kTLS connection.
fn fresh_process_trials() -> u64 {
    let pairs: HashSet<(bool, &str)> = ring::default_provider()
        .cipher_suites
        .iter()
        .map(|s| {
            let name = format!("{:?}", s.suite());
            let aead = ["AES_128_GCM", "AES_256_GCM", "CHACHA20"].into_iter().find(|a| name.contains(a)).unwrap_or("other");
            (is_tls13(s.suite()), aead)
        })
        .collect();
    pairs.len() as u64
}

/// Starts the real `cork run` binary (staged as `/cork` by `cargo xtask vm`) on `yaml`; returns
/// the process, how to reach it and its start-up lines.
fn spawn_cork(dir: &Path, yaml: &str) -> Result<(std::process::Child, Cork, Vec<String>)> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, yaml).map_err(|e| e.to_string())?;
    let stderr = std::fs::File::create(dir.join("stderr")).map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new("/cork")
        .args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--config"])
        .arg(&policy)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting /cork: {e}"))?;
    let started = (|| {
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| e.to_string())?;
            let last = line.starts_with("  export NODE_EXTRA_CA_CERTS=");
            lines.push(line);
            if last {
                break;
            }
        }
        let first = lines.first().ok_or("cork printed nothing")?;
        let addr_after = |marker: &str| -> Result<SocketAddr> {
            let rest = &first[first.find(marker).ok_or(format!("no {marker:?} in {first:?}"))? + marker.len()..];
            rest.split([' ', '/']).find(|s| !s.is_empty()).and_then(|a| a.parse().ok()).ok_or(format!("no address after {marker:?}"))
        };
        let (proxy, admin) = (addr_after("listening on ")?, addr_after("admin on http://")?);
        let pem = std::fs::read(dir.join("state/ca.pem")).map_err(|e| e.to_string())?;
        let ca = rustls_pemfile::certs(&mut pem.as_slice()).next().ok_or("no CA certificate")?.map_err(|e| e.to_string())?;
        Ok::<_, String>((Cork { proxy, metrics: MetricsSource::Admin(admin), ca, audit: dir.join("state/audit.jsonl") }, lines))
    })();
    match started {
        Ok((cork, lines)) => Ok((child, cork, lines)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("{e}; cork stderr: {}", std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()))
        }
    }
}

/// Runs `/cork run` (staged next to this test by `cargo xtask vm`) against a test origin.
fn real_binary() -> Result<()> {
    let cs = CipherSuite::TLS13_AES_128_GCM_SHA256;
    let origin = start_origin(Some(cs));
    let dir = Path::new("/tmp/cork-binary");
    let (mut child, cork, lines) = spawn_cork(dir, &policy_yaml(&origin, dir, "auto")?)?;
    let admin = match &cork.metrics {
        MetricsSource::Admin(admin) => *admin,
        MetricsSource::InProcess(_) => unreachable!("a cork process answers on its admin listener"),
    };
    let result = (|| {
        let ktls = lines.iter().find(|l| l.starts_with("ktls: ")).ok_or(format!("no ktls: line in {lines:?}"))?;
        println!("[guest]   cork says: {ktls}");
        if !ktls.starts_with("ktls: supported (") {
            return Err(format!("start-up line {ktls:?}"));
        }
        let status = admin_get(admin, "/status")?;
        // The kTLS line comes first; the io_uring line follows it.
        if status.lines().next() != Some(ktls.as_str()) {
            return Err(format!("/status says {status:?}"));
        }
        let (tx0, rx0) = (stat("TlsTxSw"), stat("TlsRxSw"));
        bumped_echo(&cork, &origin, cs, 99)?;
        let (tx, rx) = (stat("TlsTxSw") - tx0, stat("TlsRxSw") - rx0);
        // A fresh process tries each (version, AEAD) pair cork may negotiate once.
        let trials = fresh_process_trials();
        println!("[guest]   cork binary: TlsTxSw +{tx}, TlsRxSw +{rx} (2 offloaded sockets + {trials} trials in a fresh process)");
        if metric(&cork, "cork_ktls_supported ") != 1 || legs(&cork, "kernel") != 2 || legs(&cork, "userspace") != 0 {
            return Err(format!("/metrics:\n{}", cork.metrics_text()));
        }
        if tx != 2 + trials || rx != 2 + trials {
            return Err(format!("tls_stat rose by TX {tx} / RX {rx}, expected {} each", 2 + trials));
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        println!("[guest]   cork stderr: {}", std::fs::read_to_string(dir.join("stderr")).unwrap_or_default());
    }
    result
}
