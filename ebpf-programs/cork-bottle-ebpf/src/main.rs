//! cork's bottle programs: attached to a bottle's cgroup v2, they steer every TCP connect to
//! cork's transparent listener, DNS to cork's DNS guard, and refuse everything else.
#![no_std]
#![no_main]

mod backstop;
mod maps;
mod sock_addr;
mod sock_create;
mod sockops;
mod steering;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; the verifier rejects any path that could get here.
    loop {}
}

// No GPL-only helper is used, so the project's own licence is stated.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
