//! One HTTP/1.1 body, moved on a ring and judged where it lies.
//!
//! A tunnel relay runs until both sides close; a body has a length and a connection that lives
//! on after it. [`Pool::body`] moves exactly `length` bytes from one plaintext socket to another
//! (plain TCP, or a kTLS leg whose records the kernel opens and seals) and then hands both sockets
//! back untouched, so the next message on a keep-alive connection is read by the caller again.
//!
//! # The data path
//! Each transfer owns a ring buffer of [`BODY_BYTES`]. A read (`IORING_OP_RECV`) goes into the
//! free space behind the bytes still held; the [`BodyFilter`] sees exactly the fresh bytes,
//! answers which leading bytes may go out and which ranges to overwrite, and the write
//! (`IORING_OP_SEND`) goes out of the same memory. The held-back tail never moves: the buffer
//! wraps around instead, so every body byte is copied once, by the read. `RECV` is used rather
//! than a fixed-buffer read because the sockets stay non-blocking (they still belong to tokio),
//! and on a kTLS socket a non-data record must fail the read rather than be read as data.
//!
//! # Ending
//! - [`BodyEnd::Complete`]: every byte was read, judged (the last judgement with `last`) and
//!   written.
//! - [`BodyEnd::Refused`]: the filter refused; nothing it had not released was written.
//! - [`BodyEnd::Handback`]: the source stopped being a plain byte stream before the body ended:
//!   a kTLS socket answers a read with `EIO` when the next record is not data (a NewSessionTicket,
//!   a KeyUpdate, an alert), and end of stream or an error are the caller's to report. The bytes
//!   judged but not yet written come back with it, and the caller reads on with its own path,
//!   which knows what to do with those records.
//!
//! A write error ends the transfer with [`UringError::Io`]. Dropping the future cancels the
//! operation in flight; the sockets are duplicates owned by the transfer, so the caller's own
//! descriptors are never closed or shut down by it.

use std::any::Any;
use std::ops::Range;
use std::os::fd::BorrowedFd;

use super::*;

/// A transfer's ring buffer: the held-back tail plus several reads' worth.
pub const BODY_BYTES: usize = 512 * 1024;
/// The most a caller may hand over as already judged, unreleased bytes; also the most a filter
/// should hold back, so that reads keep finding room.
pub const BODY_MAX_HELD: usize = BODY_BYTES / 4;

const OP_BODY_RECV: u64 = 5;
const OP_BODY_SEND: u64 = 6;
const OP_BODY_CANCEL: u64 = 7;

/// Whether a completion belongs to a body transfer.
pub(super) fn is_body_op(op: u64) -> bool {
    (OP_BODY_RECV..=OP_BODY_CANCEL).contains(&op)
}

/// What a [`BodyFilter`] decided about the bytes it has seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// Every byte before this stream offset may be written.
    pub release_to: u64,
    /// Stream ranges to overwrite with `*` before they are written (clamped to the window).
    pub redact: Vec<Range<u64>>,
    /// Stop the body: nothing not yet released is written.
    pub refuse: Option<String>,
}

/// Judges a body while it moves. Runs on the ring's thread, so it must be quick and must not
/// block.
pub trait BodyFilter: Send + 'static {
    /// `fresh` are the bytes just read, at the end of `window`: the stream offsets of every byte
    /// read and not yet written. `last` when `fresh` ends the body; everything is then written
    /// unless the judgement refuses.
    fn judge(&mut self, fresh: &[u8], window: Range<u64>, last: bool) -> Judgement;

    /// For the caller to take its filter back, with whatever it learnt.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// How a body transfer ended.
#[derive(Debug)]
pub enum BodyEnd {
    Complete,
    Refused(String),
    /// The caller goes on from here: `held` were read and judged but not written.
    Handback { held: Vec<u8>, reason: io::Error },
}

/// What a body transfer did.
pub struct BodyMoved {
    /// Bytes read from the source.
    pub read: u64,
    /// Bytes written to the destination.
    pub written: u64,
    pub end: BodyEnd,
    pub filter: Box<dyn BodyFilter>,
}

