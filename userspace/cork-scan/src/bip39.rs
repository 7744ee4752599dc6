//! BIP-39 seed phrases: the English wordlist (embedded from `data/bip39-english.txt`) and the
//! checksum that separates a real mnemonic from twelve dictionary words in a row.

use sha2::{Digest, Sha256};

static WORDLIST: &str = include_str!("../data/bip39-english.txt");

fn words() -> &'static [&'static str] {
    static WORDS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    WORDS.get_or_init(|| WORDLIST.lines().map(str::trim).filter(|w| !w.is_empty()).collect())
}

/// A word of 3 to 8 bytes packed into a `u64` (no word packs to 0).
fn pack(word: &[u8]) -> u64 {
    word.iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b))
}

const SLOTS: usize = 4096;

fn slot(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize
}

/// Open-addressing table of the packed words: the prose of every body goes through
/// [`word_index`], and a binary search of strings cost ~1 µs per sentence.
fn table() -> &'static [(u64, u16)] {
    static TABLE: std::sync::OnceLock<Vec<(u64, u16)>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![(0u64, 0u16); SLOTS];
        let mut sorted: Vec<&str> = words().to_vec();
        sorted.sort_unstable();
        for w in words() {
            if !(3..=8).contains(&w.len()) {
                continue;
            }
            // The index is the position in the sorted list, as a binary search would give.
            let Ok(idx) = sorted.binary_search(w) else { continue };
            let key = pack(w.as_bytes());
            let mut s = slot(key);
            while t[s].0 != 0 && t[s].0 != key {
                s = (s + 1) % SLOTS;
            }
            t[s] = (key, idx as u16);
        }
        t
    })
}

/// Index of `word` in the English list (which is sorted), if present.
pub fn word_index(word: &[u8]) -> Option<u16> {
    if word.len() < 3 || word.len() > 8 {
        return None;
    }
    let key = pack(word);
    let t = table();
    let mut s = slot(key);
    loop {
        match t[s] {
            (0, _) => return None,
            (k, i) if k == key => return Some(i),
            _ => s = (s + 1) % SLOTS,
        }
    }
}

/// Whether `indices` (12, 15, 18, 21 or 24 words) carry a valid BIP-39 checksum.
pub fn checksum_valid(indices: &[u16]) -> bool {
    let n = indices.len();
    if !matches!(n, 12 | 15 | 18 | 21 | 24) {
        return false;
    }
    let total_bits = n * 11;
    let cs_bits = total_bits / 33;
    let ent_bits = total_bits - cs_bits;
    let mut bits = Vec::with_capacity(total_bits);
    for &i in indices {
        for k in (0..11).rev() {
            bits.push((i >> k) & 1 == 1);
        }
    }
    let mut entropy = vec![0u8; ent_bits / 8];
    for (i, &bit) in bits[..ent_bits].iter().enumerate() {
        if bit {
            entropy[i / 8] |= 0x80 >> (i % 8);
        }
    }
    let digest = Sha256::digest(&entropy);
    (0..cs_bits).all(|i| ((digest[i / 8] >> (7 - i % 8)) & 1 == 1) == bits[ent_bits + i])
}

