//! Exists so the agent can name this crate as a build-dependency (cargo then rebuilds the agent
//! when the programs change); the programs themselves are the `vnetd` binary target.
#![no_std]
