//! One SIMD pass that finds every position where some anchor key may start.
//!
//! This is the Teddy idea, sized for cork's ~100 keys in one pass: keys (up to four bytes)
//! are put into 16 buckets, and for each of the four fingerprint positions a byte looks up the
//! set of buckets that accept it there; a position is a candidate when some bucket accepts all
//! four bytes from it. A key shorter than four bytes accepts any byte past its end, so the few
//! short keys (`://`, `Q~`) get buckets of their own instead of weakening a whole bucket.
//!
//! A byte is looked up in one of two ways ([`Lookup`]):
//! - **Nibbles** (AVX2 `vpshufb`, 16-entry tables): the low and the high nibble each look up
//!   a bucket set, and the byte gets both. A bucket then accepts every byte whose two nibbles
//!   its keys have, so its per-position sets are products, wider than its keys' bytes. The 16
//!   buckets take both 128-bit lanes of a 256-bit register, so a step covers 16 positions.
//! - **Bytes** (AVX-512 VBMI `vpermi2b`, 128-entry tables): the byte's low seven bits look up
//!   its bucket set directly, so a bucket accepts exactly its keys' bytes (and their copies
//!   with the top bit set, which share the entry). A step covers 64 positions with two lookups
//!   (buckets 0-7 and 8-15) per fingerprint position, where nibbles take eight `vpshufb` for
//!   16 positions, and the exact sets leave fewer false candidates.
//!
//! The buckets are chosen for the lookup in use, greedily and then by single moves, to
//! minimise a modelled false-candidate rate. Candidates are a superset of the key positions;
//! the caller compares the real anchors there. Without SIMD the same candidates come from the
//! same tables, one position at a time.

/// Fingerprint length: the bytes of a key that are looked at.
pub(crate) const WIDTH: usize = 4;
const BUCKETS: usize = 16;

/// How a byte finds the buckets that accept it (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Nibbles,
    Bytes,
}

/// A set of byte values, one bit each.
type ByteSet = [u64; 4];

const ALL_BYTES: ByteSet = [u64::MAX; 4];

fn bytes_of(s: &ByteSet) -> impl Iterator<Item = u8> + '_ {
    s.iter().enumerate().flat_map(|(i, &word)| {
        let mut w = word;
        std::iter::from_fn(move || {
            (w != 0).then(|| {
                let b = w.trailing_zeros();
                w &= w - 1;
                (i as u32 * 64 + b) as u8
            })
        })
    })
}

fn set_of(bytes: impl IntoIterator<Item = u8>) -> ByteSet {
    let mut s = [0u64; 4];
    for b in bytes {
        s[(b >> 6) as usize] |= 1 << (b & 63);
    }
    s
}

impl Lookup {
    /// The bytes a bucket whose keys have the bytes `s` at a position accepts there.
    fn accepted(self, s: &ByteSet) -> ByteSet {
        match self {
            Lookup::Nibbles => {
                let (mut lo, mut hi) = (0u16, 0u16);
                for b in bytes_of(s) {
                    lo |= 1 << (b & 15);
                    hi |= 1 << (b >> 4);
                }
                // Each word holds four high nibbles, each with the low nibbles `lo`.
                std::array::from_fn(|i| (0..4).filter(|j| hi >> (4 * i + j) & 1 == 1).fold(0u64, |w, j| w | u64::from(lo) << (16 * j)))
            }
            // Bytes 0x80 and above share the entry of their low seven bits.
            Lookup::Bytes => {
                let (a, b) = (s[0] | s[2], s[1] | s[3]);
                [a, b, a, b]
            }
        }
    }

    /// The lookup this CPU runs fastest.
    fn best() -> Lookup {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512vbmi") && std::is_x86_feature_detected!("avx512bw") {
                return Lookup::Bytes;
            }
        }
        Lookup::Nibbles
    }
}

pub(crate) struct Fingerprints {
    lookup: Lookup,
    /// [`Lookup::Nibbles`]: per position, bucket bits (lane 0 low byte, lane 1 high byte) by
    /// low nibble.
    lo: [[u16; 16]; WIDTH],
    /// The same by high nibble.
    hi: [[u16; 16]; WIDTH],
    /// [`Lookup::Bytes`]: per position, bucket bits by a byte's low seven bits.
    bytes: [[u16; 128]; WIDTH],
}

