//! Decoders for the encodings an agent might use to smuggle a secret past a scanner.
//!
//! Each decoder returns the decoded bytes together with an [`OffsetMap`] back into its input, so
//! a match found in the decoded text can be reported, and masked, on the encoded bytes that
//! produced it. Decoders are strict about their alphabet and never allocate more than a small
//! multiple of their input.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Maps a range of decoded bytes back to the range of encoded bytes that produced it.
#[derive(Debug, Clone)]
pub(crate) enum OffsetMap {
    /// Fixed-width codecs: every encoded character carries `bits` bits of the decoded bytes.
    Bits { base: usize, bits: usize, enc_len: usize },
    /// `table[i]` is the encoded offset of decoded byte `i`; `table[len]` is the encoded end.
    Table(Vec<u32>),
}

impl OffsetMap {
    pub fn map(&self, r: &Range<usize>) -> Range<usize> {
        match self {
            OffsetMap::Bits { base, bits, enc_len } => {
                let s = (r.start * 8 / bits).min(*enc_len);
                let e = (r.end * 8).div_ceil(*bits).min(*enc_len);
                base + s..base + e.max(s)
            }
            OffsetMap::Table(t) => {
                let s = t.get(r.start).copied().unwrap_or(0) as usize;
                let e = t.get(r.end).copied().unwrap_or_else(|| t.last().copied().unwrap_or(0)) as usize;
                s..e.max(s)
            }
        }
    }
}

/// Decoding layers, named in findings as the chain that was undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    Url,
    Base64,
    Base32,
    Hex,
    Unicode,
    JsonEscape,
    Joined,
    Event,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::Url => "url",
            Layer::Base64 => "base64",
            Layer::Base32 => "base32",
            Layer::Hex => "hex",
            Layer::Unicode => "unicode",
            Layer::JsonEscape => "json-escape",
            Layer::Joined => "joined",
            Layer::Event => "sse",
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding (and `+` as space). `None` when there is nothing to decode.
pub(crate) fn url_decode(s: &[u8], base: usize) -> Option<(Vec<u8>, OffsetMap)> {
    memchr::memchr2(b'%', b'+', s)?;
    let mut out = Vec::with_capacity(s.len());
    let mut table = Vec::with_capacity(s.len() + 1);
    let mut i = 0;
    let mut changed = false;
    while i < s.len() {
        table.push((base + i) as u32);
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex_val(s[i + 1]), hex_val(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                changed = true;
                continue;
            }
        }
        if s[i] == b'+' {
            out.push(b' ');
            changed = true;
        } else {
            out.push(s[i]);
        }
        i += 1;
    }
    table.push((base + s.len()) as u32);
    changed.then_some((out, OffsetMap::Table(table)))
}

const B64_STD: u8 = 1;
const B64_URL: u8 = 2;

fn b64_val(b: u8) -> Option<(u8, u8)> {
    match b {
        b'A'..=b'Z' => Some((b - b'A', B64_STD | B64_URL)),
        b'a'..=b'z' => Some((b - b'a' + 26, B64_STD | B64_URL)),
        b'0'..=b'9' => Some((b - b'0' + 52, B64_STD | B64_URL)),
        b'+' => Some((62, B64_STD)),
        b'/' => Some((63, B64_STD)),
        b'-' => Some((62, B64_URL)),
        b'_' => Some((63, B64_URL)),
        _ => None,
    }
}

/// Base64 in either alphabet, padding optional, starting `skip` characters into `s` (for runs
/// whose true start lies before the window). Stops at the first byte outside the alphabet.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn base64_decode(s: &[u8], base: usize, skip: usize) -> Option<(Vec<u8>, OffsetMap)> {
    base64_decode_imp(s, base, skip, false)
}

/// [`base64_decode`] for a scan that will drop the result unless it is [`mostly_text`] and not
/// [`is_binary_media`]: gives up (`None`) as soon as the bytes decoded so far prove that the
/// whole output fails those checks, so random blobs (images, ciphertext) cost a fraction of a
/// full decode (and short outputs that fail them are never allocated). Whenever it returns
/// `Some`, the result equals `base64_decode`'s.
pub(crate) fn base64_decode_text(s: &[u8], base: usize, skip: usize) -> Option<(Vec<u8>, OffsetMap)> {
    base64_decode_imp(s, base, skip, true)
}

/// `value | alphabets << 6` per byte (0: not base64), for the four-at-a-time decode.
static B64_TABLE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let (v, alpha) = match b as u8 {
            c @ b'A'..=b'Z' => (c - b'A', B64_STD | B64_URL),
            c @ b'a'..=b'z' => (c - b'a' + 26, B64_STD | B64_URL),
            c @ b'0'..=b'9' => (c - b'0' + 52, B64_STD | B64_URL),
            b'+' => (62, B64_STD),
            b'/' => (63, B64_STD),
            b'-' => (62, B64_URL),
            b'_' => (63, B64_URL),
            _ => (0, 0),
        };
        t[b] = v | alpha << 6;
        b += 1;
    }
    t
};

fn base64_decode_imp(s: &[u8], base: usize, skip: usize, text_only: bool) -> Option<(Vec<u8>, OffsetMap)> {
    let s = s.get(skip..)?;
    #[cfg(target_arch = "x86_64")]
    {
        if text_only && std::is_x86_feature_detected!("avx512vbmi") && std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX-512 VBMI and BW presence was just checked; `surely_not_text` gets
            // at most 64 bytes.
            let surely = unsafe { if s.len() <= 64 { simd::surely_not_text(s) } else { simd::blob_surely_not_text(s) } };
            if surely {
                return None;
            }
        }
    }
    let cap = s.len() * 3 / 4 + 3;
    let map = |used| OffsetMap::Bits { base: base + skip, bits: 6, enc_len: used };
    // Short pieces (UUIDs, URL paths) decode on the stack: nearly all of them fail the text
    // check, and then nothing is allocated.
    if text_only && cap <= SHORT {
        let mut buf = [MaybeUninit::uninit(); SHORT];
        let (o, used) = base64_decode_into(s, &mut buf[..cap], text_only)?;
        let out = written(&buf, o);
        return (o >= 8 && mostly_text(out) && !is_binary_media(out)).then(|| (out.to_vec(), map(used)));
    }
    // Not zeroed first: a blob that proves not to be text is dropped after a small part of it
    // was decoded, and zeroing the whole output cost more than that part.
    let mut out = Vec::with_capacity(cap);
    let (o, used) = base64_decode_into(s, &mut out.spare_capacity_mut()[..cap], text_only)?;
    // SAFETY: `base64_decode_into` wrote the first `o` bytes of the spare capacity.
    unsafe { out.set_len(o) };
    (o >= 8).then(|| (out, map(used)))
}

