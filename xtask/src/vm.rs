//! `cargo xtask vm`: the kTLS proof, and a second kernel for the bottles' eBPF programs. Boots a
//! real kTLS kernel under QEMU and runs the guest tests: cork-ktls's
//! (`userspace/cork-ktls/tests/vm_guest.rs`), cork's proxy data path on kTLS
//! (`userspace/cork-proxy/tests/ktls_vm_guest.rs`), and bottle steering with every eBPF program
//! attached to a cgroup v2 (`userspace/cork-bottle/tests/steering_vm_guest.rs`), so the programs
//! are verified and run on 6.1 and 7.x as well as on the host's kernel.
//!
//! The host kernel may have no CONFIG_TLS, and a container cannot load modules, so the proof
//! runs in a VM, booted with TCG (no KVM needed), once per kernel in [`KERNELS`]: Debian
//! bookworm's cloud kernel (6.1, `tls.ko`, no kTLS rekeying) and trixie-backports' (the newest
//! Debian ships, ≥ 6.14, so it takes a TLS 1.3 KeyUpdate's new keys). Each gets an initramfs of
//! busybox, its tls and crypto modules and the statically linked test binaries, which are built
//! once; the kernel command line carries `cork_rekey=1` (≥ 6.14) or `cork_rekey=0`, which the
//! kernel hands to `/init`, and so to the tests, as an environment variable. Nothing is
//! installed on the host except QEMU: the kernel and busybox `.deb`s are downloaded and
//! unpacked under `.tools/vm/`, once (trixie-backports through a private apt state in
//! `.tools/vm/apt-trixie-backports`, which touches nothing in /etc or /var).
//!
//! The guest's verdict comes back through QEMU's `isa-debug-exit` device: `/init` writes the
//! test's status to port 0xf4 (through the test binary's `--qemu-exit`; the kernel has no /dev/port) and QEMU exits with `(status << 1) | 1`. Any other exit (a
//! kernel panic, a hang cut off by the timeout, a power-off) is a failure.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::install::{repo_root, run_checked};

/// Debian's cloud kernel meta-package; its dependency names the concrete kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// A kernel the guest tests run on.
struct Kernel {
    /// Its name for `--kernel`; it is unpacked in `.tools/vm/kernel-<name>`.
    name: &'static str,
    /// Where [`KERNEL_META`] comes from: `None` is the host's own apt sources (bookworm's 6.1
    /// on a bookworm host); `Some(suite)` is a private apt state under `.tools/vm/apt-<suite>`
    /// that knows only that Debian suite.
    suite: Option<&'static str>,
}
/// Every kernel `cargo xtask vm` boots, in this order, unless `--kernel` picks one.
const KERNELS: &[Kernel] = &[
    Kernel { name: "bookworm", suite: None },
    Kernel { name: "trixie-backports", suite: Some("trixie-backports") },
];
/// The first Linux release whose kTLS takes new keys (TLS 1.3 KeyUpdate), as (major, minor).
const REKEY_SINCE: (u32, u32) = (6, 14);
/// Compressed modules are staged decompressed: busybox's depmod and modprobe know only `.ko`.
const COMPRESSED_MODULES: &[(&str, &str)] = &[(".ko.xz", "xz"), (".ko.zst", "zstd"), (".ko.gz", "gzip")];
const BUSYBOX_PACKAGE: &str = "busybox-static";
const QEMU_PACKAGE: &str = "qemu-system-x86";
const QEMU: &str = "qemu-system-x86_64";
/// The rust target of the guest binary; static glibc, so the initramfs needs no libraries.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Module directories the guest needs: kTLS itself and the AEADs it instantiates. A kernel
/// may lack one of them (everything it holds built in, or moved); that is not an error.
const MODULE_DIRS: &[&str] = &["kernel/net/tls", "kernel/crypto", "kernel/arch/x86/crypto", "kernel/lib/crypto"];
/// A boot and its tests take well under a minute on TCG (about 15 s for either kernel); this
/// only stops a hung guest.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// QEMU's exit status when the guest wrote 0 (success) to isa-debug-exit.
const GUEST_PASSED: i32 = 1;

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Modules load only when the test asks, so its "not loaded yet" phases are real.
echo /bin/false > /proc/sys/kernel/modprobe
# Bottles live in a cgroup v2; the loader mounts its own bpffs at /run/cork/bpffs.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
# cork_rekey comes from the kernel command line (1: this kernel's kTLS takes new keys).
echo "[init] kernel $(uname -r), cork_rekey=$cork_rekey"
# cork_mode=bench (cargo xtask bench): every module, the proxy guest's figures, nothing else.
if [ "$cork_mode" = bench ]; then
  for m in tls gcm ctr chacha20poly1305 chacha chacha_generic poly1305_generic libpoly1305 ghash_generic aesni_intel; do
    modprobe $m 2>/dev/null
  done
  /cork-proxy-guest --bench
  /cork-ktls-guest --qemu-exit $?
  poweroff -f
