//! `cork mcp proxy --upstream URL`: MCP over streamable HTTP to a remote server.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::mcp_cmd::{AuditSink, Relay};

/// A remote MCP endpoint.
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub extra_roots: Vec<PathBuf>,
}

impl Upstream {
    pub fn parse(url: &str, extra_roots: &[PathBuf]) -> Result<Upstream> {
        let Some(rest) = url.strip_prefix("https://") else {
            bail!("--upstream must be an https:// URL (wss:// is not supported yet): {url}");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (h, p.parse::<u16>().map_err(|_| anyhow::anyhow!("bad port in {url}"))?),
            _ => (authority, 443),
        };
        if host.is_empty() || authority.contains('@') {
            bail!("bad --upstream URL: {url}");
        }
        Ok(Upstream { host: host.to_string(), port, path: path.to_string(), extra_roots: extra_roots.to_vec() })
    }
}

pub async fn stdio_bridge(_relay: Arc<Relay>, _upstream: Upstream, _max: usize) -> Result<std::process::ExitCode> {
    bail!("--upstream is not implemented yet")
}

pub async fn reverse_proxy(_engine: cork_scan::Engine, _name: String, _audit: AuditSink, _addr: std::net::SocketAddr, _upstream: Upstream, _max: usize) -> Result<std::process::ExitCode> {
    bail!("--listen is not implemented yet")
}
