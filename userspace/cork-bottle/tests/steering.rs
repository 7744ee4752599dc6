//! Steering with real clients in a real bottle, each test inside its own private network
//! namespace (see tests/netns/isolated.sh). 127.0.0.2 stands for an origin the agent wants to
//! reach; a listener on 127.0.0.1 stands in for cork.
mod support;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    thread,
};

use cork_bottle::{cleanup_stale, Bottle, BottleConfig, DenyReason, DEFAULT_BPFFS_ROOT};
use support::*;

#[test]
fn bottled_curl_lands_on_the_stand_in_which_finds_the_original_destination() {
    in_isolated_netns(
        "bottled_curl_lands_on_the_stand_in_which_finds_the_original_destination",
        || {
            let origin = listener("127.0.0.2:0");
            let origin_addr = origin.local_addr().unwrap();
            let cork = listener("127.0.0.1:0");
            let bottle = Bottle::create(
                &bottle_name("curl-steered"),
                config_for(cork.local_addr().unwrap()),
            )
            .expect("create bottle");

            let (curl_pid, stand_in_saw, output) = thread::scope(|s| {
                let stand_in = s.spawn(|| {
                    let mut saw = None;
                    serve_one_http(&cork, |peer, head| {
                        saw = Some((bottle.original_destination(peer.port()), head.to_owned()));
                        match bottle.original_destination(peer.port()) {
                            Some((dest, pid)) => format!("orig={dest} pid={pid}"),
                            None => "orig=unknown".into(),
                        }
                    });
                    saw.unwrap()
                });
                let child = bottle
                    .spawn(&mut curl(&format!("http://{origin_addr}/probe")))
                    .expect("spawn curl in the bottle");
                let pid = child.id();
                let output = child.wait_with_output().unwrap();
                (pid, stand_in.join().unwrap(), output)
            });
            let (stdout, stderr) = text(&output);
            assert!(output.status.success(), "curl failed: {stderr}");
            assert_eq!(stdout, format!("orig={origin_addr} pid={curl_pid}"));
            let (lookup, head) = stand_in_saw;
            assert_eq!(lookup, Some((origin_addr, curl_pid)));
            assert!(
                head.starts_with("GET /probe HTTP/1.1\r\n"),
                "request head: {head}"
            );
            assert!(
                head.contains(&format!("Host: {origin_addr}\r\n")),
                "request head: {head}"
            );
            assert_eq!(
                pending_accepts(&origin),
                0,
                "the origin must never be reached"
            );
            bottle.destroy().expect("destroy");
        },
    );
}

#[test]
fn getpeername_shows_the_real_peer_for_v4_v6_and_v4_mapped() {
    in_isolated_netns(
        "getpeername_shows_the_real_peer_for_v4_v6_and_v4_mapped",
        || {
            let origin4 = listener("127.0.0.2:0");
            let origin6 = listener("[::1]:0");
            let cork4 = listener("127.0.0.1:0");
            let cork6 = listener("[::1]:0");
            let SocketAddr::V6(cork6_addr) = cork6.local_addr().unwrap() else {
                unreachable!()
            };
            let config = BottleConfig {
                listener_v6: Some(cork6_addr),
                ..config_for(cork4.local_addr().unwrap())
            };
            let bottle =
                Bottle::create(&bottle_name("getpeername"), config).expect("create bottle");
            let p4 = origin4.local_addr().unwrap().port();
            let p6 = origin6.local_addr().unwrap().port();
            let script = format!(
                r#"
import socket
a = socket.create_connection(("127.0.0.2", {p4}))
print("v4", *a.getpeername()[:2])
b = socket.create_connection(("::1", {p6}))
print("v6", *b.getpeername()[:2])
c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
c.connect(("::ffff:127.0.0.2", {p4}))
print("mapped", *c.getpeername()[:2])
"#
            );
            let output = bottle
                .spawn(&mut python(&script))
                .expect("spawn python")
                .wait_with_output()
                .unwrap();
            let (stdout, stderr) = text(&output);
            assert!(output.status.success(), "python failed: {stderr}");
            assert_eq!(
                stdout,
                format!("v4 127.0.0.2 {p4}\nv6 ::1 {p6}\nmapped ::ffff:127.0.0.2 {p4}")
            );
            // All three landed on the stand-ins (the v4-mapped one on the v4 listener).
            assert_eq!(pending_accepts(&cork4), 2);
            assert_eq!(pending_accepts(&cork6), 1);
            assert_eq!(pending_accepts(&origin4) + pending_accepts(&origin6), 0);
            bottle.destroy().expect("destroy");
        },
    );
}

