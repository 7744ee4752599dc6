//! Whether a name (`client_secret`, `X-Api-Key`, `DB_PASSWORD`) says that its value is a
//! secret: the name test of the generic secret-assignment rule.
//!
//! The rule asks this of the name before every random-looking value that follows `:` or `=`,
//! which in JSON is nearly every string value (`"uuid":"…"`, `"attachment":"…"`). Those names
//! are short and almost never hold a secret word, and an Aho-Corasick search of a few bytes
//! costs mostly its setup. So each position's next four bytes, case folded, are first looked
//! up in a table of the words' first four bytes; the automaton runs only where one is there.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, BuildError};

/// Words that make a high-entropy value a probable secret when they name it. Each has at
/// least [`HEAD`] bytes.
const SECRET_WORDS: &[&[u8]] = &[
    b"secret", b"token", b"passw", b"api_key", b"apikey", b"api-key", b"access_key", b"accesskey", b"private_key",
    b"privatekey", b"auth", b"credential", b"client_secret", b"signing_key", b"encryption_key", b"session_key", b"bearer",
];

/// Bytes of a word that the table holds.
const HEAD: usize = 4;
/// Bits of the head table's index.
const TABLE_BITS: u32 = 12;

/// [`SECRET_WORDS`], ASCII case-insensitive, with the head table in front.
pub(crate) struct SecretNames {
    words: AhoCorasick,
    /// Bit `hash(fold(head))` is set for each word's first [`HEAD`] bytes.
    heads: Box<[u64; 1 << (TABLE_BITS - 6)]>,
}

/// Four bytes with bit 5 set in each: bytes that are equal ignoring ASCII case stay equal
/// (other bytes may collide, which only lets the automaton run).
#[inline]
fn fold(four: [u8; HEAD]) -> u32 {
    u32::from_le_bytes(four) | 0x2020_2020
}

#[inline]
fn slot(folded: u32) -> usize {
    (folded.wrapping_mul(0x9e37_79b1) >> (32 - TABLE_BITS)) as usize
}

impl SecretNames {
    pub fn new() -> Result<SecretNames, BuildError> {
        let mut heads = Box::new([0u64; 1 << (TABLE_BITS - 6)]);
        for word in SECRET_WORDS {
            let s = slot(fold(word[..HEAD].try_into().expect("every word has a head")));
            heads[s / 64] |= 1 << (s % 64);
        }
        Ok(SecretNames { words: AhoCorasickBuilder::new().ascii_case_insensitive(true).build(SECRET_WORDS)?, heads })
    }

    /// Whether `name` holds a secret word, ignoring ASCII case.
    pub fn is_match(&self, name: &[u8]) -> bool {
        self.has_head(name) && self.words.is_match(name)
    }

    /// Whether some four bytes of `name` may be a word's head (false: no word is there).
    fn has_head(&self, name: &[u8]) -> bool {
        name.windows(HEAD).any(|w| {
            let s = slot(fold(w.try_into().expect("windows of HEAD bytes")));
            self.heads[s / 64] >> (s % 64) & 1 == 1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Rng;

    #[test]
    fn every_word_has_a_head() {
        assert!(SECRET_WORDS.iter().all(|w| w.len() >= HEAD));
    }

    /// The table may only skip names the automaton rejects: compared with the automaton
    /// alone on real names, on every word in mixed case inside random bytes, and on random
    /// names, and it must skip most names that hold no word.
    #[test]
    fn same_answers_as_the_automaton() {
        let names = SecretNames::new().unwrap();
        let alone = AhoCorasickBuilder::new().ascii_case_insensitive(true).build(SECRET_WORDS).unwrap();
        let mut cases: Vec<Vec<u8>> = [
            "id", "uuid", "name", "email", "attachment", "href", "DB_PASSWORD", "X-Api-Key", "client_secret",
            "Authorization", "GITHUB_TOKEN", "bearer", "secre", "passwd", "ApiKey", "API-KEY", "author", "tokens",
            "accesskeyid", "PRIVATE_KEY_ID", "credentials", "aut", "",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let mut rng = Rng::new(7);
        for word in SECRET_WORDS {
            for _ in 0..20 {
                let mut name: Vec<u8> = (0..rng.below(6)).map(|_| b'a' + rng.below(26) as u8).collect();
                name.extend(word.iter().map(|&b| if rng.below(2) == 0 { b.to_ascii_uppercase() } else { b }));
                name.extend((0..rng.below(6)).map(|_| rng.next_u64() as u8));
                cases.push(name);
            }
        }
        let mut skipped = 0;
        let mut without_word = 0;
        for _ in 0..50_000 {
            let len = rng.below(24);
            // Bytes from a small alphabet of the words' letters, so some hold words.
            let name: Vec<u8> = (0..len).map(|_| b"secrtokpaswiyvblnd_-SECRTOKAPI"[rng.below(30)]).collect();
            cases.push(name);
        }
        for _ in 0..20_000 {
            let len = rng.below(24);
            cases.push((0..len).map(|_| rng.next_u64() as u8).collect());
        }
        for name in &cases {
            let expected = alone.is_match(name);
            assert_eq!(names.is_match(name), expected, "{:?}", String::from_utf8_lossy(name));
            if !expected {
                without_word += 1;
                skipped += usize::from(!names.has_head(name));
            }
        }
        assert!(skipped * 10 > without_word * 9, "the table skipped only {skipped} of {without_word} names");
    }
}
