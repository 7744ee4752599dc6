//! Streaming body scans.
//!
//! A [`BodyScan`] keeps a window of the most recent bytes. Each scan of the window reports only
//! hits that *start* in the stretch that has just become final — at least `overlap` bytes
//! before the end of what was pushed, where `overlap` exceeds the longest possible match — so
//! a match is reported exactly once, complete, whichever way the stream was chunked. Scans are
//! batched: bytes accumulate up to [`BATCH`] before the window is scanned, and
//! [`BodyScan::hold_back`] tells the caller how many trailing bytes are not yet final (overlap
//! plus the unscanned batch, at most a few tens of KiB).
//!
//! Compressed bodies are decompressed as they arrive and the decoded stream is scanned the same
//! way; findings there carry `span: None`, since the matched bytes do not exist on the wire.

use std::ops::Range;
use std::sync::Arc;

use crate::catalog::Builtin;
use crate::decode::{self, Layer, OffsetMap};
use crate::decompress::{parse_codings, Decompressor};
use crate::scanner::{Direction, Hit};
use crate::{BodyMeta, Finding, Inner};

/// Bytes gathered before a scan runs.
/// 48 KiB: the overlap (up to ~8 KiB) is rescanned once per batch, so a small batch rescans
/// a large share; overlap + batch stays under the 64 KiB `hold_back` bound.
const BATCH: usize = 48 * 1024;
/// Bytes kept before the final point so lookbehind and keyword context survive a trim.
const CONTEXT: usize = 1024;

/// How a body's bytes are structured, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Json,
    Form,
    Multipart,
    EventStream,
}

impl Kind {
    fn from_content_type(ct: Option<&str>) -> Kind {
        let Some(ct) = ct else { return Kind::Plain };
        let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if ct == "application/json" || ct.ends_with("+json") || ct.contains("ndjson") || ct.contains("jsonl") {
            Kind::Json
        } else if ct == "application/x-www-form-urlencoded" {
            Kind::Form
        } else if ct.starts_with("multipart/") {
            Kind::Multipart
        } else if ct == "text/event-stream" {
            Kind::EventStream
        } else {
            Kind::Plain
        }
    }

    fn location(self) -> &'static str {
        match self {
            Kind::Plain => "body",
            Kind::Json => "body.json",
            Kind::Form => "body.form",
            Kind::Multipart => "body.multipart",
            Kind::EventStream => "body.sse",
        }
    }
}

/// The sliding window over one (decoded) byte stream.
struct Window {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Every hit starting before this offset has been reported.
    final_upto: u64,
    overlap: usize,
}

impl Window {
    fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }
}

enum Source {
    Raw,
    Compressed(Box<Decompressor>),
    /// Decoding failed or was refused; the rest of the body is not scanned (the finding
    /// already asked for a block).
    Stopped,
    /// A response type the configuration lists as unscanned: nothing is looked at or held.
    Unscanned,
}

/// A streaming scan of one body. Created by [`crate::Engine::request_body`] or
/// [`crate::Engine::response_body`].
pub struct BodyScan {
    inner: Arc<Inner>,
    dir: Direction,
    kind: Kind,
    source: Source,
    window: Window,
    pushed: u64,
    pending: Vec<Finding>,
    finished: bool,
}

impl BodyScan {
    pub(crate) fn new(inner: Arc<Inner>, dir: Direction, meta: BodyMeta<'_>) -> BodyScan {
        let kind = Kind::from_content_type(meta.content_type);
        let mut pending = Vec::new();
        let source = match meta.content_encoding.map(parse_codings) {
            // Checked first: an unscanned body's coding is never parsed or refused.
            _ if dir == Direction::Ingress && inner.unscanned.covers(meta.content_type) => Source::Unscanned,
            None => Source::Raw,
            Some(Ok(codings)) if codings.is_empty() => Source::Raw,
            Some(Ok(codings)) if codings.len() == 1 => {
                Source::Compressed(Box::new(Decompressor::new(codings[0], inner.limits.max_decompressed_bytes, inner.limits.max_compression_ratio)))
            }
            Some(_) => {
                pending.extend(inner.builtin(Builtin::DecodeLimit, "body", None));
                Source::Stopped
            }
        };
        let overlap = inner.compiled.max_match + 64;
        BodyScan {
            inner,
            dir,
            kind,
            source,
            window: Window { buf: Vec::new(), base: 0, final_upto: 0, overlap },
            pushed: 0,
            pending,
            finished: false,
        }
    }

