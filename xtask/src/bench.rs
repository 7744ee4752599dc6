//! `cargo xtask bench`: cork's throughput and cost, side by side with mitmproxy and Squid
//! `ssl_bump`, all measured in the same run against the same origin and load generator.
//!
//! Builds cork and the harness in release, installs the peers (mitmproxy in `.tools/`, Squid from
//! Debian; see `bench/peers.rs`), starts the test origin (`cork-origin`) on 127.0.0.2, then cork,
//! mitmdump and squid as explicit proxies on 127.0.0.1, and drives each with `cork-load`. For each
//! scenario a proxy's CPU seconds (utime+stime from `/proc/PID/stat`, helpers included) and RSS
//! are read before and after, so results can be given per proxy core. Also measures, in process,
//! the rustls handshake-pair ceiling and leaf issuance (`cork-bench-tls`) and the scanner
//! (`cork-bench-scan`). Prints a table, writes markdown and PNG charts.
//!
//! cork is measured twice: as an explicit proxy, and in transparent mode with the load generator
//! inside a bottle (`bench/bottle.rs`). As root, the measuring part re-runs itself inside a
//! private network namespace for that; without root the transparent column says why it is empty.
//!
//! `--quick` is the 1–3 minute smoke version; nothing here asserts speed. A proxy that cannot be
//! installed, built or started gets a "not measured: reason" line, never a number.

mod bottle;
mod chart;
mod paths;
mod peers;

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

/// Where the origin listens; every proxy reaches it through a pin of this name to this address.
/// The guest kernel the kTLS paths are measured on: the one that can rekey.
const VM_BENCH_KERNEL: &str = "trixie-backports";
/// What each guest bench request is (kept in step with `BENCH_REQUESTS` and `PAYLOAD` in
/// `userspace/cork-proxy/tests/ktls_vm_guest.rs`).
const VM_BENCH_NOTE: &str = "8 requests per path, each a fresh bumped TLS 1.3 (AES-128-GCM) connection carrying a 1 MiB POST that the origin echoes (2 MiB through cork per request, both handshakes included); bodies are scanned";
const ORIGIN_IP: &str = "127.0.0.2";
const ORIGIN_NAME: &str = "origin.test";
/// How long a child gets to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The proxies, in report order: cork (explicit), the peers, then cork in transparent mode.
const PROXIES: [&str; 4] = ["cork", "mitmproxy", "squid", bottle::NAME];

struct Options {
    quick: bool,
    build: bool,
    peers: bool,
    out: Option<PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut o = Options { quick: false, build: true, peers: true, out: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-build" => o.build = false,
            "--no-peers" => o.peers = false,
            "--out" => o.out = Some(it.next().context("--out needs a path")?.into()),
            "-h" | "--help" => {
                println!(
                    "cargo xtask bench [--quick] [--no-build] [--no-peers] [--out FILE]\n\
                     \n  --quick     short smoke run (1-3 minutes); report goes to target/bench-quick.md\
                     \n  --no-build  use the release binaries already built\
                     \n  --no-peers  measure cork only (skip mitmproxy and Squid)\
                     \n  --out FILE  where to write the markdown report (default docs/bench.md, or\
                     \n              target/bench-quick.md with --quick); charts go next to it"
                );
                std::process::exit(0);
            }
            other => bail!("unknown bench argument {other:?} (try --help)"),
        }
    }
    Ok(o)
}

