//! Scanner benchmark: engine GB/s and recall on a deterministic corpus with planted secrets,
//! against `memchr::memmem` (an upper bound for any byte scan) and Hyperscan when available.
//!
//! Dependencies this module needs in bench-harness/Cargo.toml:
//! ```toml
//! cork-scan = { path = "../userspace/cork-scan", features = ["corpus"] }
//! memchr = "2"
//! anyhow = { workspace = true }
//! ```
//! and `pub mod scan;` in lib.rs.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cork_scan::{BodyMeta, Engine, ScanConfig};

#[derive(Debug, Clone)]
pub struct ScanBenchReport {
    pub corpus_bytes: usize,
    pub engine_gbps: f64,
    pub memmem_gbps: f64,
    /// `Ok(GB/s)` or the reason it was skipped.
    pub hyperscan: Result<f64, String>,
    pub planted: usize,
    pub recalled: usize,
    pub findings: usize,
}

impl ScanBenchReport {
    pub fn to_markdown(&self) -> String {
        let hs = match &self.hyperscan {
            Ok(g) => format!("{g:.2}"),
            Err(why) => format!("skipped ({why})"),
        };
        format!(
            "| measure | value |\n|---|---|\n| corpus | {} bytes |\n| cork-scan engine | {:.3} GB/s |\n| memchr::memmem | {:.2} GB/s |\n| Hyperscan | {} |\n| recall | {}/{} planted |\n| findings | {} |\n",
            self.corpus_bytes, self.engine_gbps, self.memmem_gbps, hs, self.recalled, self.planted, self.findings
        )
    }
}

impl fmt::Display for ScanBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_markdown())
    }
}

/// Runs the benchmark; `quick` uses a small corpus and one round.
pub fn run(quick: bool) -> anyhow::Result<ScanBenchReport> {
    let size = if quick { 4 << 20 } else { 64 << 20 };
    let rounds = if quick { 1 } else { 3 };
    let corpus = cork_scan::corpus::generate(size, 256 << 10, 42);
    let engine = Engine::new(&ScanConfig::default())?;
    let mut best = f64::MAX;
    let mut found = Vec::new();
    for _ in 0..rounds {
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
    let n = memchr::memmem::find_iter(&corpus.bytes, b"cork-bench-absent-needle").count();
    let memmem = t.elapsed().as_secs_f64().max(1e-9);
    anyhow::ensure!(n == 0, "memmem baseline needle unexpectedly present");
    let recalled = corpus
        .planted
        .iter()
        .filter(|(id, r)| found.iter().any(|f| f.rule == *id && f.span.as_ref().is_some_and(|s| s.start < r.end as u64 && r.start as u64 <= s.start)))
        .count();
    let gb = corpus.bytes.len() as f64 / 1e9;
    Ok(ScanBenchReport {
        corpus_bytes: corpus.bytes.len(),
        engine_gbps: gb / best,
        memmem_gbps: gb / memmem,
        hyperscan: hyperscan(&corpus.bytes),
        planted: corpus.planted.len(),
        recalled,
        findings: found.len(),
    })
}

/// Runs `scripts/hyperscan_bench.py` on the corpus; it prints the GB/s on its last line.
fn hyperscan(corpus: &[u8]) -> Result<f64, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hyperscan_bench.py");
    let file = std::env::temp_dir().join(format!("cork-scan-corpus-{}.bin", std::process::id()));
    std::fs::write(&file, corpus).map_err(|e| format!("writing corpus: {e}"))?;
    let out = Command::new("python3").arg(&script).arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let out = out.map_err(|e| format!("python3: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("hyperscan unavailable").to_string());
    }
    stdout.lines().last().and_then(|l| l.trim().parse().ok()).ok_or_else(|| format!("unexpected output: {stdout}"))
}
