//! The explicit proxy end to end: real cork, real origin, real clients.

use std::process::Command;

use cork_tests::*;

fn origin() -> Origin {
    Origin::start(&TEST_NAMES)
}

#[test]
fn curl_through_an_allowed_host_is_bumped_scanned_and_audited() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let url = format!("https://origin.test:{}/bytes/1024", origin.https.port());
    let out = curl(&cork, &["-D", "-", &url]);
    assert!(out.status.success(), "{}", text(&out));
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("HTTP/1.1 200"), "{body}");
    // The certificate curl verified was cork's (curl checked it against cork's CA only).
    let rec = cork.wait_audit("the allowed request", |r| r["kind"] == "request" && r["path"] == "/bytes/1024");
    assert_eq!(rec["verdict"], "allow");
    assert_eq!(rec["enforced"], true);
    assert_eq!(rec["method"], "GET");
    assert_eq!(rec["host"], "origin.test");
    assert_eq!(rec["port"], origin.https.port());
    assert_eq!(rec["status"], 200);
    assert!(rec["bytes_down"].as_u64().unwrap() > 1024, "{rec}");
    assert!(rec["bytes_up"].as_u64().unwrap() > 0, "{rec}");
    assert!(rec["request_id"].as_str().unwrap().len() > 6);
    assert!(rec["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(rec["time"].as_str().unwrap().ends_with('Z'));
    assert!(rec["duration_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn the_body_arrives_intact_over_keep_alive() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let port = origin.https.port();
    let a = format!("https://origin.test:{port}/bytes/300000");
    let b = format!("https://origin.test:{port}/chunked/70000");
    let out = curl(&cork, &["-w", "\\n%{num_connects}\\n", &a, &b]);
    assert!(out.status.success(), "{}", text(&out));
    let expected_a = bench_pattern(300000);
    let expected_b = bench_pattern(70000);
    let mut want = expected_a.clone();
    want.extend_from_slice(b"\n1\n");
    want.extend_from_slice(&expected_b);
    want.extend_from_slice(b"\n0\n");
    assert!(out.stdout == want, "bodies differ (got {} bytes)", out.stdout.len());
    let recs: Vec<_> = cork.audit().into_iter().filter(|r| r["kind"] == "request").collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["client"], recs[1]["client"], "both requests rode one client connection");
}

/// The origin's body pattern, from the same library the origin uses.
fn bench_pattern(n: usize) -> Vec<u8> {
    bench_harness::origin::pattern_bytes(n)
}

#[test]
fn a_host_outside_the_allow_list_is_refused_before_bumping() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let out = curl(&cork, &[&format!("https://other.test:{}/", origin.https.port())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{}", text(&out));
    let rec = cork.wait_audit("the refused CONNECT", |r| r["kind"] == "connect" && r["host"] == "other.test");
    assert_eq!(rec["verdict"], "block");
    assert_eq!(rec["rules"][0], "host.not_allowed");
    assert_eq!(rec["status"], 403);
    assert_eq!(cork.metric("cork_leaf_certificates_issued_total"), 0, "no leaf was minted for a refused host");
}

#[test]
fn the_block_list_wins_over_a_wildcard_allow() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["'*.test'"], "  block: [blocked.test]\n", ""));
    let port = origin.https.port();
    assert!(curl(&cork, &[&format!("https://origin.test:{port}/")]).status.success());
    let out = curl(&cork, &[&format!("https://blocked.test:{port}/")]);
    assert!(!out.status.success());
    let rec = cork.wait_audit("blocked.test", |r| r["host"] == "blocked.test");
    assert_eq!(rec["rules"][0], "host.blocklist");
}

#[test]
fn a_blocked_request_inside_the_tunnel_gets_403_json_naming_rule_and_id() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", "scan:\n  canaries: [CANARY-7f3e9a-TRIPWIRE]\n"));
    let url = format!("https://origin.test:{}/upload", origin.https.port());
    let out = curl(&cork, &["-d", "{\"note\":\"CANARY-7f3e9a-TRIPWIRE\"}", "-H", "Content-Type: application/json", &url]);
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(body["error"], "blocked");
    assert_eq!(body["rule"], "canary");
    let rec = cork.wait_audit("the canary block", |r| r["kind"] == "request" && r["verdict"] == "block");
    assert_eq!(body["request_id"], rec["request_id"]);
    assert_eq!(rec["status"], 403);
    assert_eq!(rec["findings"][0]["rule"], "canary");
    assert_eq!(rec["bytes_up"], 0, "nothing reached the origin");
}

