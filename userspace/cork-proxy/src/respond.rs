//! Responses that cork itself gives: blocks, errors and the CONNECT answer.

use cork_http::{Header, ResponseHead};
use serde::Serialize;

#[derive(Serialize)]
struct Refusal<'a> {
    error: &'a str,
    rule: &'a str,
    reason: &'a str,
    request_id: &'a str,
}

/// The JSON body of a refusal, naming the rule and the request id (also used on HTTP/2 streams).
pub fn refusal_body(error: &str, rule: &str, reason: &str, request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&Refusal { error, rule, reason, request_id }).unwrap_or_default()
}

/// A complete response with a JSON body naming the rule and the request id.
pub fn refusal(status: u16, reason_phrase: &str, error: &str, rule: &str, reason: &str, request_id: &str, keep_alive: bool) -> Vec<u8> {
    let body = refusal_body(error, rule, reason, request_id);
    let head = ResponseHead::new(
        status,
        reason_phrase,
        vec![
            Header::new("Content-Type", "application/json"),
            Header::new("Content-Length", body.len().to_string()),
            Header::new("Cache-Control", "no-store"),
            Header::new("X-Cork-Request-Id", request_id),
            Header::new("Connection", if keep_alive { "keep-alive" } else { "close" }),
        ],
    );
    let mut out = head.to_bytes();
    out.extend_from_slice(&body);
    out
}

pub fn blocked(rule: &str, reason: &str, request_id: &str, keep_alive: bool) -> Vec<u8> {
    refusal(403, "Forbidden", "blocked", rule, reason, request_id, keep_alive)
}

pub fn bad_request(rule: &str, reason: &str, request_id: &str) -> Vec<u8> {
    refusal(400, "Bad Request", "bad_request", rule, reason, request_id, false)
}

pub fn bad_gateway(rule: &str, reason: &str, request_id: &str) -> Vec<u8> {
    refusal(502, "Bad Gateway", "upstream", rule, reason, request_id, false)
}

pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