fi
rc=0
# cork's proxy before anything loads tls: the probe refuses and connections stay on rustls.
/cork-proxy-guest --no-tls || rc=1
# cork-ktls itself, loading tls and the AEAD modules in phases.
/cork-ktls-guest || rc=1
# cork's proxy on kTLS, every module loaded.
/cork-proxy-guest || rc=1
# The bottles' eBPF programs on this kernel. The variable is the test's licence to run in
# PID 1's network namespace (it still refuses one with anything but lo).
CORK_VM_GUEST=1 /cork-bottle-guest || rc=1
echo "[init] guest tests exited with status $rc"
# The kernel has no /dev/port, so the test binary itself writes the verdict to isa-debug-exit.
/cork-ktls-guest --qemu-exit "$rc"
poweroff -f
"#;

fn step(msg: &str) {
    eprintln!("[xtask vm] {msg}");
}

fn vm_dir() -> PathBuf {
    repo_root().join(".tools/vm")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn os_codename() -> String {
    fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default()
}

/// Installs QEMU if it is missing. On bookworm it comes from bookworm-backports, because
/// bookworm's own qemu-system-x86 conflicts with the backported qemu-utils CI images carry,
/// and installing it would downgrade them.
fn ensure_qemu() -> Result<()> {
    if Command::new(QEMU).arg("--version").stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false) {
        return Ok(());
    }
    if !is_root() {
        bail!("{QEMU} is missing; install {QEMU_PACKAGE} as root (on bookworm from bookworm-backports)");
    }
    let bookworm = os_codename() == "bookworm";
    if bookworm {
        let policy = output(Command::new("apt-cache").args(["policy", QEMU_PACKAGE]))?;
        if !policy.contains("bookworm-backports") {
            let list = Path::new("/etc/apt/sources.list.d/bookworm-backports.sources");
            step(&format!("adding bookworm-backports to apt sources ({})", list.display()));
            fs::write(
                list,
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            )?;
        }
    }
    step("apt-get update");
    run_checked(apt_get().args(["update", "-q"]))?;
    step(&format!("apt-get install {QEMU_PACKAGE}"));
    let mut install = apt_get();
    install.args(["install", "-y", "-q", "--no-install-recommends"]);
    if bookworm {
        install.args(["-t", "bookworm-backports"]);
    }
    run_checked(install.arg(QEMU_PACKAGE))
}

/// A private apt state for one Debian `suite`, under `.tools/vm/apt-<suite>`: its own sources,
/// lists, cache and (empty) dpkg status, so nothing in /etc or /var is read for sources or
/// written. Returns the options that point apt-get and apt-cache at it.
fn private_apt(suite: &str) -> Result<Vec<String>> {
    let dir = vm_dir().join(format!("apt-{suite}"));
    for sub in ["lists/partial", "cache/archives/partial", "parts"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let status = dir.join("status");
    if !status.exists() {
        fs::write(&status, "")?;
    }
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"),
    )?;
    let path = |p: &Path| p.display().to_string();
    Ok([
        ("Dir::Etc::SourceList", path(&sources)),
        ("Dir::Etc::SourceParts", path(&dir.join("parts"))),
        ("Dir::Etc::Preferences", path(&dir.join("preferences"))),
        ("Dir::Etc::PreferencesParts", path(&dir.join("parts"))),
        ("Dir::State::Lists", path(&dir.join("lists"))),
        ("Dir::Cache", path(&dir.join("cache"))),
        ("Dir::State::status", path(&status)),
        // apt runs as root on a directory the _apt user may not reach.
        ("APT::Sandbox::User", "root".into()),
        ("Acquire::Languages", "none".into()),
    ]
    .into_iter()
    .flat_map(|(key, value)| ["-o".to_string(), format!("{key}={value}")])
    .collect())
}

