//! cork's scanning engine: finds secrets leaving a bottle and prompt injection coming back in.
//!
//! The crate does no I/O. Callers hand it bytes — a URL, a header, body chunks as they stream —
//! and get back [`Finding`]s, each naming a rule, its severity, the [`Action`] the configuration
//! asks for, where it was seen and, when the match can be masked in the bytes the caller still
//! holds, its exact span.
//!
//! # Design
//! - A rare-literal prefilter (one SIMD fingerprint pass, see `anchors` and `fingerprint`)
//!   finds anchors such as `ghp_` or `AKIA`; each rule's own small regex confirms a match in a
//!   window of bounded size around the anchor. A single big regex over all rules would be
//!   orders of magnitude slower.
//! - Rules without a literal (card numbers, IBANs, seed phrases, high-entropy values) are found
//!   by a bitmask walk over 64-byte blocks that only stops where such data can be.
//! - Encoded data (percent-encoding, base64/base64url, base32, hex with or without separators,
//!   JSON escapes, invisible characters and homoglyphs) is decoded and rescanned, to a bounded
//!   depth and byte budget; matches are mapped back to the encoded bytes.
//! - Bodies stream through [`BodyScan`], which keeps a bounded overlap so that no match is lost
//!   at a chunk boundary and every reported span lies within the last [`BodyScan::hold_back`]
//!   bytes the caller has not yet released.
//!
//! # API contract (used by cork-proxy and the `cork` binary)
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
//! - [`mcp::McpSession::new(&Engine, server)`](mcp::McpSession) then `observe(direction, bytes)`
//!   per JSON-RPC message: MCP tool poisoning, rug pulls, unlisted and denied tools, shell
//!   de-obfuscated argument rules ([`shell`]), chains, and the engine's DLP and injection on
//!   arguments and results. [`a2a::A2aSession`] does the same for A2A messages and Agent Cards.
//!   Their settings are `ScanConfig::mcp`.

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod anchors;
mod bip39;
mod catalog;
mod config;
pub mod decompress;
mod decode;
mod fingerprint;
pub mod exchange;
pub mod html;
mod inject;
pub mod a2a;
pub mod mcp;
mod media;
mod runs;
mod scanner;
mod secret_names;
pub mod shell;
mod stream;
pub mod template;
pub mod url;
pub mod validate;
mod websocket;

#[cfg(feature = "corpus")]
pub mod corpus;

pub use config::{Limits, Preset, RuleMode, ScanConfig};
pub use stream::BodyScan;

use catalog::{Builtin, RuleIdx, RULES};
use decode::{Layer, OffsetMap};
use scanner::{Budget, Compiled, Direction, Hit, Tail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// What the rule asks for when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Audit,
    Redact,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub action: Action,
    /// Where it was seen: `url`, `url.query`, `header:<name>`, `body`, `body.json`, ...
    pub location: String,
    #[serde(skip)]
    pub span: Option<Range<u64>>,
    /// Decoding layers undone to see it, outermost first (`base64>url`); empty when raw.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub encoding: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("rule {rule}: {reason}")]
    Rule { rule: String, reason: String },
    #[error("scan.unscanned_response_types: {entry:?}: {reason}")]
    UnscannedType { entry: String, reason: String },
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BodyMeta<'a> {
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
}

/// Public description of one rule (for docs, `cork rules` and tests).
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    pub id: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    /// Action under the balanced preset.
    pub default_action: Action,
    /// Off unless enabled by an override.
    pub optional: bool,
    /// `egress`, `ingress` or `any`.
    pub direction: &'static str,
    /// Templates (see [`template`]) that must fire.
    pub examples: &'static [&'static str],
    /// Templates that must not fire.
    pub near_misses: &'static [&'static str],
}

/// Every rule the engine knows, in catalog order.
pub fn rules() -> impl Iterator<Item = RuleInfo> {
    RULES.iter().map(|r| RuleInfo {
        id: r.id,
        title: r.title,
        severity: r.severity,
        default_action: r.action,
        optional: r.optional,
        direction: match r.scope {
            catalog::Scope::Egress => "egress",
            catalog::Scope::Ingress => "ingress",
            catalog::Scope::Any => "any",
        },
        examples: r.examples,
        near_misses: r.near_misses,
    })
}

