//! `cork scan` input lines.
#![no_main]
use cork_scan::{exchange::scan_jsonl, Engine, ScanConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let mut out = Vec::new();
    let summary = scan_jsonl(data, &mut out, &engine).unwrap();
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count() as u64, summary.lines);
});
