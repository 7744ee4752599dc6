//! `cargo xtask run` and `cargo xtask test`, and the idempotent installs they need.
//!
//! Each install checks before it acts and prints what it does, so a second run on a prepared
//! machine is quiet and fast, and a first run on a fresh one shows its progress.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages the tests drive as real clients and peers.
const TEST_APT_PACKAGES: &[&str] = &["curl", "openssl", "ca-certificates", "iproute2", "nghttp2-client"];
/// Python test clients, pinned so that runs are comparable.
const PYTHON_PACKAGES: &[&str] = &["requests==2.32.3", "httpx==0.27.2", "h2==4.1.0", "websockets==13.1"];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives below the repository root").to_path_buf()
}

pub fn step(msg: &str) {
    eprintln!("[xtask] {msg}");
}

/// Runs a command, failing with its name if it fails.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the Debian packages that are missing, with `apt-get update` first when needed.
pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing Debian packages {missing:?}; install them as root (apt-get install {})", missing.join(" "));
    }
    let archives = repo_root().join(".tools/apt-archives");
    std::fs::create_dir_all(archives.join("partial"))?;
    let cache = format!("-oDir::Cache::Archives={}", archives.display());
    step(&format!("apt-get update (to install {})", missing.join(", ")));
    run_checked(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    step(&format!("apt-get install {}", missing.join(" ")));
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", &cache])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// A virtualenv under `.tools/venv` with the Python test clients. Returns its interpreter.
pub fn ensure_python_clients() -> Result<PathBuf> {
    let venv = repo_root().join(".tools/venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        step(&format!("creating a Python virtualenv in {}", venv.display()));
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let have = Command::new(&python).args(["-m", "pip", "freeze"]).output()?;
    let frozen = String::from_utf8_lossy(&have.stdout).to_lowercase();
    let missing: Vec<&str> = PYTHON_PACKAGES.iter().copied().filter(|p| !frozen.contains(&p.to_lowercase())).collect();
    if !missing.is_empty() {
        step(&format!("pip install {}", missing.join(" ")));
        run_checked(Command::new(&python).args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]).args(&missing))?;
    }
    Ok(python)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

/// `cargo xtask run [ARGS]`: builds cork in release mode and replaces this process with
/// `cork run ARGS`, on the embedded default policy unless ARGS say otherwise.
pub fn run_cork(args: &[String]) -> Result<()> {
    step("building cork (release)");
    run_checked(cargo().args(["build", "--release", "-p", "cork"]))?;
    let binary = repo_root().join("target/release/cork");
    let mut cmd = Command::new(&binary);
    cmd.arg("run");
    if !args.iter().any(|a| a == "--state-dir" || a.starts_with("--state-dir=")) {
        cmd.arg("--state-dir").arg(repo_root().join(".cork/state"));
    }
    cmd.args(args);
    step(&format!("starting {} run {}", binary.display(), args.join(" ")));
    // exec, so that Ctrl-C and SIGHUP reach cork itself.
    Err(cmd.exec()).context("starting cork")
}

/// Says how much disk the build trees have, so that a run that fills it is easy to explain.
/// A clean test run writes about 3.5 GB under target/.
fn report_free_disk() {
    let root = repo_root();
    let Ok(path) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else { return };
    // SAFETY: statvfs writes only into `stat`, which is sized for it; `path` is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return;
    }
    let free_gb = stat.f_bavail as f64 * stat.f_frsize as f64 / 1e9;
    step(&format!("{free_gb:.1} GB free on the disk that holds {}", root.display()));
    if free_gb < 6.0 {
        step("warning: a clean test run needs about 3.5 GB for its build trees");
    }
}

/// `cargo xtask test`: installs what the tests need, builds the binaries they run, runs every
/// test in the workspace, then the benchmark harness's `--quick` smoke run.
pub fn test_all() -> Result<()> {
    // A test run builds each tree once; incremental caches would only add gigabytes on disk
    // (every cargo below inherits this).
    std::env::set_var("CARGO_INCREMENTAL", "0");
    report_free_disk();
    step("checking test dependencies");
    ensure_apt(TEST_APT_PACKAGES)?;
    let python = ensure_python_clients()?;
    // Built before the workspace, because cork-bottle embeds the object at compile time.
    step("building the eBPF programs");
    crate::ebpf::build()?;
    step("building the binaries the end-to-end tests run");
    run_checked(cargo().args(["build", "-p", "cork", "-p", "bench-harness", "--bins"]))?;
    // The host kernel has no CONFIG_TLS: kTLS is proven in a VM that boots Debian's cloud kernel,
    // which also runs the bottle steering tests on a second kernel version.
    step("kTLS proof and bottle steering in a VM");
    crate::vm::run(false)?;
    step("running the workspace tests");
    run_checked(
        cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .env("CORK_TEST_PYTHON", &python)
            // Steering tests must run here, never skip for want of the object.
            .env("CORK_REQUIRE_STEERING_TESTS", "1"),
    )?;
    // The harness must keep working as the code changes; nothing here asserts speed.
    step("benchmark smoke run: cargo xtask bench --quick (report in target/bench-quick.md)");
    crate::bench::run(&["--quick".to_string()])?;
    Ok(())
}
