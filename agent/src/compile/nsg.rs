//! NSG rules compiled to bit-vector classifier tables (the bpf-iptables / Polycube design),
//! so that the eBPF side will classify a packet with a handful of map lookups whatever the
//! number of rules.
//!
//! The running agent installs the classifiers of its node's subnets (`dataplane::maps::nsg`,
//! switched with the route tables by `daemon`) and points each endpoint at its subnet's
//! classifiers, both directions; the eBPF side classifies with them
//! (`ebpf/vnetd-ebpf/src/nsg.rs`). The layout:
//!
//! * Each (NSG, direction) is a *classifier* with an id (1..). Its rule list is the user rules
//!   of that direction by priority, then the three default rules. Rule `i` is bit `i` of a
//!   [`RuleBitmap`] of [`RULE_WORDS`] u64 words.
//! * One table per packet field: source address, destination address (LPM over IPv4
//!   prefixes), source port, destination port (LPM over 16-bit port prefixes), protocol
//!   (exact, over [`ProtoClass`]). Each entry maps (classifier, key) to the bitmap of the rules
//!   whose condition on that field the key satisfies.
//! * Verdict: the lowest set bit of `src & dst & sport & dport & proto` (for a packet without
//!   ports: `src & dst & portless & proto`). The default DenyAll rule matches everything, so a
//!   bit is always set.
//!
//! For a longest-prefix lookup to return the right bitmap, each table's prefix set is *closed*:
//! it holds the /0 prefix and every rule's prefixes, and the bitmap of a prefix P is the union of
//! the rules having some prefix Q that contains P. The longest stored prefix containing an
//! address is contained in every stored prefix that contains the address, so its bitmap is
//! exactly the set of rules matching the address.
//!
//! Service tags (see also the README):
//! * `*` = 0.0.0.0/0;
//! * `VirtualNetwork` = the address space and the connected address spaces. (Azure also puts the
//!   host's virtual IP and UDR prefixes in this tag; vnetd does not, which keeps a 0.0.0.0/0
//!   route through an appliance from turning `VirtualNetwork` into "everything".)
//! * `Internet` = every address outside `VirtualNetwork`, as the fewest covering prefixes;
//! * `AzureLoadBalancer` = 168.63.129.16/32.
//!
//! Packets without ports (ICMP, ESP, AH, any protocol but TCP and UDP) satisfy a rule's port
//! conditions only when both its source and destination port ranges include `*` (0-65535).
//!
//! The BPF encoding (`vnetd_common::nsg`): one `LPM_TRIE` per address table with key
//! `{ prefixlen: u32, classifier: u32 (big-endian), addr: [u8; 4] }` and
//! `prefixlen = 32 + prefix.prefix_len()`, looked up with `prefixlen = 64`; the port tables the
//! same with a big-endian `u16` port (`prefixlen = 32 + len`, lookup 48). Counting the whole
//! classifier id in every prefix keeps classifiers apart: the /0 entry of a classifier has
//! `prefixlen = 32`. The protocol table and `portless` are exact-match (classifier, class) and
//! (classifier) maps, and [`Classifier::rules`] indexes the per-rule hit counters.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use anyhow::bail;
use ipnet::Ipv4Net;

use super::prefix::{PortPrefix, ancestor, port_blocks};
use crate::spec::{
    AZURE_LOAD_BALANCER, Access, AddressPrefix, Direction, NetworkSecurityGroup, PortRange,
    Protocol, SecurityRule, ServiceTag,
};

/// Words in a rule bitmap: 1024 bits, room for Azure's 1000 rules per NSG and the 3 defaults.
pub const RULE_WORDS: usize = vnetd_common::RULE_WORDS;
/// The most rules a classifier holds.
pub const MAX_CLASSIFIER_RULES: usize = RULE_WORDS * 64;

/// Position of a rule in its classifier's rule list (bit index in the bitmaps).
pub type RuleIndex = usize;

/// A set of rules of one classifier: bit `i` of word `i / 64` is rule `i`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleBitmap(pub [u64; RULE_WORDS]);

impl RuleBitmap {
    pub const EMPTY: RuleBitmap = RuleBitmap([0; RULE_WORDS]);