/// Rough share of each byte in text, markup and JSON: lowercase letters by their English
/// frequency, then space, digits, capitals and punctuation; bytes outside printable ASCII
/// count for nothing.
fn weight(b: u8) -> f64 {
    const FLOOR: f64 = 0.006;
    const LOWER: [f64; 26] = [
        8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.8, 4.0, 2.4, 6.7, 7.5, 1.9, 0.1, 6.0, 6.3, 9.1, 2.8, 1.0, 2.4, 0.15, 2.0, 0.07,
    ];
    let model = match b {
        b'a'..=b'z' => 0.55 * LOWER[(b - b'a') as usize] / 100.0,
        b' ' => 0.13,
        b'0'..=b'9' => 0.08 / 10.0,
        b'A'..=b'Z' => 0.06 / 26.0,
        b'\n' | 0x21..=0x7e => 0.18 / 33.0,
        _ => return 0.0,
    };
    // A floor, so that tokens, base64 and other languages (rare letters, capitals) are not
    // treated as free.
    model.max(FLOOR)
}

/// How often a position is a false candidate of a bucket that accepts the bytes `sets` at
/// each position (each position's share, multiplied).
fn false_rate(w: &[f64; 256], sets: &[ByteSet; WIDTH]) -> f64 {
    sets.iter().map(|s| bytes_of(s).map(|b| w[b as usize]).sum::<f64>()).product()
}

impl Fingerprints {
    /// Buckets the keys (each 1 to [`WIDTH`] bytes) for the fastest lookup this CPU has.
    pub fn new(keys: &[&[u8]]) -> Fingerprints {
        Fingerprints::with_lookup(keys, Lookup::best())
    }