/// The first `n` bytes of `buf`, which the caller has written.
fn written(buf: &[MaybeUninit<u8>], n: usize) -> &[u8] {
    let init = &buf[..n];
    // SAFETY: callers pass only the count of bytes they wrote from the start of `buf`, and
    // `MaybeUninit<u8>` has the layout of `u8`.
    unsafe { std::slice::from_raw_parts(init.as_ptr().cast::<u8>(), init.len()) }
}

/// Output buffer size below which [`base64_decode_text`] decodes on the stack.
const SHORT: usize = 256;

/// Decodes into `out` (at least `s.len() * 3 / 4 + 3` bytes); returns the bytes written (always
/// a prefix of `out`) and the characters used, or `None` when `text_only` and the output
/// provably fails the text check.
fn base64_decode_into(s: &[u8], out: &mut [MaybeUninit<u8>], text_only: bool) -> Option<(usize, usize)> {
    // The output can be no longer than this, so counts above its thresholds are decisive.
    let most = s.len() * 6 / 8;
    // Written by index (three bytes per quad): `extend_from_slice` of three bytes was a
    // `memcpy` call per quad.
    let mut o = 0;
    let mut alphabets = B64_STD | B64_URL;
    let mut proof = TextProof::default();
    let mut next_check = proof.bytes_before_possible(most).max(64);
    // Whole quads first (a table lookup per byte, three bytes out per quad); the first quad
    // with a byte outside the alphabet, or that would mix alphabets, goes to the exact
    // byte-at-a-time loop below, which stops where the original decoder stopped.
    let mut used = 0;
    // Steps of up to 22 quads (66 bytes out) as zipped chunks, which need no bounds checks;
    // the proof runs between steps (any prefix is a valid place for it).
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::is_x86_feature_detected!("avx2");
    while used + 4 <= s.len() {
        let quads = ((s.len() - used) / 4).min(24);
        let mut done = 0;
        // Eight quads at a time with AVX2 while all 32 characters are in the alphabet and keep
        // a common alphabet; the first chunk that does not goes to the quad loop below, which
        // finds the exact quad to stop at.
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            while done + 8 <= quads {
                let at = used + 4 * done;
                let Some(chunk) = s.get(at..at + 32).and_then(|c| <&[u8; 32]>::try_from(c).ok()) else { break };
                let Some(dst) = out.get_mut(o + 3 * done..o + 3 * done + 24).and_then(|d| <&mut [MaybeUninit<u8>; 24]>::try_from(d).ok()) else { break };
                // SAFETY: AVX2 presence was checked above.
                let Some(common) = (unsafe { simd::decode32(chunk, alphabets, dst) }) else { break };
                alphabets = common;
                done += 8;
            }
        }
        for (c, d) in s[used + 4 * done..used + 4 * quads].chunks_exact(4).zip(out[o + 3 * done..o + 3 * quads].chunks_exact_mut(3)) {
            let q = [B64_TABLE[c[0] as usize], B64_TABLE[c[1] as usize], B64_TABLE[c[2] as usize], B64_TABLE[c[3] as usize]];
            let common = alphabets & q[0] >> 6 & q[1] >> 6 & q[2] >> 6 & q[3] >> 6;
            if common == 0 {
                break;
            }
            alphabets = common;
            let w = u32::from(q[0] & 63) << 18 | u32::from(q[1] & 63) << 12 | u32::from(q[2] & 63) << 6 | u32::from(q[3] & 63);
            d[0].write((w >> 16) as u8);
            d[1].write((w >> 8) as u8);
            d[2].write(w as u8);
            done += 1;
        }
        o += 3 * done;
        used += 4 * done;
        if text_only && o >= next_check {
            if proof.not_text(written(out, o), most) {
                return None;
            }
            next_check = o + proof.bytes_before_possible(most).max(64);
        }
        if done < quads {
            break;
        }
    }
    let mut acc: u32 = 0;
    let mut nbits = 0;
    for &b in &s[used..] {
        let Some((v, alpha)) = b64_val(b) else { break };
        alphabets &= alpha;
        if alphabets == 0 {
            break;
        }
        acc = acc << 6 | u32::from(v);
        nbits += 6;
        used += 1;
        if nbits >= 8 {
            nbits -= 8;
            out[o].write((acc >> nbits) as u8);
            o += 1;
            if text_only && o >= next_check {
                if proof.not_text(written(out, o), most) {
                    return None;
                }
                next_check = o + proof.bytes_before_possible(most).max(64);
            }
        }
    }
    Some((o, used))
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{B64_STD, B64_URL};
    use std::arch::x86_64::*;

    /// [`super::mostly_text`] of at most 64 bytes (not empty) from one masked load: the counts
    /// are compares into mask registers, and UTF-8 is validated only when a byte is 0x80 or
    /// above and the answer depends on it.
    ///
    /// # Safety
    /// Requires AVX-512 F and BW, and `s.len() <= 64`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn mostly_text_short(s: &[u8]) -> bool {
        let valid = crate::runs::low_bits(s.len());
        let v = _mm512_maskz_loadu_epi8(valid, s.as_ptr() as *const i8);
        let is = |b: u8| _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b as i8));
        let low = _mm512_cmplt_epu8_mask(v, _mm512_set1_epi8(0x20)) & !(is(b'\t') | is(b'\n') | is(b'\r')) & valid;
        let high = _mm512_movepi8_mask(v) & valid;
        let control = (low | is(0x7f)) & valid;
        let non_printable = low | (_mm512_cmpge_epu8_mask(v, _mm512_set1_epi8(0x7f)) & valid);
        let utf8 = high == 0 || std::str::from_utf8(s).is_ok();
        if utf8 {
            control.count_ones() as usize * 50 <= s.len()
        } else {
            non_printable.count_ones() as usize * 10 <= s.len()
        }
    }

    /// Whether the base64 in `s` (at most 64 characters from the start of a quad) surely
    /// decodes to bytes that fail [`super::mostly_text`], from the characters alone: `false`
    /// when unsure, and whenever `s` holds a byte outside both alphabets or characters of both
    /// (the decoder stops early there).
    ///
    /// From the top bits of the output bytes ([`top_bits`]): a byte `10xxxxxx` after a byte
    /// below 0x80, or first, is invalid UTF-8, which fails the UTF-8 route; bytes of 0x80 and
    /// above are non-printable, and more than a tenth of them fails the other route. Most URL
    /// path parts, UUIDs and hashes show both, and are rejected without a decode.
    ///
    /// # Safety
    /// Requires AVX-512 F, BW and VBMI, and `s.len() <= 64`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn surely_not_text(s: &[u8]) -> bool {
        let n = s.len();
        if n < 2 {
            return false;
        }
        match top_bits(s, 0) {
            Some((alphabets, top, stray)) => alphabets != 0 && stray != 0 && top.count_ones() as usize * 10 > n * 6 / 8,
            None => false,
        }
    }

    /// [`surely_not_text`] for base64 of any length, from its whole 64-character steps (48
    /// bytes out each), which need no decode: the output bytes of 0x80 and above are counted
    /// (all are non-printable) until they are more than a tenth of the longest possible
    /// output and a stray continuation byte has broken UTF-8. Random blobs (images,
    /// ciphertext) are half such bytes and show a stray one within a few, so a fifth of the
    /// blob proves it. Stops unsure at the first step with a character the decoder would stop
    /// at (outside both alphabets, or of the other alphabet than those before).
    ///
    /// # Safety
    /// Requires AVX-512 F, BW and VBMI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn blob_surely_not_text(s: &[u8]) -> bool {
        let most = s.len() * 6 / 8;
        let (mut alphabets, mut top_count, mut broken, mut last_top) = (B64_STD | B64_URL, 0, false, 0);
        for step in s.chunks_exact(64) {
            let Some((common, top, stray)) = top_bits(step, last_top) else { return false };
            alphabets &= common;
            if alphabets == 0 {
                return false;
            }
            top_count += top.count_ones() as usize;
            broken |= stray != 0;
            if broken && top_count * 10 > most {
                return true;
            }
            // The step's last byte comes from its 63rd character.
            last_top = top >> 62 & 1;
        }
        false
    }

    /// For up to 64 base64 characters from the start of a quad: the alphabets they all
    /// belong to (zero when both kinds of alphabet-only characters are there), and by
    /// character position the output bytes of 0x80 and above and the bytes that are surely
    /// a stray UTF-8 continuation (`10xxxxxx` after a byte below 0x80; `top_before` is the
    /// top bit of the byte before the first). `None` when a character is in neither alphabet.
    ///
    /// The top two bits of each output byte are two bits of one character's value (bits 5-4
    /// of a quad's first character for its first byte, 3-2 of the second for the second, 1-0
    /// of the third for the third).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    unsafe fn top_bits(s: &[u8], top_before: u64) -> Option<(u8, u64, u64)> {
        let n = s.len();
        let valid = crate::runs::low_bits(n);
        let c = _mm512_maskz_loadu_epi8(valid, s.as_ptr() as *const i8);
        let table = super::B64_TABLE.as_ptr();
        let ascii = !_mm512_movepi8_mask(c) & valid;
        // `value | alphabets << 6`; bytes of 0x80 and above, and those outside `s`, are 0.
        let x = _mm512_maskz_permutex2var_epi8(ascii, _mm512_loadu_si512(table as *const _), c, _mm512_loadu_si512(table.add(64) as *const _));
        let alphabets = _mm512_and_si512(x, _mm512_set1_epi8(0xc0u8 as i8));
        let is = |a: u8| _mm512_cmpeq_epi8_mask(alphabets, _mm512_set1_epi8(a as i8)) & valid;
        let (bad, std_only, url_only) = (is(0), is(B64_STD << 6), is(B64_URL << 6));
        if bad != 0 {
            return None;
        }
        let common = (B64_STD | B64_URL) & (if std_only != 0 { B64_STD } else { !0 }) & (if url_only != 0 { B64_URL } else { !0 });
        // Per character position, the bits of its value that give an output byte's top two
        // bits, by position in the quad; the fourth character gives none.
        let by_phase = |bits: [u8; 4]| _mm512_set1_epi32(i32::from_le_bytes(bits));
        // A byte exists where the next character does.
        let bytes = 0x7777_7777_7777_7777u64 & (valid >> 1);
        let top = _mm512_test_epi8_mask(x, by_phase([0x20, 0x08, 0x02, 0])) & bytes;
        let second = _mm512_test_epi8_mask(x, by_phase([0x10, 0x04, 0x01, 0])) & bytes;
        // The byte before: one character back within a quad, two back across a quad's edge.
        let (first_in_quad, rest) = (0x1111_1111_1111_1111u64, 0x6666_6666_6666_6666u64);
        let before = (top << 1 & rest) | (top << 2 & first_in_quad) | top_before;
        Some((common, top, top & !second & !before))
    }

    /// Character classes as products of a high-nibble and a low-nibble set (bit `k` of
    /// `LO[c & 15] & HI[c >> 4]`): 0 digits, 1 `A-O a-o`, 2 `P-Z p-z`, 3 `+ /` (standard
    /// alphabet only), 4 `-` and 5 `_` (URL-safe only). Zero: not base64.
    const fn tables() -> ([u8; 32], [u8; 32]) {
        let products: [(&[u8], &[u8]); 6] = [
            (&[3], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            (&[4, 6], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
            (&[5, 7], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            (&[2], &[11, 15]),
            (&[2], &[13]),
            (&[5], &[15]),
        ];
        crate::runs::simd::nibble_tables(&products)
    }
    const CLASS: ([u8; 32], [u8; 32]) = tables();
    /// What to add to a letter or digit to get its value, by high nibble (both lanes).
    const OFFSET: [i8; 32] = {
        let mut t = [0i8; 32];
        let mut l = 0;
        while l < 2 {
            t[16 * l + 3] = 4; // '0' (48) -> 52
            t[16 * l + 4] = -65; // 'A' -> 0
            t[16 * l + 5] = -65;
            t[16 * l + 6] = -71; // 'a' (97) -> 26
            t[16 * l + 7] = -71;
            l += 1;
        }
        t
    };

    /// Decodes 32 base64 characters (eight quads) into the 24 bytes of `out` and returns the
    /// alphabets still possible, or `None` (and writes nothing) when one of them is outside
    /// both alphabets or they leave no alphabet in common with `alphabets`. Same bytes and
    /// alphabets as eight steps of the quad loop in `base64_decode_into`.
    ///
    /// # Safety
    /// Requires AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn decode32(chunk: &[u8; 32], alphabets: u8, out: &mut [std::mem::MaybeUninit<u8>; 24]) -> Option<u8> {
        let table = |t: &[u8; 32]| _mm256_loadu_si256(t.as_ptr() as *const __m256i);
        let v = _mm256_loadu_si256(chunk.as_ptr() as *const __m256i);
        let nib = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(v, nib);
        // Bytes of 0x80 and above get high nibbles 8-15, whose entries are empty.
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
        let class = _mm256_and_si256(_mm256_shuffle_epi8(table(&CLASS.0), lo), _mm256_shuffle_epi8(table(&CLASS.1), hi));
        let zero = _mm256_setzero_si256();
        if _mm256_movemask_epi8(_mm256_cmpeq_epi8(class, zero)) != 0 {
            return None;
        }
        let has = |bits: u8| _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(class, _mm256_set1_epi8(bits as i8)), zero)) != -1;
        let mut common = alphabets;
        if has(0b1000) {
            common &= B64_STD;
        }
        if has(0b11_0000) {
            common &= B64_URL;
        }
        if common == 0 {
            return None;
        }
        // Letters and digits by offset; `+ -` are 62 and `/ _` 63 in their alphabets.
        let eq = |c: u8| _mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8));
        let vals = _mm256_add_epi8(v, _mm256_shuffle_epi8(_mm256_loadu_si256(OFFSET.as_ptr() as *const __m256i), hi));
        let vals = _mm256_blendv_epi8(vals, _mm256_set1_epi8(62), _mm256_or_si256(eq(b'+'), eq(b'-')));
        let vals = _mm256_blendv_epi8(vals, _mm256_set1_epi8(63), _mm256_or_si256(eq(b'/'), eq(b'_')));
        // Per four characters a, b, c, d: a * 64 + b and c * 64 + d in 16 bits, then the 24-bit
        // (a b c d) in 32 bits, whose three low bytes are the output, high byte first.
        let pairs = _mm256_maddubs_epi16(vals, _mm256_set1_epi32(0x0140_0140));
        let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi32(0x0001_1000));
        let order = _mm256_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1, 2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
        let packed = _mm256_shuffle_epi8(quads, order);
        // The twelve bytes of each lane side by side (dwords 0-2 and 4-6), then two stores.
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, _mm256_castsi256_si128(packed));
        _mm_storel_epi64(out.as_mut_ptr().add(16) as *mut __m128i, _mm256_extracti128_si256::<1>(packed));
        Some(common)
    }
}

