//! Relaying bytes between two sockets on io_uring, with one ring per core.
//!
//! This is the plaintext relay for connections whose bytes cork does not need to parse as a
//! protocol: passthrough TLS tunnels and raw TCP (see [`crate::relay`]), and any socket pair that
//! carries plaintext (a kTLS leg is such a socket). The tokio runtime keeps the control side:
//! accepting, handshakes, policy, and everything hyper/h2-style code drives. It hands over a pair of
//! owned sockets with [`Pool::relay`] and gets back, through a oneshot, how many bytes went each
//! way.
//!
//! It also carries scanned HTTP/1.1 bodies ([`Pool::body`], in `body`): once a request or response
//! head is out and a long body of known length is left, one direction moves on the ring while a
//! [`BodyFilter`] judges each read in the ring's buffer (the scanner with its hold-back), and the
//! connection comes back to tokio when the body ends.
//!
//! # The data path
//! Each worker thread owns a ring and a block of buffers registered with it
//! (`IORING_REGISTER_BUFFERS`). A relay holds one buffer per direction. A read goes into that
//! buffer (`IORING_OP_READ_FIXED`), the optional [`Inspector`] looks at (and may rewrite) the bytes
//! in place, and the write goes out of the same buffer (`IORING_OP_SEND` with `MSG_NOSIGNAL`): the
//! bytes are copied once, by the read. Short writes are resent from where they stopped. When the
//! registered block is used up, or the kernel refused to register it (the locked-memory limit),
//! relays use ordinary heap buffers with `IORING_OP_READ`; nothing else changes.
//!
//! Every completion is handled before anything is submitted again, and everything the handlers
//! queued goes to the kernel in one `io_uring_enter`: the submissions are batched across relays.
//!
//! # Ending
//! A direction ends at end of stream on its source, which is passed on as a write shutdown on its
//! destination, so half-closed protocols keep working; the relay completes when both directions
//! have ended. An error on either side, an inspector's refusal, or the tokio side dropping its
//! future (a timeout, a cancelled task) stops the relay: every operation still in flight is
//! cancelled (`IORING_OP_ASYNC_CANCEL`) and both sockets are shut down, which wakes anything the
//! cancel could not reach. The sockets are closed, and the buffers reused, only after the last of
//! the relay's completions has been reaped: the kernel never writes into memory cork has let go.
//!
//! # Availability
//! [`support`] probes once per process: `kernel.io_uring_disabled`, then creating a ring (seccomp
//! filters and the sysctl answer `EPERM`, kernels without io_uring `ENOSYS`), the opcodes the
//! relay needs, and finally a trial relay of a few bytes over a socket pair with a registered
//! buffer. Anything that fails makes io_uring unavailable with that reason, and callers use
//! `splice`. `limits.io_uring: off` switches it off by policy.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use io_uring::{opcode, squeue, types, IoUring};
use tokio::sync::oneshot;

mod body;
pub use body::{BodyEnd, BodyFilter, BodyMoved, Judgement, BODY_BYTES, BODY_MAX_HELD};

/// One direction's buffer: a few TCP segments' worth, and the largest a single send takes in.
const SLOT_BYTES: usize = 64 * 1024;
/// Registered buffers per ring (two per relay); 4 MiB of pinned memory per core.
const SLOTS_PER_RING: usize = 64;
/// Submission queue size; the completion queue is larger so bursts of completions never overflow.
const RING_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = RING_ENTRIES * 8;

/// `user_data` of the worker's eventfd read, which wakes it for new work.
const WAKE: u64 = u64::MAX;
const OP_READ: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CANCEL: u64 = 3;

/// Whether this process can relay on io_uring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UringSupport {
    Supported,
    Unsupported { reason: String },
}

/// Which way bytes were going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the first socket handed to [`Pool::relay`] to the second (client to upstream).
    AToB,
    /// From the second to the first (upstream to client).
    BToA,
}

