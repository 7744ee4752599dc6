//! Throughput per kind of input and direction, to find slow paths:
//! `cargo run --release -p cork-scan --features corpus --example parts [prose|json|html|base64|corpus|corpus-KIND|pattern]`.
//! "request" scans as an upload (DLP and encodings), "response" as a download (prompt injection).
use std::time::Instant;
use base64::Engine as _;
use cork_scan::corpus::Piece;
use cork_scan::{BodyMeta, BodyScan, Engine, ScanConfig};

/// Best of five (or of `PARTS_RUNS`, more for a sampling profiler): single runs of a few
/// milliseconds are dominated by noise.
fn gbps(data: &[u8], start: impl Fn() -> BodyScan) -> (f64, usize) {
    let runs = std::env::var("PARTS_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let (mut best, mut n) = (f64::MAX, 0);
    for _ in 0..runs {
        let t = Instant::now();
        let mut s = start();
        n = 0;
        for c in data.chunks(64 << 10) {
            n += s.push(c).len();
        }
        n += s.finish().len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (data.len() as f64 / 1e9 / best, n)
}

fn main() {
    let engine = Engine::new(&ScanConfig::default()).unwrap();
    let mut rng = cork_scan::template::Rng::new(1);
    let rand: Vec<u8> = (0..6 << 20).map(|_| rng.next_u64() as u8).collect();
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("prose", "The committee reviewed the quarterly results and agreed to revisit the budget next month. ".repeat(80_000).into_bytes()),
        ("json", "{\"id\":123,\"uuid\":\"550e8400-e29b-41d4-a716-446655440000\",\"name\":\"user42\",\"score\":12.5,\"created\":\"2024-01-11T10:20:00Z\"}\n".repeat(60_000).into_bytes()),
        ("html", "<div class=\"card\"><a href=\"https://www.example.com/articles/123\">Read more</a><p style=\"color:#333\">Text here.</p></div>\n".repeat(60_000).into_bytes()),
        ("base64", base64::engine::general_purpose::STANDARD.encode(&rand).into_bytes()),
        // The bench's own mix, and the bench origin's `/bytes/N` body (one endless token run).
        ("corpus", cork_scan::corpus::generate(8 << 20, 256 << 10, 42).bytes),
        // The bench mix's pieces one kind at a time (the kinds above are one piece repeated).
        ("corpus-prose", cork_scan::corpus::generate_only(8 << 20, 256 << 10, 42, Some(Piece::Prose)).bytes),
        ("corpus-json", cork_scan::corpus::generate_only(8 << 20, 256 << 10, 42, Some(Piece::Json)).bytes),
        ("corpus-html", cork_scan::corpus::generate_only(8 << 20, 256 << 10, 42, Some(Piece::Html)).bytes),
        ("corpus-base64", cork_scan::corpus::generate_only(8 << 20, 256 << 10, 42, Some(Piece::Base64)).bytes),
        ("pattern", b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_".repeat(120_000)),
    ];
    // Optional arguments pick one part and one direction (for profiling).
    let only = std::env::args().nth(1);
    let dir = std::env::args().nth(2);
    for (name, data) in inputs.into_iter().filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n)) {
        let skip = |d: &str| dir.as_deref().is_some_and(|x| x != d);
        let (up, found_up) = if skip("request") { (0.0, 0) } else { gbps(&data, || engine.request_body(BodyMeta::default())) };
        let (down, found_down) = if skip("response") { (0.0, 0) } else { gbps(&data, || engine.response_body(BodyMeta::default())) };
        println!("{name:8} request {up:6.3} GB/s ({found_up} findings)  response {down:6.3} GB/s ({found_down} findings)");
    }
}
