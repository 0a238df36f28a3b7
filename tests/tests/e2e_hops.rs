//! End to end: the pod's gateway as a router (an expired packet is answered with ICMP time
//! exceeded, so traceroute shows the hop, at a limited rate) and the frames a pod may not send (802.1Q-tagged:
//! the tag would ride in skb metadata past the address checks). Needs root.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use vnetd_lab::{
    Lab, Ns,
    frames::{parse_mac, send_raw, udp_frame},
    serial,
    vnetd::{Agent, Pod, add_pod, lab_with_agent},
};

#[test]
fn an_expired_packet_gets_time_exceeded_from_the_pod_gateway() -> Result<()> {
    let _serial = serial();
    let (_lab, agent, a, b) = node_with_two_pods()?;

    let stdout = a.ping_with_ttl(b.ip, 1)?;
    assert!(
        stdout.contains("From 169.254.1.1") && stdout.contains("Time to live exceeded"),
        "traceroute's first hop is the pod gateway: {stdout}"
    );
    assert_eq!(agent.drops("ttl_exceeded")?, 1);
    assert_eq!(agent.traffic("icmp_error")?, 1);
    assert_eq!(
        agent.traffic("pod_to_pod")?,
        0,
        "the expired packet went nowhere"
    );
    assert_eq!(a.ping_count(b.ip, 1)?, 1, "with TTL to spare it passes");
    Ok(())
}

/// A pod that floods expired packets gets a burst of answers, not one per packet: the
/// gateway's answers are rate limited per CPU (bursts of 50, then one a millisecond), as the
/// kernel's own ICMP errors are; the rest are dropped and counted apart. After a pause,
/// traceroute's probe is answered again.
#[test]
fn a_flood_of_expired_packets_is_answered_at_a_limited_rate() -> Result<()> {
    let _serial = serial();
    let (_lab, agent, a, b) = node_with_two_pods()?;
    // Few enough that no queue on the way drops any before the dataplane sees it.
    const SENT: u64 = 300;
    let sender = a.udp_bind((a.ip, 0).into())?;
    sender.set_ttl(1)?;
    let start = Instant::now();
    for _ in 0..SENT {
        sender.send_to(b"expired", (b.ip, 7000))?;
    }
    // Until every datagram is counted: that is the window the budget refilled in.
    let counted = || -> Result<(u64, u64)> {
        Ok((
            agent.traffic("icmp_error")?,
            agent.drops("time_exceeded_rate_limited")?,
        ))
    };
    let (answered, limited) = loop {
        let (answered, limited) = counted()?;
        if answered + limited >= SENT || start.elapsed() > Duration::from_secs(5) {
            break (answered, limited);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let elapsed_ms = start.elapsed().as_millis() as u64;
    assert_eq!(
        answered + limited,
        SENT,
        "each expired datagram answered or counted as over the limit"
    );
    assert_eq!(agent.drops("ttl_exceeded")?, answered);
    let cpus = std::thread::available_parallelism()?.get() as u64;
    assert!(
        (50..=cpus * (50 + elapsed_ms + 8)).contains(&answered) && limited > 0,
        "{answered} of {SENT} answered within {elapsed_ms} ms on {cpus} CPUs: a burst of 50 \
         a CPU, then one a millisecond"
    );

    std::thread::sleep(Duration::from_millis(100));
    let stdout = a.ping_with_ttl(b.ip, 1)?;
    assert!(
        stdout.contains("Time to live exceeded"),
        "answered again after the flood: {stdout}"
    );
    Ok(())
}

#[test]
fn a_pod_cannot_send_vlan_tagged_frames() -> Result<()> {
    let _serial = serial();
    let (_lab, agent, a, b) = node_with_two_pods()?;
    let gateway_mac = neighbour_mac(&a, "169.254.1.1")?;
    let pod_mac = parse_mac(&a.link_info("eth0")?.mac)?;
    let receiver = b.udp_bind((b.ip, 7000).into())?;
    receiver.set_read_timeout(Some(Duration::from_secs(1)))?;
    let frame = |vlan| udp_frame((gateway_mac, pod_mac), vlan, (a.ip, b.ip), 7000, b"vnetd");
    let send =
        |frame: Vec<u8>| a.in_ns(|| send_raw(nix::net::if_::if_nametoindex("eth0")?, &frame));

    // The raw path itself works: the same frame untagged arrives.
    send(frame(None))?;
    let mut buf = [0u8; 64];
    let (n, from) = receiver.recv_from(&mut buf).context("the untagged frame")?;
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"vnetd"[..], std::net::IpAddr::V4(a.ip))
    );

    // Tagged with VLAN 100: the host veth's receive path moves the tag into the skb's
    // metadata before TC sees it, so the frame looks untagged to a careless program.
    let spoofed_before = agent.drops("spoofed")?;
    send(frame(Some(100)))?;
    assert!(
        receiver.recv_from(&mut buf).is_err(),
        "a tagged frame must not reach the other pod"
    );
    assert_eq!(agent.drops("vlan_tagged")?, 1);
    assert_eq!(agent.drops("spoofed")?, spoofed_before);
    assert_eq!(agent.traffic("pod_to_pod")?, 1, "only the untagged frame");
    Ok(())
}

/// The MAC the pod's kernel resolved `ip` to (the gateway's is a permanent entry).
fn neighbour_mac(pod: &Ns, ip: &str) -> Result<[u8; 6]> {
    let v = pod.ip_json(["neigh", "show", ip, "dev", "eth0"])?;
    parse_mac(v[0]["lladdr"].as_str().context("no neighbour entry")?)
}

/// A lab node running the agent, with two pods in `apps`.
fn node_with_two_pods() -> Result<(Lab, Agent, Pod, Pod)> {
    let (lab, node, agent) = lab_with_agent()?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    Ok((lab, agent, a, b))
}