#[test]
fn passthrough_hosts_are_tunnelled_without_interception() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "  passthrough: [pinned.test]\n", ""));
    let url = format!("https://pinned.test:{}/bytes/10", origin.https.port());
    // The client trusts only the origin's own CA: this succeeds only if cork did not intercept.
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "--proxy", &cork.proxy_url(), "--cacert"]).arg(&origin.ca).arg(&url);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout.len(), 10);
    let rec = cork.wait_audit("the tunnel", |r| r["kind"] == "tunnel");
    assert_eq!(rec["host"], "pinned.test");
    assert_eq!(rec["verdict"], "allow");
    assert!(rec["bytes_down"].as_u64().unwrap() > 10);
    assert_eq!(cork.metric("cork_leaf_certificates_issued_total"), 0);

    // Larger bodies both ways arrive intact, relayed by io_uring where this host allows it.
    let path = if io_uring_expected() { "uring" } else { "splice" };
    big_transfers_through_a_passthrough_tunnel(&cork, &origin);
    assert_eq!(cork.metric(&format!("cork_connections_total{{kind=\"tunnel_{path}\"}}")), 3, "{}", cork.admin_get("/metrics"));
    assert_eq!(cork.metric(&format!("cork_relay_path_total{{path=\"{path}\"}}")), 3, "{}", cork.admin_get("/metrics"));
    assert_eq!(cork.metric("cork_connections_total{kind=\"tunnel_copy\"}"), 0);
    let tunnels: Vec<_> = cork.audit().into_iter().filter(|r| r["kind"] == "tunnel").collect();
    assert_eq!(tunnels.len(), 3);
    assert!(tunnels.iter().all(|r| r["relay"] == path), "{tunnels:#?}");
    let status = cork.admin_get("/status");
    if path == "uring" {
        assert!(status.contains("io_uring: supported (tunnels and long bodies are relayed on"), "{status}");
        assert!(cork.stdout.iter().any(|l| l.starts_with("io_uring: supported (")), "{:?}", cork.stdout);
        assert_eq!(cork.metric("cork_io_uring_supported"), 1);
    }
}

/// Uploads 8 MB and downloads 20 MB through a passthrough tunnel to pinned.test, checking both by
/// content. The client trusts only the origin's CA, so this works only through a real tunnel.
fn big_transfers_through_a_passthrough_tunnel(cork: &Cork, origin: &Origin) {
    let upload = bench_pattern(8_000_000);
    let file = cork.dir.path().join("upload.bin");
    std::fs::write(&file, &upload).unwrap();
    let url = format!("https://pinned.test:{}/upload", origin.https.port());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120", "--proxy", &cork.proxy_url(), "--data-binary"]).arg(format!("@{}", file.display()));
    cmd.arg("--cacert").arg(&origin.ca).arg(&url);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", text(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(answer["len"], 8_000_000);
    assert_eq!(answer["sha256"], sha256_hex(&upload), "the origin received different bytes");

    let big = format!("https://pinned.test:{}/bytes/20000000", origin.https.port());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120", "--proxy", &cork.proxy_url(), "--cacert"]).arg(&origin.ca).arg(&big);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout == bench_pattern(20_000_000), "the 20 MB body differs (got {} bytes)", out.stdout.len());
}

#[test]
fn passthrough_with_io_uring_off_is_relayed_by_splice() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "  passthrough: [pinned.test]\n", "limits:\n  io_uring: off\n"));
    big_transfers_through_a_passthrough_tunnel(&cork, &origin);
    assert_eq!(cork.metric("cork_connections_total{kind=\"tunnel_splice\"}"), 2, "{}", cork.admin_get("/metrics"));
    assert_eq!(cork.metric("cork_relay_path_total{path=\"splice\"}"), 2);
    assert_eq!(cork.metric("cork_relay_path_total{path=\"uring\"}"), 0);
    let tunnels: Vec<_> = cork.audit().into_iter().filter(|r| r["kind"] == "tunnel").collect();
    assert!(tunnels.len() == 2 && tunnels.iter().all(|r| r["relay"] == "splice"), "{tunnels:#?}");
    let status = cork.admin_get("/status");
    if io_uring_expected() {
        assert!(status.contains("io_uring: supported, switched off by policy (limits.io_uring: off)"), "{status}");
    }
}

