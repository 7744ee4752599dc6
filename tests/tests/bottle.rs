//! Bottles end to end: the real `cork bottle run`, real eBPF steering, the real test origin and
//! real clients (curl, Python `requests`, Node `fetch`) with no proxy settings at all.
//!
//! Every test runs inside its own private network namespace with only `lo` and no route out
//! (tests/netns/isolated.sh, which checks exactly that): outside one, a test re-runs itself
//! through the wrapper. 127.0.0.2 is the origin; cork listens on 127.0.0.1.
//!
//! Name resolution: curl dials 127.0.0.2 through `--resolve`; the Python and Node clients
//! resolve `origin.test` for real, through glibc and the bottle's DNS guard. For them the test
//! bind-mounts (in a private mount namespace, `unshare --mount`, inside the bottle) a resolv.conf
//! whose nameserver is 127.0.0.2; the bottle's UDP/53 is rewritten to cork's DNS guard whatever
//! the address, and the guard answers from the policy's `upstream.resolve` pins.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use cork_tests::*;
use serde_json::Value;

const ISOLATED_ENV: &str = "CORK_NETNS_ISOLATED";
const CANARY: &str = "CANARY-bottle-5a5a5a";
/// Random-looking labels under an allowed suffix: only the entropy check refuses it.
const EXFIL_NAME: &str = "x7k2q9zp4m8w3v6t1r5y0b.a9d3kf7q2m8x1z5c4v6b0n.exfil.test";

fn must_run() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("CORK_REQUIRE_STEERING_TESTS").is_some()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn isolation_problem() -> Option<String> {
    let ours = fs::read_link("/proc/self/ns/net").ok();
    let host = fs::read_link("/proc/1/ns/net").ok();
    if ours.is_some() && ours == host {
        return Some("this is PID 1's (the host's) network namespace".into());
    }
    let dev = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    for line in dev.lines().skip(2) {
        let name = line.split(':').next().unwrap_or("").trim();
        if name != "lo" && !name.starts_with("corkv") {
            return Some(format!("interface {name} exists"));
        }
    }
    let routes = fs::read_to_string("/proc/net/route").unwrap_or_default();
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
            return Some(format!("an IPv4 default route via {} exists", f[0]));
        }
    }
    let routes6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    for line in routes6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && f[0] == "00000000000000000000000000000000" && f[1] == "00" && f[9] != "lo" {
            return Some(format!("an IPv6 default route via {} exists", f[9]));
        }
    }
    None
}

/// Runs `body` in a private network namespace, re-running just this test through isolated.sh
/// when needed. Without root it skips, unless CI / CORK_REQUIRE_STEERING_TESTS demand it.
fn in_isolated_netns(test: &str, body: impl FnOnce()) {
    if !is_root() {
        assert!(!must_run(), "{test}: needs root, and CORK_REQUIRE_STEERING_TESTS/CI demands it");
        println!("SKIPPED {test}: needs root");
        return;
    }
    if let Some(problem) = isolation_problem() {
        assert!(std::env::var_os(ISOLATED_ENV).is_none(), "{test}: isolated.sh ran us, yet the namespace is not isolated: {problem}");
        // One bottle test at a time: each cork cleans up stale bottles when it starts, which would
        // race with the test that leaves one stale on purpose.
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let exe = std::env::current_exe().expect("test binary path");
        let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("netns/isolated.sh");
        let output = Command::new(wrapper)
            .arg(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .output()
            .expect("running tests/netns/isolated.sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("--- {test} in a private network namespace ---\n{stdout}{stderr}---");
        assert!(output.status.success(), "{test} failed in its network namespace");
        assert!(stdout.contains(&format!("test {test} ... ok")), "{test} did not run in its network namespace");
        return;
    }
    body();
}

fn bottle_name(label: &str) -> String {
    format!("t{}-{label}", std::process::id())
}

/// A policy allowing origin.test and `*.exfil.test` on the origin's ports, with a canary.
fn policy(origin: &Origin) -> String {
    policy_for(origin, &["origin.test", "'*.exfil.test'"], "", &format!("scan:\n  canaries: [{CANARY}]\n"))
}

struct Setup {
    dir: TempDir,
    origin: Origin,
}

impl Setup {
    fn new() -> Setup {
        let origin = Origin::start(&TEST_NAMES);
        let dir = TempDir::new("bottle");
        fs::write(dir.path().join("policy.yaml"), policy(&origin)).unwrap();
        fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.2\noptions attempts:1 timeout:5\n").unwrap();
        Setup { dir, origin }
    }

    fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn audit(&self) -> Vec<Value> {
        let text = fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))).collect()
    }

    fn find(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let audit = self.audit();
        audit.iter().find(|r| pred(r)).cloned().unwrap_or_else(|| panic!("no audit record for {what}; log: {audit:#?}"))
    }

    /// `cork bottle run` with this setup's policy, state and audit log, without proxy settings.
    fn cork(&self, name: &str, command: &[&str]) -> Command {
        self.cork_with(name, &[], command)
    }

    fn cork_with(&self, name: &str, options: &[&str], command: &[&str]) -> Command {
        let mut cmd = Command::new(binary("cork"));
        cmd.args(["bottle", "run", "--name", name])
            .args(options)
            .arg("--policy")
            .arg(self.dir.path().join("policy.yaml"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--audit")
            .arg(self.audit_path())
            .arg("--")
            .args(command);
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// The same, through a private mount namespace whose /etc/resolv.conf points at the guard.
    fn cork_with_dns(&self, name: &str, command: &[&str]) -> Command {
        let resolv = self.dir.path().join("resolv.conf");
        let script = r#"mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#;
        let mut args = vec!["unshare", "--mount", "sh", "-c", script, "sh", resolv.to_str().unwrap()];
        args.extend_from_slice(command);
        self.cork(name, &args)
    }

    fn https_base(&self) -> String {
        format!("https://origin.test:{}", self.origin.https.port())
    }
}

fn json_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON report: {}", text(out)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad report ({e}): {line}"))
}

