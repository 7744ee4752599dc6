//! The token pass: one walk over the bytes that finds everything the literal prefilter cannot.
//!
//! It reports four kinds of regions to its caller:
//! - *token runs*: at least [`MIN_TOKEN`] bytes of `[A-Za-z0-9+/=_\-.%]`, where random-looking
//!   secrets, base64, base32, hex and percent-encoded text live;
//! - *numeric regions*: digits with short gaps, where card numbers, IBANs and separated hex are;
//! - *word regions*: lowercase words and whitespace, long enough to hold a seed phrase;
//! - *non-ASCII regions*: whitespace-delimited words with non-ASCII bytes, which may hide a
//!   token behind invisible characters or homoglyphs;
//! - *key-sized words*: runs of letters and digits of exactly the lengths of the keys that have
//!   no literal of their own to anchor on (Twilio, Bitcoin WIF).
//!
//! The walk works on 64-byte blocks turned into bitmasks, so blocks with nothing interesting
//! (the bulk of prose and markup) cost a few instructions each.

use std::ops::Range;

pub(crate) const MIN_TOKEN: usize = 16;
const MIN_WORDS_REGION: usize = 12 * 3 + 11;
/// Digits a numeric region needs: fewer than a card's 13 or a Dutch IBAN's 12.
const MIN_DIGITS: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Region {
    Token(Range<usize>),
    Numeric(Range<usize>),
    Words(Range<usize>),
    NonAscii(Range<usize>),
    /// A maximal run of letters and digits of 34, 51 or 52 bytes: the length of a Twilio key
    /// or a Bitcoin WIF key, which are whole words of a token run.
    KeyWord(Range<usize>),
}

const T: u8 = 1; // token byte
const D: u8 = 2; // digit
const W: u8 = 4; // lowercase letter or word separator
const H: u8 = 8; // non-ASCII byte

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut v = 0;
        if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'_' | b'-' | b'.' | b'%') {
            v |= T;
        }
        if c.is_ascii_digit() {
            v |= D;
        }
        if c.is_ascii_lowercase() || matches!(c, b' ' | b'\n' | b'\t' | b'\r' | b',') {
            v |= W;
        }
        if c >= 0x80 {
            v |= H;
        }
        t[b] = v;
        b += 1;
    }
    t
};

/// Per-block bitmasks: bit `i` of `token` says byte `i` of the block is a token byte, etc.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
struct Masks {
    token: u64,
    digit: u64,
    word: u64,
    high: u64,
    /// ASCII letters.
    alpha: u64,
    /// The separators a numeric region may hold besides letters: space `-:,.` and backslash.
    numsep: u64,
    /// The bytes that split a token run into segments and pieces: `.`, `%` and `=`.
    split: u64,
    /// Hex digits, either case.
    hex: u64,
}

/// Field numbers of [`Masks`] in [`Blocks`].
const TOKEN: usize = 0;
const DIGIT: usize = 1;
const WORD: usize = 2;
const HIGH: usize = 3;
const ALPHA: usize = 4;
const NUMSEP: usize = 5;
const SPLIT: usize = 6;
const HEX: usize = 7;
const FIELDS: usize = 8;

impl Masks {
    /// The fields in the order of [`Blocks`]' rows (the numbers above).
    #[inline(always)]
    fn by_row(&self) -> [u64; FIELDS] {
        [self.token, self.digit, self.word, self.high, self.alpha, self.numsep, self.split, self.hex]
    }
}

/// The masks of every block, stored field by field: one array of `n` words per field of
/// [`Masks`]. A block's masks are read back whole ([`Blocks::at`]; the loads of fields a
/// caller does not use are dropped by the compiler), and one field of eight blocks is one
/// vector load (the trigger test, `simd::trigger_ends_avx512`), where an array of [`Masks`]
/// took a gather per field.
pub(crate) struct Blocks {
    n: usize,
    /// Field `f` of block `b` at `f * n + b`.
    fields: Vec<u64>,
}

impl Blocks {
    /// `n` blocks whose masks `masks_of(b)` gives, written in block order.
    #[inline(always)]
    fn build(n: usize, mut masks_of: impl FnMut(usize) -> Masks) -> Blocks {
        let mut fields: Vec<u64> = Vec::with_capacity(FIELDS * n);
        let out = fields.spare_capacity_mut().as_mut_ptr() as *mut u64;
        for b in 0..n {
            let m = masks_of(b);
            for (f, v) in m.by_row().into_iter().enumerate() {
                // SAFETY: `f * n + b < FIELDS * n`, within the capacity.
                unsafe { out.add(f * n + b).write(v) };
            }
        }
        // SAFETY: the loop wrote every word of `FIELDS * n`.
        unsafe { fields.set_len(FIELDS * n) };
        Blocks { n, fields }
    }

    fn len(&self) -> usize {
        self.n
    }

    /// The masks of block `b` (panics past the end).
    #[inline(always)]
    fn at(&self, b: usize) -> Masks {
        assert!(b < self.n);
        // SAFETY: `b < n`, and `fields` holds `FIELDS * n` words.
        let f = |k: usize| unsafe { *self.fields.get_unchecked(k * self.n + b) };
        Masks { token: f(TOKEN), digit: f(DIGIT), word: f(WORD), high: f(HIGH), alpha: f(ALPHA), numsep: f(NUMSEP), split: f(SPLIT), hex: f(HEX) }
    }

    /// The masks of the block before `b` (none before the first).
    #[inline(always)]
    fn before(&self, b: usize) -> Masks {
        if b == 0 { Masks::default() } else { self.at(b - 1) }
    }

    #[inline(always)]
    fn get(&self, b: usize) -> Option<Masks> {
        (b < self.n).then(|| self.at(b))
    }

    /// Field `f` of every block.
    fn row(&self, f: usize) -> &[u64] {
        &self.fields[f * self.n..(f + 1) * self.n]
    }
}

/// The masks of every 64-byte block of `hay` (the last one zero-padded), then two empty blocks
/// so that [`mask_at`] may read past the end. One classification pass; the region scans
/// below only shift and combine these words.
fn block_masks(hay: &[u8]) -> Blocks {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512bw") {
            // SAFETY (all three): AVX-512 BW presence was just checked (F comes with it), and
            // VBMI and GFNI where they are used.
            if std::is_x86_feature_detected!("avx512vbmi") {
                if std::is_x86_feature_detected!("gfni") {
                    return unsafe { simd::fill_avx512_gfni(hay) };
                }
                return unsafe { simd::fill_avx512_vbmi(hay) };
            }
            return unsafe { simd::fill_avx512(hay) };
        } else if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 presence was just checked.
            return unsafe { simd::fill_avx2(hay) };
        }
    }
    fill_with(hay, masks_scalar)
}

/// [`block_masks`] with the masks of a 64-byte block from `masks`. Inlined into each SIMD
/// caller, whose features `masks` needs.
#[inline(always)]
fn fill_with(hay: &[u8], masks: impl Fn(&[u8]) -> Masks) -> Blocks {
    Blocks::build(hay.len().div_ceil(64) + 2, |b| block_of(hay, b, &masks))
}

/// The masks of block `b` of `hay` from `masks`: the last block zero-padded, none past it.
#[inline(always)]
fn block_of(hay: &[u8], b: usize, masks: &impl Fn(&[u8]) -> Masks) -> Masks {
    if b < hay.len() / 64 {
        masks(&hay[b * 64..b * 64 + 64])
    } else if b * 64 < hay.len() {
        let mut buf = [0u8; 64];
        buf[..hay.len() - b * 64].copy_from_slice(&hay[b * 64..]);
        masks(&buf)
    } else {
        Masks::default()
    }
}

/// The class bits `pick` selects for the 64 bytes from `p`; bytes past the end have none.
#[inline(always)]
fn mask_at(blocks: &Blocks, p: usize, pick: impl Fn(&Masks) -> u64) -> u64 {
    let (b, o) = (p / 64, p % 64);
    // One bounds check for both words (the walk pads the blocks so this is the usual case);
    // branch-free: for o == 0 the second word is shifted out entirely.
    if b + 1 < blocks.len() {
        pick(&blocks.at(b)) >> o | (pick(&blocks.at(b + 1)) << 1) << (63 - o)
    } else {
        blocks.get(b).map_or(0, |x| pick(&x) >> o)
    }
}