#[test]
fn passthrough_refuses_an_sni_that_disagrees_with_the_connect_target() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "  passthrough: [pinned.test]\n", ""));
    let target = format!("pinned.test:{}", origin.https.port());
    let out = run(Command::new("openssl")
        .args(["s_client", "-proxy", &cork.listen.to_string(), "-connect", &target, "-servername", "evil.test", "-brief"])
        .stdin(std::process::Stdio::null()));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("CONNECTION ESTABLISHED"), "{}", text(&out));
    let rec = cork.wait_audit("the fronting refusal", |r| r["rules"][0] == "fronting.sni_mismatch");
    assert_eq!(rec["verdict"], "block");
    assert!(rec["reason"].as_str().unwrap().contains("evil.test"));
}

#[test]
fn domain_fronting_by_host_header_is_blocked() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test", "other.test"], "", ""));
    let url = format!("https://origin.test:{}/echo", origin.https.port());
    let out = curl(&cork, &["-H", &format!("Host: other.test:{}", origin.https.port()), &url]);
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(body["rule"], "fronting.host_mismatch");
    let rec = cork.wait_audit("the fronting block", |r| r["kind"] == "request" && r["verdict"] == "block");
    assert_eq!(rec["rules"][0], "fronting.host_mismatch");
}

#[test]
fn domain_fronting_by_sni_is_blocked() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test", "other.test"], "", ""));
    let target = format!("origin.test:{}", origin.https.port());
    let out = run(Command::new("openssl")
        .args(["s_client", "-proxy", &cork.listen.to_string(), "-connect", &target, "-servername", "other.test", "-CAfile"])
        .arg(cork.ca_pem())
        .stdin(std::process::Stdio::null()));
    // cork refuses before answering the ClientHello: no certificate reaches the client.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Cipher is (NONE)"), "{}", text(&out));
    let rec = cork.wait_audit("the SNI mismatch", |r| r["rules"][0] == "fronting.sni_mismatch");
    assert!(rec["reason"].as_str().unwrap().contains("other.test"));
}

#[test]
fn openssl_s_client_verifies_cork_leaf_against_cork_ca() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let target = format!("origin.test:{}", origin.https.port());
    let request = format!("GET /text/hello-openssl HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let out = run_with_input(
        Command::new("openssl").args(["s_client", "-proxy", &cork.listen.to_string(), "-connect", &target, "-servername", "origin.test", "-verify_return_error", "-ign_eof", "-CAfile"]).arg(cork.ca_pem()),
        Some(request.into_bytes()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Verify return code: 0 (ok)"), "{}", text(&out));
    assert!(stdout.contains("hello-openssl"), "{}", text(&out));
    assert!(stdout.contains("cork bottle CA"), "the issuer is cork's CA: {stdout}");
}

#[test]
fn python_requests_through_cork_with_requests_ca_bundle() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", "scan:\n  canaries: [CANARY-py-5a5a5a]\n"));
    let base = format!("https://origin.test:{}", origin.https.port());
    let out = run(python()
        .arg(clients_dir().join("requests_client.py"))
        .arg(&base)
        .env("HTTPS_PROXY", cork.proxy_url())
        .env("REQUESTS_CA_BUNDLE", cork.ca_bundle())
        .env_remove("SSL_CERT_FILE"));
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(report["get_status"], 200);
    assert_eq!(report["echo_method"], "POST");
    assert_eq!(report["canary_status"], 403);
    assert_eq!(report["canary_rule"], "canary");
    cork.wait_audit("the python canary", |r| r["kind"] == "request" && r["findings"][0]["rule"] == "canary");
}

