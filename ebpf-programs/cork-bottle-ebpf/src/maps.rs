//! The maps shared with the loader; their names are listed in `cork_bottle_common::map_names`.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, RingBuf},
};
use cork_bottle_common::{DenyEvent, OriginalDestination, SteeringConfig};

/// Entry 0: where to steer. Written by the loader before the programs are attached.
#[map(name = "CORK_CONFIG")]
pub static CORK_CONFIG: Array<SteeringConfig> = Array::with_max_entries(1, 0);

/// Original destination of each steered socket, by socket cookie (for getpeername, recvmsg and
/// the hand-over to `ORIG_BY_PORT`).
#[map(name = "ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OriginalDestination> =
    LruHashMap::with_max_entries(65536, 0);

/// Original destination of each steered TCP connection, by the client's local port (host byte
/// order): what cork's listener sees as the peer port on accept.
#[map(name = "ORIG_BY_PORT")]
pub static ORIG_BY_PORT: LruHashMap<u16, OriginalDestination> =
    LruHashMap::with_max_entries(65536, 0);

/// UDP destination ports (host byte order) the bottle may reach directly; the value is unused.
#[map(name = "UDP_ALLOWED")]
pub static UDP_ALLOWED: HashMap<u16, u8> = HashMap::with_max_entries(256, 0);

/// Every refusal, for userspace to log and count.
#[map(name = "DENY_EVENTS")]
pub static DENY_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

pub fn config() -> Option<&'static SteeringConfig> {
    CORK_CONFIG.get(0)
}

/// Reports a refusal; a full ring buffer loses the event but never turns a deny into an allow.
pub fn report(event: DenyEvent) {
    let _ = DENY_EVENTS.output::<DenyEvent>(&event, 0);
}
