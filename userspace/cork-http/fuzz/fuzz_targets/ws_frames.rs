//! The WebSocket frame parser and message assembler: never panic, a header parsed from a prefix
//! is either "need more" or the same header, and a parsed frame re-encodes to the same header.
#![no_main]
use cork_http::ws::{apply_mask, encode_frame, parse_header, Assembler, Role};
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 1 << 16;

fn walk(mut buf: &[u8], role: Role) {
    let mut asm = Assembler::new(LIMIT);
    while !buf.is_empty() {
        let header = match parse_header(buf, role, LIMIT) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => return,
        };
        // Every shorter prefix asks for more or fails the same way; none yields another header.
        for n in 0..header.header_len {
            if let Ok(Some(other)) = parse_header(&buf[..n], role, LIMIT) {
                panic!("prefix of {n} bytes parsed as {other:?}, whole as {header:?}");
            }
        }
        let Ok(len) = usize::try_from(header.frame_len()) else { return };
        if buf.len() < len {
            return;
        }
        let mut payload = buf[header.header_len..len].to_vec();
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        let again = encode_frame(header.fin, header.opcode, &payload, header.mask);
        let reparsed = parse_header(&again, role, LIMIT).expect("re-encoded frame parses").expect("complete");
        assert_eq!((reparsed.fin, reparsed.opcode, reparsed.mask, reparsed.payload_len), (header.fin, header.opcode, header.mask, header.payload_len));
        let Ok(frame_role) = asm.begin_frame(&header) else { return };
        let (a, b) = payload.split_at(payload.len() / 2);
        if asm.payload(frame_role, a).and_then(|()| asm.payload(frame_role, b)).and_then(|()| asm.end_frame(frame_role)).is_err() {
            return;
        }
        buf = &buf[len..];
    }
}

fuzz_target!(|data: &[u8]| {
    walk(data, Role::Client);
    walk(data, Role::Server);
});
