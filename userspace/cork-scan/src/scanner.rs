//! The compiled scanner: literal prefilter, per-rule confirmation, the token pass and the
//! recursive decoding layers, over one contiguous byte slice.
//!
//! Everything above this module (URLs, headers, streaming bodies) reduces to calls of
//! [`Compiled::scan`] on slices; everything here is synchronous and allocation-light.
//!
//! # How a rule is found
//! 1. One SIMD fingerprint pass ([`crate::anchors`], [`crate::fingerprint`]) over the rare
//!    literal anchors of all anchored rules finds candidate positions.
//! 2. Each candidate is confirmed by that rule's own small regex in a window of at most the
//!    rule's `max_len` bytes around the anchor, then by boundary checks and its validator.
//! 3. Literal-less rules ride on [`crate::runs::walk`], which yields only the few regions of the
//!    input that could hold them.
//! 4. Token runs that look encoded are decoded and the decoded bytes are scanned again, up to a
//!    depth and byte budget; matches inside are mapped back onto the encoded bytes.

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::anchors::AnchorSet;
use regex::bytes::{Regex, RegexBuilder};

use crate::catalog::{builtin_idx, Builtin, Detector, RuleIdx, Validator, RULES};
use crate::decode::{self, Layer, OffsetMap};
use crate::inject::{InjectionDetector, InjectionKind};
use crate::runs::{self, Region};
use crate::secret_names::SecretNames;
use crate::validate;
use crate::BuildError;

/// Direction of the bytes being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Egress,
    Ingress,
}

/// A match inside one scanned slice, before it becomes a public `Finding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    pub rule: RuleIdx,
    pub span: Range<usize>,
    /// Decoding layers undone to find it, outermost first.
    pub layers: Vec<Layer>,
}

/// Per-call limits shared by all layers of one top-level scan.
pub(crate) struct Budget {
    pub decoded_bytes: usize,
    pub max_depth: usize,
    /// A decoding was skipped because the budget ran out.
    pub refused: bool,
}

/// What the streaming layer needs to know about the end of a window it scanned, to decide how
/// much of the window's tail must be scanned again with the next bytes (see `stream`).
pub(crate) struct Tail {
    /// Regions (of the walk, at the top layer) that end after this offset are kept.
    pub from: usize,
    /// Those regions.
    pub spans: Vec<Range<usize>>,
    /// Earliest start of a region or anchor candidate that bytes past the end could still
    /// change: it ends too close to the end, or its confirmation window is cut by it.
    pub open_from: usize,
}

impl Tail {
    fn region(&mut self, r: &Range<usize>, n: usize, margin: usize) {
        if r.end > self.from {
            self.spans.push(r.clone());
        }
        if r.end + margin >= n {
            self.open_from = self.open_from.min(r.start);
        }
    }
}

struct Confirm {
    regex: Regex,
    has_group: bool,
}

pub(crate) struct Compiled {
    enabled: Vec<bool>,
    confirm: Vec<Option<Confirm>>,
    anchors: Option<AnchorSet>,
    anchor_rules: Vec<Vec<RuleIdx>>,
    anchor_lens: Vec<usize>,
    /// Rules whose match holds `scheme://user:pass@`: cheap to rule out before the regex.
    userinfo_rules: Vec<RuleIdx>,
    /// Per anchor: how many of the rules it is confirmed for are userinfo rules.
    anchor_userinfo: Vec<UserinfoRules>,
    canaries: Option<AhoCorasick>,
    allow: Vec<Vec<u8>>,
    injection: InjectionDetector,
    discord: Regex,
    secret_names: SecretNames,
    idx: BuiltinIdx,
    /// Longest span any rule can match; the streaming overlap.
    pub max_match: usize,
    /// Per anchor: the longest lookbehind and the farthest reach (confirmation window, right
    /// boundary byte, userinfo check) of its rules.
    anchor_reach: Vec<(usize, usize)>,
    /// Bytes at the end of a window that are always scanned again: a canary, or an anchor
    /// with its lookbehind, cut by the window's end lies inside them.
    pub min_tail: usize,
}

/// How many of an anchor's rules need a userinfo (`scheme://user:pass@`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum UserinfoRules {
    None,
    Some,
    All,
}

struct BuiltinIdx {
    canary: RuleIdx,
    card: RuleIdx,
    iban: RuleIdx,
    wif: RuleIdx,
    seed: RuleIdx,
    generic: RuleIdx,
    twilio: RuleIdx,
    discord: RuleIdx,
    inj_override: RuleIdx,
    inj_role: RuleIdx,
    inj_hidden: RuleIdx,
}

