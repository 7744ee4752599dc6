//! Scanner benchmark: engine GB/s and recall on a deterministic corpus with planted secrets,
//! against `memchr::memmem` (an upper bound for any byte scan) and Hyperscan when available.
//!
//! Hyperscan runs through `scripts/hyperscan_bench.py` in the repository's `.tools/venv`, into
//! which the PyPI `hyperscan` wheel is installed on first use; all three numbers come from the
//! same process run on the same corpus, so their ratios are meaningful on a shared machine.

use std::fmt;
use std::path::{Path, PathBuf};
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
            Ok(g) => format!("{g:.3} GB/s"),
            Err(why) => format!("skipped ({why})"),
        };
        let vs_hs = match &self.hyperscan {
            Ok(g) => format!("{:.2}x", self.engine_gbps / g),
            Err(_) => "n/a".into(),
        };
        format!(
            "| measure | value |\n|---|---|\n| corpus | {} bytes |\n| cork-scan engine | {:.3} GB/s |\n| memchr::memmem | {:.2} GB/s |\n| Hyperscan | {} |\n| engine / memmem | {:.4} |\n| engine / Hyperscan | {} |\n| recall | {}/{} planted |\n| findings | {} |\n",
            self.corpus_bytes, self.engine_gbps, self.memmem_gbps, hs, self.engine_gbps / self.memmem_gbps, vs_hs, self.recalled, self.planted, self.findings
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
    // Best of several passes too: a single pass of a few milliseconds is mostly noise.
    let mut memmem = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let n = memchr::memmem::find_iter(&corpus.bytes, b"cork-bench-absent-needle").count();
        memmem = memmem.min(t.elapsed().as_secs_f64().max(1e-9));
        anyhow::ensure!(n == 0, "memmem baseline needle unexpectedly present");
    }
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
    let python = hyperscan_python()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hyperscan_bench.py");
    let file = std::env::temp_dir().join(format!("cork-scan-corpus-{}.bin", std::process::id()));
    std::fs::write(&file, corpus).map_err(|e| format!("writing corpus: {e}"))?;
    let out = Command::new(&python).arg(&script).arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let out = out.map_err(|e| format!("{}: {e}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("hyperscan unavailable").to_string());
    }
    stdout.lines().last().and_then(|l| l.trim().parse().ok()).ok_or_else(|| format!("unexpected output: {stdout}"))
}

/// A Python that can `import hyperscan`: the repository's `.tools/venv` (the one
/// `cargo xtask test` creates), created and given the PyPI `hyperscan` wheel (which bundles
/// the library, so no system package is needed) when missing.
fn hyperscan_python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no repository root")?.to_path_buf();
    let venv = root.join(".tools/venv");
    let python = venv.join("bin/python");
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")))
        }
    };
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).map_err(|e| format!("no Python virtualenv: {e}"))?;
    }
    if run(Command::new(&python).args(["-c", "import hyperscan"])).is_err() {
        eprintln!("bench: pip install hyperscan into {}", venv.display());
        run(Command::new(&python).args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "hyperscan"]))
            .map_err(|e| format!("cannot install the hyperscan wheel (needs x86_64 Linux and PyPI): {e}"))?;
    }
    Ok(python)
}
