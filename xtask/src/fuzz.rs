//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs every cargo-fuzz target in the repository.
//!
//! Only the stable toolchain exists here, so cargo-fuzz runs with `RUSTC_BOOTSTRAP=1` and
//! without a sanitizer (`-s none`): libFuzzer's coverage guidance works, and a panic is a crash.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

use crate::install::{repo_root, run_checked, step};

/// Crates with a `fuzz/` directory of targets.
const FUZZ_DIRS: &[&str] = &["userspace/cork-http/fuzz", "userspace/cork-scan/fuzz"];

fn ensure_cargo_fuzz() -> Result<PathBuf> {
    let root = repo_root().join(".tools/cargo");
    let bin = root.join("bin/cargo-fuzz");
    if !bin.exists() {
        step("installing cargo-fuzz into .tools/cargo");
        run_checked(Command::new("cargo").args(["install", "--locked", "cargo-fuzz", "--root"]).arg(&root))?;
    }
    Ok(bin)
}

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = 30u64;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => seconds = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| anyhow::anyhow!("--seconds needs a number"))?,
            other if other.starts_with('-') => bail!("unknown option {other}"),
            target => only.push(target.to_string()),
        }
    }
    let cargo_fuzz = ensure_cargo_fuzz()?;
    for dir in FUZZ_DIRS {
        let crate_dir = repo_root().join(dir).parent().expect("fuzz dirs sit in a crate").to_path_buf();
        if !repo_root().join(dir).exists() {
            continue;
        }
        let listed = Command::new(&cargo_fuzz).arg("list").current_dir(&crate_dir).output()?;
        for target in String::from_utf8_lossy(&listed.stdout).lines().map(str::trim).filter(|t| !t.is_empty()) {
            if !only.is_empty() && !only.iter().any(|o| o == target) {
                continue;
            }
            step(&format!("fuzzing {dir}:{target} for {seconds} s"));
            run_checked(
                Command::new(&cargo_fuzz)
                    .args(["run", "-s", "none", target, "--", &format!("-max_total_time={seconds}")])
                    .current_dir(&crate_dir)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("CARGO_TARGET_DIR", repo_root().join("target/fuzz")),
            )?;
        }
    }
    Ok(())
}