/// Running evidence, over a prefix of some decoded output of at most `most` bytes, that the
/// whole output fails [`mostly_text`] or is [`is_binary_media`].
#[derive(Default)]
struct TextProof {
    seen: usize,
    control: usize,
    non_printable: usize,
    /// The prefix up to here is valid UTF-8 (`utf8_checked` bytes have been validated).
    utf8_checked: usize,
    utf8_broken: bool,
}

impl TextProof {
    fn not_text(&mut self, prefix: &[u8], most: usize) -> bool {
        if self.seen == 0 && is_binary_media(prefix) {
            return true;
        }
        let (control, non_printable) = byte_counts(&prefix[self.seen..]);
        self.control += control;
        self.non_printable += non_printable;
        self.seen = prefix.len();
        if !self.utf8_broken {
            match std::str::from_utf8(&prefix[self.utf8_checked..]) {
                Ok(_) => self.utf8_checked = prefix.len(),
                // A sequence cut by the prefix end is not an error yet.
                Err(e) => match e.error_len() {
                    Some(_) => self.utf8_broken = true,
                    None => self.utf8_checked += e.valid_up_to(),
                },
            }
        }
        // `mostly_text` is false iff (invalid UTF-8 or control * 50 > len) and
        // non_printable * 100 > len * 10; the counts only grow and len <= most.
        let utf8_route_fails = self.utf8_broken || self.control * 50 > most;
        utf8_route_fails && self.non_printable * 100 > most * 10
    }

