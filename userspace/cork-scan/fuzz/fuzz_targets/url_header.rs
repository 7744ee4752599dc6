//! URLs, headers, host names and IP literals.
#![no_main]
use cork_scan::{Engine, ScanConfig};
use libfuzzer_sys::fuzz_target;

/// Built once: a build takes ~30 ms, which would cap the fuzzer at ~30 inputs a second.
fn engine() -> &'static Engine {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(&ScanConfig::default()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let engine = engine();
    let s = String::from_utf8_lossy(data);
    let _ = engine.scan_url(&s);
    let _ = engine.scan_header("authorization", data);
    let _ = engine.scan_hostname(&s);
    let _ = cork_scan::url::classify_ip(&s);
});
