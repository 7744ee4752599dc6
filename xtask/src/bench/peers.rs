//! The peers cork is compared with: mitmproxy (`mitmdump`, regular mode) and Squid with
//! `ssl_bump`. Both are installed by xtask (idempotently, cached under `.tools/`) and configured
//! here, from files generated into the run directory, against the same origin as cork.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{free_port, workspace_root, Origin, Proc, Proxy, ORIGIN_IP, ORIGIN_NAME};

/// Newest mitmproxy that supports Python 3.11 (Debian 12's and this repo's Python).
pub const MITMPROXY_VERSION: &str = "11.0.2";
/// Debian's Squid build with OpenSSL, needed for `ssl_bump`.
const SQUID_PACKAGE: &str = "squid-openssl";
const SQUID_CERTGEN: &str = "/usr/lib/squid/security_file_certgen";

fn step(msg: &str) {
    println!("bench: {msg}");
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Installs

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs missing Debian packages, archives cached in `.tools/apt-archives`. Waits for the dpkg
/// lock rather than failing, since other work on the machine may be installing too.
pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("missing Debian packages {missing:?}; install them as root (apt-get install {})", missing.join(" "));
    }
    let archives = workspace_root().join(".tools/apt-archives");
    std::fs::create_dir_all(archives.join("partial"))?;
    let cache = format!("-oDir::Cache::Archives={}", archives.display());
    step(&format!("apt-get update (to install {})", missing.join(", ")));
    run_checked(Command::new("apt-get").args(["update", "-q", "-oDPkg::Lock::Timeout=300"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    step(&format!("apt-get install {}", missing.join(" ")));
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "-oDPkg::Lock::Timeout=300", &cache])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// `.tools/mitmproxy-venv` with mitmproxy pinned; returns the path of `mitmdump`.
pub fn ensure_mitmproxy() -> Result<PathBuf> {
    let venv = workspace_root().join(".tools/mitmproxy-venv");
    let mitmdump = venv.join("bin/mitmdump");
    let python = venv.join("bin/python");
    let pinned = format!("mitmproxy=={MITMPROXY_VERSION}");
    let have = Command::new(&python).args(["-m", "pip", "freeze"]).output();
    if matches!(&have, Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == pinned)) && mitmdump.exists() {
        return Ok(mitmdump);
    }
    if !python.exists() {
        step(&format!("creating a Python virtualenv for mitmproxy in {}", venv.display()));
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    step(&format!("pip install {pinned} (into {})", venv.display()));
    run_checked(Command::new(&python).args(["-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "on", &pinned]))?;
    Ok(mitmdump)
}

/// Installs Squid with OpenSSL. Debian's package may start a system-wide squid; the bench runs
/// its own, so stop that one if it is running (the bench leaves no service behind).
pub fn ensure_squid() -> Result<PathBuf> {
    let fresh = !dpkg_installed(SQUID_PACKAGE);
    ensure_apt(&[SQUID_PACKAGE, "openssl"])?;
    if fresh {
        stop_system_squid();
    }
    let squid = PathBuf::from("/usr/sbin/squid");
    if !squid.exists() || !Path::new(SQUID_CERTGEN).exists() {
        bail!("{SQUID_PACKAGE} is installed but {} or {SQUID_CERTGEN} is missing", squid.display());
    }
    Ok(squid)
}

fn stop_system_squid() {
    let pid = std::fs::read_to_string("/run/squid.pid").ok().and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        if Path::new(&format!("/proc/{pid}")).exists() {
            step(&format!("stopping the system squid the package started (pid {pid})"));
            let stopped = Command::new("invoke-rc.d").args(["squid", "stop"]).status().map(|s| s.success()).unwrap_or(false);
            if !stopped {
                // SAFETY: kill with a pid read from squid's own pid file.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// mitmproxy

/// mitmproxy resolves upstream hosts itself. This addon pins the origin's name to its loopback
/// address (as cork's `upstream.resolve` and Squid's `hosts_file` do) and keeps the SNI and
/// certificate check on the name.
fn mitm_addon() -> String {
    format!(
        "# Generated by cargo xtask bench.\n\
         PIN = {{{name:?}: {ip:?}}}\n\n\
         def server_connect(data):\n    \
             host, port = data.server.address\n    \
             ip = PIN.get(host)\n    \
             if ip is not None:\n        \
                 if data.server.sni is None:\n            \
                     data.server.sni = host\n        \
                 data.server.address = (ip, port)\n",
        name = ORIGIN_NAME,
        ip = ORIGIN_IP,
    )
}

pub fn start_mitmproxy(mitmdump: &Path, work: &Path, origin: &Origin) -> Result<Proxy> {
    let dir = work.join("mitmproxy");
    std::fs::create_dir_all(&dir)?;
    let addon = dir.join("pin_origin.py");
    std::fs::write(&addon, mitm_addon())?;
    let listen = free_port("127.0.0.1")?;
    let mut cmd = Command::new(mitmdump);
    cmd.args(["--mode", "regular", "--listen-host", "127.0.0.1", "--listen-port", &listen.port().to_string()])
        .args(["--set", &format!("confdir={}", dir.join("conf").display())])
        .args(["--set", &format!("ssl_verify_upstream_trusted_ca={}", origin.ca.display())])
        // No per-flow log lines: printing every request would cost mitmproxy CPU cork doesn't spend.
        .args(["--set", "flow_detail=0"])
        .arg("-s")
        .arg(&addon);
    let (proc, _line) = Proc::spawn("mitmdump", cmd, &dir.join("mitmdump.log"), "proxy listening at")?;
    let ca = dir.join("conf/mitmproxy-ca-cert.pem");
    if !ca.exists() {
        bail!("mitmdump is listening but wrote no {}", ca.display());
    }
    Ok(Proxy { name: "mitmproxy", proc, listen, ca, shell: None })
}

// ---------------------------------------------------------------------------------------------
// Squid

fn squid_conf(dir: &Path, listen: SocketAddr, origin: &Origin) -> String {
    let d = dir.display();
    format!(
        "# Generated by cargo xtask bench: Squid bumping every CONNECT, no caching.\n\
         http_port {listen} ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB cert={d}/ca.pem\n\
         sslcrtd_program {SQUID_CERTGEN} -s {d}/ssl_db -M 16MB\n\
         sslcrtd_children 4 startup=1 idle=1\n\
         # Client-first bumping: the leaf is minted from the CONNECT name, as cork does.\n\
         ssl_bump bump all\n\
         tls_outgoing_options cafile={origin_ca}\n\
         # The origin's name, pinned like cork's upstream.resolve.\n\
         hosts_file {d}/hosts\n\
         http_access allow all\n\
         cache deny all\n\
         cache_mem 0 MB\n\
         access_log none\n\
         cache_log {d}/cache.log\n\
         pid_filename {d}/squid.pid\n\
         coredump_dir {d}\n\
         cache_effective_user proxy\n\
         pinger_enable off\n\
         shutdown_lifetime 1 seconds\n\
         max_filedescriptors 65536\n",
        origin_ca = origin.ca.display(),
    )
}

pub fn start_squid(squid: &Path, work: &Path, origin: &Origin) -> Result<Proxy> {
    let dir = work.join("squid");
    std::fs::create_dir_all(&dir)?;
    // Squid's CA: key and certificate in one PEM for `cert=`, the certificate alone for clients.
    let ca_key = dir.join("ca.key");
    let ca_crt = dir.join("ca.crt");
    run_checked(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=cork bench Squid CA", "-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_crt)
            .stderr(std::process::Stdio::null()),
    )
    .context("generating Squid's CA with openssl")?;
    let pem = std::fs::read_to_string(&ca_crt)? + &std::fs::read_to_string(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), pem)?;
    std::fs::write(dir.join("hosts"), format!("{ORIGIN_IP} {ORIGIN_NAME}\n"))?;
    run_checked(
        Command::new(SQUID_CERTGEN).arg("-c").arg("-s").arg(dir.join("ssl_db")).args(["-M", "16MB"]).stdout(std::process::Stdio::null()),
    )
    .context("initialising Squid's certificate db")?;
    let listen = free_port("127.0.0.1")?;
    let conf = dir.join("squid.conf");
    std::fs::write(&conf, squid_conf(&dir, listen, origin))?;
    // Squid drops root for `cache_effective_user`; that user must own its logs and cert db.
    run_checked(Command::new("chown").args(["-R", "proxy:proxy"]).arg(&dir))?;
    let mut cmd = Command::new(squid);
    // -N: foreground, no daemon; -d 1: startup messages on stderr (the ready line).
    cmd.arg("-N").args(["-d", "1"]).arg("-f").arg(&conf);
    let (proc, _line) = Proc::spawn("squid", cmd, &dir.join("squid.log"), "Accepting SSL bumped HTTP Socket connections")?;
    Ok(Proxy { name: "squid", proc, listen, ca: ca_crt, shell: None })
}
