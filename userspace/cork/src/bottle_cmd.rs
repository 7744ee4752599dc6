//! `cork bottle run | ls | rm`: running a command in a bottle, a cgroup v2 whose TCP is steered
//! to cork's transparent listener and whose DNS goes to cork's DNS guard (see docs/bottles.md).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use cork_bottle::{Bottle, BottleConfig, DenyEvent, DenyEvents, DenyReason, DEFAULT_BPFFS_ROOT};
use cork_ca::BottleCa;
use cork_policy::Policy;
use cork_proxy::{AuditLog, AuditRecord, ProxyState, Snapshot, Verdict};

#[derive(Subcommand)]
pub enum BottleCommand {
    /// Run CMD inside a new bottle and tear the bottle down when it exits.
    Run(RunArgs),
    /// List the bottles on this machine.
    Ls,
    /// Remove a bottle: stop its cork, or clean up after one that died.
    Rm {
        /// The bottle's name.
        name: String,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// The bottle's name (letters, digits, `-`, `_`; at most 64). Default: `b<cork's pid>`.
    #[arg(long)]
    name: Option<String>,
    /// Policy file (YAML). Without it the embedded default policy applies.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Where state lives: `bottles/<name>/` (the CA) and the audit log.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The audit log (JSON lines). Default: `<state-dir>/audit.jsonl`.
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Also install the bottle's CA into this root filesystem's trust store (removed afterwards).
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Log format on standard error.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub fn main(command: BottleCommand) -> Result<ExitCode> {
    match command {
        BottleCommand::Run(args) => run(args),
        BottleCommand::Ls => ls().map(|_| ExitCode::SUCCESS),
        BottleCommand::Rm { name } => rm(&name).map(|_| ExitCode::SUCCESS),
    }
}



/// What a bottle changed outside its state directory, undone at teardown.
struct RootfsTrust {
    cert: PathBuf,
    bundle: PathBuf,
    pem: String,
}

impl RootfsTrust {
    fn install(rootfs: &Path, name: &str, pem: &str) -> Result<RootfsTrust> {
        let cert_dir = rootfs.join("usr/local/share/ca-certificates");
        let bundle_dir = rootfs.join("etc/ssl/certs");
        std::fs::create_dir_all(&cert_dir).with_context(|| format!("creating {}", cert_dir.display()))?;
        std::fs::create_dir_all(&bundle_dir).with_context(|| format!("creating {}", bundle_dir.display()))?;
        let cert = cert_dir.join(format!("cork-{name}.crt"));
        std::fs::write(&cert, pem).with_context(|| format!("writing {}", cert.display()))?;
        let bundle = bundle_dir.join("ca-certificates.crt");
        let mut text = std::fs::read_to_string(&bundle).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(pem);
        std::fs::write(&bundle, text).with_context(|| format!("writing {}", bundle.display()))?;
        Ok(RootfsTrust { cert, bundle, pem: pem.to_string() })
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.cert);
        if let Ok(text) = std::fs::read_to_string(&self.bundle) {
            if let Some(at) = text.find(&self.pem) {
                let mut rest = text.clone();
                rest.replace_range(at..at + self.pem.len(), "");
                let _ = std::fs::write(&self.bundle, rest);
            }
        }
    }
}

fn deny_rule(reason: DenyReason) -> &'static str {
    match reason {
        DenyReason::UdpQuic => "steer.udp_quic",
        DenyReason::UdpNotAllowed => "steer.udp_not_allowed",
        DenyReason::SocketKind { .. } => "steer.socket_kind",
        DenyReason::EgressBackstop => "steer.egress_backstop",
        DenyReason::NoListener => "steer.no_listener",
        DenyReason::NoDnsGuard => "steer.no_dns_guard",
        DenyReason::MapFull => "steer.map_full",
        DenyReason::NoConfig => "steer.no_config",
        DenyReason::Unknown(_) => "steer.unknown_reason",
    }
}

