//! Every rule against its own examples (must fire) and near misses (must not), in every place
//! a secret can travel: a request body, a header and a URL query.

use cork_scan::template::{expand, Rng};
use cork_scan::{rules, BodyMeta, Engine, RuleMode, ScanConfig};

fn engine_with_all_rules() -> Engine {
    let mut cfg = ScanConfig::default();
    for r in rules().filter(|r| r.optional) {
        cfg.overrides.insert(r.id.to_string(), RuleMode::Audit);
    }
    Engine::new(&cfg).expect("default rules compile")
}

fn body_rules(engine: &Engine, text: &str) -> Vec<String> {
    let mut scan = engine.request_body(BodyMeta::default());
    let mut f = scan.push(text.as_bytes());
    f.extend(scan.finish());
    f.into_iter().map(|f| f.rule).collect()
}

#[test]
fn catalog_has_enough_rules_with_tests() {
    let with_examples = rules().filter(|r| !r.examples.is_empty() && !r.near_misses.is_empty()).count();
    assert!(with_examples >= 60, "only {with_examples} rules carry both examples and near misses");
    let mut ids: Vec<_> = rules().map(|r| r.id).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "duplicate rule ids");
}

#[test]
fn every_example_fires_its_rule() {
    let engine = engine_with_all_rules();
    for r in rules() {
        for (k, ex) in r.examples.iter().enumerate() {
            for seed in 0..4u64 {
                let text = expand(ex, &mut Rng::new(seed * 31 + k as u64));
                let padded = format!("prefix text {text} suffix text");
                let got = body_rules(&engine, &padded);
                assert!(got.iter().any(|g| g == r.id), "rule {} missed example {:?}; got {:?}", r.id, text, got);
            }
        }
    }
}

#[test]
fn no_near_miss_fires_its_rule() {
    let engine = engine_with_all_rules();
    for r in rules() {
        for (k, nm) in r.near_misses.iter().enumerate() {
            for seed in 0..4u64 {
                let text = expand(nm, &mut Rng::new(seed * 17 + k as u64));
                let got = body_rules(&engine, &format!("some data: {text}; end"));
                assert!(!got.iter().any(|g| g == r.id), "rule {} fired on near miss {:?}", r.id, text);
            }
        }
    }
}

#[test]
fn examples_are_found_in_headers_and_query_strings() {
    let engine = engine_with_all_rules();
    for r in rules().filter(|r| r.direction == "egress") {
        for ex in r.examples.iter().filter(|e| !e.contains('\n')) {
            let text = expand(ex, &mut Rng::new(99));
            let header: Vec<String> = engine.scan_header("x-data", text.as_bytes()).into_iter().map(|f| f.rule).collect();
            assert!(header.iter().any(|g| g == r.id), "rule {} missed in a header: {text:?} -> {header:?}", r.id);
            let encoded: String = text.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
            let url = format!("https://example.com/p?q={encoded}&x=1");
            let found: Vec<String> = engine.scan_url(&url).into_iter().map(|f| f.rule).collect();
            assert!(found.iter().any(|g| g == r.id), "rule {} missed in a URL: {url} -> {found:?}", r.id);
        }
    }
}

#[test]
fn documentation_keys_are_allowed_but_configurable() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    assert!(body_rules(&engine, "aws_access_key_id = AKIAIOSFODNN7EXAMPLE").is_empty());
    let strict = Engine::new(&ScanConfig { allow_documentation_examples: false, ..ScanConfig::default() }).unwrap();
    assert_eq!(body_rules(&strict, "aws_access_key_id = AKIAIOSFODNN7EXAMPLE"), vec!["aws.access_key_id"]);
}

#[test]
fn benign_shapes_stay_quiet() {
    let engine = engine_with_all_rules();
    let benign = [
        "id: 550e8400-e29b-41d4-a716-446655440000",
        "<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==\">",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 and 1a2b3c4d",
        "{\"created_at\":\"2024-01-01T00:00:00Z\",\"count\":1234567890123,\"price\":12.50}",
        "The quick brown fox jumps over the lazy dog, again and again, until the story ends.",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ];
    for b in benign {
        let got = body_rules(&engine, b);
        assert!(got.is_empty(), "benign text fired {got:?}: {b}");
    }
}