pub(super) struct BodyJob {
    pub(super) id: u64,
    /// The source and the destination (duplicates owned by the transfer).
    fds: [OwnedFd; 2],
    held: Vec<u8>,
    offset: u64,
    length: u64,
    filter: Box<dyn BodyFilter>,
    done: oneshot::Sender<Result<BodyMoved, UringError>>,
    active: Arc<AtomicUsize>,
}

impl Pool {
    /// Moves the next `length` bytes of `src` to `dst` through `filter`. `held` were read and
    /// judged already and go out first, when the filter's first judgement releases them; `offset` is their stream offset (what the filter's
    /// windows count from). Both sockets stay open and the caller's.
    pub async fn body(&self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, held: &[u8], offset: u64, length: u64, filter: Box<dyn BodyFilter>) -> Result<BodyMoved, UringError> {
        if held.len() > BODY_MAX_HELD {
            return Err(UringError::Socket(io::Error::new(io::ErrorKind::InvalidInput, format!("{} held bytes exceed the transfer's {BODY_MAX_HELD}", held.len()))));
        }
        let fds = [src.try_clone_to_owned().map_err(UringError::Socket)?, dst.try_clone_to_owned().map_err(UringError::Socket)?];
        let held = held.to_vec();
        self.dispatch(move |id, active, done| Msg::StartBody(BodyJob { id, fds, held, offset, length, filter, done, active })).await
    }
}

pub(super) struct BodyRelay {
    id: u64,
    generation: u16,
    fds: [OwnedFd; 2],
    buf: Box<[u8]>,
    /// Index of the first byte not yet written, and how many such bytes there are (wrapping).
    start: usize,
    len: usize,
    /// Of those, how many (from `start`) the filter released and are not yet written.
    releasing: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    remaining: u64,
    read: u64,
    written: u64,
    in_flight: Option<u64>,
    filter: Option<Box<dyn BodyFilter>>,
    done: Option<oneshot::Sender<Result<BodyMoved, UringError>>>,
    active: Arc<AtomicUsize>,
    end: Option<Result<BodyEnd, UringError>>,
}

impl BodyRelay {
    /// The unwritten bytes as at most two contiguous pieces, oldest first.
    fn held_pieces(&self) -> (Range<usize>, Range<usize>) {
        let first_end = (self.start + self.len).min(self.buf.len());
        let wrapped = self.start + self.len - first_end;
        (self.start..first_end, 0..wrapped)
    }

    /// Overwrites the stream range `r` (clamped to the unwritten bytes) with `*`.
    fn redact(&mut self, r: Range<u64>) {
        let lo = r.start.max(self.offset);
        let hi = r.end.min(self.offset + self.len as u64);
        for off in lo..hi {
            let at = (self.start + (off - self.offset) as usize) % self.buf.len();
            self.buf[at] = b'*';
        }
    }
}

impl Worker {
    pub(super) fn start_body(&mut self, job: BodyJob) {
        let mut buf = vec![0u8; BODY_BYTES].into_boxed_slice();
        buf[..job.held.len()].copy_from_slice(&job.held);
        let held = job.held.len();
        let key = self.bodies.insert(job.id, |generation| BodyRelay {
            id: job.id,
            generation,
            fds: job.fds,
            buf,
            start: 0,
            len: held,
            // Judged, but still held back: the first judgement says when they may go.
            releasing: 0,
            offset: job.offset,
            remaining: job.length,
            read: 0,
            written: 0,
            in_flight: None,
            filter: Some(job.filter),
            done: Some(job.done),
            active: job.active,
            end: None,
        });
        self.body_next(key);
    }

    fn body(&mut self, key: usize) -> &mut BodyRelay {
        self.bodies.get_mut(key).expect("operations are queued only for live transfers")
    }