/// A proxy slot: running, or the reason it is not measured.
type Slot = std::result::Result<Proxy, String>;

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let root = workspace_root();
    let target = target_dir(&root);
    let release = target.join("release");

    // Installs first, so a fresh machine shows its progress before anything is measured.
    let font = chart::ensure_font();
    let (mitmdump, squid) = if opts.peers {
        (peers::ensure_mitmproxy().map_err(|e| format!("{e:#}")), peers::ensure_squid().map_err(|e| format!("{e:#}")))
    } else {
        (Err("skipped (--no-peers)".to_string()), Err("skipped (--no-peers)".to_string()))
    };
    if let Err(e) = peers::ensure_apt(&[paths::STRACE_PACKAGE]) {
        println!("bench: *** strace could not be installed ({e:#}); syscalls per path will not be counted");
    }
    let cork_status = if opts.build { build(&root)? } else { CorkBuild::Built };
    // Installs and the build need the network; what follows runs on loopback only. As root it
    // runs in a private network namespace, so that cork can steer a bottle there.
    if bottle::should_reexec() {
        if let CorkBuild::Failed(why) = &cork_status {
            println!("bench: *** cork did not build ({why}); measuring the peers only");
        }
        return bottle::reexec_in_netns(args);
    }
    let work = target.join("bench-run");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let fd_limit = raise_fd_limit();
    println!("bench: file-descriptor limit {fd_limit}");
    println!("bench: starting the origin on {ORIGIN_IP}");
    let origin = Origin::start(&release.join("cork-origin"), &work.join("origin"))?;
    println!("bench: origin ready at {}", origin.https);

    let cork: Slot = match cork_status {
        CorkBuild::Built => Proxy::start_cork(&release.join("cork"), &work, &origin).map_err(|e| format!("cork did not start: {e:#}")),
        CorkBuild::Failed(why) => Err(format!("cork did not build: {why}")),
    };
    let mitm: Slot = mitmdump
        .map_err(|e| format!("mitmproxy could not be installed: {e}"))
        .and_then(|bin| peers::start_mitmproxy(&bin, &work, &origin).map_err(|e| format!("mitmdump did not start: {e:#}")));
    let squid: Slot = squid
        .map_err(|e| format!("Squid could not be installed: {e}"))
        .and_then(|bin| peers::start_squid(&bin, &work, &origin).map_err(|e| format!("squid did not start: {e:#}")));
    let transparent: Slot = match &cork {
        Ok(_) => bottle::start(&release.join("cork"), &work, &origin).map_err(|e| format!("{e:#}")),
        Err(why) => Err(why.clone()),
    };
    let mut proxies: Vec<Slot> = vec![cork, mitm, squid, transparent];
    for (name, slot) in PROXIES.iter().zip(&proxies) {
        match slot {
            Ok(p) => println!("bench: {name} ready, proxy {} (pid {})", p.listen, p.pid()),
            Err(why) => println!("bench: *** {name} not measured: {why}"),
        }
    }

    let loadgen = release.join("cork-load");
    let secs = if opts.quick { 2.0 } else { 10.0 };
    // Warm-up: the first bumped connection to a host mints its leaf (and warms Python's caches);
    // keep that out of the figures.
    for p in proxies.iter_mut().flatten() {
        let _ = run_load(&loadgen, &origin, Some(p), &Scenario::ALL[0], 1.0, None);
    }
    // Idle connections first: after the big transfers mitmproxy's Python heap holds GiBs it
    // gives back slowly, which would swamp (or invert) the per-connection growth.
    let idle_conns = if opts.quick { IDLE_CONNECTIONS_QUICK } else { idle_connections_full(fd_limit) };
    let mut idle = Vec::new();
    for slot in proxies.iter_mut() {
        idle.push(match slot {
            // The same cork process as explicit mode's, per connection; not repeated.
            Ok(p) if p.shell.is_some() => None,
            Ok(p) => {
                println!("bench: {idle_conns} idle bumped connections (via {})", p.name);
                Some(measure_idle(&loadgen, &origin, p, idle_conns))
            }
            Err(_) => None,
        });
    }
    let mut rows = Vec::new();
    for sc in Scenario::ALL.iter().filter(|s| !(opts.quick && s.full_only)) {
        println!("bench: {} (direct, {secs}s)", sc.name);
        let direct = run_load(&loadgen, &origin, None, sc, secs, None);
        let mut via = Vec::new();
        for slot in proxies.iter_mut() {
            via.push(match slot {
                Ok(p) => {
                    println!("bench: {} (via {}, {secs}s)", sc.name, p.name);
                    Some(measure_via(&loadgen, &origin, p, sc, secs))
                }
                Err(_) => None,
            });
        }
        rows.push(Row { scenario: *sc, direct, via });
    }

    // Added latency at half load: cork's peak keep-alive 1 KiB rate, halved, paced, direct and
    // via cork. Open loop, so a slow response delays the next ones' timing too.
    let half_load = match (&mut proxies[0], rows.first().and_then(|r| r.via[0].as_ref())) {
        (Ok(c), Some((peak, _))) if peak.failure.is_none() && peak.value > 0.0 => {
            let rate = peak.value / 2.0;
            let sc = Scenario::ALL[0];
            println!("bench: {} paced at {rate:.0} req/s (half cork's peak), direct and via cork", sc.name);
            let direct = run_load(&loadgen, &origin, None, &sc, secs, Some(rate));
            let via = run_load(&loadgen, &origin, Some(c), &sc, secs, Some(rate));
            Some(HalfLoad { rate, direct, via })
        }
        _ => None,
    };

    // The relay paths side by side (#5): each gets its own cork with one switch changed.
    let data_paths = match &proxies[0] {
        Ok(_) => paths::measure(&release.join("cork"), &loadgen, &work, &origin, secs),
        Err(_) => Vec::new(),
    };

    // The kTLS paths exist only in the VM guest here (no CONFIG_TLS on this host): functional
    // figures from a boot of their own.
    println!("bench: kTLS paths in the VM guest (functional figures only)");
    let vm_paths = crate::vm::bench(VM_BENCH_KERNEL).map_err(|e| format!("{e:#}"));

    let notes: Vec<Option<String>> = proxies.iter().map(|s| s.as_ref().err().cloned()).collect();
    drop(proxies);
    drop(origin);

    // In-process ceilings: rustls handshake pairs and cork-ca leaf issuance.
    println!("bench: rustls handshake pairs and leaf issuance (in process)");
    let tls = run_tls_bench(&release.join("cork-bench-tls"), if opts.quick { 1.0 } else { 3.0 });

    // The scanner on its own (bench_harness::scan via the cork-bench-scan binary).
    println!("bench: scanner benchmark");
    let scan_md = run_scan_bench(&release.join("cork-bench-scan"), opts.quick);

    let out = opts.out.unwrap_or_else(|| {
        if opts.quick { target.join("bench-quick.md") } else { root.join("docs/bench.md") }
    });
    let out_dir = out.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out_dir)?;
    let charts = match font {
        Ok(()) => draw_charts(&out_dir, &rows, &idle),
        Err(e) => Err(e.context("no font for the charts")),
    };
    let charts_md = match &charts {
        Ok(files) => files.iter().map(|(f, alt)| format!("![{alt}]({f})\n")).collect::<Vec<_>>().join("\n"),
        Err(e) => {
            println!("bench: *** charts not drawn: {e:#}");
            format!("Charts not drawn: {e:#}.\n")
        }
    };

    let report = Report { rows: &rows, quick: opts.quick, secs, notes: &notes, idle: &idle, half_load: half_load.as_ref(), paths: &data_paths, vm_paths: &vm_paths, tls: &tls, idle_note: if opts.quick { None } else { idle_shortfall(fd_limit, idle_conns) }, scan_md: &scan_md, charts_md: &charts_md }.render();
    println!("\n{report}");
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
    // cork embeds the eBPF object at compile time; without it there is no transparent mode.
    println!("bench: building the eBPF programs (installs their toolchain if missing)");
    if let Err(e) = crate::ebpf::build() {
        println!("bench: *** eBPF programs not built ({e:#}); cork transparent will not be measured");
    }
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

/// A child process killed when dropped, whose output is drained into a log file by threads
/// (so it never blocks on a full pipe) and scanned for marker lines.
struct Proc {
    child: Child,
    /// Output lines that contained the ready marker or the event marker, in order.
    marked: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawns `cmd` and waits until a stdout/stderr line contains `marker`; returns that line.
    fn spawn(name: &'static str, cmd: Command, log: &Path, marker: &'static str) -> Result<(Proc, String)> {
        Proc::start(name, cmd, log, marker, None)
    }

    /// Like `spawn`, with stdin piped (in `child.stdin`) and lines containing `event` kept for
    /// [`Proc::next_event`].
    fn spawn_piped(name: &'static str, cmd: Command, log: &Path, marker: &'static str, event: &'static str) -> Result<(Proc, String)> {
        Proc::start(name, cmd, log, marker, Some(event))
    }

    fn start(name: &'static str, mut cmd: Command, log: &Path, marker: &'static str, event: Option<&'static str>) -> Result<(Proc, String)> {
        let mut child = cmd
            .stdin(if event.is_some() { Stdio::piped() } else { Stdio::null() })
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
                    if line.contains(marker) || event.is_some_and(|e| line.contains(e)) {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        drop(tx);
        let mut proc = Proc { child, marked: rx };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match proc.marked.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains(marker) => return Ok((proc, line)),
                Ok(_) => {}
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

    /// The next marked output line, waiting at most `wait`.
    fn next_event(&mut self, wait: Duration) -> Option<String> {
        match self.marked.recv_timeout(wait) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Both pipes closed: nothing more will come; don't spin.
                thread::sleep(wait);
                None
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
    http: SocketAddr,
    ca: PathBuf,
}

impl Origin {
    fn start(bin: &Path, dir: &Path) -> Result<Origin> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new(bin);
        cmd.args(["--https", &format!("{ORIGIN_IP}:0"), "--http", &format!("{ORIGIN_IP}:0"), "--name", ORIGIN_NAME, "--ip", ORIGIN_IP, "--ca-out"])
            .arg(dir);
        let (proc, line) = Proc::spawn("cork-origin", cmd, &dir.join("origin.log"), "ready https=")?;
        let field = |name: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .ok_or_else(|| anyhow!("unexpected ready line {line:?}"))?
                .parse()
                .with_context(|| format!("parsing the ready line {line:?}"))
        };
        Ok(Origin { _proc: proc, https: field("https=")?, http: field("http=")?, ca: dir.join("ca.pem") })
    }

    fn url(&self, path: &str) -> String {
        format!("https://{ORIGIN_NAME}:{}{path}", self.https.port())
    }

    /// The same path on the origin's plain-HTTP listener.
    fn plain_url(&self, path: &str) -> String {
        format!("http://{ORIGIN_NAME}:{}{path}", self.http.port())
    }
}

/// A running proxy under test: cork or a peer. `ca` is what the load generator must trust.
struct Proxy {
    name: &'static str,
    proc: Proc,
    listen: SocketAddr,
    ca: PathBuf,
    /// cork in transparent mode: loads run through the bottled shell, not from here.
    shell: Option<bottle::Shell>,
}

/// cork's configuration for the bench: allow the origin, trust its test CA, pin its name.
/// Schema per userspace/cork-policy (`hosts`, `upstream.extra_roots`, `upstream.resolve`); this
/// is the one place to change if it moves.
fn cork_config_yaml(origin: &Origin) -> String {
    cork_config_yaml_with(origin, "", "")
}

/// The bench configuration with extra lines under `hosts:` and `limits:` (each indented by two).
fn cork_config_yaml_with(origin: &Origin, hosts_extra: &str, limits_extra: &str) -> String {
    format!(
        "mode: enforce\n\
         hosts:\n  allow: [{name}]\n  ports: [{port}, {http_port}]\n{hosts_extra}\
         upstream:\n  extra_roots: [{ca:?}]\n  resolve:\n    {name}: {ip}\n\
         limits:\n  max_connections: {max_conns}\n{limits_extra}",
        name = ORIGIN_NAME,
        port = origin.https.port(),
        http_port = origin.http.port(),
        ca = origin.ca.display().to_string(),
        ip = ORIGIN_IP,
        max_conns = IDLE_CONNECTIONS_FULL * 2,
    )
}

impl Proxy {
    fn start_cork(bin: &Path, work: &Path, origin: &Origin) -> Result<Proxy> {
        Proxy::start_cork_with(bin, work, &cork_config_yaml(origin))
    }

