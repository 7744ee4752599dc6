//! cork's scanning engine. PLACEHOLDER API — the real engine replaces the internals,
//! keeping these public signatures (see API CONTRACT below).
//!
//! API CONTRACT (used by cork-proxy and the `cork` binary):
//! - `ScanConfig`: serde, `deny_unknown_fields`, `Default` = balanced preset.
//! - `Engine::new(&ScanConfig) -> Result<Engine, BuildError>`; `Engine: Send + Sync`.
//! - `Engine::scan_url(&self, url: &str) -> Vec<Finding>`
//! - `Engine::scan_header(&self, name: &str, value: &[u8]) -> Vec<Finding>`
//! - `Engine::request_body(&self, BodyMeta) -> BodyScan` / `Engine::response_body(&self, BodyMeta) -> BodyScan`
//! - `BodyScan::push(&mut self, chunk: &[u8]) -> Vec<Finding>`; `finish(&mut self) -> Vec<Finding>`;
//!   `hold_back(&self) -> usize`: a caller that releases all but the last `hold_back()` bytes it has
//!   pushed can still redact any finding reported later, because every span lies inside that tail.
//! - `Finding.span`: absolute offsets into the raw pushed stream, `Some` only when redactable there.
//! - `exchange::scan_jsonl(reader, writer, &Engine) -> Result<ScanSummary, ExchangeError>` for `cork scan`.

use serde::{Deserialize, Serialize};
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity { Info, Low, Medium, High, Critical }

/// What the rule asks for when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action { Audit, Redact, Block }

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub action: Action,
    /// Where it was seen: `url`, `url.query`, `header:<name>`, `body`, `body.json:<path>`, ...
    pub location: String,
    #[serde(skip)]
    pub span: Option<Range<u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    pub canaries: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("rule {rule}: {reason}")]
    Rule { rule: String, reason: String },
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BodyMeta<'a> {
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
}

pub struct Engine { canaries: Vec<Vec<u8>> }

impl Engine {
    pub fn new(cfg: &ScanConfig) -> Result<Engine, BuildError> {
        Ok(Engine { canaries: cfg.canaries.iter().map(|c| c.as_bytes().to_vec()).collect() })
    }
    pub fn scan_url(&self, url: &str) -> Vec<Finding> { self.naive(url.as_bytes(), "url", 0) }
    pub fn scan_header(&self, name: &str, value: &[u8]) -> Vec<Finding> {
        self.naive(value, &format!("header:{}", name.to_ascii_lowercase()), 0)
    }
    pub fn request_body(&self, _meta: BodyMeta<'_>) -> BodyScan { BodyScan { canaries: self.canaries.clone(), tail: Vec::new(), base: 0 } }
    pub fn response_body(&self, _meta: BodyMeta<'_>) -> BodyScan { BodyScan { canaries: Vec::new(), tail: Vec::new(), base: 0 } }
    fn naive(&self, hay: &[u8], loc: &str, base: u64) -> Vec<Finding> { find_all(&self.canaries, hay, loc, base) }
}

fn find_all(needles: &[Vec<u8>], hay: &[u8], loc: &str, base: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    for n in needles {
        if n.is_empty() || hay.len() < n.len() { continue; }
        for i in 0..=hay.len() - n.len() {
            if &hay[i..i + n.len()] == n.as_slice() {
                out.push(Finding { rule: "canary".into(), severity: Severity::Critical, action: Action::Block,
                    location: loc.into(), span: Some(base + i as u64..base + (i + n.len()) as u64) });
            }
        }
    }
    out
}

pub struct BodyScan { canaries: Vec<Vec<u8>>, tail: Vec<u8>, base: u64 }

impl BodyScan {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Finding> {
        let keep = self.hold_back();
        let old = self.tail.len();
        self.tail.extend_from_slice(chunk);
        let mut f = find_all(&self.canaries, &self.tail, "body", self.base);
        f.retain(|x| x.span.as_ref().map_or(true, |s| s.end > self.base + old as u64));
        if self.tail.len() > keep { let cut = self.tail.len() - keep; self.tail.drain(..cut); self.base += cut as u64; }
        f
    }
    pub fn finish(&mut self) -> Vec<Finding> { Vec::new() }
    pub fn hold_back(&self) -> usize { self.canaries.iter().map(|c| c.len()).max().unwrap_or(1).saturating_sub(1).max(1) }
}
