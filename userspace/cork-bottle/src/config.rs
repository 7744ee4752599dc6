//! What a bottle steers to, and its conversion to the eBPF programs' wire form.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    path::PathBuf,
};

use cork_bottle_common::{config_flags, OriginalDestination, SteeringConfig, AF_INET, AF_INET6};

use crate::{bpffs::DEFAULT_BPFFS_ROOT, object::ObjectSource};

/// A bottle's steering targets. A family without a listener cannot connect at all; DNS for a
/// family without a guard is refused.
#[derive(Clone, Debug)]
pub struct BottleConfig {
    /// cork's transparent listener for IPv4 (and v4-mapped IPv6) TCP.
    pub listener_v4: Option<SocketAddrV4>,
    /// cork's transparent listener for IPv6 TCP.
    pub listener_v6: Option<SocketAddrV6>,
    /// cork's DNS guard for UDP/53 over IPv4.
    pub dns_v4: Option<SocketAddrV4>,
    /// cork's DNS guard for UDP/53 over IPv6.
    pub dns_v6: Option<SocketAddrV6>,
    /// UDP destination ports the bottle may reach directly (443 stays refused).
    pub allow_udp: Vec<u16>,
    /// Where the eBPF object comes from.
    pub object: ObjectSource,
    /// The bpffs that holds the pins (mounted there if it is not one yet).
    pub bpffs_root: PathBuf,
}

impl Default for BottleConfig {
    fn default() -> Self {
        Self {
            listener_v4: None,
            listener_v6: None,
            dns_v4: None,
            dns_v6: None,
            allow_udp: Vec::new(),
            object: ObjectSource::Default,
            bpffs_root: PathBuf::from(DEFAULT_BPFFS_ROOT),
        }
    }
}

pub(crate) fn wire_ip4(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub(crate) fn wire_ip6(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// Port in wire form (network byte order, read natively).
pub(crate) fn wire_port(port: u16) -> u16 {
    port.to_be()
}

impl BottleConfig {
    pub(crate) fn steering(&self, cork_tgid: u32) -> SteeringConfig {
        let mut wire = SteeringConfig {
            cork_tgid,
            ..SteeringConfig::default()
        };
        if let Some(l) = self.listener_v4 {
            wire.listener_v4_addr = wire_ip4(*l.ip());
            wire.listener_v4_port = wire_port(l.port());
            wire.flags |= config_flags::LISTENER_V4;
        }
        if let Some(l) = self.listener_v6 {
            wire.listener_v6_addr = wire_ip6(*l.ip());
            wire.listener_v6_port = wire_port(l.port());
            wire.flags |= config_flags::LISTENER_V6;
        }
        if let Some(d) = self.dns_v4 {
            wire.dns_v4_addr = wire_ip4(*d.ip());
            wire.dns_v4_port = wire_port(d.port());
            wire.flags |= config_flags::DNS_V4;
        }
        if let Some(d) = self.dns_v6 {
            wire.dns_v6_addr = wire_ip6(*d.ip());
            wire.dns_v6_port = wire_port(d.port());
            wire.flags |= config_flags::DNS_V6;
        }
        wire
    }
}

/// A wire-form address back to a socket address; `None` for an unknown family.
pub(crate) fn socket_addr(family: u16, addr: [u32; 4], port: u16) -> Option<SocketAddr> {
    let port = u16::from_be(port);
    match family {
        AF_INET => Some(SocketAddr::new(
            Ipv4Addr::from(addr[0].to_ne_bytes()).into(),
            port,
        )),
        AF_INET6 => {
            let mut octets = [0u8; 16];
            for (i, word) in addr.iter().enumerate() {
                octets[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
            }
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        _ => None,
    }
}

pub(crate) fn original_socket_addr(orig: &OriginalDestination) -> Option<SocketAddr> {
    socket_addr(orig.family, orig.addr, orig.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips() {
        let v4: SocketAddr = "10.1.2.3:8443".parse().unwrap();
        let SocketAddr::V4(a) = v4 else {
            unreachable!()
        };
        let back = socket_addr(AF_INET, [wire_ip4(*a.ip()), 0, 0, 0], wire_port(a.port()));
        assert_eq!(back, Some(v4));

        let v6: SocketAddr = "[fd00::1:2]:443".parse().unwrap();
        let SocketAddr::V6(a) = v6 else {
            unreachable!()
        };
        let back = socket_addr(AF_INET6, wire_ip6(*a.ip()), wire_port(a.port()));
        assert_eq!(back, Some(v6));

        assert_eq!(socket_addr(99, [0; 4], 0), None);
    }

    #[test]
    fn wire_ip4_matches_network_byte_order_in_memory() {
        // The kernel's user_ip4 holds the address bytes in order; so must ours.
        assert_eq!(
            wire_ip4(Ipv4Addr::new(127, 0, 0, 1)).to_ne_bytes(),
            [127, 0, 0, 1]
        );
        assert_eq!(wire_port(0x1234).to_ne_bytes(), [0x12, 0x34]);
    }

    #[test]
    fn steering_sets_flags_only_for_configured_targets() {
        let config = BottleConfig {
            listener_v4: Some("127.0.0.1:15001".parse().unwrap()),
            ..BottleConfig::default()
        };
        let wire = config.steering(42);
        assert_eq!(wire.flags, config_flags::LISTENER_V4);
        assert_eq!(wire.cork_tgid, 42);
        assert_eq!(wire.dns_v4_addr, 0);
    }
}
