//! What a router does to an IPv4 header it forwards: the TTL goes down by one (with the header
//! checksum updated incrementally, as the kernel's `ip_decrease_ttl`), and a packet whose TTL
//! would reach zero is not forwarded, so routing loops die out and traceroute works.
use network_types::ip::Ipv4Hdr;

/// Decrements the TTL; false if the packet must not be forwarded (TTL <= 1).
#[inline(always)]
pub fn forward_hop(ip: &mut Ipv4Hdr) -> bool {
    if ip.ttl <= 1 {
        return false;
    }
    // The TTL is the high byte of its 16-bit checksum word: the sum grows by 0x0100.
    let check = u32::from(u16::from_be_bytes(ip.check)) + 0x0100;
    ip.check = ((check + u32::from(check >= 0xffff)) as u16).to_be_bytes();
    ip.ttl -= 1;
    true
}