fn masks_scalar(block: &[u8]) -> Masks {
    let mut m = Masks::default();
    for (i, &b) in block.iter().enumerate() {
        let c = CLASS[b as usize];
        m.token |= u64::from(c & T != 0) << i;
        m.digit |= u64::from(c & D != 0) << i;
        m.word |= u64::from(c & W != 0) << i;
        m.high |= u64::from(c & H != 0) << i;
        m.alpha |= u64::from(b.is_ascii_alphabetic()) << i;
        m.numsep |= u64::from(matches!(b, b' ' | b'-' | b':' | b',' | b'.' | b'\\')) << i;
        m.split |= u64::from(matches!(b, b'.' | b'%' | b'=')) << i;
        m.hex |= u64::from(b.is_ascii_hexdigit()) << i;
    }
    m
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use super::{Blocks, Masks};
    use std::arch::x86_64::*;

    /// Byte classes as products of a low-nibble set and a high-nibble set: bit `k` of
    /// `LO[b & 15] & HI[b >> 4]` says byte `b` lies in product `k`. Two tables of eight
    /// products each; every mask of [`Masks`] is a union of products (see `half`), so a block
    /// costs four `vpshufb` and a few ands and compares instead of ~20 compares.
    /// Products (high nibbles × low nibbles), table 1:
    /// 0 digits `3 × 0-9`; 1 `A-O a-o` `4,6 × 1-F`; 2 `P-Z p-z` `5,7 × 0-A`; 3 `a-o` `6 × 1-F`;
    /// 4 `p-z` `7 × 0-A`; 5 `% + - . /` `2 × 5,B,D,E,F`; 6 `=` `3 × D`; 7 `_` `5 × F`.
    /// Table 2: 0 tab, LF, CR `0 × 9,A,D`; 1 space and comma `2 × 0,C`; 2 `- .` `2 × D,E`;
    /// 3 `:` `3 × A`; 4 backslash `5 × C`; 5 `% .` `2 × 5,E`; 6 `A-F a-f` `4,6 × 1-6`.
    const PRODUCTS_1: [(&[u8], &[u8]); 8] = [
        (&[3], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        (&[4, 6], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        (&[5, 7], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        (&[6], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        (&[7], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        (&[2], &[5, 11, 13, 14, 15]),
        (&[3], &[13]),
        (&[5], &[15]),
    ];
    const PRODUCTS_2: [(&[u8], &[u8]); 8] = [(&[0], &[9, 10, 13]), (&[2], &[0, 12]), (&[2], &[13, 14]), (&[3], &[10]), (&[5], &[12]), (&[2], &[5, 14]), (&[4, 6], &[1, 2, 3, 4, 5, 6]), (&[], &[])];

    /// The (low-nibble, high-nibble) tables of a product list (at most eight products, one bit
    /// each), each repeated in both 128-bit lanes as `vpshufb` wants.
    pub(crate) const fn nibble_tables(p: &[(&[u8], &[u8])]) -> ([u8; 32], [u8; 32]) {
        let (mut lo, mut hi) = ([0u8; 32], [0u8; 32]);
        let mut k = 0;
        while k < p.len() {
            let (hs, ls) = p[k];
            let mut i = 0;
            while i < hs.len() {
                hi[hs[i] as usize] |= 1 << k;
                hi[hs[i] as usize + 16] |= 1 << k;
                i += 1;
            }
            let mut i = 0;
            while i < ls.len() {
                lo[ls[i] as usize] |= 1 << k;
                lo[ls[i] as usize + 16] |= 1 << k;
                i += 1;
            }
            k += 1;
        }
        (lo, hi)
    }
    const T1: ([u8; 32], [u8; 32]) = nibble_tables(&PRODUCTS_1);
    const T2: ([u8; 32], [u8; 32]) = nibble_tables(&PRODUCTS_2);

    /// A nibble table pair as one table of the 128 ASCII bytes (the products each byte has),
    /// for a single `vpermi2b` lookup.
    const fn byte_table(t: &([u8; 32], [u8; 32])) -> [u8; 128] {
        let mut out = [0u8; 128];
        let mut b = 0;
        while b < 128 {
            out[b] = t.0[b & 15] & t.1[b >> 4];
            b += 1;
        }
        out
    }
    static B1: [u8; 128] = byte_table(&T1);
    static B2: [u8; 128] = byte_table(&T2);

    /// Bits of the bytes of `v` that have any of the bits `k` set.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn any(v: __m256i, k: u8) -> u32 {
        let none = _mm256_cmpeq_epi8(_mm256_and_si256(v, _mm256_set1_epi8(k as i8)), _mm256_setzero_si256());
        !(_mm256_movemask_epi8(none) as u32)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn half(v: __m256i) -> (u32, u32, u32, u32, u32, u32, u32, u32) {
        let table = |t: &[u8; 32]| _mm256_loadu_si256(t.as_ptr() as *const __m256i);
        let nib = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(v, nib);
        // Bytes of 0x80 and above get high nibbles 8-15, whose table entries are empty.
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
        let c1 = _mm256_and_si256(_mm256_shuffle_epi8(table(&T1.0), lo), _mm256_shuffle_epi8(table(&T1.1), hi));
        let c2 = _mm256_and_si256(_mm256_shuffle_epi8(table(&T2.0), lo), _mm256_shuffle_epi8(table(&T2.1), hi));
        // Products 3 and 4 (lowercase) are letters too, so every product of table 1 is a
        // token byte; the word and split masks join products of both tables.
        let word = _mm256_or_si256(_mm256_and_si256(c1, _mm256_set1_epi8(0b1_1000)), _mm256_and_si256(c2, _mm256_set1_epi8(0b11)));
        let split = _mm256_or_si256(_mm256_and_si256(c1, _mm256_set1_epi8(0b100_0000)), _mm256_and_si256(c2, _mm256_set1_epi8(0b10_0000)));
        let hex = _mm256_or_si256(_mm256_and_si256(c1, _mm256_set1_epi8(1)), _mm256_and_si256(c2, _mm256_set1_epi8(0b100_0000)));
        (
            any(c1, 0xff),
            // Product 0 is bit 0: shifted to the top bit of its byte (the 16-bit shift moves
            // no bit across a byte's top), `movemask` reads it directly.
            _mm256_movemask_epi8(_mm256_slli_epi16::<7>(c1)) as u32,
            any(word, 0xff),
            _mm256_movemask_epi8(v) as u32,
            any(c1, 0b110),
            any(c2, 0b1_1110),
            any(split, 0xff),
            any(hex, 0xff),
        )
    }

    /// # Safety
    /// Requires AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill_avx2(hay: &[u8]) -> Blocks {
        super::fill_with(hay, |block| masks_avx2(block))
    }

    /// [`fill_avx2`] with AVX-512: a block is one register, both tables look up all 64 bytes
    /// at once, and each mask is one `vptestmb` straight into a mask register, where AVX2 needs
    /// a compare and a `movemask` per mask and half block.
    ///
    /// # Safety
    /// Requires AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn fill_avx512(hay: &[u8]) -> Blocks {
        super::fill_with(hay, |block| masks_avx512(block))
    }

    /// [`fill_avx512`] with VBMI: each table is one `vpermi2b` lookup of the byte itself (bytes
    /// of 0x80 and above masked to none), where the nibble tables take two shuffles, a shift
    /// and three ANDs. A fifth of the classification's instructions.
    ///
    /// # Safety
    /// Requires AVX-512 F, BW and VBMI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn fill_avx512_vbmi(hay: &[u8]) -> Blocks {
        super::fill_with(hay, |block| masks_avx512_vbmi(block))
    }

    /// The fields of each ASCII byte as one byte, bit `f` for field `f` (the order of
    /// [`Blocks`]' rows), from [`super::masks_scalar`] of the byte alone.
    fn field_bytes() -> &'static [u8; 128] {
        static TABLE: std::sync::OnceLock<[u8; 128]> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| {
            let mut t = [0u8; 128];
            for (b, slot) in t.iter_mut().enumerate() {
                let m = super::masks_scalar(&[b as u8]);
                for (f, v) in m.by_row().into_iter().enumerate() {
                    *slot |= (v as u8 & 1) << f;
                }
            }
            t
        })
    }

    /// [`super::block_masks`] eight blocks at a time, with no mask ever in a general register:
    /// a block's eight fields come out of one `vpermi2b` lookup as one byte per input byte,
    /// a GF(2) affine transform turns each eight bytes of those into eight bytes of one field
    /// each (an 8×8 bit transpose), a byte permute gathers each field's eight bytes into one
    /// 64-bit lane, and an 8×8 transpose of the lanes of eight blocks gives each row eight
    /// blocks to store at once. The block-at-a-time passes moved each of the eight masks from
    /// a mask register to a general one and stored it alone: that, not the lookups, was the
    /// classification's time. Blocks past the last whole group of eight go one at a time.
    ///
    /// # Safety
    /// Requires AVX-512 F, BW and VBMI, and GFNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,gfni")]
    pub(super) unsafe fn fill_avx512_gfni(hay: &[u8]) -> Blocks {
        let full = hay.len() / 64;
        let n = hay.len().div_ceil(64) + 2;
        let groups = full / 8;
        let table = field_bytes();
        let (lo, hi) = (_mm512_loadu_si512(table.as_ptr() as *const _), _mm512_loadu_si512(table.as_ptr().add(64) as *const _));
        // Each qword's bytes reversed, so the affine's bit k comes from byte k.
        let reverse = _mm512_set_epi8(
            8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
        );
        // Byte `i` of each qword selects bit `i` of every byte of the matrix operand.
        let select = _mm512_set1_epi64(0x8040_2010_0804_0201u64 as i64);
        // Byte `8f + j` of a block's result takes byte `8j + f` of the transposed bytes.
        let gather = {
            let mut idx = [0u8; 64];
            for (k, slot) in idx.iter_mut().enumerate() {
                *slot = ((k % 8) * 8 + k / 8) as u8;
            }
            _mm512_loadu_si512(idx.as_ptr() as *const _)
        };
        let block = |v: __m512i| {
            let high = _mm512_movepi8_mask(v);
            let fields = _mm512_maskz_permutex2var_epi8(!high, lo, v, hi);
            let fields = _mm512_mask_mov_epi8(fields, high, _mm512_set1_epi8(1 << super::HIGH));
            let by_field = _mm512_gf2p8affine_epi64_epi8::<0>(select, _mm512_shuffle_epi8(fields, reverse));
            _mm512_permutexvar_epi8(gather, by_field)
        };
        let mut fields: Vec<u64> = Vec::with_capacity(super::FIELDS * n);
        let out = fields.spare_capacity_mut().as_mut_ptr() as *mut u64;
        let pair = |a: __m512i, b: __m512i, idx: [i64; 8]| _mm512_permutex2var_epi64(a, _mm512_loadu_si512(idx.as_ptr() as *const _), b);
        for g in 0..groups {
            let base = hay.as_ptr().add(g * 512);
            let r: [__m512i; 8] = std::array::from_fn(|k| block(_mm512_loadu_si512(base.add(64 * k) as *const _)));
            // Lane f of r[k] is field f of block k; after three rounds lane k of s[f] is.
            const EVEN: [i64; 8] = [0, 8, 2, 10, 4, 12, 6, 14];
            const ODD: [i64; 8] = [1, 9, 3, 11, 5, 13, 7, 15];
            const LOW2: [i64; 8] = [0, 1, 8, 9, 4, 5, 12, 13];
            const HIGH2: [i64; 8] = [2, 3, 10, 11, 6, 7, 14, 15];
            const LOW4: [i64; 8] = [0, 1, 2, 3, 8, 9, 10, 11];
            const HIGH4: [i64; 8] = [4, 5, 6, 7, 12, 13, 14, 15];
            let a: [__m512i; 8] = std::array::from_fn(|k| pair(r[k & !1], r[k | 1], if k % 2 == 0 { EVEN } else { ODD }));
            // b[0], b[2]: fields 0/4 and 2/6 of blocks 0-3 (from a[0], a[2]); b[1], b[3]: fields
            // 1/5 and 3/7; b[4..8] the same of blocks 4-7.
            let b: [__m512i; 8] = std::array::from_fn(|k| {
                let (x, y) = (a[(k & 4) | (k & 1)], a[(k & 4) | (k & 1) | 2]);
                pair(x, y, if k & 2 == 0 { LOW2 } else { HIGH2 })
            });
            for f in 0..8 {
                let (x, y) = (b[f & 3], b[(f & 3) | 4]);
                let s = pair(x, y, if f < 4 { LOW4 } else { HIGH4 });
                _mm512_storeu_si512(out.add(f * n + 8 * g) as *mut _, s);
            }
        }
        for b in 8 * groups..n {
            let m = super::block_of(hay, b, &|block: &[u8]| masks_avx512_vbmi(block));
            for (f, v) in m.by_row().into_iter().enumerate() {
                out.add(f * n + b).write(v);
            }
        }
        // SAFETY: the groups wrote blocks `0..8 * groups` of every row, the loop the rest.
        fields.set_len(super::FIELDS * n);
        Blocks { n, fields }
    }

    /// # Safety
    /// Requires AVX-512 F, BW and VBMI, and `block.len() == 64`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn masks_avx512_vbmi(block: &[u8]) -> Masks {
        let half = |t: &[u8; 128], k: usize| _mm512_loadu_si512(t.as_ptr().add(64 * k) as *const _);
        let v = _mm512_loadu_si512(block.as_ptr() as *const _);
        let high = _mm512_movepi8_mask(v);
        let c1 = _mm512_maskz_permutex2var_epi8(!high, half(&B1, 0), v, half(&B1, 1));
        let c2 = _mm512_maskz_permutex2var_epi8(!high, half(&B2, 0), v, half(&B2, 1));
        classes_of(v, c1, c2)
    }

    /// # Safety
    /// Requires AVX-512 F and BW, and `block.len() == 64`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn masks_avx512(block: &[u8]) -> Masks {
        // The 32-byte tables hold each 16-byte table twice; all four lanes want it.
        let table = |t: &[u8; 32]| _mm512_broadcast_i32x4(_mm_loadu_si128(t.as_ptr() as *const __m128i));
        let v = _mm512_loadu_si512(block.as_ptr() as *const _);
        let nib = _mm512_set1_epi8(0x0f);
        let lo = _mm512_and_si512(v, nib);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
        let c1 = _mm512_and_si512(_mm512_shuffle_epi8(table(&T1.0), lo), _mm512_shuffle_epi8(table(&T1.1), hi));
        let c2 = _mm512_and_si512(_mm512_shuffle_epi8(table(&T2.0), lo), _mm512_shuffle_epi8(table(&T2.1), hi));
        classes_of(v, c1, c2)
    }

    /// The masks of a block from its bytes `v` and their products in the two tables.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn classes_of(v: __m512i, c1: __m512i, c2: __m512i) -> Masks {
        let any = |c: __m512i, k: i8| _mm512_test_epi8_mask(c, _mm512_set1_epi8(k));
        // Products as in `half`: table 1 products 3 and 4 (lowercase) are letters, etc.
        Masks {
            token: any(c1, -1),
            digit: any(c1, 1),
            word: any(c1, 0b1_1000) | any(c2, 0b11),
            high: _mm512_movepi8_mask(v),
            alpha: any(c1, 0b110),
            numsep: any(c2, 0b1_1110),
            split: any(c1, 0b100_0000) | any(c2, 0b10_0000),
            hex: any(c1, 1) | any(c2, 0b100_0000),
        }
    }

    /// # Safety
    /// Requires AVX2 and `block.len() == 64`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn masks_avx2(block: &[u8]) -> Masks {
        let lo = _mm256_loadu_si256(block.as_ptr() as *const __m256i);
        let hi = _mm256_loadu_si256(block.as_ptr().add(32) as *const __m256i);
        let (t0, d0, w0, h0, a0, n0, s0, x0) = half(lo);
        let (t1, d1, w1, h1, a1, n1, s1, x1) = half(hi);
        let join = |a: u32, b: u32| u64::from(a) | u64::from(b) << 32;
        Masks {
            token: join(t0, t1),
            digit: join(d0, d1),
            word: join(w0, w1),
            high: join(h0, h1),
            alpha: join(a0, a1),
            numsep: join(n0, n1),
            split: join(s0, s1),
            hex: join(x0, x1),
        }
    }

    /// Words `b..b + 8` of `a` (the caller checks they exist).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn eight(a: &[u64], b: usize) -> __m512i {
        debug_assert!(b + 8 <= a.len());
        _mm512_loadu_si512(a.as_ptr().add(b) as *const _)
    }

    /// Per 64-bit lane, the count of set bits from the top down to the first clear one.
    #[inline]
    #[target_feature(enable = "avx512f,avx512cd")]
    unsafe fn leading_ones(x: __m512i) -> __m512i {
        _mm512_lzcnt_epi64(_mm512_andnot_si512(x, _mm512_set1_epi64(-1)))
    }

    /// Whether the passes that take eight blocks at a time ([`trigger_ends_avx512`],
    /// [`key_word_ends_avx512`], [`busy_blocks_avx512`]) can run here.
    pub(super) fn has_eight_block_features() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512cd")
            && std::is_x86_feature_detected!("avx512vpopcntdq")
            && std::is_x86_feature_detected!("avx512vbmi2")
    }

    /// Appends [`super::trigger_ends`] of blocks `0..` to `triggers` (empty), eight blocks a
    /// step, one block per 64-bit lane, for as many whole steps as fit before the last block
    /// (which has no block after it); the caller finishes the rest one block at a time. The
    /// block before each lane's is the lane below, and the last step's top lane for lane 0.
    /// The same operations as the scalar test, branch-free, except that the rare chains of
    /// five hex pairs are measured per lane.
    ///
    /// # Safety
    /// Requires the features of [`has_eight_block_features`].
    #[target_feature(enable = "avx512f,avx512bw,avx512cd,avx512vpopcntdq,avx512vbmi2")]
    pub(super) unsafe fn trigger_ends_avx512(blocks: &Blocks, triggers: &mut Vec<u64>) {
        use super::{ALPHA, DIGIT, HEX, NUMSEP, WORD};
        let n = blocks.len();
        triggers.reserve(n.saturating_sub(1));
        // SAFETY (of the loads): steps read blocks `b..b + 9`, with `b + 8 < n`.
        let row = |f: usize, b: usize| eight(blocks.row(f), b);
        let zero = _mm512_setzero_si512();
        let ones = _mm512_set1_epi64(-1);
        // The last step's fields: its top lane is the block before this step's first.
        let (mut l_digit, mut l_word, mut l_alpha, mut l_numsep, mut l_hex) = (zero, zero, zero, zero, zero);
        // A step reads the digits of the block after its last: it needs blocks up to b + 8.
        let mut b = 0;
        while b + 8 < n {
            let (digit, word, alpha, numsep, hex) = (row(DIGIT, b), row(WORD, b), row(ALPHA, b), row(NUMSEP, b), row(HEX, b));
            let next_digit = row(DIGIT, b + 1);
            // Lane i of the block before: lane i - 1, and the last step's top lane for lane 0.
            let before = |cur: __m512i, last: __m512i| _mm512_alignr_epi64::<7>(cur, last);
            let (p_digit, p_word, p_alpha, p_numsep, p_hex) = (before(digit, l_digit), before(word, l_word), before(alpha, l_alpha), before(numsep, l_numsep), before(hex, l_hex));
            (l_digit, l_word, l_alpha, l_numsep, l_hex) = (digit, word, alpha, numsep, hex);
            let and = |a, b| _mm512_and_si512(a, b);
            let or = |a, b| _mm512_or_si512(a, b);
            // `!a & b`.
            let andnot = |a, b| _mm512_andnot_si512(a, b);
            // Pairs: separators after exactly two hex digits, here (with the hex before) and in
            // the block before (with none before it).
            let here = andnot(_mm512_shldi_epi64::<3>(hex, p_hex), and(numsep, and(_mm512_shldi_epi64::<1>(hex, p_hex), _mm512_shldi_epi64::<2>(hex, p_hex))));
            let pairs_before = andnot(_mm512_slli_epi64::<3>(p_hex), and(p_numsep, and(_mm512_slli_epi64::<1>(p_hex), _mm512_slli_epi64::<2>(p_hex))));
            let counts = _mm512_add_epi64(_mm512_popcnt_epi64(here), _mm512_popcnt_epi64(_mm512_srli_epi64::<32>(pairs_before)));
            let chains = _mm512_test_epi64_mask(here, here) & _mm512_cmpge_epu64_mask(counts, _mm512_set1_epi64(5));
            // Cards: 13 digits joined by single separators, with those before.
            let joined = or(digit, and(numsep, _mm512_shldi_epi64::<1>(digit, p_digit)));
            let joined_prev = or(p_digit, and(p_numsep, _mm512_slli_epi64::<1>(p_digit)));
            let joined_before = leading_ones(joined_prev);
            let mut runs = and(joined, _mm512_slli_epi64::<1>(joined));
            runs = and(runs, _mm512_slli_epi64::<2>(runs));
            runs = and(runs, _mm512_slli_epi64::<4>(runs));
            runs = and(runs, _mm512_slli_epi64::<5>(runs));
            // The trailing ones of `joined`, where the count before makes 13.
            let trailing = andnot(_mm512_add_epi64(joined, _mm512_set1_epi64(1)), joined);
            let shift = _mm512_max_epi64(_mm512_sub_epi64(_mm512_set1_epi64(12), joined_before), zero);
            let card = or(runs, and(trailing, _mm512_sllv_epi64(ones, shift)));
            // IBANs: two capitals, two digits, after a byte that is no letter or digit.
            let (upper, p_upper) = (andnot(word, alpha), andnot(p_word, p_alpha));
            let capitals = and(_mm512_shldi_epi64::<2>(upper, p_upper), _mm512_shldi_epi64::<3>(upper, p_upper));
            let alnum_back = _mm512_shldi_epi64::<4>(or(alpha, digit), or(p_alpha, p_digit));
            let iban = andnot(alnum_back, and(and(digit, _mm512_shldi_epi64::<1>(digit, p_digit)), capitals));
            let at = triggers.len();
            _mm512_storeu_si512(triggers.spare_capacity_mut().as_mut_ptr() as *mut _, or(card, iban));
            // SAFETY: `b + 8 < n` words were reserved above, and these eight just written.
            triggers.set_len(at + 8);
            if chains != 0 {
                // A block without digits keeps a chain's ends only in its last four bytes,
                // before a digit in the next block's first four.
                let lane = |v: __m512i| {
                    let mut a = [0u64; 8];
                    _mm512_storeu_si512(a.as_mut_ptr() as *mut _, v);
                    a
                };
                let (h, pb, d, pd, nd) = (lane(here), lane(pairs_before), lane(digit), lane(p_digit), lane(next_digit));
                for i in (0..8).filter(|i| chains >> i & 1 == 1) {
                    let keep = if d[i] | pd[i] >> 63 != 0 { u64::MAX } else if nd[i] & 0xf == 0 { 0 } else { !super::low_bits(60) };
                    triggers[at + i] |= super::hex_chain_ends(pb[i], h[i]) & keep;
                }
            }
            b += 8;
        }
    }

    /// Appends [`super::key_word_ends`] of blocks `0..` to `out` (empty), eight blocks a step
    /// as [`trigger_ends_avx512`]: the run doubling over a block and the one before is a pair
    /// of 64-bit lanes, shifted together with `vpshldq`.
    ///
    /// # Safety
    /// Requires the features of [`has_eight_block_features`].
    #[target_feature(enable = "avx512f,avx512bw,avx512cd,avx512vpopcntdq,avx512vbmi2")]
    pub(super) unsafe fn key_word_ends_avx512(blocks: &Blocks, out: &mut Vec<u64>) {
        use super::{ALPHA, DIGIT};
        let n = blocks.len();
        out.reserve(n.saturating_sub(1));
        // SAFETY (of the loads): steps read blocks `b..b + 9`, with `b + 8 < n`.
        let row = |f: usize, b: usize| eight(blocks.row(f), b);
        let and = |a, b| _mm512_and_si512(a, b);
        let mut last = _mm512_setzero_si512();
        let mut b = 0;
        while b + 8 < n {
            let x = _mm512_or_si512(row(ALPHA, b), row(DIGIT, b));
            let next = _mm512_or_si512(row(ALPHA, b + 1), row(DIGIT, b + 1));
            let px = _mm512_alignr_epi64::<7>(x, last);
            last = x;
            let ends = _mm512_andnot_si512(_mm512_or_si512(_mm512_srli_epi64::<1>(x), _mm512_slli_epi64::<63>(next)), x);
            // 128-bit values as (high: this block, low: the block before), shifted left by s.
            macro_rules! shl {
                ($v:expr, $s:literal) => {
                    (_mm512_shldi_epi64::<$s>($v.0, $v.1), _mm512_slli_epi64::<$s>($v.1))
                };
            }
            let both = |a: (__m512i, __m512i), b: (__m512i, __m512i)| (and(a.0, b.0), and(a.1, b.1));
            let y1 = (x, px);
            let y2 = both(y1, shl!(y1, 1));
            let y4 = both(y2, shl!(y2, 2));
            let y8 = both(y4, shl!(y4, 4));
            let y16 = both(y8, shl!(y8, 8));
            let y32 = and(y16.0, shl!(y16, 16).0);
            let r34 = and(y32, shl!(y2, 32).0);
            let r51 = and(and(y32, shl!(y16, 32).0), and(shl!(y2, 48).0, shl!(y1, 50).0));
            let sep_51_or_52 = _mm512_andnot_si512(and(shl!(y1, 51).0, shl!(y1, 52).0), _mm512_set1_epi64(-1));
            let exact = _mm512_or_si512(_mm512_andnot_si512(shl!(y1, 34).0, r34), and(r51, sep_51_or_52));
            let at = out.len();
            _mm512_storeu_si512(out.spare_capacity_mut().as_mut_ptr() as *mut _, and(ends, exact));
            // SAFETY: `n - 1 >= b + 8` words were reserved above, and these eight just written.
            out.set_len(at + 8);
            b += 8;
        }
    }

    /// Fills `busy` (see [`super::Busy`]) for the blocks it can test eight at a time, and
    /// returns how many those are: their `firsts` and `tokens` bits, and clears the `others`
    /// bits of the quiet ones. Steps read the trigger ends of the block after the step.
    ///
    /// # Safety
    /// Requires the features of [`has_eight_block_features`]; `triggers` (and `key_ends`, when not
    /// empty) hold a word for every block but the last, and `busy` a bit for every block.
    #[target_feature(enable = "avx512f,avx512bw,avx512cd,avx512vpopcntdq,avx512vbmi2")]
    pub(super) unsafe fn busy_blocks_avx512(blocks: &Blocks, triggers: &[u64], key_ends: &[u64], words: bool, busy: &mut super::Busy) -> usize {
        use super::{ALPHA, HIGH, TOKEN, WORD};
        let n = blocks.len();
        assert!(triggers.len() + 1 == n && (key_ends.is_empty() || key_ends.len() + 1 == n));
        let load = |a: &[u64], b: usize| eight(a, b);
        let ones = _mm512_set1_epi64(-1);
        // A run of 16 (or 32) set bits somewhere in each lane.
        let run16 = |x: __m512i| {
            let x = _mm512_and_si512(x, _mm512_srli_epi64::<1>(x));
            let x = _mm512_and_si512(x, _mm512_srli_epi64::<2>(x));
            let x = _mm512_and_si512(x, _mm512_srli_epi64::<4>(x));
            _mm512_and_si512(x, _mm512_srli_epi64::<8>(x))
        };
        let trailing_ones = |x: __m512i| _mm512_popcnt_epi64(_mm512_and_si512(x, _mm512_add_epi64(_mm512_andnot_si512(x, ones), ones)));
        let (mut last_token, mut last_word, mut last_trigger) = (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
        // The phrase stream's state before the first block: no letter, a break, no words.
        let (mut last_letters, mut last_tail, mut last_break) = (_mm512_setzero_si512(), _mm512_setzero_si512(), 1u8);
        let mut b = 0;
        // SAFETY (of the loads): rows have `n` words, triggers and key ends `n - 1`; a step
        // reads rows up to `b + 7` and the others up to `b + 8 <= n - 2`.
        while b + 10 <= n {
            let token = load(blocks.row(TOKEN), b);
            let token_before = _mm512_alignr_epi64::<7>(token, last_token);
            last_token = token;
            let carry = _mm512_min_epu64(leading_ones(token_before), _mm512_set1_epi64(63));
            // Where a long run first reaches `MIN_TOKEN` bytes (`super::token_firsts`, per lane).
            let min = super::MIN_TOKEN as i64;
            let within = {
                let x = _mm512_and_si512(token, _mm512_slli_epi64::<1>(token));
                let x = _mm512_and_si512(x, _mm512_slli_epi64::<2>(x));
                let x = _mm512_and_si512(x, _mm512_slli_epi64::<4>(x));
                _mm512_and_si512(x, _mm512_slli_epi64::<8>(x))
            };
            let carried = _mm512_andnot_si512(
                _mm512_sllv_epi64(ones, trailing_ones(token)),
                _mm512_sllv_epi64(ones, _mm512_max_epi64(_mm512_sub_epi64(_mm512_set1_epi64(min - 1), carry), _mm512_setzero_si512())),
            );
            let long = _mm512_or_si512(within, carried);
            let long_before = _mm512_maskz_set1_epi64(_mm512_cmpge_epu64_mask(carry, _mm512_set1_epi64(min)), 1);
            let firsts = _mm512_andnot_si512(_mm512_or_si512(_mm512_slli_epi64::<1>(long), long_before), long);
            _mm512_storeu_si512(busy.firsts.as_mut_ptr().add(b) as *mut _, firsts);
            let trigger = load(triggers, b);
            let trigger_after = load(triggers, b + 1);
            let near = _mm512_or_si512(_mm512_or_si512(trigger, trigger_after), _mm512_alignr_epi64::<7>(trigger, last_trigger));
            last_trigger = trigger;
            let mut quiet = _mm512_testn_epi64_mask(near, near);
            if !key_ends.is_empty() {
                let k = load(key_ends, b);
                quiet &= _mm512_testn_epi64_mask(k, k);
            }
            if words {
                let word = load(blocks.row(WORD), b);
                let word_before = _mm512_alignr_epi64::<7>(word, last_word);
                last_word = word;
                let run32 = {
                    let x = run16(word);
                    _mm512_and_si512(x, _mm512_srli_epi64::<16>(x))
                };
                let crossing = _mm512_add_epi64(leading_ones(word_before), trailing_ones(word));
                let no_long_run = _mm512_cmplt_epu64_mask(crossing, _mm512_set1_epi64(super::MIN_WORDS_REGION as i64)) & _mm512_testn_epi64_mask(run32, run32);
                // Or the phrase stream's count cannot reach twelve here (see `PhraseStream`):
                // the words' starts, long words and breaks as `PhraseStream::block` has them,
                // with the letters of the blocks before and after from the lanes next to it.
                let letters = _mm512_and_si512(word, load(blocks.row(ALPHA), b));
                let letters_after = _mm512_and_si512(load(blocks.row(WORD), b + 1), load(blocks.row(ALPHA), b + 1));
                let letter_before = _mm512_srli_epi64::<63>(_mm512_alignr_epi64::<7>(letters, last_letters));
                last_letters = letters;
                let starts = _mm512_andnot_si512(_mm512_or_si512(_mm512_slli_epi64::<1>(letters), letter_before), letters);
                let second = _mm512_or_si512(_mm512_srli_epi64::<1>(letters), _mm512_slli_epi64::<63>(letters_after));
                let third = _mm512_or_si512(_mm512_srli_epi64::<2>(letters), _mm512_slli_epi64::<62>(letters_after));
                let long = _mm512_and_si512(starts, _mm512_and_si512(second, third));
                let breaks = _mm512_or_si512(_mm512_andnot_si512(long, starts), _mm512_andnot_si512(word, ones));
                // The long words before the first break, the others, and those after the last.
                let before_first = _mm512_add_epi64(_mm512_and_si512(breaks, _mm512_sub_epi64(_mm512_setzero_si512(), breaks)), ones);
                let first = _mm512_popcnt_epi64(_mm512_and_si512(long, before_first));
                let others = _mm512_popcnt_epi64(_mm512_andnot_si512(before_first, long));
                let after_last = _mm512_andnot_si512(_mm512_srlv_epi64(ones, _mm512_lzcnt_epi64(breaks)), ones);
                let tail = _mm512_popcnt_epi64(_mm512_and_si512(long, after_last));
                let tail_before = _mm512_alignr_epi64::<7>(tail, last_tail);
                let has_break = _mm512_test_epi64_mask(breaks, breaks);
                let break_before = (has_break << 1 | last_break) as u8;
                (last_tail, last_break) = (tail, has_break >> 7);
                // The count a block starts with is the last block's words after its last break,
                // if it has one; and a block the walk skips must have one, so that the count
                // the next block starts over with (`PhraseStream::restart`) is the same.
                let twelve = _mm512_set1_epi64(12);
                let below_twelve = _mm512_cmplt_epu64_mask(_mm512_add_epi64(tail_before, first), twelve) & _mm512_cmplt_epu64_mask(others, twelve);
                quiet &= no_long_run | (below_twelve & has_break & break_before);
            }
            let high = load(blocks.row(HIGH), b);
            quiet &= _mm512_testn_epi64_mask(high, high);
            busy.tokens[b / 64] |= u64::from(_mm512_test_epi64_mask(firsts, firsts)) << (b % 64);
            busy.others[b / 64] &= !(u64::from(quiet) << (b % 64));
            b += 8;
        }
        b
    }
}

