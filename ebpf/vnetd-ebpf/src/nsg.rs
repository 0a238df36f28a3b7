//! Network Security Groups: bit-vector classification. Per field one lookup gives the bitmap of
//! the rules of a classifier (an NSG's rules of one direction) that the field satisfies; the AND
//! of the bitmaps is the set of matching rules and its lowest set bit, the rule of highest
//! priority, decides. The cost is the same for 3 rules as for 1003. The agent writes the tables
//! (`compile::nsg` in the agent builds them; its module comment is the encoding).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuHashMap, lpm_trie::Key},
};
use vnetd_common::{
    DropReason, Endpoint, NO_RULE, NsgAccess, NsgAddrKey, NsgPortKey, NsgProtoKey, NsgRule,
    NsgRuleKey, NsgVerdict, RULE_WORDS, RuleBitmap,
    maps::{NSG_ADDR_MAX, NSG_CLASSIFIERS_MAX, NSG_PORT_MAX, NSG_PROTO_MAX, NSG_RULES_MAX},
};

use crate::{
    flowlog,
    parse::{Fragment, IPPROTO_TCP, IPPROTO_UDP, Ipv4},
};

const NO_PREALLOC: u32 = 1;

#[map(name = "NSG_SRC_ADDR")]
static NSG_SRC_ADDR: LpmTrie<NsgAddrKey, RuleBitmap> =
    LpmTrie::with_max_entries(NSG_ADDR_MAX, NO_PREALLOC);

#[map(name = "NSG_DST_ADDR")]
static NSG_DST_ADDR: LpmTrie<NsgAddrKey, RuleBitmap> =
    LpmTrie::with_max_entries(NSG_ADDR_MAX, NO_PREALLOC);

#[map(name = "NSG_SRC_PORT")]
static NSG_SRC_PORT: LpmTrie<NsgPortKey, RuleBitmap> =
    LpmTrie::with_max_entries(NSG_PORT_MAX, NO_PREALLOC);

#[map(name = "NSG_DST_PORT")]
static NSG_DST_PORT: LpmTrie<NsgPortKey, RuleBitmap> =
    LpmTrie::with_max_entries(NSG_PORT_MAX, NO_PREALLOC);

#[map(name = "NSG_PROTO")]
static NSG_PROTO: HashMap<NsgProtoKey, RuleBitmap> =
    HashMap::with_max_entries(NSG_PROTO_MAX, NO_PREALLOC);

#[map(name = "NSG_PORTLESS")]
static NSG_PORTLESS: HashMap<u32, RuleBitmap> =
    HashMap::with_max_entries(NSG_CLASSIFIERS_MAX, NO_PREALLOC);

#[map(name = "NSG_RULES")]
static NSG_RULES: HashMap<NsgRuleKey, NsgRule> =
    HashMap::with_max_entries(NSG_RULES_MAX, NO_PREALLOC);

#[map(name = "NSG_HITS")]
static NSG_HITS: PerCpuHashMap<NsgRuleKey, u64> =
    PerCpuHashMap::with_max_entries(NSG_RULES_MAX, NO_PREALLOC);

/// 168.63.129.16 (Azure's host: DNS, health probes) and 169.254.169.254 (instance metadata):
/// traffic between a pod and them is not subject to NSGs.
const AZURE_HOST: [u8; 4] = [168, 63, 129, 16];
const METADATA: [u8; 4] = [169, 254, 169, 254];

/// The header fields an NSG looks at. Ports in network byte order, only for TCP and UDP.
pub struct Tuple {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP or UDP with its header (not a later fragment): the rules' port ranges apply.
    ported: bool,
}

impl Tuple {
    #[inline(always)]
    pub fn of(ip: &Ipv4) -> Tuple {
        Tuple::to(ip, ip.hdr.dst_addr)
    }

