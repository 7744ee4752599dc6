//! The accept loop shared by cork's listeners.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::state::ProxyState;

/// Accepts connections until the task is dropped and runs `serve` on each in its own task. At
/// most `limits.max_connections` are served at once; beyond that, new connections wait in the
/// listen backlog: cork never lets one through unchecked. `serve` itself is called in the accept
/// loop, so work it does before returning its future (a map lookup) happens right at accept.
pub async fn accept_loop<F, Fut>(listener: TcpListener, state: Arc<ProxyState>, serve: F)
where
    F: Fn(Arc<ProxyState>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(state.snapshot().policy.limits.max_connections));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = serve(state.clone(), stream, peer);
        let state = state.clone();
        tokio::spawn(async move {
            let _active = state.metrics.active();
            connection.await;
            drop(permit);
        });
    }
}
