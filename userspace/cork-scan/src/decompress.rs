//! Streaming decompression of `Content-Encoding` bodies with bomb bounds.
//!
//! Input is fed to the decoder in small slices so that no single step can expand beyond
//! [`STEP_OUTPUT_CAP`]; the running total and the expansion ratio are checked after each step.
//! All decoders are pure Rust (flate2's miniz_oxide backend, brotli-decompressor, ruzstd).

use std::io::Write;

/// Compressed bytes fed per step.
const STEP_INPUT: usize = 1024;
/// A single step may not produce more than this (deflate's worst case for 1 KiB is ~1 MiB).
const STEP_OUTPUT_CAP: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// Parses one `Content-Encoding` token; `Ok(None)` for identity.
    pub fn parse(token: &str) -> Result<Option<Coding>, String> {
        match token.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(None),
            "gzip" | "x-gzip" => Ok(Some(Coding::Gzip)),
            "deflate" => Ok(Some(Coding::Deflate)),
            "br" => Ok(Some(Coding::Brotli)),
            "zstd" => Ok(Some(Coding::Zstd)),
            other => Err(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    #[error("decompressed size passes {0} bytes")]
    TooLarge(u64),
    #[error("compression ratio passes {0}:1")]
    Ratio(u64),
    #[error("corrupt {0:?} stream: {1}")]
    Corrupt(Coding, String),
    #[error("{0:?} stream ended early")]
    Truncated(Coding),
}

/// A `Write` sink that refuses to grow past a cap, so a decoder cannot allocate without bound.
struct CappedSink {
    buf: Vec<u8>,
    cap: usize,
}

impl Write for CappedSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            return Err(std::io::Error::other("step output cap"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Inner {
    Gzip(flate2::write::MultiGzDecoder<CappedSink>),
    Zlib(flate2::write::ZlibDecoder<CappedSink>),
    RawDeflate(flate2::write::DeflateDecoder<CappedSink>),
    /// `deflate` is zlib-wrapped per the RFC but raw in the wild; decided on the first byte.
    DeflateUndecided,
    Brotli(Box<brotli_decompressor::DecompressorWriter<CappedSink>>),
    Zstd { dec: Box<ruzstd::decoding::FrameDecoder>, pending: Vec<u8>, started: bool },
}

/// One layer of decompression.
pub struct Decompressor {
    coding: Coding,
    inner: Inner,
    consumed: u64,
    produced: u64,
    max_bytes: u64,
    max_ratio: u64,
}

fn sink() -> CappedSink {
    CappedSink { buf: Vec::new(), cap: STEP_OUTPUT_CAP }
}

impl Decompressor {
    pub fn new(coding: Coding, max_bytes: u64, max_ratio: u64) -> Self {
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(flate2::write::MultiGzDecoder::new(sink())),
            Coding::Deflate => Inner::DeflateUndecided,
            Coding::Brotli => Inner::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(sink(), 4096))),
            Coding::Zstd => Inner::Zstd { dec: Box::new(ruzstd::decoding::FrameDecoder::new()), pending: Vec::new(), started: false },
        };
        Decompressor { coding, inner, consumed: 0, produced: 0, max_bytes, max_ratio }
    }

    /// Feeds compressed bytes; decoded output is handed to `emit` piece by piece.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) -> Result<(), DecompressError> {
        while !data.is_empty() {
            let n = data.len().min(STEP_INPUT);
            let (step, rest) = data.split_at(n);
            data = rest;
            self.consumed += n as u64;
            let out = self.step(step, false)?;
            self.account(&out)?;
            if !out.is_empty() {
                emit(&out);
            }
        }
        Ok(())
    }

    /// Ends the stream; errors if it was cut short.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) -> Result<(), DecompressError> {
        let out = self.step(&[], true)?;
        self.account(&out)?;
        if !out.is_empty() {
            emit(&out);
        }
        Ok(())
    }

    fn account(&mut self, out: &[u8]) -> Result<(), DecompressError> {
        self.produced += out.len() as u64;
        if self.produced > self.max_bytes {
            return Err(DecompressError::TooLarge(self.max_bytes));
        }
        if self.produced > (1 << 20) && self.produced / self.consumed.max(1) > self.max_ratio {
            return Err(DecompressError::Ratio(self.max_ratio));
        }
        Ok(())
    }

    fn step(&mut self, input: &[u8], last: bool) -> Result<Vec<u8>, DecompressError> {
        let coding = self.coding;
        let corrupt = |e: std::io::Error| {
            if e.to_string().contains("step output cap") {
                DecompressError::TooLarge(STEP_OUTPUT_CAP as u64)
            } else {
                DecompressError::Corrupt(coding, e.to_string())
            }
        };
        if let Inner::DeflateUndecided = self.inner {
            if input.is_empty() && !last {
                return Ok(Vec::new());
            }
            // zlib header: CMF 0x?8 with (CMF*256+FLG) % 31 == 0.
            let zlib = input.len() >= 2 && input[0] & 0x0f == 8 && (u16::from(input[0]) << 8 | u16::from(input[1])) % 31 == 0;
            self.inner = if zlib {
                Inner::Zlib(flate2::write::ZlibDecoder::new(sink()))
            } else {
                Inner::RawDeflate(flate2::write::DeflateDecoder::new(sink()))
            };
        }
        macro_rules! flate {
            ($d:expr) => {{
                $d.write_all(input).map_err(corrupt)?;
                if last {
                    $d.try_finish().map_err(corrupt)?;
                }
                Ok(std::mem::take(&mut $d.get_mut().buf))
            }};
        }
        match &mut self.inner {
            Inner::Gzip(d) => {
                let r: Result<Vec<u8>, DecompressError> = flate!(d);
                if last && self.consumed > 0 && self.produced == 0 && r.as_ref().is_ok_and(|v| v.is_empty()) {
                    return Err(DecompressError::Truncated(coding));
                }
                r
            }
            Inner::Zlib(d) => flate!(d),
            Inner::RawDeflate(d) => flate!(d),
            Inner::DeflateUndecided => Ok(Vec::new()),
            Inner::Brotli(d) => {
                d.write_all(input).map_err(corrupt)?;
                if last {
                    d.close().map_err(|e| DecompressError::Corrupt(coding, e.to_string()))?;
                }
                Ok(std::mem::take(&mut d.get_mut().buf))
            }
            Inner::Zstd { dec, pending, started } => {
                pending.extend_from_slice(input);
                let mut out = Vec::new();
                let mut target = vec![0u8; 64 * 1024];
                // The frame header must be complete before the decoder is initialised.
                if !*started && pending.len() < 18 && !last {
                    return Ok(out);
                }
                if pending.len() > (256 << 10) + 64 {
                    return Err(DecompressError::Corrupt(coding, "block larger than the format allows".into()));
                }
                loop {
                    // The decoder is third-party code fed hostile bytes: a panic inside it becomes
                    // a corrupt-stream verdict rather than taking the proxy task down.
                    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dec.decode_from_to(pending, &mut target)))
                        .map_err(|_| DecompressError::Corrupt(coding, "decoder panicked".into()))?;
                    let (read, written) = step.map_err(|e| DecompressError::Corrupt(coding, e.to_string()))?;
                    *started = true;
                    // ruzstd reports the 4 checksum bytes as read even when fewer are present;
                    // wait for more input then.
                    if read > pending.len() {
                        break;
                    }
                    pending.drain(..read);
                    out.extend_from_slice(&target[..written]);
                    if out.len() > STEP_OUTPUT_CAP {
                        return Err(DecompressError::TooLarge(STEP_OUTPUT_CAP as u64));
                    }
                    if read == 0 && written == 0 {
                        break;
                    }
                }
                if last && (!dec.is_finished() || !pending.is_empty()) {
                    return Err(DecompressError::Truncated(coding));
                }
                Ok(out)
            }
        }
    }
}

/// Parses a `Content-Encoding` header into the decoders to apply, outermost first.
pub fn parse_codings(header: &str) -> Result<Vec<Coding>, String> {
    let mut v = Vec::new();
    for t in header.split(',') {
        if let Some(c) = Coding::parse(t)? {
            v.push(c);
        }
    }
    v.reverse();
    Ok(v)
}
