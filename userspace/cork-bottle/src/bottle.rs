//! A bottle: a cgroup v2 with cork's steering programs loaded, attached and pinned.
use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use aya::{
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
    },
    Ebpf, EbpfLoader, Pod,
};
use cork_bottle_common::{map_names, OriginalDestination, SteeringConfig};

use crate::{
    bpffs, cgroup,
    config::{original_socket_addr, BottleConfig},
    events::DenyEvents,
    BottleError,
};

/// `aya::Pod` wrappers for the shared layouts (both are plain-integer `repr(C)` structs).
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct PodSteering(pub SteeringConfig);
// SAFETY: repr(C) of integers and integer arrays, no padding, any bit pattern valid.
unsafe impl Pod for PodSteering {}

#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct PodOriginal(pub OriginalDestination);
// SAFETY: as above.
unsafe impl Pod for PodOriginal {}

/// How each program attaches.
#[derive(Clone, Copy)]
enum Kind {
    SockAddr,
    SockOps,
    SockCreate,
    Egress,
}

/// Every program in the object, by function name.
const PROGRAMS: &[(&str, Kind)] = &[
    ("bottle_sock_create", Kind::SockCreate),
    ("bottle_egress", Kind::Egress),
    ("bottle_connect4", Kind::SockAddr),
    ("bottle_connect6", Kind::SockAddr),
    ("bottle_sendmsg4", Kind::SockAddr),
    ("bottle_sendmsg6", Kind::SockAddr),
    ("bottle_getpeername4", Kind::SockAddr),
    ("bottle_getpeername6", Kind::SockAddr),
    ("bottle_recvmsg4", Kind::SockAddr),
    ("bottle_recvmsg6", Kind::SockAddr),
    ("bottle_sockops", Kind::SockOps),
];

const PINNED_MAPS: &[&str] = &[
    map_names::CONFIG,
    map_names::ORIG_BY_COOKIE,
    map_names::ORIG_BY_PORT,
    map_names::UDP_ALLOWED,
    map_names::DENY_EVENTS,
];

pub(crate) fn map_pin_path(pin_dir: &Path, map: &str) -> PathBuf {
    pin_dir.join(format!("map_{map}"))
}

fn link_pin_path(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join(format!("link_{program}"))
}

fn validate_name(name: &str) -> Result<(), BottleError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BottleError::InvalidName(name.to_owned()))
    }
}

/// A live bottle. Dropping it keeps the bottle closed (the pins hold the programs); only
/// [`Bottle::destroy`] or [`crate::cleanup_stale`] opens it up again, after killing its
/// processes.
pub struct Bottle {
    name: String,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    links: Vec<PinnedLink>,
    orig_by_port: HashMap<MapData, u16, PodOriginal>,
    deny_events: Option<DenyEvents>,
    program_ids: Vec<u32>,
    map_ids: Vec<u32>,
    // Owns the loaded programs; declared last so it is dropped after the links.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Bottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bottle")
            .field("name", &self.name)
            .field("cgroup", &self.cgroup)
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

/// What `create` made so far, undone if a later step fails.
struct Partial {
    cgroup: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
}

impl Partial {
    fn undo(&self) {
        if let Some(pin_dir) = &self.pin_dir {
            let _ = remove_pin_dir(pin_dir);
        }
        if let Some(cgroup) = &self.cgroup {
            let _ = cgroup::remove(cgroup);
        }
    }
}

pub(crate) fn remove_pin_dir(pin_dir: &Path) -> Result<(), BottleError> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BottleError::io("listing pins in", pin_dir, e)),
    };
    for entry in entries {
        let path = entry
            .map_err(|e| BottleError::io("listing pins in", pin_dir, e))?
            .path();
        fs::remove_file(&path).map_err(|e| BottleError::io("unpinning", &path, e))?;
    }
    fs::remove_dir(pin_dir).map_err(|e| BottleError::io("removing pin directory", pin_dir, e))
}

