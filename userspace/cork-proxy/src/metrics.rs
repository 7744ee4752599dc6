//! Counters exported in the Prometheus text format on the admin listener.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// A counter family keyed by one label.
#[derive(Default)]
struct LabelledCounter {
    values: Mutex<BTreeMap<String, u64>>,
}

impl LabelledCounter {
    fn add(&self, label: &str, n: u64) {
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        *values.entry(label.to_string()).or_default() += n;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.values.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: LabelledCounter,
    connections: LabelledCounter,
    findings: LabelledCounter,
    errors: LabelledCounter,
    websocket_messages: LabelledCounter,
    websocket_blocked: LabelledCounter,
    /// Bumped legs by where their records went, keyed `leg/result`.
    ktls_legs: LabelledCounter,
    ktls_key_updates: LabelledCounter,
    /// Unscanned tunnels by the mechanism that relayed them (`uring`, `splice`, `copy`).
    relay_paths: LabelledCounter,
    /// Scanned body bytes that moved on io_uring.
    body_ring_bytes: AtomicU64,
    body_spliced_bytes: AtomicU64,
    bodies_unscanned: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    active_connections: AtomicI64,
    reloads: AtomicU64,
}

/// A summary of the counters, as `cork bottle ls` shows them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub requests: BTreeMap<String, u64>,
    pub errors: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Figures owned elsewhere that the exposition includes.
pub struct ExternalFigures {
    pub leaf_issued: u64,
    pub leaf_cache_hits: u64,
    pub leaf_cache_entries: usize,
    pub max_connections: usize,
    pub ktls_supported: bool,
    pub io_uring_supported: bool,
}

impl Metrics {
    pub fn request(&self, verdict: &str) {
        self.requests.add(verdict, 1);
    }

    pub fn connection(&self, kind: &str) {
        self.connections.add(kind, 1);
    }

    pub fn finding(&self, rule: &str) {
        self.findings.add(rule, 1);
    }

    pub fn error(&self, kind: &str) {
        self.errors.add(kind, 1);
    }

    /// A WebSocket data message relayed, by direction (`to_server`, `to_client`).
    pub fn websocket_message(&self, direction: &str) {
        self.websocket_messages.add(direction, 1);
    }

    /// A WebSocket session ended by a blocked message, by the message's direction.
    pub fn websocket_blocked(&self, direction: &str) {
        self.websocket_blocked.add(direction, 1);
    }

    /// A bumped leg (HTTP/1.1 or HTTP/2; `client` or `upstream`) offloaded to the kernel or kept on rustls.
    pub fn ktls_leg(&self, leg: &str, kernel: bool) {
        self.ktls_legs.add(&format!("{leg}/{}", if kernel { "kernel" } else { "userspace" }), 1);
    }

    /// TLS 1.3 KeyUpdates a kernel leg followed: the peer's (new receive keys) and cork's own
    /// answers (new send keys).
    pub fn key_updates(&self, leg: &str, peer: u64, cork: u64) {
        for (by, n) in [("peer", peer), ("cork", cork)] {
            if n > 0 {
                self.ktls_key_updates.add(&format!("{leg}/{by}"), n);
            }
        }
    }

    /// A tunnel relayed by `path` (`uring`, `splice` or `copy`).
    pub fn relay_path(&self, path: &str) {
        self.relay_paths.add(path, 1);
    }

    /// Scanned HTTP/1.1 body bytes that moved on io_uring.
    pub fn body_on_ring(&self, n: u64) {
        self.body_ring_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// A response body passed on unscanned by policy, `spliced` bytes of it by `splice`.
    pub fn body_unscanned(&self, spliced: u64) {
        self.bodies_unscanned.fetch_add(1, Ordering::Relaxed);
        self.body_spliced_bytes.fetch_add(spliced, Ordering::Relaxed);
    }

    pub fn bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    pub fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection as active until the guard is dropped.
    pub fn active(&self) -> ActiveGuard<'_> {
        self.active_connections.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }

    /// Request counts by verdict label, connection-ending errors, and bytes each way.
    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.snapshot(),
            errors: self.errors.snapshot().values().sum(),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }

    pub fn render(&self, ext: &ExternalFigures) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, help: &str, label: &str, values: BTreeMap<String, u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, n) in values {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape_label(&value));
            }
        };
        family(&mut out, "cork_requests_total", "HTTP requests by verdict.", "verdict", self.requests.snapshot());
        family(&mut out, "cork_connections_total", "Client connections by how they were handled.", "kind", self.connections.snapshot());
        family(&mut out, "cork_findings_total", "Scanner findings by rule.", "rule", self.findings.snapshot());
        family(&mut out, "cork_errors_total", "Connections ended by an error, by kind.", "kind", self.errors.snapshot());
        family(&mut out, "cork_websocket_messages_total", "WebSocket data messages relayed, by direction.", "direction", self.websocket_messages.snapshot());
        family(&mut out, "cork_websocket_blocked_total", "WebSocket sessions closed for a blocked message, by direction.", "direction", self.websocket_blocked.snapshot());
        family(&mut out, "cork_relay_path_total", "Unscanned tunnels (passthrough, raw TCP) by the mechanism that relayed them.", "path", self.relay_paths.snapshot());
        let _ = writeln!(out, "# HELP cork_ktls_legs_total Bumped legs (HTTP/1.1 and HTTP/2) by where their TLS records were handled.\n# TYPE cork_ktls_legs_total counter");
        for (key, n) in self.ktls_legs.snapshot() {
            let (leg, result) = key.split_once('/').unwrap_or((&key, ""));
            let _ = writeln!(out, "cork_ktls_legs_total{{leg=\"{}\",result=\"{}\"}} {n}", escape_label(leg), escape_label(result));
        }
        let _ = writeln!(out, "# HELP cork_ktls_key_updates_total TLS 1.3 KeyUpdates followed on kTLS legs, by leg and by who sent them.\n# TYPE cork_ktls_key_updates_total counter");
        for (key, n) in self.ktls_key_updates.snapshot() {
            let (leg, by) = key.split_once('/').unwrap_or((&key, ""));
            let _ = writeln!(out, "cork_ktls_key_updates_total{{leg=\"{}\",by=\"{}\"}} {n}", escape_label(leg), escape_label(by));
        }
        let simple = [
            ("cork_bytes_up_total", "counter", "Bytes sent upstream (plaintext or tunnelled).", self.bytes_up.load(Ordering::Relaxed) as i64),
            ("cork_bytes_down_total", "counter", "Bytes sent back to clients.", self.bytes_down.load(Ordering::Relaxed) as i64),
            ("cork_body_bytes_on_io_uring_total", "counter", "Scanned HTTP/1.1 body bytes moved on io_uring (plain TCP or kTLS legs).", self.body_ring_bytes.load(Ordering::Relaxed) as i64),
            ("cork_bodies_unscanned_total", "counter", "Response bodies passed on without a scan (scan.unscanned_response_types).", self.bodies_unscanned.load(Ordering::Relaxed) as i64),
            ("cork_body_bytes_spliced_total", "counter", "Unscanned HTTP/1.1 body bytes moved by splice (plain TCP or kTLS legs).", self.body_spliced_bytes.load(Ordering::Relaxed) as i64),
            ("cork_active_connections", "gauge", "Client connections being served.", self.active_connections.load(Ordering::Relaxed)),
            ("cork_policy_reloads_total", "counter", "Successful policy reloads.", self.reloads.load(Ordering::Relaxed) as i64),
            ("cork_leaf_certificates_issued_total", "counter", "Leaf certificates signed.", ext.leaf_issued as i64),
            ("cork_leaf_cache_hits_total", "counter", "Leaf certificates served from the cache.", ext.leaf_cache_hits as i64),
            ("cork_leaf_cache_entries", "gauge", "Leaf certificates in the cache.", ext.leaf_cache_entries as i64),
            ("cork_max_connections", "gauge", "Configured connection limit.", ext.max_connections as i64),
            ("cork_ktls_supported", "gauge", "1 if the kernel accepted the tls upper-layer protocol at start-up.", ext.ktls_supported as i64),
            ("cork_io_uring_supported", "gauge", "1 if io_uring passed its start-up probe (limits.io_uring may still switch it off).", ext.io_uring_supported as i64),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub struct ActiveGuard<'a>(&'a Metrics);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
