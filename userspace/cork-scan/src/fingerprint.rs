//! One SIMD pass that finds every position where some anchor key may start.
//!
//! This is the Teddy idea (nibble tables and `vpshufb`), sized for cork's ~100 keys in one
//! pass: keys (up to four bytes) are put into 16 buckets, and for each of the four fingerprint
//! positions a byte's low and high nibble each look up the set of buckets that accept it there;
//! a position is a candidate when some bucket accepts all four bytes from it. A key shorter
//! than four bytes accepts any byte past its end, so the few short keys (`://`, `Q~`) get
//! buckets of their own instead of weakening a whole searcher. The 16 buckets take both
//! 128-bit lanes of a 256-bit register (lane 0 buckets 0-7, lane 1 buckets 8-15), so a step
//! covers 16 positions.
//!
//! Candidates are a superset of the key positions (nibble sets are products, so a bucket also
//! accepts mixtures of its keys); the caller compares the real anchors there. Without AVX2 the
//! same candidates come from the same nibble tables, one position at a time.

/// Fingerprint length: the bytes of a key that are looked at.
pub(crate) const WIDTH: usize = 4;
const BUCKETS: usize = 16;

pub(crate) struct Fingerprints {
    /// Per position: bucket bits (lane 0 low byte, lane 1 high byte) by low nibble.
    lo: [[u16; 16]; WIDTH],
    /// The same by high nibble.
    hi: [[u16; 16]; WIDTH],
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

/// How often a position is a false candidate of a bucket with these nibble sets (each
/// position's share, multiplied). `w[hi][lo]` is [`weight`] of byte `hi << 4 | lo`.
fn false_rate(w: &[[f64; 16]; 16], lo: &[u16; WIDTH], hi: &[u16; WIDTH]) -> f64 {
    let bits = |mut m: u16| std::iter::from_fn(move || (m != 0).then(|| {
        let b = m.trailing_zeros() as usize;
        m &= m - 1;
        b
    }));
    (0..WIDTH).map(|k| bits(hi[k]).map(|h| bits(lo[k]).map(|l| w[h][l]).sum::<f64>()).sum::<f64>()).product()
}

impl Fingerprints {
    /// Buckets the keys (each 1 to [`WIDTH`] bytes) greedily, each where it adds the least
    /// false-candidate rate.
    pub fn new(keys: &[&[u8]]) -> Fingerprints {
        let sets = |key: &[u8]| {
            let (mut lo, mut hi) = ([0u16; WIDTH], [0u16; WIDTH]);
            for k in 0..WIDTH {
                match key.get(k) {
                    Some(&b) => {
                        lo[k] = 1 << (b & 15);
                        hi[k] = 1 << (b >> 4);
                    }
                    None => {
                        lo[k] = u16::MAX;
                        hi[k] = u16::MAX;
                    }
                }
            }
            (lo, hi)
        };
        // Short keys first, so they claim buckets of their own before the long keys fill them.
        let mut order: Vec<&[u8]> = keys.to_vec();
        order.sort_by_key(|k| (k.len(), k.to_vec()));
        let key_sets: Vec<([u16; WIDTH], [u16; WIDTH])> = order.iter().map(|k| sets(k)).collect();
        let w: [[f64; 16]; 16] = std::array::from_fn(|h| std::array::from_fn(|l| weight((h << 4 | l) as u8)));
        // Per position, the nibble sets (one bit per nibble value) of a bucket holding these keys.
        let union = |members: &[usize]| {
            let (mut lo, mut hi) = ([0u16; WIDTH], [0u16; WIDTH]);
            for &i in members {
                for k in 0..WIDTH {
                    lo[k] |= key_sets[i].0[k];
                    hi[k] |= key_sets[i].1[k];
                }
            }
            (lo, hi)
        };
        // The false rate of a bucket holding these keys.
        let rate = |members: &[usize]| {
            if members.is_empty() {
                return 0.0;
            }
            let (lo, hi) = union(members);
            false_rate(&w, &lo, &hi)
        };
        let with = |members: &[usize], i: usize| -> Vec<usize> { members.iter().copied().chain([i]).collect() };
        // Greedy: each key where it adds the least.
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
        // Then single moves while any lowers the total.
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
        // Transposed: per position and nibble value, the buckets that accept it.
        let mut lo = [[0u16; 16]; WIDTH];
        let mut hi = [[0u16; 16]; WIDTH];
        for (b, m) in members.iter().enumerate() {
            let (bl, bh) = union(m);
            for k in 0..WIDTH {
                for nib in 0..16 {
                    if bl[k] >> nib & 1 == 1 {
                        lo[k][nib] |= 1 << b;
                    }
                    if bh[k] >> nib & 1 == 1 {
                        hi[k][nib] |= 1 << b;
                    }
                }
            }
        }
        Fingerprints { lo, hi }
    }