/// The low `n` bits set (all of them from 64 on): the positions of a 64-bit mask that lie
/// before a limit `n` bytes away.
#[inline]
pub(crate) fn low_bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

fn is_delim(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'>' | b'`')
}

/// Walks `hay` and calls `f` once per region. Regions of one kind come in order of their
/// start; regions of different kinds may overlap, and each region is reported once. Word
/// regions are looked for only if `words` (their one use is egress's seed phrase rule), and
/// key-sized words only if `key_words` (egress's Twilio and WIF rules).
// Always inlined into its one caller: when `Compiled::scan_with_tail` grew (a packed role
// search), LLVM stopped inlining it and request scans took 4% more instructions.
#[inline(always)]
pub(crate) fn walk(hay: &[u8], words: bool, key_words: bool, f: impl FnMut(Region, &Classes)) {
    #[cfg(target_arch = "x86_64")]
    {
        if fast_pext() {
            // SAFETY: `fast_pext` checked that the CPU has BMI2.
            return unsafe { walk_bmi2(hay, words, key_words, f) };
        }
    }
    walk_with::<false>(hay, words, key_words, f)
}

/// [`walk_with`] compiled with BMI2, whose `pext` and `pdep` count a block's numeric stretches
/// in a few instructions (see [`NumericStream`]).
///
/// # Safety
/// Requires BMI2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn walk_bmi2(hay: &[u8], words: bool, key_words: bool, f: impl FnMut(Region, &Classes)) {
    walk_with::<true>(hay, words, key_words, f)
}

/// Whether `pext` and `pdep` are single instructions here: BMI2 is present and is not the
/// microcoded one of AMD processors before Zen 3 (family 19h), where one `pext` costs up to
/// hundreds of cycles and the loop of [`dense_first_loop`] is faster.
#[cfg(target_arch = "x86_64")]
fn fast_pext() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| {
        if !std::is_x86_feature_detected!("bmi2") {
            return false;
        }
        let (vendor, signature) = (std::arch::x86_64::__cpuid(0), std::arch::x86_64::__cpuid(1).eax);
        let amd_like = matches!((vendor.ebx, vendor.edx, vendor.ecx), (0x6874_7541, 0x6974_6e65, 0x444d_4163) | (0x6f67_7948, 0x6e65_476e, 0x656e_6975));
        let family = (signature >> 8 & 0xf) + if signature >> 8 & 0xf == 0xf { signature >> 20 & 0xff } else { 0 };
        !amd_like || family >= 0x19
    })
}

/// The walk, with `PEXT` telling how [`NumericStream`] counts stretches (see [`fast_pext`]).
#[inline(always)]
fn walk_with<const PEXT: bool>(hay: &[u8], words: bool, key_words: bool, mut f: impl FnMut(Region, &Classes)) {
    let n = hay.len();
    let mut words_done = 0;
    let mut high_done = 0;
    let mut high_floor = 0; // where the last non-ASCII region ended
    let mut numeric = NumericStream::default();
    let mut phrases = PhraseStream::default();
    let (blocks, triggers) = masks_and_triggers(hay);
    let key_ends = if key_words { all_key_word_ends(&blocks) } else { Vec::new() };
    let busy = busy_blocks(n, &blocks, &triggers, &key_ends, words);
    let classes = Classes(&blocks, PEXT);
    let mut f = |r: Region| f(r, &classes);
    // The token pass, on its own, from where its long runs begin (`Busy::firsts`). The
    // streamed pass, block by block with its state carried, is the reference the test of
    // skipping compares it with.
    let count = n.div_ceil(64);
    if skip_quiet() {
        for (w, &word) in busy.tokens.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let b = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let mut firsts = busy.firsts[b];
                while firsts != 0 {
                    let k = b * 64 + firsts.trailing_zeros() as usize;
                    firsts &= firsts - 1;
                    f(Region::Token(k + 1 - MIN_TOKEN..run_end(&blocks, n, k, |m| m.token)));
                }
            }
        }
    } else {
        let mut tokens = TokenStream::default();
        for b in 0..count {
            tokens.block(&blocks, n, b * 64, blocks.at(b).token & low_bits(n - b * 64), &mut f);
        }
    }
    let mut prev = Masks::default();
    let mut block_start = 0;
    let mut words_before = false;
    let (mut ends_before, mut ends_here) = (0, triggers[0]);
    while block_start < n {
        let b = block_start / 64;
        if busy.others[b / 64] >> (b % 64) & 1 == 0 && !numeric.carries() && skip_quiet() {
            // Quiet blocks change nothing but the streams' carried state, which the last of
            // them gives (see `Busy`): on to the next block with work.
            let next = next_busy(&busy.others, b);
            prev = blocks.at(next - 1);
            numeric.live = false;
            (ends_before, ends_here) = (triggers[next - 1], triggers[next]);
            words_before = false;
            block_start = next * 64;
            continue;
        }
        let end = (block_start + 64).min(n);
        let m = blocks.at(b);
        let valid = low_bits(end - block_start);
        if key_words && key_ends[block_start / 64] != 0 {
            key_words_ending(&blocks, block_start, key_ends[block_start / 64], &mut f);
        }
        // The numeric stream runs only next to a block where a trigger ends, and on while a
        // stretch with digits is open: a reported region holds a trigger end, at most four
        // bytes before its first digit, so it is measured in a run of blocks the stream goes
        // through, from the last break before (regions never cross one). Most blocks of
        // JSON and base64 are dense with digits, and hold no trigger.
        let ends_next = triggers[block_start / 64 + 1];
        if ends_before | ends_here | ends_next != 0 || numeric.carries() || ungated() {
            if !numeric.live {
                numeric.resync(&blocks, block_start);
            }
            numeric.block::<PEXT>(&blocks, block_start, &m, valid, [ends_before, ends_here, ends_next], &mut f);
        } else {
            numeric.live = false;
        }
        (ends_before, ends_here) = (ends_here, ends_next);
        if words && ungated() {
            if long_word_run(&prev, &m) && end > words_done {
                let from = block_start.saturating_sub(64).max(words_done);
                words_done = scan_words(hay, &blocks, from, words_done, end, &mut f);
            }
        } else if words {
            // A phrase lies in a run of the class long enough for this test. The count of a
            // block whose last block failed it starts over with that block's words (a run
            // may begin there); nothing else before can reach this block.
            let here = long_word_run(&prev, &m);
            if here {
                if !words_before {
                    phrases.restart(&blocks, n, block_start, &mut f);
                }
                phrases.block(&blocks, n, block_start, &m, valid, &mut f);
            }
            words_before = here;
        }
        if m.high & valid != 0 && end > high_done {
            high_done = scan_high(hay, &blocks, &mut high_floor, block_start.max(high_done), end, &mut f);
        }
        prev = m;
        block_start = end;
    }
    if words && !ungated() {
        phrases.finish(n, &blocks, &mut f);
    }
}

/// The split bytes of a range (see [`Classes::splits`]).
#[derive(Clone)]
pub(crate) struct Splits<'a> {
    /// The split field of every block, one word per block in a row: the blocks of a long
    /// run with no split byte (base64) are passed over a word at a time.
    row: &'a [u64],
    /// Bit `k` of `bits` is the byte at `base + k`, the start of a block; none at or past
    /// `end`.
    base: usize,
    end: usize,
    bits: u64,
}

impl Iterator for Splits<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        if self.bits == 0 {
            let b = self.base / 64 + 1;
            let last = self.end.div_ceil(64).min(self.row.len());
            let k = self.row.get(b..last)?.iter().position(|&w| w != 0)?;
            self.base = (b + k) * 64;
            // Only the range's last block has bits past its end, so none is left after it.
            self.bits = self.row[b + k] & low_bits(self.end - self.base);
            if self.bits == 0 {
                return None;
            }
        }
        let k = self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        Some(self.base + k)
    }
}

/// The walk's class bitmasks, handed to the region callback so it can split a region further
/// (into words, segments) without another pass over its bytes.
/// The second field says `pext` is fast here (see [`fast_pext`]).
pub(crate) struct Classes<'a>(&'a Blocks, bool);

impl Classes<'_> {
    /// Bit `k` says byte `p + k` of the walked slice is an ASCII letter or digit (none past
    /// its end).
    #[inline]
    pub fn alnum_at(&self, p: usize) -> u64 {
        mask_at(self.0, p, |m| m.alpha | m.digit)
    }

    /// The positions of `.`, `%` and `=` in `r`, in order: the bytes that split a token run.
    /// One mask load per 64 bytes (a search from each split byte for the next one loaded
    /// the masks again per byte).
    #[inline]
    pub fn splits(&self, r: Range<usize>) -> Splits<'_> {
        let row = self.0.row(SPLIT);
        let base = r.start / 64 * 64;
        let bits = row.get(r.start / 64).copied().unwrap_or(0) & !low_bits(r.start % 64) & low_bits(r.end.saturating_sub(base));
        Splits { row, base, end: r.end, bits }
    }

    /// Whether `r` of `hay` is a UUID (`validate::is_uuid`): 36 bytes, hex digits but for
    /// the dashes at 8, 13, 18 and 23.
    pub fn uuid(&self, hay: &[u8], r: Range<usize>) -> bool {
        const DASHES: u64 = 1 << 8 | 1 << 13 | 1 << 18 | 1 << 23;
        r.len() == 36 && mask_at(self.0, r.start, |m| m.hex) & low_bits(36) == low_bits(36) & !DASHES && [8, 13, 18, 23].iter().all(|&k| hay[r.start + k] == b'-')
    }

    /// Whether every byte of `r` is a hex digit. Stops at the first that is not (base64
    /// runs: within a few bytes), where a byte loop took several instructions a byte.
    pub fn all_hex(&self, r: Range<usize>) -> bool {
        next_in(self.0, r.start, r.end, |m| !m.hex) >= r.end
    }

    /// Whether every byte of `r`, a piece of a token run, is a hex digit or a dash (the only
    /// numeric separator a token run holds besides `.`, which splits it).
    pub fn all_hex_or_dash(&self, r: Range<usize>) -> bool {
        next_in(self.0, r.start, r.end, |m| !(m.hex | m.numsep & !m.split)) >= r.end
    }

    /// Bytes of `r` in `` -:,.\`` (the numeric separators).
    pub fn numsep_in(&self, r: Range<usize>) -> usize {
        count_in(self.0, r.start, r.end, |m| m.numsep)
    }

    /// For the 64 bytes from `p` (`left` of them in the region): digits, letters and digits,
    /// digits joined by single separators, and digits the card loop may start at. `before`
    /// is the digit bit of the byte before `p`, `alnum_before` its letter-or-digit bit.
    #[inline]
    fn card_window(&self, p: usize, left: usize, before: u64, alnum_before: u64) -> (u64, u64, u64, u64) {
        let valid = low_bits(left);
        let d = mask_at(self.0, p, |m| m.digit);
        let alnum = mask_at(self.0, p, |m| m.digit | m.alpha);
        let d_next = d >> 1 | mask_at(self.0, p + 64, |m| m.digit) << 63;
        let joined = (d | (mask_at(self.0, p, |m| m.numsep) & (d << 1 | before) & d_next)) & valid;
        let starts = d & !(alnum << 1 | alnum_before) & valid;
        // Only the digit of a joined byte is looked at: `d` needs no `valid`.
        (d & valid, alnum, joined, starts)
    }

    /// Whether `r` holds 13 digits joined only by single separators between two digits,
    /// counted from a digit the card loop may start at (the region's first byte, or a digit
    /// after a byte that is not alphanumeric). The loop consumes digits and single space or
    /// dash separators flanked by digits from such a start, so without this (counted from the
    /// masks, separators being any of `` -:,.\``) it cannot report a card.
    // Inlined into its one caller whatever the size of the walk around it (see
    // `PhraseStream::stretches`).
    #[inline(always)]
    pub fn card_digits_possible(&self, r: Range<usize>) -> bool {
        let mut p = r.start;
        let mut before = if p > 0 { mask_at(self.0, p - 1, |m| m.digit) & 1 } else { 0 };
        let mut alnum_before = 0u64; // region-relative: the first byte may always start
        let mut started = false; // the joined stretch reaching `p` has a start in it
        let mut run_digits = 0u32; // its digits from that start on
        let mut carry = 0u32; // joined bytes directly before `p` (at most 63)
        #[cfg(target_arch = "x86_64")]
        {
            if self.1 && r.len() <= 64 {
                let (d, _, joined, starts) = self.card_window(p, r.len(), before, 0);
                // SAFETY: the walk sets the flag only where the CPU has BMI2.
                return unsafe { started_digits_reach(d, joined, starts, 13) };
            }
        }
        while p < r.end {
            let (d, alnum, joined, starts) = self.card_window(p, r.end - p, before, alnum_before);
            // 13 digits need a joined stretch of at least 13 bytes. When none ends in these 64
            // (counting the stretch carried in) and none runs on past them, the loop below
            // would only end each stretch: skip it (UUIDs and timestamps stop here).
            let longest_ends = runs_ending(joined, carry, 13);
            carry = joined.leading_ones().min(63);
            if longest_ends == 0 && joined >> 63 == 0 {
                (started, run_digits) = (false, 0);
                before = d >> 63;
                alnum_before = alnum >> 63;
                p += 64;
                continue;
            }
            let mut k = 0u32;
            while k < 64 {
                let rest = joined >> k;
                if rest & 1 == 0 {
                    (started, run_digits) = (false, 0);
                    if rest == 0 {
                        break;
                    }
                    k += rest.trailing_zeros();
                    continue;
                }
                let ones = rest.trailing_ones();
                let mut span = low_bits(ones as usize) << k;
                if !started {
                    let st = starts & span;
                    if st != 0 {
                        started = true;
                        span &= u64::MAX << st.trailing_zeros();
                    } else {
                        span = 0;
                    }
                }
                run_digits += (d & span).count_ones();
                if run_digits >= 13 {
                    return true;
                }
                k += ones;
            }
            before = d >> 63;
            alnum_before = alnum >> 63;
            p += 64;
        }
        false
    }

    /// Digits in `r`.
    #[cfg(test)]
    pub fn digits_in(&self, r: Range<usize>) -> usize {
        count_in(self.0, r.start, r.end, |m| m.digit)
    }

    /// Calls `f`, in increasing order, with each `k` in `r` (with `k + 3` in `r`) that starts
    /// two uppercase letters and two digits, the only places an IBAN can start.
    // Inlined into its one caller whatever the size of the walk around it (see
    // `PhraseStream::stretches`).
    #[inline(always)]
    pub fn iban_starts(&self, r: Range<usize>, mut f: impl FnMut(usize)) {
        // Uppercase: letters that are not in the word class (lowercase and separators).
        let upper = |m: &Masks| m.alpha & !m.word;
        let mut p = r.start;
        while p + 4 <= r.end {
            let valid = low_bits(r.end - p - 3);
            let up = mask_at(self.0, p, upper);
            let dg = mask_at(self.0, p, |m| m.digit);
            // The bytes after these 64 matter only for starts in their last three.
            let (up1, dg2, dg3) = if r.end - p <= 64 {
                (up >> 1, dg >> 2, dg >> 3)
            } else {
                let dg_next = mask_at(self.0, p + 64, |m| m.digit);
                (up >> 1 | mask_at(self.0, p + 64, upper) << 63, dg >> 2 | dg_next << 62, dg >> 3 | dg_next << 61)
            };
            let mut starts = up & up1 & dg2 & dg3 & valid;
            while starts != 0 {
                f(p + starts.trailing_zeros() as usize);
                starts &= starts - 1;
            }
            p += 64;
        }
    }

    /// For a [`Region::Words`] `r` (lowercase letters and separators only): whether it has 12
    /// consecutive words of 3 to 8 letters, which any seed phrase needs. Words are read from
    /// the letter mask with bit jumps; same answer as the byte-wise check in `bip39`.
    pub fn twelve_word_shapes(&self, r: Range<usize>) -> bool {
        // Per 64 bytes: word starts, and which of them begin a word of 3 to 8 letters (the
        // letter mask shifted by 1, 2 and 8, borrowing bits from the next 64); then one step
        // per word start.
        let letters = |q: usize| {
            if q >= r.end {
                0
            } else {
                let left = r.end - q;
                self.alnum_at(q) & low_bits(left)
            }
        };
        let mut count = 0;
        let mut carry = 0u64; // the byte before `p` is a letter of this region
        let mut p = r.start;
        while p < r.end {
            let (l, next) = (letters(p), letters(p + 64));
            let shift = |k: u32| l >> k | next << (64 - k);
            let starts = l & !(l << 1 | carry);
            let mut run9 = l;
            for k in 1..9 {
                run9 &= shift(k);
            }
            let good = starts & shift(1) & shift(2) & !run9;
            // The count restarts at every bad word.
            match twelve_in_a_row(count, good, starts & !good) {
                Ok(_) => return true,
                Err(after) => count = after,
            }
            carry = l >> 63;
            p += 64;
        }
        false
    }
}

