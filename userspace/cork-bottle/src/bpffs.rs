//! cork's own bpffs: links and maps pinned here outlive the loader, so a bottle whose loader
//! dies stays closed instead of failing open.
use std::{ffi::CString, fs, io, os::unix::ffi::OsStrExt, path::Path};

use crate::BottleError;

pub const DEFAULT_BPFFS_ROOT: &str = "/run/cork/bpffs";
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> Result<bool, BottleError> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| BottleError::io("bpffs path", path, io::Error::other(e)))?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(BottleError::io("statfs", path, io::Error::last_os_error()));
    }
    Ok(stat.f_type as libc::c_long == BPF_FS_MAGIC)
}

/// Makes sure a bpffs is mounted at `root`, mounting one if not.
pub fn ensure_mounted(root: &Path) -> Result<(), BottleError> {
    fs::create_dir_all(root).map_err(|e| BottleError::io("creating", root, e))?;
    if is_bpffs(root)? {
        return Ok(());
    }
    let c_root = CString::new(root.as_os_str().as_bytes())
        .map_err(|e| BottleError::io("bpffs path", root, io::Error::other(e)))?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_root.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(BottleError::io(
            "mounting bpffs at",
            root,
            io::Error::last_os_error(),
        ));
    }
    tracing::info!(root = %root.display(), "mounted bpffs");
    Ok(())
}