    /// Queues what comes next: a write of released bytes, a read, or the end.
    fn body_next(&mut self, key: usize) {
        let b = self.body(key);
        if b.end.is_some() {
            return self.body_finish_if_done(key);
        }
        if b.releasing > 0 {
            let piece = b.releasing.min(b.buf.len() - b.start);
            let data = user_data(key, b.generation, 0, OP_BODY_SEND);
            b.in_flight = Some(data);
            // SAFETY: `start + piece <= buf.len()`; the buffer lives until this send is reaped.
            let from = unsafe { b.buf.as_ptr().add(b.start) };
            let entry = opcode::Send::new(types::Fd(b.fds[1].as_raw_fd()), from, piece as u32).flags(libc::MSG_NOSIGNAL).build();
            self.pending.push(entry.user_data(data));
            return;
        }
        if b.remaining == 0 {
            // Only reachable when the body was empty from the start (the last read releases all).
            b.end = Some(Ok(BodyEnd::Complete));
            return self.body_finish_if_done(key);
        }
        if b.len == 0 {
            b.start = 0;
        }
        let size = b.buf.len();
        let write_at = (b.start + b.len) % size;
        let room = (size - b.len).min(size - write_at);
        let want = (room as u64).min(b.remaining) as usize;
        if want == 0 {
            let (held, _) = take_held(b);
            b.end = Some(Ok(BodyEnd::Handback { held, reason: io::Error::other("the filter holds back the whole transfer buffer") }));
            return self.body_finish_if_done(key);
        }
        let data = user_data(key, b.generation, 0, OP_BODY_RECV);
        b.in_flight = Some(data);
        // SAFETY: `write_at + want <= buf.len()`, free space nobody reads until this completes.
        let into = unsafe { b.buf.as_mut_ptr().add(write_at) };
        let entry = opcode::Recv::new(types::Fd(b.fds[0].as_raw_fd()), into, want as u32).build();
        self.pending.push(entry.user_data(data));
    }

    pub(super) fn body_complete(&mut self, data: u64, res: i32) {
        let (key, generation, _, op) = decode(data);
        if op == OP_BODY_CANCEL {
            return;
        }
        let Some(b) = self.bodies.get_mut(key).filter(|b| b.generation == generation && b.in_flight == Some(data)) else {
            tracing::warn!(data, res, "an io_uring completion for no body operation in flight; ignored");
            return;
        };
        b.in_flight = None;
        if b.end.is_some() {
            return self.body_finish_if_done(key);
        }
        if res == -libc::EINTR || res == -libc::EAGAIN {
            return self.body_next(key);
        }
        if op == OP_BODY_SEND {
            if res <= 0 {
                let source = if res == 0 { io::ErrorKind::WriteZero.into() } else { io::Error::from_raw_os_error(-res) };
                b.end = Some(Err(UringError::Io { direction: Direction::AToB, source }));
                return self.body_finish_if_done(key);
            }
            let m = res as usize;
            b.start = (b.start + m) % b.buf.len();
            b.len -= m;
            b.releasing -= m;
            b.offset += m as u64;
            b.written += m as u64;
            if b.remaining == 0 && b.len == 0 {
                b.end = Some(Ok(BodyEnd::Complete));
            }
            return self.body_next(key);
        }
        if res <= 0 {
            let reason = if res == 0 { io::Error::new(io::ErrorKind::UnexpectedEof, "end of stream inside the body") } else { io::Error::from_raw_os_error(-res) };
            let (held, _) = take_held(b);
            b.end = Some(Ok(BodyEnd::Handback { held, reason }));
            return self.body_finish_if_done(key);
        }
        let n = res as usize;
        let write_at = (b.start + b.len) % b.buf.len();
        b.len += n;
        b.remaining -= n as u64;
        b.read += n as u64;
        let last = b.remaining == 0;
        let window = b.offset..b.offset + b.len as u64;
        let filter = b.filter.as_mut().expect("the filter stays until the transfer ends");
        let judgement = filter.judge(&b.buf[write_at..write_at + n], window.clone(), last);
        for r in judgement.redact {
            b.redact(r);
        }
        if let Some(reason) = judgement.refuse {
            b.end = Some(Ok(BodyEnd::Refused(reason)));
            return self.body_finish_if_done(key);
        }
        b.releasing = if last { b.len } else { (judgement.release_to.clamp(window.start, window.end) - window.start) as usize };
        self.body_next(key);
    }

