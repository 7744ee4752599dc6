//! HTTP/2 through a bumped tunnel: ALPN negotiated end to end, streams relayed and scanned one by
//! one, a blocked stream refused while its neighbours carry on, a large download intact, and
//! malformed frames refused with an audited connection error.

use cork_tests::*;

const CANARY: &str = "cork-canary-h2-5d1e";

fn setup() -> (Origin, Cork) {
    let origin = Origin::start(&TEST_NAMES);
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", &format!("scan:\n  canaries: [{CANARY}]\n")));
    (origin, cork)
}

fn url(origin: &Origin, path: &str) -> String {
    format!("https://origin.test:{}{path}", origin.https.port())
}

/// curl's output with `-w '\n%{http_version}'` split into body and version.
fn body_and_version(out: &std::process::Output) -> (String, String) {
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = all.rsplit_once('\n').unwrap_or_else(|| panic!("{}", text(out)));
    (body.to_string(), version.to_string())
}

#[test]
fn curl_gets_h2_end_to_end_and_the_stream_is_audited_as_http2() {
    let (origin, cork) = setup();
    let out = curl(&cork, &["--http2", "-w", "\n%{http_version}", &url(&origin, "/echo?via=h2")]);
    assert!(out.status.success(), "{}", text(&out));
    let (body, version) = body_and_version(&out);
    assert_eq!(version, "2", "curl negotiated HTTP/2 with cork: {}", text(&out));
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(echoed["http_version"], "HTTP/2", "the origin saw HTTP/2, not a translation: {echoed}");
    assert_eq!(echoed["query"], "via=h2");
    let rec = cork.wait_audit("the h2 stream", |r| r["kind"] == "request" && r["path"] == "/echo");
    assert_eq!(rec["http_version"], "HTTP/2", "{rec}");
    assert_eq!(rec["verdict"], "allow");
    assert_eq!(rec["status"], 200);
}

#[test]
fn an_http11_only_client_still_gets_http11() {
    let (origin, cork) = setup();
    let out = curl(&cork, &["--http1.1", "-w", "\n%{http_version}", &url(&origin, "/echo")]);
    let (body, version) = body_and_version(&out);
    assert_eq!(version, "1.1", "{}", text(&out));
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(echoed["http_version"], "HTTP/1.1", "{echoed}");
    let rec = cork.wait_audit("the h1 exchange", |r| r["kind"] == "request" && r["path"] == "/echo");
    assert!(rec.get("http_version").is_none(), "HTTP/1.1 exchanges are not marked HTTP/2: {rec}");
}

#[test]
fn a_canary_in_one_h2_stream_blocks_only_that_stream() {
    let (origin, cork) = setup();
    let out = run(python().arg(clients_dir().join("h2_streams.py")).args([
        &cork.proxy_url(),
        cork.ca_pem().to_str().unwrap(),
        &url(&origin, "/echo"),
        "100",
        "57",
        CANARY,
    ]));
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(report["connections"], 1, "all streams shared one connection: {report}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 100);
    for r in results {
        assert_eq!(r["http_version"], "HTTP/2", "{r}");
        if r["i"] == 57 {
            assert_eq!(r["status"], 403, "{r}");
            assert_eq!(r["body"]["error"], "blocked", "{r}");
            assert_eq!(r["body"]["rule"], "canary", "{r}");
        } else {
            assert_eq!(r["status"], 200, "{r}");
            assert_eq!(r["body"]["http_version"], "HTTP/2", "{r}");
            assert_eq!(r["body"]["body"], format!("stream {} plain", r["i"]), "{r}");
        }
    }
    let rec = cork.wait_audit("the blocked stream", |r| r["kind"] == "request" && r["verdict"] == "block");
    assert_eq!(rec["http_version"], "HTTP/2");
    assert_eq!(rec["status"], 403);
    assert_eq!(rec["bytes_up"], 0, "the origin received nothing of the blocked stream: {rec}");
    let allowed = cork.audit().iter().filter(|r| r["kind"] == "request" && r["verdict"] == "allow" && r["http_version"] == "HTTP/2").count();
    assert_eq!(allowed, 100, "the first GET and 99 clean POSTs were allowed");
}

/// SHA-256 of the origin's `/bytes/N` pattern, computed in pieces so that 1 GiB never sits in memory.
fn pattern_sha256(size: usize) -> String {
    use sha2::{Digest, Sha256};
    // The pattern's period (64 bytes) divides 1 MiB, so 1 MiB blocks line up with it.
    let block = bench_harness::origin::pattern_bytes(1 << 20);
    let mut hasher = Sha256::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len());
        hasher.update(&block[..n]);
        left -= n;
    }
    hex::encode(hasher.finalize())
}

fn file_sha256(path: &std::path::Path) -> (u64, String) {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    (total, hex::encode(hasher.finalize()))
}

