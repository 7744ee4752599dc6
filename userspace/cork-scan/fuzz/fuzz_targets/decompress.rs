//! Compressed bodies: decoders fed hostile bytes must end in a verdict, bounded in memory.
#![no_main]
use cork_scan::{BodyMeta, Engine, ScanConfig};
use libfuzzer_sys::fuzz_target;

/// Built once: a build takes ~30 ms, which would cap the fuzzer at ~30 inputs a second.
fn engine() -> &'static Engine {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(&ScanConfig::default()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let engine = engine();
    let Some((&sel, rest)) = data.split_first() else { return };
    let ce = ["gzip", "deflate", "br", "zstd"][sel as usize % 4];
    let mut scan = engine.response_body(BodyMeta { content_type: Some("text/html"), content_encoding: Some(ce) });
    for c in rest.chunks(1 + sel as usize) {
        let _ = scan.push(c);
    }
    let _ = scan.finish();
});
