//! `cork mcp proxy --upstream wss://…`: stdio bridged to an MCP server that speaks WebSocket.
//!
//! One verified TLS connection (system roots plus `--ca`), one RFC 6455 handshake offering the
//! `mcp` subprotocol and checking `Sec-WebSocket-Accept`, then each newline-delimited JSON-RPC
//! message from stdin goes through the session's [`Relay`] and out as one masked text message;
//! each message from the server (fragments reassembled, pings answered) goes through the same
//! relay and out to stdout as one line. Refused client requests are answered on stdout and never
//! sent; refused server messages are replaced by JSON-RPC errors. No extension is offered, so no
//! frame is compressed past the checks; a frame with an RSV bit set ends the bridge.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use cork_http::ws::{self, close_code, Assembler, FrameRole, Opcode, Role};
use cork_http::{Limits, ResponseHead};
use cork_scan::mcp::McpDirection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use crate::mcp_cmd::{Relay, Routed};
use crate::mcp_http::Upstream;

/// Largest handshake answer accepted.
const MAX_HEAD: usize = 64 * 1024;
/// RFC 6455's key suffix for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

type Writer = Mutex<Box<dyn AsyncWrite + Unpin + Send>>;

/// Runs the bridge until stdin ends or the server closes.
pub async fn stdio_bridge(relay: Arc<Relay>, up: Upstream, max: usize) -> Result<std::process::ExitCode> {
    let (reader, early, writer) = connect(&up).await?;
    let writer: Arc<Writer> = Arc::new(Mutex::new(writer));
    let stdout: Arc<Mutex<tokio::io::Stdout>> = Arc::new(Mutex::new(tokio::io::stdout()));

    let to_server = {
        let (relay, writer, stdout) = (relay.clone(), writer.clone(), stdout.clone());
        tokio::spawn(async move {
            let mut stdin = BufReader::new(tokio::io::stdin());
            let mut buf = Vec::new();
            while let Some(routed) = relay.next_line(&mut stdin, &mut buf, McpDirection::ToServer, max).await {
                if deliver(routed, &stdout, &writer).await.is_err() {
                    break;
                }
            }
            // stdin is done: say goodbye; the server's close ends the other half.
            let _ = send(&writer, &ws::close_frame(close_code::NORMAL, "", Some(mask_key()))).await;
        })
    };
    let result = from_server(&relay, reader, early, &writer, &stdout, max).await;
    to_server.abort();
    result.map(|()| std::process::ExitCode::SUCCESS)
}

/// Where a routed message's parts go: `onward` toward its destination, `back` to its sender.
/// Messages toward the server are text frames; toward the client, stdout lines.
async fn deliver(routed: Routed, stdout: &Mutex<tokio::io::Stdout>, writer: &Writer) -> Result<()> {
    if let Some(back) = routed.back {
        write_line(stdout, &back).await?;
    }
    if let Some(on) = routed.onward {
        send(writer, &ws::encode_frame(true, Opcode::Text, on.trim_ascii_end(), Some(mask_key()))).await?;
    }
    Ok(())
}

async fn write_line(stdout: &Mutex<tokio::io::Stdout>, line: &[u8]) -> Result<()> {
    let mut out = stdout.lock().await;
    out.write_all(line).await?;
    if !line.ends_with(b"\n") {
        out.write_all(b"\n").await?;
    }
    out.flush().await?;
    Ok(())
}