    /// Pushes the next chunk of the body and returns what became certain.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Finding> {
        let mut out = std::mem::take(&mut self.pending);
        if self.finished {
            return out;
        }
        self.pushed += chunk.len() as u64;
        match &mut self.source {
            Source::Raw => {
                self.window.buf.extend_from_slice(chunk);
                if self.window.end() - self.window.final_upto >= (self.window.overlap + BATCH) as u64 {
                    self.scan_window(false, true, &mut out);
                }
            }
            Source::Compressed(dec) => {
                let mut decoded: Vec<Vec<u8>> = Vec::new();
                let r = dec.feed(chunk, &mut |piece| decoded.push(piece.to_vec()));
                for piece in decoded {
                    self.window.buf.extend_from_slice(&piece);
                    if self.window.end() - self.window.final_upto >= (self.window.overlap + BATCH) as u64 {
                        self.scan_window(false, false, &mut out);
                    }
                }
                if let Err(e) = r {
                    self.stop(e, &mut out);
                }
            }
            Source::Stopped | Source::Unscanned => {}
        }
        out
    }

    /// True when the body's type is one the configuration passes on without a scan: nothing
    /// pushed is looked at, and nothing is ever held back.
    pub fn is_unscanned(&self) -> bool {
        matches!(self.source, Source::Unscanned)
    }

    /// Ends the body: scans what is left and reports it.
    pub fn finish(&mut self) -> Vec<Finding> {
        let mut out = std::mem::take(&mut self.pending);
        if self.finished {
            return out;
        }
        self.finished = true;
        match &mut self.source {
            Source::Raw => self.scan_window(true, true, &mut out),
            Source::Compressed(dec) => {
                let mut decoded: Vec<u8> = Vec::new();
                let r = dec.finish(&mut |piece| decoded.extend_from_slice(piece));
                self.window.buf.extend_from_slice(&decoded);
                self.scan_window(true, false, &mut out);
                if let Err(e) = r {
                    self.stop(e, &mut out);
                }
            }
            Source::Stopped | Source::Unscanned => {}
        }
        out
    }

    /// Trailing bytes of what was pushed that a later finding may still point into. Bounded by
    /// the overlap (longest match, a few KiB) plus one batch; 64 KiB for compressed bodies,
    /// whose findings are not redactable and should stop the body before it is released.
    pub fn hold_back(&self) -> usize {
        match self.source {
            Source::Raw => (self.pushed - self.window.final_upto.min(self.pushed)) as usize,
            Source::Compressed(_) | Source::Stopped => self.pushed.min(64 << 10) as usize,
            Source::Unscanned => 0,
        }
    }

    fn stop(&mut self, e: crate::decompress::DecompressError, out: &mut Vec<Finding>) {
        use crate::decompress::DecompressError as E;
        tracing::debug!(error = %e, "body decoding stopped");
        let b = match e {
            E::TooLarge(_) | E::Ratio(_) => Builtin::DecompressionBomb,
            E::Corrupt(..) | E::Truncated(_) => Builtin::DecodeLimit,
        };
        out.extend(self.inner.builtin(b, self.kind.location(), None));
        self.source = Source::Stopped;
        self.window.buf = Vec::new();
    }

    fn scan_window(&mut self, last: bool, redactable: bool, out: &mut Vec<Finding>) {
        let w = &mut self.window;
        let end = w.end();
        let new_final = if last { end } else { end.saturating_sub(w.overlap as u64) };
        if new_final <= w.final_upto && !(last && end > w.final_upto) {
            return;
        }
        // Plain egress bodies: the final point may move past `end - overlap` to a quiet point
        // (see `quiet_point`), so that less of the window is scanned again with the next bytes.
        // Response bodies (the injection pass reads HTML context far back) and structured bodies
        // (joined JSON or form values span the window) keep the full overlap.
        let quiet = !last && self.dir == Direction::Egress && matches!(self.kind, Kind::Plain | Kind::Multipart);
        let mut new_final = new_final;
        let mut hits = if quiet {
            let n = w.buf.len();
            let lo = (new_final - w.base) as usize;
            let (hits, tail) = self.inner.scan_slice_tail(&w.buf, self.dir, lo);
            if let Some(tail) = tail {
                let c = quiet_point(&tail, &hits, n, lo, self.inner.compiled.min_tail);
                new_final = new_final.max(w.base + c as u64);
            }
            hits
        } else {
            self.inner.scan_slice(&w.buf, self.dir)
        };
        structured_layers(&self.inner, &w.buf, self.kind, self.dir, &mut hits);
        hits.sort_by_key(|h| (h.span.start, h.rule));
        let mut reported: Vec<(u16, Range<u64>)> = Vec::new();
        for h in hits {
            let start = w.base + h.span.start as u64;
            if start < w.final_upto || start >= new_final {
                continue;
            }
            let abs = start..w.base + h.span.end as u64;
            if reported.iter().any(|(r, s)| *r == h.rule && s.start < abs.end && abs.start < s.end) {
                continue;
            }
            reported.push((h.rule, abs));
            out.extend(self.inner.finding(&h, self.kind.location(), w.base, redactable));
        }
        w.final_upto = new_final;
        // Keep a little context before the final point, and everything after it.
        let keep_from = w.final_upto.saturating_sub(CONTEXT as u64).max(w.base);
        let cut = (keep_from - w.base) as usize;
        if cut > 0 {
            w.buf.drain(..cut);
            w.base = keep_from;
        }
    }
}

