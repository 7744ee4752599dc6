//! The load generator against the real origin: every mode completes its request budget with the
//! right byte counts, and failures (bad status, untrusted CA, refused CONNECT) show up as errors.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bench_harness::loadgen::{self, LoadConfig, Mode};
use bench_harness::origin::{Origin, OriginConfig, TestCa};

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

async fn origin() -> Origin {
    let mut cfg = OriginConfig::new(SocketAddr::new(IP, 0));
    cfg.http = Some(SocketAddr::new(IP, 0));
    Origin::start(cfg).await.expect("origin starts")
}

fn config(origin: &Origin, path: &str, mode: Mode, requests: u64) -> LoadConfig {
    let mut cfg = LoadConfig::new(format!("https://origin.test:{}{path}", origin.https_addr().port()));
    cfg.connect_to = Some(origin.https_addr());
    cfg.ca_pem = Some(origin.ca_pem());
    cfg.mode = mode;
    cfg.concurrency = 4;
    cfg.requests = Some(requests);
    cfg.duration = Some(Duration::from_secs(60));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_finishes_its_budget() {
    let origin = origin().await;
    for mode in [Mode::KeepAlive, Mode::NewConn, Mode::H2] {
        let r = loadgen::run(config(&origin, "/bytes/1024", mode, 200)).await.unwrap();
        assert_eq!(r.errors, 0, "{mode:?}: {:?}", r.first_error);
        assert_eq!(r.requests, 200, "{mode:?}");
        assert_eq!(r.bytes_down, 200 * 1024, "{mode:?}");
        assert!(r.latency_p50_ms > 0.0 && r.latency_p50_ms <= r.latency_p999_ms);
    }
    let mut up = config(&origin, "/upload", Mode::H2, 20);
    up.upload_bytes = 300_000;
    let r = loadgen::run(up).await.unwrap();
    assert_eq!((r.requests, r.errors, r.bytes_up), (20, 0, 20 * 300_000), "{:?}", r.first_error);
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_not_hidden() {
    let origin = origin().await;
    let r = loadgen::run(config(&origin, "/status/503", Mode::KeepAlive, 10)).await.unwrap();
    assert_eq!((r.requests, r.errors), (0, 10));
    assert!(r.first_error.unwrap().contains("503"));

    let mut wrong_ca = config(&origin, "/bytes/1", Mode::KeepAlive, 3);
    wrong_ca.ca_pem = Some(TestCa::generate().unwrap().ca_pem());
    let r = loadgen::run(wrong_ca).await.unwrap();
    assert_eq!((r.requests, r.errors), (0, 3));
    assert!(r.first_error.unwrap().contains("TLS handshake"));

    // The origin's plain listener is not a proxy: it answers CONNECT with an error status.
    let mut via = config(&origin, "/bytes/1", Mode::KeepAlive, 3);
    via.proxy = origin.http_addr();
    let r = loadgen::run(via).await.unwrap();
    assert_eq!((r.requests, r.errors), (0, 3));
    assert!(r.first_error.unwrap().contains("refused CONNECT"));

    let mut bad = config(&origin, "/", Mode::KeepAlive, 1);
    bad.url = "ftp://origin.test/".into();
    assert!(loadgen::run(bad).await.is_err());
    origin.shutdown().await;
}