impl Direction {
    fn from_index(i: usize) -> Direction {
        if i == 0 {
            Direction::AToB
        } else {
            Direction::BToA
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::AToB => "a to b",
            Direction::BToA => "b to a",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UringError {
    #[error("io_uring is unavailable: {0}")]
    Unavailable(String),
    #[error("preparing a socket for the io_uring relay: {0}")]
    Socket(#[source] io::Error),
    #[error("relaying {direction} failed: {source}")]
    Io { direction: Direction, source: io::Error },
    #[error("the inspector stopped the relay ({direction}): {reason}")]
    Refused { direction: Direction, reason: String },
    #[error("the relay was cancelled")]
    Cancelled,
    #[error("the io_uring worker ended before the relay did")]
    WorkerGone,
}

/// Looks at every chunk read, in the relay's buffer, before it is written on.
pub trait Inspector: Send + 'static {
    /// `bytes` may be rewritten in place (same length). An `Err` stops the relay; nothing of this
    /// chunk is written.
    fn inspect(&mut self, direction: Direction, bytes: &mut [u8]) -> Result<(), String>;
}

/// What a finished relay moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Moved {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Whether this kernel and process allow io_uring, probed once.
pub fn support() -> &'static UringSupport {
    static SUPPORT: OnceLock<UringSupport> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        let found = probe();
        match &found {
            UringSupport::Supported => tracing::debug!("io_uring probe passed"),
            UringSupport::Unsupported { reason } => tracing::info!(%reason, "io_uring unavailable; tunnels use splice"),
        }
        found
    })
}

/// Whether `mode` and this process allow relaying on io_uring.
pub fn wanted(mode: cork_policy::IoUringMode) -> bool {
    mode == cork_policy::IoUringMode::Auto && *support() == UringSupport::Supported
}

/// One line for start-up output and `/status`, e.g. `io_uring: supported (...)`.
pub fn describe(mode: cork_policy::IoUringMode) -> String {
    match (support(), mode) {
        (UringSupport::Supported, cork_policy::IoUringMode::Auto) => match pool() {
            Ok(pool) => format!(
                "io_uring: supported (tunnels and long bodies are relayed on {} rings, one per core; {} buffers)",
                pool.workers.len(),
                if pool.registered { "registered" } else { "heap" }
            ),
            Err(e) => format!("io_uring: supported, but the relay threads failed to start ({e}); tunnels use splice"),
        },
        (UringSupport::Supported, cork_policy::IoUringMode::Off) => "io_uring: supported, switched off by policy (limits.io_uring: off); tunnels use splice".into(),
        (UringSupport::Unsupported { reason }, _) => format!("io_uring: unsupported ({reason}); tunnels use splice"),
    }
}

fn probe() -> UringSupport {
    let unsupported = |reason: String| UringSupport::Unsupported { reason };
    // 2 refuses every process; 1 only those outside kernel.io_uring_group, which creating a ring
    // below finds out.
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().map(|s| s.trim().to_string());
    if sysctl.as_deref() == Some("2") {
        return unsupported("kernel.io_uring_disabled = 2".into());
    }
    let ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(e) => {
            let why = match (e.raw_os_error(), sysctl.as_deref()) {
                (Some(libc::EPERM), Some("1")) => "kernel.io_uring_disabled = 1 and this process is not in kernel.io_uring_group",
                (Some(libc::EPERM), _) => "refused, likely by a seccomp filter",
                (Some(libc::ENOSYS), _) => "no io_uring_setup: a kernel without io_uring, or a seccomp filter",
                _ => "",
            };
            return unsupported(format!("creating a ring failed: {e}{}{why}", if why.is_empty() { "" } else { "; " }));
        }
    };
    let mut ops = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut ops) {
        return unsupported(format!("listing the kernel's io_uring opcodes failed: {e}"));
    }
    for (code, name) in [
        (opcode::ReadFixed::CODE, "READ_FIXED"),
        (opcode::Read::CODE, "READ"),
        (opcode::Send::CODE, "SEND"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !ops.is_supported(code) {
            return unsupported(format!("the kernel lacks IORING_OP_{name}"));
        }
    }
    match trial(ring) {
        Ok(()) => UringSupport::Supported,
        Err(e) => unsupported(format!("a trial relay over a socket pair failed: {e}")),
    }
}

/// Moves four bytes through a registered buffer between two ends of a socket pair.
fn trial(mut ring: IoUring) -> io::Result<()> {
    let (x, y) = socket_pair()?;
    let mut buf = vec![0u8; 64];
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: `buf` outlives the ring's use of it: the ring is dropped at the end of this function,
    // before `buf`, and no operation is left in flight (each is waited for below).
    unsafe { ring.submitter().register_buffers(&[iov])? };
    write_all_blocking(y.as_raw_fd(), b"cork")?;
    let read = opcode::ReadFixed::new(types::Fd(x.as_raw_fd()), buf.as_mut_ptr(), buf.len() as u32, 0).build().user_data(1);
    let n = run_one(&mut ring, read)?;
    if n != 4 || &buf[..4] != b"cork" {
        return Err(io::Error::other(format!("read {n} bytes, not the 4 written")));
    }
    let send = opcode::Send::new(types::Fd(x.as_raw_fd()), buf.as_ptr(), 4).flags(libc::MSG_NOSIGNAL).build().user_data(2);
    let n = run_one(&mut ring, send)?;
    let mut back = [0u8; 4];
    // SAFETY: reading into a local array of the length given.
    let got = unsafe { libc::read(y.as_raw_fd(), back.as_mut_ptr().cast(), back.len()) };
    if n != 4 || got != 4 || &back != b"cork" {
        return Err(io::Error::other("the bytes sent did not arrive"));
    }
    Ok(())
}

