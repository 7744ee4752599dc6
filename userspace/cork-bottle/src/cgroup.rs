//! The bottle's cgroup v2: finding the hierarchy, creating and removing a bottle's cgroup, and
//! starting processes inside it.
use std::{
    fs,
    io::{self, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::Duration,
};

use crate::BottleError;

/// All bottles live under this cgroup, so leftovers are easy to find.
pub const BOTTLES_CGROUP: &str = "cork";

/// The cgroup v2 mount: `/sys/fs/cgroup` on a pure v2 system, `/sys/fs/cgroup/unified` on a
/// hybrid one, else whatever cgroup2 mount /proc/self/mountinfo lists first.
pub fn cgroup2_root() -> Result<PathBuf, BottleError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| BottleError::io("reading", "/proc/self/mountinfo", e))?;
    let mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <dev> <root> <mount point> <options> ... - <fstype> <source> ..."
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(mount_point)))
        })
        .collect();
    for preferred in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let Some(found) = mounts.iter().find(|m| m.as_path() == Path::new(preferred)) {
            return Ok(found.clone());
        }
    }
    mounts.into_iter().next().ok_or(BottleError::NoCgroup2)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if let Ok(byte) = u8::from_str_radix(&digits, 8) {
                out.push(byte as char);
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// The parent cgroup of all bottles.
pub fn bottles_parent() -> Result<PathBuf, BottleError> {
    Ok(cgroup2_root()?.join(BOTTLES_CGROUP))
}

/// Creates the bottle's cgroup; fails if it exists.
pub fn create(path: &Path, name: &str) -> Result<(), BottleError> {
    let parent = path.parent().expect("a bottle cgroup has a parent");
    fs::create_dir_all(parent).map_err(|e| BottleError::io("creating cgroup", parent, e))?;
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(BottleError::AlreadyExists(name.to_owned()))
        }
        Err(e) => Err(BottleError::io("creating cgroup", path, e)),
    }
}

/// Process ids in the cgroup.
pub fn processes(path: &Path) -> Result<Vec<u32>, BottleError> {
    let procs = path.join("cgroup.procs");
    let text = fs::read_to_string(&procs).map_err(|e| BottleError::io("reading", &procs, e))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Kills every process in the cgroup and waits (bounded) until it is empty. Used before the
/// programs are detached, so nothing in the bottle ever runs unsteered.
pub fn kill_all(path: &Path) -> Result<(), BottleError> {
    const ATTEMPTS: u32 = 500;
    let kill_file = path.join("cgroup.kill");
    for _ in 0..ATTEMPTS {
        let pids = processes(path)?;
        if pids.is_empty() {
            return Ok(());
        }
        // cgroup.kill (Linux 5.14+) also catches processes forking meanwhile.
        if fs::write(&kill_file, "1").is_err() {
            for pid in pids {
                // SAFETY: plain kill(2); a pid that has gone away returns ESRCH, ignored.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(BottleError::ProcessesRemain(path.to_owned()))
}

/// Removes an emptied cgroup; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), BottleError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BottleError::io("removing cgroup", path, e)),
    }
}

/// Spawns `command` inside the cgroup at `cgroup`: the child moves itself into the cgroup
/// between fork and exec, so every socket it ever creates belongs to the bottle. If the move
/// fails the child never execs and spawn returns the error.
///
/// The child also loses CAP_NET_RAW (bounding and ambient sets): cgroup/sock_create never sees
/// AF_PACKET sockets, whose frames would bypass every hook, and without the capability the
/// kernel refuses them.
pub fn spawn_in_bottle(cgroup: &Path, command: &mut Command) -> io::Result<Child> {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    let fd = procs.as_raw_fd();
    // SAFETY: the closure only calls write(2), which is async-signal-safe; `procs` outlives
    // the spawn (it is dropped after `spawn` returns) and is close-on-exec.
    unsafe {
        command.pre_exec(move || {
            // "0" moves the writing process itself.
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            drop_net_raw()
        });
    }
    let child = command.spawn();
    drop(procs);
    child
}

/// Removes CAP_NET_RAW from the bounding and ambient sets, so no later exec regains it.
/// Only raw syscalls: this runs between fork and exec.
fn drop_net_raw() -> io::Result<()> {
    const CAP_NET_RAW: libc::c_ulong = 13;
    // SAFETY: prctl with integer arguments only.
    unsafe {
        if libc::prctl(libc::PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0) != 0 {
            // EPERM without CAP_SETPCAP: an unprivileged caller has no CAP_NET_RAW to lose.
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EPERM) {
                return Err(err);
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong,
            CAP_NET_RAW,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Moves the calling process into the cgroup (for a process that is itself to be bottled).
pub fn enter(cgroup: &Path) -> io::Result<()> {
    let mut procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    procs.write_all(b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mount_path("/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape_mount_path(r"/x\9"), r"/x\9");
    }
}
