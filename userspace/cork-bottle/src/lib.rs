//! cork's bottles: a cgroup v2 whose TCP connects are steered to cork's transparent listener,
//! whose DNS goes to cork's DNS guard, and which can send nothing else.
//!
//! The eBPF programs live in `ebpf-programs/` and are built by `cargo xtask build-ebpf`; see
//! [`ObjectSource`] for how the object reaches this loader. Links and maps are pinned on cork's
//! own bpffs (`/run/cork/bpffs` by default), so a bottle whose loader dies stays closed.
mod bottle;
mod bpffs;
mod cgroup;
mod config;
mod error;
mod events;
mod object;
mod stale;

pub use bottle::Bottle;
pub use bpffs::DEFAULT_BPFFS_ROOT;
pub use cgroup::{bottles_parent, cgroup2_root, enter as enter_bottle, processes as bottle_processes, spawn_in_bottle};
pub use config::BottleConfig;
pub use error::BottleError;
pub use events::{DenyEvent, DenyEvents, DenyReason};
pub use object::{default_object_available, is_embedded, ObjectSource, OBJECT_ENV};
pub use stale::{cleanup_stale, list_bottles, loader_pid, remove_bottle};
