//! A compiled classifier as the NSG maps hold it ([`ClassifierEntries`]), its digest and the
//! name its id is recorded under: pure functions, no kernel.
use std::collections::BTreeMap;

use vnetd_common::{NsgAccess, NsgRule, RuleBitmap};

use crate::{
    compile::{self, Classifier},
    dataplane::tables::Fingerprint,
    spec::Access,
};

/// An LPM table's entries of one classifier: (prefix length, value) -> rules. The value is an
/// IPv4 address or a port, host byte order.
pub type LpmEntries = BTreeMap<(u8, u32), RuleBitmap>;

/// One classifier as the kernel holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassifierEntries {
    pub src_addr: LpmEntries,
    pub dst_addr: LpmEntries,
    pub src_port: LpmEntries,
    pub dst_port: LpmEntries,
    /// Protocol class key (`ProtoClass::key`) -> rules.
    pub proto: BTreeMap<u8, RuleBitmap>,
    pub portless: RuleBitmap,
    /// By rule index.
    pub rules: Vec<NsgRule>,
}

fn bitmap(rules: &compile::RuleBitmap) -> RuleBitmap {
    RuleBitmap { words: rules.0 }
}

/// The kernel's entries of a compiled classifier.
pub fn entries(classifier: &Classifier) -> ClassifierEntries {
    let addrs = |entries: &[compile::AddrEntry]| {
        entries
            .iter()
            .map(|e| {
                let key = (e.prefix.prefix_len(), u32::from(e.prefix.network()));
                (key, bitmap(&e.rules))
            })
            .collect()
    };
    let ports = |entries: &[compile::PortEntry]| {
        entries
            .iter()
            .map(|e| ((e.prefix.len, u32::from(e.prefix.port)), bitmap(&e.rules)))
            .collect()
    };
    ClassifierEntries {
        src_addr: addrs(&classifier.src_addr),
        dst_addr: addrs(&classifier.dst_addr),
        src_port: ports(&classifier.src_port),
        dst_port: ports(&classifier.dst_port),
        proto: classifier
            .proto
            .iter()
            .map(|e| (e.class.key(), bitmap(&e.rules)))
            .collect(),
        portless: bitmap(&classifier.portless),
        rules: classifier
            .rules
            .iter()
            .map(|rule| NsgRule {
                priority: rule.priority,
                access: match rule.access {
                    Access::Allow => NsgAccess::Allow as u8,
                    Access::Deny => NsgAccess::Deny as u8,
                },
                _pad: [0; 3],
            })
            .collect(),
    }
}

/// The name a classifier's id is recorded under: its NSG and direction (NSG names compare
/// case-insensitively, so the name is lower-cased).
pub fn table_name(classifier: &Classifier) -> String {
    format!(
        "{}/{}",
        classifier.nsg_name.to_lowercase(),
        classifier.direction
    )
}

/// A stable digest of a classifier's entries.
pub fn fingerprint(table: &ClassifierEntries) -> u64 {
    let mut digest = Fingerprint::default();
    let bits = |digest: &mut Fingerprint, rules: &RuleBitmap| digest.write_words(&rules.words);
    for (tag, lpm) in [
        (b's', &table.src_addr),
        (b'd', &table.dst_addr),
        (b'p', &table.src_port),
        (b'q', &table.dst_port),
    ] {
        digest.write(&[tag]);
        for ((len, value), rules) in lpm {
            digest.write(&[*len]);
            digest.write(&value.to_le_bytes());
            bits(&mut digest, rules);
        }
    }
    digest.write(b"c");
    for (class, rules) in &table.proto {
        digest.write(&[*class]);
        bits(&mut digest, rules);
    }
    digest.write(b"n");
    bits(&mut digest, &table.portless);
    digest.write(b"r");
    for rule in &table.rules {
        digest.write(&rule.priority.to_le_bytes());
        digest.write(&[rule.access]);
    }
    digest.finish()
}

/// The NSG maps' content for `classifiers`, by the name each is recorded under.
pub fn wanted<'a>(
    classifiers: impl IntoIterator<Item = &'a Classifier>,
) -> BTreeMap<String, ClassifierEntries> {
    classifiers
        .into_iter()
        .map(|c| (table_name(c), entries(c)))
        .collect()
}