/// Whether `dest` was unpacked completely (its stamp is written last).
fn is_unpacked(dest: &Path) -> bool {
    dest.with_extension("unpacked").exists() && dest.exists()
}

/// Downloads `packages`' .debs (not installed) with apt and its `apt_options` and unpacks them
/// all into `dest`; a stamp file records what was unpacked, so later runs work offline.
fn unpack(packages: &[String], apt_options: &[String], dest: &Path) -> Result<()> {
    let downloads = vm_dir().join("debs");
    fs::create_dir_all(&downloads)?;
    // A stale stamp must not vouch for a half-unpacked tree.
    let _ = fs::remove_file(dest.with_extension("unpacked"));
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest)?;
    for package in packages {
        step(&format!("downloading {package}"));
        // The download runs as root in a repo directory the _apt user may not reach; say so
        // instead of letting apt warn.
        run_checked(
            apt_get().current_dir(&downloads).args(apt_options).args(["download", "-q", "-o", "APT::Sandbox::User=root"]).arg(package),
        )?;
        let prefix = format!("{package}_");
        let deb = fs::read_dir(&downloads)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb")))
            .max()
            .with_context(|| format!("apt-get download {package} left no .deb in {}", downloads.display()))?;
        step(&format!("unpacking {}", deb.display()));
        run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))?;
    }
    fs::write(dest.with_extension("unpacked"), packages.join("\n"))?;
    Ok(())
}

/// The packages that make up the kernel behind [`KERNEL_META`] in apt's view (`apt_options`;
/// `system` says they are the host's own sources): the concrete image package
/// (linux-image-6.1.0-57-cloud-amd64, which holds everything), and, for the newer kernels whose
/// image package is itself only a meta-package, the packages it depends on: linux-binary-*
/// (vmlinuz), linux-modules-* (the modules) and linux-base-* (modules.builtin and
/// modules.order, so busybox's modprobe knows the built-in modules as it does on 6.1).
fn kernel_packages(apt_options: &[String], system: bool) -> Result<Vec<String>> {
    let depends = |package: &str| output(Command::new("apt-cache").args(apt_options).args(["depends", package]));
    let update = || run_checked(apt_get().args(apt_options).args(["update", "-q"]));
    let meta = if system {
        let mut deps = depends(KERNEL_META);
        if deps.is_err() && is_root() {
            step("apt-get update (to find the kernel package)");
            update()?;
            deps = depends(KERNEL_META);
        }
        deps?
    } else {
        // The private lists are only read here, before the kernel is unpacked; fetch them fresh.
        step("apt-get update of the private apt state (to find the kernel package)");
        update()?;
        depends(KERNEL_META)?
    };
    let deps_of = |text: &str, prefixes: &[&str]| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| prefixes.iter().any(|prefix| p.starts_with(prefix)))
            .map(str::to_string)
            .collect()
    };
    let image = deps_of(&meta, &["linux-image-"])
        .into_iter()
        .next()
        .with_context(|| format!("apt-cache depends {KERNEL_META} names no linux-image package"))?;
    let mut packages = vec![image.clone()];
    packages.extend(deps_of(&depends(&image)?, &["linux-binary-", "linux-modules-", "linux-base-"]));
    Ok(packages)
}

/// Unpacks `kernel` under `.tools/vm/kernel-<name>` unless it already is; returns that directory.
fn ensure_kernel(kernel: &Kernel) -> Result<PathBuf> {
    let dest = vm_dir().join(format!("kernel-{}", kernel.name));
    if is_unpacked(&dest) {
        return Ok(dest);
    }
    let apt_options = match kernel.suite {
        None => Vec::new(),
        Some(suite) => private_apt(suite)?,
    };
    let packages = kernel_packages(&apt_options, kernel.suite.is_none())?;
    step(&format!("kernel {}: {}", kernel.name, packages.join(", ")));
    unpack(&packages, &apt_options, &dest)?;
    Ok(dest)
}

/// An unpacked kernel's release, its module directory and its image. 6.1 has
/// `lib/modules/<release>` and `boot/vmlinuz-<release>`; the newer packages have
/// `usr/lib/modules/<release>`, with `vmlinuz` in it.
struct KernelLayout {
    release: String,
    modules: PathBuf,
    vmlinuz: PathBuf,
}

