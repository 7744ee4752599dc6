//! Bad input gets a clear refusal, an audit line, and never a panic, a hang or a pass.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cork_tests::*;

fn raw(cork: &Cork, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(cork.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn raw_tls(cork: &Cork, origin: &Origin, payload: &str) -> String {
    let out = run(python()
        .arg(clients_dir().join("raw_tls.py"))
        .arg(cork.listen.to_string())
        .arg(format!("origin.test:{}", origin.https.port()))
        .arg(cork.ca_pem())
        .arg(payload));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_alive(cork: &Cork, origin: &Origin) {
    let ok = curl(cork, &[&format!("https://origin.test:{}/text/still-alive", origin.https.port())]);
    assert_eq!(ok.stdout, b"still-alive", "{}", text(&ok));
    assert!(!cork.proc.stderr().contains("panicked"), "{}", cork.proc.stderr());
}

fn setup(extra: &str) -> (Origin, Cork) {
    let origin = Origin::start(&TEST_NAMES);
    let cork = Cork::start(&policy_for(&origin, &["origin.test"], "", extra));
    (origin, cork)
}

#[test]
fn garbage_instead_of_a_client_hello_is_refused() {
    let (origin, cork) = setup("");
    let reply = raw(&cork, format!("CONNECT origin.test:{} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", origin.https.port()).as_bytes());
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(!reply.contains("HTTP/1.1 200 OK"), "nothing was relayed: {reply}");
    let rec = cork.wait_audit("the non-TLS tunnel", |r| r["rules"][0] == "tls.client_hello");
    assert_eq!(rec["verdict"], "block");
    assert!(rec["reason"].as_str().unwrap().contains("not a TLS ClientHello"));
    assert_alive(&cork, &origin);
}

#[test]
fn a_malformed_proxy_request_gets_400() {
    let (origin, cork) = setup("");
    let reply = raw(&cork, b"GARBAGE \x01\x02 nonsense\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let rec = cork.wait_audit("the malformed head", |r| r["rules"][0] == "http.malformed");
    assert_eq!(rec["kind"], "connection");
    assert_alive(&cork, &origin);
}

#[test]
fn an_oversized_head_is_refused_before_it_completes() {
    let (origin, cork) = setup("");
    let mut request = format!("GET http://origin.test:{}/ HTTP/1.1\r\nX-Big: ", origin.http.port()).into_bytes();
    request.extend(std::iter::repeat_n(b'a', 100_000));
    let reply = raw(&cork, &request);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let rec = cork.wait_audit("the oversized head", |r| r["rules"][0] == "http.malformed");
    assert!(rec["reason"].as_str().unwrap().contains("larger than 65536"), "{rec}");
    assert_alive(&cork, &origin);
}

#[test]
fn smuggling_shapes_are_refused_on_the_forward_path() {
    let (origin, cork) = setup("");
    let port = origin.http.port();
    let reply = raw(
        &cork,
        format!("POST http://origin.test:{port}/upload HTTP/1.1\r\nHost: origin.test:{port}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes(),
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let rec = cork.wait_audit("CL+TE", |r| r["kind"] == "request" && r["rules"][0] == "http.malformed");
    assert!(rec["reason"].as_str().unwrap().contains("both Content-Length and Transfer-Encoding"), "{rec}");
    assert_eq!(rec["bytes_up"], 0);
}

#[test]
fn smuggling_shapes_are_refused_inside_the_tunnel() {
    let (origin, cork) = setup("");
    let host = format!("origin.test:{}", origin.https.port());
    let cases = [
        (format!("POST /upload HTTP/1.1\\r\\nHost: {host}\\r\\nContent-Length: 3\\r\\nContent-Length: 3\\r\\n\\r\\nabc"), "more than one Content-Length"),
        (format!("GET / HTTP/1.1\\r\\nHost: {host}\\r\\nX-Folded: a\\r\\n b\\r\\n\\r\\n"), "obsolete line folding"),
        (format!("POST /upload HTTP/1.1\\r\\nHost: {host}\\r\\nTransfer-Encoding: gzip, chunked\\r\\n\\r\\n0\\r\\n\\r\\n"), "unsupported Transfer-Encoding"),
    ];
    for (payload, reason) in cases {
        let reply = raw_tls(&cork, &origin, &payload);
        assert!(reply.starts_with("HTTP/1.1 400"), "{payload}: {reply}");
        let rec = cork.wait_audit(reason, |r| r["reason"].as_str().is_some_and(|s| s.contains(reason)));
        assert_eq!(rec["verdict"], "block");
    }
    assert_eq!(cork.metric("cork_requests_total{verdict=\"allow\"}"), 0, "no smuggled request was relayed");
    assert_alive(&cork, &origin);
}

#[test]
fn a_stalled_head_times_out() {
    let (origin, cork) = setup("limits:\n  head_timeout_secs: 1\n  handshake_timeout_secs: 1\n");
    // Half a head, then silence: cork must close the connection by itself.
    let reply = raw(&cork, format!("GET http://origin.test:{}/ HTTP/1.1\r\nHost: origin", origin.http.port()).as_bytes());
    assert_eq!(reply, "", "closed without a response");
    cork.wait_audit("the head timeout", |r| r["rules"][0] == "http.head_timeout");
    assert_alive(&cork, &origin);
}

#[test]
fn a_client_that_never_finishes_its_handshake_times_out() {
    let (origin, cork) = setup("limits:\n  handshake_timeout_secs: 1\n");
    let reply = raw(&cork, format!("CONNECT origin.test:{} HTTP/1.1\r\nHost: x\r\n\r\n", origin.https.port()).as_bytes());
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    cork.wait_audit("the handshake timeout", |r| r["rules"][0] == "tls.handshake_timeout");
    assert_alive(&cork, &origin);
}

#[test]
fn bad_connect_targets_and_non_proxy_requests_are_refused() {
    let (origin, cork) = setup("");
    assert!(raw(&cork, b"CONNECT origin.test HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    cork.wait_audit("the portless CONNECT", |r| r["rules"][0] == "proxy.bad_connect_target");
    assert!(raw(&cork, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 400"));
    cork.wait_audit("the origin-form request", |r| r["rules"][0] == "proxy.not_a_proxy_request");
    assert_alive(&cork, &origin);
}
