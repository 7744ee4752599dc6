//! Removing bottles whose loader is gone (after a crash or `kill -9`).
use std::{fs, io, path::Path};

use aya::maps::{Array, MapData};
use cork_bottle_common::map_names;

use crate::{
    bottle::{map_pin_path, remove_pin_dir, PodSteering},
    cgroup, BottleError,
};

/// The loader pid recorded in a bottle's pinned config.
fn recorded_loader(pin_dir: &Path) -> Option<u32> {
    let map = MapData::from_pin(map_pin_path(pin_dir, map_names::CONFIG)).ok()?;
    let config = Array::<MapData, PodSteering>::try_from(aya::maps::Map::Array(map)).ok()?;
    match config.get(&0, 0) {
        Ok(PodSteering(steering)) if steering.cork_tgid != 0 => Some(steering.cork_tgid),
        _ => None,
    }
}

/// Whether the loader recorded in a bottle's pinned config is still running.
fn loader_alive(pin_dir: &Path) -> bool {
    match recorded_loader(pin_dir) {
        Some(pid) => pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    }
}

/// The pid of the process that loaded bottle `name` (from its pinned config), if it has pins.
pub fn loader_pid(bpffs_root: &Path, name: &str) -> Option<u32> {
    recorded_loader(&bpffs_root.join(name))
}

/// Names of the bottles that have pins under `bpffs_root` or a cgroup under the bottles' parent.
pub fn list_bottles(bpffs_root: &Path) -> Result<Vec<String>, BottleError> {
    let mut names = Vec::new();
    for dir in [bpffs_root.to_path_buf(), cgroup::bottles_parent()?] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Removes bottle `name` whatever state it is in: kills its processes first, then unpins (which
/// detaches the programs once no loader holds them) and removes the cgroup. Returns whether
/// anything was there. A running loader should be asked to stop instead; this is for leftovers.
pub fn remove_bottle(bpffs_root: &Path, name: &str) -> Result<bool, BottleError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(BottleError::InvalidName(name.to_owned()));
    }
    let pin_dir = bpffs_root.join(name);
    let cgroup_path = cgroup::bottles_parent()?.join(name);
    let found = pin_dir.exists() || cgroup_path.exists();
    if cgroup_path.is_dir() {
        cgroup::kill_all(&cgroup_path)?;
    }
    remove_pin_dir(&pin_dir)?;
    cgroup::remove(&cgroup_path)?;
    if found {
        tracing::info!(bottle = %name, "removed bottle");
    }
    Ok(found)
}

/// Removes every bottle under `bpffs_root` (and every bottle cgroup) whose loader process is
/// no longer running: kills the bottle's processes first, then unpins (which detaches the
/// programs) and removes the cgroup. Returns the names of the bottles removed.
///
/// The loader is identified by its pid, recorded in the bottle's pinned config; bottles of a
/// running loader (other than the calling process) are left alone.
pub fn cleanup_stale(bpffs_root: &Path) -> Result<Vec<String>, BottleError> {
    let mut removed = Vec::new();
    let parent = cgroup::bottles_parent()?;
    let pin_dirs = match fs::read_dir(bpffs_root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(BottleError::io("listing", bpffs_root, e)),
    };
    for entry in pin_dirs {
        let pin_dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if loader_alive(&pin_dir) {
            continue;
        }
        let cgroup_path = parent.join(&name);
        if cgroup_path.is_dir() {
            cgroup::kill_all(&cgroup_path)?;
        }
        remove_pin_dir(&pin_dir)?;
        cgroup::remove(&cgroup_path)?;
        tracing::info!(bottle = %name, "removed stale bottle");
        removed.push(name);
    }
    // A cgroup without pins has no programs: kill whatever is in it and remove it.
    if let Ok(entries) = fs::read_dir(&parent) {
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if !path.is_dir() || bpffs_root.join(&name).exists() {
                continue;
            }
            cgroup::kill_all(&path)?;
            cgroup::remove(&path)?;
            tracing::info!(bottle = %name, "removed stale bottle cgroup");
            removed.push(name);
        }
    }
    Ok(removed)
}
