//! `cork`: the egress guard for sandboxed AI agents.

mod bottle_cmd;
mod config_cmd;
mod mcp_cmd;
mod mcp_http;
mod mcp_ws;
mod run;
mod scan_cmd;
mod setup;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cork", version, about = "The egress guard for sandboxed AI agents", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy: an explicit HTTP(S) proxy that intercepts TLS, scans and enforces policy.
    Run(run::RunArgs),
    /// Write or validate a policy file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a command in a bottle (transparent steering by eBPF), list or remove bottles.
    #[command(subcommand)]
    Bottle(bottle_cmd::BottleCommand),
    /// MCP: relay a server through cork's MCP checks (`cork mcp proxy`).
    #[command(subcommand)]
    Mcp(mcp_cmd::McpCommand),
    /// Scan recorded exchanges (JSON lines) offline and print a verdict for each.
    Scan {
        /// Input file of JSON lines, or `-` for standard input.
        #[arg(default_value = "-")]
        input: String,
        /// Policy whose `scan` section configures the engine (default: the embedded policy).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Write the default policy, with comments, to FILE (or `-` for standard output).
    Init {
        #[arg(default_value = "cork.yaml")]
        file: String,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Validate a policy file; errors name their line and column.
    Check { file: PathBuf },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result: Result<std::process::ExitCode> = match cli.command {
        Command::Run(args) => run::run(args).map(|_| std::process::ExitCode::SUCCESS),
        Command::Config(ConfigCommand::Init { file, force }) => config_cmd::init(&file, force).map(|_| std::process::ExitCode::SUCCESS),
        Command::Config(ConfigCommand::Check { file }) => config_cmd::check(&file),
        Command::Scan { input, config } => scan_cmd::scan(&input, config.as_deref()),
        Command::Bottle(command) => bottle_cmd::main(command),
        Command::Mcp(command) => mcp_cmd::main(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cork: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
