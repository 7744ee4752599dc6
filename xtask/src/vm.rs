//! `cargo xtask vm`: the kTLS proof, and a second kernel for the bottles' eBPF programs. Boots a
//! real kTLS kernel under QEMU and runs the guest tests: cork-ktls's
//! (`userspace/cork-ktls/tests/vm_guest.rs`), cork's proxy data path on kTLS
//! (`userspace/cork-proxy/tests/ktls_vm_guest.rs`), and bottle steering with every eBPF program
//! attached to a cgroup v2 (`userspace/cork-bottle/tests/steering_vm_guest.rs`), so the programs
//! are verified and run on 6.1 as well as on the host's kernel.
//!
//! The host kernel may have no CONFIG_TLS, and a container cannot load modules, so the proof
//! runs in a VM: Debian bookworm's cloud kernel (6.1, `tls.ko`), booted with TCG (no KVM
//! needed), with an initramfs of busybox, the tls and crypto modules and the statically linked
//! test binary. Nothing is installed on the host except QEMU: the kernel and busybox `.deb`s
//! are downloaded and unpacked under `.tools/vm/`, once.
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
const BUSYBOX_PACKAGE: &str = "busybox-static";
const QEMU_PACKAGE: &str = "qemu-system-x86";
const QEMU: &str = "qemu-system-x86_64";
/// The rust target of the guest binary; static glibc, so the initramfs needs no libraries.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Module directories the guest needs: kTLS itself and the AEADs it instantiates.
const MODULE_DIRS: &[&str] = &["kernel/net/tls", "kernel/crypto", "kernel/arch/x86/crypto", "kernel/lib/crypto"];
/// The whole boot and test take well under a minute on TCG; this only stops a hung guest.
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

/// Downloads `package`'s .deb (not installed) and unpacks it into `dest`, once; a stamp file
/// records what was unpacked, so later runs work offline.
fn ensure_unpacked(package: &str, dest: &Path) -> Result<()> {
    let stamp = dest.with_extension("unpacked");
    if stamp.exists() && dest.exists() {
        return Ok(());
    }
    let downloads = vm_dir().join("debs");
    fs::create_dir_all(&downloads)?;
    step(&format!("downloading {package}"));
    // The download runs as root in a repo directory the _apt user may not reach; say so
    // instead of letting apt warn.
    run_checked(apt_get().current_dir(&downloads).args(["download", "-q", "-o", "APT::Sandbox::User=root", package]))?;
    let prefix = format!("{package}_");
    let deb = fs::read_dir(&downloads)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb")))
        .max()
        .with_context(|| format!("apt-get download {package} left no .deb in {}", downloads.display()))?;
    step(&format!("unpacking {}", deb.display()));
    let _ = fs::remove_dir_all(dest);
    fs::create_dir_all(dest)?;
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))?;
    fs::write(&stamp, package)?;
    Ok(())
}

/// The concrete kernel package behind the meta-package, e.g. linux-image-6.1.0-56-cloud-amd64.
fn kernel_package() -> Result<String> {
    let stamp = vm_dir().join("kernel.unpacked");
    if let Ok(name) = fs::read_to_string(&stamp) {
        return Ok(name);
    }
    let mut deps = output(Command::new("apt-cache").args(["depends", KERNEL_META]));
    if deps.is_err() && is_root() {
        step("apt-get update (to find the kernel package)");
        run_checked(apt_get().args(["update", "-q"]))?;
        deps = output(Command::new("apt-cache").args(["depends", KERNEL_META]));
    }
    deps?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("apt-cache depends {KERNEL_META} names no linux-image package"))
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

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Lays out the guest's root file system in `root`.
fn stage_root(root: &Path, kernel: &Path, busybox: &Path, guests: &[(PathBuf, &str)]) -> Result<String> {
    let _ = fs::remove_dir_all(root);
    let modules = kernel.join("lib/modules");
    let release = fs::read_dir(&modules)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("no kernel release under {}", modules.display()))?;
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        fs::create_dir_all(root.join(dir))?;
    }
    let guest_modules = root.join("lib/modules").join(&release);
    for dir in MODULE_DIRS {
        copy_tree(&modules.join(&release).join(dir), &guest_modules.join(dir))?;
    }
    for file in ["modules.order", "modules.builtin"] {
        let src = modules.join(&release).join(file);
        if src.exists() {
            fs::copy(&src, guest_modules.join(file))?;
        }
    }
    fs::copy(busybox.join("bin/busybox"), root.join("bin/busybox"))?;
    // busybox's depmod writes modules.dep for busybox's modprobe in the guest.
    run_checked(Command::new(root.join("bin/busybox")).arg("depmod").arg("-b").arg(root).arg(&release))?;
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
    Ok(release)
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

/// Boots the guest, streaming its console here; returns QEMU's exit status.
fn boot(kernel: &Path, initrd: &Path) -> Result<i32> {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512M", "-nographic", "-no-reboot", "-nic", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null());
    step(&format!("booting {} (TCG; console follows)", kernel.display()));
    let mut child = cmd.spawn().with_context(|| format!("starting {QEMU}"))?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return status.code().with_context(|| format!("{QEMU} was killed by a signal"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest did not finish within {}s; see its console above", BOOT_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cargo xtask vm [--keep]`. `keep` leaves the staged guest root in `target/vm/guest-root` for
/// inspection.
pub fn run(keep: bool) -> Result<()> {
    if std::env::consts::ARCH != "x86_64" {
        step(&format!("SKIPPED: the guest VM boots an x86_64 Debian kernel; this host is {}", std::env::consts::ARCH));
        return Ok(());
    }
    let started = Instant::now();
    ensure_qemu()?;
    let dir = vm_dir();
    fs::create_dir_all(&dir)?;
    let kernel_pkg = kernel_package()?;
    let kernel_dir = dir.join("kernel");
    ensure_unpacked(&kernel_pkg, &kernel_dir)?;
    let busybox_dir = dir.join("busybox");
    ensure_unpacked(BUSYBOX_PACKAGE, &busybox_dir)?;
    // cork-bottle embeds the eBPF object at compile time; the bottle guest test fails without it.
    crate::ebpf::build()?;
    let guests = build_guests()?;

    // Staged under this checkout's target/, not the shared download cache.
    let stage = repo_root().join("target/vm");
    fs::create_dir_all(&stage)?;
    let root = stage.join("guest-root");
    let release = stage_root(&root, &kernel_dir, &busybox_dir, &guests)?;
    let initrd = stage.join("initramfs.cpio.gz");
    gzip(&cpio(&root)?, &initrd)?;
    step(&format!("initramfs {} ({} KiB) for kernel {release}", initrd.display(), fs::metadata(&initrd)?.len() / 1024));
    if !keep {
        fs::remove_dir_all(&root)?;
    }
    let vmlinuz = kernel_dir.join("boot").join(format!("vmlinuz-{release}"));
    let code = boot(&vmlinuz, &initrd)?;
    match code {
        GUEST_PASSED => {
            step(&format!("guest tests (kTLS, bottle steering) passed on {release} ({}s in all)", started.elapsed().as_secs()));
            Ok(())
        }
        3 => bail!("a guest test failed (see [guest] FAIL lines above)"),
        other => bail!("the guest exited without a verdict (QEMU status {other}): it panicked, powered off or never ran the test"),
    }
}