async fn send(writer: &Writer, frame: &[u8]) -> Result<()> {
    let mut w = writer.lock().await;
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// Client frames are masked with a fresh key each (RFC 6455 §5.3).
fn mask_key() -> [u8; 4] {
    rand::random()
}

/// Reads the server's frames until it closes: each complete message through the relay.
async fn from_server(
    relay: &Relay,
    mut reader: Box<dyn AsyncRead + Unpin + Send>,
    mut buf: Vec<u8>,
    writer: &Writer,
    stdout: &Mutex<tokio::io::Stdout>,
    max: usize,
) -> Result<()> {
    let mut asm = Assembler::new(max as u64);
    let mut message = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while let Some(header) = ws::parse_header(&buf, Role::Server, max as u64).map_err(|e| anyhow!("bad frame from the server: {e}"))? {
            let len = header.frame_len() as usize;
            if buf.len() < len {
                break;
            }
            let role = asm.begin_frame(&header).map_err(|e| anyhow!("bad frame from the server: {e}"))?;
            let payload = buf[header.header_len..len].to_vec();
            buf.drain(..len);
            asm.payload(role, &payload).and_then(|()| asm.end_frame(role)).map_err(|e| anyhow!("bad message from the server: {e}"))?;
            match role {
                FrameRole::Control(Opcode::Ping) => send(writer, &ws::encode_frame(true, Opcode::Pong, &payload, Some(mask_key()))).await?,
                FrameRole::Control(Opcode::Close) => {
                    let _ = send(writer, &ws::close_frame(close_code::NORMAL, "", Some(mask_key()))).await;
                    return Ok(());
                }
                FrameRole::Control(_) => {}
                FrameRole::Data { last, .. } => {
                    message.extend_from_slice(&payload);
                    if last {
                        let routed = relay.route(McpDirection::ToClient, &message);
                        message.clear();
                        // Toward the client the relay's `onward` is the stdout line and `back`
                        // an error for the server.
                        if let Some(on) = routed.onward {
                            write_line(stdout, &on).await?;
                        }
                        if let Some(back) = routed.back {
                            send(writer, &ws::encode_frame(true, Opcode::Text, back.trim_ascii_end(), Some(mask_key()))).await?;
                        }
                    }
                }
            }
        }
        let n = reader.read(&mut chunk).await.context("reading from the server")?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Connects, verifies TLS and completes the WebSocket handshake. Returns the read half, bytes
/// already read past the handshake, and the write half.
async fn connect(up: &Upstream) -> Result<(Box<dyn AsyncRead + Unpin + Send>, Vec<u8>, Box<dyn AsyncWrite + Unpin + Send>)> {
    let tcp = tokio::net::TcpStream::connect((up.host.as_str(), up.port)).await.with_context(|| format!("connecting to {}", up.authority()))?;
    let name = rustls::pki_types::ServerName::try_from(up.host.clone()).map_err(|e| anyhow!("bad server name {}: {e}", up.host))?;
    let mut tls = tokio_rustls::TlsConnector::from(up.tls.clone()).connect(name, tcp).await.with_context(|| format!("TLS with {}", up.authority()))?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mcp\r\n\r\n",
        up.path,
        up.authority()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.flush().await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let response = loop {
        if let Some((r, used)) = ResponseHead::parse(&buf, &Limits { max_head_bytes: MAX_HEAD, max_headers: 128 })? {
            buf.drain(..used);
            break r;
        }
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            bail!("{} closed during the WebSocket handshake", up.authority());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if response.status != 101 {
        bail!("{} answered the WebSocket handshake with {} {}", up.authority(), response.status, response.reason);
    }
    let accept = response.header("sec-websocket-accept").and_then(|h| h.value_str()).unwrap_or("");
    if accept.trim() != expected_accept(&key) {
        bail!("{} answered with a wrong Sec-WebSocket-Accept", up.authority());
    }
    if let Some(ext) = response.header("sec-websocket-extensions").and_then(|h| h.value_str()).filter(|e| !e.trim().is_empty()) {
        bail!("{} negotiated an extension cork did not offer: {ext}", up.authority());
    }
    let (r, w) = tokio::io::split(tls);
    Ok((Box::new(r), buf, Box::new(w)))
}

fn expected_accept(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}{ACCEPT_GUID}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_matches_rfc_6455s_example() {
        assert_eq!(super::expected_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