    pub fn insert(&mut self, rule: RuleIndex) {
        self.0[rule / 64] |= 1 << (rule % 64);
    }

    pub fn contains(&self, rule: RuleIndex) -> bool {
        rule < MAX_CLASSIFIER_RULES && self.0[rule / 64] & (1 << (rule % 64)) != 0
    }

    pub fn union_with(&mut self, other: &RuleBitmap) {
        for (word, other) in self.0.iter_mut().zip(other.0) {
            *word |= other;
        }
    }

    pub fn intersection(&self, other: &RuleBitmap) -> RuleBitmap {
        let mut out = *self;
        for (word, other) in out.0.iter_mut().zip(other.0) {
            *word &= other;
        }
        out
    }

    /// The first rule in the set: the matching rule of highest priority.
    pub fn lowest(&self) -> Option<RuleIndex> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, word)| **word != 0)
            .map(|(i, word)| i * 64 + word.trailing_zeros() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.lowest().is_none()
    }
}

impl Default for RuleBitmap {
    fn default() -> Self {
        RuleBitmap::EMPTY
    }
}

impl fmt::Debug for RuleBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = (0..MAX_CLASSIFIER_RULES).filter(|&i| self.contains(i));
        f.debug_set().entries(rules).finish()
    }
}

/// The protocol key of the protocol table. The eBPF side maps the IP header's protocol with
/// [`ProtoClass::from_ip_protocol`] and looks up [`ProtoClass::key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtoClass {
    Tcp,
    Udp,
    Icmp,
    Esp,
    Ah,
    /// Any other IP protocol: only rules with protocol `*` match it.
    Other,
}

impl ProtoClass {
    pub const ALL: [ProtoClass; 6] = [
        ProtoClass::Tcp,
        ProtoClass::Udp,
        ProtoClass::Icmp,
        ProtoClass::Esp,
        ProtoClass::Ah,
        ProtoClass::Other,
    ];

    /// The IP protocol number, 0 for `Other` (0 is IPv6's hop-by-hop header, never an IPv4
    /// payload vnetd classifies otherwise).
    pub fn key(self) -> u8 {
        match self {
            ProtoClass::Tcp => 6,
            ProtoClass::Udp => 17,
            ProtoClass::Icmp => 1,
            ProtoClass::Esp => 50,
            ProtoClass::Ah => 51,
            ProtoClass::Other => 0,
        }
    }

    pub fn from_ip_protocol(protocol: u8) -> ProtoClass {
        match protocol {
            6 => ProtoClass::Tcp,
            17 => ProtoClass::Udp,
            1 => ProtoClass::Icmp,
            50 => ProtoClass::Esp,
            51 => ProtoClass::Ah,
            _ => ProtoClass::Other,
        }
    }

    /// TCP and UDP carry ports; the others use the classifier's `portless` bitmap.
    pub fn has_ports(self) -> bool {
        matches!(self, ProtoClass::Tcp | ProtoClass::Udp)
    }

    fn matched_by(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Any => true,
            Protocol::Tcp => self == ProtoClass::Tcp,
            Protocol::Udp => self == ProtoClass::Udp,
            Protocol::Icmp => self == ProtoClass::Icmp,
            Protocol::Esp => self == ProtoClass::Esp,
            Protocol::Ah => self == ProtoClass::Ah,
        }
    }
}

/// What the dataplane reports about a rule (flow logs, hit counters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMeta {
    pub name: String,
    pub priority: u32,
    pub access: Access,
    /// One of Azure's default rules (priority 65000 and up).
    pub is_default: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    pub prefix: Ipv4Net,
    pub rules: RuleBitmap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    pub prefix: PortPrefix,
    pub rules: RuleBitmap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoEntry {
    pub class: ProtoClass,
    pub rules: RuleBitmap,
}

