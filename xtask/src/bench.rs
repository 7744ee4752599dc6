//! `cargo xtask bench`: cork's throughput and cost, measured against the same load sent direct.
//!
//! Builds cork and the harness in release, starts the test origin (`cork-origin`) on 127.0.0.2,
//! starts `cork run` as an explicit proxy on 127.0.0.1, and drives both with `cork-load`. For each
//! scenario cork's CPU seconds (utime+stime from `/proc/PID/stat`) and RSS are read before and
//! after, so results can be given per proxy core. Prints a table and writes it as markdown.
//!
//! `--quick` is the 1–2 minute smoke version CI runs to check the harness works; nothing here
//! asserts speed. If cork cannot be built or started, the bench says so and still measures direct.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Where the origin listens; cork reaches it through its `upstream.resolve` pin.
const ORIGIN_IP: &str = "127.0.0.2";
const ORIGIN_NAME: &str = "origin.test";
/// How long a child gets to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Options {
    quick: bool,
    build: bool,
    out: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options { quick: false, build: true, out: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-build" => o.build = false,
            "--out" => o.out = Some(it.next().context("--out needs a path")?.into()),
            "-h" | "--help" => {
                println!(
                    "cargo xtask bench [--quick] [--no-build] [--out FILE]\n\
                     \n  --quick     short smoke run (1-2 minutes); report goes to target/bench-quick.md\
                     \n  --no-build  use the release binaries already built\
                     \n  --out FILE  where to write the markdown report (default docs/bench.md, or\
                     \n              target/bench-quick.md with --quick)"
                );
                std::process::exit(0);
            }
            other => bail!("unknown bench argument {other:?} (try --help)"),
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let root = workspace_root();
    let target = target_dir(&root);
    let release = target.join("release");

    let cork_status = if opts.build { build(&root)? } else { CorkBuild::Built };
    let work = target.join("bench-run");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    println!("bench: starting the origin on {ORIGIN_IP}");
    let origin = Origin::start(&release.join("cork-origin"), &work.join("origin"))?;
    println!("bench: origin ready at {}", origin.https);

    let mut cork = match cork_status {
        CorkBuild::Built => match Cork::start(&release.join("cork"), &work, &origin) {
            Ok(c) => {
                println!("bench: cork ready, proxy {} (pid {})", c.listen, c.pid());
                Ok(c)
            }
            Err(e) => Err(format!("cork did not start: {e:#}")),
        },
        CorkBuild::Failed(why) => Err(format!("cork did not build: {why}")),
    };
    if let Err(why) = &cork {
        println!("bench: *** {why}");
        println!("bench: *** measuring direct only; the via-cork columns will read n/a");
    }

    let loadgen = release.join("cork-load");
    let secs = if opts.quick { 2.0 } else { 10.0 };
    let mut rows = Vec::new();
    // Warm-up: the first bumped connection to a host mints its leaf; keep that out of the figures.
    if let Ok(c) = &cork {
        let warm = Scenario::ALL[0];
        let _ = run_load(&loadgen, &origin, Some(c), &warm, 1.0);
    }
    for sc in Scenario::ALL.iter().filter(|s| !(opts.quick && s.full_only)) {
        println!("bench: {} (direct, {secs}s)", sc.name);
        let direct = run_load(&loadgen, &origin, None, sc, secs);
        let via = match &mut cork {
            Ok(c) => {
                println!("bench: {} (via cork, {secs}s)", sc.name);
                Some(measure_via_cork(&loadgen, &origin, c, sc, secs))
            }
            Err(_) => None,
        };
        rows.push(Row { scenario: *sc, direct, via });
    }

    let idle_conns = if opts.quick { IDLE_CONNECTIONS_QUICK } else { IDLE_CONNECTIONS_FULL };
    let idle_result = match &mut cork {
        Ok(c) => {
            println!("bench: {idle_conns} idle bumped connections (via cork)");
            Some(measure_idle(&loadgen, &origin, c, idle_conns))
        }
        Err(_) => None,
    };

    let cork_note = match &cork {
        Ok(_) => None,
        Err(why) => Some(why.clone()),
    };
    let idle = match &mut cork {
        Ok(c) => c.rss_kib(),
        Err(_) => None,
    };
    drop(cork);
    drop(origin);

    // The scanner on its own (bench_harness::scan via the cork-bench-scan binary).
    println!("bench: scanner benchmark");
    let scan_md = run_scan_bench(&release.join("cork-bench-scan"), opts.quick);

    let mut report = render(&rows, opts.quick, secs, cork_note.as_deref(), idle);
    report = report.replacen("\n## Running it", &format!("\n## Scanner alone\n\n{scan_md}\n## Running it"), 1);
    if let Some(i) = &idle_result {
        report = report.replacen("\n## Method", &format!("{}\n## Method", render_idle(i)), 1);
    }
    println!("\n{report}");
    let out = opts.out.unwrap_or_else(|| {
        if opts.quick { target.join("bench-quick.md") } else { root.join("docs/bench.md") }
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    write_json(&target.join("bench-results.json"), &rows)?;
    println!("bench: report written to {}", out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Build

enum CorkBuild {
    Built,
    Failed(String),
}

/// Builds cork and the harness in release. The harness must build; cork may not be ready yet.
fn build(root: &Path) -> Result<CorkBuild> {
    println!("bench: cargo build --release -p cork -p bench-harness");
    let both = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", "cork", "-p", "bench-harness"])
        .status()
        .context("running cargo")?;
    if both.success() {
        return Ok(CorkBuild::Built);
    }
    println!("bench: building cork failed; building the harness alone");
    let harness = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", "bench-harness"])
        .status()
        .context("running cargo")?;
    if !harness.success() {
        bail!("the bench harness does not build");
    }
    Ok(CorkBuild::Failed(format!("`cargo build --release -p cork` exited with {both}")))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { root.join(d) }
        }
        None => root.join("target"),
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process killed when dropped, whose output is drained into a log file by a thread
/// (so it never blocks on a full pipe) and scanned for a ready marker.
struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd` and waits until a stdout/stderr line contains `marker`; returns that line.
    fn spawn(name: &'static str, mut cmd: Command, log: &Path, marker: &'static str) -> Result<(Proc, String)> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let (tx, rx) = mpsc::channel::<String>();
        let log_file = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?,
        ));
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
            let tx = tx.clone();
            let log_file = log_file.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut f) = log_file.lock() {
                        let _ = writeln!(f, "{line}");
                    }
                    if line.contains(marker) {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        drop(tx);
        let mut proc = Proc { child };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => return Ok((proc, line)),
                Err(mpsc::RecvTimeoutError::Disconnected) | Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = proc.child.try_wait()? {
                        bail!("{name} exited ({status}) before it was ready; see {}", log.display());
                    }
                    if Instant::now() >= deadline {
                        proc.stop();
                        bail!("{name} printed no {marker:?} line within {READY_TIMEOUT:?}; see {}", log.display());
                    }
                }
            }
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Origin {
    _proc: Proc,
    https: SocketAddr,
    ca: PathBuf,
}

impl Origin {
    fn start(bin: &Path, dir: &Path) -> Result<Origin> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(bin);
        cmd.args(["--https", &format!("{ORIGIN_IP}:0"), "--name", ORIGIN_NAME, "--ip", ORIGIN_IP, "--ca-out"])
            .arg(dir);
        let (proc, line) = Proc::spawn("cork-origin", cmd, &dir.join("origin.log"), "ready https=")?;
        let https = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix("https="))
            .ok_or_else(|| anyhow!("unexpected ready line {line:?}"))?
            .parse()
            .with_context(|| format!("parsing the ready line {line:?}"))?;
        Ok(Origin { _proc: proc, https, ca: dir.join("ca.pem") })
    }

    fn url(&self, path: &str) -> String {
        format!("https://{ORIGIN_NAME}:{}{path}", self.https.port())
    }
}

struct Cork {
    proc: Proc,
    listen: SocketAddr,
    ca: PathBuf,
}

/// cork's configuration for the bench: allow the origin, trust its test CA, pin its name.
/// Schema per userspace/cork-policy (`hosts`, `upstream.extra_roots`, `upstream.resolve`); this
/// is the one place to change if it moves.
fn cork_config_yaml(origin: &Origin) -> String {
    format!(
        "mode: enforce\n\
         hosts:\n  allow: [{name}]\n  ports: [{port}]\n\
         upstream:\n  extra_roots: [{ca:?}]\n  resolve:\n    {name}: {ip}\n\
         limits:\n  max_connections: {max_conns}\n",
        name = ORIGIN_NAME,
        port = origin.https.port(),
        ca = origin.ca.display().to_string(),
        ip = ORIGIN_IP,
        max_conns = IDLE_CONNECTIONS_FULL * 2,
    )
}

impl Cork {
    fn start(bin: &Path, work: &Path, origin: &Origin) -> Result<Cork> {
        if !bin.exists() {
            bail!("{} does not exist", bin.display());
        }
        let state = work.join("cork-state");
        std::fs::create_dir_all(&state)?;
        let config = work.join("cork.yaml");
        std::fs::write(&config, cork_config_yaml(origin))?;
        let listen = free_port("127.0.0.1")?;
        let admin = free_port("127.0.0.1")?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--listen", &listen.to_string(), "--admin", &admin.to_string(), "--state-dir"])
            .arg(&state)
            .arg("--config")
            .arg(&config);
        let (proc, _line) = Proc::spawn("cork", cmd, &work.join("cork.log"), "listening on")?;
        let ca = state.join("ca.pem");
        if !ca.exists() {
            bail!("cork is listening but wrote no {}", ca.display());
        }
        Ok(Cork { proc, listen, ca })
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    fn cpu_secs(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }

    fn rss_kib(&self) -> Option<u64> {
        status_kib(self.pid(), "VmRSS:")
    }
}

/// Asks the kernel for a free port. Another process could take it before cork binds it; on a
/// bench machine that race is theoretical, and cork then fails loudly rather than silently.
fn free_port(ip: &str) -> Result<SocketAddr> {
    let l = TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(l.local_addr()?)
}

// ---------------------------------------------------------------------------------------------
// /proc readings

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of `pid` (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

#[derive(Clone, Copy)]
enum Metric {
    ReqPerSec,
    DownMBps,
    UpMBps,
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    path: &'static str,
    mode: &'static str,
    concurrency: usize,
    upload: u64,
    metric: Metric,
    /// A fixed request count instead of a duration (single big transfers).
    requests: Option<u64>,
    /// Too slow for `--quick`.
    full_only: bool,
}

impl Scenario {
    const ALL: &'static [Scenario] = &[
        Scenario { name: "keep-alive 1 KiB GET", path: "/bytes/1024", mode: "keepalive", concurrency: 16, upload: 0, metric: Metric::ReqPerSec, requests: None, full_only: false },
        Scenario { name: "1 MiB GET throughput", path: "/bytes/1048576", mode: "keepalive", concurrency: 4, upload: 0, metric: Metric::DownMBps, requests: None, full_only: false },
        Scenario { name: "new bumped connection per request", path: "/bytes/1024", mode: "newconn", concurrency: 8, upload: 0, metric: Metric::ReqPerSec, requests: None, full_only: false },
        Scenario { name: "HTTP/2, 100 streams, 1 KiB GET", path: "/bytes/1024", mode: "h2", concurrency: 100, upload: 0, metric: Metric::ReqPerSec, requests: None, full_only: false },
        Scenario { name: "1 MiB POST upload", path: "/upload", mode: "keepalive", concurrency: 4, upload: 1 << 20, metric: Metric::UpMBps, requests: None, full_only: false },
        Scenario { name: "1 GiB single stream", path: "/bytes/1073741824", mode: "keepalive", concurrency: 1, upload: 0, metric: Metric::DownMBps, requests: Some(1), full_only: true },
        Scenario { name: "100 MB single upload", path: "/upload", mode: "keepalive", concurrency: 1, upload: 100_000_000, metric: Metric::UpMBps, requests: Some(1), full_only: true },
    ];

    fn unit(&self) -> &'static str {
        match self.metric {
            Metric::ReqPerSec if self.mode == "newconn" => "conn/s",
            Metric::ReqPerSec => "req/s",
            Metric::DownMBps | Metric::UpMBps => "MB/s",
        }
    }
}

/// One `cork-load` run, parsed from its JSON report.
#[derive(Clone, Default)]
struct LoadResult {
    value: f64,
    requests: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    first_error: Option<String>,
    failure: Option<String>,
    raw: Option<serde_json::Value>,
}

/// cork's cost during one scenario.
#[derive(Clone, Default)]
struct CorkCost {
    cpu_secs: Option<f64>,
    elapsed_secs: f64,
    rss_kib: Option<u64>,
    died: bool,
}

struct Row {
    scenario: Scenario,
    direct: LoadResult,
    via: Option<(LoadResult, CorkCost)>,
}

fn run_load(loadgen: &Path, origin: &Origin, cork: Option<&Cork>, sc: &Scenario, secs: f64) -> LoadResult {
    let mut cmd = Command::new(loadgen);
    cmd.arg(origin.url(sc.path))
        .args(["--mode", sc.mode, "--concurrency", &sc.concurrency.to_string()])
        .arg("--json");
    match sc.requests {
        // Single big transfers: bounded by count, with generous time and timeout caps.
        Some(n) => cmd.args(["--requests", &n.to_string(), "--duration", "300", "--timeout", "300"]),
        None => cmd.args(["--duration", &secs.to_string(), "--timeout", "20"]),
    };
    if sc.upload > 0 {
        cmd.args(["--upload", &sc.upload.to_string()]);
    }
    match cork {
        Some(c) => {
            cmd.args(["--proxy", &format!("http://{}", c.listen)]).arg("--cacert").arg(&c.ca);
        }
        None => {
            cmd.args(["--connect-to", &origin.https.to_string()]).arg("--cacert").arg(&origin.ca);
        }
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => return LoadResult { failure: Some(format!("running cork-load: {e}")), ..Default::default() },
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("").to_string();
        return LoadResult { failure: Some(format!("cork-load failed: {first}")), ..Default::default() };
    }
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => return LoadResult { failure: Some(format!("cork-load output is not JSON: {e}")), ..Default::default() },
    };
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
    let value = match sc.metric {
        Metric::ReqPerSec => f("req_per_sec"),
        Metric::DownMBps => f("down_mb_per_sec"),
        Metric::UpMBps => f("up_mb_per_sec"),
    };
    let r = LoadResult {
        value,
        requests: f("requests") as u64,
        errors: f("errors") as u64,
        p50_ms: f("latency_p50_ms"),
        p99_ms: f("latency_p99_ms"),
        p999_ms: f("latency_p999_ms"),
        first_error: v.get("first_error").and_then(|e| e.as_str()).map(str::to_owned),
        failure: None,
        raw: Some(v.clone()),
    };
    println!(
        "bench:   {:.1} {}  requests={} errors={}  p50={:.2}ms p99={:.2}ms p999={:.2}ms{}",
        r.value,
        sc.unit(),
        r.requests,
        r.errors,
        r.p50_ms,
        r.p99_ms,
        r.p999_ms,
        r.first_error.as_deref().map(|e| format!("  first error: {e}")).unwrap_or_default()
    );
    r
}

fn measure_via_cork(loadgen: &Path, origin: &Origin, cork: &mut Cork, sc: &Scenario, secs: f64) -> (LoadResult, CorkCost) {
    if !cork.alive() {
        let r = LoadResult { failure: Some("cork is no longer running".into()), ..Default::default() };
        return (r, CorkCost { died: true, ..Default::default() });
    }
    let cpu0 = cork.cpu_secs();
    let t0 = Instant::now();
    let r = run_load(loadgen, origin, Some(cork), sc, secs);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = cork.cpu_secs();
    let cost = CorkCost {
        cpu_secs: cpu0.zip(cpu1).map(|(a, b)| b - a),
        elapsed_secs: elapsed,
        rss_kib: cork.rss_kib(),
        died: !cork.alive(),
    };
    (r, cost)
}

// ---------------------------------------------------------------------------------------------
// Scanner

/// Runs `cork-bench-scan` and returns its markdown, or a line saying why there is none.
fn run_scan_bench(bin: &Path, quick: bool) -> String {
    let mut cmd = Command::new(bin);
    if quick {
        cmd.arg("--quick");
    }
    match cmd.output() {
        Ok(o) if o.status.success() => {
            let md = String::from_utf8_lossy(&o.stdout).into_owned();
            println!("{md}");
            md
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let why = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("no output").to_string();
            println!("bench: *** scanner benchmark failed: {why}");
            format!("Not measured: cork-bench-scan failed: {why}\n")
        }
        Err(e) => format!("Not measured: cannot run {}: {e}\n", bin.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// Idle connections

/// Idle bumped connections held open through cork. Each costs cork two sockets (client and
/// upstream), so the count stays well inside the default 20k file-descriptor limit.
const IDLE_CONNECTIONS_FULL: usize = 5000;
const IDLE_CONNECTIONS_QUICK: usize = 300;

struct IdleResult {
    wanted: usize,
    opened: u64,
    errors: u64,
    first_error: Option<String>,
    rss_before_kib: Option<u64>,
    rss_holding_kib: Option<u64>,
    failure: Option<String>,
}

/// Has `cork-load --mode idle` open the connections through cork, samples cork's RSS while they
/// are held, then lets them go.
fn measure_idle(loadgen: &Path, origin: &Origin, cork: &mut Cork, count: usize) -> IdleResult {
    let mut res = IdleResult {
        wanted: count,
        opened: 0,
        errors: 0,
        first_error: None,
        rss_before_kib: cork.rss_kib(),
        rss_holding_kib: None,
        failure: None,
    };
    if !cork.alive() {
        res.failure = Some("cork is no longer running".into());
        return res;
    }
    let spawned = Command::new(loadgen)
        .arg(origin.url("/bytes/16"))
        .args(["--mode", "idle", "--concurrency", &count.to_string(), "--hold", "3", "--timeout", "30", "--json"])
        .args(["--proxy", &format!("http://{}", cork.listen)])
        .arg("--cacert")
        .arg(&cork.ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            res.failure = Some(format!("running cork-load: {e}"));
            return res;
        }
    };
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    match lines.next() {
        Some(Ok(l)) if l.starts_with("holding ") => {
            // Let cork settle (buffers released after the first exchange) before sampling.
            thread::sleep(Duration::from_millis(1000));
            res.rss_holding_kib = cork.rss_kib();
        }
        other => res.failure = Some(format!("cork-load did not report holding: {other:?}")),
    }
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let _ = child.wait();
    match rest.last().map(|l| serde_json::from_str::<serde_json::Value>(l)) {
        Some(Ok(v)) => {
            res.opened = v["requests"].as_u64().unwrap_or(0);
            res.errors = v["errors"].as_u64().unwrap_or(0);
            res.first_error = v["first_error"].as_str().map(str::to_owned);
        }
        _ => {
            res.failure.get_or_insert_with(|| "cork-load printed no JSON report".into());
        }
    }
    println!(
        "bench:   opened {}/{} (errors {}), cork RSS {:?} KiB -> {:?} KiB{}",
        res.opened,
        res.wanted,
        res.errors,
        res.rss_before_kib,
        res.rss_holding_kib,
        res.first_error.as_deref().map(|e| format!("  first error: {e}")).unwrap_or_default()
    );
    res
}

fn render_idle(i: &IdleResult) -> String {
    let mut md = String::from("\n## Idle connections through cork\n\n");
    if let Some(f) = &i.failure {
        let _ = writeln!(md, "Not measured: {f}.");
        return md;
    }
    let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let _ = writeln!(md, "- connections wanted / held: {} / {} ({} errors)", i.wanted, i.opened, i.errors);
    let _ = writeln!(md, "- cork RSS before: {}, while holding: {}", mib(i.rss_before_kib), mib(i.rss_holding_kib));
    if let (Some(a), Some(b)) = (i.rss_before_kib, i.rss_holding_kib) {
        if i.opened > 0 {
            let per = (b.saturating_sub(a) as f64 * 1024.0) / i.opened as f64;
            let _ = writeln!(md, "- RSS per idle bumped connection (both legs): {:.1} KiB", per / 1024.0);
        }
    }
    if let Some(e) = &i.first_error {
        let _ = writeln!(md, "- first error: {e}");
    }
    md
}

// ---------------------------------------------------------------------------------------------
// Report

fn fmt_value(r: &LoadResult) -> String {
    if let Some(f) = &r.failure {
        return format!("failed ({f})");
    }
    let mut s = format!("{:.1}", r.value);
    if r.errors > 0 {
        let _ = write!(s, " ({} errors)", r.errors);
    }
    s
}

fn render(rows: &[Row], quick: bool, secs: f64, cork_note: Option<&str>, idle_rss: Option<u64>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# cork benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench{}` — do not edit by hand; rerun it. See the end of this file for method.\n",
        if quick { " --quick" } else { "" }
    );
    let _ = writeln!(md, "## Machine\n");
    for (k, v) in machine_info() {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md, "- run length: {secs} s per scenario and target{}\n", if quick { " (quick smoke run)" } else { "" });
    if let Some(note) = cork_note {
        let _ = writeln!(md, "**cork was not measured: {note}.** Only direct figures are shown.\n");
    }
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "| scenario | unit | direct | via cork | cork / direct | cork CPU (cores) | per cork core | cork RSS (MiB) | p99 direct → cork (ms) |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let sc = &row.scenario;
        let direct = fmt_value(&row.direct);
        let (via, ratio, cores, per_core, rss, p99) = match &row.via {
            None => ("n/a".to_string(), "n/a".to_string(), "n/a".to_string(), "n/a".to_string(), "n/a".to_string(), format!("{:.2} → n/a", row.direct.p99_ms)),
            Some((r, cost)) => {
                let ok = r.failure.is_none() && r.requests > 0 && row.direct.failure.is_none() && row.direct.value > 0.0;
                let ratio = if ok { format!("{:.2}", r.value / row.direct.value) } else { "—".into() };
                let cores_used = cost.cpu_secs.map(|c| c / cost.elapsed_secs.max(1e-9));
                let cores = cores_used.map_or("?".into(), |c| format!("{c:.2}"));
                let per_core = match cores_used {
                    Some(c) if c > 0.01 && r.failure.is_none() && r.requests > 0 => format!("{:.1}", r.value / c),
                    _ => "—".into(),
                };
                let rss = cost.rss_kib.map_or(if cost.died { "died".into() } else { "?".into() }, |k| format!("{:.1}", k as f64 / 1024.0));
                let p99 = if r.requests > 0 { format!("{:.2}", r.p99_ms) } else { "n/a".into() };
                (fmt_value(r), ratio, cores, per_core, rss, format!("{:.2} → {p99}", row.direct.p99_ms))
            }
        };
        let _ = writeln!(md, "| {} | {} | {direct} | {via} | {ratio} | {cores} | {per_core} | {rss} | {p99} |", sc.name, sc.unit());
    }
    if let Some(k) = idle_rss {
        let _ = writeln!(md, "\ncork RSS after the run: {:.1} MiB.", k as f64 / 1024.0);
    }
    let errors: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let mut v = Vec::new();
            if let Some(e) = &r.direct.first_error {
                v.push(format!("- {} (direct): {e}", r.scenario.name));
            }
            if let Some((via, _)) = &r.via {
                if let Some(e) = via.first_error.as_ref().or(via.failure.as_ref()) {
                    v.push(format!("- {} (via cork): {e}", r.scenario.name));
                }
            }
            v
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\nFirst error seen per run:\n\n{}", errors.join("\n"));
    }
    md.push_str(METHOD);
    md
}

