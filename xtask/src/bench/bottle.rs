//! cork in transparent mode for the bench: the load generator runs inside a bottle, with no
//! proxy settings, and eBPF steers its connections to cork.
//!
//! One `cork bottle run` serves every scenario, as the explicit proxies do (one CA, one leaf
//! cache, one process whose CPU and RSS are read). Its bottled command is a small shell that runs
//! one load command per line read from its standard input and prints a `done` marker with the
//! exit code, so each load process is created inside the bottle's cgroup and steered.
//!
//! Steering only ever runs inside a private network namespace with no route out (the same rule as
//! the steering tests): as root, `cargo xtask bench` re-runs its measuring part through
//! `tests/netns/isolated.sh`. The origin, cork and the peers all live on loopback in there.
//! Without root there is no bottle, and the report says so.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{cork_config_yaml, workspace_root, Origin, Proc, Proxy};

/// Report name of this setup.
pub const NAME: &str = "cork transparent";
/// Set by tests/netns/isolated.sh inside the namespace it made.
const ISOLATED_ENV: &str = "CORK_NETNS_ISOLATED";
/// The bottled shell: one command per line, each followed by `cork-bench-done <exit code>`.
const SHELL_LOOP: &str = "while IFS= read -r line; do sh -c \"$line\"; echo \"cork-bench-done $?\"; done";
const DONE: &str = "cork-bench-done ";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this process runs in a namespace isolated.sh made (and checked).
pub fn in_isolated_netns() -> bool {
    std::env::var_os(ISOLATED_ENV).is_some()
        && std::fs::read_link("/proc/self/ns/net").ok() != std::fs::read_link("/proc/1/ns/net").ok()
}

/// Why the transparent setup cannot be measured in this process, if it cannot.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root (eBPF steering of a bottle's cgroup)".into());
    }
    if !in_isolated_netns() {
        return Some("steering runs only inside a private network namespace (tests/netns/isolated.sh)".into());
    }
    None
}

/// Whether the measuring part should be re-run inside a private network namespace.
pub fn should_reexec() -> bool {
    is_root() && !in_isolated_netns()
}

/// Re-runs `cargo xtask bench ARGS --no-build` inside a fresh private network namespace, after
/// the installs and the build have been done out here (they need the network).
pub fn reexec_in_netns(args: &[String]) -> Result<()> {
    let wrapper = workspace_root().join("tests/netns/isolated.sh");
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let mut cmd = Command::new(&wrapper);
    cmd.arg(exe).arg("bench").args(args.iter().filter(|a| *a != "--no-build")).arg("--no-build");
    println!("bench: measuring inside a private network namespace (tests/netns/isolated.sh), so a bottle can be steered");
    let status = cmd.status().with_context(|| format!("running {}", wrapper.display()))?;
    if !status.success() {
        bail!("the bench inside the private network namespace failed ({status})");
    }
    Ok(())
}

/// The bottled shell's side: its stdin, and the marker lines its stdout yields.
pub struct Shell {
    stdin: std::process::ChildStdin,
    runs: usize,
    dir: PathBuf,
}

/// What one command run in the bottle left behind.
pub struct Ran {
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Starts `cork bottle run` whose command is the bench shell. The returned proxy's CA is the
/// bottle's own, exported by cork for the bottled command.
pub fn start(bin: &Path, work: &Path, origin: &Origin) -> Result<Proxy> {
    if let Some(why) = unavailable() {
        bail!("{why}");
    }
    if !bin.exists() {
        bail!("{} does not exist", bin.display());
    }
    let dir = work.join("cork-bottle");
    std::fs::create_dir_all(&dir)?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, cork_config_yaml(origin))?;
    let name = format!("bench{}", std::process::id());
    let mut cmd = Command::new(bin);
    cmd.args(["bottle", "run", "--name", &name, "--policy"])
        .arg(&policy)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--", "/bin/sh", "-c", SHELL_LOOP]);
    let (mut proc, banner) = Proc::spawn_piped("cork bottle", cmd, &dir.join("cork.log"), "listener=", DONE)?;
    let field = |key: &str| banner.split_whitespace().find_map(|f| f.strip_prefix(key)).map(str::to_owned);
    let listen = field("listener=").context("no listener= in cork's bottle banner")?.parse().context("parsing listener=")?;
    let ca = PathBuf::from(field("ca=").context("no ca= in cork's bottle banner")?);
    let stdin = proc.child.stdin.take().context("the bottle's stdin is not piped")?;
    Ok(Proxy { name: NAME, proc, listen, ca, shell: Some(Shell { stdin, runs: 0, dir }) })
}

/// Shell-quotes one argument for `sh -c`.
fn quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', "'\\''"))
}

impl Shell {
    /// Runs `argv` inside the bottle and waits for it (at most `limit`).
    pub fn run(&mut self, proc: &mut Proc, argv: &[String], limit: Duration) -> Result<Ran> {
        self.runs += 1;
        let out = self.dir.join(format!("run-{}.out", self.runs));
        let err = self.dir.join(format!("run-{}.err", self.runs));
        let mut line: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        line.push(format!("> {} 2> {}", quote(&out.display().to_string()), quote(&err.display().to_string())));
        writeln!(self.stdin, "{}", line.join(" ")).context("writing to the bottled shell")?;
        self.stdin.flush()?;
        let deadline = Instant::now() + limit;
        let code = loop {
            match proc.next_event(Duration::from_millis(500)) {
                Some(l) => {
                    if let Some(code) = l.split(DONE).nth(1) {
                        break code.trim().parse::<i32>().unwrap_or(-1);
                    }
                }
                None if !proc.alive() => bail!("cork bottle run exited while a load was running"),
                None if Instant::now() >= deadline => bail!("the bottled load did not finish within {limit:?}"),
                None => {}
            }
        };
        Ok(Ran { success: code == 0, stdout: std::fs::read(&out).unwrap_or_default(), stderr: std::fs::read(&err).unwrap_or_default() })
    }
}