fn cgroup_candidates(name: &str) -> Vec<PathBuf> {
    ["/sys/fs/cgroup/cork", "/sys/fs/cgroup/unified/cork"].iter().map(|p| Path::new(p).join(name)).collect()
}

fn pin_dir(name: &str) -> PathBuf {
    Path::new("/run/cork/bpffs").join(name)
}

/// A `cork bottle run` started in the background, whose command talks over stdin/stdout.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    stderr_path: PathBuf,
}

impl Running {
    fn start(mut cmd: Command, stderr_path: PathBuf) -> Running {
        let stderr = fs::File::create(&stderr_path).unwrap();
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Running { child, stdin, stdout, stderr_path }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next line of the bottled command's standard output (panics at end of stream).
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "the bottled command's output ended; cork stderr:\n{}", self.stderr());
        line.trim_end().to_string()
    }

    /// Reads lines until `marker`, returning those before it.
    fn until(&mut self, marker: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let line = self.line();
            if line == marker {
                return before;
            }
            before.push(line);
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The `key=value` field of cork's banner on standard error.
    fn banner(&self, key: &str) -> String {
        let stderr = self.stderr();
        let line = stderr.lines().find(|l| l.starts_with("cork bottle ")).unwrap_or_else(|| panic!("no banner in {stderr}"));
        line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("{key} in {line}")).to_string()
    }

    fn wait(mut self) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        let status = self.child.wait().unwrap();
        (status, rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pending_accepts(listener: &TcpListener) -> usize {
    listener.set_nonblocking(true).unwrap();
    let mut n = 0;
    loop {
        match listener.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("accept: {e}"),
        }
    }
    n
}

#[test]
fn curl_in_a_bottle_is_steered_bumped_scanned_and_audited() {
    in_isolated_netns("curl_in_a_bottle_is_steered_bumped_scanned_and_audited", || {
        let s = Setup::new();
        let (https, http) = (s.origin.https.port(), s.origin.http.port());
        let script = format!(
            r#"
c() {{ curl -sS --max-time 60 -o /dev/null -w "$1 %{{http_code}}\n" "${{@:2}}"; }}
c get --resolve origin.test:{https}:127.0.0.2 https://origin.test:{https}/bytes/1024
c canary --resolve origin.test:{https}:127.0.0.2 -d 'token={CANARY}' https://origin.test:{https}/echo
c other --resolve other.test:{https}:127.0.0.2 https://other.test:{https}/
c http --resolve origin.test:{http}:127.0.0.2 http://origin.test:{http}/bytes/10
c http-other --resolve other.test:{http}:127.0.0.2 http://other.test:{http}/
exit 0
"#
        );
        let name = bottle_name("curl");
        let out = run(&mut s.cork(&name, &["bash", "-c", &script]));
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), "get 200\ncanary 403\nother 000\nhttp 200\nhttp-other 403", "{}", text(&out));

        let get = s.find("the bumped GET", |r| r["kind"] == "request" && r["path"] == "/bytes/1024");
        assert_eq!(get["verdict"], "allow");
        assert_eq!(get["host"], "origin.test");
        assert_eq!(get["instance"], name.as_str());
        assert!(get["pid"].as_u64().unwrap() > 1, "{get}");
        let steer = s.find("the GET's steer line", |r| r["kind"] == "steer" && r["client"] == get["client"]);
        assert_eq!(steer["verdict"], "allow");
        assert_eq!(steer["pid"], get["pid"]);
        assert!(steer["reason"].as_str().unwrap().contains(&format!("dialled 127.0.0.2:{https}")), "{steer}");
        let canary = s.find("the canary POST", |r| r["kind"] == "request" && r["path"] == "/echo");
        assert_eq!(canary["verdict"], "block");
        assert_eq!(canary["status"], 403);
        assert_eq!(canary["rules"][0], "canary");
        let other = s.find("the refused SNI", |r| r["kind"] == "steer" && r["host"] == "other.test" && r["port"] == https);
        assert_eq!(other["verdict"], "block");
        assert_eq!(other["rules"][0], "host.not_allowed");
        assert!(other["pid"].as_u64().is_some(), "{other}");
        let plain = s.find("the plain HTTP request", |r| r["kind"] == "request" && r["path"] == "/bytes/10");
        assert_eq!((plain["verdict"].as_str(), plain["port"].as_u64()), (Some("allow"), Some(http as u64)));
        let plain_other = s.find("the refused Host", |r| r["kind"] == "request" && r["host"] == "other.test" && r["port"] == http);
        assert_eq!((plain_other["verdict"].as_str(), plain_other["status"].as_u64()), (Some("block"), Some(403)));
        // Nothing was left behind.
        assert!(cgroup_candidates(&name).iter().all(|p| !p.exists()));
        assert!(!pin_dir(&name).exists());
    });
}