/// Submits one entry and waits for its completion.
fn run_one(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<usize> {
    // SAFETY: the entry's buffer belongs to the caller, which keeps it until this returns, and
    // this returns only after the completion.
    unsafe { ring.submission().push(&entry).map_err(|_| io::Error::other("submission queue full"))? };
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().ok_or_else(|| io::Error::other("no completion"))?;
    if cqe.result() < 0 {
        return Err(io::Error::from_raw_os_error(-cqe.result()));
    }
    Ok(cqe.result() as usize)
}

fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array on success.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn write_all_blocking(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writing from a live slice of the length given.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Clears `O_NONBLOCK`: a read on a non-blocking socket would complete with `EAGAIN` instead of
/// waiting in the ring for data.
fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The relay threads, started on first use; `Err` says why they could not be.
pub fn pool() -> Result<&'static Pool, UringError> {
    static POOL: OnceLock<Result<Pool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        if let UringSupport::Unsupported { reason } = support() {
            return Err(reason.clone());
        }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Pool::start(threads).map_err(|e| {
            tracing::warn!(error = %e, "the io_uring relay threads failed to start; tunnels use splice");
            e.to_string()
        })
    })
    .as_ref()
    .map_err(|reason| UringError::Unavailable(reason.clone()))
}

/// One relay thread per core, each with its own ring.
pub struct Pool {
    workers: Vec<WorkerHandle>,
    /// Whether the rings' buffers are registered (false: the locked-memory limit refused them).
    registered: bool,
}

struct WorkerHandle {
    tx: mpsc::Sender<Msg>,
    /// Written to wake the worker out of `io_uring_enter` for new messages.
    wake: Arc<OwnedFd>,
    /// Relays handed to this worker and not finished, for picking the least loaded.
    active: Arc<AtomicUsize>,
}

impl WorkerHandle {
    fn send(&self, msg: Msg) -> Result<(), UringError> {
        self.tx.send(msg).map_err(|_| UringError::WorkerGone)?;
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to an eventfd we keep alive through the Arc.
        let n = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n != 8 {
            return Err(UringError::WorkerGone);
        }
        Ok(())
    }
}

enum Msg {
    Start(Job),
    StartBody(body::BodyJob),
    Cancel(u64),
}

struct Job {
    id: u64,
    fds: [OwnedFd; 2],
    inspector: Option<Box<dyn Inspector>>,
    done: oneshot::Sender<Result<Moved, UringError>>,
    active: Arc<AtomicUsize>,
}

/// Tells the worker to stop a relay whose caller went away.
struct CancelOnDrop<'a> {
    worker: &'a WorkerHandle,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.worker.send(Msg::Cancel(self.id));
        }
    }
}

impl Pool {
    /// Starts `threads` workers, each pinned to one of the CPUs this process may run on.
    pub fn start(threads: usize) -> Result<Pool, UringError> {
        let cpus = allowed_cpus();
        let mut workers = Vec::with_capacity(threads);
        let mut registered = true;
        for i in 0..threads.max(1) {
            // SAFETY: eventfd returns a new descriptor or -1.
            let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if raw < 0 {
                return Err(UringError::Unavailable(format!("eventfd: {}", io::Error::last_os_error())));
            }
            // SAFETY: the descriptor was just created and is owned by nobody else.
            let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
            let worker = Worker::new(wake.clone()).map_err(|e| UringError::Unavailable(format!("creating ring {i}: {e}")))?;
            registered &= worker.slots.registered;
            let (tx, rx) = mpsc::channel();
            let cpu = cpus.get(i % cpus.len().max(1)).copied();
            std::thread::Builder::new()
                .name(format!("cork-uring-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    worker.run(rx)
                })
                .map_err(|e| UringError::Unavailable(format!("spawning relay thread {i}: {e}")))?;
            workers.push(WorkerHandle { tx, wake, active: Arc::new(AtomicUsize::new(0)) });
        }
        tracing::info!(threads = workers.len(), registered, "io_uring relay threads started");
        Ok(Pool { workers, registered })
    }

