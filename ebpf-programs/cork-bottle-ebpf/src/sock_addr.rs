//! The cgroup sock_addr programs: connect4/6 and sendmsg4/6 steer, getpeername4/6 and
//! recvmsg4/6 show the application its real peer.
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext, EbpfContext,
};
use cork_bottle_common::{deny_reason, DenyEvent, SteeringConfig, AF_INET};

use crate::{
    maps::{config, report, ORIG_BY_COOKIE},
    steering::{current_tgid, dns_guard_for, tcp_verdict, udp_verdict, Verdict, WireAddr},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// `::ffff:0:0/96` third word in wire form.
const V4_MAPPED_PREFIX: u32 = u32::to_be(0x0000_ffff);

/// Which address slot of `bpf_sock_addr` a hook uses, as a const generic parameter: the
/// verifier rejects context accesses through a pointer whose offset is chosen at run time, which
/// is what LLVM makes of a runtime choice between the two slots.
const V4: bool = false;
const V6: bool = true;

/// Field access through volatile 4-byte loads and stores: the verifier accepts only those on
/// this context, and plain accesses may be merged into wider ones by LLVM.
struct SockAddr(*mut bpf_sock_addr);

impl SockAddr {
    fn new(ctx: &SockAddrContext) -> Self {
        Self(ctx.sock_addr)
    }

    fn read(&self, field: *const u32) -> u32 {
        // SAFETY: `field` points into the kernel-provided context.
        unsafe { read_volatile(field) }
    }

    fn sock_type(&self) -> u32 {
        self.read(unsafe { addr_of!((*self.0).type_) })
    }

    fn protocol(&self) -> u32 {
        self.read(unsafe { addr_of!((*self.0).protocol) })
    }

    /// The user address as wire form; a v4-mapped IPv6 address is returned as IPv4.
    fn user_addr<const SLOT_V6: bool>(&self) -> WireAddr {
        let port = self.read(unsafe { addr_of!((*self.0).user_port) }) as u16;
        if !SLOT_V6 {
            WireAddr::v4(self.read(unsafe { addr_of!((*self.0).user_ip4) }), port)
        } else {
            let base = unsafe { addr_of!((*self.0).user_ip6) } as *const u32;
            let ip = [
                self.read(base),
                self.read(unsafe { base.add(1) }),
                self.read(unsafe { base.add(2) }),
                self.read(unsafe { base.add(3) }),
            ];
            if ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_PREFIX {
                WireAddr::v4(ip[3], port)
            } else {
                WireAddr::v6(ip, port)
            }
        }
    }

    /// Writes `to` into the user address; IPv4 into an IPv6 slot becomes v4-mapped.
    fn set_user_addr<const SLOT_V6: bool>(&self, to: &WireAddr) {
        // SAFETY: writes of 4-byte fields of the kernel-provided context, which this hook may
        // rewrite.
        unsafe {
            write_volatile(addr_of_mut!((*self.0).user_port), to.port as u32);
            if !SLOT_V6 {
                write_volatile(addr_of_mut!((*self.0).user_ip4), to.addr[0]);
            } else {
                let ip = if to.family == AF_INET {
                    [0, 0, V4_MAPPED_PREFIX, to.addr[0]]
                } else {
                    to.addr
                };
                let base = addr_of_mut!((*self.0).user_ip6) as *mut u32;
                write_volatile(base, ip[0]);
                write_volatile(base.add(1), ip[1]);
                write_volatile(base.add(2), ip[2]);
                write_volatile(base.add(3), ip[3]);
            }
        }
    }
}

fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper only reads the context's socket.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

fn deny(dest: &WireAddr, pid: u32, reason: u32, sock_type: u32, protocol: u32) -> i32 {
    report(DenyEvent {
        addr: dest.addr,
        port: dest.port,
        family: dest.family,
        pid,
        reason,
        sock_type,
        protocol,
    });
    DENY
}

fn is_cork(cfg: &SteeringConfig, pid: u32) -> bool {
    cfg.cork_tgid != 0 && cfg.cork_tgid == pid
}

/// connect and sendmsg: decide, record the original destination, rewrite.
fn steer<const SLOT_V6: bool>(ctx: &SockAddrContext) -> i32 {
    let sa = SockAddr::new(ctx);
    let dest = sa.user_addr::<SLOT_V6>();
    let pid = current_tgid();
    let sock_type = sa.sock_type();
    let protocol = sa.protocol();
    let Some(cfg) = config() else {
        return deny(&dest, pid, deny_reason::NO_CONFIG, sock_type, protocol);
    };
    if is_cork(cfg, pid) {
        return ALLOW;
    }
    let verdict = if sock_type == SOCK_STREAM && protocol == IPPROTO_TCP {
        tcp_verdict(cfg, &dest)
    } else if sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP {
        udp_verdict(cfg, &dest)
    } else {
        Verdict::Deny(deny_reason::SOCKET_KIND)
    };
    match verdict {
        Verdict::Pass => ALLOW,
        Verdict::Deny(reason) => deny(&dest, pid, reason, sock_type, protocol),
        Verdict::Redirect(to) => {
            let original = dest.with_pid(pid);
            if ORIG_BY_COOKIE.insert(&cookie(ctx), &original, 0).is_err() {
                return deny(&dest, pid, deny_reason::MAP_FULL, sock_type, protocol);
            }
            sa.set_user_addr::<SLOT_V6>(&to);
            ALLOW
        }
    }
}

/// getpeername: the recorded original destination replaces cork's address.
fn show_original_peer<const SLOT_V6: bool>(ctx: &SockAddrContext) -> i32 {
    // SAFETY: plain-old-data value, copied out at once.
    if let Some(orig) = unsafe { ORIG_BY_COOKIE.get(&cookie(ctx)) } {
        let orig = WireAddr::from_original(orig);
        if SLOT_V6 || orig.family == AF_INET {
            SockAddr::new(ctx).set_user_addr::<SLOT_V6>(&orig);
        }
    }
    ALLOW
}

/// recvmsg: a reply from cork's DNS guard appears to come from the server that was asked.
fn show_original_source<const SLOT_V6: bool>(ctx: &SockAddrContext) -> i32 {
    let sa = SockAddr::new(ctx);
    let Some(cfg) = config() else { return ALLOW };
    let source = sa.user_addr::<SLOT_V6>();
    if dns_guard_for(cfg, source.family) != Some(source) {
        return ALLOW;
    }
    // SAFETY: plain-old-data value, copied out at once.
    if let Some(orig) = unsafe { ORIG_BY_COOKIE.get(&cookie(ctx)) } {
        let orig = WireAddr::from_original(orig);
        if SLOT_V6 || orig.family == AF_INET {
            sa.set_user_addr::<SLOT_V6>(&orig);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub fn bottle_connect4(ctx: SockAddrContext) -> i32 {
    steer::<V4>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn bottle_connect6(ctx: SockAddrContext) -> i32 {
    steer::<V6>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn bottle_sendmsg4(ctx: SockAddrContext) -> i32 {
    steer::<V4>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn bottle_sendmsg6(ctx: SockAddrContext) -> i32 {
    steer::<V6>(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn bottle_getpeername4(ctx: SockAddrContext) -> i32 {
    show_original_peer::<V4>(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn bottle_getpeername6(ctx: SockAddrContext) -> i32 {
    show_original_peer::<V6>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn bottle_recvmsg4(ctx: SockAddrContext) -> i32 {
    show_original_source::<V4>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn bottle_recvmsg6(ctx: SockAddrContext) -> i32 {
    show_original_source::<V6>(&ctx)
}
