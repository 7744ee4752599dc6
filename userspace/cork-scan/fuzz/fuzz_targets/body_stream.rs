//! Request and response bodies of every content type, pushed in fuzzer-chosen pieces.
#![no_main]
use cork_scan::{BodyMeta, Engine, ScanConfig};
use libfuzzer_sys::fuzz_target;

/// Built once: a build takes ~30 ms, which would cap the fuzzer at ~30 inputs a second.
fn engine() -> &'static Engine {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(&ScanConfig { canaries: vec!["fuzz-canary-123".into()], ..ScanConfig::default() }).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let engine = engine();
    let Some((&sel, rest)) = data.split_first() else { return };
    let ct = ["text/plain", "application/json", "application/x-www-form-urlencoded", "multipart/form-data", "text/event-stream"][sel as usize % 5];
    let meta = BodyMeta { content_type: Some(ct), content_encoding: None };
    let mut scan = if sel & 0x80 != 0 { engine.response_body(meta) } else { engine.request_body(meta) };
    let step = 1 + (sel as usize >> 3 & 0x0f) * 97;
    let mut pushed = 0u64;
    for c in rest.chunks(step) {
        for f in scan.push(c) {
            if let Some(s) = f.span { assert!(s.end <= pushed + c.len() as u64); }
        }
        pushed += c.len() as u64;
        assert!(scan.hold_back() <= 64 << 10);
    }
    let _ = scan.finish();
});