    /// How many rings (threads) relay.
    pub fn rings(&self) -> usize {
        self.workers.len()
    }

    /// Relays between `a` and `b` until both directions have ended, then closes both. Dropping
    /// the returned future stops the relay and closes the sockets.
    pub async fn relay(&self, a: OwnedFd, b: OwnedFd, inspector: Option<Box<dyn Inspector>>) -> Result<Moved, UringError> {
        set_blocking(&a).map_err(UringError::Socket)?;
        set_blocking(&b).map_err(UringError::Socket)?;
        self.dispatch(move |id, active, done| Msg::Start(Job { id, fds: [a, b], inspector, done, active })).await
    }

    /// Hands a job to the least loaded worker and waits for its result; dropping the future
    /// cancels the job.
    async fn dispatch<T>(&self, job: impl FnOnce(u64, Arc<AtomicUsize>, oneshot::Sender<Result<T, UringError>>) -> Msg) -> Result<T, UringError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let worker = self.workers.iter().min_by_key(|w| w.active.load(Ordering::Relaxed)).ok_or(UringError::WorkerGone)?;
        worker.active.fetch_add(1, Ordering::Relaxed);
        let (done, finished) = oneshot::channel();
        if let Err(e) = worker.send(job(id, worker.active.clone(), done)) {
            worker.active.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
        let mut guard = CancelOnDrop { worker, id, armed: true };
        let result = finished.await.unwrap_or(Err(UringError::WorkerGone));
        guard.armed = false;
        result
    }
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size passed is the set's own.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set filled above.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Keeps a worker on one core, so each core's ring stays warm in that core's cache.
fn pin_to(cpu: usize) {
    // SAFETY: as in `allowed_cpus`; CPU_SET writes within the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the size passed is the set's own; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        tracing::debug!(cpu, error = %io::Error::last_os_error(), "pinning an io_uring relay thread failed; it runs unpinned");
    }
}

/// The block of buffers registered with one ring, handed out one slot per direction.
struct Slots {
    base: *mut u8,
    layout: std::alloc::Layout,
    free: Vec<u16>,
    registered: bool,
}

impl Slots {
    fn new(ring: &IoUring) -> io::Result<Slots> {
        let layout = std::alloc::Layout::from_size_align(SLOT_BYTES * SLOTS_PER_RING, 4096).map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        if base.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let iovecs: Vec<libc::iovec> = (0..SLOTS_PER_RING)
            // SAFETY: every slot lies inside the allocation.
            .map(|i| libc::iovec { iov_base: unsafe { base.add(i * SLOT_BYTES) }.cast(), iov_len: SLOT_BYTES })
            .collect();
        // SAFETY: the block stays allocated until the worker is dropped, after its ring (see
        // `Worker`'s field order), or is leaked if the worker stops with operations in flight.
        let registered = match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "registering io_uring buffers failed (locked-memory limit?); relays use heap buffers");
                false
            }
        };
        let free = if registered { (0..SLOTS_PER_RING as u16).rev().collect() } else { Vec::new() };
        Ok(Slots { base, layout, free, registered })
    }

    fn take(&mut self) -> Buf {
        match self.free.pop() {
            // SAFETY: `index` names a slot inside the allocation.
            Some(index) => Buf::Fixed { index, ptr: unsafe { self.base.add(index as usize * SLOT_BYTES) } },
            None => Buf::Heap(vec![0u8; SLOT_BYTES].into_boxed_slice()),
        }
    }

    fn give_back(&mut self, buf: Buf) {
        if let Buf::Fixed { index, .. } = buf {
            self.free.push(index);
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is gone.
        unsafe { std::alloc::dealloc(self.base, self.layout) };
    }
}

enum Buf {
    Fixed { index: u16, ptr: *mut u8 },
    Heap(Box<[u8]>),
}

impl Buf {
    fn ptr(&mut self) -> *mut u8 {
        match self {
            Buf::Fixed { ptr, .. } => *ptr,
            Buf::Heap(b) => b.as_mut_ptr(),
        }
    }
}

/// One direction of a relay.
struct Half {
    buf: Buf,
    /// Bytes read into `buf` and not yet all sent.
    len: usize,
    sent: usize,
    moved: u64,
    /// The operation in flight on this half, if any (at most one at a time).
    in_flight: Option<u64>,
    finished: bool,
}

