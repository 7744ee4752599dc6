//! sock_ops: when a steered TCP socket sends its SYN its local port is known; file the original
//! destination under that port, which is the peer port cork's listener sees on accept.
use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB, helpers::bpf_get_socket_cookie, macros::sock_ops,
    programs::SockOpsContext, EbpfContext,
};

use crate::maps::{ORIG_BY_COOKIE, ORIG_BY_PORT};

#[sock_ops]
pub fn bottle_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // SAFETY: the helper only reads the context's socket.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: plain-old-data value, copied before the insert.
        if let Some(orig) = unsafe { ORIG_BY_COOKIE.get(&cookie) } {
            let orig = *orig;
            // A failed insert leaves cork without the destination; cork then refuses the
            // connection, so nothing is let through.
            let _ = ORIG_BY_PORT.insert(&(ctx.local_port() as u16), &orig, 0);
        }
    }
    1
}