#[test]
fn a_one_gib_h2_download_arrives_intact() {
    let (origin, cork) = setup();
    const SIZE: usize = 1 << 30;
    let dir = TempDir::new("h2-download");
    let file = dir.path().join("body");
    let out = curl(&cork, &["--http2", "-w", "%{http_version}", "-o", file.to_str().unwrap(), &url(&origin, &format!("/bytes/{SIZE}"))]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "{}", text(&out));
    let (len, sum) = file_sha256(&file);
    assert_eq!(len, SIZE as u64);
    assert_eq!(sum, pattern_sha256(SIZE), "the body is the origin's pattern, byte for byte");
    let rec = cork.wait_audit("the download", |r| r["kind"] == "request" && r["path"] == format!("/bytes/{SIZE}"));
    assert_eq!(rec["http_version"], "HTTP/2");
    let down = rec["bytes_down"].as_u64().unwrap();
    assert!(down > SIZE as u64 && down < SIZE as u64 + 4096, "the body plus a head: {rec}");
}

#[test]
fn an_h2_authority_for_another_host_is_refused_as_fronting() {
    let (origin, cork) = setup();
    // curl sends the Host header as :authority on HTTP/2.
    let out = curl(&cork, &["--http2", "-H", "Host: evil.test", "-w", "\n%{http_version}", &url(&origin, "/echo")]);
    let (body, version) = body_and_version(&out);
    assert_eq!(version, "2", "{}", text(&out));
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(reply["rule"], "fronting.host_mismatch", "{reply}");
    let rec = cork.wait_audit("the fronting block", |r| r["kind"] == "request" && r["verdict"] == "block");
    assert_eq!(rec["http_version"], "HTTP/2");
    assert_eq!(rec["status"], 403);
}

