//! Hostile and malformed input: a verdict, never a panic or a hang.

use cork_scan::template::Rng;
use cork_scan::{BodyMeta, Engine, ScanConfig};

fn all_paths(engine: &Engine, data: &[u8]) {
    for ct in [None, Some("application/json"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), Some("text/event-stream")] {
        for req in [true, false] {
            let meta = BodyMeta { content_type: ct, content_encoding: None };
            let mut s = if req { engine.request_body(meta) } else { engine.response_body(meta) };
            for c in data.chunks(4093) {
                let _ = s.push(c);
            }
            let _ = s.finish();
            let _ = s.push(b"after finish");
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = engine.scan_url(&text);
    let _ = engine.scan_header("x", data);
}

#[test]
fn random_bytes_and_structured_garbage() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let mut rng = Rng::new(5);
    for len in [0usize, 1, 2, 15, 16, 17, 63, 64, 65, 1000, 70_000] {
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        all_paths(&engine, &data);
    }
    let alphabet = b"\"{}[]:,\\u00%=&+/ \nAKIAghp_0123456789abcdefXYZ=\xe2\x80\x8b\xff";
    for round in 0..50 {
        let len = 1 + rng.below(5000);
        let data: Vec<u8> = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        all_paths(&engine, &data);
        let _ = round;
    }
}

#[test]
fn pathological_shapes_finish() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let endless_b64: Vec<u8> = b"QUJD".iter().cycle().take(256 << 10).copied().collect();
    all_paths(&engine, &endless_b64);
    let digits: Vec<u8> = b"4111 ".iter().cycle().take(100_000).copied().collect();
    all_paths(&engine, &digits);
    let words: Vec<u8> = b"abandon ".iter().cycle().take(100_000).copied().collect();
    all_paths(&engine, &words);
    let nested = "[".repeat(100_000) + &"\"\\u0041\",".repeat(10_000);
    all_paths(&engine, nested.as_bytes());
    let unterminated = "{\"a\":\"".to_string() + &"x\\".repeat(100_000);
    all_paths(&engine, unterminated.as_bytes());
    let zw: String = "a\u{200b}".repeat(30_000);
    all_paths(&engine, zw.as_bytes());
    let percent = "%25".repeat(50_000);
    all_paths(&engine, percent.as_bytes());
    let anchors = "AKIA".repeat(30_000);
    all_paths(&engine, anchors.as_bytes());
    let multipart = b"--x\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nghp_trunc";
    all_paths(&engine, multipart);
}

#[test]
fn configs_are_strict() {
    assert!(serde_json::from_str::<ScanConfig>(r#"{"preset":"balanced","unknown":1}"#).is_err());
    assert!(serde_json::from_str::<ScanConfig>(r#"{"preset":"paranoid"}"#).is_err());
    let cfg: ScanConfig = serde_json::from_str(r#"{"overrides":{"no.such.rule":"block"}}"#).unwrap();
    assert!(Engine::new(&cfg).is_err());
    let cfg: ScanConfig = serde_json::from_str(r#"{"overrides":{"canary":"off"}}"#).unwrap();
    assert!(Engine::new(&cfg).is_err());
    let cfg: ScanConfig = serde_json::from_str(r#"{"preset":"strict","overrides":{"jwt":"off","crypto.eth_address":"block"}}"#).unwrap();
    let e = Engine::new(&cfg).unwrap();
    assert_eq!(e.rule_action("jwt"), None);
    assert_eq!(e.rule_action("crypto.eth_address"), Some(cork_scan::Action::Block));
    assert_eq!(e.rule_action("financial.credit_card"), Some(cork_scan::Action::Block));
    let audit = Engine::new(&ScanConfig { preset: cork_scan::Preset::Audit, ..Default::default() }).unwrap();
    assert_eq!(audit.rule_action("github.pat_classic"), Some(cork_scan::Action::Audit));
}