    /// cork as an explicit proxy on `config` (YAML), with its state and log under `work`.
    fn start_cork_with(bin: &Path, work: &Path, config_yaml: &str) -> Result<Proxy> {
        if !bin.exists() {
            bail!("{} does not exist", bin.display());
        }
        std::fs::create_dir_all(work)?;
        let state = work.join("cork-state");
        std::fs::create_dir_all(&state)?;
        let config = work.join("cork.yaml");
        std::fs::write(&config, config_yaml)?;
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
        Ok(Proxy { name: "cork", proc, listen, ca, shell: None })
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    /// CPU seconds of the proxy and its helper processes (Squid's certificate generators).
    fn cpu_secs(&self) -> Option<f64> {
        if self.shell.is_some() {
            // The bottle's descendants are the shell and the load generator: not the proxy.
            return cpu_seconds(self.pid());
        }
        let tree = process_tree(self.pid());
        let own = cpu_seconds(self.pid())?;
        Some(own + tree.iter().skip(1).filter_map(|&p| cpu_seconds(p)).sum::<f64>())
    }

    /// RSS of the proxy and its helper processes.
    fn rss_kib(&self) -> Option<u64> {
        let own = status_kib(self.pid(), "VmRSS:")?;
        if self.shell.is_some() {
            return Some(own);
        }
        Some(own + process_tree(self.pid()).iter().skip(1).filter_map(|&p| status_kib(p, "VmRSS:")).sum::<u64>())
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

/// `pid` followed by all its descendants, from the parent pids in `/proc/*/stat`.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            let ppid = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent_of.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let cur = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    tree
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
    /// Plain HTTP (the origin's http listener, forwarded by the proxy) instead of HTTPS.
    plain: bool,
}

impl Scenario {
    const ALL: &'static [Scenario] = &[
        Scenario { name: "keep-alive 1 KiB GET", path: "/bytes/1024", mode: "keepalive", concurrency: 16, upload: 0, metric: Metric::ReqPerSec, requests: None, full_only: false, plain: false },
        Scenario { name: "1 MiB GET throughput", path: "/bytes/1048576", mode: "keepalive", concurrency: 4, upload: 0, metric: Metric::DownMBps, requests: None, full_only: false, plain: false },
        Scenario { name: "new bumped connection per request", path: "/bytes/1024", mode: "newconn", concurrency: 8, upload: 0, metric: Metric::ReqPerSec, requests: None, full_only: false, plain: false },
        Scenario { name: "HTTP/2, 100 streams, 1 KiB GET", path: "/bytes/1024", mode: "h2", concurrency: 100, upload: 0, metric: Metric::ReqPerSec, requests: None, full_only: false, plain: false },
        Scenario { name: "1 MiB POST upload", path: "/upload", mode: "keepalive", concurrency: 4, upload: 1 << 20, metric: Metric::UpMBps, requests: None, full_only: false, plain: false },
        Scenario { name: "1 GiB single stream", path: "/bytes/1073741824", mode: "keepalive", concurrency: 1, upload: 0, metric: Metric::DownMBps, requests: Some(1), full_only: true, plain: false },
        Scenario { name: "100 MB single upload", path: "/upload", mode: "keepalive", concurrency: 1, upload: 100_000_000, metric: Metric::UpMBps, requests: Some(1), full_only: true, plain: false },
    ];

    /// Why a proxy cannot run this scenario at all, if it cannot.
    fn unsupported_by(&self, proxy: &str) -> Option<&'static str> {
        (self.mode == "h2" && proxy == "squid").then_some("Squid does not speak HTTP/2 to clients")
    }

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

/// A proxy's cost during one scenario.
#[derive(Clone, Default)]
struct Cost {
    cpu_secs: Option<f64>,
    elapsed_secs: f64,
    rss_kib: Option<u64>,
    died: bool,
}

impl Cost {
    fn cores(&self) -> Option<f64> {
        self.cpu_secs.map(|c| c / self.elapsed_secs.max(1e-9))
    }
}

struct Row {
    scenario: Scenario,
    direct: LoadResult,
    /// One entry per proxy in `PROXIES` order; `None` when that proxy is not measured.
    via: Vec<Option<(LoadResult, Cost)>>,
}

impl Row {
    /// The scenario's figure per proxy core for proxy `i`, when it can be computed.
    fn per_core(&self, i: usize) -> Option<f64> {
        let (r, cost) = self.via.get(i)?.as_ref()?;
        let cores = cost.cores()?;
        (cores > 0.01 && r.failure.is_none() && r.requests > 0).then(|| r.value / cores)
    }
}

struct HalfLoad {
    rate: f64,
    direct: LoadResult,
    via: LoadResult,
}

fn run_load(loadgen: &Path, origin: &Origin, proxy: Option<&mut Proxy>, sc: &Scenario, secs: f64, rate: Option<f64>) -> LoadResult {
    if let Some(why) = proxy.as_ref().and_then(|p| sc.unsupported_by(p.name)) {
        return LoadResult { failure: Some(format!("not measured: {why}")), ..Default::default() };
    }
    let url = if sc.plain { origin.plain_url(sc.path) } else { origin.url(sc.path) };
    let mut args: Vec<String> = vec![loadgen.display().to_string(), url];
    let mut push = |more: &[&str]| args.extend(more.iter().map(|s| s.to_string()));
    push(&["--mode", sc.mode, "--concurrency", &sc.concurrency.to_string(), "--json"]);
    match sc.requests {
        // Single big transfers: bounded by count, with generous time and timeout caps.
        Some(n) => push(&["--requests", &n.to_string(), "--duration", "300", "--timeout", "300"]),
        None => push(&["--duration", &secs.to_string(), "--timeout", "20"]),
    };
    if sc.upload > 0 {
        push(&["--upload", &sc.upload.to_string()]);
    }
    if let Some(r) = rate {
        push(&["--rate", &format!("{r:.1}")]);
    }
    let ran = match proxy {
        // Transparent: dial the origin itself from inside the bottle; eBPF steers it to cork.
        Some(p) if p.shell.is_some() => {
            push(&["--connect-to", &origin.https.to_string(), "--cacert", &p.ca.display().to_string()]);
            let limit = Duration::from_secs_f64(if sc.requests.is_some() { 330.0 } else { secs + 60.0 });
            let Proxy { shell, proc, .. } = p;
            match shell.as_mut().expect("checked").run(proc, &args, limit) {
                Ok(r) => (r.success, r.stdout, r.stderr),
                Err(e) => return LoadResult { failure: Some(format!("running cork-load in the bottle: {e:#}")), ..Default::default() },
            }
        }
        Some(p) => {
            push(&["--proxy", &format!("http://{}", p.listen), "--cacert", &p.ca.display().to_string()]);
            match Command::new(&args[0]).args(&args[1..]).output() {
                Ok(o) => (o.status.success(), o.stdout, o.stderr),
                Err(e) => return LoadResult { failure: Some(format!("running cork-load: {e}")), ..Default::default() },
            }
        }
        None => {
            push(&["--connect-to", &origin.https.to_string(), "--cacert", &origin.ca.display().to_string()]);
            match Command::new(&args[0]).args(&args[1..]).output() {
                Ok(o) => (o.status.success(), o.stdout, o.stderr),
                Err(e) => return LoadResult { failure: Some(format!("running cork-load: {e}")), ..Default::default() },
            }
        }
    };
    let (success, stdout, stderr) = ran;
    if !success {
        let err = String::from_utf8_lossy(&stderr);
        let first = err.lines().next().unwrap_or("").to_string();
        return LoadResult { failure: Some(format!("cork-load failed: {first}")), ..Default::default() };
    }
    let v: serde_json::Value = match serde_json::from_slice(&stdout) {
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

fn measure_via(loadgen: &Path, origin: &Origin, proxy: &mut Proxy, sc: &Scenario, secs: f64) -> (LoadResult, Cost) {
    if !proxy.alive() {
        let r = LoadResult { failure: Some(format!("{} is no longer running", proxy.name)), ..Default::default() };
        return (r, Cost { died: true, ..Default::default() });
    }
    let cpu0 = proxy.cpu_secs();
    let t0 = Instant::now();
    let r = run_load(loadgen, origin, Some(proxy), sc, secs, None);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = proxy.cpu_secs();
    let cost = Cost {
        cpu_secs: cpu0.zip(cpu1).map(|(a, b)| b - a),
        elapsed_secs: elapsed,
        rss_kib: proxy.rss_kib(),
        died: !proxy.alive(),
    };
    (r, cost)
}

// ---------------------------------------------------------------------------------------------
// In-process ceilings

#[derive(Default)]
struct TlsBench {
    pairs_per_sec: Option<f64>,
    leaf_issue_us: Option<f64>,
    leaf_hit_us: Option<f64>,
    failure: Option<String>,
}

fn run_tls_bench(bin: &Path, seconds: f64) -> TlsBench {
    let out = match Command::new(bin).args(["--seconds", &seconds.to_string()]).output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("no output").to_string();
            return TlsBench { failure: Some(format!("cork-bench-tls failed: {err}")), ..Default::default() };
        }
        Err(e) => return TlsBench { failure: Some(format!("cannot run {}: {e}", bin.display())), ..Default::default() },
    };
    match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        Ok(v) => {
            let t = TlsBench {
                pairs_per_sec: v["handshake_pairs_per_sec"].as_f64(),
                leaf_issue_us: v["leaf_issue_us"].as_f64(),
                leaf_hit_us: v["leaf_cache_hit_us"].as_f64(),
                failure: None,
            };
            println!(
                "bench:   {:.0} handshake pairs/s on one core; leaf issue {:.1} µs, cache hit {:.3} µs",
                t.pairs_per_sec.unwrap_or(0.0),
                t.leaf_issue_us.unwrap_or(0.0),
                t.leaf_hit_us.unwrap_or(0.0)
            );
            t
        }
        Err(e) => TlsBench { failure: Some(format!("cork-bench-tls output is not JSON: {e}")), ..Default::default() },
    }
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

/// Idle bumped connections held open through each proxy: the issue's 10k where the
/// file-descriptor limit holds them (each costs a proxy two sockets, the load generator and
/// the origin one each), else as many as fit it.
const IDLE_CONNECTIONS_FULL: usize = 10_000;
const IDLE_CONNECTIONS_QUICK: usize = 300;
/// The file-descriptor limit the bench asks for (children inherit it).
const FD_LIMIT_WANTED: u64 = 65_536;

/// Raises this process's RLIMIT_NOFILE (soft and, as root, hard) towards `FD_LIMIT_WANTED`;
/// returns the soft limit in force afterwards.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let want = libc::rlimit { rlim_cur: FD_LIMIT_WANTED.max(lim.rlim_cur), rlim_max: FD_LIMIT_WANTED.max(lim.rlim_max) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return want.rlim_cur;
        }
        // Not allowed to raise the hard limit: at least take the soft one up to it.
        let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return soft.rlim_cur;
        }
        lim.rlim_cur
    }
}

