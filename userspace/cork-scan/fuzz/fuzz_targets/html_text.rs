//! Readable-text extraction (`/fetch`): any bytes give bounded text, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let got = cork_scan::html::readable_text(data, 4096);
    assert!(got.text.len() <= 4096);
    assert!(got.hidden_bytes <= data.len());
});