/// Whether `m` has a run of at least 16 set bits.
#[inline(always)]
fn has_run16(m: u64) -> bool {
    let x = m & (m >> 1);
    let x = x & (x >> 2);
    let x = x & (x >> 4);
    x & (x >> 8) != 0
}

/// Whether `m` has a run of at least 32 set bits.
#[inline]
fn has_run32(m: u64) -> bool {
    let x = m & (m >> 1);
    let x = x & (x >> 2);
    let x = x & (x >> 4);
    let x = x & (x >> 8);
    x & (x >> 16) != 0
}

/// First position at or after `i` whose byte is in the class `pick` selects (or past `hay`).
#[inline]
fn next_in(blocks: &Blocks, mut i: usize, limit: usize, pick: impl Fn(&Masks) -> u64) -> usize {
    while i < limit {
        let m = mask_at(blocks, i, &pick);
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 64;
    }
    i
}

/// How many bytes of `[from, to)` are in the class `pick` selects.
#[inline]
fn count_in(blocks: &Blocks, from: usize, to: usize, pick: impl Fn(&Masks) -> u64) -> usize {
    let mut p = from;
    let mut count = 0;
    while p < to {
        let left = to - p;
        let valid = low_bits(left);
        count += (mask_at(blocks, p, &pick) & valid).count_ones() as usize;
        p += 64;
    }
    count
}

/// First position at or after `i` whose byte is not in the class (at most `hay.len()`).
#[inline]
fn run_end(blocks: &Blocks, n: usize, i: usize, pick: impl Fn(&Masks) -> u64) -> usize {
    // The rest of `i`'s block, then whole blocks: each block's load does not wait on the last
    // one's count, as a step from the end found in the last 64 bytes did (a base64 blob took
    // a load and a count in a chain per 64 bytes).
    let (mut b, o) = (i / 64, i % 64);
    let Some(m) = blocks.get(b) else { return n };
    let ones = (pick(&m) >> o).trailing_ones() as usize;
    if o + ones < 64 {
        return (i + ones).min(n);
    }
    loop {
        b += 1;
        // Blocks past the end are empty; past the last block the run has reached the end.
        let Some(m) = blocks.get(b) else { return n };
        let m = pick(&m);
        if m != u64::MAX {
            return (b * 64 + m.trailing_ones() as usize).min(n);
        }
    }
}

/// The start of the run of the class `pick` selects that reaches `i` (`i` itself if the byte
/// before it is not in the class), going back no further than `floor`: 64 bytes a step from
/// the masks (a byte loop here mispredicted its exit once per call).
#[inline]
fn run_start(blocks: &Blocks, mut i: usize, floor: usize, pick: impl Fn(&Masks) -> u64) -> usize {
    while i > floor {
        let back = (i - floor).min(64);
        // The `back` bytes before `i`, the last of them at the top bit.
        let before = mask_at(blocks, i - back, &pick) << (64 - back);
        let ones = before.leading_ones() as usize;
        i -= ones;
        if ones < back {
            break;
        }
    }
    i
}

/// Bits `k` of block `m` where a key-sized word ends: a maximal run of letters and digits of
/// exactly 34, 51 or 52 bytes (with the block before, and the next block's first byte; bytes
/// outside the slice are in no run). The run ends at k (the next byte is no letter or digit),
/// the `w` bytes to k are letters or digits (run doubling over the two blocks), and the byte
/// `w` back is not. Every such word lies in a token run and in one segment of it (the bytes
/// that split a run are no letters or digits).
#[inline(always)]
fn key_word_ends(prev: &Masks, m: &Masks, next: &Masks) -> u64 {
    let alnum = |m: &Masks| m.alpha | m.digit;
    let (x, px) = (alnum(m), alnum(prev));
    let ends = x & !(x >> 1 | alnum(next) << 63);
    let y1 = u128::from(x) << 64 | u128::from(px);
    let y2 = y1 & y1 << 1;
    let y4 = y2 & y2 << 2;
    let y8 = y4 & y4 << 4;
    let y16 = y8 & y8 << 8;
    let y32 = y16 & y16 << 16;
    let r34 = y32 & y2 << 32;
    let r51 = y32 & y16 << 32 & y2 << 48 & y1 << 50;
    // A run of 51 or more with a separator 51 or 52 bytes back is one of 51 or 52.
    let sep_back = |w: u32| !(y1 << w);
    let exact = (r34 & sep_back(34)) | (r51 & (sep_back(51) | sep_back(52)));
    ends & (exact >> 64) as u64
}

/// [`key_word_ends`] of every block but the last (with AVX-512 eight blocks at a time).
fn all_key_word_ends(blocks: &Blocks) -> Vec<u64> {
    let mut out = Vec::with_capacity(blocks.len() - 1);
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_eight_block_features() {
            // SAFETY: the features were just checked.
            unsafe { simd::key_word_ends_avx512(blocks, &mut out) };
        }
    }
    one_block_tests_from(blocks, &mut out, key_word_ends);
    out
}

/// Appends `test(before, block, after)` of blocks `out.len()..` to all but the last block:
/// the one-block form of a test the passes of eight blocks also make ([`trigger_ends`],
/// [`key_word_ends`]), for the blocks they leave and where AVX-512 is missing.
fn one_block_tests_from(blocks: &Blocks, out: &mut Vec<u64>, test: impl Fn(&Masks, &Masks, &Masks) -> u64) {
    for b in out.len()..blocks.len() - 1 {
        out.push(test(&blocks.before(b), &blocks.at(b), &blocks.at(b + 1)));
    }
}

/// Reports the key-sized words ending at the bits of `ends` in the block at `base`, each
/// measured back to the byte before it that is no letter or digit.
#[cold]
fn key_words_ending(blocks: &Blocks, base: usize, mut ends: u64, f: &mut impl FnMut(Region)) {
    let alnum = |m: &Masks| m.alpha | m.digit;
    let prev = if base == 0 { 0 } else { alnum(&blocks.at(base / 64 - 1)) };
    let seps = !(u128::from(alnum(&blocks.at(base / 64))) << 64 | u128::from(prev));
    while ends != 0 {
        let k = ends.trailing_zeros();
        // The last separator before k (there is one, 34 to 52 bytes back).
        let len = (k + 64 - (127 - (seps & u128::MAX >> (63 - k)).leading_zeros())) as usize;
        let end = base + k as usize + 1;
        f(Region::KeyWord(end - len..end));
        ends &= ends - 1;
    }
}

/// The token pass, streamed block by block: a run is reported where it first reaches
/// [`MIN_TOKEN`] bytes, whole (its end looked up ahead in the masks). Most runs (words,
/// numbers, JSON keys) are shorter and cost nothing each; a block costs a few shifts, with a
/// branch only where a long run begins (before, each block with a long run called a search
/// that backed up to the run's start and walked forward to it, two loops whose exits
/// mispredicted on every UUID and link).
#[derive(Default)]
struct TokenStream {
    /// Token bytes directly before the block (at most 63).
    carry: u32,
    /// Bit 63: the run open at the end of the last block had reached `MIN_TOKEN` bytes.
    long_before: u64,
}

impl TokenStream {
    #[inline(always)]
    fn block(&mut self, blocks: &Blocks, n: usize, base: usize, token: u64, f: &mut impl FnMut(Region)) {
        if token == u64::MAX && self.carry == 63 {
            // Inside a long run (base64, `/bytes`): nothing starts here.
            self.long_before = u64::MAX;
            return;
        }
        let min = MIN_TOKEN as u32;
        if self.carry + token.trailing_ones() < min && !has_run16(token) {
            // No long run here (most blocks of prose and markup).
            (self.carry, self.long_before) = (token.leading_ones(), 0);
            return;
        }
        // Bit k: the `MIN_TOKEN` bytes ending at k are token bytes; a run's first such bit is
        // where it becomes long.
        let long = runs_ending(token, 0, min) | carried_runs(token, self.carry, min);
        let mut firsts = long & !(long << 1 | self.long_before >> 63);
        self.carry = token.leading_ones().min(63);
        self.long_before = long;
        while firsts != 0 {
            let k = base + firsts.trailing_zeros() as usize;
            let end = run_end(blocks, n, k, |m| m.token);
            f(Region::Token(k + 1 - MIN_TOKEN..end));
            firsts &= firsts - 1;
        }
    }
}

/// Calls `f` with each maximal run of at least `min` (1..=64) bytes of the class `pick`
/// selects that starts in `[from, to)` (`from` being at a run start or outside any run);
/// returns how far it looked. Each step looks at the 64 bytes from the cursor and jumps
/// straight to where `min` class bytes in a row end, so short runs cost nothing each.
#[inline]
fn long_runs(blocks: &Blocks, n: usize, from: usize, to: usize, min: usize, pick: impl Fn(&Masks) -> u64, mut f: impl FnMut(Range<usize>)) -> usize {
    let mut i = from;
    while i < to {
        let m = mask_at(blocks, i, &pick);
        let long = runs_ending(m, 0, min as u32);
        if long == 0 {
            // No long run completes in these 64 bytes; one may begin in their unfinished tail.
            i += 64 - m.leading_ones() as usize;
            continue;
        }
        // The run holding the first long stretch starts after the last byte before it that
        // is not in the class.
        let k = long.trailing_zeros() as usize + 1 - min;
        let before = !m & ((1u64 << k) - 1);
        let start = if before == 0 { i } else { i + 64 - before.leading_zeros() as usize };
        if start >= to {
            break;
        }
        let end = run_end(blocks, n, start, &pick);
        f(start..end);
        i = end;
    }
    i
}

/// Bits `k` of `x` where `x` has `len` (1..=64) set bits ending at `k`, counting the `carry`
/// set bits that directly precede bit 0 (`carry` < 64).
#[inline]
fn runs_ending(x: u64, carry: u32, len: u32) -> u64 {
    // Doubling: after each step bit k says the `w` bits ending at k are all set (bits below 0
    // count as clear). On 64 bits: with the carry below it in a `u128`, each step cost two
    // more instructions.
    let mut acc = x;
    let mut w = 1;
    while w * 2 <= len {
        acc &= acc << w;
        w *= 2;
    }
    if w < len {
        acc &= acc << (len - w);
    }
    if carry > 0 {
        acc |= carried_runs(x, carry, len);
    }
    acc
}

/// The bits of [`runs_ending`] that the carry makes: bits `k` within the trailing ones of `x`
/// where `carry + k + 1 >= len`. Without a branch; with no carry, the bits it gives are runs
/// within `x`, which [`runs_ending`] finds anyway.
#[inline]
fn carried_runs(x: u64, carry: u32, len: u32) -> u64 {
    low_bits(x.trailing_ones() as usize) & (u64::MAX << len.saturating_sub(carry + 1))
}

/// How far the numeric region that starts at the digit `i` extends: `(stop, digits, last)`,
/// where `stop` is the first byte not taken, `digits` the digits before it and `last` the
/// last of them. A region is digits, letters and `` -:,.\`` with no more than six bytes
/// between digits; contiguous alphanumerics longer than the longest IBAN (34) stop it, as
/// they are a token (base64, hashes), which the token pass owns.
fn numeric_extent(blocks: &Blocks, i: usize) -> (usize, usize, usize) {
    // Most regions (UUIDs, timestamps, most numbers) stop within the 64 bytes from four bytes
    // before `i`: one load of each mask there, and no loop, whose exit mispredicted. Letters
    // and digits before `i` do not count; no run of non-digits crosses `i`, a digit.
    let p = i.saturating_sub(4);
    let from = !low_bits(i - p);
    let digit = mask_at(blocks, p, |m| m.digit);
    let stop = region_stops(digit, mask_at(blocks, p, |m| m.alpha | m.digit) & from, mask_at(blocks, p, |m| m.numsep), 0, 0) & from;
    if stop != 0 {
        let taken = digit & from & low_bits(stop.trailing_zeros() as usize);
        // `i` is a digit before the stop, so `taken` is not empty.
        return (p + stop.trailing_zeros() as usize, taken.count_ones() as usize, p + 63 - taken.leading_zeros() as usize);
    }
    let mut p = i;
    let mut count = 0usize;
    let mut last = i;
    let mut alnum_carry = 0u32; // alphanumerics directly before `p`, from `i` on
    let mut gap_carry = 0u32; // non-digits directly before `p`, after the last digit
    loop {
        let digit = mask_at(blocks, p, |m| m.digit);
        let alnum = mask_at(blocks, p, |m| m.alpha | m.digit);
        let stop = region_stops(digit, alnum, mask_at(blocks, p, |m| m.numsep), gap_carry, alnum_carry);
        let (take, stop_at) = if stop != 0 {
            let k = stop.trailing_zeros();
            ((1u64 << k) - 1, Some(p + k as usize))
        } else {
            (u64::MAX, None)
        };
        let d = digit & take;
        count += d.count_ones() as usize;
        if d != 0 {
            last = p + 63 - d.leading_zeros() as usize;
        }
        if let Some(s) = stop_at {
            return (s, count, last);
        }
        // No stop in this block, so both carries are shorter than their limits.
        alnum_carry = alnum.leading_ones();
        gap_carry = (!digit).leading_ones();
        p += 64;
    }
}

/// The bytes that stop a numeric region among 64 bytes with these masks: bytes outside its
/// set (letters, digits and numeric separators), the seventh non-digit in a row and the 35th
/// letter or digit in a row, counting the `gap` non-digits and `alnum_run` letters or digits
/// directly before them.
#[inline(always)]
fn region_stops(digit: u64, alnum: u64, numsep: u64, gap: u32, alnum_run: u32) -> u64 {
    !(alnum | numsep) | runs_ending(!digit, gap, 7) | runs_ending(alnum, alnum_run, 35)
}