/// How many idle connections the full run holds, given the file-descriptor limit: the
/// proxy needs two per connection plus its own (10% headroom), in steps of 500.
fn idle_connections_full(fd_limit: u64) -> usize {
    let fit = (fd_limit as usize * 10 / 11 / 2) / 500 * 500;
    fit.clamp(500, IDLE_CONNECTIONS_FULL)
}

/// Why the full run holds fewer than the issue's 10k idle connections, if it does.
fn idle_shortfall(fd_limit: u64, held: usize) -> Option<String> {
    (held < IDLE_CONNECTIONS_FULL).then(|| {
        format!(
            "Fewer than {IDLE_CONNECTIONS_FULL} idle connections: each process here may open at most {fd_limit} files and the \
             hard limit could not be raised (raising it needs CAP_SYS_RESOURCE); a proxy holds two sockets per \
             connection, so {held} is the most that fits with headroom."
        )
    })
}

struct IdleResult {
    wanted: usize,
    opened: u64,
    errors: u64,
    first_error: Option<String>,
    rss_before_kib: Option<u64>,
    rss_holding_kib: Option<u64>,
    failure: Option<String>,
}

impl IdleResult {
    /// RSS growth per held connection, in KiB.
    fn per_conn_kib(&self) -> Option<f64> {
        match (self.failure.as_ref(), self.rss_before_kib, self.rss_holding_kib) {
            // RSS that fell while holding says nothing about the connections: no figure.
            (None, Some(a), Some(b)) if self.opened > 0 && b >= a => Some((b - a) as f64 / self.opened as f64),
            _ => None,
        }
    }
}

