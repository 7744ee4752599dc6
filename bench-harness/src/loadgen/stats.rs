//! Per-worker counters and the merged report (req/s, MB/s, latency percentiles).

use std::time::Duration;

use serde::Serialize;

/// What one worker saw. Latencies are kept exactly (microseconds) and sorted once at the end.
#[derive(Default)]
pub struct WorkerStats {
    pub latencies_us: Vec<u32>,
    pub ok: u64,
    pub errors: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub first_error: Option<String>,
}

impl WorkerStats {
    pub fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(msg);
        }
    }
}

/// The result of one load run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub concurrency: usize,
    pub requests: u64,
    pub errors: u64,
    pub elapsed_secs: f64,
    pub req_per_sec: f64,
    /// Response body bytes per second, in MB/s (10^6).
    pub down_mb_per_sec: f64,
    /// Request body bytes per second, in MB/s (10^6).
    pub up_mb_per_sec: f64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    pub first_error: Option<String>,
}

pub fn merge(mode: &str, concurrency: usize, elapsed: Duration, workers: Vec<WorkerStats>) -> Report {
    let mut lat = Vec::new();
    let (mut ok, mut errors, mut down, mut up) = (0, 0, 0, 0);
    let mut first_error = None;
    for w in workers {
        lat.extend_from_slice(&w.latencies_us);
        ok += w.ok;
        errors += w.errors;
        down += w.bytes_down;
        up += w.bytes_up;
        if first_error.is_none() {
            first_error = w.first_error;
        }
    }
    lat.sort_unstable();
    let secs = elapsed.as_secs_f64().max(1e-9);
    Report {
        mode: mode.to_owned(),
        concurrency,
        requests: ok,
        errors,
        elapsed_secs: secs,
        req_per_sec: ok as f64 / secs,
        down_mb_per_sec: down as f64 / secs / 1e6,
        up_mb_per_sec: up as f64 / secs / 1e6,
        bytes_down: down,
        bytes_up: up,
        latency_p50_ms: percentile(&lat, 0.50),
        latency_p99_ms: percentile(&lat, 0.99),
        latency_p999_ms: percentile(&lat, 0.999),
        latency_max_ms: lat.last().map_or(0.0, |&v| v as f64 / 1000.0),
        first_error,
    }
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

impl Report {
    /// One human-readable block.
    pub fn human(&self) -> String {
        let mut s = format!(
            "mode={} concurrency={} requests={} errors={} elapsed={:.2}s\n\
             req/s={:.1} down={:.1} MB/s up={:.1} MB/s\n\
             latency p50={:.3}ms p99={:.3}ms p999={:.3}ms max={:.3}ms",
            self.mode,
            self.concurrency,
            self.requests,
            self.errors,
            self.elapsed_secs,
            self.req_per_sec,
            self.down_mb_per_sec,
            self.up_mb_per_sec,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_p999_ms,
            self.latency_max_ms,
        );
        if let Some(e) = &self.first_error {
            s.push_str(&format!("\nfirst error: {e}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7000], 0.999), 7.0);
    }
}