const METHOD: &str = "
## Running it

```sh
cargo xtask bench            # full run (a few minutes), rewrites docs/bench.md
cargo xtask bench --quick    # 1-2 minute smoke run, writes target/bench-quick.md
cargo xtask bench --no-build --out /tmp/report.md
```

Raw figures of the last run: `target/bench-results.json`; process logs: `target/bench-run/`.
The pieces can be used on their own:

```sh
# The test origin: its own CA in DIR/ca.pem, one `ready https=ADDR http=ADDR` line on stdout.
cork-origin --https 127.0.0.2:0 [--http 127.0.0.2:0] --name origin.test [--ip 127.0.0.2] --ca-out DIR
# Endpoints: /bytes/N, /chunked/N, POST|PUT /upload, /echo, /gzip/TEXT, /text/TEXT, /inject,
# /status/CODE; HEAD, Expect: 100-continue, keep-alive, HTTP/1.1 and h2.

# The load generator (human summary, or --json).
cork-load https://origin.test:PORT/bytes/1024 --cacert DIR/ca.pem --connect-to 127.0.0.2:PORT \\
    --mode keepalive|newconn|h2|idle -c 16 [--duration SECS] [--requests N] [--upload BYTES]
cork-load https://origin.test:PORT/bytes/1024 --proxy http://127.0.0.1:CORK --cacert STATE/ca.pem
```