/// Masks `range` of `buf` in place with `*`, keeping the length (so framing stays valid).
/// Out-of-bounds parts of the range are ignored.
pub fn redact_in_place(buf: &mut [u8], range: Range<usize>) {
    let end = range.end.min(buf.len());
    if range.start < end {
        buf[range.start..end].fill(b'*');
    }
}

pub(crate) struct Inner {
    compiled: Compiled,
    actions: Vec<Option<Action>>,
    limits: Limits,
    mcp: Arc<mcp::McpPolicy>,
    unscanned: media::UnscannedTypes,
}

/// The compiled rule set. Cheap to share: clone the `Arc` or borrow; `Send + Sync`.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("rules", &self.inner.actions.iter().filter(|a| a.is_some()).count()).finish()
    }
}

impl Engine {
    pub fn new(cfg: &ScanConfig) -> Result<Engine, BuildError> {
        config::check_overrides(cfg)?;
        let actions: Vec<Option<Action>> = RULES.iter().map(|r| config::resolve(r, cfg)).collect();
        let enabled = actions.iter().map(Option::is_some).collect();
        let mut allow: Vec<Vec<u8>> = cfg.allow_values.iter().filter(|v| !v.is_empty()).map(|v| v.as_bytes().to_vec()).collect();
        if cfg.allow_documentation_examples {
            allow.extend(config::DOCUMENTATION_EXAMPLES.iter().map(|v| v.as_bytes().to_vec()));
        }
        if cfg.limits.max_decode_depth > 8 {
            return Err(BuildError::Rule { rule: "limits".into(), reason: "max_decode_depth above 8".into() });
        }
        let compiled = Compiled::new(enabled, &cfg.canaries, allow)?;
        let mcp = mcp::McpPolicy::new(&cfg.mcp).map_err(|e| BuildError::Rule { rule: "mcp".into(), reason: e.to_string() })?;
        let unscanned = media::UnscannedTypes::new(&cfg.unscanned_response_types)?;
        Ok(Engine { inner: Arc::new(Inner { compiled, actions, limits: cfg.limits.clone(), mcp: Arc::new(mcp), unscanned }) })
    }

    /// Scans a request URL: scheme, CRLF, traversal, SSRF, length, entropy, DNS labels and DLP
    /// (including secrets split over several query parameters). Spans index into `url`.
    pub fn scan_url(&self, url: &str) -> Vec<Finding> {
        self.inner.scan_url(url)
    }

    /// Scans one request header. The header is seen as `name: value` so that keyed rules
    /// (`dd-api-key: …`) work; spans index into `value`.
    pub fn scan_header(&self, name: &str, value: &[u8]) -> Vec<Finding> {
        let location = format!("header:{}", name.to_ascii_lowercase());
        let mut line = Vec::with_capacity(name.len() + 2 + value.len());
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b": ");
        let offset = line.len();
        line.extend_from_slice(value);
        let hits = self.inner.scan_slice(&line, Direction::Egress);
        hits.into_iter()
            .filter_map(|mut h| {
                h.span = h.span.start.max(offset) - offset..h.span.end.max(offset) - offset;
                self.inner.finding(&h, &location, 0, true)
            })
            .collect()
    }

    /// Starts scanning a request body (egress DLP and canaries).
    pub fn request_body(&self, meta: BodyMeta<'_>) -> BodyScan {
        BodyScan::new(self.inner.clone(), Direction::Egress, meta)
    }

    /// Starts scanning a response body (prompt injection; decompressed as needed). A body whose
    /// type is in `scan.unscanned_response_types` gets a scan that looks at nothing
    /// ([`BodyScan::is_unscanned`]).
    pub fn response_body(&self, meta: BodyMeta<'_>) -> BodyScan {
        BodyScan::new(self.inner.clone(), Direction::Ingress, meta)
    }

    /// Scans a DNS name for label exfiltration (the same check as `dns.label_exfil` in URLs).
    pub fn scan_hostname(&self, name: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        if url::scan_hostname(name).is_some() {
            out.extend(self.inner.builtin(Builtin::DnsLabelExfil, "dns", None));
        }
        out
    }

    /// The compiled MCP settings, shared by every [`mcp::McpSession`] of this engine.
    pub fn mcp_policy(&self) -> &mcp::McpPolicy {
        &self.inner.mcp
    }

    /// The effective action of a rule under this configuration (`None`: off or unknown).
    pub fn rule_action(&self, id: &str) -> Option<Action> {
        catalog::index_of(id).and_then(|i| self.inner.actions[i as usize])
    }
}