/// The latest final point `c` in `lo..=n` (window offsets; `lo` is `end - overlap`) at which
/// every hit starting before `c` is complete and every hit starting at or after it is found
/// the same way by the next window (which starts `CONTEXT` bytes before `c`):
/// - nothing that the bytes past the end could change starts at or before `c`: no region
///   ends within a few bytes of the end, no anchor's confirmation window reaches past it, and
///   `c` keeps `min_tail` bytes (a cut anchor with its lookbehind, a cut canary) after it;
/// - no region of the walk and no hit crosses `c`, so each lies wholly on one side: a region
///   before `c` is reported from this window, one after it is whole in the next, with the
///   same `CONTEXT` before it as at today's final point.
///
/// Returns `lo` (today's final point) when no later point qualifies.
fn quiet_point(tail: &crate::scanner::Tail, hits: &[Hit], n: usize, lo: usize, min_tail: usize) -> usize {
    let mut c = n.saturating_sub(min_tail).min(tail.open_from);
    while c > lo {
        let inside = |r: &Range<usize>| r.start < c && c < r.end;
        let Some(s) = tail.spans.iter().chain(hits.iter().map(|h| &h.span)).filter(|r| inside(r)).map(|r| r.start).min() else { break };
        c = s;
    }
    c.max(lo)
}