/// Has `cork-load --mode idle` open the connections through a proxy, samples the proxy's RSS
/// while they are held, then lets them go.
fn measure_idle(loadgen: &Path, origin: &Origin, cork: &mut Proxy, count: usize) -> IdleResult {
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
        res.failure = Some(format!("{} is no longer running", cork.name));
        return res;
    }
    let spawned = Command::new(loadgen)
        .arg(origin.url("/bytes/16"))
        .args(["--mode", "idle", "--concurrency", &count.to_string(), "--hold", "3", "--timeout", "60", "--json"])
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
            // Let the proxy settle (buffers released after the first exchange) before sampling.
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
        "bench:   opened {}/{} (errors {}), {} RSS {:?} KiB -> {:?} KiB{}",
        res.opened,
        res.wanted,
        res.errors,
        cork.name,
        res.rss_before_kib,
        res.rss_holding_kib,
        res.first_error.as_deref().map(|e| format!("  first error: {e}")).unwrap_or_default()
    );
    res
}

// ---------------------------------------------------------------------------------------------
// Charts

/// Draws the per-core chart and the idle-memory chart next to the report; returns (file, alt).
fn draw_charts(dir: &Path, rows: &[Row], idle: &[Option<IdleResult>]) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let panels: Vec<chart::Panel> = rows
        .iter()
        .map(|row| chart::Panel {
            title: format!("{} ({} per proxy core)", row.scenario.name, row.scenario.unit()),
            bars: PROXIES.iter().enumerate().map(|(i, n)| (n.to_string(), row.per_core(i))).collect(),
        })
        .collect();
    let name = "bench-per-core.png";
    chart::bar_panels(&dir.join(name), "Throughput per proxy core (higher is better)", &panels)?;
    files.push((name.to_string(), "Throughput per proxy core, cork vs mitmproxy vs Squid".to_string()));
    let idle_panel = chart::Panel {
        title: "RSS per idle bumped connection (KiB)".into(),
        bars: PROXIES.iter().zip(idle).map(|(n, r)| (n.to_string(), r.as_ref().and_then(IdleResult::per_conn_kib))).collect(),
    };
    let p99_panel = chart::Panel {
        title: "p99 latency, keep-alive 1 KiB GET at full load (ms)".into(),
        bars: std::iter::once(("direct".to_string(), rows.first().filter(|r| r.direct.failure.is_none()).map(|r| r.direct.p99_ms)))
            .chain(PROXIES.iter().enumerate().map(|(i, n)| {
                let v = rows.first().and_then(|r| r.via[i].as_ref()).filter(|(r, _)| r.failure.is_none() && r.requests > 0).map(|(r, _)| r.p99_ms);
                (n.to_string(), v)
            }))
            .collect(),
    };
    let name = "bench-memory-latency.png";
    chart::bar_panels(&dir.join(name), "Memory and latency (lower is better)", &[idle_panel, p99_panel])?;
    files.push((name.to_string(), "RSS per idle connection and p99 latency".to_string()));
    Ok(files)
}

// ---------------------------------------------------------------------------------------------
// Report

