//! Checksum and randomness validators that turn a shape match into a confident finding.
//!
//! Every function here is total: any byte string gives `true` or `false`, never a panic.

use sha2::{Digest, Sha256};

/// Luhn check over the ASCII digits of `digits` (non-digits are skipped).
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for &b in digits.iter().rev().filter(|b| b.is_ascii_digit()) {
        let mut d = u32::from(b - b'0');
        if count % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        count += 1;
    }
    count >= 2 && sum.is_multiple_of(10)
}

/// Issuer prefixes and lengths of the major card schemes; a Luhn-valid number outside them is
/// far more likely an order or tracking number than a card.
pub fn card_issuer_known(digits: &[u8]) -> bool {
    let n = digits.len();
    let prefix = |k: usize| -> u32 {
        digits[..k.min(n)].iter().fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0'))
    };
    if !(13..=19).contains(&n) {
        return false;
    }
    match digits[0] {
        b'4' => matches!(n, 13 | 16 | 19),                                            // Visa
        b'5' => n == 16 && (51..=55).contains(&prefix(2)),                               // Mastercard
        b'2' => n == 16 && (2221..=2720).contains(&prefix(4)),                           // Mastercard 2-series
        b'3' => (n == 15 && matches!(prefix(2), 34 | 37))                                // Amex
            || (n == 14 && (matches!(prefix(2), 36 | 38 | 39) || (300..=305).contains(&prefix(3)))) // Diners
            || ((16..=19).contains(&n) && (3528..=3589).contains(&prefix(4))),          // JCB
        b'6' => (16..=19).contains(&n)
            && (prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)) || prefix(2) == 62),
        _ => false,
    }
}

/// IBAN lengths by country (ISO 13616 registry, the common subset).
fn iban_length(country: &[u8]) -> Option<usize> {
    Some(match country {
        b"AD" => 24, b"AE" => 23, b"AL" => 28, b"AT" => 20, b"AZ" => 28, b"BA" => 20, b"BE" => 16,
        b"BG" => 22, b"BH" => 22, b"BR" => 29, b"CH" => 21, b"CR" => 22, b"CY" => 28, b"CZ" => 24,
        b"DE" => 22, b"DK" => 18, b"DO" => 28, b"EE" => 20, b"EG" => 29, b"ES" => 24, b"FI" => 18,
        b"FO" => 18, b"FR" => 27, b"GB" => 22, b"GE" => 22, b"GI" => 23, b"GL" => 18, b"GR" => 27,
        b"GT" => 28, b"HR" => 21, b"HU" => 28, b"IE" => 22, b"IL" => 23, b"IS" => 26, b"IT" => 27,
        b"JO" => 30, b"KW" => 30, b"KZ" => 20, b"LB" => 28, b"LI" => 21, b"LT" => 20, b"LU" => 20,
        b"LV" => 21, b"MC" => 27, b"MD" => 24, b"ME" => 22, b"MK" => 19, b"MR" => 27, b"MT" => 31,
        b"MU" => 30, b"NL" => 18, b"NO" => 15, b"PK" => 24, b"PL" => 28, b"PS" => 29, b"PT" => 25,
        b"QA" => 29, b"RO" => 24, b"RS" => 22, b"SA" => 24, b"SE" => 24, b"SI" => 19, b"SK" => 24,
        b"SM" => 27, b"TN" => 24, b"TR" => 26, b"UA" => 29, b"VG" => 24, b"XK" => 20,
        _ => return None,
    })
}

/// Validates a compact IBAN (no separators, uppercase): country length and ISO 7064 mod-97.
pub fn iban_valid(iban: &[u8]) -> bool {
    if iban.len() < 15 || iban.len() > 34 {
        return false;
    }
    if !iban[..2].iter().all(u8::is_ascii_uppercase) || !iban[2..4].iter().all(u8::is_ascii_digit) {
        return false;
    }
    if iban_length(&iban[..2]) != Some(iban.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for &b in iban[4..].iter().chain(&iban[..4]) {
        match b {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + u32::from(b - b'A' + 10)) % 97,
            _ => return false,
        }
    }
    rem == 1
}