struct Relay {
    id: u64,
    generation: u16,
    /// `fds[0]` is `a`, `fds[1]` is `b`; half `d` reads `fds[d]` and writes `fds[1 - d]`.
    fds: [OwnedFd; 2],
    halves: [Half; 2],
    inspector: Option<Box<dyn Inspector>>,
    done: Option<oneshot::Sender<Result<Moved, UringError>>>,
    active: Arc<AtomicUsize>,
    error: Option<UringError>,
    stopping: bool,
}

/// Packs what a completion is about. The generation tells a reused slot's relay from the one
/// before it, so a late cancel never reaches the newer relay's operation.
fn user_data(key: usize, generation: u16, half: usize, op: u64) -> u64 {
    ((key as u64) << 24) | ((generation as u64) << 8) | ((half as u64) << 4) | op
}

fn decode(data: u64) -> (usize, u16, usize, u64) {
    ((data >> 24) as usize, (data >> 8) as u16, ((data >> 4) & 1) as usize, data & 0xf)
}

/// What a worker has in flight (relays or body transfers), under small integer keys that go into
/// `user_data`. A key is reused once its owner is gone, with a new generation, so a late
/// completion for the earlier owner is told apart and dropped.
struct Live<T> {
    items: Vec<Option<T>>,
    generations: Vec<u16>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
}

impl<T> Live<T> {
    fn new() -> Self {
        Live { items: Vec::new(), generations: Vec::new(), free: Vec::new(), by_id: HashMap::new() }
    }

    /// Stores what `make` builds (it is given the key's generation) for the job `id`.
    fn insert(&mut self, id: u64, make: impl FnOnce(u16) -> T) -> usize {
        let key = match self.free.pop() {
            Some(key) => {
                self.generations[key] = self.generations[key].wrapping_add(1);
                key
            }
            None => {
                self.items.push(None);
                self.generations.push(0);
                self.items.len() - 1
            }
        };
        self.items[key] = Some(make(self.generations[key]));
        self.by_id.insert(id, key);
        key
    }

    fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.items.get_mut(key).and_then(Option::as_mut)
    }

    fn key_of(&self, id: u64) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// Takes `key`'s owner out and frees the key; `id` names the owner's job.
    fn remove(&mut self, key: usize, id: impl FnOnce(&T) -> u64) -> Option<T> {
        let item = self.items.get_mut(key)?.take()?;
        self.free.push(key);
        self.by_id.remove(&id(&item));
        Some(item)
    }

    fn into_live(self) -> impl Iterator<Item = T> {
        self.items.into_iter().flatten()
    }
}

struct Worker {
    // Dropped first: the ring must be gone before the buffers it may write into.
    ring: IoUring,
    slots: Slots,
    wake: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    relays: Live<Relay>,
    /// Body transfers ([`body`]).
    bodies: Live<body::BodyRelay>,
    /// Entries queued by the handlers, pushed to the ring in one batch.
    pending: Vec<squeue::Entry>,
}

// SAFETY: a Worker is built on the caller's thread and then moved, whole, to its own thread,
// which is the only one that touches it; the raw pointers are into memory the Worker owns.
unsafe impl Send for Worker {}