fn fmt_value(r: &LoadResult) -> String {
    if let Some(f) = &r.failure {
        return if f.starts_with("not measured") { f.clone() } else { format!("failed ({f})") };
    }
    let mut s = format!("{:.1}", r.value);
    if r.errors > 0 {
        let _ = write!(s, " ({} errors)", r.errors);
    }
    s
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

struct Report<'a> {
    rows: &'a [Row],
    quick: bool,
    secs: f64,
    notes: &'a [Option<String>],
    idle: &'a [Option<IdleResult>],
    half_load: Option<&'a HalfLoad>,
    paths: &'a [paths::PathRow],
    /// The guest bench's kernel release and one JSON object per path, or why it did not run.
    vm_paths: &'a Result<(String, Vec<String>), String>,
    tls: &'a TlsBench,
    /// Why fewer idle connections than wanted were held, if so.
    idle_note: Option<String>,
    scan_md: &'a str,
    charts_md: &'a str,
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# cork benchmarks\n");
        let _ = writeln!(
            md,
            "Generated by `cargo xtask bench{}` — do not edit by hand; rerun it. cork, mitmproxy and Squid are measured in the same run, against the same origin and load generator. See the end of this file for method.\n",
            if self.quick { " --quick" } else { "" }
        );
        let _ = writeln!(md, "## Machine\n");
        for (k, v) in machine_info() {
            let _ = writeln!(md, "- {k}: {v}");
        }
        let _ = writeln!(md, "- run length: {} s per scenario and target{}", self.secs, if self.quick { " (quick smoke run)" } else { "" });
        let _ = writeln!(md, "- peers: mitmproxy {} (`mitmdump`, regular mode), Squid {} (`ssl_bump`, client-first bump)\n", peers_version("mitmproxy"), peers_version("squid"));
        for (name, note) in PROXIES.iter().zip(self.notes) {
            if let Some(n) = note {
                let _ = writeln!(md, "**{name}: not measured: {n}.**\n");
            }
        }
        self.targets(&mut md);
        self.results(&mut md);
        self.idle_section(&mut md);
        self.paths_section(&mut md);
        self.vm_paths_section(&mut md);
        self.in_process(&mut md);
        let _ = writeln!(md, "## Charts\n\n{}", self.charts_md);
        let _ = writeln!(md, "## Scanner alone\n\n{}", self.scan_md);
        self.errors(&mut md);
        md.push_str(METHOD);
        md
    }

    fn row(&self, mode: &str, path: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.scenario.mode == mode && r.scenario.path == path && r.scenario.requests.is_none())
    }

    /// Where cork stands against the issue's targets, each plainly met or missed.
    fn targets(&self, md: &mut String) {
        let _ = writeln!(md, "## cork against its targets\n");
        let _ = writeln!(md, "| target | measured | status |\n|---|---|---|");
        let verdict = |v: Option<f64>, ok: &dyn Fn(f64) -> bool| match v {
            None => "not measured".to_string(),
            Some(x) if ok(x) => "**met**".to_string(),
            Some(_) => "**missed**".to_string(),
        };
        let mut line = |target: &str, measured: String, status: String| {
            let _ = writeln!(md, "| {target} | {measured} | {status} |");
        };
        let mib = self.row("keepalive", "/bytes/1048576");
        let kib = self.row("keepalive", "/bytes/1024");
        let newconn = self.row("newconn", "/bytes/1024");
        let pc = |r: Option<&Row>, i: usize| r.and_then(|r| r.per_core(i));
        for (i, peer, goal, row, what) in [
            (2, "Squid", 2.5, mib, "1 MiB keep-alive throughput per proxy core"),
            (1, "mitmproxy", 2.5, mib, "1 MiB keep-alive throughput per proxy core"),
            (2, "Squid", 3.0, kib, "1 KiB keep-alive req/s per proxy core"),
            (2, "Squid", 8.0, newconn, "new bumped connections/s per proxy core"),
        ] {
            let r = ratio(pc(row, 0), pc(row, i));
            line(
                &format!("{what} ≥ {goal}× {peer}"),
                format!("{}× (cork {} vs {} {})", opt(r, 2), opt(pc(row, 0), 1), peer, opt(pc(row, i), 1)),
                verdict(r, &|x| x >= goal),
            );
        }
        let ceiling = self.tls.pairs_per_sec;
        let share = ratio(pc(newconn, 0), ceiling);
        line(
            "new bumped connections/s per core ≥ 70% of the rustls handshake-pair ceiling",
            format!("{}% (cork {} conn/s per core vs {} pairs/s)", opt(share.map(|s| s * 100.0), 0), opt(pc(newconn, 0), 1), opt(ceiling, 0)),
            verdict(share, &|x| x >= 0.7),
        );
        let per_idle = self.idle.first().and_then(|i| i.as_ref()).and_then(IdleResult::per_conn_kib);
        line("memory ≤ 32 KiB per idle bumped connection", format!("{} KiB", opt(per_idle, 1)), verdict(per_idle, &|x| x <= 32.0));
        let added = self.half_load.filter(|h| h.direct.failure.is_none() && h.via.failure.is_none() && h.via.requests > 0).map(|h| (h.via.p99_ms - h.direct.p99_ms) * 1000.0);
        let measured = match self.half_load {
            Some(h) => format!(
                "{} µs (p99 {:.2} ms via cork vs {:.2} ms direct at {:.0} req/s)",
                opt(added, 0),
                h.via.p99_ms,
                h.direct.p99_ms,
                h.rate
            ),
            None => "— (cork's peak was not measured)".into(),
        };
        let status = match added {
            // Via cork faster than direct: the machine's noise is larger than cork's cost here.
            Some(a) if a < 0.0 => "**inconclusive** (negative: run-to-run noise exceeds the difference)".to_string(),
            _ => verdict(added, &|x| x <= 300.0),
        };
        line("added p99 latency ≤ 300 µs at half load (keep-alive 1 KiB)", measured, status);
        let _ = writeln!(md);
    }

    fn results(&self, md: &mut String) {
        let names = PROXIES.join(" | ");
        let aligned = "---:|".repeat(PROXIES.len());
        let _ = writeln!(md, "## Results\n\nThroughput as seen by the load generator (cork transparent: the load generator runs in a bottle and eBPF steers it):\n");
        let _ = writeln!(md, "| scenario | unit | direct | {names} | cork / direct |\n|---|---|---:|{aligned}---:|");
        for row in self.rows {
            let cells: Vec<String> = row.via.iter().map(|v| v.as_ref().map_or("not measured".into(), |(r, _)| fmt_value(r))).collect();
            let cork_direct = row.via[0]
                .as_ref()
                .filter(|(r, _)| r.failure.is_none() && r.requests > 0 && row.direct.failure.is_none())
                .and_then(|(r, _)| ratio(Some(r.value), Some(row.direct.value)));
            let _ = writeln!(md, "| {} | {} | {} | {} | {} |", row.scenario.name, row.scenario.unit(), fmt_value(&row.direct), cells.join(" | "), opt(cork_direct, 2));
        }
        let _ = writeln!(md, "\nPer proxy core (the figure divided by the cores the proxy used), and cork's ratios:\n");
        let _ = writeln!(md, "| scenario | unit | {names} | cork / mitmproxy | cork / squid | transparent / explicit |\n|---|---|{aligned}---:|---:|---:|");
        for row in self.rows {
            let per_core: Vec<String> = (0..PROXIES.len()).map(|i| opt(row.per_core(i), 1)).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                row.scenario.name,
                row.scenario.unit(),
                per_core.join(" | "),
                opt(ratio(row.per_core(0), row.per_core(1)), 2),
                opt(ratio(row.per_core(0), row.per_core(2)), 2),
                opt(ratio(row.per_core(3), row.per_core(0)), 2)
            );
        }
        let _ = writeln!(md, "\nProxy cost — cores used (CPU seconds / wall seconds) and RSS after the scenario (MiB):\n");
        let cores_head: Vec<String> = PROXIES.iter().map(|n| format!("{n} cores")).collect();
        let rss_head: Vec<String> = PROXIES.iter().map(|n| format!("{n} RSS")).collect();
        let _ = writeln!(md, "| scenario | {} | {} |\n|---|{aligned}{aligned}", cores_head.join(" | "), rss_head.join(" | "));
        for row in self.rows {
            // A scenario a proxy did not run has no wall time to divide by.
            let cores: Vec<String> = row
                .via
                .iter()
                .map(|v| match v {
                    Some((r, c)) if r.failure.is_none() => opt(c.cores(), 2),
                    _ => "—".into(),
                })
                .collect();
            let rss: Vec<String> = row
                .via
                .iter()
                .map(|v| {
                    v.as_ref().map_or("—".into(), |(_, c)| c.rss_kib.map_or(if c.died { "died".into() } else { "?".into() }, |k| format!("{:.1}", k as f64 / 1024.0)))
                })
                .collect();
            let _ = writeln!(md, "| {} | {} | {} |", row.scenario.name, cores.join(" | "), rss.join(" | "));
        }
        let _ = writeln!(md, "\nLatency p50 / p99 (ms) at full load:\n");
        let _ = writeln!(md, "| scenario | direct | {names} |\n|---|---|{}", "---|".repeat(PROXIES.len()));
        let lat = |r: &LoadResult| if r.failure.is_none() && r.requests > 0 { format!("{:.2} / {:.2}", r.p50_ms, r.p99_ms) } else { "—".into() };
        for row in self.rows {
            let via: Vec<String> = row.via.iter().map(|v| v.as_ref().map_or("—".into(), |(r, _)| lat(r))).collect();
            let _ = writeln!(md, "| {} | {} | {} |", row.scenario.name, lat(&row.direct), via.join(" | "));
        }
        if let Some(h) = self.half_load {
            let _ = writeln!(
                md,
                "\nHalf load (keep-alive 1 KiB GET paced at {:.0} req/s, half cork's peak): p50 / p99 direct {}, via cork {}.",
                h.rate,
                lat(&h.direct),
                lat(&h.via)
            );
        }
        let _ = writeln!(md);
    }

    fn idle_section(&self, md: &mut String) {
        let _ = writeln!(md, "## Idle bumped connections\n");
        let _ = writeln!(md, "| proxy | held / wanted | RSS before (MiB) | RSS holding (MiB) | RSS per idle connection (KiB) |\n|---|---|---:|---:|---:|");
        let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        for (name, (r, note)) in PROXIES.iter().zip(self.idle.iter().zip(self.notes)) {
            match r {
                None => {
                    let why = note.as_deref().unwrap_or("not repeated: the same cork code holds them as in explicit mode");
                    let _ = writeln!(md, "| {name} | not measured: {why} | | | |");
                }
                Some(i) if i.failure.is_some() => {
                    let _ = writeln!(md, "| {name} | not measured: {} | | | |", i.failure.as_deref().unwrap_or(""));
                }
                Some(i) => {
                    let _ = writeln!(
                        md,
                        "| {name} | {} / {}{} | {} | {} | {} |",
                        i.opened,
                        i.wanted,
                        if i.errors > 0 { format!(" ({} errors)", i.errors) } else { String::new() },
                        mib(i.rss_before_kib),
                        mib(i.rss_holding_kib),
                        i.per_conn_kib().map_or("not measurable (RSS fell while holding)".into(), |v| format!("{v:.1}"))
                    );
                }
            }
        }
        if let Some(why) = &self.idle_note {
            let _ = writeln!(md, "\n{why}");
        }
        let _ = writeln!(md);
    }

    fn vm_paths_section(&self, md: &mut String) {
        let _ = writeln!(md, "## kTLS paths in the VM guest (functional figures, not speed)\n");
        let (release, lines) = match self.vm_paths {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!(md, "Not measured: {e}\n");
                return;
            }
        };
        let _ = writeln!(
            md,
            "Kernel {release} under QEMU's TCG emulation (`cargo xtask vm`'s trixie-backports kernel, booted with `cork_mode=bench`): this host's kernel has no `CONFIG_TLS`. The real `cork` binary relays {VM_BENCH_NOTE}. The time column is emulated CPU time and says nothing about speed; the syscall counts (`strace -c -f` attached to cork in a second run of the same load), the kernel legs and the body bytes moved on io_uring (both for the timed requests only) are what carry over to a real kTLS host, where the same rows can be measured for speed.\n"
        );
        let _ = writeln!(md, "| path | requests | syscalls per request | io_uring_enter per request | kernel legs | body MiB on io_uring | copies per byte | time (TCG) |\n|---|---:|---:|---:|---:|---:|---|---:|");
        for line in lines {
            let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else {
                let _ = writeln!(md, "| unreadable guest line: `{line}` | | | | | | | |");
                continue;
            };
            let text = |k: &str| row[k].as_str().unwrap_or("").to_string();
            let num = |k: &str| row[k].as_f64();
            if let Some(why) = row["failure"].as_str() {
                let _ = writeln!(md, "| {} | not measured: {why} | | | | | {} | |", text("path"), text("copies"));
                continue;
            }
            let requests = num("requests").unwrap_or(0.0);
            let per = |k: &str| num(k).filter(|_| requests > 0.0).map_or("not counted".to_string(), |v| format!("{:.0}", v / requests));
            let _ = writeln!(
                md,
                "| {} | {requests:.0} | {} | {} | {:.0} | {:.1} | {} | {:.2} s |",
                text("path"),
                per("syscalls"),
                per("io_uring_enter"),
                num("kernel_legs").unwrap_or(0.0),
                num("ring_bytes").unwrap_or(0.0) / (1024.0 * 1024.0),
                text("copies"),
                num("secs").unwrap_or(0.0)
            );
        }
        let _ = writeln!(md);
    }

    fn paths_section(&self, md: &mut String) {
        let _ = writeln!(md, "## Data-plane paths (1 MiB keep-alive GET, one cork per path)\n");
        let _ = writeln!(
            md,
            "Syscalls are counted by `strace -c -f` on cork in a second run of the same load (its speed under strace means nothing); throughput and cores come from the first run, without strace. Copies are the design's payload copies per relayed byte. The plain-HTTP paths are scanned like bumped traffic and scan the first 64 KiB of each body before its head goes out; on io_uring the rest moves between the sockets the way it does between kTLS legs. kTLS paths cannot run on this host (its kernel has no `CONFIG_TLS`); the next section has them from the VM guest, as functional figures.\n"
        );
        if self.paths.is_empty() {
            let _ = writeln!(md, "Not measured: cork did not start.\n");
            return;
        }
        let _ = writeln!(md, "| path | MB/s | cores | MB/s per core | syscalls per request | io_uring_enter per request | copies per byte |\n|---|---:|---:|---:|---:|---:|---|");
        for p in self.paths {
            let ok = p.result.failure.is_none() && p.result.requests > 0;
            let mbps = if ok { format!("{:.1}", p.result.value) } else { fmt_value(&p.result) };
            let cores = p.cost.cores();
            let per_core = cores.filter(|c| ok && *c > 0.01).map(|c| p.result.value / c);
            let syscalls = match (&p.failure, p.syscalls_per_request) {
                (_, Some(v)) => format!("{v:.1}"),
                (Some(f), None) => format!("not counted: {f}"),
                (None, None) => "—".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.name,
                mbps,
                opt(cores, 2),
                opt(per_core, 1),
                syscalls,
                opt(p.uring_enters_per_request, 1),
                p.copies
            );
        }
        let _ = writeln!(md);
    }

    fn in_process(&self, md: &mut String) {
        let _ = writeln!(md, "## In-process ceilings (`cork-bench-tls`, one core)\n");
        if let Some(f) = &self.tls.failure {
            let _ = writeln!(md, "Not measured: {f}.\n");
            return;
        }
        let _ = writeln!(md, "- rustls handshake pairs (client + server, TLS 1.3, P-256, no resumption): {} pairs/s", opt(self.tls.pairs_per_sec, 0));
        let _ = writeln!(md, "- leaf issuance, uncached (`BottleCa::issue`): {} µs", opt(self.tls.leaf_issue_us, 1));
        let _ = writeln!(md, "- leaf issuance, cache hit (`LeafCache::get`): {} µs\n", opt(self.tls.leaf_hit_us, 3));
    }

    fn errors(&self, md: &mut String) {
        let mut errors = Vec::new();
        for r in self.rows {
            if let Some(e) = &r.direct.first_error {
                errors.push(format!("- {} (direct): {e}", r.scenario.name));
            }
            for (name, via) in PROXIES.iter().zip(&r.via) {
                if let Some((v, _)) = via {
                    // "not measured" lines already stand in the tables.
                    let failure = v.failure.as_ref().filter(|f| !f.starts_with("not measured"));
                    if let Some(e) = v.first_error.as_ref().or(failure) {
                        errors.push(format!("- {} (via {name}): {e}", r.scenario.name));
                    }
                }
            }
        }
        for (name, i) in PROXIES.iter().zip(self.idle) {
            if let Some(e) = i.as_ref().and_then(|i| i.first_error.as_ref()) {
                errors.push(format!("- idle connections (via {name}): {e}"));
            }
        }
        if !errors.is_empty() {
            let _ = writeln!(md, "## First error seen per run\n\n{}\n", errors.join("\n"));
        }
    }
}

