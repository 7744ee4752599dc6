//! cgroup_skb/egress: whatever slipped past the socket hooks is dropped unless it is addressed
//! to cork's listener, cork's DNS guard, or an allowed UDP port.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use cork_bottle_common::{deny_reason, DenyEvent, SteeringConfig, AF_INET, AF_INET6};

use crate::{
    maps::{config, report},
    steering::{dns_guard_for, listener_for, udp_port_allowed, WireAddr},
};

const PASS: i32 = 1;
const DROP: i32 = 0;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Fragment offset bits of the IPv4 flags/offset field (host order).
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
const IPV6_HEADER_LEN: usize = 40;

#[cgroup_skb(egress)]
pub fn bottle_egress(ctx: SkBuffContext) -> i32 {
    match destination(&ctx) {
        Some((dest, protocol)) => {
            if let Some(cfg) = config() {
                if addressed_to_cork(cfg, &dest, protocol) {
                    return PASS;
                }
            }
            report(DenyEvent {
                addr: dest.addr,
                port: dest.port,
                family: dest.family,
                reason: deny_reason::EGRESS_BACKSTOP,
                protocol: protocol as u32,
                ..DenyEvent::default()
            });
            DROP
        }
        None => {
            report(DenyEvent {
                reason: deny_reason::EGRESS_BACKSTOP,
                ..DenyEvent::default()
            });
            DROP
        }
    }
}

/// Destination and IP protocol of a TCP or UDP packet; `None` for anything else (other
/// protocols, IPv6 extension headers, non-first fragments), which is then dropped.
fn destination(ctx: &SkBuffContext) -> Option<(WireAddr, u8)> {
    let first: u8 = ctx.load(0).ok()?;
    match first >> 4 {
        4 => {
            let header_len = ((first & 0x0f) as usize) * 4;
            let protocol: u8 = ctx.load(9).ok()?;
            let fragment: u16 = ctx.load(6).ok()?;
            if u16::from_be(fragment) & IPV4_FRAGMENT_OFFSET != 0 {
                return None;
            }
            let addr: u32 = ctx.load(16).ok()?;
            let port: u16 = ctx.load(header_len + 2).ok()?;
            Some((WireAddr::v4(addr, port), protocol))
        }
        6 => {
            let protocol: u8 = ctx.load(6).ok()?;
            let addr: [u32; 4] = [
                ctx.load(24).ok()?,
                ctx.load(28).ok()?,
                ctx.load(32).ok()?,
                ctx.load(36).ok()?,
            ];
            let port: u16 = ctx.load(IPV6_HEADER_LEN + 2).ok()?;
            Some((WireAddr::v6(addr, port), protocol))
        }
        _ => None,
    }
}

fn addressed_to_cork(cfg: &SteeringConfig, dest: &WireAddr, protocol: u8) -> bool {
    debug_assert!(dest.family == AF_INET || dest.family == AF_INET6);
    match protocol {
        IPPROTO_TCP => listener_for(cfg, dest.family) == Some(*dest),
        IPPROTO_UDP => {
            dns_guard_for(cfg, dest.family) == Some(*dest) || udp_port_allowed(dest.host_port())
        }
        _ => false,
    }
}
