//! Zero-copy relaying of tunnels that need no scanning (passthrough, raw TCP), and of response
//! bodies the policy does not scan ([`body`]), with `splice(2)`.
//!
//! Bytes move socket → pipe → socket inside the kernel and never enter userspace. Each direction
//! has its own pipe and runs until its source reaches end of stream, which is then passed on as
//! a write shutdown, so half-closed protocols keep working. Where the kernel refuses `splice` for
//! these descriptors, the relay falls back to an ordinary userspace copy. Where io_uring is
//! available, [`crate::relay`] prefers it ([`crate::uring`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

pub use crate::relay::RelayPath;

/// How much one `splice` call moves at most (the default pipe capacity).
const PIPE_CHUNK: usize = 64 * 1024;

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn splice_once(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets (both ends are sockets or pipes).
    let n = unsafe {
        libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Moves one direction, `src` to `dst`, until `src` ends. Returns the bytes moved.
async fn splice_one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let (pipe_r, pipe_w) = pipe()?;
    let mut total = 0u64;
    loop {
        // Socket → pipe. WouldBlock clears readiness inside try_io, so the await is correct.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || splice_once(src.as_raw_fd(), pipe_w.as_raw_fd(), PIPE_CHUNK)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // SAFETY: shutdown(2) on a socket we borrow; the peer sees our end of stream.
            unsafe { libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR) };
            return Ok(total);
        }
        // Pipe → socket, until the pipe is empty again.
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || splice_once(pipe_r.as_raw_fd(), dst.as_raw_fd(), left)) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "splice wrote nothing")),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

/// Relays both directions between `a` and `b` until both have ended. Returns the bytes moved
/// a→b and b→a, and the mechanism used.
pub async fn relay(a: &mut TcpStream, b: &mut TcpStream) -> io::Result<(u64, u64, RelayPath)> {
    // A zero-length splice probes whether this kernel supports splicing these descriptors
    // without moving anything.
    let supported = pipe().and_then(|(_, w)| splice_once(a.as_raw_fd(), w.as_raw_fd(), 0)).is_ok();
    if !supported {
        let (up, down) = tokio::io::copy_bidirectional(a, b).await?;
        return Ok((up, down, RelayPath::Copy));
    }
    let (a_ref, b_ref) = (&*a, &*b);
    let (up, down) = tokio::try_join!(splice_one_way(a_ref, b_ref), splice_one_way(b_ref, a_ref))?;
    Ok((up, down, RelayPath::Splice))
}

/// Why a body splice stopped before its last byte.
#[derive(Debug)]
pub enum BodySpliceStop {
    /// The source would not splice (a kTLS control record such as a KeyUpdate or an alert, or a
    /// kernel that cannot splice these descriptors). Nothing is lost: every byte taken from the
    /// source was passed on, and the caller reads on the ordinary way.
    Handback(io::Error),
    Read(io::Error),
    Write(io::Error),
    /// The source ended before the body did.
    Ended,
    /// Neither side moved for the idle limit.
    Idle,
}

/// A second registration of a socket the runtime already watches, for readiness only; the
/// duplicate descriptor shares the socket, and closing it leaves the original open.
fn watch(fd: RawFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the caller keeps open for this call.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` was just created and is owned by nobody else; the OwnedFd keeps it open and
    // unchanged for as long as the AsyncFd, its owner, lives.
    unsafe { AsyncFd::register_with_interest(OwnedFd::from_raw_fd(dup), interest) }.map_err(io::Error::from)
}

/// Moves exactly `len` bytes of a body from socket `from` to socket `to` with `splice(2)`
/// (socket → pipe → socket, never through userspace). Works between plain TCP sockets and
/// between kTLS sockets, whose kernel opens and seals the records. `moved` counts the bytes
/// delivered to `to`, also when the splice stops early.
pub async fn body(from: RawFd, to: RawFd, len: u64, idle: Duration, moved: &mut u64) -> Result<(), BodySpliceStop> {
    let src = watch(from, Interest::READABLE).map_err(BodySpliceStop::Handback)?;
    let dst = watch(to, Interest::WRITABLE).map_err(BodySpliceStop::Handback)?;
    let (pipe_r, pipe_w) = pipe().map_err(BodySpliceStop::Handback)?;
    while *moved < len {
        let want = (len - *moved).min(PIPE_CHUNK as u64) as usize;
        let n = loop {
            let mut ready = tokio::time::timeout(idle, src.readable()).await.map_err(|_| BodySpliceStop::Idle)?.map_err(BodySpliceStop::Read)?;
            match ready.try_io(|fd| splice_once(fd.as_raw_fd(), pipe_w.as_raw_fd(), want)) {
                Ok(Ok(n)) => break n,
                // kTLS answers EINVAL (6.1) or EIO to a splice that meets a control record.
                Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO | libc::ENOSYS | libc::EOPNOTSUPP)) => return Err(BodySpliceStop::Handback(e)),
                Ok(Err(e)) => return Err(BodySpliceStop::Read(e)),
                Err(_would_block) => continue,
            }
        };
        if n == 0 {
            return Err(BodySpliceStop::Ended);
        }
        let mut left = n;
        while left > 0 {
            let mut ready = tokio::time::timeout(idle, dst.writable()).await.map_err(|_| BodySpliceStop::Idle)?.map_err(BodySpliceStop::Write)?;
            match ready.try_io(|fd| splice_once(pipe_r.as_raw_fd(), fd.as_raw_fd(), left)) {
                Ok(Ok(0)) => return Err(BodySpliceStop::Write(io::Error::new(io::ErrorKind::WriteZero, "splice wrote nothing"))),
                Ok(Ok(m)) => {
                    left -= m;
                    *moved += m as u64;
                }
                Ok(Err(e)) => return Err(BodySpliceStop::Write(e)),
                Err(_would_block) => continue,
            }
        }
    }
    Ok(())
}