impl Bottle {
    /// Creates the cgroup `<cgroup2>/cork/<name>`, loads the programs with `config`, attaches
    /// them to the cgroup and pins links and maps under `<bpffs_root>/<name>`. The cgroup is
    /// empty until [`Bottle::spawn`] (or [`crate::spawn_in_bottle`]) puts a process in it.
    pub fn create(name: &str, config: BottleConfig) -> Result<Bottle, BottleError> {
        validate_name(name)?;
        let bytes = config.object.bytes()?;
        bpffs::ensure_mounted(&config.bpffs_root)?;
        let pin_dir = config.bpffs_root.join(name);
        let cgroup_path = cgroup::bottles_parent()?.join(name);
        if pin_dir.exists() {
            return Err(BottleError::AlreadyExists(name.to_owned()));
        }
        cgroup::create(&cgroup_path, name)?;
        let mut partial = Partial {
            cgroup: Some(cgroup_path.clone()),
            pin_dir: None,
        };
        match fs::create_dir(&pin_dir) {
            Ok(()) => partial.pin_dir = Some(pin_dir.clone()),
            Err(e) => {
                partial.undo();
                return Err(match e.kind() {
                    io::ErrorKind::AlreadyExists => BottleError::AlreadyExists(name.to_owned()),
                    _ => BottleError::io("creating pin directory", &pin_dir, e),
                });
            }
        }
        let result = Self::load_and_attach(name, &config, &bytes, &cgroup_path, &pin_dir);
        if result.is_err() {
            partial.undo();
        }
        result
    }

    fn load_and_attach(
        name: &str,
        config: &BottleConfig,
        bytes: &[u8],
        cgroup_path: &Path,
        pin_dir: &Path,
    ) -> Result<Bottle, BottleError> {
        let mut ebpf = EbpfLoader::new().load(bytes)?;

        // Configure before attaching: an unconfigured program refuses everything anyway.
        let mut steering: Array<&mut MapData, PodSteering> = Array::try_from(
            ebpf.map_mut(map_names::CONFIG)
                .ok_or(BottleError::MapMissing(map_names::CONFIG))?,
        )
        .map_err(|source| BottleError::Map {
            name: map_names::CONFIG,
            source,
        })?;
        steering
            .set(0, PodSteering(config.steering(std::process::id())), 0)
            .map_err(|source| BottleError::Map {
                name: map_names::CONFIG,
                source,
            })?;
        let mut udp_allowed: HashMap<&mut MapData, u16, u8> = HashMap::try_from(
            ebpf.map_mut(map_names::UDP_ALLOWED)
                .ok_or(BottleError::MapMissing(map_names::UDP_ALLOWED))?,
        )
        .map_err(|source| BottleError::Map {
            name: map_names::UDP_ALLOWED,
            source,
        })?;
        for port in &config.allow_udp {
            udp_allowed
                .insert(port, 1, 0)
                .map_err(|source| BottleError::Map {
                    name: map_names::UDP_ALLOWED,
                    source,
                })?;
        }

        for &map in PINNED_MAPS {
            let handle = ebpf.map(map).ok_or(BottleError::MapMissing(map))?;
            let path = map_pin_path(pin_dir, map);
            handle
                .pin(&path)
                .map_err(|source| BottleError::Pin { path, source })?;
        }

        let cgroup_dir = fs::File::open(cgroup_path)
            .map_err(|e| BottleError::io("opening cgroup", cgroup_path, e))?;
        let mut links = Vec::new();
        let mut program_ids = Vec::new();
        for &(program, kind) in PROGRAMS {
            let link = attach(&mut ebpf, program, kind, &cgroup_dir)?;
            let path = link_pin_path(pin_dir, program);
            links.push(
                link.pin(&path)
                    .map_err(|source| BottleError::Pin { path, source })?,
            );
            let info = ebpf
                .program(program)
                .ok_or(BottleError::ProgramMissing(program_static(program)))?
                .info()
                .map_err(|source| BottleError::Program {
                    name: program_static(program),
                    source,
                })?;
            program_ids.push(info.id());
        }

        let map_ids = ebpf.maps().filter_map(|(_, map)| map_id(map)).collect();
        let orig_by_port = HashMap::try_from(
            ebpf.take_map(map_names::ORIG_BY_PORT)
                .ok_or(BottleError::MapMissing(map_names::ORIG_BY_PORT))?,
        )
        .map_err(|source| BottleError::Map {
            name: map_names::ORIG_BY_PORT,
            source,
        })?;
        let deny_events = RingBuf::try_from(
            ebpf.take_map(map_names::DENY_EVENTS)
                .ok_or(BottleError::MapMissing(map_names::DENY_EVENTS))?,
        )
        .map_err(|source| BottleError::Map {
            name: map_names::DENY_EVENTS,
            source,
        })?;
        tracing::info!(bottle = name, cgroup = %cgroup_path.display(), "bottle created");
        Ok(Bottle {
            name: name.to_owned(),
            cgroup: cgroup_path.to_owned(),
            pin_dir: pin_dir.to_owned(),
            links,
            orig_by_port,
            deny_events: Some(DenyEvents::new(deny_events)),
            program_ids,
            map_ids,
            _ebpf: ebpf,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bottle's cgroup directory.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The directory on bpffs holding the bottle's pinned links and maps.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Kernel ids of the bottle's programs and maps (to check that teardown freed them).
    pub fn kernel_ids(&self) -> (Vec<u32>, Vec<u32>) {
        (self.program_ids.clone(), self.map_ids.clone())
    }

    /// Where the bottled TCP connection whose client port is `client_local_port` (the peer port
    /// cork's listener sees on accept) wanted to go, and the pid that connected.
    pub fn original_destination(&self, client_local_port: u16) -> Option<(SocketAddr, u32)> {
        match self.orig_by_port.get(&client_local_port, 0) {
            Ok(PodOriginal(orig)) => original_socket_addr(&orig).map(|addr| (addr, orig.pid)),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(error) => {
                tracing::warn!(bottle = %self.name, %error, "original destination lookup failed");
                None
            }
        }
    }

    /// The reader of deny events; `None` after it has been taken once.
    pub fn take_deny_events(&mut self) -> Option<DenyEvents> {
        self.deny_events.take()
    }

    /// Starts `command` inside the bottle.
    pub fn spawn(&self, command: &mut Command) -> io::Result<Child> {
        cgroup::spawn_in_bottle(&self.cgroup, command)
    }

    /// Tears the bottle down: kills its processes, detaches and unpins the programs, removes
    /// the pins and the cgroup.
    pub fn destroy(mut self) -> Result<(), BottleError> {
        // Processes go first, so none of them ever runs without the programs.
        cgroup::kill_all(&self.cgroup)?;
        for link in self.links.drain(..) {
            let fd_link: FdLink = link
                .unpin()
                .map_err(|e| BottleError::io("unpinning link in", &self.pin_dir, e))?;
            drop(fd_link);
        }
        remove_pin_dir(&self.pin_dir)?;
        cgroup::remove(&self.cgroup)?;
        tracing::info!(bottle = %self.name, "bottle destroyed");
        Ok(())
    }
}

fn program_static(name: &str) -> &'static str {
    PROGRAMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, _)| *n)
        .unwrap_or("unknown")
}

