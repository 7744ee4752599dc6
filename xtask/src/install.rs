use anyhow::Result;
pub fn run_cork(_args: &[String]) -> Result<()> { Ok(()) }
pub fn test_all() -> Result<()> { Ok(()) }