fn deny_record(state: &ProxyState, event: &DenyEvent) -> AuditRecord {
    let mut record = AuditRecord::new(&state.instance, "steer", state.next_request_id(), "bottle".into());
    record.pid = (event.pid != 0).then_some(event.pid);
    if let Some(dest) = event.destination {
        record.host = Some(dest.ip().to_string());
        record.port = Some(dest.port());
    }
    let rule = deny_rule(event.reason);
    let reason = match event.reason {
        DenyReason::UdpQuic => "UDP to port 443 (QUIC) is refused: it would bypass TLS interception".to_string(),
        DenyReason::UdpNotAllowed => "UDP to a port that is neither DNS nor allowed".to_string(),
        DenyReason::SocketKind { family } => {
            format!("socket of family {family}, type {}, protocol {} is refused in a bottle", event.sock_type, event.protocol)
        }
        DenyReason::EgressBackstop => "a packet not addressed to cork was dropped".to_string(),
        DenyReason::NoListener => "no cork listener for this address family".to_string(),
        DenyReason::NoDnsGuard => "no DNS guard for this address family".to_string(),
        DenyReason::MapFull => "the original destination could not be recorded".to_string(),
        DenyReason::NoConfig => "the bottle's configuration was unreadable".to_string(),
        DenyReason::Unknown(n) => format!("refused for reason {n} (unknown to this cork)"),
    };
    record.verdict = Verdict::Block;
    record.rules.push(rule.to_string());
    record.reason = Some(reason);
    state.metrics.error(rule);
    record
}

/// The ring buffer's fd for tokio.
struct EventsFd(DenyEvents);

impl std::os::fd::AsRawFd for EventsFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// Turns deny events into audit lines until `stop` fires, then drains what is left.
async fn audit_deny_events(events: DenyEvents, state: Arc<ProxyState>, stop: tokio::sync::oneshot::Receiver<()>) {
    let drain = |events: &mut DenyEvents| {
        while let Some(event) = events.try_next() {
            state.audit.write(&deny_record(&state, &event));
        }
    };
    // SAFETY: `EventsFd` owns the ring buffer map, whose fd stays open and unchanged for as long
    // as the AsyncFd (its owner) lives.
    let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(EventsFd(events), tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the bottle's deny events");
            return;
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => {
                    drain(&mut guard.get_inner_mut().0);
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::error!(error = %e, "watching deny events failed");
                    return;
                }
            },
            _ = &mut stop => {
                drain(&mut fd.get_mut().0);
                return;
            }
        }
    }
}

fn bind_pair() -> Result<(TcpListener, Option<TcpListener>, UdpSocket, Option<UdpSocket>)> {
    let tcp4 = TcpListener::bind("127.0.0.1:0").context("binding the transparent listener on 127.0.0.1")?;
    let tcp6 = TcpListener::bind("[::1]:0").ok();
    let udp4 = UdpSocket::bind("127.0.0.1:0").context("binding the DNS guard on 127.0.0.1")?;
    let udp6 = UdpSocket::bind("[::1]:0").ok();
    Ok((tcp4, tcp6, udp4, udp6))
}

fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

fn v6(addr: SocketAddr) -> Option<SocketAddrV6> {
    match addr {
        SocketAddr::V6(a) => Some(a),
        SocketAddr::V4(_) => None,
    }
}