    /// Buckets the keys for `lookup`: greedily, each where it adds the least false-candidate
    /// rate, then by single moves while any lowers the total.
    pub fn with_lookup(keys: &[&[u8]], lookup: Lookup) -> Fingerprints {
        // Per position, the bytes a key has there: all of them past its end.
        let sets = |key: &[u8]| -> [ByteSet; WIDTH] { std::array::from_fn(|k| key.get(k).map_or(ALL_BYTES, |&b| set_of([b]))) };
        // Short keys first, so they claim buckets of their own before the long keys fill them.
        let mut order: Vec<&[u8]> = keys.to_vec();
        order.sort_by_key(|k| (k.len(), k.to_vec()));
        let key_sets: Vec<[ByteSet; WIDTH]> = order.iter().map(|k| sets(k)).collect();
        let w: [f64; 256] = std::array::from_fn(|b| weight(b as u8));
        // Per position, the bytes a bucket holding these keys accepts.
        let accepted = |members: &[usize]| -> [ByteSet; WIDTH] {
            std::array::from_fn(|k| {
                let mut keys = [0u64; 4];
                for &i in members {
                    for (x, y) in keys.iter_mut().zip(key_sets[i][k]) {
                        *x |= y;
                    }
                }
                lookup.accepted(&keys)
            })
        };
        let rate = |members: &[usize]| if members.is_empty() { 0.0 } else { false_rate(&w, &accepted(members)) };
        let with = |members: &[usize], i: usize| -> Vec<usize> { members.iter().copied().chain([i]).collect() };
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); BUCKETS];
        let mut rates = [0.0f64; BUCKETS];
        for i in 0..order.len() {
            let (_, b, r) = (0..BUCKETS)
                .map(|b| {
                    let r = rate(&with(&members[b], i));
                    (r - rates[b], b, r)
                })
                .min_by(|x, y| x.0.total_cmp(&y.0))
                .expect("BUCKETS > 0");
            members[b].push(i);
            rates[b] = r;
        }
        for _ in 0..8 {
            let mut moved = false;
            for from in 0..BUCKETS {
                let mut j = 0;
                while j < members[from].len() {
                    let i = members[from][j];
                    let rest: Vec<usize> = members[from].iter().copied().filter(|&x| x != i).collect();
                    let r_from = rate(&rest);
                    let best = (0..BUCKETS)
                        .filter(|&to| to != from)
                        .map(|to| {
                            let r = rate(&with(&members[to], i));
                            (r_from + r - rates[from] - rates[to], to, r)
                        })
                        .min_by(|x, y| x.0.total_cmp(&y.0));
                    match best {
                        Some((gain, to, r_to)) if gain < -1e-12 => {
                            members[from] = rest;
                            members[to].push(i);
                            (rates[from], rates[to]) = (r_from, r_to);
                            moved = true;
                        }
                        _ => j += 1,
                    }
                }
            }
            if !moved {
                break;
            }
        }
        // Transposed: per position and table entry, the buckets that accept it.
        let mut fp = Fingerprints { lookup, lo: [[0; 16]; WIDTH], hi: [[0; 16]; WIDTH], bytes: [[0; 128]; WIDTH] };
        for (b, m) in members.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
            for (k, set) in accepted(m).iter().enumerate() {
                for x in bytes_of(set) {
                    fp.lo[k][(x & 15) as usize] |= 1 << b;
                    fp.hi[k][(x >> 4) as usize] |= 1 << b;
                    fp.bytes[k][(x & 0x7f) as usize] |= 1 << b;
                }
            }
        }
        fp
    }

    /// Calls `f`, in increasing order, with every position of `hay` where a key may start.
    #[inline]
    pub fn candidates(&self, hay: &[u8], mut f: impl FnMut(usize)) {
        #[cfg(target_arch = "x86_64")]
        {
            match self.lookup {
                Lookup::Bytes if std::is_x86_feature_detected!("avx512vbmi") && std::is_x86_feature_detected!("avx512bw") => {
                    // SAFETY: AVX-512 VBMI and BW presence was just checked.
                    unsafe { self.candidates_vbmi(hay, &mut f) };
                    return;
                }
                Lookup::Nibbles if std::is_x86_feature_detected!("avx2") => {
                    // SAFETY: AVX2 presence was just checked.
                    unsafe { self.candidates_avx2(hay, &mut f) };
                    return;
                }
                _ => {}
            }
        }
        self.candidates_scalar(hay, f);
    }

    /// Whether some bucket accepts the fingerprint at `p` (bytes past the end read as 0).
    #[inline]
    fn accepts(&self, hay: &[u8], p: usize) -> bool {
        let mut acc = u16::MAX;
        for k in 0..WIDTH {
            let b = hay.get(p + k).copied().unwrap_or(0);
            acc &= match self.lookup {
                Lookup::Nibbles => self.lo[k][(b & 15) as usize] & self.hi[k][(b >> 4) as usize],
                Lookup::Bytes => self.bytes[k][(b & 0x7f) as usize],
            };
        }
        acc != 0
    }

    fn candidates_scalar(&self, hay: &[u8], f: impl FnMut(usize)) {
        (0..hay.len()).filter(|&p| self.accepts(hay, p)).for_each(f);
    }

    /// # Safety
    /// Requires AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn candidates_avx2(&self, hay: &[u8], f: &mut impl FnMut(usize)) {
        use std::arch::x86_64::*;
        let table = |t: &[u16; 16]| {
            let mut bytes = [0u8; 32];
            for (i, &bits) in t.iter().enumerate() {
                bytes[i] = bits as u8;
                bytes[16 + i] = (bits >> 8) as u8;
            }
            _mm256_loadu_si256(bytes.as_ptr() as *const __m256i)
        };
        let lo: [__m256i; WIDTH] = std::array::from_fn(|k| table(&self.lo[k]));
        let hi: [__m256i; WIDTH] = std::array::from_fn(|k| table(&self.hi[k]));
        let n = hay.len();
        let mut p = grouped(n, |at| {
            let at = hay.as_ptr().add(at);
            u64::from(step(&lo, &hi, at))
                | u64::from(step(&lo, &hi, at.add(16))) << 16
                | u64::from(step(&lo, &hi, at.add(32))) << 32
                | u64::from(step(&lo, &hi, at.add(48))) << 48
        }, f);
        while p + 16 + WIDTH - 1 <= n {
            emit(u64::from(step(&lo, &hi, hay.as_ptr().add(p))), p, n, f);
            p += 16;
        }
        // The last few positions, from a zero-padded copy: a zero byte is no key's byte, and a
        // short key accepts anything past its end, as at the true end of `hay`.
        if p < n {
            let mut buf = [0u8; 64];
            buf[..n - p].copy_from_slice(&hay[p..]);
            let mut q = 0;
            while p + q < n {
                emit(u64::from(step(&lo, &hi, buf.as_ptr().add(q))), p + q, n, f);
                q += 16;
            }
        }
    }

    /// # Safety
    /// Requires AVX-512 F, BW and VBMI.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn candidates_vbmi(&self, hay: &[u8], f: &mut impl FnMut(usize)) {
        use std::arch::x86_64::*;
        // Per position: entries 0-63 and 64-127 for buckets 0-7, then the same for 8-15.
        let half = |k: usize, from: usize, shift: u32| {
            let bytes: [u8; 64] = std::array::from_fn(|i| (self.bytes[k][from + i] >> shift) as u8);
            _mm512_loadu_si512(bytes.as_ptr() as *const _)
        };
        let tables: [[__m512i; 4]; WIDTH] = std::array::from_fn(|k| [half(k, 0, 0), half(k, 64, 0), half(k, 0, 8), half(k, 64, 8)]);
        let n = hay.len();
        let p = grouped(n, |at| step_vbmi(&tables, hay.as_ptr().add(at)), f);
        // The rest (fewer than 64 + WIDTH - 1 bytes, so up to two steps) from a zero-padded
        // copy, as in `candidates_avx2`.
        if p < n {
            let mut buf = [0u8; 128 + WIDTH - 1];
            buf[..n - p].copy_from_slice(&hay[p..]);
            emit(step_vbmi(&tables, buf.as_ptr()), p, n, f);
            if p + 64 < n {
                emit(step_vbmi(&tables, buf.as_ptr().add(64)), p + 64, n, f);
            }
        }
    }
}