fn kernel_layout(kernel: &Path) -> Result<KernelLayout> {
    let (release, modules) = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| kernel.join(dir))
        .filter(|dir| dir.is_dir())
        .flat_map(|dir| fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .find(|(_, path)| path.join("kernel").is_dir())
        .with_context(|| format!("no kernel release with modules under {}/{{,usr/}}lib/modules", kernel.display()))?;
    let vmlinuz = [kernel.join("boot").join(format!("vmlinuz-{release}")), modules.join("vmlinuz")]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("no boot/vmlinuz-{release} or {}/vmlinuz under {}", modules.display(), kernel.display()))?;
    Ok(KernelLayout { release, modules, vmlinuz })
}

/// Whether `release` (e.g. 7.3.4+deb13-cloud-amd64) has kTLS rekeying, from its major.minor.
fn rekey_supported(release: &str) -> Result<bool> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor) >= REKEY_SINCE),
        _ => bail!("kernel release {release:?} does not start with major.minor"),
    }
}

/// `name` without its compression suffix and the tool that decompresses it, if it is a
/// compressed module.
fn compressed_module(name: &str) -> Option<(String, &'static str)> {
    COMPRESSED_MODULES.iter().find_map(|(suffix, tool)| {
        name.strip_suffix(suffix).map(|stem| (format!("{stem}.ko"), *tool))
    })
}

/// The guest test binaries: (package, test target, name in the guest's root).
const GUESTS: &[(&str, &str, &str)] = &[
    ("cork-ktls", "vm_guest", "cork-ktls-guest"),
    ("cork-proxy", "ktls_vm_guest", "cork-proxy-guest"),
    ("cork-bottle", "steering_vm_guest", "cork-bottle-guest"),
];