#[test]
fn chunked_upload_of_100_mb_streams_through_intact() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let dir = TempDir::new("upload");
    let file = dir.path().join("payload.bin");
    // Deterministic, incompressible-looking data so the scanner sees realistic bytes.
    let mut data = Vec::with_capacity(100 * 1024 * 1024);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while data.len() < 100 * 1024 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&file, &data).unwrap();
    let url = format!("https://origin.test:{}/upload", origin.https.port());
    // -T with Transfer-Encoding: chunked makes curl send a chunked body (and Expect: 100-continue).
    let out = curl(&cork, &["-T", file.to_str().unwrap(), "-H", "Transfer-Encoding: chunked", &url]);
    assert!(out.status.success(), "{}", text(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(reply["len"], data.len() as u64);
    assert_eq!(reply["sha256"], sha256_hex(&data));
    let rec = cork.wait_audit("the upload", |r| r["kind"] == "request" && r["path"] == "/upload");
    assert_eq!(rec["verdict"], "allow");
    assert!(rec["bytes_up"].as_u64().unwrap() >= data.len() as u64);
}

#[test]
fn concurrent_first_requests_share_one_leaf() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["fresh.test"], "", ""));
    let url = format!("https://fresh.test:{}/bytes/1", origin.https.port());
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "60", "--proxy", &cork.proxy_url(), "--cacert"]).arg(cork.ca_pem()).arg(&url);
            std::thread::spawn(move || run(&mut cmd))
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(cork.metric("cork_leaf_certificates_issued_total"), 1);
    assert_eq!(cork.metric("cork_leaf_cache_hits_total"), 7);
}

#[test]
fn the_ca_private_key_is_never_written_or_logged() {
    let origin = origin();
    let cork = Cork::start_with_env(&policy_for(&origin, &["origin.test"], "", ""), &[("CORK_LOG", "trace")]);
    assert!(curl(&cork, &[&format!("https://origin.test:{}/", origin.https.port())]).status.success());
    let ca = std::fs::read_to_string(cork.ca_pem()).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let bundle = std::fs::read_to_string(cork.ca_bundle()).unwrap();
    assert!(bundle.ends_with(&ca), "the bundle ends with cork's CA");
    // Every file cork wrote, plus everything it printed, is free of private-key material.
    let mut texts = vec![cork.proc.stderr(), cork.stdout.join("\n")];
    for entry in std::fs::read_dir(cork.dir.path().join("state")).unwrap() {
        texts.push(String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap()).into_owned());
    }
    assert!(cork.proc.stderr().contains("TRACE") || cork.proc.stderr().contains("DEBUG"), "trace logging was on");
    for t in &texts {
        assert!(!t.contains("PRIVATE KEY"), "a PEM private key appeared");
        // PKCS#8 and SEC1 EC private keys start with these DER prefixes.
        assert!(!t.contains("MIGHAgEAMBMGByqGSM49"), "a base64 PKCS#8 EC key appeared");
        assert!(!t.contains("MHcCAQEEI"), "a base64 SEC1 EC key appeared");
    }
    let info = run(Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(cork.ca_pem()));
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("CA:TRUE"), "{info}");
    assert!(info.contains("prime256v1") || info.contains("P-256"), "{info}");
}

#[test]
fn query_strings_are_not_logged_raw() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let url = format!("https://origin.test:{}/text/x?session=QUERY-VALUE-8d7c6b", origin.https.port());
    assert!(curl(&cork, &[&url]).status.success());
    let rec = cork.wait_audit("the request", |r| r["kind"] == "request");
    assert_eq!(rec["path"], "/text/x");
    assert_eq!(rec["query"]["len"], "session=QUERY-VALUE-8d7c6b".len());
    let raw = std::fs::read_to_string(cork.dir.path().join("state/audit.jsonl")).unwrap();
    assert!(!raw.contains("QUERY-VALUE-8d7c6b"));
}

#[test]
fn audit_mode_logs_what_it_would_block_and_blocks_nothing() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test", "other.test"], "", "mode: audit\nscan:\n  canaries: [CANARY-audit-0c0c0c]\n"));
    let url = format!("https://origin.test:{}/upload", origin.https.port());
    let out = curl(&cork, &["-d", "x=CANARY-audit-0c0c0c", &url]);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(reply["len"], "x=CANARY-audit-0c0c0c".len(), "the origin received the request");
    let rec = cork.wait_audit("the audited request", |r| r["kind"] == "request");
    assert_eq!(rec["verdict"], "block");
    assert_eq!(rec["enforced"], false);
    // Host rules too: a fronting mismatch is logged, not enforced.
    let out = curl(&cork, &["-H", &format!("Host: other.test:{}", origin.https.port()), &format!("https://origin.test:{}/echo", origin.https.port())]);
    assert!(out.status.success(), "{}", text(&out));
    let rec = cork.wait_audit("the audited fronting", |r| r["rules"][0] == "fronting.host_mismatch");
    assert_eq!(rec["enforced"], false);
}