/// Runs `step` (the candidate bits of the 64 positions from its argument, which reads up to
/// `WIDTH - 1` bytes past them) over every whole step of a hay of `n` bytes, and calls `f`
/// with the candidates; returns where the steps end.
///
/// Two phases per group of up to 4 KiB: the SIMD steps only record their bits, and the
/// candidates are visited after. With the callback inside the step loop the tables did not
/// stay in registers: every step reloaded them from the stack.
#[inline(always)]
fn grouped(n: usize, step: impl Fn(usize) -> u64, f: &mut impl FnMut(usize)) -> usize {
    const GROUP: usize = 64;
    let mut found = [0u64; GROUP];
    let mut p = 0;
    while p + 64 + WIDTH - 1 <= n {
        let words = ((n - (WIDTH - 1) - p) / 64).min(GROUP);
        // Bit `w`: step `w` has a candidate. Most have none, even in a group with some (a
        // link every 200 bytes of HTML): only those are visited.
        let mut with = 0u64;
        for (w, slot) in found[..words].iter_mut().enumerate() {
            let bits = step(p + 64 * w);
            *slot = bits;
            with |= u64::from(bits != 0) << w;
        }
        while with != 0 {
            let w = with.trailing_zeros() as usize;
            emit(found[w], p + 64 * w, n, f);
            with &= with - 1;
        }
        p += 64 * words;
    }
    p
}

/// Calls `f` with `base + j` for each bit `j` of `bits`, below `limit`.
#[inline(always)]
fn emit(mut bits: u64, base: usize, limit: usize, f: &mut impl FnMut(usize)) {
    while bits != 0 {
        let p = base + bits.trailing_zeros() as usize;
        if p < limit {
            f(p);
        }
        bits &= bits - 1;
    }
}

/// Bit `j` says a bucket accepts the fingerprint at `p + j`, for the 64 positions from `p`:
/// per position, `vpermi2b` looks up each byte's low seven bits in two 64-entry halves.
///
/// # Safety
/// Requires AVX-512 F, BW and VBMI, and `p .. p + 64 + WIDTH - 1` readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn step_vbmi(tables: &[[std::arch::x86_64::__m512i; 4]; WIDTH], p: *const u8) -> u64 {
    use std::arch::x86_64::*;
    let (mut low, mut high) = (_mm512_set1_epi8(-1), _mm512_set1_epi8(-1));
    for (k, t) in tables.iter().enumerate() {
        let v = _mm512_loadu_si512(p.add(k) as *const _);
        low = _mm512_and_si512(low, _mm512_permutex2var_epi8(t[0], v, t[1]));
        high = _mm512_and_si512(high, _mm512_permutex2var_epi8(t[2], v, t[3]));
    }
    let any = _mm512_or_si512(low, high);
    _mm512_test_epi8_mask(any, any)
}