const BASE58: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Decodes Base58 (Bitcoin alphabet). `None` on any foreign byte or input over 128 bytes.
pub fn base58_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() > 128 {
        return None;
    }
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    for &c in s {
        let mut carry = BASE58.iter().position(|&a| a == c)? as u32;
        for b in out.iter_mut().rev() {
            carry += u32::from(*b) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            out.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = s.iter().take_while(|&&c| c == b'1').count();
    let mut full = vec![0u8; zeros];
    full.extend_from_slice(&out);
    Some(full)
}

/// Base58Check: the last four bytes are the first four of the payload's double SHA-256.
pub fn base58check_payload(s: &[u8]) -> Option<Vec<u8>> {
    let raw = base58_decode(s)?;
    if raw.len() < 5 {
        return None;
    }
    let (payload, check) = raw.split_at(raw.len() - 4);
    let digest = Sha256::digest(Sha256::digest(payload));
    (digest[..4] == *check).then(|| payload.to_vec())
}

/// A Bitcoin WIF private key: version 0x80 (mainnet) or 0xEF (testnet), 32 key bytes and an
/// optional 0x01 compression flag, under a valid Base58Check.
pub fn bitcoin_wif_valid(s: &[u8]) -> bool {
    match base58check_payload(s) {
        Some(p) => matches!(p.first(), Some(0x80 | 0xEF)) && (p.len() == 33 || (p.len() == 34 && p[33] == 0x01)),
        None => false,
    }
}

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(s: &[u8]) -> f32 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[b as usize] += 1;
    }
    let n = s.len() as f32;
    counts.iter().filter(|&&c| c > 0).map(|&c| {
        let p = c as f32 / n;
        -p * p.log2()
    }).sum()
}

/// Values that look like secrets in shape but are placeholders people paste into examples.
pub fn is_placeholder(value: &[u8]) -> bool {
    let lower: Vec<u8> = value.to_ascii_lowercase();
    const WORDS: &[&[u8]] = &[b"example", b"changeme", b"placeholder", b"your_", b"your-", b"xxxx", b"redacted", b"dummy", b"<", b"${", b"{{"];
    WORDS.iter().any(|w| memchr::memmem::find(&lower, w).is_some())
}

/// The 8-4-4-4-12 hex shape of a UUID (and GUIDs in braces once the braces are gone).
pub fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_known_numbers() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"79927398710"));
        assert!(!luhn_valid(b""));
    }

    #[test]
    fn iban_mod97() {
        assert!(iban_valid(b"DE89370400440532013000"));
        assert!(iban_valid(b"GB82WEST12345698765432"));
        assert!(!iban_valid(b"GB82WEST12345698765433"));
        assert!(!iban_valid(b"DE8937040044053201300"));
        assert!(!iban_valid(b"de89370400440532013000"));
    }

    #[test]
    fn base58check_roundtrip_and_rejects() {
        assert!(bitcoin_wif_valid(b"5HpHagT65TZzG1PH3CSu63k8DbpvD8s5ip4nEB3kEsreAnchuDf"));
        assert!(!bitcoin_wif_valid(b"5HpHagT65TZzG1PH3CSu63k8DbpvD8s5ip4nEB3kEsreAnchuDg"));
        assert!(base58_decode(b"0OIl").is_none());
        assert!(base58_decode(&[b'z'; 200]).is_none());
    }

    #[test]
    fn entropy_orders_random_above_repetitive() {
        assert!(shannon_entropy(b"aaaaaaaaaaaaaaaa") < 0.01);
        assert!(shannon_entropy(b"q8Zr2LmX0pV7kT4nB9wY6sH1") > 4.0);
    }
}