    /// Bytes that must be added before [`TextProof::not_text`] can hold: it needs more than
    /// `most / 10` non-printable bytes, and each byte adds at most one. Checking no sooner
    /// gives the same answers with fewer, longer counts.
    fn bytes_before_possible(&self, most: usize) -> usize {
        (most / 10 + 1).saturating_sub(self.non_printable)
    }
}

/// RFC 4648 base32 (uppercase or lowercase, padding optional).
pub(crate) fn base32_decode(s: &[u8], base: usize) -> Option<(Vec<u8>, OffsetMap)> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8 + 1);
    let mut acc: u64 = 0;
    let mut nbits = 0;
    let mut used = 0;
    for &b in s {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a',
            b'2'..=b'7' => b - b'2' + 26,
            _ => break,
        };
        acc = acc << 5 | u64::from(v);
        nbits += 5;
        used += 1;
        if nbits >= 8 {
            nbits -= 8;
            out.push((acc >> nbits) as u8);
        }
    }
    (out.len() >= 8).then_some((out, OffsetMap::Bits { base, bits: 5, enc_len: used }))
}

/// Plain hex (even run of hex digits).
pub(crate) fn hex_decode(s: &[u8], base: usize) -> Option<(Vec<u8>, OffsetMap)> {
    let len = s.iter().take_while(|b| b.is_ascii_hexdigit()).count() & !1;
    if len < 16 {
        return None;
    }
    let out: Vec<u8> = s[..len].chunks_exact(2).map(|p| hex_val(p[0]).unwrap_or(0) << 4 | hex_val(p[1]).unwrap_or(0)).collect();
    Some((out, OffsetMap::Bits { base, bits: 4, enc_len: len }))
}

