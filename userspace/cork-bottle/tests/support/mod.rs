//! Shared by the steering tests: the isolation guard, re-running a test inside a private
//! network namespace, and small real servers standing in for cork and for origins.
#![allow(dead_code)]

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use cork_bottle::{default_object_available, BottleConfig, OBJECT_ENV};

/// Set by tests/netns/isolated.sh inside the namespace it creates.
const ISOLATED_ENV: &str = "CORK_NETNS_ISOLATED";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Set by `cargo xtask vm`'s /init for the guest tests: this is the throwaway guest machine.
pub const VM_GUEST_ENV: &str = "CORK_VM_GUEST";

/// Why the current network namespace is not a private test one, if it is not.
pub fn isolation_problem() -> Option<String> {
    let ours = fs::read_link("/proc/self/ns/net").ok();
    let host = fs::read_link("/proc/1/ns/net").ok();
    if ours.is_some() && ours == host {
        return Some("this is PID 1's (the host's) network namespace".into());
    }
    network_problem()
}

/// Why this network namespace could reach anything beyond loopback, if it could: an interface
/// other than lo (or a test veth) or a default route. The VM guest runs in PID 1's namespace,
/// so this is the part of the isolation guard that applies there.
pub fn network_problem() -> Option<String> {
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
        if f.len() > 9 && f[0] == "00000000000000000000000000000000" && f[1] == "00" && f[9] != "lo"
        {
            return Some(format!("an IPv6 default route via {} exists", f[9]));
        }
    }
    None
}

fn must_run() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("CORK_REQUIRE_STEERING_TESTS").is_some()
}

fn skip(test: &str, why: &str) {
    assert!(
        !must_run(),
        "{test}: cannot run ({why}) and CI/CORK_REQUIRE_STEERING_TESTS demands it"
    );
    println!("SKIPPED {test}: {why}");
}

/// Runs `body` in a private network namespace. Outside one, re-runs just this test through
/// tests/netns/isolated.sh and checks that it ran and passed there. Skips (printing why) when
/// not root or when no eBPF object is available, except under CI.
pub fn in_isolated_netns(test: &str, body: impl FnOnce()) {
    if !is_root() {
        return skip(test, "needs root");
    }
    if !default_object_available() {
        return skip(
            test,
            &format!(
                "no eBPF object: run `cargo xtask build-ebpf` and rebuild, or set {OBJECT_ENV}"
            ),
        );
    }
    if let Some(problem) = isolation_problem() {
        assert!(
            std::env::var_os(ISOLATED_ENV).is_none(),
            "{test}: isolated.sh ran us, yet the network namespace is not isolated: {problem}"
        );
        let exe = std::env::current_exe().expect("test binary path");
        let output = Command::new(repo_root().join("tests/netns/isolated.sh"))
            .arg(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .output()
            .expect("running tests/netns/isolated.sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("--- {test} in a private network namespace ---\n{stdout}{stderr}---");
        assert!(
            output.status.success(),
            "{test} failed in its network namespace"
        );
        assert!(
            stdout.contains(&format!("test {test} ... ok")),
            "{test} did not run in its network namespace"
        );
        return;
    }
    body();
}

/// A bottle name unique to this test and process.
pub fn bottle_name(test: &str) -> String {
    format!("t{}-{}", std::process::id(), test.replace('_', "-"))
        .chars()
        .take(64)
        .collect()
}

pub fn listener(addr: &str) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"))
}

/// Accepted connections so far, without waiting.
pub fn pending_accepts(listener: &TcpListener) -> usize {
    listener.set_nonblocking(true).unwrap();
    let mut n = 0;
    loop {
        match listener.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("accept: {e}"),
        }
    }
    listener.set_nonblocking(false).unwrap();
    n
}

/// Datagrams waiting on `socket`, without waiting.
pub fn pending_datagrams(socket: &UdpSocket) -> usize {
    socket.set_nonblocking(true).unwrap();
    let mut n = 0;
    let mut buf = [0u8; 2048];
    while socket.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    socket.set_nonblocking(false).unwrap();
    n
}

/// Accepts one connection, reads the HTTP request head, and answers 200 with `body(peer)`.
pub fn serve_one_http(listener: &TcpListener, body: impl FnOnce(SocketAddr, &str) -> String) {
    let (mut stream, peer) = listener.accept().expect("accept on the stand-in listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = read_head(&mut stream);
    let body = body(peer, &head);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).unwrap();
}

fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

pub fn curl(url: &str) -> Command {
    let mut cmd = Command::new("curl");
    // --max-time bounds a broken run; no assertion depends on timing.
    cmd.args(["-sS", "--max-time", "20", "--noproxy", "*", url]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

pub fn config_for(listener_v4: SocketAddr) -> BottleConfig {
    let SocketAddr::V4(v4) = listener_v4 else {
        panic!("IPv4 listener expected")
    };
    BottleConfig {
        listener_v4: Some(v4),
        ..BottleConfig::default()
    }
}

/// Starts `command` in the cgroup *keeping* its capabilities (unlike `spawn_in_bottle`), to
/// observe what the eBPF programs alone refuse.
pub fn spawn_in_cgroup_keeping_caps(
    cgroup: &Path,
    command: &mut Command,
) -> std::io::Result<std::process::Child> {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    let fd = procs.as_raw_fd();
    // SAFETY: only write(2) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command.spawn()
}

/// The processes in a bottle's cgroup.
pub fn cork_bottle_processes(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// Which of `programs` and `maps` (kernel ids) are still loaded.
pub fn still_loaded(programs: &[u32], maps: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let live_programs: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(|p| p.ok().map(|p| p.id()))
        .collect();
    let live_maps: Vec<u32> = aya::maps::loaded_maps()
        .filter_map(|m| m.ok().map(|m| m.id()))
        .collect();
    (
        programs
            .iter()
            .copied()
            .filter(|id| live_programs.contains(id))
            .collect(),
        maps.iter()
            .copied()
            .filter(|id| live_maps.contains(id))
            .collect(),
    )
}

/// Waits (bounded) until the kernel has freed `programs` and `maps`, which it does once the
/// last reference goes, shortly after teardown; returns what is still loaded.
pub fn wait_until_freed(programs: &[u32], maps: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut left = still_loaded(programs, maps);
    for _ in 0..500 {
        if left.0.is_empty() && left.1.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        left = still_loaded(programs, maps);
    }
    left
}