impl Inner {
    fn budget(&self, len: usize) -> Budget {
        Budget { decoded_bytes: len.saturating_mul(4).max(64 << 10), max_depth: self.limits.max_decode_depth, refused: false }
    }

    /// Full scan of one slice in one direction; hit spans relative to `hay`.
    pub(crate) fn scan_slice(&self, hay: &[u8], dir: Direction) -> Vec<Hit> {
        let mut out = Vec::new();
        let mut budget = self.budget(hay.len());
        self.compiled.scan(hay, dir, 0, &mut budget, &mut out);
        out
    }

    /// [`Inner::scan_slice`] for the streaming layer: also reports how the slice's end looks
    /// (regions ending after `from`, and what is still open), or `None` for the tail when a
    /// decoding was skipped for lack of budget.
    pub(crate) fn scan_slice_tail(&self, hay: &[u8], dir: Direction, from: usize) -> (Vec<Hit>, Option<Tail>) {
        let mut out = Vec::new();
        let mut budget = self.budget(hay.len());
        let mut tail = Tail { from, spans: Vec::new(), open_from: usize::MAX };
        self.compiled.scan_with_tail(hay, dir, 0, &mut budget, &mut out, Some(&mut tail));
        (out, (!budget.refused).then_some(tail))
    }

    /// Scans derived bytes (joined values, unescaped strings) and maps spans back.
    pub(crate) fn scan_derived(&self, bytes: &[u8], map: &OffsetMap, layer: Layer, dir: Direction, out: &mut Vec<Hit>) {
        let mut budget = self.budget(bytes.len());
        self.compiled.scan_layer(bytes, map, layer, dir, 1, &mut budget, out);
    }

    pub(crate) fn finding(&self, hit: &Hit, location: &str, base: u64, redactable: bool) -> Option<Finding> {
        let rule = &RULES[hit.rule as usize];
        let mut action = self.actions[hit.rule as usize]?;
        // Bytes spread over several fields cannot be masked without breaking the syntax between.
        if action == Action::Redact && hit.layers.contains(&Layer::Joined) {
            action = Action::Block;
        }
        Some(Finding {
            rule: rule.id.to_string(),
            severity: rule.severity,
            action,
            location: location.to_string(),
            span: redactable.then(|| base + hit.span.start as u64..base + hit.span.end as u64),
            encoding: hit.layers.iter().map(|l| l.name()).collect::<Vec<_>>().join(">"),
        })
    }

    pub(crate) fn builtin(&self, b: Builtin, location: &str, span: Option<Range<u64>>) -> Option<Finding> {
        let idx: RuleIdx = catalog::builtin_idx(b);
        let rule = &RULES[idx as usize];
        Some(Finding {
            rule: rule.id.to_string(),
            severity: rule.severity,
            action: self.actions[idx as usize]?,
            location: location.to_string(),
            span,
            encoding: String::new(),
        })
    }