    pub(super) fn body_stop(&mut self, key: usize, error: UringError) {
        let b = self.body(key);
        if b.end.is_none() {
            b.end = Some(Err(error));
        }
        if let Some(target) = b.in_flight {
            let cancel = opcode::AsyncCancel::new(target).build().user_data(user_data(key, b.generation, 0, OP_BODY_CANCEL));
            self.pending.push(cancel);
        }
        self.body_finish_if_done(key);
    }

    fn body_finish_if_done(&mut self, key: usize) {
        let b = self.body(key);
        if b.end.is_none() || b.in_flight.is_some() {
            return;
        }
        let b = self.bodies.remove(key, |b| b.id).expect("checked above");
        b.active.fetch_sub(1, Ordering::Relaxed);
        let BodyRelay { fds, read, written, filter, done, end, .. } = b;
        drop(fds);
        let result = match (end.expect("checked above"), filter) {
            (Ok(end), Some(filter)) => Ok(BodyMoved { read, written, end, filter }),
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(UringError::WorkerGone),
        };
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }

    /// Ends every transfer with `WorkerGone`; their buffers are leaked, as the kernel may still
    /// hold operations on them.
    pub(super) fn abandon_bodies(bodies: Live<BodyRelay>) {
        for b in bodies.into_live() {
            let BodyRelay { done, buf, .. } = b;
            if let Some(done) = done {
                let _ = done.send(Err(UringError::WorkerGone));
            }
            std::mem::forget(buf);
        }
    }
}