/// The compiled tables of one (NSG, direction). Map keys for the eBPF side are
/// (`id`, prefix / class); entries are sorted (longest prefix first, then by value).
#[derive(Clone, Debug, PartialEq)]
pub struct Classifier {
    pub id: u32,
    /// The NSG's id (its position in the spec, from 1).
    pub nsg_id: u32,
    pub nsg_name: String,
    pub direction: Direction,
    /// Rule `i` of the bitmaps: user rules by priority, then the defaults.
    pub rules: Vec<RuleMeta>,
    pub src_addr: Vec<AddrEntry>,
    pub dst_addr: Vec<AddrEntry>,
    pub src_port: Vec<PortEntry>,
    pub dst_port: Vec<PortEntry>,
    /// One entry per [`ProtoClass`].
    pub proto: Vec<ProtoEntry>,
    /// Rules whose source and destination ports are both `*`: the port condition for packets
    /// without ports.
    pub portless: RuleBitmap,
}

impl Classifier {
    /// Classifies a packet the way the eBPF side does: longest-prefix lookups, AND, lowest bit. `None` only for tables that were not built by [`compile_classifier`].
    pub fn lookup(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        src_port: u16,
        dst_port: u16,
    ) -> Option<RuleIndex> {
        self.matching_rules(src, dst, protocol, src_port, dst_port)?
            .lowest()
    }

    /// Every rule whose conditions the packet meets (the AND of the lookups, before taking the
    /// lowest bit).
    pub fn matching_rules(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        src_port: u16,
        dst_port: u16,
    ) -> Option<RuleBitmap> {
        let class = ProtoClass::from_ip_protocol(protocol);
        let mut rules = lpm_addr(&self.src_addr, src)?.intersection(lpm_addr(&self.dst_addr, dst)?);
        rules = rules.intersection(&self.proto.iter().find(|e| e.class == class)?.rules);
        if class.has_ports() {
            rules = rules.intersection(lpm_port(&self.src_port, src_port)?);
            rules = rules.intersection(lpm_port(&self.dst_port, dst_port)?);
        } else {
            rules = rules.intersection(&self.portless);
        }
        Some(rules)
    }

    /// Number of table entries (for map sizing).
    pub fn entry_count(&self) -> usize {
        self.src_addr.len()
            + self.dst_addr.len()
            + self.src_port.len()
            + self.dst_port.len()
            + self.proto.len()
    }
}

fn lpm_addr(entries: &[AddrEntry], addr: Ipv4Addr) -> Option<&RuleBitmap> {
    entries
        .iter()
        .filter(|e| e.prefix.contains(&addr))
        .max_by_key(|e| e.prefix.prefix_len())
        .map(|e| &e.rules)
}

fn lpm_port(entries: &[PortEntry], port: u16) -> Option<&RuleBitmap> {
    entries
        .iter()
        .filter(|e| e.prefix.contains(port))
        .max_by_key(|e| e.prefix.len)
        .map(|e| &e.rules)
}

/// All classifiers of a spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NsgTables {
    /// Classifier with id `n` is at index `n - 1`.
    pub classifiers: Vec<Classifier>,
}

impl NsgTables {
    /// Classifier ids: NSG `k` (from 1) has `2k - 1` inbound and `2k` outbound.
    pub fn classifier_id(nsg_id: u32, direction: Direction) -> u32 {
        match direction {
            Direction::Inbound => 2 * nsg_id - 1,
            Direction::Outbound => 2 * nsg_id,
        }
    }

    pub fn classifier(&self, id: u32) -> Option<&Classifier> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.classifiers.get(index)
    }

    /// [`Classifier::lookup`] by classifier id; `None` for an unknown id.
    pub fn lookup(
        &self,
        classifier: u32,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: u8,
        src_port: u16,
        dst_port: u16,
    ) -> Option<RuleIndex> {
        self.classifier(classifier)?
            .lookup(src, dst, protocol, src_port, dst_port)
    }

    /// The rule a lookup returned.
    pub fn rule(&self, classifier: u32, rule: RuleIndex) -> Option<&RuleMeta> {
        self.classifier(classifier)?.rules.get(rule)
    }
}

/// What the service tags stand for in this spec.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceTags {
    pub virtual_network: Vec<Ipv4Net>,
    pub internet: Vec<Ipv4Net>,
}