    /// Calls `f`, in increasing order, with every position of `hay` where a key may start.
    #[inline]
    pub fn candidates(&self, hay: &[u8], mut f: impl FnMut(usize)) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 presence was just checked.
                unsafe { self.candidates_avx2(hay, &mut f) };
                return;
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
            acc &= self.lo[k][(b & 15) as usize] & self.hi[k][(b >> 4) as usize];
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
        #[inline(always)]
        fn emit(mut bits: u32, base: usize, limit: usize, f: &mut impl FnMut(usize)) {
            while bits != 0 {
                let p = base + bits.trailing_zeros() as usize;
                if p < limit {
                    f(p);
                }
                bits &= bits - 1;
            }
        }
        let n = hay.len();
        let mut p = 0;
        // Two phases per group of up to 4 KiB: the SIMD steps only record their bits, and the
        // candidates are visited after. With the callback inside the step loop the nibble
        // tables did not stay in registers: every step reloaded all eight from the stack.
        const GROUP: usize = 64;
        let mut found = [0u64; GROUP];
        while p + 64 + WIDTH - 1 <= n {
            let words = ((n - (WIDTH - 1) - p) / 64).min(GROUP);
            let mut any = 0u64;
            for (w, slot) in found[..words].iter_mut().enumerate() {
                let at = hay.as_ptr().add(p + 64 * w);
                let bits = u64::from(step(&lo, &hi, at))
                    | u64::from(step(&lo, &hi, at.add(16))) << 16
                    | u64::from(step(&lo, &hi, at.add(32))) << 32
                    | u64::from(step(&lo, &hi, at.add(48))) << 48;
                *slot = bits;
                any |= bits;
            }
            if any != 0 {
                for (w, &bits) in found[..words].iter().enumerate() {
                    let mut bits = bits;
                    while bits != 0 {
                        f(p + 64 * w + bits.trailing_zeros() as usize);
                        bits &= bits - 1;
                    }
                }
            }
            p += 64 * words;
        }
        while p + 16 + WIDTH - 1 <= n {
            let bits = step(&lo, &hi, hay.as_ptr().add(p));
            if bits != 0 {
                emit(bits, p, n, f);
            }
            p += 16;
        }
        // The last few positions, from a zero-padded copy: a zero byte is no key's byte, and a
        // short key accepts anything past its end, as at the true end of `hay`.
        if p < n {
            let mut buf = [0u8; 64];
            buf[..n - p].copy_from_slice(&hay[p..]);
            let mut q = 0;
            while p + q < n {
                emit(step(&lo, &hi, buf.as_ptr().add(q)), p + q, n, f);
                q += 16;
            }
        }
    }
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

    /// The SIMD pass and the one-position-at-a-time pass give the same candidates, and every key
    /// position is among them.
    #[test]
    fn candidates_agree_and_cover_keys() {
        let keys: Vec<&[u8]> = vec![b"ghp_", b"gho_", b"AKIA", b"://", b"Q~", b"eyJ", b"0x", b"xoxb", b"sk-a", b"-us", b"pass", b"redi"];
        let fp = Fingerprints::new(&keys);
        let mut rng = crate::template::Rng::new(11);
        let alphabet = b"ghpo_AKIQ~eyJ0x:/bsk-aurdi \n";
        for round in 0..500 {
            // Long hays too: whole groups of 64 steps, and what is left after them.
            let n = rng.below(if round % 2 == 0 { 200 } else { 9000 });
            let mut hay: Vec<u8> = (0..n).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            if round % 5 == 0 {
                hay.extend_from_slice(b"Q~");
            }
            let mut simd = Vec::new();
            fp.candidates(&hay, |p| simd.push(p));
            let mut scalar = Vec::new();
            fp.candidates_scalar(&hay, |p| scalar.push(p));
            assert_eq!(simd, scalar, "hay {:?}", String::from_utf8_lossy(&hay));
            for p in 0..hay.len() {
                if keys.iter().any(|k| hay[p..].starts_with(k)) {
                    assert!(simd.binary_search(&p).is_ok(), "key at {p} missed in {:?}", String::from_utf8_lossy(&hay));
                }
            }
        }
    }
}
