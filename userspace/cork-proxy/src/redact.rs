//! Same-length redaction, so that rewriting a secret never changes a message's framing.

/// Overwrites `bytes` with a marker that keeps their length: `[REDACTED]` padded with `*`, or
/// only `*` when the span is shorter than the marker.
pub fn mask(bytes: &mut [u8]) {
    const MARKER: &[u8] = b"[REDACTED]";
    if bytes.len() >= MARKER.len() {
        bytes[..MARKER.len()].copy_from_slice(MARKER);
        bytes[MARKER.len()..].fill(b'*');
    } else {
        bytes.fill(b'*');
    }
}