/// Serialises bottle creation and removal between corks on this machine, so that one cork's
/// clean-up never takes another's half-created bottle (a cgroup or pin directory without its
/// configuration yet) for a stale one. Released when the file is dropped.
fn lock_bottles() -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir = Path::new(DEFAULT_BPFFS_ROOT).parent().unwrap_or(Path::new("/run/cork"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("bottles.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

fn run(args: RunArgs) -> Result<ExitCode> {
    crate::setup::init_logging(&args.log_format);
    let name = args.name.clone().unwrap_or_else(|| format!("b{}", std::process::id()));
    let (policy, source) = match &args.policy {
        Some(path) => (Policy::from_file(path)?, path.display().to_string()),
        None => (Policy::embedded_default(), "<embedded default>".to_string()),
    };
    let snapshot = Snapshot::build(policy, source.clone()).context("compiling the policy")?;
    let state_dir = args.state_dir.clone().unwrap_or_else(crate::setup::default_state_dir);
    let bottle_dir = state_dir.join("bottles").join(&name);
    let audit_path = args.audit.clone().unwrap_or_else(|| state_dir.join("audit.jsonl"));
    let audit = AuditLog::open(&audit_path).with_context(|| format!("opening {}", audit_path.display()))?;

    let bpffs = Path::new(DEFAULT_BPFFS_ROOT);
    let lock = lock_bottles()?;
    match cork_bottle::cleanup_stale(bpffs) {
        Ok(removed) if !removed.is_empty() => tracing::info!(?removed, "removed stale bottles"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cleaning up stale bottles failed"),
    }

    let (tcp4, tcp6, udp4, udp6) = bind_pair()?;
    let config = BottleConfig {
        listener_v4: v4(tcp4.local_addr()?),
        listener_v6: tcp6.as_ref().and_then(|l| l.local_addr().ok()).and_then(v6),
        dns_v4: v4(udp4.local_addr()?),
        dns_v6: udp6.as_ref().and_then(|s| s.local_addr().ok()).and_then(v6),
        ..BottleConfig::default()
    };
    let mut bottle = Bottle::create(&name, config.clone()).with_context(|| format!("creating bottle {name}"))?;
    drop(lock);
    let events = bottle.take_deny_events();
    let bottle = Arc::new(Mutex::new(bottle));

    // From here on the bottle exists: whatever happens, it is torn down.
    let mut rootfs_trust = None;
    let outcome = (|| -> Result<ExitCode> {
        let ca = Arc::new(BottleCa::generate(&name)?);
        let trust = cork_ca::export::write_trust_files(&ca, &bottle_dir)?;
        if let Some(rootfs) = &args.rootfs {
            rootfs_trust = Some(RootfsTrust::install(rootfs, &name, &ca.cert_pem())?);
        }
        let state = Arc::new(ProxyState::new(&name, ca, snapshot, audit));
        let listeners = [Some(tcp4), tcp6];
        let dns = [Some(udp4), udp6];
        eprintln!(
            "cork bottle {name}: listener={} listener6={} dns={} ca={} bundle={} audit={} policy={source}",
            show(config.listener_v4.map(SocketAddr::V4)),
            show(config.listener_v6.map(SocketAddr::V6)),
            show(config.dns_v4.map(SocketAddr::V4)),
            trust.ca_cert.display(),
            trust.bundle.display(),
            audit_path.display(),
        );

        let mut command = std::process::Command::new(&args.command[0]);
        command.args(&args.command[1..]);
        for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
            command.env(var, &trust.bundle);
        }
        command.env("NODE_EXTRA_CA_CERTS", &trust.ca_cert);
        command.env("CORK_BOTTLE", &name);
        // In a bottle every connection is steered anyway; a proxy setting would only make clients
        // send CONNECT heads, which the transparent listener does not take.
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            command.env_remove(var);
        }

        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let code = runtime.block_on(async {
            for listener in listeners.into_iter().flatten() {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let bottle = bottle.clone();
                let lookup = move |peer: SocketAddr| bottle.lock().ok()?.original_destination(peer.port());
                tokio::spawn(cork_proxy::transparent::serve(listener, state.clone(), lookup));
            }
            for socket in dns.into_iter().flatten() {
                socket.set_nonblocking(true)?;
                tokio::spawn(cork_proxy::dns::serve(tokio::net::UdpSocket::from_std(socket)?, state.clone()));
            }
            tokio::spawn(publish_status(state.clone(), status_path(&name)));
            let (stop_events, stop_rx) = tokio::sync::oneshot::channel();
            let events_task = events.map(|events| tokio::spawn(audit_deny_events(events, state.clone(), stop_rx)));

            let child = bottle
                .lock()
                .map_err(|_| anyhow::anyhow!("bottle lock poisoned"))?
                .spawn(&mut command)
                .with_context(|| format!("starting {:?} in bottle {name}", args.command[0]))?;
            let pid = child.id();
            tracing::info!(bottle = %name, pid, "started {:?}", args.command[0]);
            let status = wait_forwarding_signals(child).await?;

            let _ = stop_events.send(());
            if let Some(task) = events_task {
                let _ = task.await;
            }
            anyhow::Ok(status)
        })?;
        runtime.shutdown_timeout(Duration::from_secs(2));
        Ok(code)
    })();

    // Teardown: the bottle first (kills what is left in it), then the CA and the state.
    let teardown = match Arc::try_unwrap(bottle) {
        Ok(mutex) => mutex.into_inner().unwrap_or_else(|e| e.into_inner()).destroy().map_err(anyhow::Error::from),
        Err(_) => cork_bottle::remove_bottle(bpffs, &name).map(|_| ()).map_err(anyhow::Error::from),
    };
    if let Some(trust) = &rootfs_trust {
        trust.remove();
    }
    let _ = std::fs::remove_dir_all(&bottle_dir);
    let _ = std::fs::remove_file(status_path(&name));
    match (outcome, teardown) {
        (Ok(code), Ok(())) => Ok(code),
        (Ok(_), Err(e)) => Err(e.context(format!("tearing down bottle {name}"))),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(t)) => Err(e.context(format!("and tearing down bottle {name} failed too: {t:#}"))),
    }
}

fn show(addr: Option<SocketAddr>) -> String {
    addr.map(|a| a.to_string()).unwrap_or_else(|| "none".into())
}

/// Waits for the child, forwarding SIGINT, SIGTERM and SIGHUP to it. Returns its exit code
/// (128 + the signal number when a signal ended it).
async fn wait_forwarding_signals(mut child: std::process::Child) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let pid = child.id() as libc::pid_t;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut wait = tokio::task::spawn_blocking(move || child.wait());
    let status = loop {
        let sig = tokio::select! {
            status = &mut wait => break status??,
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        tracing::info!(pid, sig, "forwarding signal to the bottled command");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, sig) };
    };
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    };
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// Where a running bottle's cork publishes its counters for `cork bottle ls`.
fn status_path(name: &str) -> PathBuf {
    Path::new(DEFAULT_BPFFS_ROOT).parent().unwrap_or(Path::new("/run/cork")).join("status").join(format!("{name}.json"))
}

