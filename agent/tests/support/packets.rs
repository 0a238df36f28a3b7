//! Crafted TCP, UDP and ICMP frames with valid checksums, and readers of their fields.
use super::{FABRIC_MAC, HOST_A, MAC_A, POD_A, UPLINK_MAC, eth, ones_complement_sum};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// Ethernet + IPv4 (TTL 64, valid checksum) around `l4`, whose checksum (if any) is computed
/// here over the pseudo-header.
pub fn frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    mut l4: Vec<u8>,
) -> Vec<u8> {
    match proto {
        TCP => set_l4_checksum(&mut l4, 16, src, dst, proto),
        UDP if l4[6..8] != [0, 0] => set_l4_checksum(&mut l4, 6, src, dst, proto),
        ICMP => {
            l4[2..4].copy_from_slice(&[0, 0]);
            let c = !ones_complement_sum(&l4);
            l4[2..4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
    let mut f = eth(macs.0, macs.1, 0x0800);
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let check = !ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&l4);
    f
}

pub fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let mut bytes = Vec::from(src);
    bytes.extend_from_slice(&dst);
    bytes.extend_from_slice(&[0, proto]);
    bytes.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    bytes.extend_from_slice(l4);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    ones_complement_sum(&bytes)
}

pub fn set_l4_checksum(l4: &mut [u8], at: usize, src: [u8; 4], dst: [u8; 4], proto: u8) {
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let c = !pseudo_sum(src, dst, proto, l4);
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(b"data");
    t
}

pub fn udp_segment(sport: u16, dport: u16, zero_checksum: bool) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 12, 0, 0]);
    u.extend_from_slice(b"ping");
    if !zero_checksum {
        u[6] = 0xff; // any non-zero value: `frame` computes the real one
    }
    u
}

pub fn echo(kind: u8, id: u16) -> Vec<u8> {
    let mut e = vec![kind, 0, 0, 0];
    e.extend_from_slice(&id.to_be_bytes());
    e.extend_from_slice(&[0, 1, b'p', b'i', b'n', b'g']);
    e
}

/// From pod A (its MAC, to its gateway).
pub fn from_pod_a(dst: [u8; 4], proto: u8, l4: Vec<u8>) -> Vec<u8> {
    frame((HOST_A, MAC_A), POD_A, dst, proto, l4)
}

/// From the fabric to the node's uplink.
pub fn from_fabric(src: [u8; 4], dst: [u8; 4], proto: u8, l4: Vec<u8>) -> Vec<u8> {
    frame((UPLINK_MAC, FABRIC_MAC), src, dst, proto, l4)
}

pub fn ip_src(f: &[u8]) -> [u8; 4] {
    f[26..30].try_into().unwrap()
}
pub fn ip_dst(f: &[u8]) -> [u8; 4] {
    f[30..34].try_into().unwrap()
}
pub fn sport(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[34], f[35]])
}
pub fn dport(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[36], f[37]])
}

/// Every checksum of an IPv4 frame verifies: the IP header's and the L4 one (a zero UDP
/// checksum is "none").
pub fn assert_checksums(f: &[u8]) {
    assert_eq!(
        ones_complement_sum(&f[14..34]),
        0xffff,
        "IP header checksum"
    );
    let l4 = &f[34..];
    match f[23] {
        TCP => assert_eq!(
            pseudo_sum(ip_src(f), ip_dst(f), TCP, l4),
            0xffff,
            "TCP checksum"
        ),
        UDP if l4[6..8] != [0, 0] => {
            assert_eq!(
                pseudo_sum(ip_src(f), ip_dst(f), UDP, l4),
                0xffff,
                "UDP checksum"
            )
        }
        ICMP => assert_eq!(ones_complement_sum(l4), 0xffff, "ICMP checksum"),
        _ => {}
    }
}
