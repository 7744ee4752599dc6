//! The data-plane paths side by side: for the same 1 MiB keep-alive download, what each of
//! cork's relay paths costs in syscalls per request, next to its throughput and cores.
//!
//! Each path gets its own cork (so one switch differs): bumped HTTP/1.1 with TLS records in
//! rustls on tokio; plain HTTP/1.1 forwarded and scanned, its bodies streamed by tokio or moved on
//! io_uring (the path kTLS legs take once their records are in the kernel); and a passthrough
//! tunnel (TLS end to end, not decrypted) carried by io_uring or by `splice`. A path is first run flat out for its throughput and CPU, then again under
//! `strace -c -f` for the syscall count only (strace slows every syscall, so that second run's
//! speed means nothing). kTLS paths need a kernel with `CONFIG_TLS`: this host has none, and the
//! VM guest (`cargo xtask vm`) runs under TCG emulation, where figures are functional only.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{cork_config_yaml_with, run_load, Cost, LoadResult, Origin, Proxy, Scenario, ORIGIN_NAME};

/// strace comes from Debian; it is installed with the bench's other packages.
pub const STRACE_PACKAGE: &str = "strace";

/// One relay path: how it is configured and what crosses the user/kernel boundary per byte.
struct PathSpec {
    name: &'static str,
    hosts_extra: &'static str,
    limits_extra: &'static str,
    /// Payload copies per relayed byte, from the design.
    copies: &'static str,
    /// Plain HTTP through the forward proxy (scanned like bumped traffic, no TLS records).
    plain: bool,
}

const PATHS: &[PathSpec] = &[
    PathSpec {
        name: "bumped HTTP/1.1, rustls records, tokio",
        hosts_extra: "",
        limits_extra: "  ktls: off\n",
        copies: "2 (ciphertext read, ciphertext write) + userspace decrypt/scan/encrypt",
        plain: false,
    },
    // The two plain-HTTP paths differ only in `io_uring`; each scans the first 64 KiB of a body
    // before sending its head, and the rest streams (on the ring where it may).
    PathSpec {
        name: "plain HTTP/1.1 scanned, tokio",
        hosts_extra: "",
        limits_extra: "  io_uring: off\n  body_buffer_bytes: 65536\n",
        copies: "3 (read into the wire buffer, copy to the scan buffer, write)",
        plain: true,
    },
    PathSpec {
        name: "plain HTTP/1.1 scanned, io_uring",
        hosts_extra: "",
        limits_extra: "  io_uring: auto\n  body_buffer_bytes: 65536\n",
        copies: "2 past the first 64 KiB (recv into the ring's buffer, scan there, send from it)",
        plain: true,
    },
    PathSpec {
        name: "passthrough tunnel, io_uring",
        hosts_extra: "passthrough",
        limits_extra: "  io_uring: auto\n",
        copies: "2 (recv into a registered buffer, send from the same buffer)",
        plain: false,
    },
    PathSpec {
        name: "passthrough tunnel, splice",
        hosts_extra: "passthrough",
        limits_extra: "  io_uring: off\n",
        copies: "0 (socket → pipe → socket inside the kernel)",
        plain: false,
    },
];

pub struct PathRow {
    pub name: &'static str,
    pub copies: &'static str,
    pub result: LoadResult,
    pub cost: Cost,
    pub syscalls_per_request: Option<f64>,
    pub uring_enters_per_request: Option<f64>,
    pub failure: Option<String>,
}

/// The scenario every path runs: 1 MiB GETs over keep-alive (over plain HTTP for `plain` paths).
fn scenario(plain: bool) -> Scenario {
    Scenario { plain, ..Scenario::ALL[1] }
}

/// Measures every path; a path that cannot run says why in its row.
pub fn measure(cork: &Path, loadgen: &Path, work: &Path, origin: &Origin, secs: f64) -> Vec<PathRow> {
    PATHS
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let sc = scenario(spec.plain);
            println!("bench: data-plane path: {} ({secs}s, then again under strace -c)", spec.name);
            let hosts = if spec.hosts_extra == "passthrough" { format!("  passthrough: [{ORIGIN_NAME}]\n") } else { String::new() };
            let yaml = cork_config_yaml_with(origin, &hosts, spec.limits_extra);
            let mut row = PathRow {
                name: spec.name,
                copies: spec.copies,
                result: LoadResult::default(),
                cost: Cost::default(),
                syscalls_per_request: None,
                uring_enters_per_request: None,
                failure: None,
            };
            let mut proxy = match Proxy::start_cork_with(cork, &work.join(format!("path-{i}")), &yaml) {
                Ok(p) => p,
                Err(e) => {
                    row.failure = Some(format!("cork did not start: {e:#}"));
                    return row;
                }
            };
            // A passthrough tunnel is TLS to the origin itself: trust the origin's CA.
            if !spec.hosts_extra.is_empty() {
                proxy.ca = origin.ca.clone();
            }
            let (result, cost) = super::measure_via(loadgen, origin, &mut proxy, &sc, secs);
            row.result = result;
            row.cost = cost;
            match count_syscalls(&mut proxy, loadgen, origin, &sc, secs, &work.join(format!("path-{i}/strace.txt"))) {
                Ok((total, enters, requests)) if requests > 0 => {
                    row.syscalls_per_request = Some(total as f64 / requests as f64);
                    row.uring_enters_per_request = Some(enters as f64 / requests as f64);
                }
                Ok(_) => row.failure = Some("no request completed under strace".into()),
                Err(e) => row.failure = Some(e),
            }
            row
        })
        .collect()
}

/// Runs the scenario again with `strace -c -f` attached to cork; returns (all syscalls,
/// io_uring_enter calls, requests completed).
fn count_syscalls(proxy: &mut Proxy, loadgen: &Path, origin: &Origin, sc: &Scenario, secs: f64, out: &Path) -> Result<(u64, u64, u64), String> {
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-q", "-o"])
        .arg(out)
        .args(["-p", &proxy.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("strace: {e}"))?;
    // Give strace time to attach to every thread before the load starts.
    thread::sleep(Duration::from_millis(500));
    let r = run_load(loadgen, origin, Some(proxy), sc, secs, None);
    // SIGINT makes strace detach and write its summary.
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(strace.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while strace.try_wait().ok().flatten().is_none() {
        if Instant::now() >= deadline {
            let _ = strace.kill();
            let _ = strace.wait();
            return Err("strace did not finish".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    if let Some(f) = r.failure {
        return Err(f);
    }
    let text = std::fs::read_to_string(out).map_err(|e| format!("reading {}: {e}", out.display()))?;
    let calls = |syscall: &str| {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.last() == Some(&syscall) && f.len() >= 5)
            .and_then(|f| f[3].parse::<u64>().ok())
    };
    let total = calls("total").ok_or_else(|| format!("no total line in {}", out.display()))?;
    Ok((total, calls("io_uring_enter").unwrap_or(0), r.requests))
}
