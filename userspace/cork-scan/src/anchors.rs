//! The literal prefilter: finds rule anchors (`ghp_`, `AKIA`, `://`, ...) in a slice.
//!
//! A single Aho-Corasick automaton over 100+ literals cannot use a SIMD prefilter (Teddy takes
//! at most 64 patterns) and walks its DFA byte by byte, about 0.1-0.2 GB/s here. Instead the
//! anchors are reduced to short *keys* (their first four bytes, or the whole anchor when
//! shorter), and one SIMD pass ([`crate::fingerprint`]) finds every position where a key may
//! start; the full anchors are then verified with a byte compare at those positions.
//!
//! The result is exactly what a leftmost-first, non-overlapping Aho-Corasick search over the
//! anchors in catalog order reports: matches are taken left to right, at each position the
//! earliest-listed anchor that matches wins, and the search resumes after its end. Listed
//! longest first, the same literals give a leftmost-longest search (the injection phrases).

use crate::fingerprint::{Fingerprints, WIDTH};

pub(crate) struct AnchorSet {
    lits: Vec<Box<[u8]>>,
    /// Anchor indices by first byte, in catalog order, each with its first four bytes (little
    /// endian, zero-padded) and the mask of those it has: most candidates fail that one
    /// compare, and for an anchor of at most four bytes (`://`, the commonest in traffic) it
    /// is the whole compare. The last field is the anchor's length.
    by_first: Vec<Vec<(u16, u32, u32, usize)>>,
    /// Bit `b0 << 8 | b1` says some anchor starts with those two bytes (or is the one byte
    /// `b0`): one lookup drops most of the fingerprint's false candidates.
    pairs: Vec<u64>,
    keys: Fingerprints,
}

impl AnchorSet {
    /// `None` when there are no anchors.
    pub fn new<L: AsRef<[u8]>>(lits: &[L]) -> Option<AnchorSet> {
        // Indices stay those of `lits` (the caller's anchor numbers); empty ones never match.
        let lits: Vec<Box<[u8]>> = lits.iter().map(|l| l.as_ref().into()).collect();
        if lits.iter().all(|l| l.is_empty()) {
            return None;
        }
        let mut by_first = vec![Vec::new(); 256];
        let mut pairs = vec![0u64; 1024];
        for (i, l) in lits.iter().enumerate() {
            let Some(&b0) = l.first() else { continue };
            let seconds = match l.get(1) {
                Some(&b1) => b1 as usize..b1 as usize + 1,
                None => 0..256,
            };
            for b1 in seconds {
                let bit = (b0 as usize) << 8 | b1;
                pairs[bit / 64] |= 1 << (bit % 64);
            }
            let (head, mask) = head_of(l);
            by_first[b0 as usize].push((i as u16, head, mask, l.len()));
        }
        let mut keys: Vec<&[u8]> = lits.iter().filter(|l| !l.is_empty()).map(|l| &l[..l.len().min(WIDTH)]).collect();
        keys.sort_unstable();
        keys.dedup();
        Some(AnchorSet { keys: Fingerprints::new(&keys), lits, by_first, pairs })
    }

    /// A set whose search is leftmost-longest: the literals listed longest first (the numbers
    /// [`AnchorSet::find`] reports are of that order; [`AnchorSet::lit`] gives the literal).
    pub fn longest_first<L: AsRef<[u8]>>(lits: &[L]) -> Option<AnchorSet> {
        let mut sorted: Vec<&[u8]> = lits.iter().map(AsRef::as_ref).collect();
        sorted.sort_by_key(|l| std::cmp::Reverse(l.len()));
        AnchorSet::new(&sorted)
    }

    /// Calls `f(start, anchor)` for each match, left to right, non-overlapping.
    pub fn find(&self, hay: &[u8], mut f: impl FnMut(usize, u16)) {
        let mut resume = 0;
        self.keys.candidates(hay, |p| {
            if p < resume {
                return;
            }
            let rest = &hay[p..];
            let pair = (rest[0] as usize) << 8 | rest.get(1).map_or(0, |&b| b as usize);
            if self.pairs[pair / 64] >> (pair % 64) & 1 == 0 {
                return;
            }
            let (word, _) = head_of(rest);
            let found = self.by_first[rest[0] as usize]
                .iter()
                .find(|&&(a, head, mask, len)| word & mask == head && rest.len() >= len && (len <= WIDTH || rest.starts_with(&self.lits[a as usize])));
            if let Some(&(a, _, _, len)) = found {
                f(p, a);
                resume = p + len;
            }
        });
    }

    /// The literal numbered `a`.
    pub fn lit(&self, a: u16) -> &[u8] {
        &self.lits[a as usize]
    }
}

/// The first four bytes of `b` as a little-endian word (zero past its end) and the mask of
/// the bytes it has.
#[inline]
fn head_of(b: &[u8]) -> (u32, u32) {
    if let Some(w) = b.first_chunk::<4>() {
        return (u32::from_le_bytes(*w), u32::MAX);
    }
    // Shorter than four bytes.
    let mut w = [0u8; 4];
    w[..b.len()].copy_from_slice(b);
    (u32::from_le_bytes(w), (1u32 << (8 * b.len())) - 1)
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
        for round in 0..400 {
            let n = rng.below(300);
            let mut hay: Vec<u8> = (0..n).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            if round % 3 == 0 {
                hay.extend_from_slice(b"AWS_SECRET_ACCESS_KEY rediss://x -----BEGIN sk-proj-aaaab");
            }
            let want: Vec<(usize, usize)> = ac.find_iter(&hay).map(|m| (m.start(), m.pattern().as_usize())).collect();
            let mut got = Vec::new();
            set.find(&hay, |p, a| got.push((p, a as usize)));
            assert_eq!(got, want, "hay {:?}", String::from_utf8_lossy(&hay));
        }
    }
}
