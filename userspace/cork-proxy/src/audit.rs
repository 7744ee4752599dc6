//! The audit log: one JSON line per decision.
//!
//! Every allowed, redacted and blocked request, every refused connection and every failure that
//! ends a connection is written here, flushed line by line so that a crash loses at most the line
//! being written. Query strings are never written raw: they may hold the very secret that caused
//! the block. They are logged as a length and a short hash that lets two lines be correlated.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Redact,
    Block,
}

#[derive(Debug, Clone, Serialize)]
pub struct FindingRecord {
    pub rule: String,
    pub severity: cork_scan::Severity,
    pub location: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuerySummary {
    pub len: usize,
    pub sha256_prefix: String,
}

impl QuerySummary {
    pub fn of(query: &str) -> QuerySummary {
        let digest = Sha256::digest(query.as_bytes());
        QuerySummary { len: query.len(), sha256_prefix: hex::encode(&digest[..6]) }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub time: String,
    pub instance: String,
    /// `request`, `connect`, `tunnel`, `connection`, `websocket` or `reload`.
    pub kind: &'static str,
    pub request_id: String,
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `HTTP/2` for streams of an HTTP/2 connection; absent for HTTP/1.x exchanges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<QuerySummary>,
    pub verdict: Verdict,
    /// False when the policy said block but cork runs in audit mode and let it through.
    pub enforced: bool,
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<FindingRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: f64,
    /// For tunnels: the mechanism that relayed the bytes (`uring`, `splice` or `copy`). For
    /// requests: `uring` when a body moved on io_uring, `splice` when an unscanned one was spliced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<&'static str>,
    /// The response's media type, when the policy passed its body on without a scan
    /// (`scan.unscanned_response_types`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unscanned: Option<String>,
    /// The process that opened the connection, when known (transparent mode in a bottle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `fetch` for hops of the `/fetch` endpoint; absent for proxied traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// Counts and the ending of a WebSocket session (`kind: websocket`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub websocket: Option<crate::websocket::WsSummary>,
}

impl AuditRecord {
    pub fn new(instance: &str, kind: &'static str, request_id: String, client: String) -> Self {
        Self {
            time: now_rfc3339(),
            instance: instance.to_string(),
            kind,
            request_id,
            client,
            method: None,
            http_version: None,
            host: None,
            port: None,
            path: None,
            query: None,
            verdict: Verdict::Allow,
            enforced: true,
            rules: Vec::new(),
            findings: Vec::new(),
            reason: None,
            status: None,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0.0,
            relay: None,
            unscanned: None,
            pid: None,
            via: None,
            websocket: None,
        }
    }

    /// Splits a request target into path and query, keeping only a summary of the query.
    pub fn set_target(&mut self, target: &str) {
        match target.split_once('?') {
            Some((path, query)) => {
                self.path = Some(path.to_string());
                self.query = Some(QuerySummary::of(query));
            }
            None => self.path = Some(target.to_string()),
        }
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Where audit lines go.
pub struct AuditLog {
    file: Mutex<Option<File>>,
    /// Pids of live transparent connections by client address, filled into their records.
    pids: Mutex<std::collections::HashMap<String, u32>>,
}

impl AuditLog {
    /// Appends to `path`, creating it with mode 0600 (the log names hosts and clients).
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(AuditLog { file: Mutex::new(Some(file)), pids: Mutex::default() })
    }

    /// An audit log that only traces (for library users and tests that do not read it).
    pub fn discard() -> AuditLog {
        AuditLog { file: Mutex::new(None), pids: Mutex::default() }
    }

    /// Records written for `client` until [`AuditLog::forget_client`] carry `pid`.
    pub fn register_client(&self, client: &str, pid: u32) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).insert(client.to_string(), pid);
    }

    pub fn forget_client(&self, client: &str) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(client);
    }

    pub fn write(&self, record: &AuditRecord) {
        let known = if record.pid.is_none() { self.pids.lock().unwrap_or_else(|e| e.into_inner()).get(&record.client).copied() } else { None };
        let with_pid;
        let record = match known {
            Some(pid) => {
                with_pid = AuditRecord { pid: Some(pid), ..record.clone() };
                &with_pid
            }
            None => record,
        };
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "could not serialise an audit record");
                return;
            }
        };
        line.push(b'\n');
        tracing::debug!(target: "cork::audit", "{}", String::from_utf8_lossy(&line[..line.len() - 1]));
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = guard.as_mut() {
            // One write call per line, so concurrent writers never interleave inside a line.
            if let Err(e) = file.write_all(&line) {
                tracing::error!(error = %e, "could not write the audit log");
            }
        }
    }
}
