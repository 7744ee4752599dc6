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

/// A long body mixing prose, markup, JSON lines, numbers, long base64 blobs and non-ASCII
/// text, with every egress rule's examples (and encoded secrets) planted at random gaps, so
/// that secrets lie across every kind of push and window boundary.
fn mixed_body(seed: u64, len: usize) -> (Vec<u8>, Vec<(&'static str, std::ops::Range<usize>)>) {
    use base64::Engine as _;
    use cork_scan::template::{expand, Rng};
    let mut rng = Rng::new(seed);
    let examples: Vec<(&'static str, String)> = cork_scan::rules()
        .filter(|r| r.direction == "egress" && !r.optional)
        .flat_map(|r| r.examples.iter().map(move |e| (r.id, *e)))
        .map(|(id, e)| (id, expand(e, &mut Rng::new(seed ^ 0x5eed))))
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    let homoglyph = SECRET.replace('p', "р");
    let mut body = Vec::new();
    let mut planted = Vec::new();
    while body.len() < len {
        match rng.below(9) {
            0 => body.extend_from_slice(b"The committee reviewed the quarterly results and agreed to revisit the budget next month. "),
            1 => body.extend_from_slice(b"<div class=\"card\"><a href=\"https://www.example.com/articles/123\">Read more</a></div>\n"),
            2 => body.extend_from_slice(b"{\"id\":123,\"uuid\":\"550e8400-e29b-41d4-a716-446655440000\",\"score\":12.5,\"created\":\"2024-01-11T10:20:00Z\"}\n"),
            3 => {
                // A long random base64 blob: a token run that often crosses a window end.
                let raw: Vec<u8> = (0..rng.below(9000) + 100).map(|_| rng.next_u64() as u8).collect();
                body.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(raw).as_bytes());
                body.push(b'\n');
            }
            4 => body.extend_from_slice("Grüße aus Köln, naïve café déjà vu — 東京 ".as_bytes()),
            5 => body.extend_from_slice(b"order 1234 5678 90 shipped 2024-01-11 ref 998877 item 42 qty 7 "),
            6 => {
                // Lowercase words, long runs of them (which may hold a seed phrase) crossing
                // window ends; now and then a seed phrase in the run.
                let end = body.len() + 200 + rng.below(4000);
                while body.len() < end {
                    if rng.below(60) == 0 {
                        body.extend_from_slice(b"legal winner thank year wave sausage worth useful legal winner thank yellow ");
                    }
                    let len = [2, 3, 4, 5, 6, 7, 9][rng.below(7)];
                    body.extend((0..len).map(|_| b'a' + rng.below(26) as u8));
                    body.push(if rng.below(30) == 0 { b'.' } else { b' ' });
                }
            }
            _ => {
                let pick = rng.below(examples.len() + 3);
                let (id, text) = match pick.checked_sub(examples.len()) {
                    None => (examples[pick].0, examples[pick].1.clone()),
                    Some(0) => ("github.pat_classic", b64.clone()),
                    Some(1) => ("github.pat_classic", hex.clone()),
                    Some(_) => ("github.pat_classic", homoglyph.clone()),
                };
                body.extend_from_slice(b"\nprefix text ");
                planted.push((id, body.len()..body.len() + text.len()));
                body.extend_from_slice(text.as_bytes());
                body.extend_from_slice(b" suffix text\n");
            }
        }
    }
    (body, planted)
}

fn summary(f: &[Finding]) -> Vec<(String, Option<std::ops::Range<u64>>, String)> {
    let mut v: Vec<_> = f.iter().map(|x| (x.rule.clone(), x.span.clone(), x.encoding.clone())).collect();
    v.sort_by(|a, b| (a.1.as_ref().map(|s| (s.start, s.end)), &a.0).cmp(&(b.1.as_ref().map(|s| (s.start, s.end)), &b.0)));
    v
}

/// Findings (rule, span, encoding) do not depend on how the body is cut into pushes: one
/// push, a byte at a time, 64 KiB, batch-sized and random pieces all agree, and every planted
/// example is found where it was put.
#[test]
fn every_chunking_gives_the_same_findings() {
    use cork_scan::template::Rng;
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    for seed in 1..=3u64 {
        let (body, planted) = mixed_body(seed, 300_000);
        let whole = summary(&stream(&engine, &body, &[]));
        for (id, r) in &planted {
            assert!(
                whole.iter().any(|(rule, span, _)| rule == id && span.as_ref().is_some_and(|s| s.start < r.end as u64 && (r.start as u64) < s.end)),
                "seed {seed}: planted {id} at {r:?} not found"
            );
        }
        let mut rng = Rng::new(seed);
        let random: Vec<usize> = {
            let mut v = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let most = if rng.below(4) == 0 { 70_000 } else { 3000 };
                at += 1 + rng.below(most);
                v.push(at.min(body.len()));
            }
            v
        };
        let steps = |step: usize| -> Vec<usize> { (1..).map(|k| k * step).take_while(|&c| c < body.len()).collect() };
        for (name, cuts) in [
            ("bytes", steps(1)),
            ("64 KiB", steps(65_536)),
            ("48 KiB + 1", steps(48 * 1024 + 1)),
            ("7001", steps(7001)),
            ("333", steps(333)),
            ("random", random),
        ] {
            let got = summary(&stream(&engine, &body, &cuts));
            let missing: Vec<_> = whole.iter().filter(|x| !got.contains(x)).collect();
            let extra: Vec<_> = got.iter().filter(|x| !whole.contains(x)).collect();
            assert!(missing.is_empty() && extra.is_empty(), "seed {seed}, pieces of {name}: missing {missing:?}, extra {extra:?}");
        }
    }
}

/// A secret at every position around the end of the first 64 KiB window (where the final
/// point falls, and where a quiet tail moves it), pushed in 64 KiB and odd-sized pieces.
#[test]
fn secret_around_the_first_window_end() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    for before in (65_536 - 7400..65_536 + 64).step_by(41) {
        let body = body_with_secret(before, 70_000);
        for step in [65_536usize, 50_001] {
            let cuts: Vec<usize> = (1..).map(|k| k * step).take_while(|&c| c < body.len()).collect();
            let f = stream(&engine, &body, &cuts);
            assert_eq!(f.len(), 1, "before {before} step {step}: {f:?}");
            assert_eq!(f[0].span, Some(before as u64..(before + SECRET.len()) as u64));
        }
    }
}

/// The tail scanned again shrinks when nothing is open at the window's end: after a 64 KiB
/// push of prose (sentences: no region runs into the end), less than the longest match (~7 KiB) is held back.
#[test]
fn quiet_tail_is_not_held_back_in_full() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let body = b"The committee reviewed the quarterly results and agreed to revisit the budget next month. ".repeat(3000);
    let mut scan = engine.request_body(BodyMeta::default());
    let mut held = Vec::new();
    for c in body.chunks(65_536) {
        scan.push(c);
        held.push(scan.hold_back());
    }
    assert!(held.iter().any(|&h| h > 0 && h < 4096), "held back {held:?}");
}