/// Hex pairs with separators: `de:ad`, `de ad`, `de-ad`, `0xde, 0xad`, `\xde\xad`.
pub(crate) fn hex_separated_decode(s: &[u8], base: usize) -> Option<(Vec<u8>, OffsetMap)> {
    let mut out = Vec::new();
    let mut table = Vec::new();
    let mut i = 0;
    while i + 1 < s.len() {
        let mut j = i;
        // A `\x` or `0x` prefix (the latter only before two hex digits) is skipped.
        let escaped = s[j] == b'\\' && s.get(j + 1) == Some(&b'x');
        let prefixed = s[j] == b'0' && matches!(s.get(j + 1), Some(b'x' | b'X')) && s.get(j + 3).is_some_and(u8::is_ascii_hexdigit);
        if escaped || prefixed {
            j += 2;
        }
        match (s.get(j).copied().and_then(hex_val), s.get(j + 1).copied().and_then(hex_val)) {
            (Some(h), Some(l)) if !s.get(j + 2).is_some_and(u8::is_ascii_hexdigit) => {
                table.push((base + i) as u32);
                out.push(h << 4 | l);
                i = j + 2;
                while i < s.len() && matches!(s[i], b':' | b' ' | b'-' | b',' | b'\n') {
                    i += 1;
                }
            }
            _ => break,
        }
    }
    table.push((base + i) as u32);
    (out.len() >= 8).then_some((out, OffsetMap::Table(table)))
}

/// Characters that render as nothing and are used to break up a token.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0
        | 0x1BCA0..=0x1BCA3 | 0xE0000..=0xE007F | 0xE0100..=0xE01EF)
}

/// Cyrillic, Greek and other letters that look like ASCII ones (the subset of Unicode's
/// confusables that matters for tokens and keywords).
pub(crate) fn confusable_ascii(c: char) -> Option<char> {
    Some(match c {
        'а' => 'a', 'в' => 'b', 'е' => 'e', 'к' => 'k', 'м' => 'm', 'н' => 'h', 'о' => 'o', 'р' => 'p', 'с' => 'c',
        'т' => 't', 'у' => 'y', 'х' => 'x', 'ѕ' => 's', 'і' => 'i', 'ј' => 'j', 'ԁ' => 'd', 'ԛ' => 'q', 'ԝ' => 'w',
        'ɡ' => 'g', 'ɩ' => 'i', 'ɑ' => 'a', 'ı' => 'i',
        'А' => 'A', 'В' => 'B', 'Е' => 'E', 'К' => 'K', 'М' => 'M', 'Н' => 'H', 'О' => 'O', 'Р' => 'P', 'С' => 'C',
        'Т' => 'T', 'Х' => 'X', 'У' => 'Y', 'Ѕ' => 'S', 'І' => 'I', 'Ј' => 'J', 'Ԁ' => 'D', 'Ԛ' => 'Q', 'Ԝ' => 'W',
        'α' => 'a', 'ο' => 'o', 'ρ' => 'p', 'ν' => 'v', 'τ' => 't', 'υ' => 'u', 'ι' => 'i', 'κ' => 'k', 'χ' => 'x',
        'Α' => 'A', 'Β' => 'B', 'Ε' => 'E', 'Ζ' => 'Z', 'Η' => 'H', 'Ι' => 'I', 'Κ' => 'K', 'Μ' => 'M', 'Ν' => 'N',
        'Ο' => 'O', 'Ρ' => 'P', 'Τ' => 'T', 'Υ' => 'Y', 'Χ' => 'X',
        '‐' | '‑' | '‒' | '–' | '—' | '−' => '-',
        '＿' => '_',
        _ => return None,
    })
}

/// Folds a UTF-8 region: drops invisible characters, applies NFKC (full-width and mathematical
/// letters become ASCII) and maps confusable letters to ASCII. Returns `None` if nothing changed.
pub(crate) fn unicode_fold(s: &[u8], base: usize) -> Option<(Vec<u8>, OffsetMap)> {
    use unicode_normalization::UnicodeNormalization;
    let mut out = Vec::with_capacity(s.len());
    let mut table = Vec::with_capacity(s.len() + 1);
    let mut changed = false;
    let mut i = 0;
    while i < s.len() {
        let (c, len) = decode_char(&s[i..]);
        let start = base + i;
        i += len;
        let Some(c) = c else {
            table.push(start as u32);
            out.push(s[i - len]);
            continue;
        };
        if c.is_ascii() {
            table.push(start as u32);
            out.push(c as u8);
            continue;
        }
        changed = true;
        if is_invisible(c) {
            continue;
        }
        if let Some(a) = confusable_ascii(c) {
            table.push(start as u32);
            out.push(a as u8);
            continue;
        }
        let mut buf = [0u8; 4];
        for n in std::iter::once(c).nfkc() {
            let n = confusable_ascii(n).unwrap_or(n);
            for &b in n.encode_utf8(&mut buf).as_bytes() {
                table.push(start as u32);
                out.push(b);
            }
        }
    }
    table.push((base + s.len()) as u32);
    changed.then_some((out, OffsetMap::Table(table)))
}