#[test]
fn udp_quic_refused_dns_steered_other_udp_only_if_allowed() {
    in_isolated_netns(
        "udp_quic_refused_dns_steered_other_udp_only_if_allowed",
        || {
            let cork = listener("127.0.0.1:0");
            let dns_guard = UdpSocket::bind("127.0.0.1:0").unwrap();
            let quic_origin = UdpSocket::bind("127.0.0.2:443").unwrap();
            let dns_origin = UdpSocket::bind("127.0.0.2:53").unwrap();
            let other_origin = UdpSocket::bind("127.0.0.2:0").unwrap();
            let allowed_origin = UdpSocket::bind("127.0.0.2:0").unwrap();
            let other_port = other_origin.local_addr().unwrap().port();
            let allowed_port = allowed_origin.local_addr().unwrap().port();
            let SocketAddr::V4(guard_addr) = dns_guard.local_addr().unwrap() else {
                unreachable!()
            };
            let config = BottleConfig {
                dns_v4: Some(guard_addr),
                allow_udp: vec![allowed_port],
                ..config_for(cork.local_addr().unwrap())
            };
            let mut bottle = Bottle::create(&bottle_name("udp"), config).expect("create bottle");
            let mut events = bottle.take_deny_events().expect("deny events");

            let script = format!(
                r#"
import socket, errno
def attempt(label, fn):
    try:
        fn()
        print(label, "sent")
    except OSError as e:
        print(label, errno.errorcode[e.errno])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("quic-sendto", lambda: s.sendto(b"quic", ("127.0.0.2", 443)))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attempt("quic-connect", lambda: c.connect(("127.0.0.2", 443)))
attempt("other", lambda: s.sendto(b"other", ("127.0.0.2", {other_port})))
attempt("allowed", lambda: s.sendto(b"allowed", ("127.0.0.2", {allowed_port})))
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.sendto(b"query", ("127.0.0.2", 53))
data, source = d.recvfrom(100)
print("dns", data.decode(), *source)
"#
            );
            let (output, guard_saw) = thread::scope(|s| {
                let guard = s.spawn(|| {
                    let mut buf = [0u8; 100];
                    let (n, from) = dns_guard.recv_from(&mut buf).unwrap();
                    dns_guard.send_to(b"answer", from).unwrap();
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                });
                let child = bottle.spawn(&mut python(&script)).expect("spawn python");
                let pid = child.id();
                let output = child.wait_with_output().unwrap();
                (output.with_pid(pid), guard.join().unwrap())
            });
            let (pid, output) = output;
            let (stdout, stderr) = text(&output);
            assert!(output.status.success(), "python failed: {stderr}");
            assert_eq!(
            stdout,
            "quic-sendto EPERM\nquic-connect EPERM\nother EPERM\nallowed sent\ndns answer 127.0.0.2 53"
        );
            assert_eq!(guard_saw, "query");
            assert_eq!(pending_datagrams(&quic_origin), 0);
            assert_eq!(pending_datagrams(&dns_origin), 0);
            assert_eq!(pending_datagrams(&other_origin), 0);
            assert_eq!(pending_datagrams(&allowed_origin), 1);

            let mut seen = Vec::new();
            while let Some(event) = events.try_next() {
                seen.push(event);
            }
            let quic: SocketAddr = "127.0.0.2:443".parse().unwrap();
            let other: SocketAddr = format!("127.0.0.2:{other_port}").parse().unwrap();
            for (reason, dest) in [
                (DenyReason::UdpQuic, quic),
                (DenyReason::UdpQuic, quic),
                (DenyReason::UdpNotAllowed, other),
            ] {
                let found = seen
                    .iter()
                    .filter(|e| e.reason == reason && e.destination == Some(dest) && e.pid == pid)
                    .count();
                assert!(
                    found >= 1,
                    "no {reason:?} event for {dest} by {pid}: {seen:?}"
                );
            }
            assert_eq!(
                seen.iter()
                    .filter(|e| e.reason == DenyReason::UdpQuic)
                    .count(),
                2,
                "{seen:?}"
            );
            bottle.destroy().expect("destroy");
        },
    );
}