impl ServiceTags {
    pub fn prefixes(&self, prefix: &AddressPrefix) -> Vec<Ipv4Net> {
        match prefix {
            AddressPrefix::Any => vec![Ipv4Net::default()],
            AddressPrefix::Prefix(net) => vec![*net],
            AddressPrefix::Tag(ServiceTag::VirtualNetwork) => self.virtual_network.clone(),
            AddressPrefix::Tag(ServiceTag::Internet) => self.internet.clone(),
            AddressPrefix::Tag(ServiceTag::AzureLoadBalancer) => {
                vec![Ipv4Net::from(AZURE_LOAD_BALANCER)]
            }
        }
    }
}

/// Azure's default rules of a direction, lowest priority last.
pub fn default_rules(direction: Direction) -> Vec<SecurityRule> {
    let rule = |name: &str, priority, access, source, destination| SecurityRule {
        name: name.to_string(),
        description: None,
        priority,
        direction,
        access,
        protocol: Protocol::Any,
        source_address_prefixes: vec![source],
        source_port_ranges: vec![PortRange::ANY],
        destination_address_prefixes: vec![destination],
        destination_port_ranges: vec![PortRange::ANY],
    };
    use AddressPrefix::{Any, Tag};
    match direction {
        Direction::Inbound => vec![
            rule(
                "AllowVnetInBound",
                65000,
                Access::Allow,
                Tag(ServiceTag::VirtualNetwork),
                Tag(ServiceTag::VirtualNetwork),
            ),
            rule(
                "AllowAzureLoadBalancerInBound",
                65001,
                Access::Allow,
                Tag(ServiceTag::AzureLoadBalancer),
                Any,
            ),
            rule("DenyAllInBound", 65500, Access::Deny, Any, Any),
        ],
        Direction::Outbound => vec![
            rule(
                "AllowVnetOutBound",
                65000,
                Access::Allow,
                Tag(ServiceTag::VirtualNetwork),
                Tag(ServiceTag::VirtualNetwork),
            ),
            rule(
                "AllowInternetOutBound",
                65001,
                Access::Allow,
                Any,
                Tag(ServiceTag::Internet),
            ),
            rule("DenyAllOutBound", 65500, Access::Deny, Any, Any),
        ],
    }
}

/// Compiles every NSG of a spec, both directions.
pub fn compile_nsgs(
    nsgs: &[NetworkSecurityGroup],
    tags: &ServiceTags,
) -> anyhow::Result<NsgTables> {
    let mut classifiers = Vec::with_capacity(nsgs.len() * 2);
    for (k, nsg) in nsgs.iter().enumerate() {
        let nsg_id = u32::try_from(k + 1)?;
        for direction in [Direction::Inbound, Direction::Outbound] {
            let id = NsgTables::classifier_id(nsg_id, direction);
            classifiers.push(compile_classifier(id, nsg_id, nsg, direction, tags)?);
        }
    }
    Ok(NsgTables { classifiers })
}

