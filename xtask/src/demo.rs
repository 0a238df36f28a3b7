//! `cargo xtask demo`: a lab, the agent, pods talking through the dataplane.
use std::path::Path;

use anyhow::Result;

pub fn run(_root: &Path, _wait: bool) -> Result<()> {
    println!("demo: not yet");
    Ok(())
}
