//! `cork-bench-scan [--quick]`: the scanner benchmark (`bench_harness::scan`), printed as a
//! markdown table on stdout, so `cargo xtask bench` can run it in release and paste it in.

use anyhow::Result;

fn main() -> Result<()> {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let report = bench_harness::scan::run(quick)?;
    print!("{}", report.to_markdown());
    Ok(())
}
