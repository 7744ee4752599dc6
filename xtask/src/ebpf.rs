//! The eBPF toolchain installer and the build of the bottle's eBPF programs.
//!
//! rustup's toolchains ship no `rust-src` here, so the programs build with Debian's Rust
//! (`rustc-web`, which has a prebuilt `core` for `bpfel-unknown-none`) and link with
//! `bpf-linker` against Debian's LLVM 22. Everything is installed idempotently: each step checks
//! first and says what it does.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the eBPF build needs.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "clang-22",
    "bpftool",
];

const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// Debian's cargo and rustc; `~/.cargo/bin` (rustup) comes first on PATH, so name them in full.
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The eBPF binary crate's name, which is also the object's file name.
const EBPF_CRATE: &str = "cork-bottle-ebpf";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

fn tools_dir() -> PathBuf {
    repo_root().join(".tools")
}

/// Where bpf-linker is installed (`cargo install --root`), inside the repository.
fn bpf_linker_root() -> PathBuf {
    tools_dir().join("cargo")
}

/// Where the eBPF workspace's build output goes.
pub fn ebpf_target_dir() -> PathBuf {
    repo_root().join("target").join("bpf")
}

/// Path of the built eBPF object.
pub fn object_path() -> PathBuf {
    ebpf_target_dir()
        .join(BPF_TARGET)
        .join("release")
        .join(EBPF_CRATE)
}

fn step(msg: &str) {
    eprintln!("[xtask ebpf] {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    step(&format!("running {cmd:?}"));
    let status = cmd
        .status()
        .with_context(|| format!("could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd.get_program());
    }
    Ok(())
}

fn apt_package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn install_apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !apt_package_installed(p))
        .collect();
    if missing.is_empty() {
        step(&format!("apt packages present: {}", APT_PACKAGES.join(" ")));
        return Ok(());
    }
    step(&format!("apt packages missing: {}", missing.join(" ")));
    // A clean-up hook may empty apt's own archive dir mid-install; keep ours under .tools.
    let archives = tools_dir().join("apt-archives");
    std::fs::create_dir_all(archives.join("partial"))
        .with_context(|| format!("creating {}", archives.display()))?;
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .arg(format!("-oDir::Cache::Archives={}", archives.display()))
        .args(&missing))?;
    Ok(())
}

fn bpf_linker_path() -> PathBuf {
    bpf_linker_root().join("bin").join("bpf-linker")
}

fn install_bpf_linker() -> Result<()> {
    let linker = bpf_linker_path();
    if linker.is_file() {
        step(&format!("bpf-linker present: {}", linker.display()));
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (several minutes on 2 cores)"
    ));
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "--locked",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
    ])
    .args(["--no-default-features", "--features", "llvm-22"])
    .arg("--root")
    .arg(bpf_linker_root())
    .arg("--target-dir")
    .arg(tools_dir().join("bpf-linker-build"))
    .env("PATH", path_with_front(&[PathBuf::from(LLVM_BIN)]))
    .env_remove("CARGO_TARGET_DIR");
    run(&mut cmd)?;
    // The intermediate build is large and never reused once the binary exists.
    let _ = std::fs::remove_dir_all(tools_dir().join("bpf-linker-build"));
    Ok(())
}

fn path_with_front(front: &[PathBuf]) -> std::ffi::OsString {
    let mut parts: Vec<PathBuf> = front.to_vec();
    if let Some(existing) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(parts).expect("PATH entries contain no separator")
}

/// Installs Debian's Rust + LLVM 22 + bpftool and bpf-linker, skipping what is present.
pub fn install_toolchain() -> Result<()> {
    install_apt_packages()?;
    for tool in [DEBIAN_CARGO, DEBIAN_RUSTC] {
        if !Path::new(tool).is_file() {
            bail!("{tool} missing after installing {}", APT_PACKAGES.join(" "));
        }
    }
    let core_dir = Path::new("/usr/lib/rustlib").join(BPF_TARGET).join("lib");
    if !core_dir.is_dir() {
        bail!(
            "{} missing: libstd-rust-web-dev-bpf did not provide core for {BPF_TARGET}",
            core_dir.display()
        );
    }
    install_bpf_linker()?;
    step("eBPF toolchain ready");
    Ok(())
}

/// Builds the eBPF object and returns its path.
pub fn build() -> Result<Option<PathBuf>> {
    install_toolchain()?;
    let crate_dir = repo_root().join("ebpf-programs");
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.current_dir(&crate_dir)
        .args([
            "build",
            "--release",
            "--package",
            EBPF_CRATE,
            "--target",
            BPF_TARGET,
        ])
        .arg("--target-dir")
        .arg(ebpf_target_dir())
        // Debian's tools first, and bpf-linker + LLVM 22's tools.
        .env(
            "PATH",
            path_with_front(&[
                bpf_linker_root().join("bin"),
                PathBuf::from(LLVM_BIN),
                PathBuf::from("/usr/bin"),
            ]),
        )
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        // Variables set by an outer rustup-driven cargo would point at rustup's toolchain.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO");
    run(&mut cmd)?;
    let object = object_path();
    if !object.is_file() {
        bail!("eBPF build succeeded but {} is missing", object.display());
    }
    step(&format!("eBPF object: {}", object.display()));
    Ok(Some(object))
}
