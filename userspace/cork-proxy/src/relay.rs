//! Which mechanism relays a tunnel that needs no scanning (passthrough TLS, raw TCP).
//!
//! io_uring first, where the policy (`limits.io_uring`) and the process allow it ([`uring`]);
//! `splice(2)` next ([`splice`]); an ordinary userspace copy last (inside [`splice::relay`], where
//! the kernel refuses to splice the sockets). The caller reports the [`RelayPath`] that carried the
//! tunnel in its audit line and in `cork_relay_path_total`.
//!
//! [`uring`]: crate::uring
//! [`splice`]: crate::splice

use std::io;

use cork_policy::IoUringMode;
use tokio::net::TcpStream;

/// Which mechanism carried a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayPath {
    Uring,
    Splice,
    Copy,
}

impl RelayPath {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayPath::Uring => "uring",
            RelayPath::Splice => "splice",
            RelayPath::Copy => "copy",
        }
    }
}

/// Relays both directions between `a` and `b` until both have ended, then closes them. Returns
/// the bytes moved a→b and b→a, and the mechanism used.
pub async fn tunnel(mode: IoUringMode, mut a: TcpStream, mut b: TcpStream) -> io::Result<(u64, u64, RelayPath)> {
    // A pool that failed to start was logged once; every tunnel then falls back quietly.
    if let Some(Ok(pool)) = crate::uring::wanted(mode).then(crate::uring::pool) {
        // into_std takes the sockets out of tokio's reactor; from here the ring owns them.
        let (a, b) = (a.into_std()?, b.into_std()?);
        let moved = pool.relay(a.into(), b.into(), None).await.map_err(io::Error::other)?;
        return Ok((moved.a_to_b, moved.b_to_a, RelayPath::Uring));
    }
    crate::splice::relay(&mut a, &mut b).await
}
