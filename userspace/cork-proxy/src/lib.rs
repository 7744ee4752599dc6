//! cork's networking: the explicit proxy, TLS interception, passthrough tunnels and the
//! HTTP/1.1 relay.
//!
//! This crate moves bytes and enforces what it is told. What is allowed comes from
//! `cork_policy`, what is found comes from `cork_scan`; [`inspect`] is the one place where their
//! answers become effects (block, redact, record) on a connection.
//!
//! - [`explicit`] accepts proxy clients and dispatches `CONNECT` and absolute-URI requests.
//! - [`bump`] intercepts TLS: ClientHello first, verified upstream handshake second, leaf last.
//! - [`tunnel`] passes TLS through for pinned clients, checking only names.
//! - [`exchange`] relays one HTTP/1.1 exchange, with [`body`] streaming bodies through the scanner.
//! - [`websocket`] relays WebSocket sessions message by message after an HTTP/1.1 upgrade;
//!   [`ws_endpoint`] serves the same relay as `GET /ws?url=` on the explicit listener.
//! - [`mcp`] follows MCP sessions (streamable HTTP) and A2A Agent Cards in bumped exchanges.
//! - [`ktls_leg`] moves a bumped HTTP/1.1 connection's TLS records into the kernel where it can.
//! - [`relay`] carries unscanned tunnels on io_uring ([`uring`], one ring per core), `splice` or a
//!   copy.
//! - [`h2relay`] relays HTTP/2 stream by stream when both sides negotiated `h2`.
//! - [`audit`] and [`metrics`] record every decision.

pub mod accept;
pub mod admin;
pub mod audit;
pub mod body;
pub mod bump;
pub mod dns;
pub mod exchange;
pub mod explicit;
pub mod fetch;
pub mod h2relay;
pub mod inspect;
pub mod mcp;
pub mod ktls_leg;
pub mod linger;
pub mod metrics;
pub mod relay;
pub mod respond;
pub mod splice;
pub mod state;
pub mod transparent;
pub mod tunnel;
pub mod upstream;
pub mod uring;
pub mod websocket;
pub mod wire;
pub mod ws_endpoint;

pub use audit::{AuditLog, AuditRecord, Verdict};
pub use state::{ProxyState, Snapshot, StateError};
