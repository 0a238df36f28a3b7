//! The agent writes the NSG classifiers and container groups' exposed ports into a real, pinned
//! dataplane and points every endpoint at them: at start, at CNI ADD (each new classifier gets
//! its standby after its switch, holding the same rules), across a reload that changes a rule
//! (written into the standby; the old id is the standby now), one-rule changes back and forth
//! (the two ids alternate, the standby never serves, counts carried), a reload whose NSG write
//! does not fit even without the standbys (refused, the serving ids unchanged) and a restart
//! (ids and standbys kept). Needs root (CAP_BPF, CAP_NET_ADMIN) and a bpffs on /sys/fs/bpf.
//!
//! The node, its spec and its scratch (pins, state, pods' namespaces, removed on failure too)
//! are `support::agent_node`'s.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aya::maps::{HashMap, LpmTrie, PerCpuHashMap, PerCpuValues};
use support::agent_node::*;
use vnetd::{
    api::proto::{Attachment, Request, Response},
    daemon::Agent,
    dataplane::maps::nsg,
    plan::NodePlan,
    spec::{Direction, parse_str},
};
use vnetd_common::{
    ENDPOINT_EXPOSED_PORTS_ONLY, Endpoint, NsgAddrKey, NsgPortKey, NsgProtoKey, NsgRule,
    NsgRuleKey, RuleBitmap, maps, programs,
};

/// The spec of [`plan`] (web port 8080, TCP only) without its inbound rule allow-web.
fn plan_without_web() -> NodePlan {
    let text = SPEC
        .replace("WEB_PORT", "8080")
        .replace("GROUP_PORTS", TCP_ONLY);
    let rule = text.find("      - name: allow-web").unwrap();
    let next = text.find("      - name: deny-smtp-out").unwrap();
    let text = format!("{}{}", &text[..rule], &text[next..]);
    let spec = parse_str(&text).expect("the test spec parses");
    NodePlan::from_spec(&spec, "node-1").expect("the test spec is valid")
}

/// The spec of [`plan`] (web port 8080, TCP only) with `n` more inbound rules in apps-nsg.
fn plan_with_more_rules(n: u32) -> NodePlan {
    let text = SPEC
        .replace("WEB_PORT", "8080")
        .replace("GROUP_PORTS", TCP_ONLY);
    let extra: String = (0..n)
        .map(|i| {
            format!(
                "      - name: extra-{i}\n        priority: {}\n        direction: Inbound\n        \
                 access: Allow\n        protocol: Tcp\n        sourceAddressPrefix: \"*\"\n        \
                 sourcePortRange: \"*\"\n        destinationAddressPrefix: \"*\"\n        \
                 destinationPortRange: \"{}\"\n",
                300 + i,
                9000 + i
            )
        })
        .collect();
    let at = text.find("      - name: deny-smtp-out").unwrap();
    let text = format!("{}{extra}{}", &text[..at], &text[at..]);
    let spec = parse_str(&text).expect("the test spec parses");
    NodePlan::from_spec(&spec, "node-1").expect("the test spec is valid")
}

/// The standby id of each classifier, by its serving id, as the agent recorded them.
fn recorded_standbys(state: &Path) -> BTreeMap<u32, u32> {
    let text = std::fs::read_to_string(state.join("tables.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["nsgs"]["tables"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|slot| {
            let id = slot["id"].as_u64()? as u32;
            Some((id, slot["standby"].as_u64()? as u32))
        })
        .collect()
}

