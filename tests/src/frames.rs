//! Hand-made frames, sent as they are: what a misbehaving pod (or a test standing in for the
//! network) puts on the wire when it bypasses its own IP stack.
use anyhow::{Context as _, Result, bail};

/// Sends `frame` (from its Ethernet header on) out of interface `ifindex` of the calling
/// thread's network namespace, with an AF_PACKET raw socket.
pub fn send_raw(ifindex: u32, frame: &[u8]) -> Result<()> {
    let dst: [u8; 6] = frame
        .get(..6)
        .and_then(|d| d.try_into().ok())
        .context("a frame shorter than an Ethernet address")?;
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
        addr.sll_addr[..6].copy_from_slice(&dst);
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
            bail!("sending a raw frame on ifindex {ifindex}: {err}");
        }
    }
    Ok(())
}

/// Ethernet (+ an 802.1Q tag if `vlan`) + IPv4 (TTL 64, valid header checksum) + UDP from port
/// 40000 carrying `payload`, without a UDP checksum.
pub fn udp_frame(
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    vlan: Option<u16>,
    (src, dst): (std::net::Ipv4Addr, std::net::Ipv4Addr),
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    if let Some(id) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&id.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let ip = f.len();
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let check = !ones_complement_sum(&f[ip..ip + 20]);
    f[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum's one's complement sum of `bytes` (an odd last byte padded).
pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {s:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {s:?} is not 6 bytes"))
}