/// The breaks of a block with masks `m` (its bytes in `valid`) after `gap` non-digits (at
/// most 63): bytes outside a region's set and the seventh non-digit in a row, where every
/// region stops whatever digit it was taken from (see [`NumericStream`]).
#[inline(always)]
fn stretch_breaks(m: &Masks, valid: u64, gap: u32) -> u64 {
    let digit = m.digit & valid;
    // The carry without a branch: it changes from block to block, and the branch in
    // `runs_ending` mispredicted.
    let gaps = runs_ending(!digit, 0, 7) | carried_runs(!digit, gap, 7);
    // Bytes past the end are outside the allowed set: breaks.
    !((m.alpha | m.digit | m.numsep) & valid) | gaps
}

/// The numeric pass, streamed block by block with carries.
///
/// A region taken from a digit (see [`numeric_extent`]) stops at a byte outside its set and at
/// the seventh non-digit in a row. These *breaks* do not depend on where the region started,
/// so every region lies within one *stretch*, a run of bytes between breaks, and holds at most
/// that stretch's digits. A stretch with fewer than [`MIN_DIGITS`] digits has no region
/// to report; that is most of base64, whose digits are sparse and whose `+` and `/` are
/// breaks, and all of JSON's short values. So regions are measured only from the first digit
/// of a stretch that reaches that many digits, which this finds from the bitmasks: the count
/// of the stretch still open at a block's end is carried into the next block.
///
/// Measuring one region stops where the next begins (a break, or 35 letters and digits in a
/// row); bytes before that point count as breaks from then on, so the next region is measured
/// from the first digit after it, as a byte loop would. Every region with enough digits is
/// measured, wherever the blocks fall, and reported if it holds a trigger (see
/// [`worth_consuming`]).
#[derive(Default)]
struct NumericStream {
    /// Non-digits directly before the block (at most 63).
    gap: u32,
    /// Digits of the stretch open at the block's start (at most 63), and the first of them.
    open: u32,
    open_first: usize,
    /// Regions have been measured up to here.
    done: usize,
    /// The last block went through [`NumericStream::block`], so the fields above hold for
    /// this one; else [`NumericStream::resync`] sets them first.
    live: bool,
}

/// The walk's inputs: [`block_masks`], and [`trigger_ends`] of every block but the last
/// empty one, with the block before (none before the first) and the one after. With AVX-512
/// the test runs on eight blocks at a time (see `simd::trigger_ends_avx512`); a block's own
/// test took a fifth of a request scan.
fn masks_and_triggers(hay: &[u8]) -> (Blocks, Vec<u64>) {
    let blocks = block_masks(hay);
    let mut triggers = Vec::with_capacity(blocks.len() - 1);
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_eight_block_features() {
            // SAFETY: the features were just checked.
            unsafe { simd::trigger_ends_avx512(&blocks, &mut triggers) };
        }
    }
    one_block_tests_from(&blocks, &mut triggers, trigger_ends);
    (blocks, triggers)
}

/// The blocks the walk must go through, a bit per block (bit `b % 64` of word `b / 64`);
/// the others are quiet, and the walk skips them (most blocks of base64 and many of prose).
/// The token pass and the other streams have a map each: the token pass goes through the
/// blocks of `tokens` on its own, and the rest of the walk through those of `others`, so a
/// block of JSON or HTML whose only work is a token run (a UUID, a link's path) costs no test
/// of the other streams, and one with other work no test of the token stream.
///
/// The token pass needs no state: where a long run begins in a block follows from its token
/// mask and the one before ([`token_firsts`], computed here for every block, eight at a time
/// with AVX-512), and `tokens` marks the blocks where one does. A block is quiet for the
/// others when:
/// - no trigger ends in it or in the blocks next to it, so the numeric stream does not run
///   there unless a stretch is open (the walk checks that);
/// - no key-sized word ends in it (when asked for), and it has no byte of 0x80 or above;
/// - when words are asked for, it fails [`long_word_run`], or [`PhraseStream`]'s count of
///   long words cannot reach twelve in it: it and the block before each have a break (a
///   short word or a byte outside the class), so the count it starts with is the last
///   block's words after its last break, and the count [`PhraseStream::restart`] gives the
///   next busy block is the one the stream would have carried. Most blocks of prose are
///   quiet by this (its short words and punctuation), where every one of them failed the
///   run test.
///
/// With AVX-512 both run on eight blocks at a time. Elsewhere, and for the last few blocks,
/// `firsts` and `tokens` come from [`token_firsts`] one block at a time and every block is
/// busy for the others. The last block of the slice always is busy for the others.
struct Busy {
    tokens: Vec<u64>,
    /// Per block, where a long token run first reaches [`MIN_TOKEN`] bytes
    /// ([`token_firsts`]); `tokens` marks the blocks where it is not zero.
    firsts: Vec<u64>,
    others: Vec<u64>,
}

impl Busy {
    #[cfg(test)]
    fn is_quiet(&self, b: usize) -> bool {
        (self.tokens[b / 64] | self.others[b / 64]) >> (b % 64) & 1 == 0
    }
}

fn busy_blocks(n: usize, blocks: &Blocks, triggers: &[u64], key_ends: &[u64], words: bool) -> Busy {
    let count = n.div_ceil(64);
    let words_of_bits = count.div_ceil(64).max(1);
    let mut busy = Busy { tokens: vec![0; words_of_bits], firsts: vec![0; blocks.len()], others: vec![u64::MAX; words_of_bits] };
    let mut covered = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if simd::has_eight_block_features() {
            // SAFETY: the features were just checked.
            covered = unsafe { simd::busy_blocks_avx512(blocks, triggers, key_ends, words, &mut busy) };
        }
    }
    for b in covered.min(count)..count {
        let firsts = token_firsts(blocks.before(b).token, blocks.at(b).token);
        busy.firsts[b] = firsts;
        busy.tokens[b / 64] |= u64::from(firsts != 0) << (b % 64);
    }
    if count > 0 {
        busy.others[(count - 1) / 64] |= 1 << ((count - 1) % 64);
    }
    busy
}

/// Where in a block whose token mask is `token` a run first reaches [`MIN_TOKEN`] bytes (bit
/// `k`: the run's `MIN_TOKEN` bytes end at `k`), with `prev` the token mask of the block
/// before: the bits [`TokenStream::block`] finds with the state it carries into the block
/// (its carry is the token bytes that end `prev`, and a run of 64 there is long).
#[inline]
fn token_firsts(prev: u64, token: u64) -> u64 {
    let before = prev.leading_ones();
    let min = MIN_TOKEN as u32;
    let long = runs_ending(token, 0, min) | carried_runs(token, before.min(63), min);
    long & !(long << 1 | u64::from(before >= min))
}

/// The first busy block at or after `b` (the slice's last block is busy).
#[inline]
fn next_busy(busy: &[u64], b: usize) -> usize {
    let mut w = b / 64;
    let mut bits = busy[w] & (u64::MAX << (b % 64));
    while bits == 0 {
        w += 1;
        bits = busy[w];
    }
    w * 64 + bits.trailing_zeros() as usize
}

/// Whether a numeric region holds what any of its consumers needs in it: whether a
/// trigger ends in it (see [`trigger_ends`]).
fn worth_consuming(blocks: &Blocks, r: Range<usize>) -> bool {
    (r.start / 64..r.end.div_ceil(64)).any(|b| {
        let p = b * 64;
        trigger_ends(&blocks.before(b), &blocks.at(b), &blocks.at(b + 1)) & !low_bits(r.start.saturating_sub(p)) & low_bits(r.end - p) != 0
    })
}

/// Where the numeric regions' consumers may find something in block `m` (after `prev`,
/// before `next`): the bytes where one of these ends, each a necessary condition of one
/// consumer, from the class masks:
/// - a card (the scanner's card loop) is 13 digits joined by single separators: 13 bytes in
///   a row of digits and separators that follow a digit;
/// - an IBAN starts with two capitals and two digits after a byte that is no letter or digit
///   (or at the start), as the scanner's IBAN loop requires; in base64, two capitals and two
///   digits come about once in four blocks, after a `+` or `/` 32 times less often;
/// - separated hex (`hex_separated_decode` on a region) is eight pairs of exactly two hex
///   digits, each pair but the last followed by a separator. Only the first pair may lie in
///   the region's four bytes before its first digit (and be followed by a newline there), so
///   pairs three to seven are each followed by a separator of the set `` :-,\`` or a space,
///   and start 3 to 8 bytes after the one before: two hex digits, then at most six
///   non-digits, as a seventh would have stopped the region. So there are five separators
///   in a chain, each 3 to 8 bytes after the last, that follow two hex digits after a byte
///   that is not one.
///
/// JSON's UUIDs and timestamps have none of these. Each is found where it ends, from the
/// bytes before it too (a region reports it if it ends inside), and spans at most 40 bytes,
/// so this block and the last hold it. In a block without digits (most of prose) only a
/// chain can end, and it matters only in its last four bytes and before a digit in the next
/// block's first four: a region holds a trigger end at most four bytes before its first
/// digit, and holds no 64 bytes without a digit.
#[inline(always)]
fn trigger_ends(prev: &Masks, m: &Masks, next: &Masks) -> u64 {
    // `cur` shifted up by `k` (1..=63), with the previous 64 bytes' top bits below it.
    let back = |cur: u64, prev: u64, k: u32| cur << k | prev >> (64 - k);
    // Separators after exactly two hex digits (the last block's first three bytes count as
    // having none before, which no chain ending here reaches back to).
    let pairs = |m: &Masks, hex_before: u64| m.numsep & back(m.hex, hex_before, 1) & back(m.hex, hex_before, 2) & !back(m.hex, hex_before, 3);
    // Five links within 33 bytes: five pairs here and in the last 32 bytes first (most of
    // JSON and prose has fewer).
    let chain = |before: u64, here: u64| if here != 0 && here.count_ones() + (before >> 32).count_ones() >= 5 { hex_chain_ends(before, here) } else { 0 };
    let (digit, upper) = (m.digit, m.alpha & !m.word);
    if digit | prev.digit >> 63 == 0 {
        return if next.digit & 0xf == 0 { 0 } else { chain(pairs(prev, 0), pairs(m, prev.hex)) & !low_bits(60) };
    }
    // Each test first asks for what it needs, which most blocks lack: 13 joined digits with
    // those before, two capitals in a row, five pairs.
    let joined = digit | (m.numsep & back(digit, prev.digit, 1));
    let joined_before = (prev.digit | (prev.numsep & prev.digit << 1)).leading_ones().min(63);
    let card = if joined.count_ones() + joined_before >= 13 { runs_ending(joined, 0, 13) | carried_runs(joined, joined_before, 13) } else { 0 };
    let prev_upper = prev.alpha & !prev.word;
    let capitals = back(upper, prev_upper, 2) & back(upper, prev_upper, 3);
    let iban = if capitals != 0 { digit & back(digit, prev.digit, 1) & capitals & !back(m.alpha | m.digit, prev.alpha | prev.digit, 4) } else { 0 };
    card | iban | chain(pairs(prev, 0), pairs(m, prev.hex))
}

/// The ends among `pairs` of chains of five pairs, each 3 to 8 bytes after the one before
/// (with the last 64 bytes' pairs `before`: a chain spans at most 32 bytes).
#[cold]
fn hex_chain_ends(before: u64, pairs: u64) -> u64 {
    let all = u128::from(before) | u128::from(pairs) << 64;
    // Bits with a bit of `c` 3 to 8 bytes before: spread over 0..=5, then shifted.
    let spread = |c: u128| {
        let a = c | c << 1;
        let b = a | a << 2;
        (b | a << 4) << 3
    };
    let mut chain = all;
    for _ in 0..4 {
        chain = all & spread(chain);
    }
    (chain >> 64) as u64
}

#[cfg(test)]
thread_local! {
    /// Set by tests that compare the walk with its byte-at-a-time reference, which reports
    /// every region with enough digits.
    static UNGATED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn ungated() -> bool {
    UNGATED.with(|u| u.get())
}

#[cfg(test)]
thread_local! {
    /// Cleared by the test that compares the walk with and without skipping quiet blocks.
    static SKIP_QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether the walk skips quiet blocks (see [`busy_blocks`]): not when ungated, where the
/// numeric stream runs on every block.
#[cfg(test)]
fn skip_quiet() -> bool {
    SKIP_QUIET.with(|u| u.get()) && !ungated()
}

#[cfg(not(test))]
#[inline(always)]
fn skip_quiet() -> bool {
    true
}

#[cfg(not(test))]
#[inline(always)]
fn ungated() -> bool {
    false
}

/// Whether a trigger of `ends` (the trigger ends of the blocks before, at and after `base`)
/// lies in `r`, or `None` if `r` reaches outside those blocks.
#[inline(always)]
fn trigger_in(ends: [u64; 3], base: usize, r: &Range<usize>) -> Option<bool> {
    if r.start + 64 < base || r.end > base + 128 {
        return None;
    }
    // Offsets from 64 bytes before `base`.
    let (lo, hi) = (r.start + 64 - base, r.end + 64 - base);
    let bits = |i: usize| ends[i] & !low_bits(lo.saturating_sub(64 * i)) & low_bits(hi.saturating_sub(64 * i));
    Some(bits(0) | bits(1) | bits(2) != 0)
}

/// [`dense_first`]'s answer for a stretch that began in an earlier block.
const CARRIED: u32 = 64;

impl NumericStream {
    /// Whether a stretch with digits is open at the end of the last block, which later
    /// blocks can make dense.
    #[inline(always)]
    fn carries(&self) -> bool {
        self.live && self.open > 0
    }

    /// Sets the carried state for the block at `base` from the blocks before it, after a pause
    /// (see the walk): the stretch open there begins after the last break, or at `done` if
    /// the last region measured stopped inside it.
    fn resync(&mut self, blocks: &Blocks, base: usize) {
        self.live = true;
        self.open = 0;
        if base == 0 {
            return;
        }
        self.gap = blocks.at(base / 64 - 1).digit.leading_zeros().min(63);
        if self.done >= base {
            return;
        }
        let mut j = base / 64;
        let from = loop {
            j -= 1;
            let gap = if j == 0 { 0 } else { blocks.at(j - 1).digit.leading_zeros().min(63) };
            let mut breaks = stretch_breaks(&blocks.at(j), u64::MAX, gap);
            if j == self.done / 64 {
                breaks &= !low_bits(self.done % 64);
            }
            if breaks != 0 {
                break j * 64 + 64 - breaks.leading_zeros() as usize;
            }
            if j == self.done / 64 {
                break self.done;
            }
        };
        self.open = count_in(blocks, from, base, |m| m.digit).min(63) as u32;
        self.open_first = next_in(blocks, from, base, |m| m.digit);
    }

    /// Counts the block at `base`, whose masks are `m`, and measures the regions that become
    /// dense in it; `ends` are the trigger ends of the blocks before, at and after it.
    #[inline(always)]
    fn block<const PEXT: bool>(&mut self, blocks: &Blocks, base: usize, m: &Masks, valid: u64, ends: [u64; 3], f: &mut impl FnMut(Region)) {
        let min = MIN_DIGITS as u32;
        let digit = m.digit & valid;
        if digit == 0 && self.open == 0 {
            // The common block of prose and markup: no stretch to count.
            self.gap = 63;
            return;
        }
        let breaks = stretch_breaks(m, valid, self.gap);
        self.gap = digit.leading_zeros().min(63);
        loop {
            let (d, brk, open) = if self.done >= base {
                let measured = low_bits(self.done - base);
                (digit & !measured, breaks | measured, 0)
            } else {
                (digit, breaks, self.open)
            };
            // Most blocks of prose and markup have too few digits to finish any stretch.
            let dense = if open + d.count_ones() < min { None } else { dense_first::<PEXT>(d, brk, open, min) };
            let Some(k) = dense else {
                // Carry the stretch open at the block's end.
                if brk != 0 {
                    let after = d & !low_bits(64 - brk.leading_zeros() as usize);
                    self.open = after.count_ones();
                    self.open_first = base + after.trailing_zeros() as usize;
                } else {
                    if open == 0 {
                        self.open_first = base + d.trailing_zeros() as usize;
                    }
                    self.open = (open + d.count_ones()).min(63);
                }
                return;
            };
            let first = if k == CARRIED { self.open_first } else { base + k as usize };
            let (stop, count, last) = numeric_extent(blocks, first);
            let r = first.saturating_sub(4)..last + 1;
            if count >= min as usize && (ungated() || trigger_in(ends, base, &r).unwrap_or_else(|| worth_consuming(blocks, r.clone()))) {
                f(Region::Numeric(r));
            }
            // `first` is at or after `done`, so this moves on; the last term keeps it so.
            self.done = stop.max(first + 1).max(self.done + 1);
            if self.done < base {
                // The region stopped inside the carried stretch, before this block (35 letters
                // and digits in a row): the rest of that stretch is carried in instead.
                self.open = count_in(blocks, self.done, base, |m| m.digit).min(63) as u32;
                self.open_first = next_in(blocks, self.done, base, |m| m.digit);
            }
        }
    }
}

/// The first digit of the first stretch of a block with at least `min` digits, counting the
/// `open` digits (< 64) of a stretch carried in: its bit, or [`CARRIED`] for the carried
/// stretch. `d` has the block's digits and `brk` its breaks (disjoint).
#[inline(always)]
fn dense_first<const PEXT: bool>(d: u64, brk: u64, open: u32, min: u32) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        if PEXT {
            // SAFETY: `PEXT` is only set by `walk_bmi2`, which requires BMI2.
            return unsafe { dense_first_pext(d, brk, open, min) };
        }
    }
    dense_first_loop(d, brk, open, min)
}

/// [`dense_first`] without branches: `pext` packs the block's digits and breaks into a row in
/// their order, where a stretch is a run of clear bits, so [`runs_ending`] finds the first
/// stretch with `min` digits, carry included; `pdep` maps its start back to a byte.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "bmi2")]
unsafe fn dense_first_pext(d: u64, brk: u64, open: u32, min: u32) -> Option<u32> {
    let (packed, row) = pack_stretches(d, brk);
    let dense = runs_ending(!packed & row, open, min);
    if dense == 0 {
        return None;
    }
    let before = packed & low_bits(dense.trailing_zeros() as usize);
    if before == 0 && open > 0 {
        return Some(CARRIED);
    }
    let k = if before == 0 { 0 } else { 64 - before.leading_zeros() };
    Some(std::arch::x86_64::_pdep_u64(1 << k, d | brk).trailing_zeros())
}

