//! URLs, headers, host names and IP literals.
#![no_main]
use cork_scan::{Engine, ScanConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let s = String::from_utf8_lossy(data);
    let _ = engine.scan_url(&s);
    let _ = engine.scan_header("authorization", data);
    let _ = engine.scan_hostname(&s);
    let _ = cork_scan::url::classify_ip(&s);
});
