//! A secret or canary is still caught when it is encoded, split or disguised.

use base64::Engine as _;
use cork_scan::{Action, BodyMeta, Engine, ScanConfig};

const SECRET: &str = "ghp_Zq8Lr2mX0pV7kT4nB9wY6sH1aC3dE5fG7hJ9";

fn engine() -> Engine {
    Engine::new(&ScanConfig { canaries: vec!["cork-canary-7f3a9c1e".into()], ..ScanConfig::default() }).unwrap()
}

fn scan(engine: &Engine, ct: Option<&str>, body: &[u8]) -> Vec<cork_scan::Finding> {
    let mut s = engine.request_body(BodyMeta { content_type: ct, content_encoding: None });
    let mut f = s.push(body);
    f.extend(s.finish());
    f
}

fn rules(f: &[cork_scan::Finding]) -> Vec<&str> {
    f.iter().map(|x| x.rule.as_str()).collect()
}

fn url_encode(s: &[u8]) -> String {
    s.iter().map(|&b| format!("%{b:02X}")).collect()
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn hex(s: &[u8]) -> String {
    s.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn single_layers() {
    let e = engine();
    let b32 = data_encoding::BASE32.encode(SECRET.as_bytes());
    let cases: Vec<(String, &str)> = vec![
        (url_encode(SECRET.as_bytes()), "url"),
        (b64(SECRET.as_bytes()), "base64"),
        (base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET.as_bytes()), "base64"),
        (b32, "base32"),
        (hex(SECRET.as_bytes()), "hex"),
        (SECRET.bytes().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"), "hex"),
        (SECRET.bytes().map(|b| format!("\\x{b:02x}")).collect::<String>(), "hex"),
        (SECRET.chars().map(|c| format!("{c}\u{200b}")).collect::<String>(), "unicode"),
        (SECRET.replace('p', "р").replace('Z', "Ｚ"), "unicode"),
    ];
    for (enc, layer) in cases {
        let body = format!("data = {enc} end");
        let f = scan(&e, None, body.as_bytes());
        let hit = f.iter().find(|x| x.rule == "github.pat_classic");
        let hit = hit.unwrap_or_else(|| panic!("missed {layer}: {enc} -> {f:?}"));
        assert!(hit.encoding.starts_with(layer), "{layer}: {}", hit.encoding);
        // The span covers the encoded form, inside the body.
        let span = hit.span.clone().unwrap();
        assert!(span.start >= 7 && span.end as usize <= body.len() - 4, "{layer}: {span:?} of {}", body.len());
    }
}

#[test]
fn chains_of_layers() {
    let e = engine();
    let chained = b64(url_encode(hex(SECRET.as_bytes()).as_bytes()).as_bytes());
    let f = scan(&e, None, format!("x={chained}").as_bytes());
    let hit = f.iter().find(|x| x.rule == "github.pat_classic").expect("three layers");
    assert_eq!(hit.encoding, "base64>url>hex");
    let twice = url_encode(url_encode(SECRET.as_bytes()).as_bytes());
    assert!(rules(&scan(&e, None, twice.as_bytes())).contains(&"github.pat_classic"));
}

#[test]
fn depth_is_bounded() {
    let e = engine();
    let mut s = SECRET.as_bytes().to_vec();
    for _ in 0..12 {
        s = b64(&s).into_bytes();
    }
    // Too deep to follow, and it must still return promptly with a verdict.
    let f = scan(&e, None, &s);
    assert!(!rules(&f).contains(&"github.pat_classic"));
}

#[test]
fn split_over_json_fields_and_query_parameters() {
    let e = engine();
    let (a, b) = SECRET.split_at(17);
    let body = format!("{{\"part1\":\"{a}\",\"part2\":\"{b}\"}}");
    let f = scan(&e, Some("application/json"), body.as_bytes());
    let hit = f.iter().find(|x| x.rule == "github.pat_classic").expect("joined JSON fields");
    assert_eq!(hit.action, Action::Block);
    let url = format!("https://x.test/?a={a}&b={b}");
    assert!(e.scan_url(&url).iter().any(|x| x.rule == "github.pat_classic" && x.location == "url.query"));
    let form = format!("a={}&b={}", url_encode(a.as_bytes()), b);
    assert!(rules(&scan(&e, Some("application/x-www-form-urlencoded"), form.as_bytes())).contains(&"github.pat_classic"));
    let escaped: String = SECRET.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    let f = scan(&e, Some("application/json"), format!("{{\"k\":\"{escaped}\"}}").as_bytes());
    assert!(f.iter().any(|x| x.rule == "github.pat_classic" && x.encoding == "json-escape"), "{f:?}");
}

#[test]
fn canaries_block_in_every_encoding() {
    let e = engine();
    let c = b"cork-canary-7f3a9c1e";
    for enc in [String::from_utf8(c.to_vec()).unwrap(), b64(c), hex(c), url_encode(c), b64(b64(c).as_bytes())] {
        let f = scan(&e, None, format!("payload {enc} tail").as_bytes());
        let hit = f.iter().find(|x| x.rule == "canary").unwrap_or_else(|| panic!("canary missed as {enc}"));
        assert_eq!(hit.action, Action::Block);
    }
    assert!(e.scan_url("https://x.test/cork-canary-7f3a9c1e").iter().any(|f| f.rule == "canary"));
    assert!(e.scan_header("cookie", b"a=Y29yay1jYW5hcnktN2YzYTljMWU=").iter().any(|f| f.rule == "canary"));
    // Audit preset still blocks canaries.
    let audit = Engine::new(&ScanConfig { preset: cork_scan::Preset::Audit, canaries: vec!["cork-canary-7f3a9c1e".into()], ..ScanConfig::default() }).unwrap();
    assert_eq!(scan(&audit, None, c)[0].action, Action::Block);
}

#[test]
fn images_and_uuids_are_not_secrets() {
    let e = engine();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend((0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    let body = format!("{{\"image\":\"data:image/png;base64,{}\",\"id\":\"550e8400-e29b-41d4-a716-446655440000\"}}", b64(&png));
    assert!(scan(&e, Some("application/json"), body.as_bytes()).is_empty());
}

/// The scanner does not base64-decode tokens of hex digits and dashes (UUIDs): no example of
/// any rule, at any alignment, in either alphabet, encodes to such a token, and each one is
/// still found base64-encoded inside a UUID-heavy body.
#[test]
fn base64_secrets_are_never_hex_and_dashes() {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut rng = cork_scan::template::Rng::new(5);
    let hex_and_dashes = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let mut checked = 0;
    for rule in cork_scan::rules() {
        for ex in rule.examples {
            for _ in 0..4 {
                let secret = cork_scan::template::expand(ex, &mut rng);
                for skip in 0..3 {
                    let bytes = &secret.as_bytes()[skip.min(secret.len())..];
                    for enc in [STANDARD_NO_PAD.encode(bytes), URL_SAFE_NO_PAD.encode(bytes)] {
                        assert!(enc.len() < 16 || !hex_and_dashes(&enc), "{}: {secret:?} encodes to {enc}", rule.id);
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} encodings checked");
    let e = engine();
    let uuids = "{\"uuid\":\"550e8400-e29b-41d4-a716-446655440000\"}\n".repeat(50);
    let body = format!("{uuids}{{\"blob\":\"{}\"}}\n{uuids}", b64(SECRET.as_bytes()));
    assert!(rules(&scan(&e, Some("application/json"), body.as_bytes())).contains(&"github.pat_classic"));
}