/// Compiles one (NSG, direction).
pub fn compile_classifier(
    id: u32,
    nsg_id: u32,
    nsg: &NetworkSecurityGroup,
    direction: Direction,
    tags: &ServiceTags,
) -> anyhow::Result<Classifier> {
    let mut user: Vec<&SecurityRule> = nsg
        .security_rules
        .iter()
        .filter(|r| r.direction == direction)
        .collect();
    // Stable: among equal priorities (refused by validation) the first listed wins.
    user.sort_by_key(|r| r.priority);
    let defaults = default_rules(direction);
    let rules: Vec<(&SecurityRule, bool)> = user
        .into_iter()
        .map(|r| (r, false))
        .chain(defaults.iter().map(|r| (r, true)))
        .collect();
    if rules.len() > MAX_CLASSIFIER_RULES {
        bail!(
            "network security group {:?} has {} {direction} rules with the defaults, more than the {MAX_CLASSIFIER_RULES} a classifier holds",
            nsg.name,
            rules.len()
        );
    }

    let mut src_direct: HashMap<Ipv4Net, RuleBitmap> = HashMap::new();
    let mut dst_direct: HashMap<Ipv4Net, RuleBitmap> = HashMap::new();
    let mut sport_direct: HashMap<PortPrefix, RuleBitmap> = HashMap::new();
    let mut dport_direct: HashMap<PortPrefix, RuleBitmap> = HashMap::new();
    let mut proto: Vec<ProtoEntry> = ProtoClass::ALL
        .iter()
        .map(|&class| ProtoEntry {
            class,
            rules: RuleBitmap::EMPTY,
        })
        .collect();
    let mut portless = RuleBitmap::EMPTY;
    for (i, (rule, _)) in rules.iter().enumerate() {
        for prefix in &rule.source_address_prefixes {
            for net in tags.prefixes(prefix) {
                src_direct.entry(net).or_default().insert(i);
            }
        }
        for prefix in &rule.destination_address_prefixes {
            for net in tags.prefixes(prefix) {
                dst_direct.entry(net).or_default().insert(i);
            }
        }
        for range in &rule.source_port_ranges {
            for block in port_blocks(*range) {
                sport_direct.entry(block).or_default().insert(i);
            }
        }
        for range in &rule.destination_port_ranges {
            for block in port_blocks(*range) {
                dport_direct.entry(block).or_default().insert(i);
            }
        }
        for entry in &mut proto {
            if entry.class.matched_by(rule.protocol) {
                entry.rules.insert(i);
            }
        }
        let any = |ranges: &[PortRange]| ranges.iter().any(PortRange::is_any);
        if any(&rule.source_port_ranges) && any(&rule.destination_port_ranges) {
            portless.insert(i);
        }
    }

    Ok(Classifier {
        id,
        nsg_id,
        nsg_name: nsg.name.clone(),
        direction,
        rules: rules
            .iter()
            .map(|(rule, is_default)| RuleMeta {
                name: rule.name.clone(),
                priority: rule.priority,
                access: rule.access,
                is_default: *is_default,
            })
            .collect(),
        src_addr: close_addresses(src_direct),
        dst_addr: close_addresses(dst_direct),
        src_port: close_ports(sport_direct),
        dst_port: close_ports(dport_direct),
        proto,
        portless,
    })
}

/// The closed address table: every prefix gets the rules of all the prefixes containing it.
fn close_addresses(mut direct: HashMap<Ipv4Net, RuleBitmap>) -> Vec<AddrEntry> {
    direct.entry(Ipv4Net::default()).or_default();
    // Only the lengths some prefix has can hold an ancestor (a rule set of 1000 /32s has two).
    let lengths: BTreeSet<u8> = direct.keys().map(Ipv4Net::prefix_len).collect();
    // The keys sorted, not the entries: an entry carries a 128-byte bitmap.
    let mut nets: Vec<&Ipv4Net> = direct.keys().collect();
    nets.sort_unstable_by_key(|net| (std::cmp::Reverse(net.prefix_len()), net.network()));
    nets.into_iter()
        .map(|net| {
            let mut rules = RuleBitmap::EMPTY;
            for &len in lengths.range(..=net.prefix_len()) {
                if let Some(ancestor_rules) = direct.get(&ancestor(net, len)) {
                    rules.union_with(ancestor_rules);
                }
            }
            AddrEntry {
                prefix: *net,
                rules,
            }
        })
        .collect()
}

/// The closed port table, as [`close_addresses`].
fn close_ports(mut direct: HashMap<PortPrefix, RuleBitmap>) -> Vec<PortEntry> {
    direct.entry(PortPrefix::ANY).or_default();
    let lengths: BTreeSet<u8> = direct.keys().map(|block| block.len).collect();
    let mut blocks: Vec<&PortPrefix> = direct.keys().collect();
    blocks.sort_unstable_by_key(|block| (std::cmp::Reverse(block.len), block.port));
    blocks
        .into_iter()
        .map(|block| {
            let mut rules = RuleBitmap::EMPTY;
            for &len in lengths.range(..=block.len) {
                if let Some(ancestor_rules) = direct.get(&PortPrefix::truncated(block.port, len)) {
                    rules.union_with(ancestor_rules);
                }
            }
            PortEntry {
                prefix: *block,
                rules,
            }
        })
        .collect()
}