/// Finds checksum-valid mnemonics in `text`; returns byte ranges. Words are runs of lowercase
/// ASCII letters separated by whitespace (or a comma); anything else breaks the sequence.
/// Callers skip prose first with a shape check (`runs::Classes::twelve_word_shapes`): nothing
/// is found without 12 consecutive words of 3 to 8 letters.
pub fn find_phrases(text: &[u8], out: &mut Vec<std::ops::Range<usize>>) {
    // (start, end, index) of the current run of consecutive wordlist words.
    let mut run: Vec<(usize, usize, u16)> = Vec::new();
    let mut i = 0;
    let n = text.len();
    let flush = |run: &mut Vec<(usize, usize, u16)>, out: &mut Vec<std::ops::Range<usize>>| {
        // A run of 12..=24 words is a phrase if its checksum holds; so is one that starts or
        // ends the run (a neighbouring prose word may happen to be on the list). Elsewhere in a
        // longer run only 18+ word windows count: a 12-word checksum is only 4 bits, so 1 in 16
        // random windows would pass.
        if run.len() < 12 {
            run.clear();
            return;
        }
        let idx: Vec<u16> = run.iter().map(|w| w.2).collect();
        let edge = [24usize, 21, 18, 15, 12].into_iter().filter(|&len| len <= run.len()).find_map(|len| {
            if checksum_valid(&idx[..len]) {
                Some(0..len)
            } else if checksum_valid(&idx[run.len() - len..]) {
                Some(run.len() - len..run.len())
            } else {
                None
            }
        });
        if let Some(w) = edge {
            out.push(run[w.start].0..run[w.end - 1].1);
        } else if run.len() > 18 {
            let mut s = 0;
            while s + 18 <= run.len() {
                let found = [24usize, 21, 18].into_iter().find(|&len| {
                    s + len <= run.len() && checksum_valid(&run[s..s + len].iter().map(|w| w.2).collect::<Vec<_>>())
                });
                match found {
                    Some(len) => {
                        out.push(run[s].0..run[s + len - 1].1);
                        s += len;
                    }
                    None => s += 1,
                }
            }
        }
        run.clear();
    };
    while i < n {
        let b = text[i];
        if b.is_ascii_lowercase() {
            let start = i;
            while i < n && text[i].is_ascii_lowercase() {
                i += 1;
            }
            let bounded = i == n || !text[i].is_ascii_alphanumeric();
            let left_ok = start == 0 || !text[start - 1].is_ascii_alphanumeric();
            match word_index(&text[start..i]).filter(|_| bounded && left_ok) {
                Some(idx) => run.push((start, i, idx)),
                None => flush(&mut run, out),
            }
        } else if matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b',') {
            i += 1;
        } else {
            flush(&mut run, out);
            i += 1;
        }
    }
    flush(&mut run, out);
}

/// Byte-wise reference for the mask-driven shape check: whether `text` has 12 consecutive
/// words of the shape [`find_phrases`] can take (3 to 8
/// lowercase letters, not glued to another alphanumeric, with only separators between). A
/// wordlist word has that shape and any other byte ends a run there too, so without such a
/// stretch `find_phrases` cannot report anything.
#[cfg(test)]
pub(crate) fn has_twelve_word_shapes(text: &[u8]) -> bool {
    let n = text.len();
    let mut count = 0;
    let mut i = 0;
    while i < n {
        let b = text[i];
        if b.is_ascii_lowercase() {
            let start = i;
            while i < n && text[i].is_ascii_lowercase() {
                i += 1;
            }
            let ok = (3..=8).contains(&(i - start))
                && (i == n || !text[i].is_ascii_alphanumeric())
                && (start == 0 || !text[start - 1].is_ascii_alphanumeric());
            if ok {
                count += 1;
                if count >= 12 {
                    return true;
                }
            } else {
                count = 0;
            }
        } else {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t' | b',') {
                count = 0;
            }
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wordlist_is_complete_and_sorted() {
        assert_eq!(words().len(), 2048);
        assert!(words().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(word_index(b"abandon"), Some(0));
        assert_eq!(word_index(b"zoo"), Some(2047));
        assert_eq!(word_index(b"the"), None);
        // Same answers as a search of the list itself, for every word and some non-words.
        for (i, w) in words().iter().enumerate() {
            assert_eq!(word_index(w.as_bytes()), Some(i as u16), "{w}");
            let mut x = w.as_bytes().to_vec();
            x.push(b'q');
            assert_eq!(word_index(&x), words().binary_search(&std::str::from_utf8(&x).unwrap()).ok().map(|i| i as u16));
        }
        assert_eq!(word_index(b"ab\xffcd"), None);
    }

    /// Without the word shapes the pre-check looks for, nothing is ever found.
    #[test]
    fn shape_precheck_is_exact() {
        let mut rng = crate::template::Rng::new(5);
        let pieces: &[&[u8]] = &[b"abandon", b"about", b"zoo", b"the", b"committee", b"x", b" ", b" ", b"\n", b",", b".", b"A", b"7", b"ability",
            b"abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"];
        let mut found = 0;
        for round in 0..3000 {
            let mut text = Vec::new();
            for _ in 0..rng.below(80) {
                text.extend_from_slice(pieces[rng.below(pieces.len())]);
                if round % 2 == 0 {
                    text.push(b' ');
                }
            }
            let mut out = Vec::new();
            find_phrases(&text, &mut out);
            found += out.len();
            assert!(out.is_empty() || has_twelve_word_shapes(&text), "{}", String::from_utf8_lossy(&text));
        }
        assert!(found > 0);
    }

    #[test]
    fn finds_only_checksum_valid_phrases() {
        let mut out = Vec::new();
        find_phrases(b"x: abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about.", &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        find_phrases(b"abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon", &mut out);
        assert!(out.is_empty());
    }
}
