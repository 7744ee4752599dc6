//! Where a bottled destination goes: cork's listener, cork's DNS guard, straight through, or
//! nowhere. Pure decisions on wire-form addresses; the programs apply them.
use cork_bottle_common::{
    config_flags, deny_reason, OriginalDestination, SteeringConfig, AF_INET, AF_INET6,
};

use crate::maps::UDP_ALLOWED;

const DNS_PORT: u16 = 53;
const QUIC_PORT: u16 = 443;

/// A socket address in wire form (IPv4 in `addr[0]`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct WireAddr {
    pub family: u16,
    pub addr: [u32; 4],
    pub port: u16,
}

impl WireAddr {
    pub fn v4(ip: u32, port: u16) -> Self {
        Self {
            family: AF_INET,
            addr: [ip, 0, 0, 0],
            port,
        }
    }

    pub fn v6(ip: [u32; 4], port: u16) -> Self {
        Self {
            family: AF_INET6,
            addr: ip,
            port,
        }
    }

    pub fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }

    pub fn with_pid(&self, pid: u32) -> OriginalDestination {
        OriginalDestination {
            addr: self.addr,
            port: self.port,
            family: self.family,
            pid,
        }
    }

    pub fn from_original(orig: &OriginalDestination) -> Self {
        Self {
            family: orig.family,
            addr: orig.addr,
            port: orig.port,
        }
    }
}

pub enum Verdict {
    /// Leave the destination as it is.
    Pass,
    /// Rewrite the destination to this one and remember the original.
    Redirect(WireAddr),
    /// Refuse, for this `deny_reason`.
    Deny(u32),
}

/// cork's transparent listener for this destination's family.
pub fn tcp_verdict(cfg: &SteeringConfig, dest: &WireAddr) -> Verdict {
    match listener_for(cfg, dest.family) {
        Some(listener) => Verdict::Redirect(listener),
        None => Verdict::Deny(deny_reason::NO_LISTENER),
    }
}

/// QUIC refused, DNS to cork's guard, other UDP only to allowed ports.
pub fn udp_verdict(cfg: &SteeringConfig, dest: &WireAddr) -> Verdict {
    let port = dest.host_port();
    if port == QUIC_PORT {
        return Verdict::Deny(deny_reason::UDP_QUIC);
    }
    if port == DNS_PORT {
        return match dns_guard_for(cfg, dest.family) {
            // A query already addressed to the guard needs no rewrite (and no record).
            Some(guard) if guard == *dest => Verdict::Pass,
            Some(guard) => Verdict::Redirect(guard),
            None => Verdict::Deny(deny_reason::NO_DNS_GUARD),
        };
    }
    // SAFETY: read-only lookup of a plain u8 value.
    if unsafe { UDP_ALLOWED.get(&port) }.is_some() {
        return Verdict::Pass;
    }
    Verdict::Deny(deny_reason::UDP_NOT_ALLOWED)
}

pub fn listener_for(cfg: &SteeringConfig, family: u16) -> Option<WireAddr> {
    if family == AF_INET && cfg.flags & config_flags::LISTENER_V4 != 0 {
        Some(WireAddr::v4(cfg.listener_v4_addr, cfg.listener_v4_port))
    } else if family == AF_INET6 && cfg.flags & config_flags::LISTENER_V6 != 0 {
        Some(WireAddr::v6(cfg.listener_v6_addr, cfg.listener_v6_port))
    } else {
        None
    }
}

pub fn dns_guard_for(cfg: &SteeringConfig, family: u16) -> Option<WireAddr> {
    if family == AF_INET && cfg.flags & config_flags::DNS_V4 != 0 {
        Some(WireAddr::v4(cfg.dns_v4_addr, cfg.dns_v4_port))
    } else if family == AF_INET6 && cfg.flags & config_flags::DNS_V6 != 0 {
        Some(WireAddr::v6(cfg.dns_v6_addr, cfg.dns_v6_port))
    } else {
        None
    }
}

/// UDP allowed to this port without steering (the backstop's view of `udp_verdict`'s `Pass`).
pub fn udp_port_allowed(port: u16) -> bool {
    // SAFETY: read-only lookup of a plain u8 value.
    port != QUIC_PORT && unsafe { UDP_ALLOWED.get(&port) }.is_some()
}

pub fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}
