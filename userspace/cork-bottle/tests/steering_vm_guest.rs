//! Bottle steering on a second kernel: run as PID 1's child inside the `cargo xtask vm` guest
//! (Debian's 6.1 cloud kernel), while tests/steering.rs covers the host's kernel. Real bottles:
//! every program loaded, attached to a cgroup v2 and pinned on a bpffs.
//!
//! The guest has no curl or python, so the bottled clients are this binary re-executed in a
//! client role (`--client ...`), moved into the bottle's cgroup between fork and exec exactly
//! like whatever cork starts. 127.0.0.2 stands for an origin; a listener on 127.0.0.1 stands in
//! for cork.
//!
//! The guest is its own machine with only `lo`, so there is no namespace wrapper; instead the
//! binary refuses to run (exit 2) unless /init marked the environment (`CORK_VM_GUEST`) and the
//! network namespace has nothing but loopback and no default route. Exit status 0 only if every
//! check passed.
mod support;

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use cork_bottle::{
    cleanup_stale, default_object_available, spawn_in_bottle, Bottle, BottleConfig, DenyReason,
    DEFAULT_BPFFS_ROOT,
};
use support::*;

type Result<T = ()> = std::result::Result<T, String>;

/// Bounds a broken run (a connection that lands nowhere); no check depends on it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Why this process must not run here, if it must not.
fn refusal() -> Option<String> {
    if std::env::var_os(VM_GUEST_ENV).is_none() {
        return Some(format!(
            "{VM_GUEST_ENV} is unset: this runs only inside the `cargo xtask vm` guest"
        ));
    }
    if let Some(problem) = network_problem() {
        return Some(format!(
            "the network namespace is not loopback-only: {problem}"
        ));
    }
    None
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

fn parse(addr: &str) -> SocketAddr {
    addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The client role: what runs inside the bottle.

/// `--client ACTION ARGS`: prints what it saw, one fact per line; exit status 0 unless the
/// action itself could not proceed.
fn client(args: &[String]) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args[..] {
        // Connect, report the peer getpeername shows, and read the stand-in's reply.
        ["tcp", addr] => match TcpStream::connect(parse(addr)) {
            Ok(mut stream) => {
                let peer = match stream.peer_addr() {
                    Ok(p) => p.to_string(),
                    Err(e) => errno_name(&e),
                };
                stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
                let mut reply = String::new();
                if let Err(e) = stream.read_to_string(&mut reply) {
                    reply = format!("read {}", errno_name(&e));
                }
                println!("peer={peer} reply={reply}");
                0
            }
            Err(e) => {
                println!("connect {}", errno_name(&e));
                1
            }
        },
        // Connect to each address; print getpeername's answer for each.
        ["peers", ref addrs @ ..] => {
            let mut held = Vec::new();
            for addr in addrs {
                match TcpStream::connect(parse(addr)) {
                    Ok(stream) => {
                        println!(
                            "{}",
                            stream
                                .peer_addr()
                                .map(|p| p.to_string())
                                .unwrap_or_else(|e| errno_name(&e))
                        );
                        held.push(stream);
                    }
                    Err(e) => println!("connect {}", errno_name(&e)),
                }
            }
            0
        }
        ["udp", quic, other, allowed, dns] => {
            let attempt = |label: &str, result: io::Result<()>| match result {
                Ok(()) => println!("{label} sent"),
                Err(e) => println!("{label} {}", errno_name(&e)),
            };
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            attempt("quic-sendto", s.send_to(b"quic", parse(quic)).map(drop));
            let c = UdpSocket::bind("0.0.0.0:0").unwrap();
            attempt("quic-connect", c.connect(parse(quic)));
            attempt("other", s.send_to(b"other", parse(other)).map(drop));
            attempt("allowed", s.send_to(b"allowed", parse(allowed)).map(drop));
            let d = UdpSocket::bind("0.0.0.0:0").unwrap();
            d.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
            d.send_to(b"query", parse(dns)).unwrap();
            let mut buf = [0u8; 100];
            match d.recv_from(&mut buf) {
                Ok((n, from)) => println!("dns {} {from}", String::from_utf8_lossy(&buf[..n])),
                Err(e) => println!("dns {}", errno_name(&e)),
            }
            0
        }
        ["sockets"] => {
            for (label, domain, kind, protocol) in [
                ("raw4", libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
                ("raw6", libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
                ("ping", libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
                ("packet", libc::AF_PACKET, libc::SOCK_RAW, 0),
                ("tcp", libc::AF_INET, libc::SOCK_STREAM, 0),
            ] {
                // SAFETY: plain socket(2); the descriptor is closed right away.
                let fd = unsafe { libc::socket(domain, kind, protocol) };
                if fd >= 0 {
                    // SAFETY: fd is ours.
                    unsafe { libc::close(fd) };
                    println!("{label} created");
                } else {
                    println!("{label} {}", errno_name(&io::Error::last_os_error()));
                }
            }
            0
        }
        ["sleep"] => {
            thread::sleep(Duration::from_secs(600));
            0
        }
        _ => {
            eprintln!("unknown client action {args:?}");
            2
        }
    }
}

/// `--hold-bottle NAME LISTENER`: the separate loader process for the kill -9 check. Creates a
/// bottle, says READY, and holds it until stdin closes or it is killed.
fn hold_bottle(args: &[String]) -> ! {
    let [name, listener] = args else {
        eprintln!("--hold-bottle NAME LISTENER");
        std::process::exit(2);
    };
    let bottle = Bottle::create(name, config_for(parse(listener)))
        .unwrap_or_else(|e| panic!("helper: create bottle: {}", chain(&e)));
    println!("READY {}", bottle.cgroup_path().display());
    let mut line = String::new();
    let _ = io::stdin().read_line(&mut line);
    // Exiting without destroy leaves the bottle closed, exactly like a crash.
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// The checks, run by the loader.

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn create(name: &str, config: BottleConfig) -> Result<Bottle> {
    Bottle::create(&bottle_name(name), config).map_err(|e| format!("Bottle::create: {}", chain(&e)))
}

fn client_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg("--client")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn finish(child: std::io::Result<std::process::Child>) -> Result<(u32, Output)> {
    let child = child.map_err(|e| format!("spawning the client: {e}"))?;
    let pid = child.id();
    Ok((pid, child.wait_with_output().map_err(|e| e.to_string())?))
}

/// Runs `client` while a stand-in accepts one connection on `listener` and answers with
/// `reply(peer)`. If the client never reached the stand-in, the stand-in is released with a
/// connection of our own and reports `None`, so a steering failure fails instead of hanging.
fn with_stand_in<R, T: Send>(
    listener: &TcpListener,
    reply: impl FnOnce(SocketAddr) -> (String, T) + Send,
    client: impl FnOnce() -> R,
) -> (Option<T>, R) {
    thread::scope(|s| {
        let stand_in = s.spawn(move || {
            let (mut stream, peer) = listener.accept().expect("accept on the stand-in");
            let (text, seen) = reply(peer);
            let _ = stream.write_all(text.as_bytes());
            (peer, seen)
        });
        let out = client();
        let mut release = None;
        if !stand_in.is_finished() {
            release = TcpStream::connect(listener.local_addr().unwrap()).ok();
        }
        let (peer, seen) = stand_in.join().expect("stand-in thread");
        let ours = release.and_then(|s| s.local_addr().ok());
        (if Some(peer) == ours { None } else { Some(seen) }, out)
    })
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "{}; stdout {:?}; stderr {:?}",
        output.status,
        stdout_of(output),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// connect4 lands on the stand-in; sock_ops recorded the real destination and the pid.
fn connect4_steered_with_original_destination() -> Result {
    let origin = listener("127.0.0.2:0");
    let origin_addr = origin.local_addr().unwrap();
    let cork = listener("127.0.0.1:0");
    let bottle = create("steered", config_for(cork.local_addr().unwrap()))?;
    let (lookup, run) = with_stand_in(
        &cork,
        |peer| {
            let lookup = bottle.original_destination(peer.port());
            let text = match lookup {
                Some((dest, pid)) => format!("orig={dest} pid={pid}"),
                None => "orig=unknown".into(),
            };
            (text, lookup)
        },
        || finish(bottle.spawn(&mut client_command(&["tcp", &origin_addr.to_string()]))),
    );
    let (pid, output) = run?;
    ensure!(
        lookup.is_some(),
        "the bottled connection never reached the stand-in: {}",
        describe(&output)
    );
    ensure!(
        lookup == Some(Some((origin_addr, pid))),
        "lookup {lookup:?}, want {origin_addr} by {pid}"
    );
    // getpeername also shows the origin, not the stand-in.
    let want = format!("peer={origin_addr} reply=orig={origin_addr} pid={pid}");
    ensure!(
        output.status.success() && stdout_of(&output) == want,
        "client: {}; want {want:?}",
        describe(&output)
    );
    ensure!(pending_accepts(&origin) == 0, "the origin was reached");
    bottle
        .destroy()
        .map_err(|e| format!("destroy: {}", chain(&e)))
}

/// getpeername4/6 show the real peer for IPv4, IPv6 and v4-mapped connects.
fn getpeername_shows_the_real_peer() -> Result {
    let origin4 = listener("127.0.0.2:0");
    let origin6 = listener("[::1]:0");
    let cork4 = listener("127.0.0.1:0");
    let cork6 = listener("[::1]:0");
    let SocketAddr::V6(cork6_addr) = cork6.local_addr().unwrap() else {
        unreachable!()
    };
    let bottle = create(
        "getpeername",
        BottleConfig {
            listener_v6: Some(cork6_addr),
            ..config_for(cork4.local_addr().unwrap())
        },
    )?;
    let p4 = origin4.local_addr().unwrap().port();
    let p6 = origin6.local_addr().unwrap().port();
    let (v4, v6, mapped) = (
        format!("127.0.0.2:{p4}"),
        format!("[::1]:{p6}"),
        format!("[::ffff:127.0.0.2]:{p4}"),
    );
    let (_, output) = finish(bottle.spawn(&mut client_command(&["peers", &v4, &v6, &mapped])))?;
    let want = format!("{v4}\n{v6}\n{mapped}");
    ensure!(
        output.status.success() && stdout_of(&output) == want,
        "client: {}; want {want:?}",
        describe(&output)
    );
    // All three landed on the stand-ins (the v4-mapped one on the v4 listener).
    let landed = (
        pending_accepts(&cork4),
        pending_accepts(&cork6),
        pending_accepts(&origin4) + pending_accepts(&origin6),
    );
    ensure!(
        landed == (2, 1, 0),
        "accepted (cork4, cork6, origins) = {landed:?}, want (2, 1, 0)"
    );
    bottle
        .destroy()
        .map_err(|e| format!("destroy: {}", chain(&e)))
}

/// sendmsg4/connect4 refuse UDP/443 (QUIC) and unlisted ports, pass an allowed port, steer DNS
/// to the guard (recvmsg4 shows the answer as the origin's), and report each refusal.
fn udp_quic_refused_dns_steered() -> Result {
    let cork = listener("127.0.0.1:0");
    let dns_guard = UdpSocket::bind("127.0.0.1:0").unwrap();
    let quic_origin = UdpSocket::bind("127.0.0.2:443").unwrap();
    let dns_origin = UdpSocket::bind("127.0.0.2:53").unwrap();
    let other_origin = UdpSocket::bind("127.0.0.2:0").unwrap();
    let allowed_origin = UdpSocket::bind("127.0.0.2:0").unwrap();
    let other = other_origin.local_addr().unwrap();
    let allowed = allowed_origin.local_addr().unwrap();
    let SocketAddr::V4(guard_addr) = dns_guard.local_addr().unwrap() else {
        unreachable!()
    };
    let config = BottleConfig {
        dns_v4: Some(guard_addr),
        allow_udp: vec![allowed.port()],
        ..config_for(cork.local_addr().unwrap())
    };
    let mut bottle = create("udp", config)?;
    let mut events = bottle.take_deny_events().ok_or("no deny events")?;
    dns_guard.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let (guard_saw, run) = thread::scope(|s| {
        let guard = s.spawn(|| {
            let mut buf = [0u8; 100];
            let (n, from) = dns_guard.recv_from(&mut buf).ok()?;
            dns_guard.send_to(b"answer", from).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        let run = finish(bottle.spawn(&mut client_command(&[
            "udp",
            "127.0.0.2:443",
            &other.to_string(),
            &allowed.to_string(),
            "127.0.0.2:53",
        ])));
        (guard.join().expect("guard thread"), run)
    });
    let (pid, output) = run?;
    let want =
        "quic-sendto EPERM\nquic-connect EPERM\nother EPERM\nallowed sent\ndns answer 127.0.0.2:53";
    ensure!(
        output.status.success() && stdout_of(&output) == want,
        "client: {}; want {want:?}",
        describe(&output)
    );
    ensure!(
        guard_saw.as_deref() == Some("query"),
        "the DNS guard saw {guard_saw:?}"
    );
    let pending =
        [&quic_origin, &dns_origin, &other_origin, &allowed_origin].map(pending_datagrams);
    ensure!(
        pending == [0, 0, 0, 1],
        "datagrams at (quic, dns, other, allowed) origins: {pending:?}"
    );
    let mut seen = Vec::new();
    while let Some(event) = events.try_next() {
        seen.push(event);
    }
    let quic = parse("127.0.0.2:443");
    for (reason, dest) in [
        (DenyReason::UdpQuic, quic),
        (DenyReason::UdpNotAllowed, other),
    ] {
        ensure!(
            seen.iter()
                .any(|e| e.reason == reason && e.destination == Some(dest) && e.pid == pid),
            "no {reason:?} event for {dest} by {pid}: {seen:?}"
        );
    }
    let quic_events = seen
        .iter()
        .filter(|e| e.reason == DenyReason::UdpQuic)
        .count();
    ensure!(
        quic_events == 2,
        "{quic_events} QUIC events, want 2: {seen:?}"
    );
    bottle
        .destroy()
        .map_err(|e| format!("destroy: {}", chain(&e)))
}

/// sock_create refuses inet raw and ping sockets even with CAP_NET_RAW; what cork starts also
/// lacks CAP_NET_RAW, so packet sockets fail too. Outside the bottle all are allowed.
fn raw_and_packet_sockets_refused() -> Result {
    let cork = listener("127.0.0.1:0");
    let mut bottle = create("raw", config_for(cork.local_addr().unwrap()))?;
    let mut events = bottle.take_deny_events().ok_or("no deny events")?;
    // Ping sockets are off by default (EACCES before any hook runs); turn them on so the
    // refusal seen is the bottle's.
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
        .map_err(|e| format!("ping_group_range: {e}"))?;
    let (_, outside) = finish(client_command(&["sockets"]).spawn())?;
    let want = "raw4 created\nraw6 created\nping created\npacket created\ntcp created";
    ensure!(
        stdout_of(&outside) == want,
        "outside the bottle: {}",
        describe(&outside)
    );

    let (_, ebpf_only) = finish(spawn_in_cgroup_keeping_caps(
        bottle.cgroup_path(),
        &mut client_command(&["sockets"]),
    ))?;
    let want = "raw4 EPERM\nraw6 EPERM\nping EPERM\npacket created\ntcp created";
    ensure!(
        stdout_of(&ebpf_only) == want,
        "in the cgroup with CAP_NET_RAW: {}; want {want:?}",
        describe(&ebpf_only)
    );
    let mut kinds = Vec::new();
    while let Some(event) = events.try_next() {
        if let DenyReason::SocketKind { family } = event.reason {
            kinds.push((family, event.sock_type, event.protocol));
        }
    }
    ensure!(
        kinds == vec![(2, 3, 1), (10, 3, 58), (2, 2, 1)],
        "socket-kind events {kinds:?}, want raw4, raw6, ping"
    );

    let (_, inside) = finish(bottle.spawn(&mut client_command(&["sockets"])))?;
    let want = "raw4 EPERM\nraw6 EPERM\nping EPERM\npacket EPERM\ntcp created";
    ensure!(
        stdout_of(&inside) == want,
        "bottled: {}; want {want:?}",
        describe(&inside)
    );
    bottle
        .destroy()
        .map_err(|e| format!("destroy: {}", chain(&e)))
}

/// A process outside the bottle connects where it asked.
fn outside_the_bottle_untouched() -> Result {
    let origin = listener("127.0.0.2:0");
    let origin_addr = origin.local_addr().unwrap();
    let cork = listener("127.0.0.1:0");
    let bottle = create("outside", config_for(cork.local_addr().unwrap()))?;
    let (reached, run) = with_stand_in(
        &origin,
        |_| ("origin".into(), ()),
        || finish(client_command(&["tcp", &origin_addr.to_string()]).spawn()),
    );
    let (_, output) = run?;
    ensure!(
        reached.is_some(),
        "the unbottled client never reached the origin: {}",
        describe(&output)
    );
    let want = format!("peer={origin_addr} reply=origin");
    ensure!(
        stdout_of(&output) == want,
        "client: {}; want {want:?}",
        describe(&output)
    );
    ensure!(pending_accepts(&cork) == 0, "the stand-in was reached");
    bottle
        .destroy()
        .map_err(|e| format!("destroy: {}", chain(&e)))
}

/// The pinned links keep a bottle closed after its loader is killed (fail closed), until
/// cleanup_stale removes it.
fn loader_killed_bottle_stays_closed() -> Result {
    let origin = listener("127.0.0.2:0");
    let origin_addr = origin.local_addr().unwrap().to_string();
    let cork = listener("127.0.0.1:0");
    let name = bottle_name("killed");
    let mut loader = Command::new(std::env::current_exe().unwrap())
        .args([
            "--hold-bottle",
            &name,
            &cork.local_addr().unwrap().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the helper loader: {e}"))?;
    let mut lines = BufReader::new(loader.stdout.take().unwrap()).lines();
    let cgroup = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(path) = line.strip_prefix("READY ") {
                    break PathBuf::from(path);
                }
            }
            _ => {
                return Err(format!(
                    "the helper loader exited before READY: {:?}",
                    loader.wait()
                ))
            }
        }
    };
    // SIGKILL: no destructor, no clean-up of any kind.
    loader.kill().unwrap();
    loader.wait().unwrap();
    let pin_dir = Path::new(DEFAULT_BPFFS_ROOT).join(&name);
    ensure!(
        pin_dir.join("link_bottle_connect4").exists(),
        "pins did not survive the loader"
    );

    let (lookup, run) = with_stand_in(
        &cork,
        |_| ("stand-in".into(), ()),
        || {
            finish(spawn_in_bottle(
                &cgroup,
                &mut client_command(&["tcp", &origin_addr]),
            ))
        },
    );
    let (_, output) = run?;
    ensure!(
        lookup.is_some(),
        "the bottle no longer steers to the stand-in: {}",
        describe(&output)
    );
    let want = format!("peer={origin_addr} reply=stand-in");
    ensure!(
        stdout_of(&output) == want,
        "client: {}; want {want:?}",
        describe(&output)
    );
    // With cork's listener gone too, the bottle cannot connect anywhere.
    drop(cork);
    let (_, output) = finish(spawn_in_bottle(
        &cgroup,
        &mut client_command(&["tcp", &origin_addr]),
    ))?;
    ensure!(
        !output.status.success() && stdout_of(&output) == "connect ECONNREFUSED",
        "client must be refused: {}",
        describe(&output)
    );
    ensure!(pending_accepts(&origin) == 0, "the origin was reached");

    let removed = cleanup_stale(Path::new(DEFAULT_BPFFS_ROOT))
        .map_err(|e| format!("cleanup_stale: {}", chain(&e)))?;
    ensure!(removed.contains(&name), "{name} not in {removed:?}");
    ensure!(
        !pin_dir.exists() && !cgroup.exists(),
        "cleanup_stale left {} or {}",
        pin_dir.display(),
        cgroup.display()
    );
    Ok(())
}

/// destroy kills the bottled process and leaves no cgroup, pin, program or map.
fn destroy_leaves_nothing() -> Result {
    let cork = listener("127.0.0.1:0");
    let bottle = create("teardown", config_for(cork.local_addr().unwrap()))?;
    let cgroup = bottle.cgroup_path().to_owned();
    let pin_dir = bottle.pin_dir().to_owned();
    let (programs, maps) = bottle.kernel_ids();
    ensure!(
        programs.len() == 11,
        "{} programs: {programs:?}",
        programs.len()
    );
    ensure!(maps.len() >= 5, "maps {maps:?}");
    let mut sleeper = bottle
        .spawn(&mut client_command(&["sleep"]))
        .map_err(|e| e.to_string())?;
    let inside = cork_bottle_processes(&cgroup);
    ensure!(
        inside == vec![sleeper.id()],
        "processes in the bottle {inside:?}, want [{}]",
        sleeper.id()
    );
    bottle
        .destroy()
        .map_err(|e| format!("destroy: {}", chain(&e)))?;
    let status = sleeper.wait().unwrap();
    ensure!(
        !status.success(),
        "the bottled process was not killed: {status:?}"
    );
    ensure!(
        !cgroup.exists() && !pin_dir.exists(),
        "left {} or {}",
        cgroup.display(),
        pin_dir.display()
    );
    let left = wait_until_freed(&programs, &maps);
    ensure!(
        left == (vec![], vec![]),
        "still loaded (programs, maps): {left:?}"
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(why) = refusal() {
        eprintln!("[guest] steering_vm_guest refuses to run: {why}");
        std::process::exit(2);
    }
    match args.first().map(String::as_str) {
        Some("--client") => std::process::exit(client(&args[1..])),
        Some("--hold-bottle") => hold_bottle(&args[1..]),
        Some(other) => {
            eprintln!("unknown argument {other}");
            std::process::exit(2);
        }
        None => {}
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("[guest] bottle steering on kernel {}", kernel.trim());
    // Here nothing may be skipped: a missing object or privilege is a failure.
    let mut failed = 0;
    if !default_object_available() {
        println!("[guest] FAIL no eBPF object was embedded (run `cargo xtask build-ebpf` before building the guest)");
        failed += 1;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("[guest] FAIL not root");
        failed += 1;
    }
    if failed == 0 {
        let checks: &[(&str, fn() -> Result)] = &[
            ("connect4 steers to the stand-in; sock_ops records the original destination and pid", connect4_steered_with_original_destination),
            ("getpeername shows the real peer for v4, v6 and v4-mapped", getpeername_shows_the_real_peer),
            ("UDP/443 (QUIC) and unlisted UDP refused, allowed UDP passes, DNS steered to the guard", udp_quic_refused_dns_steered),
            ("raw, ping and packet sockets refused only in the bottle", raw_and_packet_sockets_refused),
            ("a process outside the bottle is untouched", outside_the_bottle_untouched),
            ("pinned links keep a bottle closed after its loader is killed; cleanup_stale removes it", loader_killed_bottle_stays_closed),
            ("destroy leaves no process, cgroup, pin, program or map", destroy_leaves_nothing),
        ];
        for (name, check) in checks {
            // A panic (an unexpected unwrap) fails this check, not the rest.
            let result = panic::catch_unwind(AssertUnwindSafe(check)).unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()))
            });
            match result {
                Ok(()) => println!("[guest] ok   {name}"),
                Err(e) => {
                    failed += 1;
                    println!("[guest] FAIL {name}: {e}");
                }
            }
        }
    }
    println!(
        "[guest] bottle steering: {}",
        if failed == 0 {
            "all checks passed".to_string()
        } else {
            format!("{failed} checks failed")
        }
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
