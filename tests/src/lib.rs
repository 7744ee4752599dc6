//! Harness for cork's end-to-end tests.
//!
//! Every test runs the real `cork` binary against the real `cork-origin` test server (with its
//! own test CA) on loopback, and talks to cork with real clients: curl, Python `requests`,
//! `openssl s_client`. `cargo xtask test` builds the binaries and installs the clients first; the
//! harness finds the binaries next to the test executable and the Python interpreter through
//! `CORK_TEST_PYTHON`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `target/<profile>` binary built by `cargo xtask test`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo xtask test` (it builds the binaries first)", path.display());
    path
}

/// A fresh directory for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("cork-{label}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` and waits (up to 60 s) for a stdout line that `ready` accepts; returns the lines
/// read so far. Stdout keeps being drained afterwards.
pub fn spawn_with_ready_line(mut cmd: Command, stderr_path: &Path, ready: impl Fn(&str) -> bool) -> (Proc, Vec<String>) {
    let stderr = std::fs::File::create(stderr_path).unwrap();
    cmd.stdout(Stdio::piped()).stderr(stderr).stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let proc = Proc { child, stderr_path: stderr_path.to_path_buf() };
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = ready(&line);
                lines.push(line);
                if done {
                    // Keep draining stdout so the child never blocks on a full pipe.
                    std::thread::spawn(move || for _ in rx {});
                    return (proc, lines);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(_) => break,
        }
    }
    panic!("process did not become ready; stdout: {lines:?}; stderr: {}", proc.stderr());
}

/// The test origin: HTTPS (and plain HTTP) on 127.0.0.2 with its own CA.
pub struct Origin {
    pub proc: Proc,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub ca: PathBuf,
    _dir: TempDir,
}

impl Origin {
    pub fn start(names: &[&str]) -> Origin {
        let dir = TempDir::new("origin");
        let mut cmd = Command::new(binary("cork-origin"));
        cmd.args(["--https", "127.0.0.2:0", "--http", "127.0.0.2:0", "--ca-out"]).arg(dir.path());
        for name in names {
            cmd.args(["--name", name]);
        }
        let (proc, lines) = spawn_with_ready_line(cmd, &dir.path().join("stderr"), |l| l.starts_with("ready "));
        let ready = lines.last().unwrap().clone();
        let field = |key: &str| -> SocketAddr {
            ready.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{key} in {ready}"))
        };
        Origin { https: field("https="), http: field("http="), ca: dir.path().join("ca.pem"), proc, _dir: dir }
    }

    /// What the origin wrote to stderr so far (it reports cut uploads there).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr")).unwrap_or_default()
    }

    /// How many bytes of a cut upload reached the origin, once it has logged one.
    pub fn wait_cut_upload(&self) -> u64 {
        for _ in 0..100 {
            if let Some(n) = self.stderr().lines().find_map(|l| l.strip_prefix("upload cut after ")?.split(' ').next()?.parse().ok()) {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the origin logged no cut upload:\n{}", self.stderr());
    }
}

/// A running cork with its own state directory and policy file.
pub struct Cork {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub stdout: Vec<String>,
}

impl Cork {
    /// Starts cork with `policy` (YAML) and extra environment.
    pub fn start_with_env(policy: &str, env: &[(&str, &str)]) -> Cork {
        let dir = TempDir::new("cork");
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let mut cmd = Command::new(binary("cork"));
        cmd.args(["run", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--config"])
            .arg(dir.path().join("policy.yaml"))
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (proc, stdout) = spawn_with_ready_line(cmd, &dir.path().join("stderr"), |l| l.starts_with("  export NODE_EXTRA_CA_CERTS="));
        let first = &stdout[0];
        let addr_after = |marker: &str| -> SocketAddr {
            let rest = &first[first.find(marker).unwrap_or_else(|| panic!("{marker} in {first}")) + marker.len()..];
            rest.split(|c: char| c == ' ' || c == '/').find(|s| !s.is_empty()).unwrap().parse().unwrap()
        };
        let listen = addr_after("listening on ");
        let admin = addr_after("admin on http://");
        Cork { proc, listen, admin, dir, stdout }
    }

    pub fn start(policy: &str) -> Cork {
        Cork::start_with_env(policy, &[])
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("state/ca.pem")
    }

    pub fn ca_bundle(&self) -> PathBuf {
        self.dir.path().join("state/ca-bundle.pem")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// All audit records written so far.
    pub fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("state/audit.jsonl")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))).collect()
    }

    /// Waits (up to 20 s) for an audit record matching `pred` and returns it.
    pub fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = self.audit().into_iter().find(&pred) {
                return found;
            }
            if Instant::now() > deadline {
                panic!("no audit record for {what}; log: {:#?}\nstderr: {}", self.audit(), self.proc.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin endpoint's body for `path`, fetched with curl.
    pub fn admin_get(&self, path: &str) -> String {
        let out = run(Command::new("curl").args(["-sS", "--noproxy", "*", &format!("http://{}{path}", self.admin)]));
        assert!(out.status.success(), "admin {path}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// A counter from /metrics (with its label set, e.g. `cork_requests_total{verdict="allow"}`).
    pub fn metric(&self, series: &str) -> u64 {
        self.admin_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0)
    }
}

/// Runs a command to completion with a generous bound, so a hang fails the test instead of CI.
pub fn run(cmd: &mut Command) -> Output {
    run_with_input(cmd, None)
}

pub fn run_with_input(cmd: &mut Command, input: Option<Vec<u8>>) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_thread.join().unwrap(), stderr: err_thread.join().unwrap() }
}

/// curl through `cork` with verification against cork's CA, resolving test names to `origin`.
pub fn curl(cork: &Cork, args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "120", "--proxy", &cork.proxy_url(), "--cacert"]).arg(cork.ca_pem()).args(args);
    cmd.env_remove("HTTPS_PROXY").env_remove("https_proxy").env_remove("HTTP_PROXY").env_remove("http_proxy");
    run(&mut cmd)
}

/// The Python interpreter that has the test clients (`requests`, `httpx`).
pub fn python() -> Command {
    Command::new(std::env::var("CORK_TEST_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// The directory of client scripts.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// Test names that policies pin to the origin's address (no DNS is involved in any test).
pub const TEST_NAMES: [&str; 6] = ["origin.test", "other.test", "pinned.test", "blocked.test", "evil.test", "fresh.test"];

/// A policy that allows `allow` on the origin's ports, pins the test names to the origin and
/// trusts the origin's CA. `hosts_extra` goes inside `hosts:`, `extra` at the top level.
pub fn policy_for(origin: &Origin, allow: &[&str], hosts_extra: &str, extra: &str) -> String {
    let resolve: Vec<String> = TEST_NAMES.iter().map(|n| format!("{n}: 127.0.0.2")).collect();
    format!(
        "hosts:\n  allow: [{}]\n  ports: [{}, {}]\n{hosts_extra}upstream:\n  extra_roots: [{}]\n  resolve: {{{}}}\n{extra}",
        allow.join(", "),
        origin.https.port(),
        origin.http.port(),
        origin.ca.display(),
        resolve.join(", ")
    )
}

/// Whether this host should let cork relay on io_uring: the sysctl allows every process and no
/// seccomp filter sits on the test process (cork inherits both). Tests expect the io_uring path
/// exactly when this holds, so a probe that wrongly gives up fails them.
pub fn io_uring_expected() -> bool {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim() == "0").unwrap_or(false);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let seccomp_off = status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "0"]);
    sysctl && seccomp_off
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

pub fn text(out: &Output) -> String {
    format!("status {:?}\nstdout: {}\nstderr: {}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
