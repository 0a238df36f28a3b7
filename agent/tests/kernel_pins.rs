//! Pins on a real bpffs: what `Dataplane::load_pinned` adopts, replaces or refuses, and what
//! `teardown` removes. Needs root (CAP_BPF) and a bpffs on /sys/fs/bpf. Each test works in its
//! own directory `/sys/fs/bpf/vnkp<pid>x<n>`, removed when the test ends (also on failure);
//! nothing is attached to an interface.
use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{MapData, MapInfo, MapType},
    programs::{SchedClassifier, TcAttachType},
};
use vnetd::dataplane::{self, Dataplane, PinLayout};
use vnetd_common::{ABI_VERSION, maps, programs};

mod support;

/// A bpffs directory private to one test.
struct BpffsDir(PathBuf);

impl BpffsDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/sys/fs/bpf/vnkp{}x{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates a map of the given shape (BPF_MAP_CREATE) and pins it at `path`.
fn pin_map(path: &Path, map_type: MapType, key_size: u32, value_size: u32, max_entries: u32) {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = MapCreate {
        map_type: map_type as u32,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    // SAFETY: BPF_MAP_CREATE (0) reads `size_of::<MapCreate>()` bytes of `attr`; the kernel
    // treats the fields it does not get as zero.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    MapData::from_fd(fd).unwrap().pin(path).unwrap();
}

fn map_path(bpffs: &Path, name: &str) -> PathBuf {
    PinLayout::new(bpffs).map(name)
}

/// A state map (ENDPOINTS holds the pods) of another value size is refused, by name and field,
/// with what to do; it is left as it was.
#[test]
fn a_pinned_map_of_another_layout_is_refused_by_name() {
    let dir = BpffsDir::new();
    let endpoints = map_path(&dir.0, maps::ENDPOINTS);
    let value_size = std::mem::size_of::<vnetd_common::Endpoint>() as u32;
    pin_map(
        &endpoints,
        MapType::Hash,
        4,
        value_size + 4,
        maps::ENDPOINTS_MAX,
    );
    let before = MapInfo::from_pin(&endpoints).unwrap().id();

    let err = match Dataplane::load_pinned(&dir.0) {
        Ok(_) => panic!("a pinned ENDPOINTS with another value size was adopted"),
        Err(err) => format!("{err:#}"),
    };
    for part in [
        maps::ENDPOINTS,
        &endpoints.display().to_string(),
        &format!(
            "value size {} pinned, {value_size} expected",
            value_size + 4
        ),
        "vnetd teardown",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
    assert_eq!(
        MapInfo::from_pin(&endpoints).unwrap().id(),
        before,
        "the pinned map is left for the user to decide"
    );
}

/// Every field is compared: another type or capacity is refused too.
#[test]
fn a_pinned_map_of_another_type_or_capacity_is_refused() {
    let dir = BpffsDir::new();
    let endpoints = map_path(&dir.0, maps::ENDPOINTS);
    let value_size = std::mem::size_of::<vnetd_common::Endpoint>() as u32;
    pin_map(&endpoints, MapType::Array, 4, value_size, 256);
    let err = format!("{:#}", Dataplane::load_pinned(&dir.0).err().unwrap());
    assert!(err.contains(maps::ENDPOINTS), "{err}");
    assert!(err.contains("type Array pinned, Hash expected"), "{err}");
    assert!(
        err.contains(&format!(
            "max entries 256 pinned, {} expected",
            maps::ENDPOINTS_MAX
        )),
        "{err}"
    );
}

/// Maps the agent rewrites whole before attaching (ROUTES) or that only count (DROPS) are
/// replaced when their pinned shape differs.
#[test]
fn maps_the_agent_rewrites_are_replaced() {
    let dir = BpffsDir::new();
    let drops = map_path(&dir.0, maps::DROPS);
    let routes = map_path(&dir.0, maps::ROUTES);
    pin_map(&drops, MapType::PerCpuArray, 4, 16, 3);
    // An LPM trie needs BPF_F_NO_PREALLOC: a hash map of ROUTES' sizes stands in.
    let key = std::mem::size_of::<vnetd_common::RouteKey>() as u32 + 4;
    let value = std::mem::size_of::<vnetd_common::Route>() as u32;
    pin_map(&routes, MapType::Hash, key, value, 64);
    let stale = [&drops, &routes].map(|p| MapInfo::from_pin(p).unwrap().id());

    let mut dp = Dataplane::load_pinned(&dir.0).expect("ROUTES and DROPS are replaced");
    let fresh = [&drops, &routes].map(|p| MapInfo::from_pin(p).unwrap());
    assert_ne!(fresh[0].id(), stale[0], "a new DROPS is pinned");
    assert_ne!(fresh[1].id(), stale[1], "a new ROUTES is pinned");
    assert_eq!(fresh[0].value_size(), 8);
    assert_eq!(fresh[0].max_entries(), vnetd_common::DropReason::COUNT);
    assert_eq!(fresh[1].map_type().unwrap(), MapType::LpmTrie);
    assert_eq!(
        dp.drops().unwrap().len(),
        vnetd_common::DropReason::COUNT as usize
    );
    assert!(dp.routes().unwrap().is_empty());
}

/// The maps this build pins are adopted by the next load, not replaced (the comparison agrees
/// with what the kernel reports for the object's own maps).
#[test]
fn pins_of_this_build_are_adopted() {
    let dir = BpffsDir::new();
    let first = Dataplane::load_pinned(&dir.0).unwrap();
    let ids = || {
        maps::ALL
            .iter()
            .map(|name| MapInfo::from_pin(map_path(&dir.0, name)).unwrap().id())
            .collect::<Vec<_>>()
    };
    let before = ids();
    drop(first);
    let _second = Dataplane::load_pinned(&dir.0).unwrap();
    assert_eq!(ids(), before, "every map adopted");
}

/// The programs' endpoint copies are valid under one generation: each agent (each load of the
/// pins) numbers it past everything before it, so that no copy an earlier agent's programs
/// kept is current again; and each write to ENDPOINTS moves it on.
#[test]
#[cfg(target_arch = "x86_64")]
fn every_load_and_every_endpoint_write_moves_the_endpoint_generation_on() {
    let dir = BpffsDir::new();
    let mut first = Dataplane::load_pinned(&dir.0).unwrap();
    let started = first.endpoints_generation();
    assert_ne!(started, 0, "0 leaves the copies unused");
    let ep = vnetd_common::Endpoint {
        host_ifindex: 7,
        ..Default::default()
    };
    let ip = std::net::Ipv4Addr::new(10, 0, 2, 10);
    first.put_endpoint(ip, ep).unwrap();
    first.remove_endpoint(ip).unwrap();
    let written = first.endpoints_generation();
    assert_eq!(written, started + 2, "one step per write");
    drop(first);
    let second = Dataplane::load_pinned(&dir.0).unwrap();
    assert!(
        second.endpoints_generation() > written,
        "a new agent starts past the last"
    );
}

/// What another ABI left is removed at load (the maps here; links in e2e_pins), and teardown
/// removes every ABI's pins.
#[test]
fn other_abis_are_removed_at_load_and_by_teardown() {
    let dir = BpffsDir::new();
    let old = dir.0.join("abi-v0");
    let newer = dir.0.join(format!("abi-v{}", ABI_VERSION + 1));
    pin_map(&old.join("maps/ENDPOINTS"), MapType::Hash, 4, 8, 16);
    pin_map(&newer.join("maps/ENDPOINTS"), MapType::Hash, 4, 8, 16);
    // Not vnetd's: left alone.
    std::fs::create_dir_all(dir.0.join("abi-vx")).unwrap();

    let dp = Dataplane::load_pinned(&dir.0).unwrap();
    assert!(!old.exists(), "an older ABI's pins are removed");
    assert!(!newer.exists(), "a newer ABI's pins are removed");
    assert!(dir.0.join("abi-vx").exists());
    let current = PinLayout::new(&dir.0);
    assert!(current.map(maps::ENDPOINTS).exists());
    drop(dp);

    pin_map(&old.join("maps/ENDPOINTS"), MapType::Hash, 4, 8, 16);
    dataplane::teardown(&dir.0).unwrap();
    assert!(!old.exists(), "teardown removes an older ABI");
    assert!(!current.root().exists(), "teardown removes this ABI");
    dataplane::teardown(&dir.0).expect("teardown twice is fine");
}

/// The programs TCX runs on `ifname`'s `hook`, by name.
fn tcx_programs(ifname: &str, hook: TcAttachType) -> Vec<String> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, hook).expect("querying TCX");
    programs
        .iter()
        .map(|p| p.name_as_str().unwrap_or("?").to_string())
        .collect()
}

/// The uplink gets `uplink_egress` on TCX egress beside `uplink_ingress`, pinned like it: a
/// second agent adopts the link (one program, not two), detaching the uplink removes it, and
/// so does teardown. Runs in a network namespace of its own thread (gone with it), on a veth.
#[test]
fn the_uplink_egress_link_is_pinned_adopted_and_removed() {
    let dir = BpffsDir::new();
    let bpffs = dir.0.clone();
    std::thread::spawn(move || {
        support::private_netns_with_veth_pair();
        let uplink = "pa";
        let pins = PinLayout::new(&bpffs);
        let egress_pin = pins.link(programs::UPLINK_TC_EGRESS, uplink);

        let mut first = Dataplane::load_pinned(&bpffs).unwrap();
        first.attach_uplink(uplink, true).unwrap();
        assert!(egress_pin.exists(), "{} pinned", egress_pin.display());
        assert_eq!(
            tcx_programs(uplink, TcAttachType::Egress),
            [programs::UPLINK_TC_EGRESS]
        );
        assert_eq!(
            tcx_programs(uplink, TcAttachType::Ingress),
            [programs::UPLINK_TC_INGRESS]
        );
        assert!(
            first
                .links()
                .unwrap()
                .contains(&(programs::UPLINK_TC_EGRESS.into(), uplink.into()))
        );
        drop(first);

        let mut second = Dataplane::load_pinned(&bpffs).unwrap();
        second.attach_uplink(uplink, true).unwrap();
        assert_eq!(
            tcx_programs(uplink, TcAttachType::Egress),
            [programs::UPLINK_TC_EGRESS],
            "the pinned egress link is adopted, not doubled"
        );
        second.detach_uplink(uplink).unwrap();
        assert!(!egress_pin.exists());
        // The link goes with its last reference, the pin; the kernel releases it from a work
        // queue, a moment later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !tcx_programs(uplink, TcAttachType::Egress).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the egress link outlived its pin"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        second.attach_uplink(uplink, true).unwrap();
        assert_eq!(tcx_programs(uplink, TcAttachType::Egress).len(), 1);
        dataplane::teardown(&bpffs).unwrap();
        assert!(
            tcx_programs(uplink, TcAttachType::Egress).is_empty(),
            "teardown detaches the egress link even while the agent holds the program"
        );
        assert!(tcx_programs(uplink, TcAttachType::Ingress).is_empty());
    })
    .join()
    .expect("the test thread");
}

/// Waits until TCX on `ifname`'s `hook` runs exactly `want` (the kernel releases a link whose
/// last reference went from a work queue, a moment later).
fn wait_for_tcx(ifname: &str, hook: TcAttachType, want: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = tcx_programs(ifname, hook);
        if now == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "TCX {hook:?} on {ifname} runs {now:?}, not {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A pod's host veth gets `pod_egress` on TCX egress beside `pod_ingress` on ingress, both
/// pinned under `links/<program>@<veth>`: a second agent adopts both (one program per hook,
/// not two), detaching the pod removes both pins and programs, a veth deleted and re-created
/// under the same name gets fresh links (the pinned ones are defunct), and teardown removes
/// them. Runs in a network namespace of its own thread (gone with it), on a veth.
#[test]
fn the_pod_links_are_pinned_adopted_and_removed() {
    let dir = BpffsDir::new();
    let bpffs = dir.0.clone();
    std::thread::spawn(move || {
        support::private_netns_with_veth_pair();
        let veth = "pa";
        let pins = PinLayout::new(&bpffs);
        let ingress_pin = pins.link(programs::POD_TC_INGRESS, veth);
        let egress_pin = pins.link(programs::POD_TC_EGRESS, veth);

        let mut first = Dataplane::load_pinned(&bpffs).unwrap();
        first.attach_pod(veth).unwrap();
        assert!(ingress_pin.exists(), "{} pinned", ingress_pin.display());
        assert!(egress_pin.exists(), "{} pinned", egress_pin.display());
        wait_for_tcx(veth, TcAttachType::Ingress, &[programs::POD_TC_INGRESS]);
        wait_for_tcx(veth, TcAttachType::Egress, &[programs::POD_TC_EGRESS]);
        let links = first.links().unwrap();
        for program in [programs::POD_TC_INGRESS, programs::POD_TC_EGRESS] {
            assert!(
                links.contains(&(program.into(), veth.into())),
                "{program} listed: {links:?}"
            );
        }
        let egress_link_id = |pin: &Path| {
            aya::programs::links::FdLink::from(
                aya::programs::links::PinnedLink::from_pin(pin).unwrap(),
            )
            .info()
            .unwrap()
            .id()
        };
        let adopted = egress_link_id(&egress_pin);
        drop(first);

        // An agent restart: the pinned links are adopted, their programs swapped.
        let mut second = Dataplane::load_pinned(&bpffs).unwrap();
        second.attach_pod(veth).unwrap();
        assert_eq!(
            egress_link_id(&egress_pin),
            adopted,
            "the pinned egress link is adopted"
        );
        assert_eq!(
            tcx_programs(veth, TcAttachType::Egress),
            [programs::POD_TC_EGRESS],
            "adopted, not doubled"
        );
        assert_eq!(
            tcx_programs(veth, TcAttachType::Ingress),
            [programs::POD_TC_INGRESS]
        );

        // CNI DEL (or the endpoint released): both pins go, and the programs with them.
        second.detach_pod(veth).unwrap();
        assert!(!ingress_pin.exists() && !egress_pin.exists());
        wait_for_tcx(veth, TcAttachType::Egress, &[]);
        wait_for_tcx(veth, TcAttachType::Ingress, &[]);
        second.detach_pod(veth).expect("detaching twice is fine");

        // The veth vanishes behind the agent's back and comes back under its name: the pinned
        // links are defunct and replaced by links on the new device.
        second.attach_pod(veth).unwrap();
        let before_vanishing = egress_link_id(&egress_pin);
        let run = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        run(&["link", "del", veth]);
        run(&["link", "add", veth, "type", "veth", "peer", "name", "pb"]);
        second.attach_pod(veth).unwrap();
        wait_for_tcx(veth, TcAttachType::Ingress, &[programs::POD_TC_INGRESS]);
        wait_for_tcx(veth, TcAttachType::Egress, &[programs::POD_TC_EGRESS]);
        assert_ne!(
            egress_link_id(&egress_pin),
            before_vanishing,
            "a fresh link on the new device"
        );

        dataplane::teardown(&bpffs).unwrap();
        assert!(tcx_programs(veth, TcAttachType::Egress).is_empty());
        assert!(tcx_programs(veth, TcAttachType::Ingress).is_empty());
    })
    .join()
    .expect("the test thread");
}
