//! What `cargo xtask vm` tells the guest tests about the kernel they run on, shared by the
//! cork-ktls and cork-proxy guests.

/// Whether this kernel can rekey kTLS: `cork_rekey=1` on the kernel command line (which /init
/// passes on as an environment variable) for Linux 6.14 and later, `cork_rekey=0` before.
pub fn rekey_expected() -> Result<bool, String> {
    match std::env::var("cork_rekey").as_deref() {
        Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        other => Err(format!("cork_rekey is {other:?}; cargo xtask vm sets it to 0 or 1 on the kernel command line")),
    }
}
