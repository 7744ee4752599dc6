//! `cargo xtask`: the project's one entry point for building, running, testing and benchmarking
//! cork. Every subcommand installs what it needs first, idempotently, and says what it is doing.

mod bench;
mod ebpf;
mod fuzz;
mod install;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run, test and benchmark cork")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build cork and start it on its embedded default policy; arguments pass through to `cork run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install test dependencies and run every test.
    Test,
    /// Build the eBPF programs (installs the eBPF toolchain first).
    BuildEbpf,
    /// Run every cargo-fuzz target for a while (`--seconds N`, default 30).
    Fuzz {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Prove kTLS and the bottles' eBPF programs on Debian kernels (6.1 and trixie-backports') booted in QEMU.
    Vm {
        /// Keep each staged guest root in target/vm/initramfs-<kernel>-root.
        #[arg(long)]
        keep: bool,
        /// Boot only this kernel: bookworm (6.1) or trixie-backports (≥ 6.14); both by default.
        #[arg(long, value_name = "NAME")]
        kernel: Option<String>,
    },
    /// Run the benchmark harness.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { args } => install::run_cork(&args),
        Cmd::Test => install::test_all(),
        Cmd::BuildEbpf => ebpf::build().map(|_| ()),
        Cmd::Bench { args } => bench::run(&args),
        Cmd::Fuzz { args } => fuzz::run(&args),
        Cmd::Vm { keep, kernel } => vm::run_kernels(keep, kernel.as_deref()),
    }
}