#[test]
fn python_requests_resolves_through_the_dns_guard_and_is_bumped() {
    in_isolated_netns("python_requests_resolves_through_the_dns_guard_and_is_bumped", || {
        let s = Setup::new();
        let python = std::env::var("CORK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let client = clients_dir().join("bottle_requests.py");
        let base = s.https_base();
        let out = run(&mut s.cork_with_dns(&bottle_name("py"), &[&python, client.to_str().unwrap(), &base, CANARY, EXFIL_NAME]));
        assert!(out.status.success(), "{}", text(&out));
        let report = json_line(&out);
        assert_eq!(report["get_status"], 200, "{report}");
        assert_eq!(report["get_length"], 2048);
        assert_eq!(report["canary_status"], 403);
        assert_eq!(report["canary_rule"], "canary");
        assert_eq!(report["origin"], serde_json::json!(["127.0.0.2"]));
        assert!(report["evil"].as_str().is_some_and(|e| e.starts_with("gaierror")), "{report}");
        assert!(report["exfil"].as_str().is_some_and(|e| e.starts_with("gaierror")), "{report}");

        let dns = s.find("the DNS answer for origin.test", |r| r["kind"] == "dns" && r["host"] == "origin.test" && r["method"] == "A");
        assert_eq!(dns["verdict"], "allow");
        assert_eq!(dns["status"], 0);
        let evil = s.find("the refused DNS query", |r| r["kind"] == "dns" && r["host"] == "evil.test");
        assert_eq!((evil["verdict"].as_str(), evil["status"].as_u64()), (Some("block"), Some(3)), "NXDOMAIN: {evil}");
        assert_eq!(evil["rules"][0], "host.not_allowed");
        let exfil = s.find("the exfil DNS query", |r| r["kind"] == "dns" && r["host"] == EXFIL_NAME);
        assert_eq!((exfil["verdict"].as_str(), exfil["status"].as_u64()), (Some("block"), Some(5)), "REFUSED: {exfil}");
        assert_eq!(exfil["rules"][0], "dns.label_exfil");
        let get = s.find("the bumped GET", |r| r["kind"] == "request" && r["path"] == "/bytes/2048");
        assert_eq!(get["verdict"], "allow");
        assert!(get["pid"].as_u64().is_some());
        let canary = s.find("the canary POST", |r| r["kind"] == "request" && r["path"] == "/echo");
        assert_eq!((canary["verdict"].as_str(), canary["status"].as_u64()), (Some("block"), Some(403)));
    });
}

#[test]
fn node_fetch_ignores_proxies_yet_is_bumped_in_a_bottle() {
    in_isolated_netns("node_fetch_ignores_proxies_yet_is_bumped_in_a_bottle", || {
        let node = Path::new("/usr/bin/node");
        if !node.exists() {
            assert!(!must_run(), "node is missing at /usr/bin/node");
            println!("SKIPPED: no node");
            return;
        }
        let s = Setup::new();
        let client = clients_dir().join("node_fetch.mjs");
        let base = s.https_base();
        let out = run(&mut s.cork_with_dns(&bottle_name("node"), &["/usr/bin/node", client.to_str().unwrap(), &base, CANARY]));
        assert!(out.status.success(), "{}", text(&out));
        let report = json_line(&out);
        assert_eq!(report["get_status"], 200, "{report}");
        assert_eq!(report["get_length"], 1024);
        assert_eq!(report["canary_status"], 403);
        assert_eq!(report["canary_rule"], "canary");
        assert_eq!(report["evil"], "ENOTFOUND", "{report}");
        let get = s.find("node's GET", |r| r["kind"] == "request" && r["path"] == "/bytes/1024");
        assert_eq!(get["verdict"], "allow");
        assert!(get["pid"].as_u64().is_some());
        let canary = s.find("node's canary POST", |r| r["kind"] == "request" && r["path"] == "/echo");
        assert_eq!((canary["verdict"].as_str(), canary["status"].as_u64()), (Some("block"), Some(403)));
        s.find("node's refused DNS query", |r| r["kind"] == "dns" && r["host"] == "evil.test" && r["verdict"] == "block");
    });
}

#[test]
fn h2load_in_a_bottle_speaks_h2_through_transparent_mode() {
    in_isolated_netns("h2load_in_a_bottle_speaks_h2_through_transparent_mode", || {
        let h2load = Path::new("/usr/bin/h2load");
        if !h2load.exists() {
            assert!(!must_run(), "h2load is missing: cargo xtask test installs nghttp2-client");
            println!("SKIPPED: no h2load");
            return;
        }
        let s = Setup::new();
        // h2load offers only h2 over ALPN, so every request below is an HTTP/2 stream.
        const REQUESTS: usize = 300;
        let url = format!("{}/bytes/1536", s.https_base());
        let out = run(&mut s.cork_with_dns(&bottle_name("h2load"), &["/usr/bin/h2load", "-n", "300", "-c", "3", "-m", "20", &url]));
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("Application protocol: h2"), "{}", text(&out));
        assert!(stdout.contains(&format!("requests: {REQUESTS} total, {REQUESTS} started, {REQUESTS} done, {REQUESTS} succeeded, 0 failed")), "{}", text(&out));
        assert!(stdout.contains(&format!("status codes: {REQUESTS} 2xx")), "{}", text(&out));
        let audit = s.audit();
        let streams: Vec<&Value> = audit.iter().filter(|r| r["kind"] == "request" && r["path"] == "/bytes/1536").collect();
        assert_eq!(streams.len(), REQUESTS, "one audit record per stream");
        for r in &streams {
            assert_eq!((r["verdict"].as_str(), r["http_version"].as_str(), r["status"].as_u64()), (Some("allow"), Some("HTTP/2"), Some(200)), "{r}");
            assert!(r["pid"].as_u64().is_some(), "the stream is tied to h2load's pid: {r}");
        }
        let steers = audit.iter().filter(|r| r["kind"] == "steer" && r["verdict"] == "allow" && r["port"] == s.origin.https.port()).count();
        assert_eq!(steers, 3, "h2load's three connections were steered");
    });
}

