//! The agent's spec and compile modules, compiled from their sources (see Cargo.toml).

#[path = "../../agent/src/spec/mod.rs"]
pub mod spec;

#[path = "../../agent/src/compile/mod.rs"]
pub mod compile;