#[test]
fn absolute_uri_forward_proxying_of_plain_http() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let ok = curl(&cork, &[&format!("http://origin.test:{}/text/plain-ok", origin.http.port())]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(ok.stdout, b"plain-ok");
    let denied = curl(&cork, &["-w", "%{http_code}", "-o", "/dev/null", &format!("http://other.test:{}/", origin.http.port())]);
    assert_eq!(String::from_utf8_lossy(&denied.stdout), "403");
    let rec = cork.wait_audit("the forward block", |r| r["host"] == "other.test");
    assert_eq!(rec["rules"][0], "host.not_allowed");
    assert_eq!(rec["kind"], "request");
}

#[test]
fn an_upstream_certificate_that_fails_verification_is_a_block() {
    let origin = origin();
    // No extra_roots: the origin's test CA is not trusted.
    let policy = format!(
        "hosts:\n  allow: [origin.test]\n  ports: [{}]\nupstream:\n  resolve: {{origin.test: 127.0.0.2}}\n",
        origin.https.port()
    );
    let cork = Cork::start(&policy);
    let out = curl(&cork, &["-w", "\\n%{http_code}", &format!("https://origin.test:{}/", origin.https.port())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.ends_with("502"), "{}", text(&out));
    assert!(stdout.contains("upstream.tls"), "{stdout}");
    let rec = cork.wait_audit("the verification failure", |r| r["rules"][0] == "upstream.tls");
    assert_eq!(rec["verdict"], "block");
    assert!(rec["reason"].as_str().unwrap().contains("certificate"), "{rec}");
}

#[test]
fn metrics_count_decisions() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    assert!(curl(&cork, &[&format!("https://origin.test:{}/", origin.https.port())]).status.success());
    assert!(!curl(&cork, &[&format!("https://other.test:{}/", origin.https.port())]).status.success());
    let metrics = cork.admin_get("/metrics");
    assert!(metrics.contains("# TYPE cork_requests_total counter"), "{metrics}");
    assert_eq!(cork.metric("cork_requests_total{verdict=\"allow\"}"), 1, "{metrics}");
    assert_eq!(cork.metric("cork_connections_total{kind=\"connect\"}"), 2, "{metrics}");
    assert_eq!(cork.metric("cork_leaf_certificates_issued_total"), 1);
    assert_eq!(cork.admin_get("/healthz"), "ok\n");
    assert_eq!(cork.admin_get("/ca.pem"), std::fs::read_to_string(cork.ca_pem()).unwrap());
}

#[test]
fn hop_by_hop_fields_do_not_reach_the_origin() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let url = format!("https://origin.test:{}/echo", origin.https.port());
    // HTTP/1.1 on purpose: on HTTP/2 these fields are malformed and refused outright.
    let out = curl(&cork, &["--http1.1", "-H", "Connection: keep-alive, X-Hop-Secret", "-H", "X-Hop-Secret: drop-me", "-H", "Keep-Alive: timeout=5", "-H", "X-End-To-End: keep-me", &url]);
    let echo: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    let names: Vec<String> = echo["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_ascii_lowercase()).collect();
    assert!(names.contains(&"x-end-to-end".to_string()), "{names:?}");
    for dropped in ["x-hop-secret", "keep-alive", "connection", "proxy-connection"] {
        assert!(!names.contains(&dropped.to_string()), "{dropped} reached the origin: {names:?}");
    }
}

#[test]
fn expect_100_continue_is_answered_and_the_body_delivered() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let url = format!("https://origin.test:{}/upload", origin.https.port());
    let body = "x".repeat(5000);
    let out = curl(&cork, &["--http1.1", "-v", "-H", "Expect: 100-continue", "--data-binary", &body, &url]);
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(reply["len"], 5000);
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP/1.1 100 Continue"), "{}", text(&out));
}