    fn scan_url(&self, url: &str) -> Vec<Finding> {
        use crate::url::{classify_ip, scan_hostname, split_url};
        let mut out = Vec::new();
        let bytes = url.as_bytes();
        if bytes.len() > self.limits.max_url_length {
            out.extend(self.builtin(Builtin::UrlLength, "url", None));
        }
        // CR/LF raw or percent-encoded through up to three rounds.
        let mut decoded = bytes.to_vec();
        let mut crlf = false;
        let mut traversal = false;
        for _ in 0..4 {
            let lower = decoded.to_ascii_lowercase();
            crlf |= lower.iter().any(|&b| b == b'\r' || b == b'\n') || memchr::memmem::find(&lower, b"%0d").is_some() || memchr::memmem::find(&lower, b"%0a").is_some();
            let path_end = memchr::memchr2(b'?', b'#', &lower).unwrap_or(lower.len());
            let path = &lower[..path_end];
            traversal |= memchr::memmem::find(path, b"/../").is_some()
                || memchr::memmem::find(path, b"\\..\\").is_some()
                || memchr::memmem::find(path, b"/..\\").is_some()
                || path.ends_with(b"/..");
            match decode::url_decode(&decoded, 0) {
                Some((d, _)) if d != decoded => decoded = d,
                _ => break,
            }
        }
        if crlf {
            out.extend(self.builtin(Builtin::UrlCrlf, "url", None));
        }
        if traversal {
            out.extend(self.builtin(Builtin::UrlTraversal, "url.path", None));
        }
        let parts = split_url(url);
        match &parts {
            Some(p) => {
                let scheme = p.scheme.to_ascii_lowercase();
                if !matches!(scheme.as_str(), "http" | "https" | "ws" | "wss") {
                    out.extend(self.builtin(Builtin::UrlScheme, "url", None));
                }
                if classify_ip(p.host).is_some_and(|(_, c)| c.is_internal()) {
                    out.extend(self.builtin(Builtin::UrlSsrf, "url.host", None));
                }
                if scan_hostname(p.host).is_some() {
                    out.extend(self.builtin(Builtin::DnsLabelExfil, "url.host", None));
                }
            }
            None => {
                let lower = url.trim_start().to_ascii_lowercase();
                if ["javascript:", "data:", "file:", "vbscript:"].iter().any(|s| lower.starts_with(s)) {
                    out.extend(self.builtin(Builtin::UrlScheme, "url", None));
                }
            }
        }
        // DLP over the whole URL.
        let base = url.as_ptr() as usize;
        for h in self.scan_slice(bytes, Direction::Egress) {
            out.extend(self.finding(&h, "url", 0, true));
        }
        // Query values and path segments: entropy, and values joined across parameters.
        if let Some(p) = &parts {
            let mut entropy = false;
            let q_off = p.query.map(|q| q.as_ptr() as usize - base);
            let mut joined = Vec::new();
            let mut table = Vec::new();
            if let (Some(q), Some(q_off)) = (p.query, q_off) {
                for pair in q.split('&') {
                    let pair_off = q_off + (pair.as_ptr() as usize - q.as_ptr() as usize);
                    let (v, v_off) = match pair.split_once('=') {
                        Some((k, v)) => (v, pair_off + k.len() + 1),
                        None => (pair, pair_off),
                    };
                    let (vb, map) = match decode::url_decode(v.as_bytes(), v_off) {
                        Some((d, m)) => (d, Some(m)),
                        None => (v.as_bytes().to_vec(), None),
                    };
                    entropy |= vb.len() >= 32 && validate::shannon_entropy(&vb) >= 4.3;
                    for i in 0..vb.len() {
                        let raw = match &map {
                            Some(m) => m.map(&(i..i + 1)).start,
                            None => v_off + i,
                        };
                        table.push(raw as u32);
                    }
                    joined.extend_from_slice(&vb);
                }
                table.push(bytes.len() as u32);
                if q.contains('&') && !joined.is_empty() {
                    let mut hits = Vec::new();
                    self.scan_derived(&joined, &OffsetMap::Table(table), Layer::Joined, Direction::Egress, &mut hits);
                    for h in hits {
                        let f = self.finding(&h, "url.query", 0, true);
                        if let Some(f) = f {
                            if !out.iter().any(|o| o.rule == f.rule && overlaps(&o.span, &f.span)) {
                                out.push(f);
                            }
                        }
                    }
                }
            }
            for seg in p.path.split('/') {
                entropy |= seg.len() >= 48 && validate::shannon_entropy(seg.as_bytes()) >= 4.5;
            }
            if entropy {
                out.extend(self.builtin(Builtin::UrlEntropy, "url", None));
            }
        }
        out
    }
}

fn overlaps(a: &Option<Range<u64>>, b: &Option<Range<u64>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.start < b.end && b.start < a.end,
        _ => false,
    }
}
