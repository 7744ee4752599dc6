//! The literal prefilter: finds rule anchors (`ghp_`, `AKIA`, `://`, ...) in a slice.
//!
//! A single Aho-Corasick automaton over 100+ literals cannot use a SIMD prefilter (Teddy takes
//! at most 64 patterns) and walks its DFA byte by byte, about 0.1-0.2 GB/s here. Instead the
//! anchors are reduced to short *keys* (their first four bytes, or the whole anchor when
//! shorter), the keys are split into groups of at most [`GROUP`] of equal fingerprint length,
//! and each group gets its own Teddy searcher. Every position where a key starts is found;
//! the full anchors are then verified with a byte compare at those positions.
//!
//! The result is exactly what a leftmost-first, non-overlapping Aho-Corasick search over the
//! anchors in catalog order reports: matches are taken left to right, at each position the
//! earliest-listed anchor that matches wins, and the search resumes after its end.

use aho_corasick::packed::{Config, MatchKind, Searcher};
use aho_corasick::Span;

/// Keys per Teddy searcher: fewer keys per bucket means fewer false candidates to verify.
const GROUP: usize = 32;

pub(crate) struct AnchorSet {
    lits: Vec<&'static [u8]>,
    /// Anchor indices by first byte, in catalog order.
    by_first: Vec<Vec<u16>>,
    groups: Vec<Searcher>,
}

impl AnchorSet {
    /// `None` when there are no anchors.
    pub fn new(lits: &[&'static str]) -> Option<AnchorSet> {
        let lits: Vec<&'static [u8]> = lits.iter().map(|l| l.as_bytes()).collect();
        if lits.iter().all(|l| l.is_empty()) {
            return None;
        }
        let mut by_first = vec![Vec::new(); 256];
        for (i, l) in lits.iter().enumerate() {
            if let Some(&b) = l.first() {
                by_first[b as usize].push(i as u16);
            }
        }
        // Keys by length class (Teddy fingerprints on min(4, shortest key) bytes, so one short
        // key would make a whole group unselective).
        let mut groups = Vec::new();
        // The few keys shorter than four bytes share one searcher: a pass per length cost more
        // than the weaker fingerprint of the merged group.
        for lens in [4..=4, 1..=3] {
            let mut keys: Vec<&'static [u8]> = lits.iter().filter(|l| lens.contains(&l.len().min(4))).map(|l| &l[..l.len().min(4)]).collect();
            keys.sort_unstable();
            keys.dedup();
            if keys.is_empty() {
                continue;
            }
            let n = keys.len().div_ceil(keys.len().div_ceil(GROUP));
            for chunk in keys.chunks(n) {
                let mut b = Config::new().match_kind(MatchKind::LeftmostFirst).builder();
                b.extend(chunk.iter());
                // Without SIMD this is Rabin-Karp, slower but the same answers.
                groups.push(b.build()?);
            }
        }
        Some(AnchorSet { lits, by_first, groups })
    }

    /// Calls `f(start, anchor)` for each match, left to right, non-overlapping.
    pub fn find(&self, hay: &[u8], cand: &mut Vec<usize>, mut f: impl FnMut(usize, u16)) {
        cand.clear();
        for g in &self.groups {
            let mut at = 0;
            while at < hay.len() {
                let Some(m) = g.find_in(hay, Span::from(at..hay.len())) else { break };
                cand.push(m.start());
                // Restart one byte on, not after the key, so overlapping keys are all seen.
                at = m.start() + 1;
            }
        }
        if self.groups.len() > 1 {
            cand.sort_unstable();
            cand.dedup();
        }
        let mut resume = 0;
        for &p in cand.iter() {
            if p < resume {
                continue;
            }
            let rest = &hay[p..];
            if let Some(&a) = self.by_first[rest[0] as usize].iter().find(|&&a| rest.starts_with(self.lits[a as usize])) {
                f(p, a);
                resume = p + self.lits[a as usize].len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aho_corasick::{AhoCorasickBuilder, MatchKind as AcKind};

    /// Same matches as a leftmost-first Aho-Corasick over the same list.
    #[test]
    fn agrees_with_aho_corasick() {
        let lits: &[&'static str] = &[
            "redis", "rediss", "://", "ghp_", "gho_", "hf_", "Q~", "AKIA", "KIAB", "-----BEGIN ", "sk-proj-", "sk-", "eyJ", "pwd", "password",
            "AWS_SECRET", "SECRET_ACCESS_KEY", "-us", "a", "aaaa", "aaab",
        ];
        let set = AnchorSet::new(lits).unwrap();
        let ac = AhoCorasickBuilder::new().match_kind(AcKind::LeftmostFirst).build(lits).unwrap();
        let mut rng = crate::template::Rng::new(7);
        let alphabet = b"redis:/ghpo_fQ~AKIBsk-jeyJwdpaAWSECRT_u ";
        let mut cand = Vec::new();
        for round in 0..400 {
            let n = rng.below(300);
            let mut hay: Vec<u8> = (0..n).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            if round % 3 == 0 {
                hay.extend_from_slice(b"AWS_SECRET_ACCESS_KEY rediss://x -----BEGIN sk-proj-aaaab");
            }
            let want: Vec<(usize, usize)> = ac.find_iter(&hay).map(|m| (m.start(), m.pattern().as_usize())).collect();
            let mut got = Vec::new();
            set.find(&hay, &mut cand, |p, a| got.push((p, a as usize)));
            assert_eq!(got, want, "hay {:?}", String::from_utf8_lossy(&hay));
        }
    }
}
