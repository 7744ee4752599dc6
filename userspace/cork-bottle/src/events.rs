//! Deny events from the programs' ring buffer, as typed values.
use std::{
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use cork_bottle_common::{deny_reason, DenyEvent as WireDenyEvent};

use crate::{config::socket_addr, BottleError};

/// Why the bottle refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// UDP to port 443: QUIC would bypass TLS interception.
    UdpQuic,
    /// UDP to a port that is neither DNS nor allowed.
    UdpNotAllowed,
    /// A raw, packet, ping or other non-TCP/UDP socket; `family` is its address family.
    SocketKind { family: u16 },
    /// The egress backstop dropped a packet not addressed to cork.
    EgressBackstop,
    /// No listener is configured for the destination's family.
    NoListener,
    /// DNS was attempted but no DNS guard is configured for the family.
    NoDnsGuard,
    /// The original destination could not be recorded.
    MapFull,
    /// The configuration map was unreadable.
    NoConfig,
    /// A reason this loader does not know (a newer eBPF object).
    Unknown(u32),
}

/// One refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyEvent {
    /// Process id (0 for the egress backstop, where the kernel gives none).
    pub pid: u32,
    /// Where it was going, when there was a destination.
    pub destination: Option<SocketAddr>,
    pub reason: DenyReason,
    /// Socket type (`libc::SOCK_STREAM`, ...) where known, else 0.
    pub sock_type: u32,
    /// IP protocol where known, else 0.
    pub protocol: u32,
}

impl DenyEvent {
    pub(crate) fn from_wire(wire: &WireDenyEvent) -> Self {
        let reason = match wire.reason {
            deny_reason::UDP_QUIC => DenyReason::UdpQuic,
            deny_reason::UDP_NOT_ALLOWED => DenyReason::UdpNotAllowed,
            deny_reason::SOCKET_KIND => DenyReason::SocketKind {
                family: wire.family,
            },
            deny_reason::EGRESS_BACKSTOP => DenyReason::EgressBackstop,
            deny_reason::NO_LISTENER => DenyReason::NoListener,
            deny_reason::NO_DNS_GUARD => DenyReason::NoDnsGuard,
            deny_reason::MAP_FULL => DenyReason::MapFull,
            deny_reason::NO_CONFIG => DenyReason::NoConfig,
            other => DenyReason::Unknown(other),
        };
        let destination = match reason {
            DenyReason::SocketKind { .. } => None,
            _ => socket_addr(wire.family, wire.addr, wire.port),
        };
        Self {
            pid: wire.pid,
            destination,
            reason,
            sock_type: wire.sock_type,
            protocol: wire.protocol,
        }
    }
}

/// Reader of a bottle's deny events. Register its fd with epoll or tokio's `AsyncFd` for
/// readiness, then drain with [`DenyEvents::try_next`].
pub struct DenyEvents {
    ring: RingBuf<MapData>,
}

impl DenyEvents {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// The next event already in the buffer, if any.
    pub fn try_next(&mut self) -> Option<DenyEvent> {
        loop {
            let item = self.ring.next()?;
            if item.len() < size_of::<WireDenyEvent>() {
                tracing::warn!(
                    len = item.len(),
                    "short deny event from the bottle, skipped"
                );
                continue;
            }
            // SAFETY: the buffer holds at least one `WireDenyEvent`, a plain-integer
            // `repr(C)` struct; read_unaligned copes with any alignment.
            let wire = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<WireDenyEvent>()) };
            return Some(DenyEvent::from_wire(&wire));
        }
    }

    /// The next event, waiting up to `timeout` for one.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<DenyEvent>, BottleError> {
        if let Some(event) = self.try_next() {
            return Ok(Some(event));
        }
        let mut poll_fd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut poll_fd, 1, millis) };
        if rc < 0 {
            return Err(BottleError::io(
                "polling deny events of",
                "ring buffer",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(self.try_next())
    }
}

impl AsFd for DenyEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}
