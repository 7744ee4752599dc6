//! Release-mode throughput and recall on the generated corpus:
//! `cargo run --release -p cork-scan --features corpus --example throughput [MiB]`.

use std::time::Instant;

use cork_scan::{BodyMeta, Engine, ScanConfig};

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let corpus = cork_scan::corpus::generate(mib << 20, 256 << 10, 42);
    let engine = Engine::new(&ScanConfig::default()).expect("engine");
    let mut best = f64::MAX;
    let mut found = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut scan = engine.request_body(BodyMeta::default());
        let mut f = Vec::new();
        for c in corpus.bytes.chunks(64 << 10) {
            f.extend(scan.push(c));
        }
        f.extend(scan.finish());
        best = best.min(t.elapsed().as_secs_f64());
        found = f;
    }
    let t = Instant::now();
    let mut one = engine.request_body(BodyMeta::default());
    let whole = one.push(&corpus.bytes).len() + one.finish().len();
    println!("single push: {:.3} GB/s ({whole} findings)", corpus.bytes.len() as f64 / 1e9 / t.elapsed().as_secs_f64());
    let t = Instant::now();
    let n = memchr::memmem::find_iter(&corpus.bytes, b"zq9-needle-not-present").count();
    let memmem = t.elapsed().as_secs_f64();
    let hit = corpus.planted.iter().filter(|(id, r)| found.iter().any(|f| f.rule == *id && f.span.as_ref().is_some_and(|s| s.start < r.end as u64 && r.start as u64 <= s.start))).count();
    let gb = corpus.bytes.len() as f64 / 1e9;
    println!("bytes {} engine {:.3} GB/s memmem {:.2} GB/s (matches {n}) planted {} found {} findings {}", corpus.bytes.len(), gb / best, gb / memmem, corpus.planted.len(), hit, found.len());
    let missed: Vec<_> = corpus.planted.iter().filter(|(id, r)| !found.iter().any(|f| f.rule == *id && f.span.as_ref().is_some_and(|s| s.start < r.end as u64 && r.start as u64 <= s.start))).map(|(id, r)| (id, String::from_utf8_lossy(&corpus.bytes[r.clone()]).into_owned())).take(10).collect();
    println!("missed (first 10): {missed:?}");
}
