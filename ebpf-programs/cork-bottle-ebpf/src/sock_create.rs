//! cgroup/sock_create: a bottle gets TCP and UDP sockets only; raw, packet, ping and other
//! protocol sockets would bypass the sock_addr hooks.
use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use cork_bottle_common::{deny_reason, DenyEvent, AF_INET, AF_INET6};

use crate::{maps::report, steering::current_tgid};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[cgroup_sock(sock_create)]
pub fn bottle_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: 4-byte reads of the kernel-provided context.
    let (family, sock_type, protocol) = unsafe {
        (
            read_volatile(addr_of!((*ctx.sock).family)),
            read_volatile(addr_of!((*ctx.sock).type_)),
            read_volatile(addr_of!((*ctx.sock).protocol)),
        )
    };
    let inet = family == AF_INET as u32 || family == AF_INET6 as u32;
    let allowed = inet
        && ((sock_type == SOCK_STREAM && protocol == IPPROTO_TCP)
            || (sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP));
    if allowed {
        return 1;
    }
    report(DenyEvent {
        family: family as u16,
        pid: current_tgid(),
        reason: deny_reason::SOCKET_KIND,
        sock_type,
        protocol,
        ..DenyEvent::default()
    });
    0
}
