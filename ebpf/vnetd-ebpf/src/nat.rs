//! Address translation: SNAT out of the VNet, public addresses in front of groups.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie},
};
use vnetd_common::{
    NoMasqueradeKey, PublicAddress, PublicPortKey,
    maps::{NO_MASQUERADE_MAX, PUBLIC_IPS_MAX, PUBLIC_PORTS_MAX},
};

#[map(name = "NO_MASQUERADE")]
pub static NO_MASQUERADE: LpmTrie<NoMasqueradeKey, u32> =
    LpmTrie::with_max_entries(NO_MASQUERADE_MAX, 1 /* BPF_F_NO_PREALLOC */);

#[map(name = "PUBLIC_IPS")]
pub static PUBLIC_IPS: HashMap<[u8; 4], PublicAddress> =
    HashMap::with_max_entries(PUBLIC_IPS_MAX, 0);

#[map(name = "PUBLIC_PORTS")]
pub static PUBLIC_PORTS: HashMap<PublicPortKey, u32> =
    HashMap::with_max_entries(PUBLIC_PORTS_MAX, 0);
