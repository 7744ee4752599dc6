#![no_main]
use cork_http::framing::response_framing;
use cork_http::{Limits, ResponseHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, _))) = ResponseHead::parse(data, &Limits::default()) {
        let _ = response_framing("GET", &head);
        let _ = response_framing("HEAD", &head);
    }
});