/// Copies out the unwritten bytes (for a handback) and empties the buffer.
fn take_held(b: &mut BodyRelay) -> (Vec<u8>, usize) {
    let (first, second) = b.held_pieces();
    let mut held = Vec::with_capacity(b.len);
    held.extend_from_slice(&b.buf[first]);
    held.extend_from_slice(&b.buf[second]);
    let n = b.len;
    b.len = 0;
    b.start = 0;
    (held, n)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{pattern, runtime, tcp_pair, test_pool};
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    /// Holds back `hold` bytes, stars out every `x`, refuses at `STOP`, and records what it saw.
    struct Test {
        hold: u64,
        seen: Vec<u8>,
        windows: Vec<Range<u64>>,
    }

    impl BodyFilter for Test {
        fn judge(&mut self, fresh: &[u8], window: Range<u64>, last: bool) -> Judgement {
            self.seen.extend_from_slice(fresh);
            self.windows.push(window.clone());
            let base = window.end - fresh.len() as u64;
            let redact = fresh.iter().enumerate().filter(|(_, b)| **b == b'x').map(|(i, _)| base + i as u64..base + i as u64 + 1).collect();
            // A STOP split across two reads counts too.
            let tail = &self.seen[self.seen.len().saturating_sub(fresh.len() + 3)..];
            let refuse = tail.windows(4).any(|w| w == b"STOP").then(|| "STOP seen".to_string());
            Judgement { release_to: if last { window.end } else { window.end.saturating_sub(self.hold) }, redact, refuse }
        }

        fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
            self
        }
    }

    fn filter(hold: u64) -> Box<dyn BodyFilter> {
        Box::new(Test { hold, seen: Vec::new(), windows: Vec::new() })
    }

    /// Test bytes the filter leaves alone (no `x` to star out).
    fn plain(n: usize, seed: u8) -> Vec<u8> {
        pattern(n, seed).into_iter().map(|b| if b == b'x' { b'y' } else { b }).collect()
    }

    fn taken(moved: BodyMoved) -> (BodyEnd, Test) {
        (moved.end, *moved.filter.into_any().downcast::<Test>().unwrap())
    }

    #[test]
    fn exactly_the_body_moves_and_the_next_message_stays_behind() {
        let pool = test_pool();
        let (src, mut client) = tcp_pair();
        let (dst, mut server) = tcp_pair();
        // Several times the buffer, with a held-back tail that makes the buffer wrap.
        let body = plain(5 * BODY_BYTES + 12345, 3);
        let next = b"GET /next HTTP/1.1\r\n\r\n".to_vec();
        let mut sent = body.clone();
        sent.extend_from_slice(&next);
        let writer = std::thread::spawn(move || {
            client.write_all(&sent).unwrap();
            client
        });
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 5 * BODY_BYTES + 12345 + 10];
            server.read_exact(&mut got).unwrap();
            got
        });
        let rt = runtime();
        let moved = rt.block_on(pool.body(src.as_fd(), dst.as_fd(), b"0123456789", 100, body.len() as u64, filter(70_001))).unwrap();
        assert_eq!((moved.read, moved.written), (body.len() as u64, body.len() as u64 + 10));
        let (end, test) = taken(moved);
        assert!(matches!(end, BodyEnd::Complete), "{end:?}");
        assert!(test.seen == body, "the filter saw every body byte once, in order");
        assert_eq!(test.windows.first().unwrap().start, 100, "windows count from the given offset and start with the held bytes");
        assert_eq!(test.windows.last().unwrap().end, 110 + body.len() as u64);
        let got = reader.join().unwrap();
        assert_eq!(&got[..10], b"0123456789", "held bytes go out first");
        assert!(got[10..] == body, "the body arrives intact");
        // The following request is still in the source socket, for the caller to read.
        let _client = writer.join().unwrap();
        let mut src = src;
        let mut rest = vec![0u8; next.len()];
        src.read_exact(&mut rest).unwrap();
        assert_eq!(rest, next);
    }

    #[test]
    fn redactions_land_in_place_and_a_refusal_stops_what_was_held() {
        let pool = test_pool();
        let (src, mut client) = tcp_pair();
        let (dst, mut server) = tcp_pair();
        let rt = runtime();
        let mut body = vec![b'a'; 300_000];
        body[1000] = b'x';
        body[299_990..299_994].copy_from_slice(b"STOP");
        client.write_all(&body).unwrap();
        let moved = rt.block_on(pool.body(src.as_fd(), dst.as_fd(), b"", 0, 400_000, filter(64 * 1024))).unwrap();
        let written = moved.written;
        let (end, _) = taken(moved);
        assert!(matches!(end, BodyEnd::Refused(ref r) if r == "STOP seen"), "{end:?}");
        drop(dst);
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        assert_eq!(got.len() as u64, written);
        assert!(got.len() <= 299_994 - 64 * 1024, "nothing within the held-back tail of STOP went out ({} bytes did)", got.len());
        assert_eq!(got[1000], b'*', "the redaction was applied before the write");
        assert!(got.iter().enumerate().all(|(i, b)| i == 1000 || *b == b'a'));
    }

    #[test]
    fn end_of_stream_inside_the_body_hands_the_held_bytes_back() {
        let pool = test_pool();
        let (src, mut client) = tcp_pair();
        let (dst, _server) = tcp_pair();
        let rt = runtime();
        client.write_all(&plain(50_000, 9)).unwrap();
        drop(client);
        let moved = rt.block_on(pool.body(src.as_fd(), dst.as_fd(), b"", 0, 1_000_000, filter(20_000))).unwrap();
        let (read, written) = (moved.read, moved.written);
        let (end, _) = taken(moved);
        let BodyEnd::Handback { held, reason } = end else { panic!("{end:?}") };
        assert_eq!(reason.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(read, 50_000);
        assert_eq!(written + held.len() as u64, 50_000);
        assert!(held == plain(50_000, 9)[written as usize..], "the held bytes come back as read");
    }

    #[test]
    fn dropping_the_future_cancels_and_leaves_the_sockets_open() {
        test_pool();
        // A pool of its own, so its active count is this test's alone.
        let pool = Pool::start(1).unwrap();
        let (src, mut client) = tcp_pair();
        let (dst, _server) = tcp_pair();
        let rt = runtime();
        let out = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_millis(200), pool.body(src.as_fd(), dst.as_fd(), b"", 0, 10, filter(0))).await });
        assert!(out.is_err(), "no byte was sent, so the transfer cannot end by itself");
        // Wait until the worker has reaped the cancel, so nothing is left to read.
        let active = || pool.workers.iter().map(|w| w.active.load(Ordering::Relaxed)).sum::<usize>();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while active() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The caller's socket is still usable: what the client sends now is read by the caller.
        client.write_all(b"later").unwrap();
        let mut src = src;
        src.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let mut got = [0u8; 5];
        src.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"later", "the cancelled read took nothing");
    }
}
