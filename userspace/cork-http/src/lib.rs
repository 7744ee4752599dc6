//! Sans-I/O HTTP/1.1 for cork.
//!
//! This crate turns bytes into message heads and body framing, and back, without touching a
//! socket. It is deliberately stricter than a general-purpose server, because everything cork
//! forwards is re-read by a second parser (the origin's), and any disagreement between the two is
//! a request-smuggling hole. So it refuses, rather than repairs:
//!
//! - `Content-Length` together with `Transfer-Encoding`;
//! - more than one `Content-Length`, or one that is not plain digits;
//! - a `Transfer-Encoding` other than exactly `chunked`;
//! - obsolete line folding, and bare LF line endings, in the head;
//! - heads over the configured size or header count.
//!
//! [`head`] parses and re-serialises heads, [`framing`] decides how a body is delimited, and
//! [`chunked`] decodes and encodes chunked bodies incrementally. [`ws`] parses and builds
//! WebSocket frames (RFC 6455) for upgraded connections.

pub mod chunked;
pub mod framing;
pub mod head;
pub mod sse;
pub mod ws;

pub use framing::BodyFraming;
pub use head::{Header, HeadError, Limits, RequestHead, ResponseHead};
