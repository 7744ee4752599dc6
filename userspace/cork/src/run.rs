//! `cork run`: the explicit proxy and its admin listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use cork_ca::BottleCa;
use cork_policy::Policy;
use cork_proxy::{AuditLog, ProxyState, Snapshot};

#[derive(Args)]
pub struct RunArgs {
    /// Address of the explicit proxy listener.
    #[arg(long, default_value = "127.0.0.1:3128")]
    listen: SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /ca.pem).
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin: SocketAddr,
    /// Policy file (YAML). Without it cork runs on its embedded default policy.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the public CA certificate and the audit log are written.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Log format on standard error.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}


fn load_policy(config: Option<&Path>) -> Result<(Policy, String)> {
    match config {
        Some(path) => Ok((Policy::from_file(path)?, path.display().to_string())),
        None => Ok((Policy::embedded_default(), "<embedded default>".to_string())),
    }
}


pub fn run(args: RunArgs) -> Result<()> {
    crate::setup::init_logging(&args.log_format);
    let (policy, source) = load_policy(args.config.as_deref())?;
    let snapshot = Snapshot::build(policy, source.clone()).context("compiling the policy")?;
    let state_dir = args.state_dir.clone().unwrap_or_else(crate::setup::default_state_dir);
    let instance = format!("cork-{}", std::process::id());
    let ca = Arc::new(BottleCa::generate(&instance)?);
    let trust = cork_ca::export::write_trust_files(&ca, &state_dir)?;
    let audit_path = state_dir.join("audit.jsonl");
    let audit = AuditLog::open(&audit_path).with_context(|| format!("opening {}", audit_path.display()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let proxy = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        let admin = tokio::net::TcpListener::bind(args.admin).await.with_context(|| format!("binding {}", args.admin))?;
        let listen = proxy.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let mode = snapshot.policy.mode;
        let allowed = snapshot.policy.hosts.allow.len();
        let state = Arc::new(ProxyState::new(&instance, ca, snapshot, audit));

        println!("cork {} listening on {listen} (explicit proxy); admin on http://{admin_addr}/metrics", env!("CARGO_PKG_VERSION"));
        println!("policy: {source} ({mode:?} mode, {allowed} allowed hosts); audit log: {}", audit_path.display());
        // Probed once; every bumped connection after this relies on the answer.
        println!("{}", cork_proxy::ktls_leg::describe(state.snapshot().policy.limits.ktls));
        // Probed once too, and the relay threads (one ring per core) start here when it passed.
        println!("{}", cork_proxy::uring::describe(state.snapshot().policy.limits.io_uring));
        println!("CA certificate: {} (with system roots: {})", trust.ca_cert.display(), trust.bundle.display());
        println!("To send a client through cork:");
        println!("  export HTTPS_PROXY=http://{listen} HTTP_PROXY=http://{listen}");
        for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
            println!("  export {var}={}", trust.bundle.display());
        }
        // Node adds this file to its built-in roots, so the CA alone is enough there.
        println!("  export NODE_EXTRA_CA_CERTS={}", trust.ca_cert.display());

        tokio::spawn(cork_proxy::admin::serve(admin, state.clone()));
        tokio::spawn(cork_proxy::explicit::serve(proxy, state.clone()));
        wait_for_signals(state, args.config).await
    })
}

/// Reloads on SIGHUP (keeping the old policy if the new one is invalid) and exits on SIGINT or
/// SIGTERM. Connections in flight keep the policy they started with.
async fn wait_for_signals(state: Arc<ProxyState>, config: Option<PathBuf>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match load_policy(config.as_deref()).and_then(|(p, s)| Ok(Snapshot::build(p, s)?)) {
                    Ok(snapshot) => {
                        tracing::info!(source = %snapshot.source, "policy reloaded");
                        state.reload(snapshot);
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "policy reload failed; keeping the current policy"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    Ok(())
}
