//! MCP JSON-RPC messages through one session, both directions; and shell de-obfuscation.
#![no_main]
use cork_scan::mcp::{error_reply, McpDirection, McpSession};
use cork_scan::{Engine, ScanConfig};
use libfuzzer_sys::fuzz_target;

/// Built once: a build takes ~30 ms, which would cap the fuzzer at ~30 inputs a second.
fn engine() -> &'static Engine {
    static ENGINE: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(&ScanConfig::default()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let mut session = McpSession::new(engine(), "fuzz");
    // Each line is one message; the first byte of a line picks its direction.
    for line in data.split(|&b| b == b'\n') {
        let (dir, body) = match line.split_first() {
            Some((b, rest)) if b % 2 == 0 => (McpDirection::ToServer, rest),
            Some((_, rest)) => (McpDirection::ToClient, rest),
            None => continue,
        };
        let obs = session.observe(dir, body);
        assert!(!obs.messages.is_empty());
        for m in &obs.messages {
            if m.blocked() {
                let reply = error_reply(m);
                assert!(reply["error"]["message"].as_str().is_some());
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let out = cork_scan::shell::deobfuscate(s);
        assert!(out.len() <= cork_scan::shell::MAX_OUTPUT + 4);
    }
});