trait WithPid: Sized {
    fn with_pid(self, pid: u32) -> (u32, Self) {
        (pid, self)
    }
}
impl WithPid for std::process::Output {}

#[test]
fn raw_packet_and_ping_sockets_are_refused_only_in_the_bottle() {
    in_isolated_netns(
        "raw_packet_and_ping_sockets_are_refused_only_in_the_bottle",
        || {
            let cork = listener("127.0.0.1:0");
            let mut bottle =
                Bottle::create(&bottle_name("raw"), config_for(cork.local_addr().unwrap()))
                    .expect("create bottle");
            let mut events = bottle.take_deny_events().expect("deny events");
            let script = r#"
import socket, errno
for label, args in [
    ("raw4", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    ("raw6", (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)),
    ("ping", (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)),
    ("packet", (socket.AF_PACKET, socket.SOCK_RAW, 0)),
    ("tcp", (socket.AF_INET, socket.SOCK_STREAM, 0)),
]:
    try:
        socket.socket(*args).close()
        print(label, "created")
    except OSError as e:
        print(label, errno.errorcode[e.errno])
"#;
            // Ping sockets are off by default (EACCES, before any hook runs); this namespace's own
            // sysctl turns them on so the bottle's refusal is what is seen.
            std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").unwrap();
            // Outside the bottle the same root process may create them: the refusal is the bottle's.
            let outside = python(script).output().unwrap();
            let (stdout, stderr) = text(&outside);
            assert!(outside.status.success(), "{stderr}");
            assert_eq!(
                stdout, "raw4 created\nraw6 created\nping created\npacket created\ntcp created",
                "outside the bottle"
            );

            // The eBPF programs alone (the process keeps CAP_NET_RAW): inet raw and ping sockets are
            // refused by cgroup/sock_create, each reported. AF_PACKET never reaches that hook.
            let ebpf_only = spawn_in_cgroup_keeping_caps(bottle.cgroup_path(), &mut python(script))
                .unwrap()
                .wait_with_output()
                .unwrap();
            let (stdout, stderr) = text(&ebpf_only);
            assert!(ebpf_only.status.success(), "{stderr}");
            assert_eq!(
                stdout,
                "raw4 EPERM\nraw6 EPERM\nping EPERM\npacket created\ntcp created"
            );
            let mut kinds = Vec::new();
            while let Some(event) = events.try_next() {
                if let DenyReason::SocketKind { family } = event.reason {
                    kinds.push((family, event.sock_type, event.protocol));
                }
            }
            assert_eq!(
                kinds,
                vec![(2, 3, 1), (10, 3, 58), (2, 2, 1)],
                "raw4, raw6, ping"
            );

            // What cork starts (spawn_in_bottle) also lacks CAP_NET_RAW, so packet sockets fail too.
            let inside = bottle
                .spawn(&mut python(script))
                .unwrap()
                .wait_with_output()
                .unwrap();
            let (stdout, stderr) = text(&inside);
            assert!(inside.status.success(), "{stderr}");
            assert_eq!(
                stdout,
                "raw4 EPERM\nraw6 EPERM\nping EPERM\npacket EPERM\ntcp created"
            );
            bottle.destroy().expect("destroy");
        },
    );
}

#[test]
fn a_process_outside_the_bottle_is_untouched() {
    in_isolated_netns("a_process_outside_the_bottle_is_untouched", || {
        let origin = listener("127.0.0.2:0");
        let origin_addr = origin.local_addr().unwrap();
        let cork = listener("127.0.0.1:0");
        let bottle = Bottle::create(
            &bottle_name("outside"),
            config_for(cork.local_addr().unwrap()),
        )
        .expect("create bottle");
        let output = thread::scope(|s| {
            let server = s.spawn(|| serve_one_http(&origin, |_, _| "origin".into()));
            let output = curl(&format!("http://{origin_addr}/")).output().unwrap();
            server.join().unwrap();
            output
        });
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "unbottled curl failed: {stderr}");
        assert_eq!(stdout, "origin");
        assert_eq!(pending_accepts(&cork), 0);
        bottle.destroy().expect("destroy");
    });
}