    /// `ip`'s fields with `dst` as its destination (a public address's packet is classified
    /// with the private address it is translated to).
    #[inline(always)]
    pub fn to(ip: &Ipv4, dst: [u8; 4]) -> Tuple {
        // The parser gives ICMP echo its identifier as a port: NSG rules see no ports there.
        // A later fragment has none either: it is classified on addresses and protocol.
        let ported =
            matches!(ip.hdr.proto, IPPROTO_TCP | IPPROTO_UDP) && ip.fragment != Fragment::Later;
        Tuple {
            src: ip.hdr.src_addr,
            dst,
            proto: ip.hdr.proto,
            src_port: if ported { ip.src_port } else { 0 },
            dst_port: if ported { ip.dst_port } else { 0 },
            ported,
        }
    }

    #[inline(always)]
    fn has_ports(&self) -> bool {
        self.ported
    }

    /// A pod's traffic to Azure's host or the metadata service.
    #[inline(always)]
    fn sent_to_azure_host(&self) -> bool {
        self.dst == AZURE_HOST || self.dst == METADATA
    }

    /// Traffic from Azure's host (health probes, DNS) or the metadata service to a pod.
    #[inline(always)]
    fn sent_by_azure_host(&self) -> bool {
        self.src == AZURE_HOST || self.src == METADATA
    }
}

/// The rule that decided a packet: its bit in the classifier, and whether it allows.
pub struct Decision {
    pub rule: u32,
    pub allow: bool,
}

/// What the NSGs of one end decided on a flow's first packet, kept in its entry (flow logs).
#[derive(Clone, Copy)]
pub struct Mark {
    /// An [`NsgVerdict`] value.
    pub verdict: u8,
    pub rule_subnet: u16,
    pub rule_group: u16,
    /// The classifiers the rules are bits of (flow logs name the rule by both), 0 if none.
    pub classifier_subnet: u32,
    pub classifier_group: u32,
}

impl Mark {
    /// No NSG applied.
    pub const NONE: Mark = Mark {
        verdict: NsgVerdict::Unclassified as u8,
        rule_subnet: NO_RULE,
        rule_group: NO_RULE,
        classifier_subnet: 0,
        classifier_group: 0,
    };
}

/// Which of an endpoint's NSGs a classifier is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Subnet,
    Group,
}

/// A packet `ep` sends, through its outbound NSGs: the group's, then the subnet's; both must
/// allow.
#[inline(always)]
pub fn outbound(ep: &Endpoint, t: &Tuple) -> Result<Mark, DropReason> {
    if t.sent_to_azure_host() {
        return Ok(Mark::NONE);
    }
    decide(
        t,
        [
            (ep.nsg_out_group, Owner::Group),
            (ep.nsg_out_subnet, Owner::Subnet),
        ],
        false,
    )
}

/// A packet for `ep`, through its inbound NSGs: the subnet's, then the group's; both must
/// allow.
#[inline(always)]
pub fn inbound(ep: &Endpoint, t: &Tuple) -> Result<Mark, DropReason> {
    if t.sent_by_azure_host() {
        return Ok(Mark::NONE);
    }
    decide(
        t,
        [
            (ep.nsg_in_subnet, Owner::Subnet),
            (ep.nsg_in_group, Owner::Group),
        ],
        true,
    )
}

/// `inbound`: the classifiers are the receiver's (for the flow-log record of a denial).
#[inline(always)]
fn decide(t: &Tuple, classifiers: [(u32, Owner); 2], inbound: bool) -> Result<Mark, DropReason> {
    if classifiers[0].0 | classifiers[1].0 == 0 {
        return Ok(Mark::NONE);
    }
    let mut mark = Mark {
        verdict: NsgVerdict::Allow as u8,
        ..Mark::NONE
    };
    for (classifier, owner) in classifiers {
        if classifier == 0 {
            continue;
        }
        // A classifier without tables (never the case once the agent has switched to it)
        // fails closed.
        let decision = classify(classifier, t);
        let rule = decision.as_ref().map_or(NO_RULE, |d| d.rule as u16);
        match owner {
            Owner::Subnet => {
                mark.rule_subnet = rule;
                mark.classifier_subnet = classifier;
            }
            Owner::Group => {
                mark.rule_group = rule;
                mark.classifier_group = classifier;
            }
        }
        if !decision.is_some_and(|d| d.allow) {
            mark.verdict = NsgVerdict::Deny as u8;
            flowlog::denied(t, inbound, Some(&mark), DropReason::NsgDenied);
            return Err(DropReason::NsgDenied);
        }
    }
    Ok(mark)
}

