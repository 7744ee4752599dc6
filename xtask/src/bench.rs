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
    for sc in Scenario::ALL {
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

    // TODO(scan bench): once bench-harness/src/scan.rs lands, add a `cork-bench-scan` binary in
    // bench-harness that calls `bench_harness::scan::run(quick)`, run it here and append its
    // output to the report. Not done yet: the scanner helper's scan.rs does not exist.

    let report = render(&rows, opts.quick, secs, cork_note.as_deref(), idle);
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
         upstream:\n  extra_roots: [{ca:?}]\n  resolve:\n    {name}: {ip}\n",
        name = ORIGIN_NAME,
        port = origin.https.port(),
        ca = origin.ca.display().to_string(),
        ip = ORIGIN_IP,
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
}

impl Scenario {
    const ALL: &'static [Scenario] = &[
        Scenario { name: "keep-alive 1 KiB GET", path: "/bytes/1024", mode: "keepalive", concurrency: 16, upload: 0, metric: Metric::ReqPerSec },
        Scenario { name: "1 MiB GET throughput", path: "/bytes/1048576", mode: "keepalive", concurrency: 4, upload: 0, metric: Metric::DownMBps },
        Scenario { name: "new bumped connection per request", path: "/bytes/1024", mode: "newconn", concurrency: 8, upload: 0, metric: Metric::ReqPerSec },
        Scenario { name: "HTTP/2, 100 streams, 1 KiB GET", path: "/bytes/1024", mode: "h2", concurrency: 100, upload: 0, metric: Metric::ReqPerSec },
        Scenario { name: "1 MiB POST upload", path: "/upload", mode: "keepalive", concurrency: 4, upload: 1 << 20, metric: Metric::UpMBps },
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
        .args(["--duration", &secs.to_string(), "--timeout", "20", "--json"]);
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
                let ok = r.failure.is_none() && row.direct.failure.is_none() && row.direct.value > 0.0;
                let ratio = if ok { format!("{:.2}", r.value / row.direct.value) } else { "—".into() };
                let cores_used = cost.cpu_secs.map(|c| c / cost.elapsed_secs.max(1e-9));
                let cores = cores_used.map_or("?".into(), |c| format!("{c:.2}"));
                let per_core = match cores_used {
                    Some(c) if c > 0.01 && r.failure.is_none() => format!("{:.1}", r.value / c),
                    _ => "—".into(),
                };
                let rss = cost.rss_kib.map_or(if cost.died { "died".into() } else { "?".into() }, |k| format!("{:.1}", k as f64 / 1024.0));
                (fmt_value(r), ratio, cores, per_core, rss, format!("{:.2} → {:.2}", row.direct.p99_ms, r.p99_ms))
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
  by the load generator too; ratios are the useful figure, absolute numbers less so.
- Not measured yet (planned): mitmproxy 11.0.2 and Squid ssl_bump for comparison, a 1 GiB single
  stream, a 100 MB upload, 10k idle connections with RSS per connection, PNG charts, and the
  scanner benchmark (`bench_harness::scan`).
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