#[test]
fn quic_raw_sockets_dns_and_bad_first_bytes_are_refused_and_logged() {
    in_isolated_netns("quic_raw_sockets_dns_and_bad_first_bytes_are_refused_and_logged", || {
        let s = Setup::new();
        let https = s.origin.https.port();
        let script = format!(
            r#"
import errno, os, socket, ssl, struct, sys
def attempt(label, fn):
    try:
        print(label, fn())
    except (ssl.SSLError, ConnectionResetError) as e:
        print(label, "refused", type(e).__name__)
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, e.errno) if e.errno else type(e).__name__)
    sys.stdout.flush()
def quic():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"quic", ("127.0.0.2", 443))
    return "sent"
def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    return "created"
def ping():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    return "created"
def dns(name):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(20)
    u.sendto(q, ("127.0.0.2", 53))
    data, src = u.recvfrom(4096)
    return "rcode=%d answers=%d from=%s" % (data[3] & 15, struct.unpack(">H", data[6:8])[0], src[0])
def garbage():
    c = socket.create_connection(("127.0.0.2", {https}), timeout=30)
    c.sendall(b"\x00\x01garbage\r\n\r\n")
    return "closed" if c.recv(100) == b"" else "answered"
def no_sni():
    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    ctx.check_hostname = False
    c = socket.create_connection(("127.0.0.2", {https}), timeout=30)
    ctx.wrap_socket(c)
    return "handshake"
def mapped():
    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    c.settimeout(30)
    c.connect(("::ffff:127.0.0.2", {https}))
    t = ctx.wrap_socket(c, server_hostname="origin.test")
    t.sendall(b"GET /bytes/7 HTTP/1.1\r\nHost: origin.test:{https}\r\nConnection: close\r\n\r\n")
    return t.recv(100).split(b"\r\n")[0].decode()
attempt("quic", quic)
attempt("raw", raw)
attempt("ping", ping)
attempt("dns-origin", lambda: dns("origin.test"))
attempt("dns-evil", lambda: dns("evil.test"))
attempt("dns-exfil", lambda: dns("{EXFIL_NAME}"))
attempt("garbage", garbage)
attempt("no-sni", no_sni)
attempt("mapped", mapped)
print("READY")
sys.stdout.flush()
sys.stdin.readline()
"#
        );
        // Ping sockets need no capability once this namespace's sysctl allows them, so the refusal
        // seen is the bottle's own (raw sockets already fail for want of CAP_NET_RAW, which cork
        // drops for the bottled command, before any hook could report them).
        fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").unwrap();
        let name = bottle_name("refusals");
        let mut running = Running::start(s.cork(&name, &["python3", "-c", &script]), s.dir.path().join("cork.stderr"));
        let mut lines = running.until("READY");
        // How the refused handshake surfaces (EOF or reset) is the client's business.
        for line in lines.iter_mut().filter(|l| l.starts_with("no-sni refused")) {
            *line = "no-sni refused".into();
        }
        assert_eq!(
            lines,
            vec![
                "quic EPERM".to_string(),
                "raw EPERM".into(),
                "ping EPERM".into(),
                "dns-origin rcode=0 answers=1 from=127.0.0.2".into(),
                "dns-evil rcode=3 answers=0 from=127.0.0.2".into(),
                "dns-exfil rcode=5 answers=0 from=127.0.0.2".into(),
                "garbage closed".into(),
                "no-sni refused".into(),
                "mapped HTTP/1.1 200 OK".into(),
            ],
            "cork stderr:\n{}",
            running.stderr()
        );

        // While the bottle runs: a connection to cork's listener from outside any bottle has no
        // original destination, and a process outside the bottle reaches the origin directly.
        let listener: SocketAddr = running.banner("listener").parse().unwrap();
        let mut stray = TcpStream::connect(listener).unwrap();
        stray.write_all(b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = stray.read_to_end(&mut answer);
        assert!(answer.is_empty(), "cork answered a connection it cannot place: {:?}", String::from_utf8_lossy(&answer));
        let outside = run(Command::new("curl")
            .args(["-sS", "--max-time", "60", "--noproxy", "*", "--cacert"])
            .arg(&s.origin.ca)
            .args(["--resolve", &format!("origin.test:{https}:127.0.0.2"), &format!("https://origin.test:{https}/bytes/33")]));
        assert!(outside.status.success(), "{}", text(&outside));
        assert_eq!(outside.stdout.len(), 33);

        running.send("done");
        let (status, _) = running.wait();
        assert!(status.success(), "cork exited with {status:?}");

        let pid_of = |r: &Value| r["pid"].as_u64().unwrap_or(0);
        let quic = s.find("the QUIC refusal", |r| r["kind"] == "steer" && r["rules"][0] == "steer.udp_quic");
        assert_eq!((quic["host"].as_str(), quic["port"].as_u64()), (Some("127.0.0.2"), Some(443)));
        assert!(pid_of(&quic) > 1, "{quic}");
        let ping = s.find("the ping socket refusal", |r| r["kind"] == "steer" && r["rules"][0] == "steer.socket_kind");
        assert_eq!(pid_of(&ping), pid_of(&quic), "same process: {ping}");
        assert!(ping["reason"].as_str().unwrap().contains("family 2, type 2, protocol 1"), "{ping}");
        s.find("the pinned DNS answer", |r| r["kind"] == "dns" && r["host"] == "origin.test" && r["verdict"] == "allow");
        s.find("the refused DNS name", |r| r["kind"] == "dns" && r["host"] == "evil.test" && r["status"] == 3);
        s.find("the exfil label", |r| r["kind"] == "dns" && r["rules"][0] == "dns.label_exfil" && r["status"] == 5);
        let garbage = s.find("the non-TLS first bytes", |r| r["kind"] == "steer" && r["rules"][0] == "steer.unknown_protocol");
        assert!(garbage["reason"].as_str().unwrap().contains("0001"), "{garbage}");
        assert_eq!(pid_of(&garbage), pid_of(&quic));
        let no_sni = s.find("the ClientHello without SNI", |r| r["kind"] == "steer" && r["rules"][0] == "steer.no_sni");
        assert_eq!(no_sni["verdict"], "block");
        // The v4-mapped connect reaches cork as the IPv4 destination it is (cork also unmaps any
        // ::ffff: address it is handed; see transparent::unmap's unit test).
        let mapped_request = s.find("the mapped request", |r| r["kind"] == "request" && r["path"] == "/bytes/7");
        assert_eq!(mapped_request["verdict"], "allow");
        let mapped = s.find("the mapped connection's steer line", |r| r["kind"] == "steer" && r["client"] == mapped_request["client"]);
        assert_eq!((mapped["verdict"].as_str(), mapped["host"].as_str()), (Some("allow"), Some("origin.test")));
        assert_eq!(mapped["reason"], format!("dialled 127.0.0.2:{https}").as_str(), "{mapped}");
        let stray = s.find("the stray connection", |r| r["kind"] == "steer" && r["rules"][0] == "steer.no_original_destination");
        assert!(stray.get("pid").is_none(), "{stray}");
        assert!(s.audit().iter().all(|r| r["path"] != "/bytes/33"), "the unbottled request went past cork");
    });
}

