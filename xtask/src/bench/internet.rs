//! The pod-to-internet path of the bench: before measuring it, proof that each dataplane
//! translates (the internet host sees the node's address, not the pod's).
//!
//! The lab's edge router has no route to pod addresses, so an untranslated connection gets no
//! answer; a translated one shows the node's primary address as its source at the server.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use super::Pair;
use anyhow::{Context as _, Result, ensure};
use vnetd_lab::tcp_echo;

/// The port of the one-off echo server the check connects to.
const CHECK_PORT: u16 = 7001;

/// One TCP echo from the pair's client to its server (the internet host): returns the address
/// the server saw the client as, which must be the node's `node_ip`.
pub(super) fn check_translated(pair: &Pair, node_ip: Ipv4Addr) -> Result<SocketAddrV4> {
    let report = tcp_echo(
        &pair.client,
        &pair.server,
        pair.server_ip,
        CHECK_PORT,
        Duration::from_secs(3),
    )
    .context("the pod cannot reach the internet host")?;
    let seen = report.server_peer;
    ensure!(
        *seen.ip() == node_ip,
        "the internet host saw the pod as {seen}, not as its node's address {node_ip}: the \
         traffic was not translated to the node's address"
    );
    Ok(seen)
}