impl Worker {
    fn new(wake: Arc<OwnedFd>) -> io::Result<Worker> {
        let ring = IoUring::builder().setup_cqsize(CQ_ENTRIES).build(RING_ENTRIES)?;
        let slots = Slots::new(&ring)?;
        Ok(Worker {
            ring,
            slots,
            wake,
            wake_buf: Box::new(0),
            relays: Live::new(),
            bodies: Live::new(),
            pending: Vec::new(),
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        self.arm_wake();
        let mut reaped: Vec<(u64, i32)> = Vec::with_capacity(CQ_ENTRIES as usize);
        loop {
            if let Err(e) = self.submit_pending() {
                return self.die(e);
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => return self.die(e),
            }
            reaped.clear();
            reaped.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for &(data, res) in &reaped {
                if data == WAKE {
                    self.arm_wake();
                    while let Ok(msg) = rx.try_recv() {
                        match msg {
                            Msg::Start(job) => self.start(job),
                            Msg::StartBody(job) => self.start_body(job),
                            Msg::Cancel(id) => {
                                if let Some(key) = self.relays.key_of(id) {
                                    self.stop(key, UringError::Cancelled);
                                    self.finish_if_done(key);
                                } else if let Some(key) = self.bodies.key_of(id) {
                                    self.body_stop(key, UringError::Cancelled);
                                }
                            }
                        }
                    }
                } else {
                    self.complete(data, res);
                }
            }
        }
    }

    /// Pushes queued entries, handing full submission queues to the kernel as it goes.
    fn submit_pending(&mut self) -> io::Result<()> {
        let mut queued = std::mem::take(&mut self.pending).into_iter().peekable();
        while let Some(entry) = queued.peek() {
            // SAFETY: every buffer an entry points to belongs to a relay (or this worker) that is
            // kept until the entry's completion has been reaped.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                queued.next();
                continue;
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The ring failed as a whole: every relay ends with the error. Buffers are leaked, as the
    /// kernel may still hold operations on them.
    fn die(self, e: io::Error) {
        tracing::error!(error = %e, "an io_uring relay thread failed; its relays end");
        let Worker { ring, slots, relays, bodies, wake_buf, .. } = self;
        Worker::abandon_bodies(bodies);
        for relay in relays.into_live() {
            let Relay { done, halves, .. } = relay;
            if let Some(done) = done {
                let _ = done.send(Err(UringError::WorkerGone));
            }
            std::mem::forget(halves);
        }
        std::mem::forget(slots);
        std::mem::forget(wake_buf);
        drop(ring);
    }

    fn arm_wake(&mut self) {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), ptr.cast(), 8).build().user_data(WAKE);
        self.pending.push(entry);
    }

    fn start(&mut self, job: Job) {
        let halves = [(); 2].map(|_| Half { buf: self.slots.take(), len: 0, sent: 0, moved: 0, in_flight: None, finished: false });
        let key = self.relays.insert(job.id, |generation| Relay {
            id: job.id,
            generation,
            fds: job.fds,
            halves,
            inspector: job.inspector,
            done: Some(job.done),
            active: job.active,
            error: None,
            stopping: false,
        });
        self.read(key, 0);
        self.read(key, 1);
    }

    fn relay(&mut self, key: usize) -> &mut Relay {
        self.relays.get_mut(key).expect("operations are queued only for live relays")
    }

    fn read(&mut self, key: usize, half: usize) {
        let relay = self.relay(key);
        let data = user_data(key, relay.generation, half, OP_READ);
        let fd = types::Fd(relay.fds[half].as_raw_fd());
        let h = &mut relay.halves[half];
        h.in_flight = Some(data);
        let entry = match h.buf {
            Buf::Fixed { index, ptr } => opcode::ReadFixed::new(fd, ptr, SLOT_BYTES as u32, index).build(),
            Buf::Heap(ref mut b) => opcode::Read::new(fd, b.as_mut_ptr(), SLOT_BYTES as u32).build(),
        };
        self.pending.push(entry.user_data(data));
    }

    fn send(&mut self, key: usize, half: usize) {
        let relay = self.relay(key);
        let data = user_data(key, relay.generation, half, OP_SEND);
        let fd = types::Fd(relay.fds[1 - half].as_raw_fd());
        let h = &mut relay.halves[half];
        h.in_flight = Some(data);
        // SAFETY: `sent < len <= SLOT_BYTES`, inside the buffer.
        let from = unsafe { h.buf.ptr().add(h.sent) };
        let entry = opcode::Send::new(fd, from, (h.len - h.sent) as u32).flags(libc::MSG_NOSIGNAL).build();
        self.pending.push(entry.user_data(data));
    }

    fn complete(&mut self, data: u64, res: i32) {
        let (key, generation, half, op) = decode(data);
        if body::is_body_op(op) {
            return self.body_complete(data, res);
        }
        if op == OP_CANCEL {
            return;
        }
        // Every read and send completes exactly once and its relay is kept until then, so this
        // always finds it; the check only guards against a kernel that says otherwise.
        let Some(relay) = self.relays.get_mut(key).filter(|r| r.generation == generation && r.halves[half].in_flight == Some(data)) else {
            tracing::warn!(data, res, "an io_uring completion for no operation in flight; ignored");
            return;
        };
        relay.halves[half].in_flight = None;
        let direction = Direction::from_index(half);
        if relay.stopping {
            relay.halves[half].finished = true;
        } else if res == -libc::EINTR || res == -libc::EAGAIN {
            // Retried as it was.
            if op == OP_READ {
                self.read(key, half)
            } else {
                self.send(key, half)
            }
        } else if res < 0 {
            self.stop(key, UringError::Io { direction, source: io::Error::from_raw_os_error(-res) });
        } else if op == OP_READ {
            self.after_read(key, half, res as usize);
        } else if res == 0 {
            self.stop(key, UringError::Io { direction, source: io::ErrorKind::WriteZero.into() });
        } else {
            let h = &mut self.relay(key).halves[half];
            h.sent += res as usize;
            h.moved += res as u64;
            if h.sent < h.len {
                self.send(key, half);
            } else {
                self.read(key, half);
            }
        }
        self.finish_if_done(key);
    }

    fn after_read(&mut self, key: usize, half: usize, n: usize) {
        let relay = self.relay(key);
        if n == 0 {
            // End of stream: the destination sees it as ours, and the other half goes on.
            // SAFETY: shutdown(2) on a socket the relay owns.
            unsafe { libc::shutdown(relay.fds[1 - half].as_raw_fd(), libc::SHUT_WR) };
            relay.halves[half].finished = true;
            return;
        }
        let h = &mut relay.halves[half];
        h.len = n;
        h.sent = 0;
        if let Some(inspector) = relay.inspector.as_mut() {
            // SAFETY: the read into this buffer has completed and the send has not been queued:
            // nothing else, kernel or thread, touches these `n` bytes now.
            let bytes = unsafe { std::slice::from_raw_parts_mut(h.buf.ptr(), n) };
            let direction = Direction::from_index(half);
            if let Err(reason) = inspector.inspect(direction, bytes) {
                return self.stop(key, UringError::Refused { direction, reason });
            }
        }
        self.send(key, half);
    }

    /// Stops a relay: the first error is the one reported; in-flight operations are cancelled.
    fn stop(&mut self, key: usize, error: UringError) {
        let relay = self.relay(key);
        if relay.stopping {
            return;
        }
        relay.stopping = true;
        relay.error = Some(error);
        let mut cancels = Vec::new();
        let generation = relay.generation;
        for (i, h) in relay.halves.iter_mut().enumerate() {
            match h.in_flight {
                Some(target) => cancels.push(opcode::AsyncCancel::new(target).build().user_data(user_data(key, generation, i, OP_CANCEL))),
                None => h.finished = true,
            }
        }
        for fd in &relay.fds {
            // Wakes a read or send that the cancel cannot reach (already running).
            // SAFETY: shutdown(2) on a socket the relay owns.
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.pending.extend(cancels);
    }

    fn finish_if_done(&mut self, key: usize) {
        let relay = self.relay(key);
        if !relay.halves.iter().all(|h| h.finished && h.in_flight.is_none()) {
            return;
        }
        let relay = self.relays.remove(key, |r| r.id).expect("checked above");
        let Relay { fds, halves, done, active, error, .. } = relay;
        let moved = Moved { a_to_b: halves[0].moved, b_to_a: halves[1].moved };
        for h in halves {
            self.slots.give_back(h.buf);
        }
        drop(fds);
        active.fetch_sub(1, Ordering::Relaxed);
        if let Some(done) = done {
            let _ = done.send(match error {
                Some(e) => Err(e),
                None => Ok(moved),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A connected loopback pair: (the end cork would hold, the end a peer holds).
    pub(super) fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (ours, peer)
    }

    pub(super) fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 11) as u8)).collect()
    }

    pub(super) fn test_pool() -> &'static Pool {
        assert_eq!(*support(), UringSupport::Supported, "these tests need io_uring on the test host");
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::start(2).unwrap())
    }

