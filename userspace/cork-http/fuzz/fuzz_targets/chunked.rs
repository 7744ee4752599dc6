//! The chunked decoder: never panics, and decoding in two pieces split anywhere gives the same
//! payload and outcome as decoding in one.
#![no_main]
use cork_http::chunked::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fn decode(pieces: &[&[u8]]) -> (Vec<u8>, Result<bool, ()>) {
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    for piece in pieces {
        let mut rest: &[u8] = piece;
        while !rest.is_empty() && !dec.is_done() {
            match dec.decode(rest) {
                Ok(step) => {
                    assert!(step.consumed <= rest.len());
                    if let Some(r) = step.data {
                        out.extend_from_slice(&rest[r]);
                    }
                    if step.consumed == 0 {
                        break;
                    }
                    rest = &rest[step.consumed..];
                }
                Err(_) => return (out, Err(())),
            }
        }
    }
    (out, Ok(dec.is_done()))
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let whole = decode(&[body]);
    let halves = decode(&[&body[..split], &body[split..]]);
    assert_eq!(whole.1, halves.1);
    if whole.1.is_ok() {
        assert_eq!(whole.0, halves.0);
    }
});