/// Writes the bottle's counters every second (write, then rename, so readers never see half).
async fn publish_status(state: Arc<ProxyState>, path: PathBuf) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("json.tmp");
    loop {
        if let Ok(json) = serde_json::to_vec(&state.metrics.totals()) {
            if std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path)).is_err() {
                tracing::debug!(path = %path.display(), "could not publish the bottle's counters");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn ls() -> Result<()> {
    let bpffs = Path::new(DEFAULT_BPFFS_ROOT);
    let parent = cork_bottle::bottles_parent()?;
    let names = cork_bottle::list_bottles(bpffs)?;
    println!("{:<32} {:<8} {:<14} {:>6} {:>5} {:>8} {:>8} {:>8} {:>12} {:>12}", "NAME", "STATE", "LOADER", "PROCS", "PINS", "REQUESTS", "BLOCKED", "REFUSED", "BYTES_UP", "BYTES_DOWN");
    for name in names {
        let cgroup = parent.join(&name);
        let procs = cork_bottle::bottle_processes(&cgroup).map(|p| p.len().to_string()).unwrap_or_else(|_| "-".into());
        let pins = std::fs::read_dir(bpffs.join(&name)).map(|d| d.count().to_string()).unwrap_or_else(|_| "0".into());
        let loader = cork_bottle::loader_pid(bpffs, &name);
        let alive = loader.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        let state = if alive { "running" } else { "stale" };
        let loader = loader.map(|p| format!("{p}{}", if alive { "" } else { " (dead)" })).unwrap_or_else(|| "-".into());
        let totals: Option<cork_proxy::metrics::Totals> =
            std::fs::read(status_path(&name)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).filter(|_| alive);
        let figures = match totals {
            Some(t) => {
                let blocked = t.requests.get("block").copied().unwrap_or(0);
                let requests: u64 = t.requests.values().sum();
                format!("{requests:>8} {blocked:>8} {:>8} {:>12} {:>12}", t.errors, t.bytes_up, t.bytes_down)
            }
            None => format!("{:>8} {:>8} {:>8} {:>12} {:>12}", "-", "-", "-", "-", "-"),
        };
        println!("{name:<32} {state:<8} {loader:<14} {procs:>6} {pins:>5} {figures}");
    }
    Ok(())
}

fn rm(name: &str) -> Result<()> {
    let bpffs = Path::new(DEFAULT_BPFFS_ROOT);
    if let Some(pid) = cork_bottle::loader_pid(bpffs, name) {
        if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
            // A running cork tears its own bottle down when its command ends: end the command.
            let cgroup = cork_bottle::bottles_parent()?.join(name);
            let procs = cork_bottle::bottle_processes(&cgroup).unwrap_or_default();
            for p in &procs {
                // SAFETY: kill(2); a pid that is gone returns ESRCH.
                unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
            }
            for _ in 0..500 {
                if !bpffs.join(name).exists() {
                    println!("removed {name} (its cork {pid} tore it down)");
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            bail!("bottle {name} is still held by cork (pid {pid}); stop that cork");
        }
    }
    let _lock = lock_bottles()?;
    if cork_bottle::remove_bottle(bpffs, name)? {
        println!("removed {name}");
        Ok(())
    } else {
        bail!("no bottle named {name}")
    }
}