/// The GOAWAY error codes in a server's byte stream (hex in, codes out).
fn goaway_codes(hex_bytes: &str) -> Vec<u32> {
    let bytes = hex::decode(hex_bytes.trim()).unwrap();
    let mut codes = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (bytes[at] as usize) << 16 | (bytes[at + 1] as usize) << 8 | bytes[at + 2] as usize;
        let kind = bytes[at + 3];
        let payload = &bytes[at + 9..(at + 9 + len).min(bytes.len())];
        if kind == 7 && payload.len() >= 8 {
            codes.push(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        at += 9 + len;
    }
    codes
}

#[test]
fn malformed_frames_and_hpack_garbage_end_the_connection_with_an_audited_error() {
    let (origin, cork) = setup();
    let target = format!("origin.test:{}", origin.https.port());
    // HEADERS on stream 1 whose block is an HPACK index far beyond any table, and a SETTINGS
    // frame whose length is not a multiple of 6 (FRAME_SIZE_ERROR).
    let cases = ["000005010500000001ffffffffff", "000005040000000000aaaaaaaaaa"];
    for frames in cases {
        let out = run(python().arg(clients_dir().join("h2_raw.py")).args([&cork.listen.to_string(), &target, cork.ca_pem().to_str().unwrap(), frames]));
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(stdout.contains("alpn h2"), "the origin speaks h2, so the client got h2: {stdout}");
        let received = stdout.lines().find_map(|l| l.strip_prefix("received ")).unwrap_or("");
        let codes = goaway_codes(received);
        assert!(codes.len() == 1 && codes[0] != 0, "cork answered with one GOAWAY carrying an error code: {codes:?} {stdout}");
    }
    // The client may see the close before cork has written its line: wait for both.
    let is_error = |r: &serde_json::Value| r["kind"] == "connection" && r["rules"][0] == "h2.protocol_error";
    for _ in 0..200 {
        if cork.audit().iter().filter(|r| is_error(r)).count() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let errors: Vec<_> = cork.audit().into_iter().filter(|r| is_error(r)).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    // cork is still serving.
    let out = curl(&cork, &["--http2", "-w", "\n%{http_version}", &url(&origin, "/echo")]);
    assert_eq!(body_and_version(&out).1, "2", "{}", text(&out));
    assert!(!cork.proc.stderr().contains("panicked"), "{}", cork.proc.stderr());
}

/// HEADERS for `GET /` on `stream` (END_STREAM | END_HEADERS), with `authority` as a literal.
fn get_headers_frame(stream: u32, authority: &str) -> Vec<u8> {
    // :method GET, :scheme https, :path / (static table), then :authority as a literal.
    let mut block = vec![0x82, 0x87, 0x84, 0x01, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    let mut frame = vec![0, 0, block.len() as u8, 0x1, 0x5];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

#[test]
fn a_rapid_reset_flood_is_stopped_with_goaway_and_audited() {
    let (origin, cork) = setup();
    let target = format!("origin.test:{}", origin.https.port());
    // CVE-2023-44487: open a stream and cancel it at once, over and over.
    let mut frames = Vec::new();
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        frames.extend(get_headers_frame(stream, &target));
        frames.extend_from_slice(&[0, 0, 4, 0x3, 0]);
        frames.extend_from_slice(&stream.to_be_bytes());
        frames.extend_from_slice(&8u32.to_be_bytes()); // CANCEL
    }
    let mut cmd = python();
    cmd.arg(clients_dir().join("h2_raw.py")).args([&cork.listen.to_string(), &target, cork.ca_pem().to_str().unwrap(), "-"]);
    let out = run_with_input(&mut cmd, Some(hex::encode(&frames).into_bytes()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let received = stdout.lines().find_map(|l| l.strip_prefix("received ")).unwrap_or("");
    let codes = goaway_codes(received);
    assert_eq!(codes, vec![0xb], "one GOAWAY with ENHANCE_YOUR_CALM ({} bytes back)", received.len() / 2);
    let rec = cork.wait_audit("the flood", |r| r["kind"] == "connection" && r["verdict"] == "block");
    assert!(rec["rules"][0].as_str().unwrap().starts_with("h2."), "{rec}");
    let served = cork.audit().iter().filter(|r| r["kind"] == "request").count();
    assert!(served < 100, "the flood was cut long before its 2000 streams: {served} requests");
    // cork is still serving.
    let out = curl(&cork, &["--http2", "-w", "\n%{http_version}", &url(&origin, "/echo")]);
    assert_eq!(body_and_version(&out).1, "2", "{}", text(&out));
}

/// A refusal sent while the client is still uploading is followed by reading (and dropping) the
/// rest of the upload, not by an instant RST_STREAM, which some clients take as a failed
/// transfer before they read the 403; a client that never finishes is cut off, with NO_ERROR.
#[test]
fn a_refused_h2_upload_is_drained_then_reset_if_it_never_ends() {
    let (origin, cork) = setup();
    const TOKEN: &str = "ghp_Zx8Kq2Lm9Vb4Nc7Rt1Yp5Wd3Gf6Hj0Sa2QeX";
    let target = format!("origin.test:{}", origin.https.port());
    let out = run(python().arg(clients_dir().join("h2_refused_upload.py")).args([&cork.listen.to_string(), &target, cork.ca_pem().to_str().unwrap(), "/upload", TOKEN]));
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    let finished = &report["streams"]["1"];
    assert_eq!(finished["status"], 403, "{report}");
    assert!(finished["body"].as_str().unwrap().contains("github.pat_classic"), "{report}");
    assert_eq!(finished["end_taken"], true, "the client could still end its upload: {report}");
    assert_eq!(finished["resets"], serde_json::json!([]), "no RST_STREAM before the client's END_STREAM and PING: {report}");
    assert_eq!(report["pong"], true, "{report}");
    let endless = &report["streams"]["3"];
    assert_eq!(endless["status"], 403, "{report}");
    assert_eq!(endless["resets"], serde_json::json!([0]), "the upload that never ends is reset with NO_ERROR: {report}");
    let refused: Vec<_> = cork.audit().into_iter().filter(|r| r["kind"] == "request" && r["path"] == "/upload").collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(refused.iter().all(|r| r["status"] == 403 && r["findings"][0]["rule"] == "github.pat_classic"), "{refused:#?}");
}

/// A token deep inside an h2 upload larger than the buffered first part: cork resets the
/// upstream stream before the token leaves. The origin logs how much of the cut upload it got.
#[test]
fn a_secret_deep_in_a_long_h2_upload_never_reaches_the_origin() {
    let (origin, cork) = setup();
    const TOKEN: &str = "ghp_Zx8Kq2Lm9Vb4Nc7Rt1Yp5Wd3Gf6Hj0Sa2QeX";
    let offset = 4_000_000;
    let mut upload = bench_harness::origin::pattern_bytes(5_000_000);
    let planted = format!("\ntoken={TOKEN}\n");
    upload[offset..offset + planted.len()].copy_from_slice(planted.as_bytes());
    let file = cork.dir.path().join("leaky-h2-upload.bin");
    std::fs::write(&file, &upload).unwrap();
    let out = curl(&cork, &["--http2", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "-H", "Content-Type: application/octet-stream", "--data-binary", &format!("@{}", file.display()), &url(&origin, "/upload")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403 2", "{}", text(&out));
    let rec = cork.wait_audit("the cut h2 upload", |r| r["kind"] == "request" && r["status"] == 403 && r["path"] == "/upload");
    assert_eq!(rec["findings"][0]["rule"], "github.pat_classic", "{rec}");
    assert!(rec["reason"].as_str().unwrap().contains("reset before the secret was sent"), "{rec}");
    // The token starts 7 bytes into what was planted; none of it may have arrived.
    let arrived = origin.wait_cut_upload();
    eprintln!("{arrived} bytes of the upload reached the origin");
    assert!(arrived > 1_000_000, "the buffered first part was sent ({arrived} bytes)");
    assert!(arrived <= (offset + 7) as u64, "{arrived} bytes reached the origin: the token (at {}) went with them", offset + 7);
}
