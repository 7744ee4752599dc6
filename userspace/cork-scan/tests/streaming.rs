//! Chunk boundaries never hide a match, spans stay inside the held-back tail, and redaction by
//! span masks exactly the secret.

use cork_scan::{redact_in_place, Action, BodyMeta, Engine, Finding, ScanConfig};

const SECRET: &str = "ghp_Zq8Lr2mX0pV7kT4nB9wY6sH1aC3dE5fG7hJ9";

fn body_with_secret(pad_before: usize, pad_after: usize) -> Vec<u8> {
    let mut v = Vec::new();
    while v.len() < pad_before {
        v.extend_from_slice(b"lorem ipsum dolor sit amet, ");
    }
    v.truncate(pad_before - 1);
    v.push(b' ');
    v.extend_from_slice(SECRET.as_bytes());
    v.push(b' ');
    let target = v.len() + pad_after;
    while v.len() < target {
        v.extend_from_slice(b" consectetur adipiscing elit");
    }
    v.truncate(target);
    v
}

/// Pushes `body` in the given pieces, checking after every push that the proxy's release rule
/// (all but `hold_back()` bytes) never releases a byte a later finding points into.
fn stream(engine: &Engine, body: &[u8], cuts: &[usize]) -> Vec<Finding> {
    let mut scan = engine.request_body(BodyMeta::default());
    let mut findings = Vec::new();
    let mut released = 0u64;
    let mut pushed = 0u64;
    let mut last = 0;
    let check = |f: Vec<Finding>, released: u64, findings: &mut Vec<Finding>| {
        for x in &f {
            let span = x.span.clone().expect("plain bodies give spans");
            assert!(span.start >= released, "span {span:?} starts before released offset {released}");
        }
        findings.extend(f);
    };
    for &c in cuts.iter().chain(std::iter::once(&body.len())) {
        let piece = &body[last..c.max(last)];
        last = c.max(last);
        pushed += piece.len() as u64;
        let f = scan.push(piece);
        check(f, released, &mut findings);
        assert!(scan.hold_back() <= 64 * 1024);
        released = released.max(pushed - scan.hold_back() as u64);
    }
    let f = scan.finish();
    check(f, released, &mut findings);
    findings
}

#[test]
fn split_at_every_offset_in_two_pieces() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let body = body_with_secret(100, 60);
    for cut in 0..=body.len() {
        let f = stream(&engine, &body, &[cut]);
        assert_eq!(f.len(), 1, "cut at {cut}: {f:?}");
        assert_eq!(f[0].rule, "github.pat_classic");
        assert_eq!(f[0].span, Some(100..100 + SECRET.len() as u64));
    }
}

#[test]
fn byte_by_byte_and_around_batch_edges() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let body = body_with_secret(40, 40);
    let cuts: Vec<usize> = (1..body.len()).collect();
    let f = stream(&engine, &body, &cuts);
    assert_eq!(f.len(), 1);
    // Long bodies: the secret straddles the points where batches are scanned.
    for before in [16 * 1024 - 20, 16 * 1024 + 4096, 40_000, 70_000 - 7] {
        let body = body_with_secret(before, 50_000);
        for step in [1000usize, 4096, 16 * 1024, 65_536] {
            let cuts: Vec<usize> = (1..).map(|k| k * step).take_while(|&c| c < body.len()).collect();
            let f = stream(&engine, &body, &cuts);
            assert_eq!(f.len(), 1, "before {before} step {step}: {f:?}");
            assert_eq!(f[0].span, Some(before as u64..(before + SECRET.len()) as u64));
        }
    }
}

#[test]
fn redaction_by_span_masks_exactly_the_secret() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let text = b"{\"card\": \"4111 1111 1111 1111\", \"name\": \"x\"}".to_vec();
    let mut scan = engine.request_body(BodyMeta { content_type: Some("application/json"), content_encoding: None });
    let mut f = scan.push(&text);
    f.extend(scan.finish());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].action, Action::Redact);
    let mut out = text.clone();
    let s = f[0].span.clone().unwrap();
    redact_in_place(&mut out, s.start as usize..s.end as usize);
    assert_eq!(out, b"{\"card\": \"*******************\", \"name\": \"x\"}".to_vec());
}

#[test]
fn many_secrets_in_one_long_stream_are_each_reported_once() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let mut body = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200 {
        body.extend_from_slice(format!("line {i} filler text without anything ").as_bytes());
        if i % 10 == 3 {
            expected.push(body.len() as u64);
            body.extend_from_slice(format!("npm_{:036}", i).replace('0', "a").as_bytes());
            body.push(b' ');
        }
    }
    let cuts: Vec<usize> = (1..).map(|k| k * 777).take_while(|&c| c < body.len()).collect();
    let f = stream(&engine, &body, &cuts);
    let starts: Vec<u64> = f.iter().filter(|x| x.rule == "npm.token").map(|x| x.span.clone().unwrap().start).collect();
    assert_eq!(starts, expected);
}
