//! The fuzz targets' properties, checked on a deterministic stream of mutated inputs so that they
//! run in every `cargo test` (cargo fuzz explores far more; see `fuzz/`).

use cork_http::chunked::ChunkedDecoder;
use cork_http::framing::request_framing;
use cork_http::{Limits, RequestHead};

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const SEEDS: [&[u8]; 4] = [
    b"POST /a?b=c HTTP/1.1\r\nHost: x.test\r\nContent-Length: 5\r\n\r\nhello",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nX: y\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
];

fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..(rng.next() % 6) {
        let pos = (rng.next() as usize) % (v.len() + 1);
        match rng.next() % 4 {
            0 if pos < v.len() => v[pos] = rng.next() as u8,
            1 => v.insert(pos, b"\r\n :;0aZ\t\x00\xff"[(rng.next() % 11) as usize]),
            2 if pos < v.len() => {
                v.remove(pos);
            }
            _ => {
                let end = (pos + (rng.next() % 8) as usize).min(v.len());
                let copy = v[pos..end].to_vec();
                v.splice(pos..pos, copy);
            }
        }
    }
    v
}

#[test]
fn heads_reparse_to_themselves() {
    let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
    let limits = Limits { max_head_bytes: 8192, max_headers: 32 };
    let mut parsed = 0;
    for i in 0..20_000 {
        let input = mutate(&mut rng, SEEDS[i % SEEDS.len()]);
        if let Ok(Some((head, used))) = RequestHead::parse(&input, &limits) {
            parsed += 1;
            assert!(used <= input.len());
            let (again, _) = RequestHead::parse(&head.to_bytes(), &limits).unwrap().unwrap();
            assert_eq!(again, head, "input {:?}", String::from_utf8_lossy(&input));
            assert_eq!(request_framing(&again), request_framing(&head));
        }
    }
    assert!(parsed > 1000, "the mutations still produce valid heads ({parsed})");
}

#[test]
fn chunked_decoding_does_not_depend_on_splits() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    for i in 0..5_000 {
        let input = mutate(&mut rng, SEEDS[3 - (i % 2)]);
        let body = match input.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(p) if i % 2 == 1 => input[p + 4..].to_vec(),
            _ => input.clone(),
        };
        let whole = decode(&[&body]);
        for split in 0..=body.len() {
            assert_eq!(decode(&[&body[..split], &body[split..]]), whole, "split {split} of {:?}", String::from_utf8_lossy(&body));
        }
    }
}

fn decode(pieces: &[&[u8]]) -> (Vec<u8>, Result<bool, cork_http::chunked::ChunkedError>) {
    let mut dec = ChunkedDecoder::default();
    let mut out = Vec::new();
    for piece in pieces {
        let mut rest: &[u8] = piece;
        while !rest.is_empty() && !dec.is_done() {
            match dec.decode(rest) {
                Ok(step) => {
                    if let Some(r) = step.data {
                        out.extend_from_slice(&rest[r]);
                    }
                    rest = &rest[step.consumed..];
                }
                Err(e) => return (out, Err(e)),
            }
        }
    }
    (out, Ok(dec.is_done()))
}