/// The rule of `classifier` that decides `t`, its hit counted; `None` if the classifier's tables
/// are missing. A function of its own (a BPF-to-BPF call): the callers' programs stay small.
#[inline(never)]
pub fn classify(classifier: u32, t: &Tuple) -> Option<Decision> {
    let id = classifier.to_be_bytes();
    let addr_key = |addr: [u8; 4]| {
        Key::new(
            NsgAddrKey::CLASSIFIER_BITS + 32,
            NsgAddrKey {
                classifier: id,
                addr,
            },
        )
    };
    let src = NSG_SRC_ADDR.get(addr_key(t.src))?;
    let dst = NSG_DST_ADDR.get(addr_key(t.dst))?;
    let proto_key = NsgProtoKey {
        classifier,
        proto: proto_class(t.proto),
        _pad: [0; 3],
    };
    // SAFETY: values are only read; the agent replaces an entry whole.
    let proto = unsafe { NSG_PROTO.get(proto_key) }?;
    let (sport, dport) = if t.has_ports() {
        let port_key = |port: u16| {
            Key::new(
                NsgAddrKey::CLASSIFIER_BITS + 16,
                NsgPortKey {
                    classifier: id,
                    port: port.to_ne_bytes(),
                },
            )
        };
        (
            NSG_SRC_PORT.get(port_key(t.src_port))?,
            NSG_DST_PORT.get(port_key(t.dst_port))?,
        )
    } else {
        // SAFETY: as above.
        let portless = unsafe { NSG_PORTLESS.get(classifier) }?;
        (portless, portless)
    };
    let rule = lowest_common(src, dst, proto, sport, dport)?;
    let key = NsgRuleKey { classifier, rule };
    // SAFETY: as above.
    let meta = unsafe { NSG_RULES.get(key) }?;
    count_hit(&key);
    Some(Decision {
        rule,
        allow: meta.access == NsgAccess::Allow as u8,
    })
}

/// The lowest bit set in all five bitmaps.
#[inline(always)]
fn lowest_common(
    a: &RuleBitmap,
    b: &RuleBitmap,
    c: &RuleBitmap,
    d: &RuleBitmap,
    e: &RuleBitmap,
) -> Option<u32> {
    let mut i = 0;
    while i < RULE_WORDS {
        let word = a.words[i] & b.words[i] & c.words[i] & d.words[i] & e.words[i];
        if word != 0 {
            return Some(i as u32 * 64 + trailing_zeros(word));
        }
        i += 1;
    }
    None
}

/// `word.trailing_zeros()` for a non-zero word, by halving: LLVM's own lowering for BPF (no
/// count instruction) reads a de Bruijn table from `.rodata`, a map the agent would have to load
/// beside its pinned ones.
#[inline(always)]
fn trailing_zeros(mut word: u64) -> u32 {
    let mut n = 0;
    let mut half = 32;
    while half > 0 {
        if word & ((1u64 << half) - 1) == 0 {
            n += half;
            word >>= half;
        }
        half /= 2;
    }
    n
}

/// The `NSG_PROTO` key of an IP protocol: the classes the rules name, 0 for the rest.
#[inline(always)]
fn proto_class(proto: u8) -> u8 {
    match proto {
        1 | 6 | 17 | 50 | 51 => proto,
        _ => 0,
    }
}

#[inline(always)]
fn count_hit(key: &NsgRuleKey) {
    match NSG_HITS.get_ptr_mut(key) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        Some(hits) => unsafe { *hits += 1 },
        None => {
            // The agent creates the counters with the rules; this is the race with a reload.
            let first = 1u64;
            let _ = NSG_HITS.insert(key, first, BPF_NOEXIST as u64);
        }
    }
}