/// `digits` and `breaks` (disjoint) packed into the low bits in their order, one bit each:
/// the packed breaks (bit set), so that a stretch's digits are a run of clear bits, and the
/// bits the row fills.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "bmi2")]
unsafe fn pack_stretches(digits: u64, breaks: u64) -> (u64, u64) {
    let both = digits | breaks;
    (std::arch::x86_64::_pext_u64(breaks, both), low_bits(both.count_ones() as usize))
}

/// Whether some run of `joined` has `min` digits (`d`) from its first start on (`starts`
/// are digits of `joined`), without a branch per run: adding the starts sets every bit of a
/// run from its first start on (the carry ripples from a start to the run's end), and `pext`
/// packs those digits and the bytes outside `joined` into a row where a run's counted digits
/// are clear bits in a row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn started_digits_reach(d: u64, joined: u64, starts: u64, min: u32) -> bool {
    let from_start = (joined & (joined.wrapping_add(starts) ^ joined)) | starts;
    let (packed, row) = pack_stretches(d & from_start, !joined);
    runs_ending(!packed & row, 0, min) != 0
}

/// [`dense_first`] one stretch at a time.
#[inline]
fn dense_first_loop(d: u64, brk: u64, open: u32, min: u32) -> Option<u32> {
    if open + d.count_ones() < min {
        return None;
    }
    let (mut count, mut first, mut from, mut rest) = (open, CARRIED, 0, brk);
    loop {
        let end = if rest == 0 { 64 } else { rest.trailing_zeros() as usize };
        let digits = d & low_bits(end) & !low_bits(from);
        if count == 0 && digits != 0 {
            first = digits.trailing_zeros();
        }
        count += digits.count_ones();
        if count >= min {
            return Some(first);
        }
        if rest == 0 {
            return None;
        }
        (count, from) = (0, end + 1);
        rest &= rest - 1;
    }
}

/// Words in a row across blocks, for the seed phrase checks: the count after a block's last
/// break, from the `count` carried in, the block's counted word starts `words` and its
/// `breaks` (positions that end a row; disjoint from `words`).
#[inline(always)]
fn row_after(count: u32, words: u64, breaks: u64) -> u32 {
    if breaks == 0 { count + words.count_ones() } else { (words & !low_bits(64 - breaks.leading_zeros() as usize)).count_ones() }
}

/// As [`row_after`], but first whether a row reaches twelve words in this block: `Ok` with
/// the bit of a word of the first row that does, else `Err` with the count after the block.
/// One step per break, and none for the usual block that cannot complete twelve.
#[inline]
fn twelve_in_a_row(count: u32, words: u64, breaks: u64) -> Result<u32, u32> {
    if count + words.count_ones() < 12 {
        return Err(row_after(count, words, breaks));
    }
    let (mut count, mut from, mut rest) = (count, 0usize, breaks);
    loop {
        let to = if rest == 0 { 64 } else { rest.trailing_zeros() as usize };
        let here = words & low_bits(to) & !low_bits(from);
        if count + here.count_ones() >= 12 {
            return Ok(here.trailing_zeros());
        }
        if rest == 0 {
            return Err(count + here.count_ones());
        }
        (count, from) = (0, to + 1);
        rest &= rest - 1;
    }
}

/// Whether a run of [`MIN_WORDS_REGION`] word-class bytes crosses from `prev` into `m`, or
/// one of 32 lies in `m` (bytes past the end of the slice are in no class): every run of
/// [`MIN_WORDS_REGION`] has a block that passes, and so does each block it covers after it.
#[inline(always)]
fn long_word_run(prev: &Masks, m: &Masks) -> bool {
    prev.word.leading_ones() + m.word.trailing_ones() >= MIN_WORDS_REGION as u32 || has_run32(m.word)
}

/// Finds the word regions that may hold a seed phrase, one block at a time, instead of every
/// run of the word class of [`MIN_WORDS_REGION`] bytes (most of prose; handing each on cost
/// two thirds of a prose scan). A phrase is twelve words of three to eight letters with only
/// separators between (see [`Classes::twelve_word_shapes`]); the stream counts words of at
/// least three letters since the last shorter word or byte outside the class, so it counts
/// at least as many as that check in every stretch, and a region is reported where the count
/// reaches twelve: every region the check passes, and a few it does not (long words). In
/// ordinary prose the short words (`to`, `of`, `a`) and punctuation keep the count low.
///
/// Regions reported are whole runs of the class (as before), so the streaming layer's
/// quiet point (`stream::quiet_point`) still never cuts one that can hold a phrase. A run
/// without twelve such words in a row is no longer reported, and a later window that starts
/// inside it finds no phrase starting after the cut either (that phrase would be twelve such
/// words of the run). The run that reaches the end of the slice, which the next bytes may
/// extend, is reported as before ([`PhraseStream::finish`]).
#[derive(Default)]
struct PhraseStream {
    /// Words of three or more letters since the last break, before this block (< 12).
    count: u32,
    /// Bit 0: the byte before this block is a lowercase letter.
    letter_before: u64,
    /// Regions have been reported up to here.
    done: usize,
}

impl PhraseStream {
    #[inline(always)]
    fn block(&mut self, blocks: &Blocks, n: usize, base: usize, m: &Masks, valid: u64, f: &mut impl FnMut(Region)) {
        // Lowercase letters are the letters of the word class; the next block (the walk pads
        // the blocks) tells how the words at this block's end go on.
        let letters = m.word & m.alpha & valid;
        let next = blocks.at(base / 64 + 1);
        let next_letters = next.word & next.alpha;
        let starts = letters & !(letters << 1 | self.letter_before);
        self.letter_before = letters >> 63;
        let long = starts & (letters >> 1 | next_letters << 63) & (letters >> 2 | next_letters << 62);
        let breaks = (starts & !long) | (!m.word & valid);
        // No stretch reaches twelve if neither the first (with the count carried in) nor all
        // the words after its end do: most blocks of prose, whose sentences end in a break.
        let first = long & low_bits(breaks.trailing_zeros() as usize);
        if self.count + first.count_ones() < 12 && (long & !first).count_ones() < 12 && self.done <= base {
            self.count = row_after(self.count, long, breaks);
        } else {
            self.stretches(blocks, n, base, long, breaks, f);
        }
    }

    /// The rare blocks where the count may reach twelve, or a reported region ends: out of
    /// line, so that the walk's loop stays small (when it grew, LLVM stopped inlining other
    /// class-mask helpers into the region callbacks, and JSON scans lost 5%).
    #[inline(never)]
    fn stretches(&mut self, blocks: &Blocks, n: usize, base: usize, mut long: u64, mut breaks: u64, f: &mut impl FnMut(Region)) {
        loop {
            if self.done > base {
                // Inside a reported region: its bytes count as breaks.
                let reported = low_bits(self.done - base);
                (breaks, long) = (breaks | reported, long & !reported);
            }
            let k = match twelve_in_a_row(self.count, long, breaks) {
                Ok(k) => k,
                Err(after) => {
                    self.count = after;
                    return;
                }
            };
            // A word of the stretch: report the run of the class around it, once.
            let at = base + k as usize;
            let start = run_start(blocks, at, self.done, |m| m.word);
            let end = run_end(blocks, n, at, |m| m.word);
            f(Region::Words(start..end));
            (self.done, self.count) = (end, 0);
            if end >= base + 64 {
                return;
            }
        }
    }

    /// Starts the count over at the block before `base`, which failed [`long_word_run`]: a
    /// run reaching into it from further back is shorter than a phrase and ends in it, so
    /// only its own words can count, and none of its stretches can reach twelve.
    #[inline(never)]
    fn restart(&mut self, blocks: &Blocks, n: usize, base: usize, f: &mut impl FnMut(Region)) {
        (self.count, self.letter_before) = (0, 0);
        if base >= 64 {
            self.block(blocks, n, base - 64, &blocks.at(base / 64 - 1), u64::MAX, f);
        }
    }

    /// Reports the run of the class that reaches the end of the slice (`n` bytes), if it is
    /// long enough and was not reported: the next bytes may make it a phrase, and the
    /// streaming layer must see it. (Any other run ends at a byte outside the class, and more
    /// bytes cannot change it.)
    fn finish(&self, n: usize, blocks: &Blocks, f: &mut impl FnMut(Region)) {
        if self.done >= n {
            return;
        }
        let start = run_start(blocks, n, self.done, |m| m.word);
        if n - start >= MIN_WORDS_REGION {
            f(Region::Words(start..n));
        }
    }
}

fn scan_words(hay: &[u8], blocks: &Blocks, from: usize, floor: usize, to: usize, f: &mut impl FnMut(Region)) -> usize {
    let i = run_start(blocks, from, floor, |m| m.word);
    long_runs(blocks, hay.len(), i, to, MIN_WORDS_REGION, |m| m.word, |r| f(Region::Words(r))).max(to)
}

/// The word around the non-ASCII byte at `i`, bounded, joined with neighbouring words that also
/// carry non-ASCII bytes: invisible characters are often placed between words too.
fn non_ascii_extent(hay: &[u8], i: usize) -> (usize, usize) {
    let mut s = i;
    while s > 0 && !is_delim(hay[s - 1]) && i - s < 512 {
        s -= 1;
    }
    let mut e = i;
    while e < hay.len() && !is_delim(hay[e]) && e - i < 2048 {
        e += 1;
    }
    while e < hay.len() && e + 1 < hay.len() && is_delim(hay[e]) && e - i < 2048 {
        let mut k = e + 1;
        while k < hay.len() && !is_delim(hay[k]) && k - e < 512 {
            k += 1;
        }
        if hay[e + 1..k].iter().any(|&b| b >= 0x80) {
            e = k;
        } else {
            break;
        }
    }
    (s, e)
}

/// `floor`: where the last non-ASCII region ended (updated). A region may start before `from`
/// (the block the walk is at) down to `floor`: clipping it at the block edge cut the word's ASCII
/// head (`gh` of a `ghр_…` with a Cyrillic `р`), so whether a homoglyph token was found
/// depended on where the 64-byte blocks fell, that is on how a stream was chunked.
fn scan_high(hay: &[u8], blocks: &Blocks, floor: &mut usize, from: usize, to: usize, f: &mut impl FnMut(Region)) -> usize {
    let mut i = from;
    loop {
        i = next_in(blocks, i, to, |m| m.high);
        if i >= to {
            break;
        }
        let (s, e) = non_ascii_extent(hay, i);
        f(Region::NonAscii(s.max(*floor)..e));
        i = e.max(i + 1);
        *floor = i;
    }
    (*floor).max(to)
}

#[cfg(test)]
mod reference {
    //! The byte-at-a-time walk the mask-driven one replaced, kept to test that both report the
    //! same regions, in the same order within each kind.
    use super::*;

    /// Walks `hay` and calls `f` once per region.
    pub(crate) fn walk(hay: &[u8], mut f: impl FnMut(Region)) {
        let n = hay.len();
        let mut token_done = 0; // token regions have been reported up to here
        let mut words_done = 0;
        let mut high_done = 0;
        let mut high_floor = 0; // where the last non-ASCII region ended
        // Numeric regions partition the digits; one pass over the whole input.
        scan_numeric(hay, 0, n, &mut f);
        let mut prev = Masks::default();
        let mut block_start = 0;
        while block_start < n {
            let end = (block_start + 64).min(n);
            let m = masks_scalar(&hay[block_start..end]);
            let valid = low_bits(end - block_start);
            // A run of 16 token bytes either lies inside this block, or crosses from the last one.
            let token_here = has_run16(m.token & valid)
                || (prev.token.leading_ones() + (m.token & valid).trailing_ones() >= MIN_TOKEN as u32);
            if token_here && block_start + 64 > token_done {
                let from = (block_start.saturating_sub(64)).max(token_done);
                token_done = scan_token_runs(hay, from, token_done, end, &mut f);
            }
            let word_here = prev.word.leading_ones() + (m.word & valid).trailing_ones() >= MIN_WORDS_REGION as u32
                || has_run32(m.word & valid);
            if word_here && end > words_done {
                let from = block_start.saturating_sub(64).max(words_done);
                words_done = scan_words(hay, from, words_done, end, &mut f);
            }
            if m.high & valid != 0 && end > high_done {
                high_done = scan_high(hay, &mut high_floor, block_start.max(high_done), end, &mut f);
            }
            prev = m;
            block_start = end;
        }
    }

    /// Whether `m` has a run of at least 32 set bits.
    #[inline]
    fn has_run32(m: u64) -> bool {
        let x = m & (m >> 1);
        let x = x & (x >> 2);
        let x = x & (x >> 4);
        let x = x & (x >> 8);
        x & (x >> 16) != 0
    }

    /// Reports token runs that start in `[from, to)`; returns where reporting is complete.
    fn scan_token_runs(hay: &[u8], from: usize, floor: usize, to: usize, f: &mut impl FnMut(Region)) -> usize {
        let mut i = from;
        // Back up to the start of a run we are inside of (runs before `floor` were reported).
        while i > floor && CLASS[hay[i - 1] as usize] & T != 0 {
            i -= 1;
        }
        let mut done = from;
        while i < to {
            if CLASS[hay[i] as usize] & T == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < hay.len() && CLASS[hay[i] as usize] & T != 0 {
                i += 1;
            }
            if i - start >= MIN_TOKEN {
                f(Region::Token(start..i));
            }
            done = i;
        }
        done.max(to.min(hay.len()))
    }