fn peers_version(which: &str) -> String {
    match which {
        "mitmproxy" => peers::MITMPROXY_VERSION.to_string(),
        _ => Command::new("/usr/sbin/squid")
            .arg("-v")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().and_then(|l| l.rsplit(' ').next()).map(str::to_owned))
            .unwrap_or_else(|| "?".into()),
    }
}

const METHOD: &str = "
## Running it

```sh
cargo xtask bench            # full run (10+ minutes), rewrites docs/bench.md and docs/bench-*.png
cargo xtask bench --quick    # 1-3 minute smoke run, writes target/bench-quick.md (+ PNGs there)
cargo xtask bench --no-build --no-peers --out /tmp/report.md
```

xtask installs what the run needs, idempotently: mitmproxy 11.0.2 into `.tools/mitmproxy-venv`,
Debian's `squid-openssl` and `fonts-dejavu-core` (archives cached in `.tools/apt-archives`; a
system squid the package starts is stopped). Raw figures of the last run:
`target/bench-results.json`; configs and logs: `target/bench-run/`. The pieces can be used on
their own:

```sh
# The test origin: its own CA in DIR/ca.pem, one `ready https=ADDR http=ADDR` line on stdout.
cork-origin --https 127.0.0.2:0 [--http 127.0.0.2:0] --name origin.test [--ip 127.0.0.2] --ca-out DIR
# Endpoints: /bytes/N, /chunked/N, POST|PUT /upload, /echo, /gzip/TEXT, /text/TEXT, /inject, /media/N, /media-stall/N,
# /status/CODE; HEAD, Expect: 100-continue, keep-alive, HTTP/1.1 and h2.

# The load generator (human summary, or --json); --rate R paces it (open loop).
cork-load https://origin.test:PORT/bytes/1024 --cacert DIR/ca.pem --connect-to 127.0.0.2:PORT \\
    --mode keepalive|newconn|h2|idle -c 16 [--duration SECS] [--requests N] [--upload BYTES] [--rate R]
cork-load https://origin.test:PORT/bytes/1024 --proxy http://127.0.0.1:CORK --cacert STATE/ca.pem

# Handshake-pair ceiling and leaf issuance, in process (JSON).
cork-bench-tls --seconds 3
```