/// Plain-HTTP forward proxying moves long bodies on io_uring once their head is out: the bytes
/// arrive intact both ways, keep-alive carries on behind them, and a secret deep inside a body
/// still stops it. With `limits.io_uring: off` the same exchanges take the tokio path.
fn long_plain_http_bodies(io_uring: &str) -> Cork {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", &format!("limits:\n  io_uring: {io_uring}\n")));
    let port = origin.http.port();
    // 6 MB down, then a small body on the same connection.
    let out = curl(&cork, &["-w", "\\n%{num_connects}\\n", &format!("http://origin.test:{port}/bytes/6000000"), &format!("http://origin.test:{port}/bytes/1000")]);
    assert!(out.status.success(), "{}", text(&out));
    let mut want = bench_pattern(6_000_000);
    want.extend_from_slice(b"\n1\n");
    want.extend_from_slice(&bench_pattern(1000));
    want.extend_from_slice(b"\n0\n");
    assert!(out.stdout == want, "the bodies differ (got {} bytes)", out.stdout.len());

    // 5 MB up, with a Content-Length.
    let upload = bench_pattern(5_000_000);
    let file = cork.dir.path().join("plain-upload.bin");
    std::fs::write(&file, &upload).unwrap();
    let out = curl(&cork, &["-H", "Content-Type: application/octet-stream", "--data-binary", &format!("@{}", file.display()), &format!("http://origin.test:{port}/upload")]);
    assert!(out.status.success(), "{}", text(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    assert_eq!(answer["len"], 5_000_000);
    assert_eq!(answer["sha256"], sha256_hex(&upload), "the origin received different bytes");

    // A token 4 MB into an upload: past the buffered first megabyte, so the head is already
    // upstream; the request is cut before the token leaves and the client gets the 403.
    let mut leaky = bench_pattern(5_000_000);
    let planted = format!("\ntoken={GITHUB_TOKEN}\n");
    leaky[4_000_000..4_000_000 + planted.len()].copy_from_slice(planted.as_bytes());
    let file = cork.dir.path().join("leaky-upload.bin");
    std::fs::write(&file, &leaky).unwrap();
    let out = curl(&cork, &["-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/octet-stream", "--data-binary", &format!("@{}", file.display()), &format!("http://origin.test:{port}/upload")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{}", text(&out));
    let rec = cork.wait_audit("the cut upload", |r| r["kind"] == "request" && r["status"] == 403 && r["path"] == "/upload");
    assert_eq!(rec["findings"][0]["rule"], "github.pat_classic", "{rec}");
    assert!(rec["reason"].as_str().unwrap().contains("cut before the secret was sent"), "{rec}");
    cork
}

const GITHUB_TOKEN: &str = "ghp_Zx8Kq2Lm9Vb4Nc7Rt1Yp5Wd3Gf6Hj0Sa2QeX";

#[test]
fn long_plain_http_bodies_move_on_io_uring() {
    let cork = long_plain_http_bodies("auto");
    let on_ring = cork.metric("cork_body_bytes_on_io_uring_total");
    let requests: Vec<_> = cork.audit().into_iter().filter(|r| r["kind"] == "request").collect();
    if io_uring_expected() {
        // Each long body has more than 3.5 MB left once its first megabyte is buffered.
        assert!(on_ring > 3 * 3_500_000, "{}", cork.admin_get("/metrics"));
        let ringed: Vec<_> = requests.iter().filter(|r| r["relay"] == "uring").map(|r| r["path"].as_str().unwrap().to_string()).collect();
        assert_eq!(ringed, ["/bytes/6000000", "/upload", "/upload"], "{requests:#?}");
    } else {
        eprintln!("io_uring is not expected on this host: only the tokio path was exercised");
        assert_eq!(on_ring, 0);
    }
}

#[test]
fn long_plain_http_bodies_with_io_uring_off_take_the_tokio_path() {
    let cork = long_plain_http_bodies("off");
    assert_eq!(cork.metric("cork_body_bytes_on_io_uring_total"), 0);
    assert!(cork.audit().iter().all(|r| r.get("relay").is_none()), "no request names a relay");
}

/// `scan.unscanned_response_types` passes listed binary media on without a scan: between plain
/// sockets the body is spliced, on bumped (rustls) legs it streams unheld. The origin's
/// `/media/N` body is a prompt injection labelled `video/mp4`, so any scan would block it.
#[test]
fn listed_binary_media_go_unscanned_and_plain_bodies_are_spliced() {
    let origin = origin();
    let scan = "scan:\n  unscanned_response_types: [\"video/*\"]\n";
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", scan));
    let n = 6_000_000;
    let want = bench_harness::origin::media_body(n);

    let plain = format!("http://origin.test:{}/media/{n}", origin.http.port());
    let out = curl(&cork, &[&plain]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout == want, "the plain body differs (got {} bytes)", out.stdout.len());
    let rec = cork.wait_audit("the plain media response", |r| r["kind"] == "request" && r["host"] == "origin.test" && r["port"] == origin.http.port());
    assert_eq!(rec["unscanned"], "video/mp4", "{rec}");
    assert_eq!(rec["relay"], "splice", "{rec}");
    assert_eq!(rec["verdict"], "allow", "{rec}");
    // All but what came with the head (at most one read) moved in the kernel.
    let spliced = cork.metric("cork_body_bytes_spliced_total");
    assert!(spliced >= n as u64 - 64 * 1024 && spliced <= n as u64, "{spliced}");

    let bumped = format!("https://origin.test:{}/media/{n}", origin.https.port());
    for version in ["--http1.1", "--http2"] {
        let out = curl(&cork, &[version, &bumped]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(out.stdout == want, "the bumped body differs over {version} (got {} bytes)", out.stdout.len());
    }
    // HTTP/2 streams name their version; HTTP/1.1 requests carry none.
    for version in [serde_json::Value::Null, "HTTP/2".into()] {
        let rec = cork.wait_audit("a bumped media response", |r| r["kind"] == "request" && r["port"] == origin.https.port() && r["http_version"] == version);
        assert_eq!(rec["unscanned"], "video/mp4", "{rec}");
    }
    assert_eq!(cork.metric("cork_bodies_unscanned_total"), 3);
    assert_eq!(cork.metric("cork_body_bytes_spliced_total"), spliced, "rustls legs have no plaintext socket to splice");

    // Everything else is still scanned: the same injection as text/html is blocked.
    let out = curl(&cork, &["-o", "/dev/null", "-w", "%{http_code}", &format!("http://origin.test:{}/inject", origin.http.port())]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{}", text(&out));
}

/// An unscanned body is handed on as it arrives, not held until its end: the origin sends
/// 200 kB of `video/mp4` (well under `limits.body_buffer_bytes`) and then stalls without ending
/// the body. Over HTTP/1.1 and HTTP/2 the client must have all 200 kB when it gives up.
#[test]
fn unscanned_media_are_not_held_until_the_body_ends() {
    let origin = origin();
    let scan = "scan:\n  unscanned_response_types: [\"video/*\"]\n";
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", scan));
    let n = 200_000;
    let want = bench_harness::origin::media_body(n);
    let url = format!("https://origin.test:{}/media-stall/{n}", origin.https.port());
    for version in ["--http1.1", "--http2"] {
        // curl gives up after a while (exit 28): the body never ends.
        let out = curl(&cork, &[version, "--max-time", "8", &url]);
        assert_eq!(out.status.code(), Some(28), "{version}: {}", text(&out));
        assert!(out.stdout == want, "{version}: the client got {} of {n} bytes before giving up", out.stdout.len());
    }
}

/// Without the list, the same media body is scanned and blocked; a text type in the list is
/// refused at start, with the reason.
#[test]
fn media_are_scanned_by_default_and_text_cannot_be_unscanned() {
    let origin = origin();
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", ""));
    let out = curl(&cork, &["-o", "/dev/null", "-w", "%{http_code}", &format!("http://origin.test:{}/media/200000", origin.http.port())]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "{}", text(&out));
    let rec = cork.wait_audit("the blocked media response", |r| r["kind"] == "request" && r["status"] == 403);
    assert!(rec.get("unscanned").is_none(), "{rec}");
    assert_eq!(cork.metric("cork_bodies_unscanned_total"), 0);

    let dir = TempDir::new("unscanned");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_for(&origin, &["origin.test"], "", "scan:\n  unscanned_response_types: [\"text/*\"]\n")).unwrap();
    let out = run(Command::new(binary("cork")).args(["config", "check"]).arg(&policy));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("text, markup, script and form bodies are always scanned"), "{}", text(&out));
}