#[test]
fn cork_killed_leaves_the_bottle_closed_until_rm() {
    in_isolated_netns("cork_killed_leaves_the_bottle_closed_until_rm", || {
        let s = Setup::new();
        let target = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = target.local_addr().unwrap().port();
        let script = format!(
            r#"
import errno, socket, sys
print("READY"); sys.stdout.flush()
sys.stdin.readline()
for addr in [("127.0.0.2", {port}), ("127.0.0.1", 22), ("::1", {port})]:
    try:
        socket.create_connection(addr, timeout=20)
        print("connected")
    except OSError as e:
        print(errno.errorcode.get(e.errno, "timeout"))
    sys.stdout.flush()
print("DONE"); sys.stdout.flush()
sys.stdin.readline()
"#
        );
        let name = bottle_name("killed");
        let mut running = Running::start(s.cork(&name, &["python3", "-c", &script]), s.dir.path().join("cork.stderr"));
        assert_eq!(running.line(), "READY");
        assert!(pin_dir(&name).join("link_bottle_connect4").exists());
        // SIGKILL: cork gets no chance to clean anything up.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(running.child.id() as i32, libc::SIGKILL) };
        running.child.wait().unwrap();
        assert!(pin_dir(&name).join("link_bottle_connect4").exists(), "pins must survive cork");
        running.send("go");
        let results = running.until("DONE");
        assert_eq!(results, vec!["ECONNREFUSED", "ECONNREFUSED", "ECONNREFUSED"], "the bottle must stay closed");
        assert_eq!(pending_accepts(&target), 0, "the target must never be reached");

        let ls = run(Command::new(binary("cork")).args(["bottle", "ls"]));
        let listing = String::from_utf8_lossy(&ls.stdout);
        let row = listing.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("{name} not listed: {}", text(&ls)));
        assert!(row.contains("stale") && row.contains("(dead)"), "{row}");

        let rm = run(Command::new(binary("cork")).args(["bottle", "rm", &name]));
        assert!(rm.status.success(), "{}", text(&rm));
        let (_, rest) = running.wait();
        assert!(!rest.contains("connected"), "{rest}");
        assert!(!pin_dir(&name).exists());
        assert!(cgroup_candidates(&name).iter().all(|p| !p.exists()));
        let again = run(Command::new(binary("cork")).args(["bottle", "rm", &name]));
        assert!(!again.status.success(), "removing twice must fail: {}", text(&again));
    });
}