## Method

- Origin: `cork-origin` (hyper, rustls) on 127.0.0.2 with its own test CA; bodies are generated
  from a shared buffer, so the origin costs far less than a proxy.
- Load: `cork-load` (hyper, rustls, ring). Through a proxy every connection is
  `CONNECT origin.test:PORT` with SNI `origin.test`, then TLS to the proxy's minted leaf,
  verified against that proxy's CA (cork's per-run CA, mitmproxy's `mitmproxy-ca-cert.pem` from a
  confdir in the run directory, or a Squid CA generated with openssl in the run directory). The
  proxy opens its own TLS to the origin and verifies it against the origin's CA (cork:
  `upstream.extra_roots`; mitmproxy: `ssl_verify_upstream_trusted_ca`; Squid:
  `tls_outgoing_options cafile=`).
- Name resolution: `origin.test` is pinned to 127.0.0.2 for every proxy, each in its own way:
  cork's `upstream.resolve`, Squid's `hosts_file`, and for mitmproxy (which resolves upstream
  names itself and has no such option) a four-line addon (`pin_origin.py`, `server_connect`
  hook) that swaps the address and keeps SNI and certificate check on the name. The addon runs
  once per upstream connection.
- Peer configuration: mitmdump in regular mode with `flow_detail=0` (no per-request log lines)
  and defaults otherwise — it holds each body in memory before passing it on. Squid 5.7
  (`squid-openssl`), `ssl_bump bump all` (client-first: the leaf comes from the CONNECT name, as
  with cork), `security_file_certgen` helpers with their own db, memory cache of generated certs
  16 MB, caching off, access log off, one process (`-N`, no SMP workers) running as `proxy`.
  Squid does not speak HTTP/2 to clients, so the h2 scenario is not measured for it.
- cork transparent: `cork bottle run` with the same policy; its bottled command is a shell that
  runs each `cork-load` in turn, so the load generator lives in the bottle's cgroup, dials
  127.0.0.2 itself (no proxy settings; `--connect-to`, SNI `origin.test`) and trusts the
  bottle's exported CA; eBPF `connect4` steers each connection to cork's transparent listener.
  As root, everything after the installs and the build runs inside a private network namespace
  (`tests/netns/isolated.sh`) so that steering can never reach beyond loopback; without root
  this column is not measured. Its CPU and RSS are cork's own process only (the shell and the
  load generator are its children but not the proxy). Idle connections are not repeated for it.
- New-connection scenarios disable TLS session resumption, so each is a full handshake on both
  legs.
- Proxy CPU: utime+stime from `/proc/PID/stat` of the proxy and its child processes (Squid's
  certificate helpers) before/after each scenario, divided by wall time (= cores used).
  \"per proxy core\" is the scenario's figure divided by cores used; RSS likewise sums the tree.
- All processes share the machine's cores, so direct and proxied numbers are limited by the load
  generator too; per-core figures and ratios are the useful ones, absolute numbers less so. On a
  shared build machine, other work adds noise of tens of percent between runs.
- Half load: the keep-alive 1 KiB scenario paced (`cork-load --rate`) at half the rate cork
  reached flat out, direct and via cork; added latency = p99 via cork − p99 direct. Latency is
  timed from each request's scheduled slot, so queueing behind a slow request counts.
- Idle connections: `cork-load --mode idle` opens them through each proxy, one request each, and
  holds them; the proxy's RSS is sampled before and while they are held. Measured right after
  the warm-up, before the throughput scenarios, so no proxy carries a heap grown by big bodies. 10k
  connections where the bench can raise its file-descriptor limit to 65536 (as root with
  CAP_SYS_RESOURCE; every process it starts inherits it; Squid gets `max_filedescriptors
  65536`), else as many (in steps of 500) as a proxy's two sockets per connection leave room
  for in the limit there is, and the report says so under the table.
- Data-plane paths: five more corks, each with one switch changed, run the 1 MiB keep-alive
  GET: bumped with TLS records in rustls on tokio (`limits.ktls: off`); plain HTTP through the
  forward proxy, scanned, with `body_buffer_bytes: 65536` and the body streamed by tokio
  (`limits.io_uring: off`) or moved on io_uring (`auto`); and the origin as a passthrough host
  (TLS end to end, never decrypted) relayed on io_uring (`limits.io_uring: auto`) or on `splice`
  (`off`). Each runs once flat out (MB/s, cores) and once more with
  `strace -c -f` attached to cork for the syscall count only (Debian's `strace`, installed by the
  bench). Copies per byte are stated from the design, not measured.
- Handshake-pair ceiling: `cork-bench-tls` runs a rustls client and server handshake (TLS 1.3,
  P-256 leaf, ring) back to back in memory on one thread — one pair is the TLS work a bumping
  proxy does per new connection, so pairs/s is the per-core ceiling for new bumped connections.
  Leaf issuance: `BottleCa::issue` with a fresh name each time, and `LeafCache::get` hits.
- Scanner alone: `cork-bench-scan` (`bench_harness::scan`) scans a generated corpus with planted
  secrets and compares with `memchr::memmem` and, when installed, Hyperscan.
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
                "via": PROXIES.iter().zip(&r.via).map(|(name, v)| {
                    let (res, cost) = match v {
                        Some((res, cost)) => (Some(res), Some(cost)),
                        None => (None, None),
                    };
                    (name.to_string(), serde_json::json!({
                        "result": res.and_then(|x| x.raw.clone()),
                        "failure": res.and_then(|x| x.failure.clone()),
                        "cpu_secs": cost.and_then(|c| c.cpu_secs),
                        "elapsed_secs": cost.map(|c| c.elapsed_secs),
                        "rss_kib": cost.and_then(|c| c.rss_kib),
                    }))
                }).collect::<serde_json::Map<String, serde_json::Value>>(),
            })
        })
        .collect();
    std::fs::write(path, serde_json::to_string_pretty(&arr)?)?;
    Ok(())
}