    pub(super) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Writes `up` from the client side and `down` from the server side at the same time, each
    /// side closing its write half when done, and returns what each side read.
    fn exchange(client: TcpStream, server: TcpStream, up: Vec<u8>, down: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        let pump = |mut s: TcpStream, out: Vec<u8>| {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).unwrap();
                    got
                });
                s.write_all(&out).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                reader.join().unwrap()
            })
        };
        let c = pump(client, up);
        let s = pump(server, down);
        (c.join().unwrap(), s.join().unwrap())
    }

    #[test]
    fn both_directions_arrive_intact_and_are_counted() {
        let pool = test_pool();
        let (a, client) = tcp_pair();
        let (b, server) = tcp_pair();
        let up = pattern(5_000_000, 1);
        let down = pattern(3_000_001, 7);
        let rt = runtime();
        let relay = std::thread::spawn(move || rt.block_on(pool.relay(a.into(), b.into(), None)));
        let (client_got, server_got) = exchange(client, server, up.clone(), down.clone());
        let moved = relay.join().unwrap().unwrap();
        assert!(server_got == up, "upload differs ({} bytes)", server_got.len());
        assert!(client_got == down, "download differs ({} bytes)", client_got.len());
        assert_eq!(moved, Moved { a_to_b: up.len() as u64, b_to_a: down.len() as u64 });
    }

    #[test]
    fn a_half_close_is_passed_on_and_the_other_way_keeps_going() {
        let pool = test_pool();
        let (a, mut client) = tcp_pair();
        let (b, mut server) = tcp_pair();
        let rt = runtime();
        // A relay that loses the half-close makes these reads fail rather than hang.
        client.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        server.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let relay = std::thread::spawn(move || rt.block_on(pool.relay(a.into(), b.into(), None)));
        client.write_all(b"request").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"request", "the server sees the request, then end of stream");
        // The response still flows after the client's half-close.
        server.write_all(b"response after half-close").unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"response after half-close");
        assert_eq!(relay.join().unwrap().unwrap(), Moved { a_to_b: 7, b_to_a: 25 });
    }

    struct Redact;

    impl Inspector for Redact {
        fn inspect(&mut self, direction: Direction, bytes: &mut [u8]) -> Result<(), String> {
            if bytes.windows(4).any(|w| w == b"STOP") {
                return Err(format!("STOP seen going {direction}"));
            }
            for b in bytes.iter_mut().filter(|b| **b == b'x') {
                *b = b'*';
            }
            Ok(())
        }
    }

    #[test]
    fn the_inspector_rewrites_in_place_and_can_stop_the_relay() {
        let pool = test_pool();
        let (a, mut client) = tcp_pair();
        let (b, mut server) = tcp_pair();
        let rt = runtime();
        let relay = std::thread::spawn(move || rt.block_on(pool.relay(a.into(), b.into(), Some(Box::new(Redact)))));
        client.write_all(b"xox").unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"*o*");
        server.write_all(b"STOP").unwrap();
        let err = relay.join().unwrap().unwrap_err();
        assert!(matches!(err, UringError::Refused { direction: Direction::BToA, .. }), "{err}");
        // Nothing of the refused chunk reached the client, and both peers see the end.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).unwrap_or(0), 0);
        assert!(server.read_to_end(&mut rest).unwrap_or(0) == 0);
    }

    #[test]
    fn dropping_the_future_stops_the_relay_and_closes_both_sockets() {
        let pool = test_pool();
        let (a, mut client) = tcp_pair();
        let (b, mut server) = tcp_pair();
        let rt = runtime();
        let active = || pool.workers.iter().map(|w| w.active.load(Ordering::Relaxed)).sum::<usize>();
        let before = active();
        // Nobody sends anything: without cancellation this relay would wait for ever.
        let out = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_millis(200), pool.relay(a.into(), b.into(), None)).await });
        assert!(out.is_err(), "the relay cannot end by itself here");
        let mut buf = Vec::new();
        client.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        server.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        assert_eq!(client.read_to_end(&mut buf).unwrap(), 0, "the client's connection was closed");
        assert_eq!(server.read_to_end(&mut buf).unwrap(), 0, "the server's connection was closed");
        // The worker released the relay (its count goes back down once the cancel is reaped).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while active() > before && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(active() <= before, "the cancelled relay is still counted as active");
    }

    #[test]
    fn a_reset_peer_ends_the_relay_with_an_error() {
        let pool = test_pool();
        let (a, client) = tcp_pair();
        let (b, server) = tcp_pair();
        let rt = runtime();
        let relay = std::thread::spawn(move || rt.block_on(pool.relay(a.into(), b.into(), None)));
        // SO_LINGER 0 makes close send a reset rather than a FIN.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt with a correctly sized linger struct on a live socket.
        unsafe {
            libc::setsockopt(server.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as u32)
        };
        drop(server);
        let err = relay.join().unwrap().unwrap_err();
        assert!(matches!(err, UringError::Io { direction: Direction::BToA, .. }), "{err}");
        drop(client);
    }

    #[test]
    fn more_relays_than_registered_buffers_still_work() {
        let pool = test_pool();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        // Each relay takes two slots: this runs past the registered block into heap buffers.
        let count = SLOTS_PER_RING + 8;
        let mut pairs = Vec::new();
        let mut relays = Vec::new();
        for _ in 0..count {
            let (a, client) = tcp_pair();
            let (b, server) = tcp_pair();
            relays.push(rt.spawn(pool.relay(a.into(), b.into(), None)));
            pairs.push((client, server));
        }
        for (i, (mut client, mut server)) in pairs.into_iter().enumerate() {
            let msg = format!("relay {i}");
            client.write_all(msg.as_bytes()).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = String::new();
            server.read_to_string(&mut got).unwrap();
            assert_eq!(got, msg);
            drop(server);
        }
        for r in relays {
            rt.block_on(r).unwrap().unwrap();
        }
    }
}