/// Bit `j` says a bucket accepts the fingerprint at `p + j`, for the 16 positions from `p`.
///
/// # Safety
/// Requires AVX2, and `p .. p + 16 + WIDTH - 1` readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn step(lo: &[std::arch::x86_64::__m256i; WIDTH], hi: &[std::arch::x86_64::__m256i; WIDTH], p: *const u8) -> u32 {
    use std::arch::x86_64::*;
    let nib = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_set1_epi8(-1);
    for k in 0..WIDTH {
        // Both lanes get the same 16 bytes: lane 0 asks buckets 0-7, lane 1 buckets 8-15.
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(k) as *const __m128i));
        let l = _mm256_shuffle_epi8(lo[k], _mm256_and_si256(v, nib));
        let h = _mm256_shuffle_epi8(hi[k], _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib));
        acc = _mm256_and_si256(acc, _mm256_and_si256(l, h));
    }
    // No early return for an all-zero step: in the grouped loop a branch per step cost more
    // in mispredictions (a candidate every dozen steps) than the three instructions it saves.
    let any = _mm_or_si128(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
    !(_mm_movemask_epi8(_mm_cmpeq_epi8(any, _mm_setzero_si128())) as u32) & 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For both lookups, the SIMD pass and the one-position-at-a-time pass give the same
    /// candidates, and every key position is among them: at block edges, at the hay's end,
    /// and past bytes of 0x80 and above (a key may hold one too).
    #[test]
    fn candidates_agree_and_cover_keys() {
        let keys: Vec<&[u8]> = vec![b"ghp_", b"gho_", b"AKIA", b"://", b"Q~", b"eyJ", b"0x", b"xoxb", b"sk-a", b"-us", b"pass", b"redi", "\u{e9}t\u{e9}".as_bytes()];
        for lookup in [Lookup::Nibbles, Lookup::Bytes] {
            let fp = Fingerprints::with_lookup(&keys, lookup);
            let mut rng = crate::template::Rng::new(11);
            let alphabet = "ghpo_AKIQ~eyJ0x:/bsk-aurdi \n\u{e9}\u{c3}t".as_bytes();
            for round in 0..200 * keys.len() + 500 {
                // Long hays too: whole groups of 64 steps, and what is left after them.
                // Each key at the very end of a hay of every length up to 200, then random hays.
                let n = if round < 200 * keys.len() { round / keys.len() } else { rng.below(if round % 2 == 0 { 200 } else { 9000 }) };
                let mut hay: Vec<u8> = (0..n).map(|_| alphabet[rng.below(alphabet.len())]).collect();
                if round < 200 * keys.len() || round % 5 == 0 {
                    hay.extend_from_slice(keys[round % keys.len()]);
                }
                let mut simd = Vec::new();
                fp.candidates(&hay, |p| simd.push(p));
                let mut scalar = Vec::new();
                fp.candidates_scalar(&hay, |p| scalar.push(p));
                assert_eq!(simd, scalar, "{lookup:?} hay {:?}", String::from_utf8_lossy(&hay));
                for p in 0..hay.len() {
                    if keys.iter().any(|k| hay[p..].starts_with(k)) {
                        assert!(simd.binary_search(&p).is_ok(), "{lookup:?}: key at {p} missed in {:?}", String::from_utf8_lossy(&hay));
                    }
                }
            }
        }
    }

    /// With the catalog's keys (more than there are buckets), exact byte sets leave fewer
    /// false candidates in text than nibble products.
    #[test]
    fn byte_lookup_is_tighter() {
        let mut keys: Vec<&[u8]> = crate::catalog::RULES
            .iter()
            .flat_map(|r| match r.detector {
                crate::catalog::Detector::Anchored { anchors, .. } => anchors,
                crate::catalog::Detector::Builtin(_) => &[],
            })
            .map(|a| &a.as_bytes()[..a.len().min(WIDTH)])
            .collect();
        keys.sort_unstable();
        keys.dedup();
        assert!(keys.len() > 4 * BUCKETS, "{} keys", keys.len());
        let hay = concat!(
            "Rivers carry sediment downstream, slowly reshaping valleys over thousands of years.\n",
            "{\"id\":7,\"uuid\":\"3f2a9c1e-77b0-4d1a-a2c4-0e9b5d6f7a81\",\"email\":\"user42@example.com\",\"active\":true}\n",
            "<div class=\"card\"><a href=\"https://www.example.com/articles/12\">Read more</a><p style=\"color:#333\">Text.</p></div>\n",
            "\"attachment\":\"q83vEjRWeJq8zQ1Ib2xhKzEyMy9QZXJtaXQ9eGtDZEZHaElKa0xtTm9QcVJzVHVWd1h5WjAxMjM0NTY3ODk=\"\n",
        )
        .repeat(20);
        let count = |lookup| {
            let mut n = 0;
            Fingerprints::with_lookup(&keys, lookup).candidates_scalar(hay.as_bytes(), |_| n += 1);
            n
        };
        let (nibbles, bytes) = (count(Lookup::Nibbles), count(Lookup::Bytes));
        assert!(bytes < nibbles, "bytes {bytes}, nibbles {nibbles}");
    }
}