## Method

- Origin: `cork-origin` (hyper, rustls) on 127.0.0.2 with its own test CA; bodies are generated
  from a shared buffer, so the origin costs far less than a proxy.
- Load: `cork-load` (hyper, rustls, ring), certificates verified against the origin's CA (direct)
  or cork's per-run CA (via cork). Via cork every connection is `CONNECT origin.test:PORT` to
  cork's listener, then TLS to cork's minted leaf; cork opens its own TLS to the origin.
- New-connection scenarios disable TLS session resumption, so each is a full handshake on both
  legs.
- cork CPU: utime+stime from `/proc/PID/stat` before/after each scenario, divided by wall time
  (= cores used). \"per cork core\" is the scenario's figure divided by cores used.
- All three processes share the machine's cores, so direct and via-cork numbers are both limited
  by the load generator too; ratios are the useful figure, absolute numbers less so. On a shared
  build machine, other work (compilers) adds noise of tens of percent between runs.
- Idle connections: `cork-load --mode idle` opens them through cork, one request each, and holds
  them; cork's RSS is sampled before and while they are held. 5000 rather than 10k so cork's two
  sockets per connection fit the container's 20k file-descriptor limit.
- Scanner alone: `cork-bench-scan` (`bench_harness::scan`) scans a generated corpus with planted
  secrets and compares with `memchr::memmem` and, when installed, Hyperscan.
