//! Reloads the agent refuses, and what a refused reload leaves: nothing. A real agent in a
//! namespace of its own with a pod and a container group (`support::agent_node`): a reload
//! whose NAT tables do not fit changes neither the endpoints' tables nor the uplink; a reload
//! without the attached group is refused naming it. Needs root (CAP_BPF, CAP_NET_ADMIN) and a
//! bpffs on /sys/fs/bpf.
mod support;

use std::{collections::BTreeSet, process::Command};

use aya::maps::HashMap;
use support::agent_node::*;
use vnetd::{daemon::Agent, plan::NodePlan, spec::parse_str};
use vnetd_common::{GroupPortKey, maps, programs};

/// A reload whose NAT tables do not fit (GROUP_PORTS full) is refused, and nothing of it takes
/// effect: not its new NSG rules either, though their tables fit. Then, with room again, the
/// same reload applies.
#[test]
fn a_reload_whose_nat_tables_do_not_fit_changes_nothing() {
    let scratch = Scratch::new("nat");
    on_a_node(|| async {
        let bpffs = &scratch.bpffs;
        let mut agent = Agent::start(plan(80, TCP_ONLY), bpffs, &scratch.state)
            .await
            .expect("the agent starts");
        added(&mut agent, add(&scratch, 0, "pod1", None)).await;
        added(&mut agent, add(&scratch, 1, "grp1", Some("api"))).await;
        let before = endpoints(bpffs);
        let tables_before = std::fs::read_to_string(scratch.state.join("tables.json")).unwrap();
        let ours = BTreeSet::from([(GROUP_IP, TCP, 8080)]);
        assert_eq!(group_ports(bpffs), ours);

        let filler: Vec<GroupPortKey> = (1..maps::GROUP_PORTS_MAX)
            .map(|i| GroupPortKey {
                ip: [192, 0, 2, 1],
                port: (i as u16).to_be(),
                proto: TCP,
                _pad: 0,
            })
            .collect();
        let mut map: HashMap<_, GroupPortKey, u32> =
            HashMap::try_from(pinned_map(bpffs, maps::GROUP_PORTS)).unwrap();
        for key in &filler {
            map.insert(key, 1, 0).unwrap();
        }
        // New inbound rules for the pod (web port 8080), a new exposed port for the group, and
        // another uplink.
        let status = Command::new("ip")
            .args(["link", "add", "up2", "type", "veth", "peer", "name", "up3"])
            .status()
            .unwrap();
        assert!(status.success(), "ip link add up2");
        let uplinks = |agent: &Agent| -> BTreeSet<String> {
            let links = agent.status_report().unwrap().links;
            links
                .into_iter()
                .filter(|(program, _)| program == programs::UPLINK_XDP)
                .map(|(_, link)| link)
                .collect()
        };
        assert_eq!(uplinks(&agent), BTreeSet::from(["up0".to_string()]));
        let elsewhere = {
            let mut p = plan(8080, BOTH_PORTS);
            p.uplink = "up2".into();
            p
        };
        let err = agent
            .reload(elsewhere)
            .await
            .expect_err("a reload whose exposed ports do not fit is refused");
        assert!(format!("{err:#}").contains("GROUP_PORTS"), "{err:#}");
        assert_eq!(
            endpoints(bpffs),
            before,
            "the endpoints stay on the old tables"
        );
        assert_eq!(
            uplinks(&agent),
            BTreeSet::from(["up0".to_string()]),
            "the programs stay on the old uplink"
        );
        // The table follows the running plan again: exactly its entries (the filler was
        // nobody's).
        assert_eq!(group_ports(bpffs), ours);
        assert_eq!(
            std::fs::read_to_string(scratch.state.join("tables.json")).unwrap(),
            tables_before,
            "the recorded ids stay"
        );

        agent
            .reload(plan(8080, BOTH_PORTS))
            .await
            .expect("with room, the reload applies");
        let after = endpoints(bpffs);
        assert_ne!(
            after[&POD_IP].nsg_in_subnet, before[&POD_IP].nsg_in_subnet,
            "the pod's new inbound rules"
        );
        assert_eq!(
            group_ports(bpffs),
            BTreeSet::from([(GROUP_IP, TCP, 8080), (GROUP_IP, UDP, 53)])
        );

        // A reload without the attached group (renamed: its address is another group's now)
        // is refused naming it, as one without a subnet in use is: its endpoint would stay
        // attached to nothing.
        let text = SPEC
            .replace("WEB_PORT", "8080")
            .replace("GROUP_PORTS", BOTH_PORTS)
            .replace("  - name: api\n", "  - name: api2\n");
        let spec = parse_str(&text).expect("the test spec parses");
        let without = NodePlan::from_spec(&spec, "node-1").expect("the test spec is valid");
        let applied = endpoints(bpffs);
        let err = agent
            .reload(without)
            .await
            .expect_err("a reload without an attached group is refused");
        assert!(
            format!("{err:#}").contains("container group \"api\" is attached as 10.0.1.10"),
            "{err:#}"
        );
        assert_eq!(endpoints(bpffs), applied);
        assert_eq!(
            group_ports(bpffs),
            BTreeSet::from([(GROUP_IP, TCP, 8080), (GROUP_IP, UDP, 53)])
        );
    });
}
