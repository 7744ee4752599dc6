//! The origin, exercised with a real client: curl, trusting only the origin's own test CA,
//! reaching the test name through `--resolve` on a 127.0.0.x address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;

use bench_harness::origin::{pattern_bytes, Origin, OriginConfig, INJECT_HTML};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const NAME: &str = "origin.test";
const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

struct Curl {
    port: u16,
    cacert: std::path::PathBuf,
}

struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Curl {
    fn new(port: u16, cacert: &Path) -> Self {
        Self { port, cacert: cacert.to_owned() }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{NAME}:{}{path}", self.port)
    }

    /// Runs curl asynchronously (the origin shares this runtime) with the test CA and name.
    async fn run(&self, args: &[&str]) -> Out {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "--cacert"])
            .arg(&self.cacert)
            .arg("--resolve")
            .arg(format!("{NAME}:{}:{IP}", self.port))
            .args(args)
            .output()
            .await
            .expect("curl must be installed");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "curl {args:?} failed: {}", out.stderr);
        out.stdout
    }

    async fn json(&self, args: &[&str]) -> serde_json::Value {
        let body = self.ok(args).await;
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body))
        })
    }
}

async fn start() -> (Origin, tempfile::TempDir, Curl) {
    let cfg = OriginConfig {
        https: SocketAddr::new(IP, 0),
        http: Some(SocketAddr::new(IP, 0)),
        names: vec![NAME.into()],
        ips: vec![IP],
        alpn: bench_harness::origin::default_alpn(),
    };
    let origin = Origin::start(cfg).await.expect("origin starts");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, origin.ca_pem()).unwrap();
    let curl = Curl::new(origin.https_addr().port(), &ca);
    (origin, dir, curl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_the_pattern_with_and_without_length() {
    let (origin, _dir, curl) = start().await;
    for version in ["--http1.1", "--http2"] {
        let body = curl.ok(&[version, &curl.url("/bytes/100000")]).await;
        assert_eq!(body, pattern_bytes(100_000), "{version} /bytes");
        let body = curl.ok(&[version, &curl.url("/chunked/70000")]).await;
        assert_eq!(body, pattern_bytes(70_000), "{version} /chunked");
    }
    // Content-Length on /bytes, chunked framing on /chunked (HTTP/1.1).
    let head = curl.ok(&["--http1.1", "-D", "-", "-o", "/dev/null", &curl.url("/bytes/5")]).await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.contains("content-length: 5"), "{head}");
    let head = curl.ok(&["--http1.1", "-D", "-", "-o", "/dev/null", &curl.url("/chunked/5")]).await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // HEAD keeps the length and sends no body, on both protocols.
    for version in ["--http1.1", "--http2"] {
        let head = curl.ok(&[version, "-I", &curl.url("/bytes/123")]).await;
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.contains("content-length: 123"), "{version}: {head}");
    }
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_is_hashed_and_echo_reflects_the_request() {
    let (origin, dir, curl) = start().await;
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    let at_file = format!("@{}", file.display());
    let want = hex::encode(Sha256::digest(&payload));
    for (version, method) in [("--http1.1", "POST"), ("--http2", "PUT")] {
        let v = curl
            .json(&[version, "-X", method, "-H", "Expect: 100-continue", "--data-binary", &at_file, &curl.url("/upload")])
            .await;
        assert_eq!(v["len"], payload.len() as u64, "{version}");
        assert_eq!(v["sha256"], want, "{version}");
    }

    let v = curl.json(&["--http1.1", "-H", "X-Test: one", "-d", "hello body", &curl.url("/echo?a=1&b=2")]).await;
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["query"], "a=1&b=2");
    assert_eq!(v["body"], "hello body");
    assert_eq!(v["http_version"], "HTTP/1.1");
    let headers = v["headers"].as_array().unwrap();
    assert!(headers.iter().any(|h| h[0] == "x-test" && h[1] == "one"), "{headers:?}");
    let v = curl.json(&["--http2", &curl.url("/echo")]).await;
    assert_eq!(v["http_version"], "HTTP/2");
    assert_eq!(v["method"], "GET");
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_gzip_inject_status_and_bad_input() {
    let (origin, _dir, curl) = start().await;
    assert_eq!(curl.ok(&[&curl.url("/text/hello%20world%21")]).await, b"hello world!");
    // --compressed makes curl inflate it; without, the bytes are a gzip stream.
    assert_eq!(curl.ok(&["--compressed", &curl.url("/gzip/secret%20AKIA")]).await, b"secret AKIA");
    let raw = curl.ok(&[&curl.url("/gzip/secret")]).await;
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip magic");
    assert_eq!(curl.ok(&[&curl.url("/inject")]).await, INJECT_HTML.as_bytes());

    let code = |path: &'static str| {
        let url = curl.url(path);
        let curl = &curl;
        async move {
            let out = curl.ok(&["-o", "/dev/null", "-w", "%{http_code}", &url]).await;
            String::from_utf8(out).unwrap()
        }
    };
    assert_eq!(code("/status/418").await, "418");
    assert_eq!(code("/status/204").await, "204");
    assert_eq!(code("/status/99").await, "400");
    assert_eq!(code("/bytes/notanumber").await, "400");
    assert_eq!(code("/nowhere").await, "404");

    // Plain-HTTP listener serves the same routes.
    let http = origin.http_addr().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", &format!("http://{http}/text/plain")])
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"plain");
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_is_refused() {
    let (origin, dir, _curl) = start().await;
    // Trusting a different CA than the origin's must fail certificate verification (exit 60).
    let other = bench_harness::origin::TestCa::generate().unwrap();
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, other.ca_pem()).unwrap();
    let curl = Curl::new(origin.https_addr().port(), &other_pem);
    let out = curl.run(&[&curl.url("/text/x")]).await;
    assert_eq!(out.code, 60, "expected a verification failure, got: {}", out.stderr);
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_ready_and_writes_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cork-origin"))
        .args(["--https", "127.0.0.3:0", "--http", "127.0.0.3:0", "--name", NAME, "--ip", "127.0.0.3", "--ca-out"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("a ready line");
    let mut https = None;
    for field in line.strip_prefix("ready ").expect("starts with ready").split(' ') {
        if let Some(a) = field.strip_prefix("https=") {
            https = Some(a.parse::<SocketAddr>().unwrap());
        }
    }
    let https = https.expect("https= in the ready line");
    assert_ne!(https.port(), 0, "the real port is printed");
    let curl = Curl { port: https.port(), cacert: dir.path().join("ca.pem") };
    // --resolve must point at 127.0.0.3 for this one.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(&curl.cacert)
        .args(["--resolve", &format!("{NAME}:{}:127.0.0.3", https.port()), &curl.url("/text/bin")])
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"bin", "{}", String::from_utf8_lossy(&out.stderr));
    child.kill().await.unwrap();
}