- Not measured yet (planned): mitmproxy 11.0.2 and Squid ssl_bump for comparison, 10k idle
  connections, PNG charts.
";

fn machine_info() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let cmd = |c: &str, args: &[&str]| {
        Command::new(c)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("?".into(), |s| s.trim().to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0));
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| l[12..].trim_matches('"').to_string()))
        .unwrap_or_else(|| "?".into());
    m.insert("date (UTC)", cmd("date", &["-u", "+%Y-%m-%d %H:%M"]));
    m.insert("cpu", format!("{model}, {} cores", cmd("nproc", &[])));
    m.insert("memory", mem);
    m.insert("os", format!("{os}, kernel {}", cmd("uname", &["-r"])));
    m.insert("rustc", cmd("rustc", &["-V"]));
    m.insert("commit", cmd("git", &["-C", &workspace_root().display().to_string(), "rev-parse", "--short", "HEAD"]));
    m
}

fn write_json(path: &Path, rows: &[Row]) -> Result<()> {
    let arr: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "scenario": r.scenario.name,
                "unit": r.scenario.unit(),
                "direct": r.direct.raw,
                "direct_failure": r.direct.failure,
                "via_cork": r.via.as_ref().map(|(v, _)| v.raw.clone()),
                "via_cork_failure": r.via.as_ref().and_then(|(v, _)| v.failure.clone()),
                "cork_cpu_secs": r.via.as_ref().and_then(|(_, c)| c.cpu_secs),
                "cork_elapsed_secs": r.via.as_ref().map(|(_, c)| c.elapsed_secs),
                "cork_rss_kib": r.via.as_ref().and_then(|(_, c)| c.rss_kib),
            })
        })
        .collect();
    std::fs::write(path, serde_json::to_string_pretty(&arr)?)?;
    Ok(())
}
