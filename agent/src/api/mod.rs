//! The agent's API: a Unix socket serving the CNI plugin and the CLI.
pub mod client;
pub mod netns;
pub mod proto;
pub mod server;