/// Decodes one UTF-8 scalar; invalid bytes come back as `(None, 1)`.
pub(crate) fn decode_char(s: &[u8]) -> (Option<char>, usize) {
    let len = match s[0] {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (None, 1),
    };
    match s.get(..len).and_then(|b| std::str::from_utf8(b).ok()) {
        Some(st) => (st.chars().next(), len),
        None => (None, 1),
    }
}

/// JSON string unescaping (`\uXXXX` with surrogate pairs, `\n`, `\/`, ...) of a string body
/// without its quotes. `None` when the string has no escapes.
pub(crate) fn json_unescape(s: &[u8], base: usize) -> Option<(Vec<u8>, OffsetMap)> {
    memchr::memchr(b'\\', s)?;
    let mut out = Vec::with_capacity(s.len());
    let mut table = Vec::with_capacity(s.len() + 1);
    let mut i = 0;
    while i < s.len() {
        let at = (base + i) as u32;
        if s[i] != b'\\' || i + 1 >= s.len() {
            table.push(at);
            out.push(s[i]);
            i += 1;
            continue;
        }
        let simple = match s[i + 1] {
            b'n' => Some(b'\n'), b't' => Some(b'\t'), b'r' => Some(b'\r'), b'b' => Some(8), b'f' => Some(12),
            b'/' => Some(b'/'), b'\\' => Some(b'\\'), b'"' => Some(b'"'),
            _ => None,
        };
        if let Some(c) = simple {
            table.push(at);
            out.push(c);
            i += 2;
            continue;
        }
        let hex4 = |k: usize| -> Option<u32> {
            let h = s.get(k..k + 4)?;
            h.iter().try_fold(0u32, |acc, &b| Some(acc << 4 | u32::from(hex_val(b)?)))
        };
        if s[i + 1] == b'u' {
            if let Some(mut cp) = hex4(i + 2) {
                let mut used = 6;
                if (0xD800..0xDC00).contains(&cp) && s.get(i + 6..i + 8) == Some(b"\\u") {
                    if let Some(lo) = hex4(i + 8).filter(|lo| (0xDC00..0xE000).contains(lo)) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        used = 12;
                    }
                }
                let c = char::from_u32(cp).unwrap_or('\u{FFFD}');
                let mut buf = [0u8; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    table.push(at);
                    out.push(b);
                }
                i += used;
                continue;
            }
        }
        table.push(at);
        out.push(s[i]);
        i += 1;
    }
    table.push((base + s.len()) as u32);
    Some((out, OffsetMap::Table(table)))
}

/// Whether decoded bytes look like text worth scanning again: valid UTF-8 with few control
/// characters, or nearly all printable ASCII. Random binary (images, ciphertext) fails both.
pub(crate) fn mostly_text(s: &[u8]) -> bool {
    if s.is_empty() {
        return false;
    }
    // Most candidates are short (URL path parts, UUIDs, hashes), where the counting loops
    // below cost more than their setup: 64 bytes fit one register.
    #[cfg(target_arch = "x86_64")]
    {
        if s.len() <= 64 && std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX-512 BW presence was just checked; `s` has at most 64 bytes.
            return unsafe { simd::mostly_text_short(s) };
        }
    }
    if std::str::from_utf8(s).is_ok() {
        return byte_counts(s).0 * 50 <= s.len();
    }
    // At most a tenth non-printable ((len - np) * 100 >= len * 90), counted 16 bytes at a time
    // so that random bytes (most base64 candidates: UUIDs, hashes) stop after a few.
    let mut non_printable = 0;
    for chunk in s.chunks(16) {
        non_printable += byte_counts(chunk).1;
        if non_printable * 10 > s.len() {
            return false;
        }
    }
    true
}

/// `(control, non_printable)` byte counts: control is below 0x20 except tab, LF and CR, or DEL;
/// non-printable is anything outside 0x20..0x7f except tab, LF and CR. Branch-free over
/// chunks with byte-sized sums so that it vectorises.
fn byte_counts(s: &[u8]) -> (usize, usize) {
    let (mut control, mut non_printable) = (0, 0);
    for chunk in s.chunks(255) {
        let (mut c, mut n) = (0u8, 0u8);
        for &b in chunk {
            let low = (b < 0x20) & (b != b'\n') & (b != b'\r') & (b != b'\t');
            c += u8::from(low | (b == 0x7f));
            n += u8::from(low | (b >= 0x7f));
        }
        control += usize::from(c);
        non_printable += usize::from(n);
    }
    (control, non_printable)
}

/// Image and archive magic numbers: base64 of these is content, not smuggling.
pub(crate) fn is_binary_media(s: &[u8]) -> bool {
    const MAGIC: &[&[u8]] = &[b"\x89PNG", b"\xFF\xD8\xFF", b"GIF8", b"RIFF", b"\x00\x00\x00", b"%PDF", b"PK\x03\x04", b"\x1F\x8B", b"<svg", b"wOF"];
    MAGIC.iter().any(|m| s.starts_with(m))
}

