//! BPF_PROG_RUN tests of the flow-log events: a new allowed flow and a denied first packet each
//! put one record in FLOW_EVENTS with the tuple, kind, verdict and the deciding classifier and
//! rule; an established flow's packets put none; a full ring counts what it could not take in
//! FLOW_EVENTS_LOST and never blocks the program; two CPUs racing on one new flow log it once.
//! Needs root (CAP_BPF).
mod support;

use std::{collections::BTreeMap, net::Ipv4Addr};

use support::*;
use vnetd::{
    compile::{NsgTables, ServiceTags, nsg::compile_nsgs},
    dataplane::{Dataplane, maps::nsg::switch_nsgs, tables::VersionedTables},
    spec::{
        Access, AddressPrefix, Direction, NetworkSecurityGroup, PortRange, Protocol, SecurityRule,
    },
};
use vnetd_common::{
    DropReason, Endpoint, FLOW_INBOUND, FLOW_OUTBOUND, FlowDecision, FlowEvent, FlowEventVerdict,
    FlowKey, FlowKind, NO_RULE, NsgVerdict, maps::FLOW_EVENTS_BYTES, programs,
};

/// `apps-nsg`: rule 0 denies SMTP out; then the defaults (1: AllowVnetOutBound).
fn deny_smtp() -> NetworkSecurityGroup {
    NetworkSecurityGroup {
        name: "apps-nsg".into(),
        security_rules: vec![SecurityRule {
            name: "deny-smtp-out".into(),
            description: None,
            priority: 200,
            direction: Direction::Outbound,
            access: Access::Deny,
            protocol: Protocol::Tcp,
            source_address_prefixes: vec![AddressPrefix::Any],
            source_port_ranges: vec![PortRange::ANY],
            destination_address_prefixes: vec![AddressPrefix::Any],
            destination_port_ranges: vec![PortRange::single(25)],
        }],
    }
}

/// Installs `apps-nsg` and makes it pod A's outbound NSG; returns its kernel classifier id.
fn pod_a_with_outbound_nsg(dp: &mut Dataplane, state: &StateDir) -> u32 {
    let vnet: ipnet::Ipv4Net = "10.0.0.0/16".parse().unwrap();
    let tags = ServiceTags {
        virtual_network: vec![vnet],
        internet: vnetd::compile::prefix::complement(&[vnet]),
    };
    let tables = compile_nsgs(&[deny_smtp()], &tags).expect("compiles");
    let mut versions = VersionedTables::open(state.path(), "nsg").unwrap();
    let mut kernel = BTreeMap::new();
    switch_nsgs(
        &mut versions,
        dp,
        &tables,
        |_, ids| {
            kernel = ids.clone();
            Ok(())
        },
        |_| Ok(()),
    )
    .expect("the classifiers are written");
    let out = kernel[&NsgTables::classifier_id(1, Direction::Outbound)];
    dp.put_endpoint(
        Ipv4Addr::from(POD_A),
        Endpoint {
            nsg_out_subnet: out,
            ..pod_a_endpoint()
        },
    )
    .unwrap();
    out
}

/// A TCP SYN from pod A to pod B's `dport`, from port 40000.
fn syn(dport: u16) -> Vec<u8> {
    let mut f = eth(HOST_A, MAC_A, 0x0800);
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&POD_A);
    f.extend_from_slice(&POD_B);
    let check = !ones_complement_sum(&f[14..34]);
    f[24..26].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

fn key(dport: u16) -> FlowKey {
    FlowKey {
        src_ip: POD_A,
        dst_ip: POD_B,
        src_port: 40000u16.to_be(),
        dst_port: dport.to_be(),
        proto: 6,
        _pad: [0; 3],
    }
}

fn drain(ring: &mut vnetd::dataplane::maps::FlowEventRing) -> Vec<FlowEvent> {
    std::iter::from_fn(|| ring.next_event()).collect()
}

const UNCLASSIFIED: FlowDecision = FlowDecision {
    classifier_subnet: 0,
    classifier_group: 0,
    rule_subnet: NO_RULE,
    rule_group: NO_RULE,
    verdict: NsgVerdict::Unclassified as u8,
    _pad: [0; 3],
};

