//! Prefix arithmetic over IPv4 addresses and 16-bit ports: what the LPM tables are built from.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::spec::PortRange;

/// A block of ports sharing their top `len` bits: the port analogue of a CIDR. `len` 16 is one
/// port, `len` 0 is every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPrefix {
    /// The first port of the block (its low `16 - len` bits are zero).
    pub port: u16,
    /// 0..=16.
    pub len: u8,
}

impl PortPrefix {
    pub const ANY: PortPrefix = PortPrefix { port: 0, len: 0 };

    /// The block of length `len` that contains `port`.
    pub fn truncated(port: u16, len: u8) -> PortPrefix {
        let mask = if len == 0 {
            0
        } else {
            u16::MAX << (16 - u32::from(len.min(16)))
        };
        PortPrefix {
            port: port & mask,
            len: len.min(16),
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        PortPrefix::truncated(port, self.len) == *self
    }

    pub fn first(&self) -> u16 {
        self.port
    }

    pub fn last(&self) -> u16 {
        let size = 1u32 << (16 - u32::from(self.len));
        (u32::from(self.port) + size - 1) as u16
    }
}

impl fmt::Display for PortPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.len)
    }
}

/// Splits an inclusive port range into the fewest aligned blocks that cover it exactly
/// (at most 30 for a 16-bit range).
pub fn port_blocks(range: PortRange) -> Vec<PortPrefix> {
    let mut blocks = Vec::new();
    if range.first > range.last {
        return blocks;
    }
    let (mut start, end) = (u32::from(range.first), u32::from(range.last));
    while start <= end {
        // Grow the block while it stays aligned at `start` and ends inside the range.
        let mut len = 16u32;
        while len > 0 {
            let size = 1u32 << (16 - (len - 1));
            if start % size == 0 && start + size - 1 <= end {
                len -= 1;
            } else {
                break;
            }
        }
        blocks.push(PortPrefix {
            port: start as u16,
            len: len as u8,
        });
        start += 1 << (16 - len);
    }
    blocks
}

/// The prefix of length `len` that contains `net` (`len <= net.prefix_len()`).
pub fn ancestor(net: &Ipv4Net, len: u8) -> Ipv4Net {
    Ipv4Net::new(net.network(), len).map_or(*net, |n| n.trunc())
}

/// The fewest prefixes covering exactly the addresses outside `set`. Used for the `Internet`
/// service tag, the complement of `VirtualNetwork`.
pub fn complement(set: &[Ipv4Net]) -> Vec<Ipv4Net> {
    fn walk(net: Ipv4Net, set: &[Ipv4Net], out: &mut Vec<Ipv4Net>) {
        if set.iter().any(|s| s.contains(&net)) {
            return;
        }
        if !set.iter().any(|s| net.contains(s)) {
            out.push(net);
            return;
        }
        // Some member lies strictly inside `net`, so `net` is shorter than /32 and splits.
        if let Ok(halves) = net.subnets(net.prefix_len() + 1) {
            for half in halves {
                walk(half, set, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Ipv4Net::default(), set, &mut out);
    out
}

/// Whether `addr` is inside any of `nets`.
pub fn in_any(nets: &[Ipv4Net], addr: Ipv4Addr) -> bool {
    nets.iter().any(|net| net.contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_blocks_cover_ranges_exactly() {
        let cases = [
            (0, 65535),
            (80, 80),
            (8000, 8080),
            (1, 65534),
            (1024, 65535),
            (5, 4),
        ];
        for (first, last) in cases {
            let blocks = port_blocks(PortRange { first, last });
            for port in 0..=u16::MAX {
                let inside = first <= port && port <= last;
                let covered = blocks.iter().filter(|b| b.contains(port)).count();
                assert_eq!(
                    covered,
                    usize::from(inside),
                    "{first}-{last} at {port}: {blocks:?}"
                );
            }
        }
        assert_eq!(port_blocks(PortRange::ANY), vec![PortPrefix::ANY]);
        assert_eq!(
            port_blocks(PortRange {
                first: 1,
                last: 65534
            })
            .len(),
            30
        );
    }

    #[test]
    fn complement_of_private_space() {
        let vnet: Vec<Ipv4Net> = vec!["10.0.0.0/16".parse().unwrap()];
        let internet = complement(&vnet);
        assert_eq!(internet.len(), 16);
        assert!(!in_any(&internet, "10.0.3.4".parse().unwrap()));
        assert!(in_any(&internet, "10.1.0.0".parse().unwrap()));
        assert!(in_any(&internet, "8.8.8.8".parse().unwrap()));
        assert_eq!(complement(&[]), vec![Ipv4Net::default()]);
        assert!(complement(&[Ipv4Net::default()]).is_empty());
    }
}
