//! User-defined and system routes: longest prefix match per route table.
use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use vnetd_common::{Route, RouteKey, maps::ROUTES_MAX};

#[map(name = "ROUTES")]
static ROUTES: LpmTrie<RouteKey, Route> =
    LpmTrie::with_max_entries(ROUTES_MAX, 1 /* BPF_F_NO_PREALLOC */);

#[inline(always)]
pub fn lookup(table: u32, dst: &[u8; 4]) -> Option<&'static Route> {
    let key = Key::new(
        RouteKey::TABLE_BITS + 32,
        RouteKey {
            table: table.to_be_bytes(),
            dst: *dst,
        },
    );
    ROUTES.get(&key)
}
