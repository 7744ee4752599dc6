//! Turning scanner findings and policy mode into effects and verdicts.

use cork_policy::Mode;
use cork_scan::{Action, Finding};

use crate::audit::{AuditRecord, FindingRecord, Verdict};
use crate::body::Effect;

/// What a finding does under the policy's mode. Audit mode records everything and blocks nothing.
pub fn effect(mode: Mode, finding: &Finding) -> Effect {
    match (mode, finding.action) {
        (Mode::Audit, _) | (_, Action::Audit) => Effect::Record,
        (Mode::Enforce, Action::Block) => Effect::Block,
        (Mode::Enforce, Action::Redact) => Effect::Redact,
    }
}

/// Adds findings to an audit record and sets its verdict: the strongest action any rule asked
/// for, marked not enforced when audit mode let it pass.
pub fn record_findings(record: &mut AuditRecord, mode: Mode, findings: &[(Finding, Effect)]) {
    for (finding, effect) in findings {
        if !record.rules.contains(&finding.rule) {
            record.rules.push(finding.rule.clone());
        }
        record.findings.push(FindingRecord { rule: finding.rule.clone(), severity: finding.severity, location: finding.location.clone() });
        let asked = match (effect, finding.action) {
            (Effect::Block, _) | (_, Action::Block) => Verdict::Block,
            (Effect::Redact, _) | (_, Action::Redact) => Verdict::Redact,
            _ => Verdict::Allow,
        };
        record.verdict = record.verdict.max(asked);
    }
    if mode == Mode::Audit && record.verdict != Verdict::Allow {
        record.enforced = false;
    }
}

/// Marks a record blocked by a policy rule (not a scanner finding).
pub fn record_block(record: &mut AuditRecord, mode: Mode, rule: &str, reason: impl Into<String>) {
    record.verdict = Verdict::Block;
    if !record.rules.iter().any(|r| r == rule) {
        record.rules.push(rule.to_string());
    }
    record.reason = Some(reason.into());
    record.enforced = mode == Mode::Enforce;
}
