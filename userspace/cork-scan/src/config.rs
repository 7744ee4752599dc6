//! Scanner configuration: a preset, per-rule overrides, canaries and limits.
//!
//! ```yaml
//! preset: balanced          # strict | balanced | audit
//! overrides:
//!   jwt: block              # block | redact | audit | off
//!   crypto.eth_address: audit
//! canaries: ["cork-canary-7f3a9c"]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{RuleDef, RULES};
use crate::{Action, BuildError, Severity};

/// How strict the default actions are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Every enabled rule at high or critical severity blocks; the rest redact.
    Strict,
    /// Each rule's own default: credentials block, personal and financial data redact, weak
    /// signals are audited.
    #[default]
    Balanced,
    /// Nothing is blocked or changed except canaries; everything is reported.
    Audit,
}

/// Per-rule override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    Block,
    Redact,
    Audit,
    Off,
}

/// Resource bounds; every one of them turns into a verdict, never into unbounded work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// How many decoding layers (base64 inside URL-encoding inside hex …) are undone.
    pub max_decode_depth: usize,
    /// Decompressed bytes per body before it counts as a decompression bomb.
    pub max_decompressed_bytes: u64,
    /// Decompressed/compressed ratio (after the first MiB) that counts as a bomb.
    pub max_compression_ratio: u64,
    /// URLs longer than this are reported by `url.length`.
    pub max_url_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_decode_depth: 4, max_decompressed_bytes: 256 << 20, max_compression_ratio: 200, max_url_length: 8192 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    pub preset: Preset,
    pub overrides: BTreeMap<String, RuleMode>,
    /// Strings planted for this bottle; any appearance in egress, in any encoding, blocks.
    pub canaries: Vec<String>,
    /// Values never reported (documentation keys and the like), matched as substrings.
    pub allow_values: Vec<String>,
    /// Also allow the well-known documentation examples (AWS's `AKIAIOSFODNN7EXAMPLE`, …).
    pub allow_documentation_examples: bool,
    pub limits: Limits,
    /// MCP scanning: tool policy, poisoning, drift and chains (see [`crate::mcp`]).
    pub mcp: crate::mcp::McpConfig,
    /// Binary media types (`video/*`, `image/png`, …) whose response bodies are passed on
    /// without a scan; empty by default. Text, markup, script and form types are refused.
    pub unscanned_response_types: Vec<String>,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            preset: Preset::Balanced,
            overrides: BTreeMap::new(),
            canaries: Vec::new(),
            allow_values: Vec::new(),
            allow_documentation_examples: true,
            limits: Limits::default(),
            mcp: crate::mcp::McpConfig::default(),
            unscanned_response_types: Vec::new(),
        }
    }
}

/// Documentation keys that appear in every tutorial and must not block a `git clone`.
pub(crate) const DOCUMENTATION_EXAMPLES: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AKIAI44QH8DHBEXAMPLE",
    "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
];

/// The action a rule takes under `cfg`, or `None` when it is off.
pub(crate) fn resolve(rule: &RuleDef, cfg: &ScanConfig) -> Option<Action> {
    if rule.id == "canary" {
        return Some(Action::Block);
    }
    if let Some(mode) = cfg.overrides.get(rule.id) {
        return match mode {
            RuleMode::Block => Some(Action::Block),
            RuleMode::Redact => Some(Action::Redact),
            RuleMode::Audit => Some(Action::Audit),
            RuleMode::Off => None,
        };
    }
    if rule.optional {
        return None;
    }
    Some(match cfg.preset {
        Preset::Balanced => rule.action,
        Preset::Audit => Action::Audit,
        Preset::Strict => {
            if rule.severity >= Severity::High {
                Action::Block
            } else {
                rule.action.max(Action::Redact)
            }
        }
    })
}

pub(crate) fn check_overrides(cfg: &ScanConfig) -> Result<(), BuildError> {
    for id in cfg.overrides.keys() {
        if !RULES.iter().any(|r| r.id == id) {
            return Err(BuildError::Rule { rule: id.clone(), reason: "unknown rule id in overrides".into() });
        }
    }
    if cfg.overrides.get("canary").is_some_and(|m| *m != RuleMode::Block) {
        return Err(BuildError::Rule { rule: "canary".into(), reason: "canaries always block".into() });
    }
    Ok(())
}