#[test]
fn new_and_denied_flows_each_record_one_event_and_a_full_ring_counts_lost() {
    let state = StateDir::new("progrun-flowlog");
    let mut dp = dataplane();
    let out = pod_a_with_outbound_nsg(&mut dp, &state);
    let mut ring = dp.flow_event_ring().unwrap();
    assert!(drain(&mut ring).is_empty());

    // A new allowed flow: one event, with the outbound decision (AllowVnetOutBound, bit 1).
    let web = syn(80);
    assert_ne!(
        run(&mut dp, programs::POD_TC_INGRESS, &web).verdict,
        TC_ACT_SHOT
    );
    let events = drain(&mut ring);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(e.key, key(80));
    assert_eq!(e.kind, FlowKind::Nsg as u8);
    assert_eq!(e.verdict, FlowEventVerdict::Allowed as u8);
    assert_eq!(
        e.decisions[FLOW_OUTBOUND],
        FlowDecision {
            classifier_subnet: out,
            rule_subnet: 1,
            verdict: NsgVerdict::Allow as u8,
            ..UNCLASSIFIED
        }
    );
    assert_eq!(e.decisions[FLOW_INBOUND], UNCLASSIFIED, "pod B has no NSG");
    let now = vnetd::gc::monotonic_ns();
    assert!(
        e.time_ns <= now && now - e.time_ns < 10_000_000_000,
        "{} vs {now}",
        e.time_ns
    );

    // The same flow's later packets record nothing.
    for _ in 0..3 {
        run(&mut dp, programs::POD_TC_INGRESS, &web);
    }
    assert!(
        drain(&mut ring).is_empty(),
        "an established flow wrote events"
    );

    // A denied first packet: one event naming the denying rule (deny-smtp-out, bit 0).
    let smtp = syn(25);
    assert_eq!(
        run(&mut dp, programs::POD_TC_INGRESS, &smtp).verdict,
        TC_ACT_SHOT
    );
    let events = drain(&mut ring);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    assert_eq!(e.key, key(25));
    assert_eq!(
        (e.kind, e.verdict, e.reason),
        (
            0,
            FlowEventVerdict::Denied as u8,
            DropReason::NsgDenied as u8
        )
    );
    assert_eq!(
        e.decisions[FLOW_OUTBOUND],
        FlowDecision {
            classifier_subnet: out,
            rule_subnet: 0,
            verdict: NsgVerdict::Deny as u8,
            ..UNCLASSIFIED
        }
    );
    assert_eq!(dp.flow_records_lost().unwrap(), 0);

    // Nobody reads: more denied packets than the ring holds. Each is still dropped (the
    // program never waits), and what did not fit is counted.
    let capacity = FLOW_EVENTS_BYTES as usize / (size_of::<FlowEvent>() + 8);
    let sent = capacity + 500;
    for _ in 0..sent {
        assert_eq!(
            run(&mut dp, programs::POD_TC_INGRESS, &smtp).verdict,
            TC_ACT_SHOT
        );
    }
    let lost = dp.flow_records_lost().unwrap();
    let kept = drain(&mut ring).len();
    assert!(lost >= 500, "lost {lost} of {sent} (ring of {capacity})");
    assert_eq!(
        kept as u64 + lost,
        sent as u64,
        "every record kept or counted lost"
    );
    assert_eq!(drops(&dp, DropReason::NsgDenied), 1 + sent as u64);

    // Once read, the ring takes records again.
    run(&mut dp, programs::POD_TC_INGRESS, &smtp);
    assert_eq!(drain(&mut ring).len(), 1);
    assert_eq!(dp.flow_records_lost().unwrap(), lost);
}

/// BPF_PROG_RUN of `prog_fd` once on `data` (the kernel's default skb), on the calling thread's
/// CPU: the raw syscall, so two threads can run one program at once.
fn test_run_raw(prog_fd: i32, data: &[u8]) -> u32 {
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        // Explicit: the kernel refuses non-zero bytes past the last field.
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_TEST_RUN and lives across the call;
    // data_in points at data.len() readable bytes, and no output buffer is given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    attr.retval
}

/// Two CPUs on the same new flow's first packet at once: the flow is created once, and logged
/// once, by the CPU whose entries went in (the other uses them). Each of 3000 flows is sent
/// by both CPUs in the same instant; the test needs some of them to have raced (counted in
/// `insert_races`).
#[test]
fn two_cpus_creating_the_same_flow_log_it_once() {
    use std::{
        os::fd::{AsFd, AsRawFd},
        sync::{
            Arc,
            atomic::{AtomicU32, Ordering},
        },
    };
    const FLOWS: u16 = 3000;
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let state = StateDir::new("progrun-flowlog-race");
    let mut dp = dataplane();
    pod_a_with_outbound_nsg(&mut dp, &state);
    let mut ring = dp.flow_event_ring().unwrap();
    let prog_fd = dp
        .classifier(programs::POD_TC_INGRESS)
        .unwrap()
        .fd()
        .unwrap()
        .as_fd()
        .as_raw_fd();
    // The flow both threads send next (a port each); 0 is "stop".
    let next = Arc::new(AtomicU32::new(u32::MAX));
    let sender = |cpu: usize, next: Arc<AtomicU32>| {
        move || {
            pin_to_cpu(cpu);
            let mut last = u32::MAX;
            loop {
                let port = next.load(Ordering::Acquire);
                if port == last {
                    std::hint::spin_loop();
                    continue;
                }
                if port == 0 {
                    return;
                }
                last = port;
                test_run_raw(prog_fd, &syn(port as u16));
            }
        }
    };
    let other = std::thread::spawn(sender(1, next.clone()));
    pin_to_cpu(0);
    let mut events = Vec::new();
    for port in 1000..1000 + FLOWS {
        next.store(u32::from(port), Ordering::Release);
        test_run_raw(prog_fd, &syn(port));
        // Both sent once the flow's entries are there and the other thread has moved on.
        std::thread::sleep(std::time::Duration::from_micros(50));
        events.extend(drain(&mut ring));
    }
    next.store(0, Ordering::Release);
    other.join().unwrap();
    events.extend(drain(&mut ring));

    let mut per_flow: BTreeMap<u16, usize> = BTreeMap::new();
    for e in &events {
        *per_flow.entry(u16::from_be(e.key.dst_port)).or_default() += 1;
    }
    let twice: Vec<_> = per_flow.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {FLOWS} flows logged more than once, the first: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(per_flow.len(), FLOWS as usize, "every flow logged");
    let races = dp
        .conntrack_stats()
        .unwrap()
        .into_iter()
        .find(|(stat, _)| *stat == vnetd_common::ConntrackStat::InsertRaces)
        .unwrap()
        .1;
    assert!(
        races > 0,
        "no two CPUs raced on a flow: the test proved nothing"
    );
    eprintln!("{races} races over {FLOWS} flows");
}
