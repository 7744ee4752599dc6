//! Layouts shared by the bottle's eBPF programs and their userspace loader.
//!
//! Every type is `#[repr(C)]`, padding-free and made of plain integers so both sides agree on
//! the bytes. Addresses and ports are kept in *wire form*: exactly the bytes the kernel holds in
//! `bpf_sock_addr.user_ip4` / `user_ip6` / `user_port` (network byte order), read as native
//! integers. Userspace converts with `u32::from_ne_bytes(ip.octets())` and `port.to_be()`.
#![no_std]

/// Names of the maps in the eBPF object (also the names they are pinned under).
pub mod map_names {
    pub const CONFIG: &str = "CORK_CONFIG";
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    pub const ORIG_BY_PORT: &str = "ORIG_BY_PORT";
    pub const UDP_ALLOWED: &str = "UDP_ALLOWED";
    pub const DENY_EVENTS: &str = "DENY_EVENTS";
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Bits of [`SteeringConfig::flags`]: which of the addresses are set.
pub mod config_flags {
    pub const LISTENER_V4: u32 = 1 << 0;
    pub const LISTENER_V6: u32 = 1 << 1;
    pub const DNS_V4: u32 = 1 << 2;
    pub const DNS_V6: u32 = 1 << 3;
}

/// The single entry of the `CORK_CONFIG` array: where the bottle's traffic is steered to.
/// An all-zero entry (never written) steers nowhere, so every connect is refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteeringConfig {
    pub listener_v6_addr: [u32; 4],
    pub dns_v6_addr: [u32; 4],
    pub listener_v4_addr: u32,
    pub dns_v4_addr: u32,
    pub listener_v4_port: u16,
    pub listener_v6_port: u16,
    pub dns_v4_port: u16,
    pub dns_v6_port: u16,
    pub flags: u32,
    /// cork's own process id: its sockets are never redirected even if it lands in the bottle.
    pub cork_tgid: u32,
}

/// Where a bottled socket wanted to go, and who asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDestination {
    /// IPv4: the address in `addr[0]`, the rest zero.
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
    pub pid: u32,
}

/// Why a bottled operation was refused.
pub mod deny_reason {
    /// UDP to port 443 (QUIC would escape TLS interception).
    pub const UDP_QUIC: u32 = 1;
    /// UDP to a port that is neither DNS nor allowed.
    pub const UDP_NOT_ALLOWED: u32 = 2;
    /// A socket kind the bottle never allows (raw, packet, ping, SCTP, ...).
    pub const SOCKET_KIND: u32 = 3;
    /// The egress backstop saw a packet not addressed to cork.
    pub const EGRESS_BACKSTOP: u32 = 4;
    /// No cork listener is configured for this address family.
    pub const NO_LISTENER: u32 = 5;
    /// DNS was attempted but no DNS guard is configured for this family.
    pub const NO_DNS_GUARD: u32 = 6;
    /// The original destination could not be recorded, so the connection could not be steered.
    pub const MAP_FULL: u32 = 7;
    /// The configuration map is unreadable.
    pub const NO_CONFIG: u32 = 8;
}

/// One refusal, sent to userspace through the `DENY_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    /// Destination in wire form (IPv4 in `addr[0]`); zero where there is none (socket creation).
    pub addr: [u32; 4],
    /// Destination port in wire form.
    pub port: u16,
    /// Address family (for `SOCKET_KIND`, the socket's family).
    pub family: u16,
    /// Process id; 0 where the kernel offers none (the egress backstop).
    pub pid: u32,
    /// One of [`deny_reason`].
    pub reason: u32,
    /// Socket type (`SOCK_STREAM`, ...) where known, else 0.
    pub sock_type: u32,
    /// IP protocol number where known, else 0.
    pub protocol: u32,
}