/// Runs `cargo <args>` for the guest target, statically linked, and returns the executables it
/// reported by target name.
fn cargo_static(args: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root()).args(args);
    let out = cmd
        .args(["--message-format=json-render-diagnostics", "--target", GUEST_TARGET])
        // A separate target dir: different RUSTFLAGS would otherwise rebuild the host's deps.
        .arg("--target-dir")
        .arg(repo_root().join("target/vm"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    if !out.status.success() {
        bail!("cargo {} for the guest failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter_map(|v| Some((v["target"]["name"].as_str()?.to_string(), PathBuf::from(v["executable"].as_str()?))))
        .collect())
}

/// Builds the guest test binaries and the `cork` binary (which the proxy guest test runs as
/// `/cork`) statically; returns (path, name in the guest's root).
fn build_guests() -> Result<Vec<(PathBuf, &'static str)>> {
    step("building the guest tests and cork (static glibc)");
    let mut args = vec!["test"];
    for (package, test, _) in GUESTS {
        args.extend(["-p", package, "--test", test]);
    }
    args.push("--no-run");
    let tests = cargo_static(&args)?;
    let bins = cargo_static(&["build", "-p", "cork", "--bin", "cork"])?;
    let find = |built: &[(String, PathBuf)], name: &str| {
        built.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone()).with_context(|| format!("cargo reported no {name} executable"))
    };
    let mut out = Vec::new();
    for (_, test, staged) in GUESTS {
        out.push((find(&tests, test)?, *staged));
    }
    out.push((find(&bins, "cork")?, "cork"));
    Ok(out)
}

/// Copies a module tree, decompressing compressed modules to plain `.ko`.
fn copy_modules(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() {
            copy_modules(&entry.path(), &to.join(&name))?;
        } else if let Some((plain, tool)) = compressed_module(&name) {
            let out = fs::File::create(to.join(plain))?;
            let mut cmd = Command::new(tool);
            cmd.args(["-d", "-c", "-q"]).arg(entry.path()).stdout(out);
            run_checked(&mut cmd).with_context(|| format!("decompressing {} (is {tool} installed?)", entry.path().display()))?;
        } else {
            fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Lays out the guest's root file system for `kernel` in `root`.
fn stage_root(root: &Path, kernel: &KernelLayout, busybox: &Path, guests: &[(PathBuf, &str)]) -> Result<()> {
    let _ = fs::remove_dir_all(root);
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    let release = &kernel.release;
    let guest_modules = root.join("lib/modules").join(release);
    fs::create_dir_all(&guest_modules)?;
    for dir in MODULE_DIRS {
        let src = kernel.modules.join(dir);
        if src.is_dir() {
            copy_modules(&src, &guest_modules.join(dir))?;
        } else {
            step(&format!("note: {release} has no {dir}; skipped"));
        }
    }
    let order = kernel.modules.join("modules.order");
    if order.exists() {
        // Names as staged: without the compression suffix.
        let plain: String = fs::read_to_string(&order)?
            .lines()
            .map(|l| compressed_module(l).map_or_else(|| l.to_string(), |(plain, _)| plain) + "\n")
            .collect();
        fs::write(guest_modules.join("modules.order"), plain)?;
    }
    let builtin = kernel.modules.join("modules.builtin");
    if builtin.exists() {
        fs::copy(&builtin, guest_modules.join("modules.builtin"))?;
    }
    fs::copy(busybox.join("bin/busybox"), root.join("bin/busybox"))?;
    // busybox's depmod writes modules.dep for busybox's modprobe in the guest.
    run_checked(Command::new(root.join("bin/busybox")).arg("depmod").arg("-b").arg(root).arg(release))?;
    stage_strace(root);
    fs::write(root.join("init"), INIT)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    for (guest, name) in guests {
        let dest = root.join(name);
        fs::copy(guest, &dest)?;
        // Debug info would be most of a static test binary, and the initramfs lives in the
        // guest's RAM.
        if !Command::new("strip").arg("--strip-debug").arg(&dest).status().map(|s| s.success()).unwrap_or(false) {
            step(&format!("note: could not strip {} (binutils missing?); staging it whole", dest.display()));
        }
    }
    Ok(())
}

/// Appends one newc header + name + data, padded to 4 bytes.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() & 3 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

/// Archives `root` as a newc cpio (the format the kernel unpacks into its initramfs).
fn cpio(root: &Path) -> Result<Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<u8>, ino: &mut u32) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let meta = entry.metadata()?;
            *ino += 1;
            if meta.is_dir() {
                cpio_entry(out, *ino, &name, 0o040755, &[]);
                walk(root, &path, out, ino)?;
            } else {
                let mode = 0o100000 | (meta.permissions().mode() & 0o777);
                cpio_entry(out, *ino, &name, mode, &fs::read(&path)?);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    let mut ino = 0;
    walk(root, root, &mut out, &mut ino)?;
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    Ok(out)
}

fn gzip(data: &[u8], dest: &Path) -> Result<()> {
    let mut child = Command::new("gzip").args(["-1", "-n", "-c"]).stdin(Stdio::piped()).stdout(fs::File::create(dest)?).spawn().context("starting gzip")?;
    child.stdin.take().context("gzip stdin")?.write_all(data)?;
    if !child.wait()?.success() {
        bail!("gzip failed");
    }
    Ok(())
}

/// Boots the guest with `cmdline`, streaming its console here; returns QEMU's exit status.
/// Copies the host's `strace` and the libraries it loads into the guest root at the same
/// paths, for the bench's syscall counts. Without it the bench says it did not count.
fn stage_strace(root: &Path) {
    let strace = Path::new("/usr/bin/strace");
    if !strace.exists() {
        step("note: no /usr/bin/strace on this host; the guest bench will not count syscalls");
        return;
    }
    let libs = match output(Command::new("ldd").arg(strace)) {
        Ok(text) => text,
        Err(e) => {
            step(&format!("note: ldd {}: {e:#}; the guest bench will not count syscalls", strace.display()));
            return;
        }
    };
    // Lines are `name => /path (addr)` or `/path (addr)` for the loader.
    let paths = libs.lines().filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from));
    for path in std::iter::once(strace.to_path_buf()).chain(paths) {
        let dest = root.join(path.strip_prefix("/").unwrap_or(&path));
        let copied = dest.parent().map_or(Ok(()), fs::create_dir_all).and_then(|()| fs::copy(&path, &dest).map(|_| ()));
        if let Err(e) = copied {
            step(&format!("note: staging {}: {e}; the guest bench will not count syscalls", path.display()));
            let _ = fs::remove_file(root.join("usr/bin/strace"));
            return;
        }
    }
}

