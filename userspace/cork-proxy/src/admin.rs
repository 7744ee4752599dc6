//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/status` (kTLS, io_uring) and
//! `/ca.pem`.

use std::sync::Arc;
use std::time::Duration;

use cork_http::{Header, Limits, RequestHead, ResponseHead};
use tokio::net::TcpListener;

use crate::exchange::read_head;
use crate::state::ProxyState;
use crate::wire::Wire;

pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut wire = Wire::new(stream);
            let limit = Duration::from_secs(10);
            let Ok(Some(head)) = read_head(&mut wire, &Limits::default(), limit, limit, RequestHead::parse).await else { return };
            let path = head.target.split('?').next().unwrap_or("");
            let (status, reason, content_type, body) = match (head.method.as_str(), path) {
                ("GET", "/metrics") => (200, "OK", "text/plain; version=0.0.4", state.render_metrics()),
                ("GET", "/healthz") => (200, "OK", "text/plain", "ok\n".to_string()),
                ("GET", "/status") => {
                    let limits = state.snapshot().policy.limits.clone();
                    (200, "OK", "text/plain", format!("{}\n{}\n", crate::ktls_leg::describe(limits.ktls), crate::uring::describe(limits.io_uring)))
                }
                ("GET", "/ca.pem") => (200, "OK", "application/x-pem-file", state.leaves.ca().cert_pem()),
                _ => (404, "Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = ResponseHead::new(
                status,
                reason,
                vec![
                    Header::new("Content-Type", content_type),
                    Header::new("Content-Length", body.len().to_string()),
                    Header::new("Connection", "close"),
                ],
            );
            let _ = wire.send(&response.to_bytes()).await;
            let _ = wire.send(body.as_bytes()).await;
        });
    }
}
