//! ARP answered in place: the request frame is turned into the reply and sent back out of the
//! interface it came in on.
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::parse::{ARP_REPLY, ARP_REQUEST};

#[inline(always)]
pub fn is_request(arp: &ArpHdr) -> bool {
    arp.oper() == ARP_REQUEST
}

/// Rewrites a request for `arp.tpa` into the reply "tpa is at `mac`".
#[inline(always)]
pub fn make_reply(eth: &mut EthHdr, arp: &mut ArpHdr, mac: &[u8; 6]) {
    let (asker_mac, asker_ip, wanted) = (arp.sha, arp.spa, arp.tpa);
    arp.set_oper(ARP_REPLY);
    arp.sha = *mac;
    arp.spa = wanted;
    arp.tha = asker_mac;
    arp.tpa = asker_ip;
    eth.dst_addr = asker_mac;
    eth.src_addr = *mac;
}