/// Extra layers that depend on the body's structure: JSON string escapes, values split over
/// several JSON fields or form parameters, and server-sent event text.
fn structured_layers(inner: &Inner, hay: &[u8], kind: Kind, dir: Direction, hits: &mut Vec<Hit>) {
    match kind {
        Kind::Json | Kind::EventStream => {
            let strings = json_strings(hay);
            let mut joined = Vec::new();
            let mut table = Vec::new();
            for s in &strings {
                if s.is_key {
                    continue;
                }
                let body = &hay[s.range.clone()];
                if let Some((bytes, map)) = decode::json_unescape(body, s.range.start) {
                    inner.scan_derived(&bytes, &map, Layer::JsonEscape, dir, hits);
                }
                // Egress: short token-like values are joined to catch a secret split over fields.
                // Event streams: text deltas are joined to see the sentence they form.
                let take = match (kind, dir) {
                    (Kind::EventStream, _) => matches!(s.key.as_deref(), Some(b"content" | b"text" | b"delta" | b"partial_json" | b"thinking")),
                    (_, Direction::Egress) => (4..=64).contains(&body.len()) && !body.contains(&b' '),
                    _ => false,
                };
                if take {
                    for i in 0..body.len() {
                        table.push((s.range.start + i) as u32);
                    }
                    joined.extend_from_slice(body);
                }
            }
            if !joined.is_empty() {
                table.push(table.last().map_or(0, |l| l + 1));
                let layer = if kind == Kind::EventStream { Layer::Event } else { Layer::Joined };
                inner.scan_derived(&joined, &OffsetMap::Table(table), layer, dir, hits);
            }
            if kind == Kind::EventStream && dir == Direction::Ingress {
                event_text(inner, hay, hits);
            }
        }
        Kind::Form if dir == Direction::Egress => {
            let mut joined = Vec::new();
            let mut table = Vec::new();
            let mut off = 0;
            for pair in hay.split(|&b| b == b'&') {
                let v_off = off + memchr::memchr(b'=', pair).map_or(0, |p| p + 1);
                let v = &hay[v_off..off + pair.len()];
                off += pair.len() + 1;
                if v.is_empty() || v.len() > 256 {
                    continue;
                }
                match decode::url_decode(v, v_off) {
                    Some((d, map)) => {
                        for i in 0..d.len() {
                            table.push(map.map(&(i..i + 1)).start as u32);
                        }
                        joined.extend_from_slice(&d);
                    }
                    None => {
                        table.extend((v_off..v_off + v.len()).map(|x| x as u32));
                        joined.extend_from_slice(v);
                    }
                }
            }
            if !joined.is_empty() {
                table.push(hay.len() as u32);
                inner.scan_derived(&joined, &OffsetMap::Table(table), Layer::Joined, dir, hits);
            }
        }
        _ => {}
    }
}

/// The `data:` payloads of server-sent events, joined per event, scanned as text.
fn event_text(inner: &Inner, hay: &[u8], hits: &mut Vec<Hit>) {
    let mut text = Vec::new();
    let mut table = Vec::new();
    let mut off = 0;
    for line in hay.split(|&b| b == b'\n') {
        let l = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(d) = l.strip_prefix(b"data:") {
            let d_off = off + 5 + usize::from(d.first() == Some(&b' '));
            let d = if d.first() == Some(&b' ') { &d[1..] } else { d };
            table.extend((d_off..d_off + d.len()).map(|x| x as u32));
            text.extend_from_slice(d);
            table.push((d_off + d.len()) as u32);
            text.push(b'\n');
        }
        off += line.len() + 1;
    }
    if !text.is_empty() {
        table.push(hay.len() as u32);
        inner.scan_derived(&text, &OffsetMap::Table(table), Layer::Event, Direction::Ingress, hits);
    }
}

struct JsonString {
    /// The string's contents, without quotes.
    range: Range<usize>,
    is_key: bool,
    /// For values: the key they belong to (raw bytes).
    key: Option<Vec<u8>>,
}

/// Finds string literals in (possibly partial or broken) JSON. Never fails: on a window that
/// starts inside a string, strings and gaps swap until the next unambiguous point, which only
/// costs some recall on the join layer.
fn json_strings(hay: &[u8]) -> Vec<JsonString> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut last_key: Option<Vec<u8>> = None;
    while let Some(q) = memchr::memchr(b'"', &hay[i..]) {
        let start = i + q + 1;
        let mut j = start;
        let mut closed = None;
        while let Some(p) = memchr::memchr2(b'"', b'\\', &hay[j..]) {
            let at = j + p;
            if hay[at] == b'\\' {
                j = at + 2;
                if j >= hay.len() {
                    break;
                }
            } else {
                closed = Some(at);
                break;
            }
        }
        let Some(end) = closed else { break };
        let next = hay[end + 1..].iter().find(|b| !b.is_ascii_whitespace());
        let is_key = next == Some(&b':');
        if is_key {
            last_key = Some(hay[start..end].to_vec());
            out.push(JsonString { range: start..end, is_key, key: None });
        } else {
            out.push(JsonString { range: start..end, is_key, key: last_key.clone() });
        }
        i = end + 1;
        if out.len() > 1 << 16 {
            break;
        }
    }
    out
}
