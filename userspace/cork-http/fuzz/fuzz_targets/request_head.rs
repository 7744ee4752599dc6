//! Request heads: parsing never panics, and what parses re-serialises to something that parses
//! to the same head with the same framing decision.
#![no_main]
use cork_http::framing::request_framing;
use cork_http::{Limits, RequestHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_head_bytes: 8192, max_headers: 32 };
    if let Ok(Some((head, used))) = RequestHead::parse(data, &limits) {
        assert!(used <= data.len());
        let framing = request_framing(&head);
        let again = RequestHead::parse(&head.to_bytes(), &Limits { max_head_bytes: 1 << 20, max_headers: 64 });
        let (reparsed, _) = again.expect("a parsed head re-parses").expect("complete");
        assert_eq!(reparsed, head);
        assert_eq!(request_framing(&reparsed), framing);
    }
});