/// Boots the guest, streaming its console here; returns QEMU's exit status and the console
/// lines that start with `[bench] ` (the guest bench's results).
fn boot(kernel: &Path, initrd: &Path, cmdline: &str) -> Result<(i32, Vec<String>)> {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M", "-nographic", "-no-reboot", "-nic", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    step(&format!("booting {} with \"{cmdline}\" (TCG; console follows)", kernel.display()));
    let mut child = cmd.spawn().with_context(|| format!("starting {QEMU}"))?;
    let console = child.stdout.take().context("QEMU's console")?;
    let echo = std::thread::spawn(move || {
        let mut bench = Vec::new();
        let mut console = std::io::BufReader::new(console);
        let mut raw = Vec::new();
        // Byte lines: the console carries terminal escapes that need not be UTF-8.
        while matches!(std::io::BufRead::read_until(&mut console, b'\n', &mut raw), Ok(n) if n > 0) {
            let _ = std::io::stdout().write_all(&raw);
            let line = String::from_utf8_lossy(&raw);
            if let Some(at) = line.find("[bench] ") {
                bench.push(line[at + "[bench] ".len()..].trim_end().to_string());
            }
            raw.clear();
        }
        bench
    });
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let code = status.code().with_context(|| format!("{QEMU} was killed by a signal"))?;
            return Ok((code, echo.join().unwrap_or_default()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest did not finish within {}s; see its console above", BOOT_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cargo xtask vm [--keep]`, on every kernel in [`KERNELS`] (what `cargo xtask test` runs).
pub fn run(keep: bool) -> Result<()> {
    run_kernels(keep, None)
}

/// `cargo xtask vm [--keep] [--kernel NAME]`: the guest tests on the kernel named `only`, or on
/// every kernel in [`KERNELS`]. `keep` leaves each staged guest root in
/// `target/vm/initramfs-<kernel>-root` for inspection.
pub fn run_kernels(keep: bool, only: Option<&str>) -> Result<()> {
    if std::env::consts::ARCH != "x86_64" {
        step(&format!("SKIPPED: the guest VM boots an x86_64 Debian kernel; this host is {}", std::env::consts::ARCH));
        return Ok(());
    }
    let kernels: Vec<&Kernel> = match only {
        None => KERNELS.iter().collect(),
        Some(name) => vec![KERNELS.iter().find(|k| k.name == name).with_context(|| {
            let names: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
            format!("no kernel named {name:?}; the VM boots {}", names.join(" or "))
        })?],
    };
    let started = Instant::now();
    ensure_qemu()?;
    let dir = vm_dir();
    fs::create_dir_all(&dir)?;
    // Every download first, so a network failure shows before the long build.
    let kernel_dirs = kernels.iter().map(|k| ensure_kernel(k)).collect::<Result<Vec<_>>>()?;
    let prepared = prepare()?;
    let mut verdicts = Vec::new();
    for (kernel, kernel_dir) in kernels.iter().zip(&kernel_dirs) {
        let boot_started = Instant::now();
        let mut label = kernel.name.to_string();
        let verdict = run_on(kernel, kernel_dir, &prepared, keep, &mut label);
        let secs = boot_started.elapsed().as_secs();
        match &verdict {
            Ok(()) => step(&format!("{label}: guest tests (kTLS, bottle steering) passed ({secs}s)")),
            Err(e) => step(&format!("{label}: FAILED ({secs}s): {e:#}")),
        }
        verdicts.push((label, verdict.is_ok(), secs));
    }
    step(&format!("summary ({}s in all):", started.elapsed().as_secs()));
    for (label, passed, secs) in &verdicts {
        step(&format!("  {label}: {} ({secs}s)", if *passed { "passed" } else { "FAILED" }));
    }
    let failed: Vec<_> = verdicts.iter().filter(|(_, passed, _)| !passed).map(|(label, _, _)| label.as_str()).collect();
    if !failed.is_empty() {
        bail!("the guest tests failed on {} (see the console and the FAILED lines above)", failed.join(" and "));
    }
    Ok(())
}

/// Stages an initramfs for one kernel and boots it; `label` becomes the kernel's name with its
/// release and rekey flag once they are known.
/// What every boot needs besides its kernel: busybox, the eBPF object and the guest binaries,
/// and where to stage.
struct Prepared {
    busybox: PathBuf,
    guests: Vec<(PathBuf, &'static str)>,
    stage: PathBuf,
}

fn prepare() -> Result<Prepared> {
    let busybox = vm_dir().join("busybox");
    if !is_unpacked(&busybox) {
        unpack(&[BUSYBOX_PACKAGE.to_string()], &[], &busybox)?;
    }
    // cork-bottle embeds the eBPF object at compile time; the bottle guest test fails without it.
    crate::ebpf::build()?;
    let guests = build_guests()?;
    // Staged under this checkout's target/, not the shared download cache.
    let stage = repo_root().join("target/vm");
    fs::create_dir_all(&stage)?;
    Ok(Prepared { busybox, guests, stage })
}

/// Stages a guest root for `layout` and packs it as `<stage>/<name>.cpio.gz`; `keep` leaves the
/// root in `<stage>/<name>-root`.
fn initramfs(prepared: &Prepared, layout: &KernelLayout, name: &str, keep: bool) -> Result<PathBuf> {
    let root = prepared.stage.join(format!("{name}-root"));
    stage_root(&root, layout, &prepared.busybox, &prepared.guests)?;
    let initrd = prepared.stage.join(format!("{name}.cpio.gz"));
    gzip(&cpio(&root)?, &initrd)?;
    step(&format!("initramfs {} ({} KiB) for kernel {}", initrd.display(), fs::metadata(&initrd)?.len() / 1024, layout.release));
    if !keep {
        fs::remove_dir_all(&root)?;
    }
    Ok(initrd)
}

fn run_on(kernel: &Kernel, kernel_dir: &Path, prepared: &Prepared, keep: bool, label: &mut String) -> Result<()> {
    let layout = kernel_layout(kernel_dir)?;
    let rekey = rekey_supported(&layout.release)?;
    *label = format!("{} ({}, cork_rekey={})", kernel.name, layout.release, u8::from(rekey));
    let initrd = initramfs(prepared, &layout, &format!("initramfs-{}", kernel.name), keep)?;
    let cmdline = format!("console=ttyS0 panic=-1 quiet cork_rekey={}", u8::from(rekey));
    match boot(&layout.vmlinuz, &initrd, &cmdline)?.0 {
        GUEST_PASSED => Ok(()),
        3 => bail!("a guest test failed (see [guest] FAIL lines above)"),
        other => bail!("the guest exited without a verdict (QEMU status {other}): it panicked, powered off or never ran the test"),
    }
}

/// The guest bench for `cargo xtask bench`: boots `kernel` (a name in [`KERNELS`]) with
/// `cork_mode=bench` and returns its release and the JSON line the proxy guest printed per
/// path. Figures from this TCG guest are functional, never speed.
pub fn bench(kernel: &str) -> Result<(String, Vec<String>)> {
    if std::env::consts::ARCH != "x86_64" {
        bail!("the guest VM boots an x86_64 Debian kernel; this host is {}", std::env::consts::ARCH);
    }
    let kernel = KERNELS.iter().find(|k| k.name == kernel).with_context(|| format!("no kernel named {kernel:?}"))?;
    ensure_qemu()?;
    fs::create_dir_all(vm_dir())?;
    let kernel_dir = ensure_kernel(kernel)?;
    let prepared = prepare()?;
    let layout = kernel_layout(&kernel_dir)?;
    let rekey = rekey_supported(&layout.release)?;
    let initrd = initramfs(&prepared, &layout, &format!("bench-initramfs-{}", kernel.name), false)?;
    let cmdline = format!("console=ttyS0 panic=-1 quiet cork_rekey={} cork_mode=bench", u8::from(rekey));
    let (code, lines) = boot(&layout.vmlinuz, &initrd, &cmdline)?;
    if code != GUEST_PASSED {
        bail!("the guest bench exited with QEMU status {code}");
    }
    Ok((layout.release, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rekey_follows_major_minor() {
        assert!(!rekey_supported("6.1.0-57-cloud-amd64").unwrap());
        assert!(!rekey_supported("6.13.7-cloud-amd64").unwrap());
        assert!(rekey_supported("6.14.0-1-cloud-amd64").unwrap());
        assert!(rekey_supported("7.3.4+deb13-cloud-amd64").unwrap());
        assert!(rekey_supported("cloud").is_err());
    }

    #[test]
    fn compressed_modules_lose_their_suffix() {
        assert_eq!(compressed_module("kernel/net/tls/tls.ko.xz"), Some(("kernel/net/tls/tls.ko".into(), "xz")));
        assert_eq!(compressed_module("aesni-intel.ko.zst"), Some(("aesni-intel.ko".into(), "zstd")));
        assert_eq!(compressed_module("tls.ko"), None);
    }
}
