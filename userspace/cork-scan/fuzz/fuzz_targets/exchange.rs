//! `cork scan` input lines.
#![no_main]
use cork_scan::{exchange::scan_jsonl, Engine, ScanConfig};
use libfuzzer_sys::fuzz_target;

/// Built once: a build takes ~30 ms, which would cap the fuzzer at ~30 inputs a second.
fn engine() -> &'static Engine {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(&ScanConfig::default()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let engine = engine();
    let mut out = Vec::new();
    let summary = scan_jsonl(data, &mut out, engine).unwrap();
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count() as u64, summary.lines);
});