/// The classifier ids with entries in NSG_RULES, NSG_PORTLESS, NSG_SRC_ADDR and NSG_HITS,
/// map by map.
fn classifier_ids(bpffs: &Path) -> [BTreeSet<u32>; 4] {
    let rules: HashMap<_, NsgRuleKey, NsgRule> =
        HashMap::try_from(pinned_map(bpffs, maps::NSG_RULES)).unwrap();
    let portless: HashMap<_, u32, RuleBitmap> =
        HashMap::try_from(pinned_map(bpffs, maps::NSG_PORTLESS)).unwrap();
    let src: LpmTrie<_, NsgAddrKey, RuleBitmap> =
        LpmTrie::try_from(pinned_map(bpffs, maps::NSG_SRC_ADDR)).unwrap();
    let hits: PerCpuHashMap<_, NsgRuleKey, u64> =
        PerCpuHashMap::try_from(pinned_map(bpffs, maps::NSG_HITS)).unwrap();
    [
        rules.keys().map(|k| k.unwrap().classifier).collect(),
        portless.keys().map(Result::unwrap).collect(),
        src.keys()
            .map(|k| u32::from_be_bytes(k.unwrap().data().classifier))
            .collect(),
        hits.keys().map(|k| k.unwrap().classifier).collect(),
    ]
}

/// A rule's counter as the programs leave it: `n` more hits on CPU 0.
fn count_hits(bpffs: &Path, classifier: u32, rule: u32, n: u64) {
    let mut hits: PerCpuHashMap<_, NsgRuleKey, u64> =
        PerCpuHashMap::try_from(pinned_map(bpffs, maps::NSG_HITS)).unwrap();
    let key = NsgRuleKey { classifier, rule };
    let mut values: Vec<u64> = hits.get(&key, 0).unwrap().iter().copied().collect();
    values[0] += n;
    hits.insert(key, PerCpuValues::try_from(values).unwrap(), 0)
        .unwrap();
}

/// Every counter of `classifier`, summed over CPUs, by rule index.
fn counters(bpffs: &Path, classifier: u32) -> BTreeMap<u32, u64> {
    let hits: PerCpuHashMap<_, NsgRuleKey, u64> =
        PerCpuHashMap::try_from(pinned_map(bpffs, maps::NSG_HITS)).unwrap();
    hits.iter()
        .map(Result::unwrap)
        .filter(|(k, _)| k.classifier == classifier)
        .map(|(k, v)| (k.rule, v.iter().sum()))
        .collect()
}

/// What the pinned NSG maps hold under `id`, read from the kernel.
fn classifier_in_kernel(bpffs: &Path, id: u32) -> nsg::ClassifierEntries {
    let mut out = nsg::ClassifierEntries::default();
    for (name, lpm) in [
        (maps::NSG_SRC_ADDR, &mut out.src_addr),
        (maps::NSG_DST_ADDR, &mut out.dst_addr),
    ] {
        let map: LpmTrie<_, NsgAddrKey, RuleBitmap> =
            LpmTrie::try_from(pinned_map(bpffs, name)).unwrap();
        for entry in map.iter() {
            let (key, rules) = entry.unwrap();
            let data = key.data();
            if u32::from_be_bytes(data.classifier) == id {
                let len = (key.prefix_len() - NsgAddrKey::CLASSIFIER_BITS) as u8;
                lpm.insert((len, u32::from_be_bytes(data.addr)), rules);
            }
        }
    }
    for (name, lpm) in [
        (maps::NSG_SRC_PORT, &mut out.src_port),
        (maps::NSG_DST_PORT, &mut out.dst_port),
    ] {
        let map: LpmTrie<_, NsgPortKey, RuleBitmap> =
            LpmTrie::try_from(pinned_map(bpffs, name)).unwrap();
        for entry in map.iter() {
            let (key, rules) = entry.unwrap();
            let data = key.data();
            if u32::from_be_bytes(data.classifier) == id {
                let len = (key.prefix_len() - NsgAddrKey::CLASSIFIER_BITS) as u8;
                lpm.insert((len, u32::from(u16::from_be_bytes(data.port))), rules);
            }
        }
    }
    let proto: HashMap<_, NsgProtoKey, RuleBitmap> =
        HashMap::try_from(pinned_map(bpffs, maps::NSG_PROTO)).unwrap();
    for entry in proto.iter() {
        let (key, rules) = entry.unwrap();
        if key.classifier == id {
            out.proto.insert(key.proto, rules);
        }
    }
    let portless: HashMap<_, u32, RuleBitmap> =
        HashMap::try_from(pinned_map(bpffs, maps::NSG_PORTLESS)).unwrap();
    out.portless = portless.get(&id, 0).unwrap();
    let rules: HashMap<_, NsgRuleKey, NsgRule> =
        HashMap::try_from(pinned_map(bpffs, maps::NSG_RULES)).unwrap();
    let by_index: BTreeMap<u32, NsgRule> = rules
        .iter()
        .map(Result::unwrap)
        .filter(|(k, _)| k.classifier == id)
        .map(|(k, rule)| (k.rule, rule))
        .collect();
    assert!(
        by_index.keys().copied().eq(0..by_index.len() as u32),
        "classifier {id}'s rules are 0..n: {:?}",
        by_index.keys()
    );
    out.rules = by_index.into_values().collect();
    out
}