    fn scan_numeric(hay: &[u8], from: usize, to: usize, f: &mut impl FnMut(Region)) -> usize {
        let mut i = from;
        let n = hay.len();
        let mut done = from;
        while i < to {
            if !hay[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            // Extend over digits, gaps of up to six separator or letter bytes (IBAN groups).
            let start = i.saturating_sub(4);
            let mut last = i;
            let mut count = 0usize;
            let mut j = i;
            // Contiguous alphanumerics longer than the longest IBAN are a token (base64, hashes),
            // which the token pass owns.
            let mut alnum = 0usize;
            while j < n {
                let b = hay[j];
                alnum = if b.is_ascii_alphanumeric() { alnum + 1 } else { 0 };
                if alnum > 34 {
                    break;
                }
                if b.is_ascii_digit() {
                    count += 1;
                    last = j;
                } else if !(matches!(b, b' ' | b'-' | b':' | b',' | b'.' | b'\\' | b'x' | b'X') || b.is_ascii_alphabetic()) || j - last > 6 {
                    break;
                }
                j += 1;
            }
            let end = (last + 1).min(n);
            if count >= MIN_DIGITS {
                f(Region::Numeric(start..end));
            }
            i = j.max(i + 1);
            done = i;
        }
        done.max(to)
    }

    fn scan_words(hay: &[u8], from: usize, floor: usize, to: usize, f: &mut impl FnMut(Region)) -> usize {
        let mut i = from;
        while i > floor && CLASS[hay[i - 1] as usize] & W != 0 {
            i -= 1;
        }
        let mut done = from;
        while i < to {
            if CLASS[hay[i] as usize] & W == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < hay.len() && CLASS[hay[i] as usize] & W != 0 {
                i += 1;
            }
            if i - start >= MIN_WORDS_REGION {
                f(Region::Words(start..i));
            }
            done = i;
        }
        done.max(to)
    }

    fn scan_high(hay: &[u8], floor: &mut usize, from: usize, to: usize, f: &mut impl FnMut(Region)) -> usize {
        let mut i = from;
        while i < to {
            if hay[i] < 0x80 {
                i += 1;
                continue;
            }
            let (s, e) = non_ascii_extent(hay, i);
            f(Region::NonAscii(s.max(*floor)..e));
            i = e.max(i + 1);
            *floor = i;
        }
        (*floor).max(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(s: &[u8]) -> Vec<Region> {
        let mut v = Vec::new();
        walk(s, true, false, |r, _| v.push(r));
        v
    }

    /// The UUID test from the masks agrees with `validate::is_uuid`: on UUIDs at every
    /// offset of a block, with a byte changed (a dash moved, a hex digit made a letter past
    /// `f` or a dash, either case), and on ranges a byte too short or too long.
    #[test]
    fn uuid_matches_bytes() {
        let mut rng = crate::template::Rng::new(9);
        let mut found = [0usize; 2];
        for round in 0..4000 {
            let hex = b"0123456789abcdefABCDEF";
            let mut uuid: Vec<u8> = (0..36).map(|k| if matches!(k, 8 | 13 | 18 | 23) { b'-' } else { hex[rng.below(hex.len())] }).collect();
            if round % 2 == 1 {
                uuid[rng.below(36)] = b"-gGzZ0aF"[rng.below(8)];
            }
            let at = rng.below(130);
            let mut hay: Vec<u8> = (0..at).map(|_| b'x').collect();
            hay.extend_from_slice(&uuid);
            hay.extend((0..rng.below(70)).map(|_| hex[rng.below(hex.len())]));
            let blocks = block_masks(&hay);
            let c = Classes(&blocks, false);
            for (start, end) in [(at, at + 36), (at, at + 35), (at, at + 37), (at.saturating_sub(1), at + 35)] {
                let Some(bytes) = hay.get(start..end) else { continue };
                let want = crate::validate::is_uuid(bytes);
                assert_eq!(c.uuid(&hay, start..end), want, "{:?}", String::from_utf8_lossy(bytes));
                found[usize::from(want)] += 1;
            }
        }
        assert!(found.iter().all(|&f| f > 1000), "{found:?}");
    }

    #[test]
    fn finds_token_runs_across_block_edges() {
        for pad in 0..80 {
            let mut s = vec![b' '; pad];
            s.extend_from_slice(b"ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
            s.extend_from_slice(&[b' '; 70]);
            let found: Vec<_> = regions(&s).into_iter().filter_map(|r| match r { Region::Token(t) => Some(t), _ => None }).collect();
            assert_eq!(found, vec![pad..pad + 40], "pad {pad}");
        }
    }

    /// Digits with up to six letters (or separators) between them, now and then a space or a
    /// `+`: long runs of letters and digits whose numeric regions stop at 35 of them in a row,
    /// with as few as five or as many as 35 digits each, so regions stop inside stretches of
    /// every length; and stretches as sparse as nine digits in 64 bytes.
    fn digits_between_letters(rng: &mut crate::template::Rng, n: usize) -> Vec<u8> {
        let mut s = Vec::with_capacity(n + 8);
        let (least, most, separators) = (rng.below(7), rng.below(7), rng.below(3));
        while s.len() < n {
            let gap = least.min(most) + rng.below(least.max(most) - least.min(most) + 1);
            s.extend((0..gap).map(|_| if rng.below(4) < separators { b"- :"[rng.below(3)] } else { b'a' + rng.below(26) as u8 }));
            s.push(match rng.below(60) {
                0 => b' ',
                1 => b'+',
                _ => b'0' + rng.below(10) as u8,
            });
        }
        s.truncate(n);
        s
    }

    /// Random bytes drawn from an alphabet that exercises every class and boundary rule.
    fn random_input(rng: &mut crate::template::Rng, n: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..n).map(|_| if rng.below(50) == 0 { rng.next_u64() as u8 } else { alphabet[rng.below(alphabet.len())] }).collect()
    }

    fn kind(r: &Region) -> usize {
        match r { Region::Token(_) => 0, Region::Numeric(_) => 1, Region::Words(_) => 2, Region::NonAscii(_) => 3, Region::KeyWord(_) => unreachable!("not asked for") }
    }

    /// The regions of each kind, in the order reported.
    fn by_kind(rs: &[Region]) -> [Vec<Region>; 4] {
        let mut out: [Vec<Region>; 4] = Default::default();
        for r in rs {
            out[kind(r)].push(r.clone());
        }
        out
    }

    /// Whether to walk with `pext`: both ways where the CPU has BMI2 (slow or not).
    fn modes() -> Vec<bool> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("bmi2") {
                return vec![false, true];
            }
        }
        vec![false]
    }

    fn walk_mode(hay: &[u8], pext: bool, key_words: bool, f: impl FnMut(Region, &Classes)) {
        #[cfg(target_arch = "x86_64")]
        {
            if pext {
                // SAFETY: `modes` only asks for `pext` where the CPU has BMI2.
                return unsafe { walk_bmi2(hay, true, key_words, f) };
            }
        }
        assert!(!pext);
        walk_with::<false>(hay, true, key_words, f)
    }

    /// The mask-driven walk, counting numeric stretches either way, reports exactly the
    /// regions of the byte-at-a-time walk it replaced, in the same order within each kind.
    /// The split bytes of any range, from the masks, are those the bytes say: sparse ones
    /// (a long base64 run with its padding far on, where whole blocks have none), dense ones,
    /// ranges ending inside, at and past a block's edge, and empty ranges.
    #[test]
    fn splits_match_bytes() {
        let mut rng = crate::template::Rng::new(5);
        for round in 0..3000 {
            let n = 1 + rng.below(if round % 2 == 0 { 1500 } else { 200 });
            let one_in = [2, 40, 700][round % 3];
            let hay: Vec<u8> = (0..n).map(|_| if rng.below(one_in) == 0 { b".%="[rng.below(3)] } else { b'A' + rng.below(26) as u8 }).collect();
            let blocks = block_masks(&hay);
            let c = Classes(&blocks, false);
            for _ in 0..8 {
                let start = rng.below(n + 1);
                let end = start + rng.below(n + 1 - start);
                let want: Vec<usize> = (start..end).filter(|&k| matches!(hay[k], b'.' | b'%' | b'=')).collect();
                assert_eq!(c.splits(start..end).collect::<Vec<_>>(), want, "round {round}, {start}..{end} of {n}");
            }
        }
    }

    #[test]
    fn walk_matches_reference() {
        UNGATED.with(|u| u.set(true));
        let mut rng = crate::template::Rng::new(7);
        let mut seen = [0usize; 4];
        let alphabets: [&[u8]; 6] = [
            b"0123456789 -",
            b"0123456789abcdefXYZx -:,.\\/+",
            b"abcdefghijklmnopqrstuvwxyz ,\n",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-.%",
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ      ",
            b"ab1 \xe2\x80\x8b\"<>`'.=%",
        ];
        for round in 0..3000 {
            let n = rng.below(if round % 10 == 0 { 3000 } else { 400 });
            let alpha = alphabets[round % alphabets.len()];
            let mut s = if round % 7 == 6 { digits_between_letters(&mut rng, n) } else { random_input(&mut rng, n, alpha) };
            // Mix in a second alphabet for part of the input.
            if n > 0 && round % 3 == 0 {
                let at = rng.below(n);
                let other = alphabets[rng.below(alphabets.len())];
                for b in &mut s[at..] {
                    *b = other[(*b as usize) % other.len()];
                }
            }
            let mut slow = Vec::new();
            reference::walk(&s, |r| slow.push(r));
            for pext in modes() {
            let mut fast = Vec::new();
            walk_mode(&s, pext, false, |r, c| {
                // The classes handed out agree with the bytes.
                if let Region::Token(t) = &r {
                    let m = c.alnum_at(t.start);
                    for (k, &b) in s[t.start..].iter().take(64).enumerate() {
                        assert_eq!(m >> k & 1 == 1, b.is_ascii_alphanumeric());
                    }
                }
                if let Region::Token(t) = &r {
                    let want: Vec<usize> = t.clone().filter(|&k| matches!(s[k], b'.' | b'%' | b'=')).collect();
                    assert_eq!(c.splits(t.clone()).collect::<Vec<_>>(), want);
                }
                // The count helpers the numeric confirmation uses agree with the bytes.
                if let Region::Numeric(t) = &r {
                    let bytes = &s[t.clone()];
                    assert_eq!(c.digits_in(t.clone()), bytes.iter().filter(|b| b.is_ascii_digit()).count());
                    // Byte-wise: 13 digits joined by single separators flanked by digits.
                    let sep = |b: u8| matches!(b, b' ' | b'-' | b':' | b',' | b'.' | b'\\');
                    let (mut run, mut started, mut want_card) = (0, false, false);
                    for k in t.clone() {
                        let b = s[k];
                        if b.is_ascii_digit() {
                            started |= k == t.start || !s[k - 1].is_ascii_alphanumeric();
                            run += usize::from(started);
                            want_card |= run >= 13;
                        } else if !(sep(b) && k > 0 && s[k - 1].is_ascii_digit() && s.get(k + 1).is_some_and(u8::is_ascii_digit)) {
                            (run, started) = (0, false);
                        }
                    }
                    assert_eq!(c.card_digits_possible(t.clone()), want_card, "{:?}", String::from_utf8_lossy(bytes));
                    let want: Vec<usize> = (0..bytes.len().saturating_sub(3)).filter(|&k| bytes[k].is_ascii_uppercase() && bytes[k + 1].is_ascii_uppercase() && bytes[k + 2].is_ascii_digit() && bytes[k + 3].is_ascii_digit()).collect();
                    let mut got = Vec::new();
                    c.iban_starts(t.clone(), |k| got.push(k - t.start));
                    assert_eq!(got, want, "{:?}", String::from_utf8_lossy(bytes));
                }
                fast.push(r)
            });
            assert_eq!(by_kind(&fast), by_kind(&slow), "round {round}, pext {pext}: {:?}", String::from_utf8_lossy(&s));
            for r in &fast {
                seen[kind(r)] += 1;
            }
            }
        }
        // The inputs must exercise every kind of region.
        assert!(seen.iter().all(|&c| c > 100), "{seen:?}");
    }

    /// Numeric regions in long runs of letters and digits, which stop inside their stretches
    /// and carry stretches across blocks, both ways of counting.
    #[test]
    fn numeric_regions_match_reference() {
        UNGATED.with(|u| u.set(true));
        let mut rng = crate::template::Rng::new(31);
        let mut seen = 0;
        for round in 0..4000 {
            let n = 1 + rng.below(if round % 10 == 0 { 2000 } else { 300 });
            let s = digits_between_letters(&mut rng, n);
            let mut slow = Vec::new();
            reference::walk(&s, |r| slow.push(r));
            for pext in modes() {
                let mut fast = Vec::new();
                walk_mode(&s, pext, false, |r, _| fast.push(r));
                assert_eq!(by_kind(&fast)[1], by_kind(&slow)[1], "round {round}, pext {pext}: {:?}", String::from_utf8_lossy(&s));
            }
            seen += by_kind(&slow)[1].len();
        }
        assert!(seen > 1000, "{seen}");
    }

    /// The numeric regions of the walk of `s`, and those of the ungated walk (every block
    /// counted, every dense region measured) that `worth_consuming` keeps.
    fn gated_and_triggered(s: &[u8]) -> (Vec<Region>, Vec<Region>) {
        let blocks = block_masks(s);
        let numeric = |ungated: bool| {
            UNGATED.with(|u| u.set(ungated));
            by_kind(&regions(s))[1].clone()
        };
        let want = numeric(true).into_iter().filter(|r| matches!(r, Region::Numeric(r) if worth_consuming(&blocks, r.clone()))).collect();
        (numeric(false), want)
    }

    /// The numeric regions reported are exactly those of the ungated walk (every block
    /// counted, every dense region measured) that `worth_consuming` keeps: the pauses of the
    /// numeric stream between triggers, its restarts from the last break and the one-window
    /// measure of short regions neither drop nor add one. Base64 with cards and IBANs in it
    /// has long pauses with dense stretches in them, and restarts in the middle of stretches.
    #[test]
    fn gated_numeric_regions_are_the_triggered_ones() {
        let mut rng = crate::template::Rng::new(47);
        let mut kept = 0;
        for round in 0..3000 {
            let n = 1 + rng.below(if round % 10 == 0 { 1500 } else { 300 });
            let s = match round % 4 {
                0 => digits_between_letters(&mut rng, n),
                1 => random_input(&mut rng, n, b"0123456789abcdefABCDEF -:,.\\x"),
                2 => random_input(&mut rng, n, b"0123456789DEGBWST -+"),
                _ => {
                    let mut s = Vec::new();
                    while s.len() < n {
                        let noise = rng.below(400);
                        s.extend(random_input(&mut rng, noise, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"));
                        let (k, sep) = ([13, 16, 19][rng.below(3)], ["", " ", "-"][rng.below(3)]);
                        let secret = match rng.below(3) {
                            0 => card(&mut rng, k, sep),
                            1 => iban(&mut rng, &sep.replace('-', " ")),
                            _ => digits_between_letters(&mut rng, 40).into_iter().map(char::from).collect(),
                        };
                        s.push(b"+/ 7"[rng.below(4)]);
                        s.extend_from_slice(secret.as_bytes());
                    }
                    s
                }
            };
            let (gated, want) = gated_and_triggered(&s);
            assert_eq!(gated, want, "round {round}: {:?}", String::from_utf8_lossy(&s));
            kept += want.len();
        }
        assert!(kept > 500, "{kept}");
    }

    /// A trigger may end just before a region's first digit (a chain of hex pairs of letters,
    /// then sparse digits): at every alignment the stream runs where the region starts, and on
    /// until its tenth digit, two blocks after the trigger's.
    #[test]
    fn trigger_before_the_first_digit() {
        for pad in 0..192 {
            let mut s = vec![b'z'; pad];
            s.extend_from_slice(b"ab:cd:ef:ab:cd:ggg1------2------3------4------5------6------7------8------9------0 end");
            let (gated, want) = gated_and_triggered(&s);
            assert_eq!(want.len(), 1, "pad {pad}");
            assert_eq!(gated, want, "pad {pad}");
        }
    }

    /// The walk's key-sized words are the maximal runs of letters and digits of 34, 51 or 52
    /// bytes, as a byte loop finds them, with words at the slice's ends and across blocks.
    #[test]
    fn key_words_match_bytewise() {
        let mut rng = crate::template::Rng::new(21);
        let mut reported = 0;
        for round in 0..3000 {
            let len = rng.below(if round % 2 == 0 { 1500 } else { 300 });
            // Words of 20 to 60 bytes on average: every length that matters, longer runs too.
            let gap = 20 + rng.below(40);
            let s: Vec<u8> = (0..len).map(|_| if rng.below(gap) == 0 { b"+/-_. \n"[rng.below(7)] } else { b"aZ7"[rng.below(3)] }).collect();
            let mut want = Vec::new();
            let mut k = 0;
            while k < s.len() {
                let e = (k..s.len()).find(|&j| !s[j].is_ascii_alphanumeric()).unwrap_or(s.len());
                if matches!(e - k, 34 | 51 | 52) {
                    want.push(k..e);
                }
                k = e + 1;
            }
            for pext in modes() {
                let mut got = Vec::new();
                walk_mode(&s, pext, true, |r, _| if let Region::KeyWord(w) = r { got.push(w) });
                assert_eq!(got, want, "round {round}: {:?}", String::from_utf8_lossy(&s));
            }
            // Not looked for unless asked.
            walk(&s, true, false, |r, _| assert!(!matches!(r, Region::KeyWord(_))));
            reported += want.len();
        }
        assert!(reported > 500, "{reported}");
    }

    /// Skipping quiet blocks changes no region: the walk reports the same regions of every
    /// kind, in the same order, with and without it, on mixes of base64, prose with seed
    /// phrases, JSON with digits and hex, and non-ASCII text, cut at every alignment; and
    /// quiet blocks are common there.
    #[test]
    fn skipping_quiet_blocks_changes_nothing() {
        let mut rng = crate::template::Rng::new(47);
        let (mut quiet, mut blocks_seen) = (0, 0);
        for round in 0..1500 {
            let mut s = Vec::new();
            while s.len() < 64 * (1 + rng.below(60)) {
                match rng.below(6) {
                    0 => s.extend((0..rng.below(600)).map(|_| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[rng.below(64)])),
                    1 => s.extend(word_soup(&mut rng, 300)),
                    2 => s.extend(random_input(&mut rng, 200, b"0123456789abcdefXYZx -:,.\\/+")),
                    3 => s.extend(digits_between_letters(&mut rng, 150)),
                    4 => s.extend_from_slice("caf\u{e9} na\u{ef}ve r\u{e9}sum\u{e9} ".as_bytes()),
                    _ => s.extend_from_slice(b"4111 1111 1111 1111 DE89370400440532013000 ab:cd:ef:01:23:45 "),
                }
            }
            s.drain(..rng.below(64).min(s.len()));
            if round % 4 == 2 && s.len() > 128 {
                // A phrase of exactly the shortest run that can hold one (47 bytes) across a
                // block edge, 16 to 46 of its bytes before it, in a stretch of `!` (no class).
                let at = 64 * (1 + rng.below(s.len() / 64 - 1)) - 64;
                s.splice(at..at, std::iter::repeat_n(b'!', 192));
                let phrase_at = at + 128 - 16 - rng.below(31);
                s[phrase_at..phrase_at + 47].copy_from_slice(b"cat dog owl bee ant elk emu fox gnu hen yak eel");
            }
            let regions = |skip: bool| {
                SKIP_QUIET.with(|q| q.set(skip));
                let mut v = Vec::new();
                walk(&s, round % 2 == 0, round % 3 != 0, |r, _| v.push(r));
                SKIP_QUIET.with(|q| q.set(true));
                v
            };
            assert_eq!(regions(true), regions(false), "round {round}: {:?}", String::from_utf8_lossy(&s));
            let (blocks, triggers) = masks_and_triggers(&s);
            let key_ends = all_key_word_ends(&blocks);
            let busy = busy_blocks(s.len(), &blocks, &triggers, &key_ends, true);
            let count = s.len().div_ceil(64);
            quiet += (0..count).filter(|&b| busy.is_quiet(b)).count();
            blocks_seen += count;
        }
        #[cfg(target_arch = "x86_64")]
        if simd::has_eight_block_features() {
            assert!(quiet * 8 > blocks_seen, "{quiet} of {blocks_seen} blocks quiet");
            // Prose, which runs of the word class cover, is mostly quiet too.
            let prose = "The committee reviewed the quarterly results and agreed to revisit the budget next month. \
                Rivers carry sediment downstream, slowly reshaping valleys over thousands of years. "
                .repeat(20);
            let (blocks, triggers) = masks_and_triggers(prose.as_bytes());
            let key_ends = all_key_word_ends(&blocks);
            let busy = busy_blocks(prose.len(), &blocks, &triggers, &key_ends, true);
            let count = prose.len().div_ceil(64);
            let quiet = (0..count).filter(|&b| busy.is_quiet(b)).count();
            assert!(quiet * 4 > count * 3, "{quiet} of {count} prose blocks quiet");
            // Markup with a link per line: the blocks with a path's run are busy for the token
            // pass alone, most of them.
            let html = "<div class=\"card\"><a href=\"https://www.example.com/articles/123\">Read more</a><p style=\"color:#333\">Text here.</p></div>\n".repeat(40);
            let (blocks, triggers) = masks_and_triggers(html.as_bytes());
            let key_ends = all_key_word_ends(&blocks);
            let busy = busy_blocks(html.len(), &blocks, &triggers, &key_ends, true);
            let bit = |map: &[u64], b: usize| map[b / 64] >> (b % 64) & 1 == 1;
            let count = html.len().div_ceil(64);
            let tokens = (0..count).filter(|&b| bit(&busy.tokens, b)).count();
            let tokens_only = (0..count).filter(|&b| bit(&busy.tokens, b) && !bit(&busy.others, b)).count();
            assert!(tokens * 2 > count && tokens_only * 4 > tokens * 3, "{tokens_only} of {tokens} token blocks ({count} in all) busy for tokens only");
        }
    }

    /// The eight-block key-word test answers as the one-block test for every block.
    #[test]
    fn vector_key_words_match_scalar() {
        #[cfg(target_arch = "x86_64")]
        {
            if !simd::has_eight_block_features() {
                return;
            }
            let mut rng = crate::template::Rng::new(43);
            let mut found = 0;
            for round in 0..3000 {
                let n = 2 + rng.below(40);
                // Letters and digits with a byte that is neither every `gap` bytes on average.
                let gap = 20 + rng.below(50);
                let blocks = Blocks::build(n, |_| {
                    let alnum = (0..64).fold(0u64, |w, k| w | u64::from(rng.below(gap) != 0) << k);
                    // Letters only, or letters and digits.
                    let digits = if round % 2 == 0 { 0 } else { rng.next_u64() };
                    Masks { alpha: alnum & !digits, digit: alnum & digits, ..Masks::default() }
                });
                let mut fast = Vec::new();
                // SAFETY: the features were checked above.
                unsafe { simd::key_word_ends_avx512(&blocks, &mut fast) };
                one_block_tests_from(&blocks, &mut fast, key_word_ends);
                let mut slow = Vec::new();
                one_block_tests_from(&blocks, &mut slow, key_word_ends);
                assert_eq!(fast, slow, "round {round}");
                found += slow.iter().map(|e| e.count_ones() as usize).sum::<usize>();
            }
            assert!(found > 1000, "{found}");
        }
    }

    /// The mask-driven word-shape check equals the byte-wise one on every word region.
    #[test]
    fn word_shapes_match_bytewise() {
        // Every run of the class, not only those the phrase stream reports.
        UNGATED.with(|u| u.set(true));
        let mut rng = crate::template::Rng::new(13);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..2000 {
            let mut s = Vec::new();
            for _ in 0..rng.below(60) {
                let long = rng.below(4) == 0;
                let len = 1 + rng.below(if long { 12 } else { 7 });
                for _ in 0..len {
                    s.push(b'a' + rng.below(26) as u8);
                }
                let odd = rng.below(8) == 0;
                s.push(b" \n,.A7"[rng.below(if odd { 6 } else { 3 })]);
            }
            walk(&s, true, false, |r, c| {
                if let Region::Words(w) = r {
                    let want = crate::bip39::has_twelve_word_shapes(&s[w.clone()]);
                    assert_eq!(c.twelve_word_shapes(w.clone()), want, "{:?}", String::from_utf8_lossy(&s[w]));
                    if want { yes += 1 } else { no += 1 }
                }
            });
        }
        assert!(yes > 20 && no > 50, "{yes} {no}");
    }

    /// Lowercase words of every length between separators, now and then a byte that ends a
    /// run of the class, and seed phrases (one checksum-valid, one not) in between, and twelve
    /// short words after a break (which fit in one block).
    fn word_soup(rng: &mut crate::template::Rng, n: usize) -> Vec<u8> {
        let phrases: [&[u8]; 3] = [
            b"legal winner thank year wave sausage worth useful legal winner thank yellow",
            b"abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon",
            b". cat dog owl bee ant elk emu fox gnu hen yak eel",
        ];
        let short = rng.below(10); // how often a word has one or two letters
        let breaks = 2 + rng.below(40); // and how often a byte ends the run
        let mut s = Vec::with_capacity(n + 100);
        while s.len() < n {
            match rng.below(breaks) {
                0 if rng.below(4) == 0 => s.extend_from_slice(phrases[rng.below(3)]),
                0 => s.push(b".A7\\"[rng.below(4)]),
                _ => {
                    let most = if rng.below(8) == 0 { 10 } else { 6 };
                    let len = if rng.below(20) < short { 1 + rng.below(2) } else { 3 + rng.below(most) };
                    s.extend((0..len).map(|_| b'a' + rng.below(26) as u8));
                }
            }
            s.extend_from_slice([&b" "[..], b" ", b"\n", b", ", b"\t", b"  "][rng.below(6)]);
        }
        s.truncate(n);
        s
    }

    /// The phrase stream reports whole runs of the class, among them every run with twelve
    /// word shapes in a row and the run that reaches the end, and the scanner finds the same
    /// seed phrases as with every run reported.
    #[test]
    fn phrase_stream_misses_no_phrase() {
        let engine = crate::Engine::new(&crate::ScanConfig::default()).unwrap();
        let mut rng = crate::template::Rng::new(17);
        let (mut kept, mut dropped, mut phrases) = (0, 0, 0);
        for round in 0..2000 {
            let n = 1 + rng.below(if round % 10 == 0 { 3000 } else { 400 });
            let s = word_soup(&mut rng, n);
            let words = |ungated: bool| {
                UNGATED.with(|u| u.set(ungated));
                let mut v = Vec::new();
                walk(&s, true, false, |r, _| if let Region::Words(w) = r { v.push(w) });
                v
            };
            let (all, gated) = (words(true), words(false));
            for w in &gated {
                assert!(all.contains(w), "round {round}: {w:?} is no run of the class: {:?}", String::from_utf8_lossy(&s));
            }
            for w in &all {
                let needed = crate::bip39::has_twelve_word_shapes(&s[w.clone()]) || w.end == s.len();
                assert!(!needed || gated.contains(w), "round {round}: {w:?} missing: {:?}", String::from_utf8_lossy(&s));
                if gated.contains(w) { kept += 1 } else { dropped += 1 }
            }
            let found = |ungated: bool| {
                UNGATED.with(|u| u.set(ungated));
                let mut hits: Vec<_> = engine.inner.scan_slice(&s, crate::scanner::Direction::Egress).into_iter().map(|h| (h.rule, h.span)).collect();
                hits.sort_by_key(|h| (h.1.start, h.1.end, h.0));
                hits
            };
            let (with_all, with_gated) = (found(true), found(false));
            assert_eq!(with_gated, with_all, "round {round}: {:?}", String::from_utf8_lossy(&s));
            phrases += with_all.iter().filter(|h| crate::catalog::RULES[h.0 as usize].id == "crypto.bip39_seed").count();
        }
        // Not vacuous: phrases are found, and the stream drops runs that cannot hold one.
        assert!(phrases > 300 && kept > 1000 && dropped > 300, "phrases {phrases}, kept {kept}, dropped {dropped}");
    }

    /// The eight-block trigger test answers as the one-block test for every block: random
    /// masks of several densities (chains of hex pairs in every lane, runs across lanes and
    /// steps), and the masks of text with cards, IBANs and separated hex, at every count of
    /// blocks around the step size.
    #[test]
    fn vector_triggers_match_scalar() {
        #[cfg(target_arch = "x86_64")]
        {
            if !simd::has_eight_block_features() {
                return;
            }
            let mut rng = crate::template::Rng::new(41);
            let (mut nonzero, mut with_separators) = (0, 0);
            for round in 0..4000 {
                let n = 2 + rng.below(40);
                let blocks = if round % 2 == 0 {
                    let mut word = || match round % 8 {
                        0 => rng.next_u64(),
                        2 => rng.next_u64() & rng.next_u64(),
                        4 => rng.next_u64() | rng.next_u64(),
                        _ => rng.next_u64() & rng.next_u64() & rng.next_u64(),
                    };
                    Blocks::build(n, |_| Masks { token: word(), digit: word(), word: word(), high: word(), alpha: word(), numsep: word(), split: word(), hex: word() })
                } else {
                    // Digits everywhere, or hex pairs with a digit now and then (chains that end
                    // in blocks without digits, before one in the next block's first bytes).
                    let alphabet: &[u8] = match round % 6 { 1 => b"0123456789 -:", 3 => b"0123456789abcdefDEGB:- ,.\n", _ => b"abcdef:- " };
                    let mut s: Vec<u8> = (0..rng.below(64 * 40)).map(|_| if rng.below(150) == 0 { b'7' } else { alphabet[rng.below(alphabet.len())] }).collect();
                    if round % 6 == 5 {
                        // A chain in a block without digits, ending near its end, and a digit a
                        // few bytes into the next block.
                        let at = (rng.below(30) * 64 + 40 + rng.below(24)).min(s.len());
                        s.splice(at..at, b"xx ab:cd:ef:ab:cd:ef:ab ".iter().copied().chain(std::iter::repeat_n(b'x', rng.below(8))).chain([b'5']));
                        s.retain(|&b| b != b'7');
                    }
                    block_masks(&s)
                };
                let mut fast = Vec::new();
                // SAFETY: the features were checked above.
                unsafe { simd::trigger_ends_avx512(&blocks, &mut fast) };
                one_block_tests_from(&blocks, &mut fast, trigger_ends);
                let mut slow = Vec::new();
                one_block_tests_from(&blocks, &mut slow, trigger_ends);
                assert_eq!(fast, slow, "round {round}");
                nonzero += slow.iter().filter(|&&t| t != 0).count();
                // Blocks where separators add ends (joined card digits, chains of hex pairs).
                with_separators += (0..blocks.len() - 1)
                    .filter(|&b| {
                        let prev = blocks.before(b);
                        let no_pairs = |m: Masks| Masks { numsep: m.numsep & m.digit, ..m };
                        let without = trigger_ends(&no_pairs(prev), &no_pairs(blocks.at(b)), &blocks.at(b + 1));
                        slow[b] & !without != 0
                    })
                    .count();
            }
            assert!(nonzero > 10_000 && with_separators > 1000, "{nonzero} {with_separators}");
        }
    }

    #[test]
    fn simd_masks_match_scalar() {
        let mut rng = crate::template::Rng::new(9);
        for _ in 0..2000 {
            let block: Vec<u8> = (0..64).map(|_| if rng.below(2) == 0 { rng.next_u64() as u8 } else { rng.below(128) as u8 }).collect();
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: just checked; the block has 64 bytes.
                assert_eq!(unsafe { simd::masks_avx2(&block) }, masks_scalar(&block));
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512bw") {
                // SAFETY: just checked; the block has 64 bytes.
                assert_eq!(unsafe { simd::masks_avx512(&block) }, masks_scalar(&block));
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vbmi") {
                // SAFETY: just checked; the block has 64 bytes.
                assert_eq!(unsafe { simd::masks_avx512_vbmi(&block) }, masks_scalar(&block));
            }
        }
        // Every byte value at every position.
        for shift in 0..64 {
            let all: Vec<u8> = (0..256 + 64).map(|i: usize| (i + shift) as u8).collect();
            for block in all.chunks_exact(64) {
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: just checked; the block has 64 bytes.
                    assert_eq!(unsafe { simd::masks_avx2(block) }, masks_scalar(block));
                }
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512bw") {
                    // SAFETY: just checked; the block has 64 bytes.
                    assert_eq!(unsafe { simd::masks_avx512(block) }, masks_scalar(block));
                }
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vbmi") {
                    // SAFETY: just checked; the block has 64 bytes.
                    assert_eq!(unsafe { simd::masks_avx512_vbmi(block) }, masks_scalar(block));
                }
            }
        }
    }

    /// Every SIMD classification of whole slices gives the masks the byte loop gives, for
    /// lengths around the eight-block groups and every byte value.
    #[test]
    fn simd_fills_match_scalar() {
        let mut rng = crate::template::Rng::new(21);
        for len in (0..40).map(|k| k * 61).chain([511, 512, 513, 1023, 1024, 1025, 4096 + 17]) {
            let hay: Vec<u8> = (0..len).map(|i| if i % 3 == 0 { rng.next_u64() as u8 } else { rng.below(128) as u8 }).collect();
            let want = fill_with(&hay, masks_scalar);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vbmi") {
                // SAFETY: just checked.
                assert!(unsafe { simd::fill_avx512_vbmi(&hay) }.fields == want.fields, "vbmi, {len} bytes");
                if std::is_x86_feature_detected!("gfni") {
                    // SAFETY: just checked.
                    let got = unsafe { simd::fill_avx512_gfni(&hay) };
                    assert_eq!(got.n, want.n);
                    for f in 0..FIELDS {
                        assert_eq!(got.row(f), want.row(f), "gfni, field {f}, {len} bytes");
                    }
                }
            }
        }
    }

    #[test]
    fn runs_ending_counts_carry() {
        let mut rng = crate::template::Rng::new(5);
        let mut xs = vec![0u64, u64::MAX, 0xF0F0_FFFF_0000_FFFF, 0x0123_4567_89AB_CDEF, !1, 1, u64::MAX >> 1, u64::MAX << 1];
        // Long runs at random places: random words ORed together, and their complements.
        xs.extend((0..24).map(|i| {
            let x = rng.next_u64() | rng.next_u64() | rng.next_u64() | rng.next_u64();
            if i % 2 == 0 { x } else { !x }
        }));
        for carry in 0..64u32 {
            for len in 1..=64u32 {
                for &x in &xs {
                    let got = runs_ending(x, carry, len);
                    let mut want = 0u64;
                    for k in 0..64i64 {
                        let all = (k - len as i64 + 1..=k).all(|b| if b >= 0 { x >> b & 1 == 1 } else { -b <= carry as i64 });
                        want |= u64::from(all) << k;
                    }
                    assert_eq!(got, want, "x {x:#x} carry {carry} len {len}");
                }
            }
        }
    }

    /// A Luhn-valid card number of `len` digits with a Visa or Mastercard prefix, in groups
    /// of four joined by `sep` (none when empty).
    fn card(rng: &mut crate::template::Rng, len: usize, sep: &str) -> String {
        let mut d: Vec<u32> = vec![if rng.below(2) == 0 { 4 } else { 5 }];
        if d[0] == 5 {
            d.push(1 + rng.below(5) as u32);
        }
        while d.len() < len - 1 {
            d.push(rng.below(10) as u32);
        }
        // The check digit: every second digit from the right doubled, the check included.
        let sum: u32 = d.iter().rev().enumerate().map(|(i, &x)| if i % 2 == 0 { if 2 * x > 9 { 2 * x - 9 } else { 2 * x } } else { x }).sum();
        d.push((10 - sum % 10) % 10);
        let digits: String = d.iter().map(|x| char::from(b'0' + *x as u8)).collect();
        digits.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(sep)
    }

    /// A mod-97-valid IBAN, German (18 digits) or Dutch (four capitals, then ten digits, so
    /// that no thirteen digits are joined), in groups of four joined by `sep`.
    fn iban(rng: &mut crate::template::Rng, sep: &str) -> String {
        let (country, bank) = if rng.below(2) == 0 { ("DE", String::new()) } else { ("NL", (0..4).map(|_| char::from(b'A' + rng.below(26) as u8)).collect()) };
        let digits: String = (0..if bank.is_empty() { 18 } else { 10 }).map(|_| char::from(b'0' + rng.below(10) as u8)).collect();
        let bban = format!("{bank}{digits}");
        // The BBAN, the country and "00", letters as two digits (A = 10), mod 97.
        let rem = format!("{bban}{country}00").bytes().fold(0u64, |r, b| match b {
            b'A'..=b'Z' => (r * 100 + u64::from(b - b'A') + 10) % 97,
            _ => (r * 10 + u64::from(b - b'0')) % 97,
        });
        let s = format!("{country}{:02}{bban}", 98 - rem);
        s.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(sep)
    }

    /// Regions left out for want of a trigger (see `worth_consuming`) change no finding:
    /// inputs full of cards, IBANs, separated hex and numeric noise (UUIDs, timestamps,
    /// letters, digits and separators) give the same findings with every region reported.
    #[test]
    fn untriggered_regions_hold_no_finding() {
        let engine = crate::Engine::new(&crate::ScanConfig::default()).unwrap();
        let mut rng = crate::template::Rng::new(5);
        let secret = b"ghp_R8vQ2nX5tK9mW3zL7pD4sF6hJ1cB0aYeUiOq";
        let (mut cards, mut ibans, mut hexes) = (0, 0, 0);
        for round in 0..1500 {
            let mut s: Vec<u8> = Vec::new();
            for _ in 0..1 + rng.below(12) {
                // Lengths and separators drawn first: the generators borrow `rng` too.
                let (len, k, sep) = (1 + rng.below(120), [13, 15, 16, 19][rng.below(4)], ["", " ", "-"][rng.below(3)]);
                match rng.below(9) {
                    0 => s.extend_from_slice(card(&mut rng, k, sep).as_bytes()),
                    1 => s.extend_from_slice(iban(&mut rng, &sep[..sep.len().min(1)].replace('-', " ")).as_bytes()),
                    2 => {
                        let (sep, prefix) = [(":", ""), (" ", ""), ("-", ""), (",", ""), (", ", "0x"), ("", "\\x"), (":\n", "")][rng.below(7)];
                        let pairs: Vec<String> = secret.iter().map(|b| format!("{prefix}{b:02x}")).collect();
                        s.extend_from_slice(pairs.join(sep).as_bytes());
                    }
                    3 => s.extend_from_slice(format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", rng.next_u64() as u32, rng.next_u64() as u16, rng.below(4096), rng.below(4096), rng.next_u64() & 0xffff_ffff_ffff).as_bytes()),
                    4 => s.extend_from_slice(format!("2024-0{}-1{}T10:2{}:00.{}Z", 1 + rng.below(9), rng.below(10), rng.below(10), rng.below(1000)).as_bytes()),
                    5 => s.extend_from_slice(&digits_between_letters(&mut rng, len)),
                    6 => s.extend_from_slice(&random_input(&mut rng, len, b"0123456789abcdefABCDEF -:,.\\x")),
                    7 => s.extend_from_slice(&random_input(&mut rng, len, b"0123456789DEGBWST -")),
                    _ => s.extend_from_slice(["\n", " ", "\"", ": ", "x", "\t"][rng.below(6)].as_bytes()),
                }
                s.extend_from_slice(["", " ", "\n", "\\", ", "][rng.below(5)].as_bytes());
            }
            let found = |ungated: bool| {
                UNGATED.with(|u| u.set(ungated));
                let mut hits: Vec<_> = engine.inner.scan_slice(&s, crate::scanner::Direction::Egress).into_iter().map(|h| (h.rule, h.span, h.layers)).collect();
                hits.sort_by_key(|h| (h.1.start, h.1.end, h.0));
                hits
            };
            let (all, gated) = (found(true), found(false));
            assert_eq!(gated, all, "round {round}: {:?}", String::from_utf8_lossy(&s));
            for (rule, _, layers) in &all {
                let id = crate::catalog::RULES[*rule as usize].id;
                cards += usize::from(id == "financial.credit_card");
                ibans += usize::from(id == "financial.iban");
                hexes += usize::from(layers.contains(&crate::decode::Layer::Hex));
            }
        }
        // The inputs hold what the triggers are for, so the comparison is not vacuous.
        assert!(cards > 300 && ibans > 600 && hexes > 300, "cards {cards}, IBANs {ibans}, hex {hexes}");
    }

    #[test]
    fn numeric_words_and_non_ascii() {
        let r = regions(b"card 4111 1111 1111 1111 ok");
        assert!(r.iter().any(|x| matches!(x, Region::Numeric(_))));
        let r = regions("x g\u{200b}hp_abc y".as_bytes());
        assert!(r.iter().any(|x| matches!(x, Region::NonAscii(_))));
        let r = regions(b"abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about");
        assert!(r.iter().any(|x| matches!(x, Region::Words(_))));
    }
}