/// Not a test by itself: the separate loader process for the kill -9 test. It creates a bottle,
/// says READY, and holds it until its stdin closes or it is killed.
#[test]
#[ignore = "helper process for loader_killed_bottle_stays_closed_until_cleanup"]
fn helper_loader_holds_a_bottle() {
    let name = std::env::var("CORK_TEST_HELPER_BOTTLE").expect("helper only");
    let listener: SocketAddr = std::env::var("CORK_TEST_HELPER_LISTENER")
        .unwrap()
        .parse()
        .unwrap();
    let bottle = Bottle::create(&name, config_for(listener)).expect("helper: create bottle");
    println!("READY {}", bottle.cgroup_path().display());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    // Dropping without destroy leaves the bottle closed, exactly like a crash.
}

#[test]
fn loader_killed_bottle_stays_closed_until_cleanup() {
    in_isolated_netns("loader_killed_bottle_stays_closed_until_cleanup", || {
        let origin = listener("127.0.0.2:0");
        let origin_addr = origin.local_addr().unwrap();
        let cork = listener("127.0.0.1:0");
        let name = bottle_name("killed");
        let mut loader = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_loader_holds_a_bottle",
                "--ignored",
                "--nocapture",
            ])
            .env("CORK_TEST_HELPER_BOTTLE", &name)
            .env(
                "CORK_TEST_HELPER_LISTENER",
                cork.local_addr().unwrap().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(loader.stdout.take().unwrap()).lines();
        let cgroup = loop {
            let line = lines.next().expect("helper exited before READY").unwrap();
            if let Some(path) = line.strip_prefix("READY ") {
                break std::path::PathBuf::from(path);
            }
        };
        // SIGKILL: no destructor, no clean-up of any kind.
        loader.kill().unwrap();
        loader.wait().unwrap();
        let pin_dir = Path::new(DEFAULT_BPFFS_ROOT).join(&name);
        assert!(
            pin_dir.join("link_bottle_connect4").exists(),
            "pins must survive the loader"
        );

        // The bottle still steers: a bottled curl lands on the stand-in, never on the origin.
        let output = thread::scope(|s| {
            let stand_in = s.spawn(|| serve_one_http(&cork, |_, _| "stand-in".into()));
            let child =
                cork_bottle::spawn_in_bottle(&cgroup, &mut curl(&format!("http://{origin_addr}/")))
                    .unwrap();
            let output = child.wait_with_output().unwrap();
            stand_in.join().unwrap();
            output
        });
        assert_eq!(text(&output).0, "stand-in");
        // With cork's listener gone too, the bottle cannot connect anywhere.
        drop(cork);
        let output =
            cork_bottle::spawn_in_bottle(&cgroup, &mut curl(&format!("http://{origin_addr}/")))
                .unwrap()
                .wait_with_output()
                .unwrap();
        assert!(
            !output.status.success(),
            "curl must fail: {:?}",
            text(&output)
        );
        assert_eq!(
            pending_accepts(&origin),
            0,
            "the origin must never be reached"
        );

        let removed = cleanup_stale(Path::new(DEFAULT_BPFFS_ROOT)).expect("cleanup_stale");
        assert!(removed.contains(&name), "{name} not in {removed:?}");
        assert!(!pin_dir.exists());
        assert!(!cgroup.exists());
    });
}

#[test]
fn destroy_kills_the_bottle_and_leaves_no_cgroup_pin_program_or_map() {
    in_isolated_netns(
        "destroy_kills_the_bottle_and_leaves_no_cgroup_pin_program_or_map",
        || {
            let cork = listener("127.0.0.1:0");
            let bottle = Bottle::create(
                &bottle_name("teardown"),
                config_for(cork.local_addr().unwrap()),
            )
            .expect("create bottle");
            let cgroup = bottle.cgroup_path().to_owned();
            let pin_dir = bottle.pin_dir().to_owned();
            let (programs, maps) = bottle.kernel_ids();
            assert_eq!(programs.len(), 11);
            assert!(maps.len() >= 5, "{maps:?}");
            let mut sleeper = bottle.spawn(Command::new("sleep").arg("600")).unwrap();
            assert_eq!(
                cork_bottle_processes(&cgroup),
                vec![sleeper.id()],
                "the child runs in the bottle"
            );

            bottle.destroy().expect("destroy");
            let status = sleeper.wait().unwrap();
            assert!(
                !status.success(),
                "the bottled process was killed: {status:?}"
            );
            assert!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
            assert!(!pin_dir.exists(), "pins left: {}", pin_dir.display());
            assert_eq!(
                wait_until_freed(&programs, &maps),
                (vec![], vec![]),
                "programs/maps still loaded"
            );
        },
    );
}