impl Compiled {
    pub fn new(enabled: Vec<bool>, canaries: &[String], allow: Vec<Vec<u8>>) -> Result<Self, BuildError> {
        let mut confirm = Vec::with_capacity(RULES.len());
        let mut anchor_lits: Vec<&'static str> = Vec::new();
        let mut anchor_rules: Vec<Vec<RuleIdx>> = Vec::new();
        let mut max_match = 256;
        for (i, rule) in RULES.iter().enumerate() {
            match rule.detector {
                Detector::Anchored { anchors, pattern, max_len, .. } => {
                    let regex = RegexBuilder::new(&format!("(?-u){pattern}"))
                        .unicode(false)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| BuildError::Rule { rule: rule.id.into(), reason: e.to_string() })?;
                    let has_group = regex.captures_len() > 1;
                    confirm.push(Some(Confirm { regex, has_group }));
                    if enabled[i] {
                        max_match = max_match.max(max_len);
                        for a in anchors {
                            match anchor_lits.iter().position(|x| x == a) {
                                Some(p) => anchor_rules[p].push(i as RuleIdx),
                                None => {
                                    anchor_lits.push(a);
                                    anchor_rules.push(vec![i as RuleIdx]);
                                }
                            }
                        }
                    }
                }
                Detector::Builtin(_) => confirm.push(None),
            }
        }
        let anchors = if anchor_lits.is_empty() {
            None
        } else {
            Some(AnchorSet::new(&anchor_lits).ok_or_else(|| BuildError::Rule { rule: "anchors".into(), reason: "prefilter did not build".into() })?)
        };
        let canary_list: Vec<&str> = canaries.iter().map(|s| s.as_str()).filter(|s| !s.is_empty()).collect();
        if let Some(c) = canaries.iter().find(|c| c.len() > 1024) {
            return Err(BuildError::Rule { rule: "canary".into(), reason: format!("canary of {} bytes exceeds 1024", c.len()) });
        }
        max_match = max_match.max(canary_list.iter().map(|c| c.len()).max().unwrap_or(0));
        let canaries = if canary_list.is_empty() {
            None
        } else {
            Some(AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostFirst).ascii_case_insensitive(true).build(&canary_list).map_err(
                |e| BuildError::Rule { rule: "canary".into(), reason: e.to_string() },
            )?)
        };
        let idx = BuiltinIdx {
            canary: builtin_idx(Builtin::Canary),
            card: builtin_idx(Builtin::CreditCard),
            iban: builtin_idx(Builtin::Iban),
            wif: builtin_idx(Builtin::BitcoinWif),
            seed: builtin_idx(Builtin::Bip39Seed),
            generic: builtin_idx(Builtin::GenericSecret),
            twilio: builtin_idx(Builtin::TwilioApiKey),
            discord: builtin_idx(Builtin::DiscordBotToken),
            inj_override: builtin_idx(Builtin::InjectionOverride),
            inj_role: builtin_idx(Builtin::InjectionRoleToken),
            inj_hidden: builtin_idx(Builtin::InjectionHidden),
        };
        let reach = |ri: &RuleIdx| match RULES[*ri as usize].detector {
            Detector::Anchored { lookbehind, max_len, .. } => (lookbehind, max_len.max(USERINFO_REACH) + 1),
            Detector::Builtin(_) => (0, 0),
        };
        let anchor_reach: Vec<(usize, usize)> = anchor_rules
            .iter()
            .map(|rs| rs.iter().map(reach).fold((0, 0), |(l, m), (l2, m2)| (l.max(l2), m.max(m2))))
            .collect();
        let min_tail = 256
            .max(anchor_reach.iter().zip(&anchor_lits).map(|((l, _), a)| l + a.len() + 1).max().unwrap_or(0))
            .max(canary_list.iter().map(|c| c.len() + 1).max().unwrap_or(0));
        let userinfo_rules: Vec<RuleIdx> = ["url.basic_auth", "database_url"].iter().filter_map(|id| crate::catalog::index_of(id)).collect();
        let anchor_userinfo = anchor_rules
            .iter()
            .map(|rs| match rs.iter().filter(|r| userinfo_rules.contains(r)).count() {
                0 => UserinfoRules::None,
                k if k == rs.len() => UserinfoRules::All,
                _ => UserinfoRules::Some,
            })
            .collect();
        let discord = Regex::new(r"(?-u)^[MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38}$").expect("static regex");
        Ok(Compiled {
            enabled,
            confirm,
            anchors,
            anchor_lens: anchor_lits.iter().map(|a| a.len()).collect(),
            anchor_rules,
            anchor_userinfo,
            userinfo_rules,
            canaries,
            allow,
            injection: InjectionDetector::new(),
            discord,
            secret_names: SecretNames::new().map_err(|e| BuildError::Rule { rule: "generic.secret_assignment".into(), reason: e.to_string() })?,
            idx,
            max_match: max_match.min(8192),
            anchor_reach,
            min_tail,
        })
    }

    fn on(&self, rule: RuleIdx) -> bool {
        self.enabled[rule as usize]
    }

    fn allowed(&self, value: &[u8]) -> bool {
        self.allow.iter().any(|a| memchr::memmem::find(value, a).is_some())
    }

    /// Scans `hay` and appends hits with spans relative to `hay`.
    pub fn scan(&self, hay: &[u8], dir: Direction, depth: usize, budget: &mut Budget, out: &mut Vec<Hit>) {
        self.scan_with_tail(hay, dir, depth, budget, out, None);
    }

    /// [`Compiled::scan`], also filling `tail` (top layer only) for the streaming layer.
    pub fn scan_with_tail(&self, hay: &[u8], dir: Direction, depth: usize, budget: &mut Budget, out: &mut Vec<Hit>, mut tail: Option<&mut Tail>) {
        let first = out.len();
        let n = hay.len();
        if dir == Direction::Egress {
            self.scan_anchors(hay, out, tail.as_deref_mut());
            if let Some(c) = &self.canaries {
                for m in c.find_iter(hay) {
                    out.push(Hit { rule: self.idx.canary, span: m.range(), layers: Vec::new() });
                }
            }
        } else {
            let mut found = Vec::new();
            self.injection.scan(hay, &mut found);
            for (kind, span) in found {
                let rule = match kind {
                    InjectionKind::Override => self.idx.inj_override,
                    InjectionKind::RoleToken => self.idx.inj_role,
                    InjectionKind::Hidden => self.idx.inj_hidden,
                };
                if self.on(rule) {
                    out.push(Hit { rule, span, layers: Vec::new() });
                }
            }
        }
        let mut layers: Vec<(Layer, Range<usize>, usize)> = Vec::new();
        let words = dir == Direction::Egress && self.on(self.idx.seed);
        let key_words = dir == Direction::Egress && (self.on(self.idx.twilio) || self.on(self.idx.wif));
        runs::walk(hay, words, key_words, |region, classes| {
            if let Some(t) = tail.as_deref_mut() {
                match &region {
                    // A non-ASCII region joins the next word (up to 512 bytes) if it has a
                    // non-ASCII byte; the others end where their class ends, or a few bytes
                    // past their last digit.
                    Region::NonAscii(r) => t.region(r, n, 520),
                    Region::Token(r) | Region::Numeric(r) | Region::Words(r) => t.region(r, n, 64),
                    // Inside a token run, which is reported too.
                    Region::KeyWord(_) => {}
                }
            }
            match region {
                Region::Token(r) => self.token_run(hay, classes, r, dir, out, &mut layers),
                Region::Numeric(r) => {
                    if dir == Direction::Egress {
                        self.numeric(hay, classes, r.clone(), out);
                    }
                    // Separated hex needs a separator (`` :-,\`` or a newline, which only the four
                    // bytes before the region's first digit can hold) between each of its eight pairs.
                    let newlines = hay[r.start..(r.start + 4).min(r.end)].iter().filter(|&&b| b == b'\n').count();
                    if classes.numsep_in(r.clone()) + newlines >= 7 {
                        layers.push((Layer::Hex, r, usize::MAX));
                    }
                }
                // A word region holds only lowercase letters and separators (see `runs`), so the
                // word shapes come from the letter mask, a few instructions per word.
                Region::Words(r) => {
                    if classes.twelve_word_shapes(r.clone()) {
                        let mut found = Vec::new();
                        crate::bip39::find_phrases(&hay[r.clone()], &mut found);
                        for f in found {
                            out.push(Hit { rule: self.idx.seed, span: r.start + f.start..r.start + f.end, layers: Vec::new() });
                        }
                    }
                }
                Region::NonAscii(r) => layers.push((Layer::Unicode, r, 0)),
                Region::KeyWord(r) => self.key_word(hay, r, out),
            }
        });
        if depth < budget.max_depth {
            for (layer, r, skip) in layers {
                self.descend(hay, layer, r, skip, dir, depth, budget, out);
            }
        }
        dedupe(&mut out[first..]);
        let mut kept = out.split_off(first);
        kept.retain(|h| h.span.start != usize::MAX);
        out.extend(kept);
    }

    /// Decodes one candidate region and scans what comes out.
    #[allow(clippy::too_many_arguments)]
    fn descend(&self, hay: &[u8], layer: Layer, r: Range<usize>, skip: usize, dir: Direction, depth: usize, budget: &mut Budget, out: &mut Vec<Hit>) {
        let s = &hay[r.clone()];
        let decoded = match layer {
            Layer::Url => decode::url_decode(s, r.start),
            Layer::Base64 => decode::base64_decode_text(s, r.start, skip),
            Layer::Base32 => decode::base32_decode(s, r.start),
            Layer::Hex if skip == usize::MAX => decode::hex_separated_decode_anywhere(s, r.start),
            Layer::Hex => decode::hex_decode(s, r.start),
            Layer::Unicode => decode::unicode_fold(s, r.start),
            Layer::JsonEscape => decode::json_unescape(s, r.start),
            Layer::Joined | Layer::Event => None,
        };
        let Some((bytes, map)) = decoded else { return };
        if bytes.len() > budget.decoded_bytes {
            budget.refused = true;
            return;
        }
        if !matches!(layer, Layer::Unicode | Layer::Url | Layer::JsonEscape) && (!decode::mostly_text(&bytes) || decode::is_binary_media(&bytes)) {
            return;
        }
        budget.decoded_bytes -= bytes.len();
        self.scan_layer(&bytes, &map, layer, dir, depth + 1, budget, out);
    }

    /// Scans derived bytes and maps hits back through `map`.
    #[allow(clippy::too_many_arguments)]
    pub fn scan_layer(&self, bytes: &[u8], map: &OffsetMap, layer: Layer, dir: Direction, depth: usize, budget: &mut Budget, out: &mut Vec<Hit>) {
        let mut inner = Vec::new();
        self.scan(bytes, dir, depth, budget, &mut inner);
        for mut h in inner {
            h.span = map.map(&h.span);
            h.layers.insert(0, layer);
            out.push(h);
        }
    }

    fn scan_anchors(&self, hay: &[u8], out: &mut Vec<Hit>, mut tail: Option<&mut Tail>) {
        let Some(set) = &self.anchors else { return };
        set.find(hay, |start, a| {
            if let Some(t) = tail.as_deref_mut() {
                let (lookbehind, reach) = self.anchor_reach[a as usize];
                if start + reach > hay.len() {
                    t.open_from = t.open_from.min(start.saturating_sub(lookbehind));
                }
            }
            // The userinfo test, once per anchor and before any rule is looked up: most links
            // have none, and then their userinfo rules are skipped (all the rules of `://`).
            let userinfo = self.anchor_userinfo[a as usize];
            let no_userinfo = userinfo != UserinfoRules::None && !userinfo_possible(hay, start);
            if no_userinfo && userinfo == UserinfoRules::All {
                return;
            }
            let end = start + self.anchor_lens[a as usize];
            for &ri in &self.anchor_rules[a as usize] {
                if no_userinfo && self.userinfo_rules.contains(&ri) {
                    continue;
                }
                if let Some(span) = self.confirm_at(hay, ri, start, end) {
                    out.push(Hit { rule: ri, span, layers: Vec::new() });
                }
            }
        });
    }

    /// Confirms rule `ri` around an anchor at `a_start..a_end`; returns the span to report.
    /// A userinfo rule's anchor has passed `userinfo_possible` (see `scan_anchors`).
    fn confirm_at(&self, hay: &[u8], ri: RuleIdx, a_start: usize, a_end: usize) -> Option<Range<usize>> {
        let rule = &RULES[ri as usize];
        let Detector::Anchored { lookbehind, max_len, bound_left, bound_right, validator, .. } = rule.detector else { return None };
        let confirm = self.confirm[ri as usize].as_ref()?;
        let ws = a_start.saturating_sub(lookbehind);
        let we = (a_start + max_len).min(hay.len()).max(a_end);
        let window = &hay[ws..we];
        let mut at = 0;
        while at <= window.len() {
            // `find_at` runs the DFA only; capture groups are resolved below when needed.
            let whole = confirm.regex.find_at(window, at)?;
            let (ms, me) = (ws + whole.start(), ws + whole.end());
            at = whole.end().max(whole.start() + 1);
            if ms > a_start {
                return None;
            }
            if me < a_end {
                continue;
            }
            if bound_left && ms > 0 && hay[ms - 1].is_ascii_alphanumeric() {
                continue;
            }
            if bound_right && me < hay.len() && (hay[me].is_ascii_alphanumeric() || matches!(hay[me], b'_' | b'-')) {
                continue;
            }
            let value = if confirm.has_group {
                let caps = confirm.regex.captures_at(window, whole.start())?;
                caps.get(1).map(|g| ws + g.start()..ws + g.end()).unwrap_or(ms..me)
            } else {
                ms..me
            };
            let v = &hay[value.clone()];
            if self.allowed(&hay[ms..me]) {
                return None;
            }
            let ok = match validator {
                Validator::None => true,
                Validator::Entropy { min_bits_per_byte } => validate::shannon_entropy(v) >= min_bits_per_byte && !validate::is_placeholder(v),
            };
            if ok {
                return Some(if confirm.has_group { value } else { ms..me });
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn token_run(&self, hay: &[u8], classes: &runs::Classes, r: Range<usize>, dir: Direction, out: &mut Vec<Hit>, layers: &mut Vec<(Layer, Range<usize>, usize)>) {
        let run = &hay[r.clone()];
        // Most runs (UUIDs, paths, unpadded base64) have no `.`, `%` or `=`: then there is no
        // URL layer, the run is one segment and one piece, and no Discord token (two dots),
        // which the class masks tell without the `memchr` calls below.
        let mut splits = classes.splits(r.clone());
        let Some(first) = splits.next() else {
            // A UUID, the commonest run of JSON, is no finding and no decoding candidate
            // (see `segment`: the generic rule passes over UUIDs, and hex with dashes is not
            // decoded), which its masks tell in a few instructions.
            if !classes.uuid(hay, r.clone()) {
                self.segment(hay, classes, r, dir, None, out, layers);
            }
            return;
        };
        // One pass over the split bytes, from the masks: a run of base64 spans many blocks, and
        // each pass over their masks cost more than the rest of the run's work. The URL layer
        // is put before the segments' layers afterwards, where a pass of its own put it.
        let mark = layers.len();
        let (mut pct, mut dots) = (false, 0);
        // Segments of the base64 alphabets: dots and percent signs split them.
        let (mut seg_start, mut first_eq) = (r.start, None);
        for p in std::iter::once(first).chain(splits).chain([r.end]) {
            if p < r.end {
                pct |= hay[p] == b'%';
                dots += usize::from(hay[p] == b'.');
            }
            if p == r.end || hay[p] != b'=' {
                if p - seg_start >= runs::MIN_TOKEN {
                    self.segment(hay, classes, seg_start..p, dir, first_eq, out, layers);
                }
                (seg_start, first_eq) = (p + 1, None);
            } else if first_eq.is_none() {
                first_eq = Some(p);
            }
        }
        if pct {
            layers.insert(mark, (Layer::Url, r.clone(), 0));
        }
        // A Discord token is one piece of 59 to 72 bytes with two dots.
        if dir == Direction::Egress && self.on(self.idx.discord) && dots >= 2 && run.len() >= 59 {
            for piece in run.split(|b| matches!(b, b'%' | b'/' | b'=' | b'+')) {
                // The whole-piece pattern needs 59..=72 bytes starting with M, N or O: most
                // pieces (host names, path parts) never reach the regex.
                if (59..=72).contains(&piece.len()) && matches!(piece[0], b'M' | b'N' | b'O') && self.discord.is_match(piece) {
                    let start = r.start + (piece.as_ptr() as usize - run.as_ptr() as usize);
                    out.push(Hit { rule: self.idx.discord, span: start..start + piece.len(), layers: Vec::new() });
                }
            }
        }
    }

    /// One segment of `[A-Za-z0-9+/=_-]` of at least 16 bytes; `first_eq`: where its first `=`
    /// is, if it has one (the walk's masks told).
    #[allow(clippy::too_many_arguments)]
    fn segment(&self, hay: &[u8], classes: &runs::Classes, r: Range<usize>, dir: Direction, first_eq: Option<usize>, out: &mut Vec<Hit>, layers: &mut Vec<(Layer, Range<usize>, usize)>) {
        let seg = &hay[r.clone()];
        let is_hex = classes.all_hex(r.clone());
        let mut eq = first_eq.map(|p| p - r.start);
        if dir == Direction::Egress && self.on(self.idx.generic) {
            self.generic(hay, r.clone(), is_hex, eq, out);
        }
        // Decoding candidates: `name=value` pieces are split at `=` (padding ends a piece too).
        let mut next = 0;
        while next <= seg.len() {
            let off = next;
            let len = eq.map_or(seg.len() - off, |e| e - off);
            next = off + len + 1;
            // The `=` after this one: past the first, pieces are short (padding, parameters).
            if eq.is_some() {
                eq = seg.get(next..).and_then(|rest| memchr::memchr(b'=', rest)).map(|e| next + e);
            }
            let piece = &seg[off..off + len];
            let pr = r.start + off..r.start + off + len;
            if piece.len() < runs::MIN_TOKEN {
                continue;
            }
            // Plain hex is a hex candidate only. Hex with dashes (UUIDs, dashed hashes) is no
            // candidate at all: as base64 its 6-bit values (0-5, 26-31, 52-62) make the first of
            // every three decoded bytes a control byte, non-ASCII or `h`..DEL, and the third one
            // of about 30 values, which no random secret of the catalog survives for more than
            // a few bytes (a test checks every rule example in both alphabets).
            if classes.all_hex_or_dash(pr.clone()) {
                if piece.len().is_multiple_of(2) && classes.all_hex(pr.clone()) {
                    layers.push((Layer::Hex, pr, 0));
                }
                continue;
            }
            let b32 = piece.iter().all(|&b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
                || piece.iter().all(|&b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
            if b32 {
                layers.push((Layer::Base32, pr.clone(), 0));
            }
            // A run cut by the window edge may be misaligned: try every alignment.
            let aligns = if pr.start == 0 { 4 } else { 1 };
            for skip in 0..aligns {
                layers.push((Layer::Base64, pr.clone(), skip));
            }
        }
    }

    /// A Twilio key (34 bytes) or a WIF key (51 or 52) in a word of that size (the walk's
    /// key-sized words). Out of line: the checks (a Base58Check decode) would take registers
    /// and stack from the walk's loop.
    #[inline(never)]
    fn key_word(&self, hay: &[u8], w: Range<usize>, out: &mut Vec<Hit>) {
        let (at, len) = (w.start, w.len());
        let w = &hay[w];
        if len == 34 && w.starts_with(b"SK") && w[2..].iter().all(u8::is_ascii_hexdigit) && self.on(self.idx.twilio) && validate::shannon_entropy(&w[2..]) > 3.0 {
            out.push(Hit { rule: self.idx.twilio, span: at..at + len, layers: Vec::new() });
        }
        if (len == 51 || len == 52) && matches!(w[0], b'5' | b'K' | b'L' | b'9' | b'c') && self.on(self.idx.wif) && validate::bitcoin_wif_valid(w) {
            out.push(Hit { rule: self.idx.wif, span: at..at + len, layers: Vec::new() });
        }
    }

    /// A random-looking value right after a secret-like name: `client_secret = "…"`.
    /// `eq`: where the first `=` of the segment `r` is, from its start.
    fn generic(&self, hay: &[u8], r: Range<usize>, is_hex: bool, eq: Option<usize>, out: &mut Vec<Hit>) {
        // The value may be preceded by its own name inside the same run (SECRET_TOKEN=abc…).
        let seg = &hay[r.clone()];
        let (vstart, inline_name) = match eq {
            Some(p) if p + 1 < seg.len() && p >= 3 => (r.start + p + 1, Some(r.start..r.start + p)),
            _ => (r.start, None),
        };
        let value = &hay[vstart..r.end];
        let value = value.strip_suffix(b"==").or_else(|| value.strip_suffix(b"=")).unwrap_or(value);
        // Every condition below must hold; the cheap and selective ones (length, a secret-like
        // name) go first so that most runs cost a few comparisons.
        if value.len() < 16 || value.len() > 256 {
            return;
        }
        let name = match inline_name {
            Some(n) => n,
            None => {
                // Up to 48 bytes back: NAME, then quote/colon/equals/space glue.
                let back = &hay[r.start.saturating_sub(48)..r.start];
                let glue = back.iter().rev().take_while(|&&b| matches!(b, b'"' | b'\'' | b':' | b'=' | b' ' | b'\t')).count();
                if glue == 0 || !back[back.len() - glue..].iter().any(|&b| b == b':' || b == b'=') {
                    return;
                }
                let name_end = back.len() - glue;
                let name_start = back[..name_end].iter().rposition(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))).map_or(0, |p| p + 1);
                r.start - back.len() + name_start..r.start - back.len() + name_end
            }
        };
        if !self.secret_names.is_match(&hay[name]) {
            return;
        }
        if validate::is_uuid(value) || validate::is_placeholder(value) {
            return;
        }
        let classes = [value.iter().any(u8::is_ascii_lowercase), value.iter().any(u8::is_ascii_uppercase), value.iter().any(u8::is_ascii_digit)];
        let needed = if is_hex { 3.0 } else { 3.8 };
        if classes.iter().filter(|&&c| c).count() < 2 || validate::shannon_entropy(value) < needed || (is_hex && value.len() < 32) {
            return;
        }
        if !self.allowed(value) {
            out.push(Hit { rule: self.idx.generic, span: vstart..vstart + value.len(), layers: Vec::new() });
        }
    }

    /// Card numbers and IBANs in a region of digits with short gaps.
    fn numeric(&self, hay: &[u8], classes: &runs::Classes, r: Range<usize>, out: &mut Vec<Hit>) {
        let region = &hay[r.clone()];
        // Both loops below only do work where the class masks say they can: a card needs 13
        // digits joined by single separators, an IBAN two capitals then two digits.
        if self.on(self.idx.card) && classes.card_digits_possible(r.clone()) {
            // Digit groups joined by single spaces or dashes, 13-19 digits in total.
            let mut i = 0;
            while i < region.len() {
                if !region[i].is_ascii_digit() || (i > 0 && region[i - 1].is_ascii_alphanumeric()) {
                    i += 1;
                    continue;
                }
                // A stack buffer: this runs at every digit group of every numeric region.
                let mut buf = [0u8; 19];
                let mut nd = 0;
                let mut j = i;
                let mut sep = None;
                let mut best = None;
                while j < region.len() && nd < 19 {
                    let b = region[j];
                    if b.is_ascii_digit() {
                        buf[nd] = b;
                        nd += 1;
                        let digits = &buf[..nd];
                        j += 1;
                        let boundary = j == region.len() || !region[j].is_ascii_alphanumeric();
                        if boundary && digits.len() >= 13 && validate::luhn_valid(digits) && validate::card_issuer_known(digits) {
                            let after = r.start + j;
                            let follows_digit = after < hay.len() && hay[after].is_ascii_digit();
                            if !follows_digit {
                                best = Some(j);
                            }
                        }
                    } else if matches!(b, b' ' | b'-') && sep.is_none_or(|s| s == b) && j + 1 < region.len() && region[j + 1].is_ascii_digit() && region[j - 1].is_ascii_digit() {
                        sep = Some(b);
                        j += 1;
                    } else {
                        break;
                    }
                }
                match best {
                    Some(end) => {
                        out.push(Hit { rule: self.idx.card, span: r.start + i..r.start + end, layers: Vec::new() });
                        i = end;
                    }
                    None => {
                        i += 1;
                        while i < region.len() && region[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
            }
        }
        if self.on(self.idx.iban) {
            // Only where the masks show two capitals and two digits; IBANs do not overlap.
            let mut next = 0; // region offset where the next IBAN may start
            classes.iban_starts(r.clone(), |at| {
                let i = at - r.start;
                if i < next || (at > 0 && hay[at - 1].is_ascii_alphanumeric()) {
                    return;
                }
                let mut buf = [0u8; 34];
                let mut nc = 0;
                let mut j = i;
                let mut found = None;
                while j < region.len() && nc < 34 {
                    let b = region[j];
                    if b.is_ascii_uppercase() || b.is_ascii_digit() {
                        buf[nc] = b;
                        nc += 1;
                        j += 1;
                        let boundary = r.start + j >= hay.len() || !hay[r.start + j].is_ascii_alphanumeric();
                        if boundary && validate::iban_valid(&buf[..nc]) {
                            found = Some(j);
                        }
                    } else if b == b' ' && j + 1 < region.len() && region[j + 1].is_ascii_alphanumeric() {
                        j += 1;
                    } else {
                        break;
                    }
                }
                if let Some(end) = found {
                    out.push(Hit { rule: self.idx.iban, span: r.start + i..r.start + end, layers: Vec::new() });
                    next = end;
                }
            });
        }
    }

}

/// How far past an anchor [`userinfo_possible`] reads.
const USERINFO_REACH: usize = 20 + 194;

/// Whether a `scheme://user:password@` can start near `at`: the first `://` within 20 bytes
/// must be followed, within the pattern's 64 + 1 + 128 bytes, by an `@` with a `:` before it
/// and no byte that neither the user nor the password may contain. Most `://` in traffic are
/// plain links, and this spares them the regex.
fn userinfo_possible(hay: &[u8], at: usize) -> bool {
    let head = &hay[at..(at + 20).min(hay.len())];
    // A byte loop: a `memmem` searcher's setup cost more than 20 bytes of it.
    let Some(p) = head.windows(3).position(|w| w == b"://") else { return false };
    let from = at + p + 3;
    userinfo_follows(&hay[from..(from + 194).min(hay.len())])
}

/// Whether `s` has an `@` with a `:` before it, and no byte before the `@` that neither the
/// user nor the password may hold (whitespace, `/`, quotes, `<` or `>`).
///
/// Sixteen bytes at a time where SSE2 is (every x86-64): a link's host name ends in its
/// first sixteen or so bytes, and a byte loop over them was half of what a link cost.
fn userinfo_follows(s: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut colon = false;
        let mut steps = s.chunks_exact(16);
        for step in &mut steps {
            let (stop, at, col) = userinfo_masks(step.try_into().expect("16 bytes"));
            let end = stop | at;
            if end != 0 {
                let k = end.trailing_zeros();
                return at >> k & 1 == 1 && (colon || col & ((1 << k) - 1) != 0);
            }
            colon |= col != 0;
        }
        userinfo_follows_bytes(steps.remainder(), colon)
    }
    #[cfg(not(target_arch = "x86_64"))]
    userinfo_follows_bytes(s, false)
}

/// [`userinfo_follows`] a byte at a time, with `colon` saying a `:` came before `s`.
fn userinfo_follows_bytes(s: &[u8], mut colon: bool) -> bool {
    for &b in s {
        match b {
            b'@' => return colon,
            b':' => colon = true,
            b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | b'/' | b'"' | b'\'' | b'<' | b'>' => return false,
            _ => {}
        }
    }
    false
}

/// Bit masks of the stop bytes, the `@` and the `:` of 16 bytes (see [`userinfo_follows`]).
#[cfg(target_arch = "x86_64")]
#[inline]
fn userinfo_masks(step: &[u8; 16]) -> (u32, u32, u32) {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of x86-64; the load reads the 16 bytes of `step`.
    unsafe {
        let v = _mm_loadu_si128(step.as_ptr() as *const __m128i);
        let eq = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
        // `\t` to `\r` (9 to 13): `v - 9` is at most 4, unsigned.
        let off = _mm_sub_epi8(v, _mm_set1_epi8(9));
        let controls = _mm_cmpeq_epi8(_mm_min_epu8(off, _mm_set1_epi8(4)), off);
        let quotes = _mm_or_si128(eq(b'"'), eq(b'\''));
        let angles = _mm_or_si128(eq(b'<'), eq(b'>'));
        let stop = _mm_or_si128(_mm_or_si128(controls, _mm_or_si128(eq(b' '), eq(b'/'))), _mm_or_si128(quotes, angles));
        let mask = |x: __m128i| _mm_movemask_epi8(x) as u32;
        (mask(stop), mask(eq(b'@')), mask(eq(b':')))
    }
}

/// Drops repeated hits of one rule on overlapping bytes, and generic hits that a specific rule
/// already explains.
fn dedupe(hits: &mut [Hit]) {
    let generic = builtin_idx(Builtin::GenericSecret);
    for i in 0..hits.len() {
        for j in 0..hits.len() {
            if i == j || hits[j].span.start == usize::MAX || hits[i].span.start == usize::MAX {
                continue;
            }
            let overlap = hits[i].span.start < hits[j].span.end && hits[j].span.start < hits[i].span.end;
            if !overlap {
                continue;
            }
            let same = hits[i].rule == hits[j].rule;
            // Keep the earlier-found (or shallower) one of two same-rule hits.
            let drop_i = (same && (hits[j].layers.len(), j) < (hits[i].layers.len(), i)) || (hits[i].rule == generic && hits[j].rule != generic);
            if drop_i {
                hits[i].span = usize::MAX..usize::MAX;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sixteen-at-a-time test agrees with the byte loop, with the `@`, the `:` and each
    /// stop byte at every place in and across the steps (and bytes one past each end of the
    /// stop set's range, which must not stop it).
    #[test]
    fn userinfo_steps_match_bytes() {
        let alphabet = b"@:\t\n\x0b\x0c\r /\"'<>\x08\x0e.!?-_aZ9\x80\xff";
        let mut rng = crate::template::Rng::new(11);
        let mut agreed = [0usize; 2];
        for _ in 0..20_000 {
            // Mostly name bytes, then a `:` and an `@` at random places of most inputs, so that
            // either answer is common.
            let n = rng.below(70);
            let mut s: Vec<u8> = (0..n).map(|_| if rng.below(12) == 0 { alphabet[rng.below(alphabet.len())] } else { b'a' + rng.below(26) as u8 }).collect();
            for b in [b':', b'@'] {
                if n > 0 && rng.below(4) != 0 {
                    s[rng.below(n)] = b;
                }
            }
            let want = userinfo_follows_bytes(&s, false);
            assert_eq!(userinfo_follows(&s), want, "{:?}", String::from_utf8_lossy(&s));
            agreed[usize::from(want)] += 1;
        }
        // Both answers are common, or the comparison proves little.
        assert!(agreed.iter().all(|&a| a > 1000), "{agreed:?}");
    }
}