/// Separated hex starting anywhere in `s` (the first run of at least eight pairs).
pub(crate) fn hex_separated_decode_anywhere(s: &[u8], base: usize) -> Option<(Vec<u8>, OffsetMap)> {
    let mut i = 0;
    while i + 16 <= s.len() {
        // Cheap shape check before decoding: a pair (or `\x`/`0x` + pair) then a separator.
        let pair_then_sep = |k: usize| s.get(k..k + 3).is_some_and(|p| p[0].is_ascii_hexdigit() && p[1].is_ascii_hexdigit() && matches!(p[2], b':' | b' ' | b'-' | b',' | b'\\'));
        let starts = (i == 0 || matches!(s[i - 1], b' ' | b':' | b',' | b'-' | b'\n' | b'"' | b'\''))
            && (pair_then_sep(i) || ((s[i] == b'\\' || s[i] == b'0') && matches!(s[i + 1], b'x' | b'X') && s[i + 2].is_ascii_hexdigit()));
        if starts {
            if let Some(found) = hex_separated_decode(&s[i..], base + i) {
                return Some(found);
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_maps_back_to_encoded_range() {
        let enc = b"xxZ2hwX0FCQ0RFRkdISUpL"; // "ghp_ABCDEFGHIJK" after two junk bytes
        let (dec, map) = base64_decode(enc, 100, 2).unwrap();
        assert_eq!(&dec[..4], b"ghp_");
        let r = map.map(&(0..4));
        assert_eq!(r, 102..108);
    }

    /// On short pieces (URL path parts, UUIDs, hashes, and base64 of text and of mixes), the
    /// character-only rejection holds only where a full decode fails the text checks, rejects
    /// most pieces of random characters, and leaves `base64_decode_text` exact.
    #[test]
    fn short_pieces_rejected_exactly() {
        use base64::Engine as _;
        let mut rng = crate::template::Rng::new(29);
        let (mut rejected, mut random) = (0, 0);
        for round in 0..40_000 {
            let piece: Vec<u8> = match round % 4 {
                // Random characters of one alphabet, or of both.
                0 | 1 => {
                    let alphabet: &[u8] = match rng.below(3) {
                        0 => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                        1 => b"abcdefghijklmnopqrstuvwxyz0123456789/-_",
                        _ => b"0123456789abcdef-",
                    };
                    (0..rng.below(70)).map(|_| alphabet[rng.below(alphabet.len())]).collect()
                }
                // Base64 of text, of text with a few odd bytes, and of UTF-8.
                r => {
                    let text = "plain text, \u{e9}t\u{e9} and \u{20ac}\t\n".as_bytes();
                    let raw: Vec<u8> = (0..rng.below(50)).map(|i| if r == 2 && rng.below(8) == 0 { rng.next_u64() as u8 } else { text[i % text.len()] }).collect();
                    let engine = if rng.below(2) == 0 { &base64::engine::general_purpose::STANDARD_NO_PAD } else { &base64::engine::general_purpose::URL_SAFE_NO_PAD };
                    engine.encode(&raw).into_bytes()
                }
            };
            let skip = rng.below(4).min(piece.len());
            let full = base64_decode(&piece, 0, skip).filter(|(d, _)| mostly_text(d) && !is_binary_media(d));
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512vbmi") && piece.len() - skip <= 64 {
                // SAFETY: just checked; the piece has at most 64 bytes after `skip`.
                if unsafe { simd::surely_not_text(&piece[skip..]) } {
                    assert!(full.is_none(), "{:?} skip {skip}", String::from_utf8_lossy(&piece));
                    rejected += usize::from(round % 4 < 2);
                }
                random += usize::from(round % 4 < 2 && piece.len() - skip >= 16);
            }
            let fast = base64_decode_text(&piece, 0, skip).filter(|(d, _)| mostly_text(d) && !is_binary_media(d));
            assert_eq!(full.map(|x| x.0), fast.map(|x| x.0), "{:?} skip {skip}", String::from_utf8_lossy(&piece));
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512vbmi") {
            assert!(rejected * 2 > random, "{rejected} of {random} random pieces of 16 or more rejected");
        }
    }

    /// The early-out decoder answers exactly as a full decode followed by the text checks.
    #[test]
    fn base64_text_early_out_is_exact() {
        use base64::Engine as _;
        let mut rng = crate::template::Rng::new(3);
        let (mut random, mut proved) = (0, 0);
        for round in 0..1400 {
            let n = rng.below(2000);
            let mut raw: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            match round % 7 {
                0 => raw.iter_mut().for_each(|b| *b = b'a' + *b % 26),
                1 => raw.iter_mut().skip(n / 2).for_each(|b| *b = b' ' + *b % 90),
                2 => raw.iter_mut().take(n / 3).for_each(|b| *b = b'A' + *b % 50),
                // UTF-8 with mostly multibyte characters: bytes of 0x80 and above everywhere,
                // sequences across every step edge, and none of them stray.
                3 | 4 => {
                    let text: String = (0..n / 2).map(|_| ['\u{e9}', '\u{20ac}', '\u{1f600}', 'x', '\n'][rng.below(5)]).collect();
                    raw = text.into_bytes();
                }
                _ => {}
            }
            let mut enc = if round % 2 == 0 { base64::engine::general_purpose::STANDARD.encode(&raw) } else { base64::engine::general_purpose::URL_SAFE.encode(&raw) }.into_bytes();
            // Now and then a byte the decoder stops at: outside both alphabets, or of the
            // other alphabet.
            if round % 3 == 0 && !enc.is_empty() {
                let at = rng.below(enc.len());
                enc[at] = b"!-_+/."[rng.below(6)];
            }
            for skip in 0..3 {
                let full = base64_decode(&enc, 5, skip).filter(|(d, _)| mostly_text(d) && !is_binary_media(d));
                let fast = base64_decode_text(&enc, 5, skip).filter(|(d, _)| mostly_text(d) && !is_binary_media(d));
                assert_eq!(full.as_ref().map(|x| &x.0), fast.as_ref().map(|x| &x.0), "round {round} skip {skip}");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx512vbmi") && enc.len() > skip {
                    // SAFETY: just checked.
                    if unsafe { simd::blob_surely_not_text(&enc[skip..]) } {
                        assert!(full.is_none(), "round {round} skip {skip}");
                        proved += usize::from(round % 7 > 4 && round % 3 != 0);
                    }
                    random += usize::from(round % 7 > 4 && round % 3 != 0 && n >= 100);
                }
            }
        }
        // Random blobs of 100 bytes or more are proved without a decode.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512vbmi") {
            assert!(proved * 10 > random * 9, "{proved} of {random}");
        }
    }

    /// Base64 decoded a byte at a time: the bytes, and how many characters were used before
    /// one outside the alphabet (or from the other alphabet) stopped it. The reference the
    /// decoders are checked against, kept apart from their own byte-at-a-time tail.
    fn bytewise_base64(s: &[u8]) -> (Vec<u8>, usize) {
        let (mut out, mut acc, mut nbits, mut used, mut alphabets) = (Vec::new(), 0u32, 0, 0, B64_STD | B64_URL);
        for &b in s {
            let Some((v, alpha)) = b64_val(b) else { break };
            alphabets &= alpha;
            if alphabets == 0 {
                break;
            }
            acc = acc << 6 | u32::from(v);
            nbits += 6;
            used += 1;
            if nbits >= 8 {
                nbits -= 8;
                out.push((acc >> nbits) as u8);
            }
        }
        (out, used)
    }

    /// The quad decoder equals a byte-at-a-time reference, including where it stops (bytes
    /// outside the alphabet, mixed standard and URL-safe alphabets).
    #[test]
    fn base64_quads_match_bytewise() {
        let mut rng = crate::template::Rng::new(11);
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=.";
        for round in 0..3000 {
            let n = rng.below(300);
            let s: Vec<u8> = (0..n).map(|_| alphabet[rng.below(if round % 2 == 0 { 64 } else { alphabet.len() })]).collect();
            for skip in 0..4 {
                let want = s.get(skip..).map(bytewise_base64).filter(|(o, _)| o.len() >= 8);
                let got = base64_decode(&s, 0, skip).map(|(o, m)| match m {
                    OffsetMap::Bits { enc_len, .. } => (o, enc_len),
                    OffsetMap::Table(_) => unreachable!(),
                });
                assert_eq!(got, want, "round {round} skip {skip}");
            }
        }
    }

    /// Long runs with rare bytes outside the alphabet or from the other alphabet, so that the
    /// eight-quad AVX2 step is taken and also refused at every position: same bytes and the
    /// same stopping point as the byte-at-a-time reference (which `base64_decode` is checked
    /// against above, there mostly on short inputs).
    #[test]
    fn base64_wide_steps_match_quads() {
        let mut rng = crate::template::Rng::new(12);
        let letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let rare: &[u8] = b"+/-_=.:\x00\xff\x80 ";
        for round in 0..4000 {
            let n = rng.below(800);
            let every = [0, 20, 100, 400][round % 4];
            let s: Vec<u8> = (0..n).map(|_| if every > 0 && rng.below(every) == 0 { rare[rng.below(rare.len())] } else { letters[rng.below(letters.len())] }).collect();
            let want = Some(bytewise_base64(&s)).filter(|(o, _)| o.len() >= 8);
            let got = base64_decode(&s, 0, 0).map(|(o, m)| match m {
                OffsetMap::Bits { enc_len, .. } => (o, enc_len),
                OffsetMap::Table(_) => unreachable!(),
            });
            assert_eq!(got, want, "round {round}");
        }
    }

    /// The early-out `mostly_text` answers as its definition on text, binary and mixes.
    #[test]
    fn mostly_text_matches_definition() {
        fn definition(s: &[u8]) -> bool {
            if s.is_empty() {
                return false;
            }
            let (control, non_printable) = byte_counts(s);
            if std::str::from_utf8(s).is_ok() {
                return control * 50 <= s.len();
            }
            (s.len() - non_printable) * 100 >= s.len() * 90
        }
        let mut rng = crate::template::Rng::new(13);
        let text = "plain text, tabs\t and \u{e9}t\u{e9} \u{1F600}\n".as_bytes();
        for round in 0..20_000 {
            let n = rng.below(if round % 10 == 0 { 600 } else { 80 });
            let odd = [0, 3, 10, 30, 100][round % 5];
            let s: Vec<u8> = (0..n).map(|i| if rng.below(100) < odd { rng.next_u64() as u8 } else { text[i % text.len()] }).collect();
            assert_eq!(mostly_text(&s), definition(&s), "{s:?}");
        }
    }

    #[test]
    fn byte_counts_match_definition() {
        let all: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        let control = all.iter().filter(|&&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t') || b == 0x7f).count();
        let printable = all.iter().filter(|&&b| (0x20..0x7f).contains(&b) || matches!(b, b'\n' | b'\r' | b'\t')).count();
        assert_eq!(byte_counts(&all), (control, all.len() - printable));
    }

    #[test]
    fn url_decode_and_tables() {
        let (dec, map) = url_decode(b"a%41%4b+b%", 0).unwrap();
        assert_eq!(dec, b"aAK b%");
        assert_eq!(map.map(&(1..3)), 1..7);
    }

    #[test]
    fn hex_forms() {
        assert_eq!(hex_decode(b"6768705f4142434445464748", 0).unwrap().0, b"ghp_ABCDEFGH");
        assert_eq!(hex_separated_decode(b"67:68:70:5f:41:42:43:44", 0).unwrap().0, b"ghp_ABCD");
        assert_eq!(hex_separated_decode(b"\\x67\\x68\\x70\\x5f\\x41\\x42\\x43\\x44", 0).unwrap().0, b"ghp_ABCD");
        assert_eq!(hex_separated_decode(b"0x67, 0x68, 0x70, 0x5f, 0x41, 0x42, 0x43, 0x44", 0).unwrap().0, b"ghp_ABCD");
    }

    #[test]
    fn unicode_fold_strips_invisibles_and_homoglyphs() {
        let s = "g\u{200b}h\u{200b}p_ＡＢ\u{0421}".as_bytes();
        let (dec, _) = unicode_fold(s, 0).unwrap();
        assert_eq!(dec, b"ghp_ABC");
        assert!(unicode_fold(b"plain", 0).is_none());
        let _ = unicode_fold(b"\xff\xfe\xe2\x80", 0);
    }

    #[test]
    fn json_unescape_handles_surrogates_and_truncation() {
        let (dec, _) = json_unescape(br"\u0067hp_\ud83d\ude00\u12", 0).unwrap();
        assert_eq!(&dec[..4], b"ghp_");
        assert!(dec.ends_with(b"\\u12"));
    }
}
