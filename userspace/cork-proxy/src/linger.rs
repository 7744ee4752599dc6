//! Lingering close: a goodbye the peer can still read.
//!
//! When cork ends a connection while the peer is still sending (an HTTP/2 GOAWAY for a reset
//! flood, say), closing the socket with unread input makes the kernel answer the peer's next
//! segment with RST, and an RST can destroy the GOAWAY before the peer has read it. So the
//! socket is held open a little longer with its write side shut: what still arrives is read and
//! dropped until the peer closes, a byte budget is spent or a deadline passes. The budget and the
//! deadline keep a peer that never stops from holding the socket.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a closing connection is drained at most.
pub const LINGER_FOR: Duration = Duration::from_secs(2);
/// How much a closing connection may still send before it is cut.
pub const LINGER_BYTES: u64 = 1024 * 1024;

/// A second handle on a TCP socket, taken while something else owns the connection.
pub struct Linger(OwnedFd);

impl Linger {
    /// Takes a handle on a TCP socket, so the socket outlives the stream that owns it now.
    pub fn hold(socket: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(Self(socket.try_clone_to_owned()?))
    }

    /// Call once the owning stream is gone: shuts the write side (the goodbye is already
    /// written) and drops what the peer still sends, within [`LINGER_FOR`] and [`LINGER_BYTES`].
    /// Returns the bytes dropped.
    pub async fn drain(self) -> u64 {
        let std = std::net::TcpStream::from(self.0);
        if std.set_nonblocking(true).is_err() {
            return 0;
        }
        let Ok(mut tcp) = TcpStream::from_std(std) else { return 0 };
        let _ = tcp.shutdown().await;
        let mut dropped = 0u64;
        // On the heap: an array here would sit in every bumped connection's task for its life.
        let mut buf = vec![0u8; 16 * 1024];
        let _ = tokio::time::timeout(LINGER_FOR, async {
            while dropped < LINGER_BYTES {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => dropped += n as u64,
                }
            }
        })
        .await;
        dropped
    }
}
