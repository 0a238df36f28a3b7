//! Network Security Group classifiers: bit-vector classification (the agent's
//! `compile::nsg` builds the tables). Each (NSG, direction) is a *classifier* with an id; rule
//! `i` of a classifier (user rules by priority, then the defaults) is bit `i` of a
//! [`RuleBitmap`]. Per packet field a lookup gives the bitmap of the rules whose condition on
//! that field holds; the AND of the five bitmaps is the set of matching rules and its lowest
//! set bit the deciding rule, so the cost does not depend on the number of rules.
//!
//! Every table key starts with the classifier id (big-endian) so that classifiers of several
//! NSGs, and two generations of one NSG during a reload, live side by side in one map.

/// Words in a rule bitmap: 1024 bits, room for Azure's 1000 rules per NSG and the 3 defaults.
pub const RULE_WORDS: usize = 16;

/// The rules of one classifier a field value satisfies: bit `i` of word `i / 64` is rule `i`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleBitmap {
    pub words: [u64; RULE_WORDS],
}

impl Default for RuleBitmap {
    fn default() -> Self {
        Self {
            words: [0; RULE_WORDS],
        }
    }
}

/// `NSG_SRC_ADDR` / `NSG_DST_ADDR` key data (an LPM trie): `prefixlen` = [`Self::CLASSIFIER_BITS`]
/// + the address prefix's length, looked up with 64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsgAddrKey {
    /// Big-endian, so the classifier is the key's leading bits.
    pub classifier: [u8; 4],
    /// Network byte order.
    pub addr: [u8; 4],
}

/// `NSG_SRC_PORT` / `NSG_DST_PORT` key data (an LPM trie over 16-bit port blocks):
/// `prefixlen` = [`NsgAddrKey::CLASSIFIER_BITS`] + the block's length (0..=16), looked up
/// with 48.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsgPortKey {
    pub classifier: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
}

impl NsgAddrKey {
    /// The classifier id's share of every LPM key's `prefixlen`.
    pub const CLASSIFIER_BITS: u32 = 32;
}

/// `NSG_PROTO` key (exact): the rules a protocol class satisfies. `proto` is the IP protocol
/// number of the class (TCP 6, UDP 17, ICMP 1, ESP 50, AH 51), 0 for every other protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NsgProtoKey {
    pub classifier: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// `NSG_RULES` and `NSG_HITS` key: one rule of one classifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsgRuleKey {
    pub classifier: u32,
    /// The rule's bit in the classifier's bitmaps.
    pub rule: u32,
}

/// `NSG_RULES[key]`: what a rule decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NsgRule {
    /// 100..=4096, or the default rules' 65000..=65500 (for flow logs).
    pub priority: u32,
    /// An [`NsgAccess`] value.
    pub access: u8,
    pub _pad: [u8; 3],
}

/// A rule's access.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsgAccess {
    Allow = 1,
    Deny = 2,
}

/// What a flow's first packet was decided (`Flow::nsg_verdict`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsgVerdict {
    /// No NSG applied (the endpoints have none, or the traffic is exempt).
    Unclassified = 0,
    Allow = 1,
    Deny = 2,
}

/// `Flow::nsg_rule_*` when no rule decided.
pub const NO_RULE: u16 = u16::MAX;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no implicit padding.
    unsafe impl aya::Pod for super::RuleBitmap {}
    unsafe impl aya::Pod for super::NsgAddrKey {}
    unsafe impl aya::Pod for super::NsgPortKey {}
    unsafe impl aya::Pod for super::NsgProtoKey {}
    unsafe impl aya::Pod for super::NsgRuleKey {}
    unsafe impl aya::Pod for super::NsgRule {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<NsgAddrKey>(), 8);
        assert_eq!(core::mem::size_of::<NsgPortKey>(), 6);
        assert_eq!(core::mem::size_of::<NsgProtoKey>(), 8);
        assert_eq!(core::mem::size_of::<NsgRuleKey>(), 8);
        assert_eq!(core::mem::size_of::<NsgRule>(), 8);
        assert_eq!(core::mem::size_of::<RuleBitmap>(), 128);
    }
}