fn map_id(map: &aya::maps::Map) -> Option<u32> {
    use aya::maps::Map;
    match map {
        Map::Array(d) | Map::HashMap(d) | Map::LruHashMap(d) | Map::RingBuf(d) => {
            d.info().ok().map(|i| i.id())
        }
        _ => None,
    }
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    kind: Kind,
    cgroup: &fs::File,
) -> Result<FdLink, BottleError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(BottleError::ProgramMissing(name))?;
    let err = |source| BottleError::Program { name, source };
    let link_err = |source| BottleError::Link { name, source };
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match kind {
        Kind::SockAddr => {
            let prog: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog.attach(cgroup, mode).map_err(err)?;
            prog.take_link(id)
                .map_err(err)?
                .try_into()
                .map_err(link_err)?
        }
        Kind::SockOps => {
            let prog: &mut SockOps = program.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog.attach(cgroup, mode).map_err(err)?;
            prog.take_link(id)
                .map_err(err)?
                .try_into()
                .map_err(link_err)?
        }
        Kind::SockCreate => {
            let prog: &mut CgroupSock = program.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog.attach(cgroup, mode).map_err(err)?;
            prog.take_link(id)
                .map_err(err)?
                .try_into()
                .map_err(link_err)?
        }
        Kind::Egress => {
            let prog: &mut CgroupSkb = program.try_into().map_err(err)?;
            prog.load().map_err(err)?;
            let id = prog
                .attach(cgroup, CgroupSkbAttachType::Egress, mode)
                .map_err(err)?;
            prog.take_link(id)
                .map_err(err)?
                .try_into()
                .map_err(link_err)?
        }
    };
    Ok(link)
}
