//! Compressed bodies: decoders fed hostile bytes must end in a verdict, bounded in memory.
#![no_main]
use cork_scan::{BodyMeta, Engine, ScanConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let Some((&sel, rest)) = data.split_first() else { return };
    let ce = ["gzip", "deflate", "br", "zstd"][sel as usize % 4];
    let mut scan = engine.response_body(BodyMeta { content_type: Some("text/html"), content_encoding: Some(ce) });
    for c in rest.chunks(1 + sel as usize) {
        let _ = scan.push(c);
    }
    let _ = scan.finish();
});
