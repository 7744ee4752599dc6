//! Deterministic expansion of the `{class:len}` placeholders in rule examples.
//!
//! Classes: `a` alphanumeric, `l` lowercase alphanumeric, `u` uppercase alphanumeric, `L`
//! letters, `h` lowercase hex, `d` digits, `b` standard base64 alphabet, `s` base64url alphabet,
//! `B` bech32 uppercase, `B32` bech32 lowercase. The same seed gives the same string, so a failing
//! test is reproducible; different seeds vary the random part, so a rule cannot pass by accident
//! on a single lucky value.

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn alphabet(class: &str) -> Option<&'static [u8]> {
    Some(match class {
        "a" => ALNUM,
        "l" => b"abcdefghijklmnopqrstuvwxyz0123456789",
        "u" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        "L" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "h" => b"0123456789abcdef",
        "d" => b"0123456789",
        "b" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        "s" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
        "B" => b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L",
        "B32" => b"qpzry9x8gf2tvdw0s3jn54khce6mua7l",
        _ => return None,
    })
}

/// A small xorshift generator: deterministic, dependency-free, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Expands every `{class:len}` in `template`; unknown placeholders are kept verbatim.
pub fn expand(template: &str, rng: &mut Rng) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let parsed = after.find('}').and_then(|close| {
            let (class, len) = after[..close].split_once(':')?;
            let len: usize = len.parse().ok()?;
            Some((alphabet(class)?, len, close))
        });
        match parsed {
            Some((alpha, len, close)) => {
                for _ in 0..len {
                    out.push(alpha[rng.below(alpha.len())] as char);
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_classes_and_keeps_literals() {
        let mut rng = Rng::new(7);
        let s = expand("ghp_{a:36}!{\"x\":1}", &mut rng);
        assert!(s.starts_with("ghp_"));
        assert_eq!(s.len(), 4 + 36 + 8);
        assert!(s.ends_with("!{\"x\":1}"));
        assert!(s[4..40].bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