#[test]
fn two_bottles_use_different_cas_and_teardown_leaves_nothing() {
    in_isolated_netns("two_bottles_use_different_cas_and_teardown_leaves_nothing", || {
        let s = Setup::new();
        let rootfs = s.dir.path().join("rootfs");
        let script = r#"cat "$NODE_EXTRA_CA_CERTS"; echo "bundle=$SSL_CERT_FILE"; echo READY; read x; exit 7"#;
        let names = [bottle_name("first"), bottle_name("second")];
        // The first bottle also installs its CA into a root filesystem.
        let cmd_a = s.cork_with(&names[0], &["--rootfs", rootfs.to_str().unwrap()], &["sh", "-c", script]);
        let mut a = Running::start(cmd_a, s.dir.path().join("a.stderr"));
        let mut b = Running::start(s.cork(&names[1], &["sh", "-c", script]), s.dir.path().join("b.stderr"));
        let a_out = a.until("READY");
        let b_out = b.until("READY");
        let pem = |lines: &[String]| lines.iter().take_while(|l| !l.starts_with("bundle=")).cloned().collect::<Vec<_>>().join("\n");
        let (ca_a, ca_b) = (pem(&a_out), pem(&b_out));
        assert!(ca_a.starts_with("-----BEGIN CERTIFICATE-----"), "{ca_a}");
        assert!(ca_b.starts_with("-----BEGIN CERTIFICATE-----"), "{ca_b}");
        assert_ne!(ca_a, ca_b, "each bottle has its own CA");

        let installed = rootfs.join(format!("usr/local/share/ca-certificates/cork-{}.crt", names[0]));
        assert_eq!(fs::read_to_string(&installed).unwrap().trim(), ca_a.trim());
        let bundle = rootfs.join("etc/ssl/certs/ca-certificates.crt");
        assert!(fs::read_to_string(&bundle).unwrap().contains(ca_a.trim()));

        let ls = run(Command::new(binary("cork")).args(["bottle", "ls"]));
        let listing = String::from_utf8_lossy(&ls.stdout);
        let mut state_dirs = Vec::new();
        for (name, out) in names.iter().zip([&a_out, &b_out]) {
            let row = listing.lines().find(|l| l.starts_with(name.as_str())).unwrap_or_else(|| panic!("{name} not listed: {listing}"));
            assert!(row.contains("running"), "{row}");
            assert!(cgroup_candidates(name).iter().any(|p| p.exists()), "{name} has a cgroup while it runs");
            assert!(pin_dir(name).exists());
            let bundle = out.iter().find_map(|l| l.strip_prefix("bundle=")).unwrap();
            state_dirs.push(Path::new(bundle).parent().unwrap().to_path_buf());
        }
        assert!(state_dirs.iter().all(|d| d.join("ca.pem").exists()));

        a.send("x");
        b.send("x");
        let (status_a, _) = a.wait();
        let (status_b, _) = b.wait();
        assert_eq!((status_a.code(), status_b.code()), (Some(7), Some(7)), "cork returns the command's exit code");
        for (name, dir) in names.iter().zip(&state_dirs) {
            assert!(cgroup_candidates(name).iter().all(|p| !p.exists()), "cgroup of {name} left behind");
            assert!(!pin_dir(name).exists(), "pins of {name} left behind");
            assert!(!dir.exists(), "state of {name} left behind: {}", dir.display());
        }
        assert!(!installed.exists(), "the rootfs CA is removed");
        assert!(!fs::read_to_string(&bundle).unwrap().contains(ca_a.trim()));
    });
}

