//! Process set-up shared by the long-running commands (`cork run`, `cork bottle run`).

use std::path::PathBuf;

/// Where state goes when `--state-dir` is not given: `/run/cork` as root, else the user's
/// runtime directory, else `./.cork`.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/run/cork")
    } else if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(runtime).join("cork")
    } else {
        PathBuf::from(".cork")
    }
}

/// Logs to standard error, filtered by `CORK_LOG` (default `info`), as text or JSON lines.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORK_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
