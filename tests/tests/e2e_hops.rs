//! End to end: the pod's gateway as a router (an expired packet is answered with ICMP time
//! exceeded, so traceroute shows the hop) and the frames a pod may not send (802.1Q-tagged:
//! the tag would ride in skb metadata past the address checks). Needs root.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result, bail};
use vnetd_lab::{
    Lab, Ns,
    ipnet::Ipv4Net,
    serial,
    vnetd::{Agent, add_pod, lab_spec},
};

fn node_cidr(ip: &str) -> Ipv4Net {
    format!("{ip}/24").parse().unwrap()
}

#[test]
fn an_expired_packet_gets_time_exceeded_from_the_pod_gateway() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, &lab_spec())?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;

    let out = a.run([
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "2",
        "-t",
        "1",
        &b.ip.to_string(),
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
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

#[test]
fn a_pod_cannot_send_vlan_tagged_frames() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let agent = Agent::start(&node, &lab_spec())?;
    let a = add_pod(&lab, &node, "pod-a", Some("apps"), "")?;
    let b = add_pod(&lab, &node, "pod-b", Some("apps"), "")?;
    let gateway_mac = neighbour_mac(&a, "169.254.1.1")?;
    let pod_mac = parse_mac(&a.link_info("eth0")?.mac)?;
    let receiver = b.udp_bind((b.ip, 7000).into())?;
    receiver.set_read_timeout(Some(Duration::from_secs(1)))?;
    let frame = |vlan: Option<u16>| udp_frame(gateway_mac, pod_mac, vlan, a.ip, b.ip, 7000);

    // The raw path itself works: the same frame untagged arrives.
    a.in_ns(|| send_raw(&frame(None)))?;
    let mut buf = [0u8; 64];
    let (n, from) = receiver.recv_from(&mut buf).context("the untagged frame")?;
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"vnetd"[..], std::net::IpAddr::V4(a.ip))
    );

    // Tagged with VLAN 100: the host veth's receive path moves the tag into the skb's
    // metadata before TC sees it, so the frame looks untagged to a careless program.
    let spoofed_before = agent.drops("spoofed")?;
    a.in_ns(|| send_raw(&frame(Some(100))))?;
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
    let mac = v[0]["lladdr"].as_str().context("no neighbour entry")?;
    parse_mac(mac)
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {s:?}"))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("MAC {s:?}"))
}

/// Ethernet (+ 802.1Q tag) + IPv4 + UDP carrying "vnetd", without a UDP checksum.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlan: Option<u16>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
) -> Vec<u8> {
    let payload = b"vnetd";
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    if let Some(id) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&id.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_start = f.len();
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let sum = ones_complement_sum(&f[ip_start..ip_start + 20]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&(!sum).to_be_bytes());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Sends `frame` as is out of eth0 of the calling thread's namespace (AF_PACKET, SOCK_RAW).
fn send_raw(frame: &[u8]) -> Result<()> {
    let ifindex = nix::net::if_::if_nametoindex("eth0").context("eth0")?;
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if sent != frame.len() as isize {
            bail!("sending a raw frame: {err}");
        }
    }
    Ok(())
}