/// A server-speaks-first TCP service (like SSH): sends a banner, then echoes one line back.
fn banner_server(listener: TcpListener) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let mut served = 0;
        if let Ok((mut conn, _)) = listener.accept() {
            served += 1;
            conn.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
            conn.write_all(b"SSH-2.0-cork-test\r\n").unwrap();
            let mut line = String::new();
            let _ = BufReader::new(conn.try_clone().unwrap()).read_line(&mut line);
            let _ = conn.write_all(format!("echo {}", line).as_bytes());
        }
        served
    })
}

#[test]
fn raw_tcp_is_refused_unless_listed_then_tunnelled_and_audited() {
    in_isolated_netns("raw_tcp_is_refused_unless_listed_then_tunnelled_and_audited", || {
        let s = Setup::new();
        let listed = TcpListener::bind("127.0.0.2:0").unwrap();
        let unlisted = TcpListener::bind("127.0.0.2:0").unwrap();
        let (listed_port, unlisted_port) = (listed.local_addr().unwrap().port(), unlisted.local_addr().unwrap().port());
        let extra = format!("  raw_tcp: ['127.0.0.2:{listed_port}']\n");
        let policy = policy_for(&s.origin, &["origin.test"], &extra, "limits:\n  handshake_timeout_secs: 1\n");
        fs::write(s.dir.path().join("policy.yaml"), policy).unwrap();
        let server = banner_server(listed);
        let script = format!(
            r#"
exec 3<>/dev/tcp/127.0.0.2/{listed_port}; read -t 20 banner <&3; echo "listed:${{banner%$'\r'}}"
echo ping >&3; read -t 20 reply <&3; echo "reply:$reply"; exec 3<&-
exec 4<>/dev/tcp/127.0.0.2/{unlisted_port}; read -t 20 other <&4; echo "unlisted:$other"
exit 0
"#
        );
        let name = bottle_name("rawtcp");
        let out = run(&mut s.cork(&name, &["bash", "-c", &script]));
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), "listed:SSH-2.0-cork-test\nreply:echo ping\nunlisted:", "{}", text(&out));
        assert_eq!(server.join().unwrap(), 1, "the listed service saw exactly one connection");
        assert_eq!(pending_accepts(&unlisted), 0, "the unlisted service was never reached");

        let tunnel = s.find("the raw TCP tunnel", |r| r["kind"] == "steer" && r["rules"].as_array().unwrap().iter().any(|x| x == "steer.raw_tcp"));
        assert_eq!(tunnel["verdict"], "allow");
        assert!(tunnel["bytes_down"].as_u64().unwrap() >= "SSH-2.0-cork-test\r\necho ping\n".len() as u64, "{tunnel}");
        assert!(tunnel["pid"].as_u64().is_some(), "{tunnel}");
        let refused = s.find("the unlisted raw TCP", |r| r["kind"] == "steer" && r["rules"][0] == "steer.unknown_protocol");
        assert_eq!(refused["verdict"], "block");
        assert!(refused["reason"].as_str().unwrap().contains(&format!("127.0.0.2:{unlisted_port}")) || refused["port"] == unlisted_port, "{refused}");
    });
}