/// The entries of apps-nsg's inbound classifier under `plan`, as the kernel must hold them.
fn apps_inbound(plan: &NodePlan) -> nsg::ClassifierEntries {
    let classifier = plan
        .compiled()
        .nsgs
        .classifiers
        .iter()
        .find(|c| c.nsg_name == "apps-nsg" && c.direction == Direction::Inbound)
        .unwrap();
    nsg::entries(classifier)
}

/// `apps-nsg`'s `rule`'s hits as the agent reports them.
fn reported_hits(agent: &Agent, rule: &str) -> u64 {
    agent
        .status_report()
        .unwrap()
        .nsg_rule_hits
        .iter()
        .find(|h| h.nsg == "apps-nsg" && h.rule == rule)
        .unwrap_or_else(|| panic!("no hits of apps-nsg/{rule}"))
        .hits
}

#[test]
fn endpoints_follow_their_nsgs_and_groups_their_exposed_ports() {
    let scratch = Scratch::new("nsg");
    on_a_node(|| scenario(&scratch));
}

async fn scenario(scratch: &Scratch) {
    let bpffs = &scratch.bpffs;
    let mut agent = Agent::start(plan(80, BOTH_PORTS), bpffs, &scratch.state)
        .await
        .expect("the agent starts");
    assert_eq!(
        added(&mut agent, add(scratch, 0, "pod1", None)).await,
        POD_IP
    );
    assert_eq!(
        added(&mut agent, add(scratch, 1, "grp1", Some("api"))).await,
        GROUP_IP
    );

    // Start and ADD: the pod points at apps-nsg, the group at aci-nsg, both directions.
    let first = endpoints(bpffs);
    let (pod, group) = (first[&POD_IP], first[&GROUP_IP]);
    for (what, ep) in [("pod", pod), ("group", group)] {
        assert!(
            ep.nsg_in_subnet != 0 && ep.nsg_out_subnet != 0,
            "the {what} carries its subnet's classifiers: {ep:?}"
        );
        assert_eq!((ep.nsg_in_group, ep.nsg_out_group), (0, 0), "{what}");
    }
    let ids = |ep: &Endpoint| [ep.nsg_in_subnet, ep.nsg_out_subnet];
    let installed: BTreeSet<u32> = ids(&pod).into_iter().chain(ids(&group)).collect();
    assert_eq!(installed.len(), 4, "four classifiers: {pod:?} {group:?}");
    // Each has its standby, prepared after its switch: another id with the same rules.
    let standbys = recorded_standbys(&scratch.state);
    assert_eq!(
        standbys.keys().copied().collect::<BTreeSet<u32>>(),
        installed
    );
    let held: BTreeSet<u32> = installed.iter().chain(standbys.values()).copied().collect();
    assert_eq!(held.len(), 8, "four serving, four standbys: {standbys:?}");
    for present in classifier_ids(bpffs) {
        assert_eq!(present, held, "every NSG map holds exactly them");
    }
    assert_eq!(
        classifier_in_kernel(bpffs, standbys[&pod.nsg_in_subnet]),
        classifier_in_kernel(bpffs, pod.nsg_in_subnet),
        "the standby holds the serving rules"
    );
    assert_eq!(
        pod.flags & ENDPOINT_EXPOSED_PORTS_ONLY,
        0,
        "a pod is reachable on any port"
    );
    assert_ne!(group.flags & ENDPOINT_EXPOSED_PORTS_ONLY, 0);
    assert_eq!(
        group_ports(bpffs),
        BTreeSet::from([(GROUP_IP, TCP, 8080), (GROUP_IP, UDP, 53)])
    );
    let status = agent.status_report().unwrap();
    let pod_veth = &status
        .endpoints
        .iter()
        .find(|e| e.ip == POD_IP)
        .unwrap()
        .host_ifname;
    for program in [programs::POD_TC_INGRESS, programs::POD_TC_EGRESS] {
        assert!(
            status.links.contains(&(program.into(), pod_veth.clone())),
            "{program} on {pod_veth}: {:?}",
            status.links
        );
    }
    let names: BTreeSet<(String, String)> = status
        .nsg_rule_hits
        .iter()
        .map(|h| (h.nsg.clone(), h.rule.clone()))
        .collect();
    for (nsg, rule) in [
        ("apps-nsg", "allow-web"),
        ("apps-nsg", "deny-smtp-out"),
        ("apps-nsg", "DenyAllInBound"),
        ("aci-nsg", "AllowVnetOutBound"),
    ] {
        assert!(
            names.contains(&(nsg.into(), rule.into())),
            "{nsg}/{rule} in {names:?}"
        );
    }

    // A reload whose NSG write does not fit (NSG_RULES is full, and 200 more rules need more
    // room than the standbys free) is refused: the standbys, a cache, are dropped to make room
    // and the write tried again whole; the serving ids and their rules stay.
    let mut filler = Vec::new();
    {
        let mut rules: HashMap<_, NsgRuleKey, NsgRule> =
            HashMap::try_from(pinned_map(bpffs, maps::NSG_RULES)).unwrap();
        for rule in 0u32.. {
            let key = NsgRuleKey {
                classifier: 1_000_000,
                rule,
            };
            if rules.insert(key, NsgRule::default(), 0).is_err() {
                break;
            }
            filler.push(key);
        }
    }
    let tables_before = std::fs::read_to_string(scratch.state.join("tables.json")).unwrap();
    let err = agent
        .reload(plan_with_more_rules(200))
        .await
        .expect_err("a reload whose NSG tables do not fit is refused");
    assert!(format!("{err:#}").contains("NSG"), "{err:#}");
    assert_eq!(endpoints(bpffs), first, "the endpoints stay on the old ids");
    let [rules, portless, src, hits] = classifier_ids(bpffs);
    for present in [portless, src, hits] {
        assert_eq!(
            present, installed,
            "the new classifier's entries and the standbys are removed"
        );
    }
    assert_eq!(
        rules,
        installed.iter().copied().chain([1_000_000]).collect(),
        "and the filler"
    );
    assert_eq!(
        classifier_in_kernel(bpffs, pod.nsg_in_subnet),
        apps_inbound(&plan(80, BOTH_PORTS)),
        "the serving rules are untouched"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.state.join("tables.json")).unwrap(),
        tables_before,
        "the recorded ids stay (the standbys missing from the maps are written whole)"
    );
    {
        let mut rules: HashMap<_, NsgRuleKey, NsgRule> =
            HashMap::try_from(pinned_map(bpffs, maps::NSG_RULES)).unwrap();
        for key in &filler {
            rules.remove(key).unwrap();
        }
    }

    // A reload with room: apps-nsg's inbound rules changed, so the pod's inbound classifier
    // has a new id (fresh: its standby was dropped); the old one is kept as its standby (no
    // endpoint points at it, its counters reset); the rest keep their ids and get their
    // standbys back.
    count_hits(bpffs, pod.nsg_in_subnet, 0, 7);
    agent
        .reload(plan(8080, TCP_ONLY))
        .await
        .expect("the reload applies");
    let second = endpoints(bpffs);
    let (pod2, group2) = (second[&POD_IP], second[&GROUP_IP]);
    assert_ne!(pod2.nsg_in_subnet, pod.nsg_in_subnet, "a new inbound id");
    assert_ne!(pod2.nsg_in_subnet, 0);
    assert_eq!(
        pod2.nsg_out_subnet, pod.nsg_out_subnet,
        "outbound unchanged"
    );
    assert_eq!(ids(&group2), ids(&group), "aci-nsg unchanged");
    let standbys = recorded_standbys(&scratch.state);
    assert_eq!(standbys[&pod2.nsg_in_subnet], pod.nsg_in_subnet);
    let with_standby: BTreeSet<u32> = standbys
        .iter()
        .flat_map(|(id, standby)| [*id, *standby])
        .collect();
    assert_eq!(with_standby.len(), 8, "{standbys:?}");
    for present in classifier_ids(bpffs) {
        assert_eq!(present, with_standby, "four serving, four standbys");
    }
    assert!(
        counters(bpffs, pod.nsg_in_subnet).values().all(|n| *n == 0),
        "the standby's counters are reset: {:?}",
        counters(bpffs, pod.nsg_in_subnet)
    );
    assert_eq!(
        reported_hits(&agent, "allow-web"),
        7,
        "the count is carried"
    );
    assert_eq!(
        group_ports(bpffs),
        BTreeSet::from([(GROUP_IP, TCP, 8080)]),
        "the port the reload closed is gone"
    );

    // One-rule changes, back and forth and to a port never used: the pod alternates between
    // the classifier's two ids, each change written into the one that does not serve; no
    // endpoint ever points at the standby; the serving id holds exactly the latest rules; the
    // counts are carried by name through every change.
    let (mut serving, mut standby) = (pod2.nsg_in_subnet, pod.nsg_in_subnet);
    let mut counted = 7;
    for (i, port) in [80, 8080, 80, 81, 81, 8080].into_iter().enumerate() {
        count_hits(bpffs, serving, 0, 3);
        counted += 3;
        let next = plan(port, TCP_ONLY);
        let want = apps_inbound(&next);
        let unchanged = classifier_in_kernel(bpffs, serving) == want;
        agent
            .reload(next)
            .await
            .expect("the one-rule change applies");
        let now = endpoints(bpffs);
        let in_id = now[&POD_IP].nsg_in_subnet;
        if unchanged {
            assert_eq!(in_id, serving, "change {i}: the same rules keep their id");
        } else {
            assert_eq!(
                in_id, standby,
                "change {i}: the pod moves to the standby id"
            );
            (serving, standby) = (standby, serving);
            assert!(
                counters(bpffs, standby).values().all(|n| *n == 0),
                "change {i}: the standby's counters are reset"
            );
        }
        for ep in now.values() {
            let used = [
                ep.nsg_in_subnet,
                ep.nsg_in_group,
                ep.nsg_out_subnet,
                ep.nsg_out_group,
            ];
            assert!(
                !used.contains(&standby),
                "change {i}: {ep:?} uses the standby"
            );
        }
        assert_eq!(
            classifier_in_kernel(bpffs, serving),
            want,
            "change {i}: the serving classifier holds port {port}'s rules"
        );
        for present in classifier_ids(bpffs) {
            assert_eq!(present, with_standby, "change {i}: the same eight ids");
        }
        assert_eq!(
            reported_hits(&agent, "allow-web"),
            counted,
            "change {i}: the count is carried"
        );
    }
    // A change of the rule count (allow-web dropped, then back): the standby written into
    // holds exactly the new rules, none of the old indices beyond them.
    for next in [plan_without_web(), plan(8080, TCP_ONLY)] {
        let want = apps_inbound(&next);
        agent.reload(next).await.expect("the rule count changes");
        let in_id = endpoints(bpffs)[&POD_IP].nsg_in_subnet;
        assert_eq!(in_id, standby, "the pod moves to the standby id");
        (serving, standby) = (standby, serving);
        assert_eq!(classifier_in_kernel(bpffs, serving), want);
        assert!(
            counters(bpffs, serving)
                .keys()
                .all(|rule| (*rule as usize) < want.rules.len()),
            "no counter beyond the rules: {:?}",
            counters(bpffs, serving)
        );
    }
    let last = endpoints(bpffs);

    // A restart adopts the pins: the same ids, the same entries, the standby kept (the next
    // change is written into it).
    drop(agent);
    let mut agent = Agent::start(plan(8080, TCP_ONLY), bpffs, &scratch.state)
        .await
        .expect("the agent restarts");
    assert_eq!(endpoints(bpffs), last, "a restart keeps the ids");
    assert_eq!(group_ports(bpffs), BTreeSet::from([(GROUP_IP, TCP, 8080)]));
    for present in classifier_ids(bpffs) {
        assert_eq!(present, with_standby, "the standby is kept");
    }
    agent
        .reload(plan(443, TCP_ONLY))
        .await
        .expect("a change after the restart applies");
    assert_eq!(endpoints(bpffs)[&POD_IP].nsg_in_subnet, standby);
    assert_eq!(
        classifier_in_kernel(bpffs, standby),
        apps_inbound(&plan(443, TCP_ONLY))
    );
    let (serving, standby) = (standby, serving);

    // Standbys are a cache: a change that does not fit beside them (NSG_DST_PORT full) deletes
    // them and writes the classifier whole under a fresh id.
    let mut filler = Vec::new();
    {
        let mut ports: LpmTrie<_, NsgPortKey, RuleBitmap> =
            LpmTrie::try_from(pinned_map(bpffs, maps::NSG_DST_PORT)).unwrap();
        for i in 0u32.. {
            let key = aya::maps::lpm_trie::Key::new(
                NsgAddrKey::CLASSIFIER_BITS + 16,
                NsgPortKey {
                    classifier: (2_000_000 + i / 65_536).to_be_bytes(),
                    port: ((i % 65_536) as u16).to_be_bytes(),
                },
            );
            if ports.insert(&key, RuleBitmap::default(), 0).is_err() {
                break;
            }
            filler.push(key);
        }
    }
    agent
        .reload(plan(8443, TCP_ONLY))
        .await
        .expect("a change that does not fit beside the standby applies without it");
    let fresh = endpoints(bpffs)[&POD_IP].nsg_in_subnet;
    assert!(
        ![serving, standby, 0].contains(&fresh),
        "a fresh id, not {serving} or {standby}: {fresh}"
    );
    assert_eq!(
        classifier_in_kernel(bpffs, fresh),
        apps_inbound(&plan(8443, TCP_ONLY))
    );
    let [rules, portless, src, hits] = classifier_ids(bpffs);
    for present in [rules, portless, src, hits] {
        assert!(
            present.contains(&fresh) && present.contains(&serving) && !present.contains(&standby),
            "the standby is gone, the old serving id waits: {present:?}"
        );
    }
    {
        let mut ports: LpmTrie<_, NsgPortKey, RuleBitmap> =
            LpmTrie::try_from(pinned_map(bpffs, maps::NSG_DST_PORT)).unwrap();
        // The agent deleted them already (entries of ids it does not hold are stale to it).
        for key in &filler {
            let _ = ports.remove(key);
        }
    }

    // DEL of the group: its entry and exposed ports go.
    let del = Request::Del(Attachment {
        network: "vnetd".into(),
        container_id: "grp1".into(),
        ifname: "eth0".into(),
    });
    assert!(matches!(agent.handle(del).await, Response::Done));
    assert!(!endpoints(bpffs).contains_key(&GROUP_IP));
    assert!(group_ports(bpffs).is_empty(), "{:?}", group_ports(bpffs));
}