/// A service that reads its client to end of stream (the client's half-close), then answers
/// with `reply` and the length and SHA-256 of what it read, and closes.
fn drain_then_reply_server(listener: TcpListener, reply: Vec<u8>) -> std::thread::JoinHandle<(usize, String)> {
    std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).expect("reading the client to its half-close");
        conn.write_all(&reply).unwrap();
        (got.len(), sha256_hex(&got))
    })
}

#[test]
fn raw_tcp_half_close_and_large_transfers_on_io_uring_and_with_it_off() {
    in_isolated_netns("raw_tcp_half_close_and_large_transfers_on_io_uring_and_with_it_off", || {
        let up_len = 5_000_000usize;
        let down: Vec<u8> = (0..6_000_001u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let expect_uring = if io_uring_expected() { "uring" } else { "splice" };
        for (mode, expected_relay) in [("auto", expect_uring), ("off", "splice")] {
            let s = Setup::new();
            let listener = TcpListener::bind("127.0.0.2:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let extra = format!("  raw_tcp: ['127.0.0.2:{port}']\n");
            let policy = policy_for(&s.origin, &["origin.test"], &extra, &format!("limits:\n  io_uring: {mode}\n"));
            fs::write(s.dir.path().join("policy.yaml"), policy).unwrap();
            let server = drain_then_reply_server(listener, down.clone());
            // The client sends its whole upload, half-closes, and only then can the reply come:
            // the server answers after end of stream, so a relay that loses the half-close hangs
            // (and the client's timeout fails the test).
            let script = format!(
                r#"
import hashlib, socket
s = socket.create_connection(("127.0.0.2", {port}), timeout=60)
data = bytes((i * 7 + (i >> 9)) & 0xff for i in range({up_len}))
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = bytearray()
while True:
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    got += chunk
print("sent", len(data), hashlib.sha256(data).hexdigest())
print("got", len(got), hashlib.sha256(got).hexdigest())
"#
            );
            let name = bottle_name(&format!("rawio{mode}"));
            let out = run(&mut s.cork(&name, &["python3", "-c", &script]));
            assert!(out.status.success(), "io_uring {mode}: {}", text(&out));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = |tag: &str| stdout.lines().find(|l| l.starts_with(tag)).unwrap_or_else(|| panic!("no {tag} line: {}", text(&out))).to_string();
            let (server_len, server_sha) = server.join().unwrap();
            assert_eq!(line("sent "), format!("sent {server_len} {server_sha}"), "io_uring {mode}: the server received different bytes");
            assert_eq!(server_len, up_len);
            assert_eq!(line("got "), format!("got {} {}", down.len(), sha256_hex(&down)), "io_uring {mode}: the client received different bytes");

            let tunnel = s.find("the raw TCP tunnel", |r| r["kind"] == "steer" && r["rules"].as_array().unwrap().iter().any(|x| x == "steer.raw_tcp"));
            assert_eq!(tunnel["relay"], expected_relay, "io_uring {mode}: {tunnel}");
            assert_eq!(tunnel["bytes_up"], up_len as u64, "{tunnel}");
            assert_eq!(tunnel["bytes_down"], down.len() as u64, "{tunnel}");
        }
    });
}

#[test]
fn bottle_ls_shows_a_running_bottle_with_its_counters() {
    in_isolated_netns("bottle_ls_shows_a_running_bottle_with_its_counters", || {
        let s = Setup::new();
        let https = s.origin.https.port();
        let name = bottle_name("ls");
        let cork = binary("cork");
        // The command inside the bottle makes one allowed and one blocked request, then reads
        // `cork bottle ls` (which only reads files) until its counters show both.
        let script = format!(
            r#"
curl -sS -o /dev/null --resolve origin.test:{https}:127.0.0.2 https://origin.test:{https}/bytes/100
curl -sS -o /dev/null --resolve origin.test:{https}:127.0.0.2 -d 'token={CANARY}' https://origin.test:{https}/echo
for i in $(seq 100); do
  row=$({cork} bottle ls | awk '$1 == "{name}"')
  set -- $row
  [ "$6" = 2 ] && [ "$7" = 1 ] && {{ echo "$row"; exit 0; }}
  sleep 0.2
done
echo "no counters: $({cork} bottle ls)"; exit 1
"#,
            cork = cork.display()
        );
        let out = run(&mut s.cork(&name, &["bash", "-c", &script]));
        assert!(out.status.success(), "{}", text(&out));
        let row: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
        assert_eq!(row[0], name);
        assert_eq!(row[1], "running");
        assert!(row[3].parse::<u32>().unwrap() >= 1, "the bottle's own processes are counted: {row:?}");
        assert!(row[9].parse::<u64>().unwrap() > 100, "bytes down include the 100-byte body: {row:?}");
        // After teardown the bottle is gone from the listing.
        let after = run(Command::new(&cork).args(["bottle", "ls"]));
        assert!(!String::from_utf8_lossy(&after.stdout).contains(&name), "{}", text(&after));
    });
}
