//! Root-only tests against the kernel. Each test runs on a thread that first unshares a fresh
//! network namespace as its "node" (so nothing is ever created in the real root namespace; the
//! namespace disappears with the thread) and creates its pod namespaces with `ip netns add
//! vnltest<pid>-<tag>`, removed by a guard, also on panic.

use std::process::Command;

use nix::sched::unshare;
use serde_json::Value;

use std::{
    future::Future,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use nix::sched::CloneFlags;

use super::{links::link_by_name, *};

/// Runs `body` on a thread in a fresh network namespace with only `lo`, on a current-thread
/// runtime, so every "node" socket and child process is in that namespace.
fn in_fresh_node_ns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let result = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET) (needs root)");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body());
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A pod namespace, deleted on drop.
struct PodNs {
    name: String,
}

impl PodNs {
    fn new(tag: &str) -> Self {
        sweep_dead();
        let name = format!("vnltest{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        PodNs { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-n", &self.name, "-j"];
        full.extend_from_slice(args);
        serde_json::from_str(&run("ip", &full)).unwrap()
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Removes pod namespaces of test processes that died without cleaning up (SIGKILL).
fn sweep_dead() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("vnltest")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A process sitting in a pod namespace, killed on drop.
struct NsHolder(std::process::Child);

impl NsHolder {
    fn new(pod: &PodNs) -> Self {
        use std::os::unix::fs::MetadataExt;
        let child = Command::new("ip")
            .args(["netns", "exec", &pod.name, "sleep", "60"])
            .spawn()
            .unwrap();
        let holder = NsHolder(child);
        // `ip netns exec` enters the namespace and then execs sleep in the same process;
        // wait until it has, or the path would still name the node namespace.
        let want = std::fs::metadata(pod.path()).unwrap().ino();
        for _ in 0..200 {
            if std::fs::metadata(holder.netns_path()).map(|m| m.ino()).ok() == Some(want) {
                return holder;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the holder process never entered {}", pod.name);
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.0.id()))
    }
}

impl Drop for NsHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spec(pod: &PodNs, host: &str, ip: [u8; 4]) -> PodInterfaceSpec {
    PodInterfaceSpec {
        netns: pod.path(),
        ifname: "eth0".into(),
        host_ifname: host.into(),
        ip: ip.into(),
        mtu: 1400,
        routes: None,
    }
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Asserts the node namespace is the fresh one: the test must not be looking at (or
/// changing) the machine's real links.
async fn assert_fresh_node_ns() {
    let links = run("ip", &["-j", "link"]);
    let links: Value = serde_json::from_str(&links).unwrap();
    let names: Vec<_> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["lo"], "not in a fresh node namespace");
}

#[test]
fn kernel_create_check_delete() {
    in_fresh_node_ns(|| async {
        assert_fresh_node_ns().await;
        let pod = PodNs::new("cycle");
        let spec = spec(&pod, "vhtest0", [10, 0, 1, 10]);

        let made = create_pod_interface(&spec).await.unwrap();
        assert_eq!(
            link_by_name("vhtest0").await.unwrap(),
            Some((made.host_ifindex, made.host_mac))
        );
        assert_ne!(made.pod_mac, [0; 6]);

        // Pod side: the address, up, MTU, routes, neighbour, lo up.
        let links = pod.ip_json(&["link", "show", "dev", "eth0"]);
        let eth0 = &links[0];
        assert_eq!(eth0["ifindex"].as_u64(), Some(made.pod_ifindex.into()));
        assert_eq!(eth0["address"].as_str(), Some(&*mac_string(made.pod_mac)));
        assert_eq!(eth0["mtu"].as_u64(), Some(1400));
        assert!(eth0["flags"].as_array().unwrap().contains(&"UP".into()));
        let lo = pod.ip_json(&["link", "show", "dev", "lo"]);
        assert!(lo[0]["flags"].as_array().unwrap().contains(&"UP".into()));
        let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
        let infos = addrs[0]["addr_info"].as_array().unwrap();
        assert_eq!(infos.len(), 1, "{addrs}");
        assert_eq!(infos[0]["local"].as_str(), Some("10.0.1.10"));
        assert_eq!(infos[0]["prefixlen"].as_u64(), Some(32));
        let routes = pod.ip_json(&["-4", "route", "show"]);
        let routes = routes.as_array().unwrap();
        assert!(
            routes.iter().any(|r| r["dst"] == "default"
                && r["gateway"] == "169.254.1.1"
                && r["dev"] == "eth0"),
            "{routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "169.254.1.1" && r["dev"] == "eth0" && r["scope"] == "link"),
            "{routes:?}"
        );
        let neigh = pod.ip_json(&["neigh", "show", "dev", "eth0"]);
        let gw = &neigh[0];
        assert_eq!(gw["dst"].as_str(), Some("169.254.1.1"));
        assert_eq!(gw["lladdr"].as_str(), Some(&*mac_string(made.host_mac)));
        assert!(
            gw["state"]
                .as_array()
                .unwrap()
                .contains(&"PERMANENT".into())
        );

        // Node side: host veth up with the MTU, and the /32 route to the pod.
        let host: Value =
            serde_json::from_str(&run("ip", &["-j", "link", "show", "vhtest0"])).unwrap();
        assert_eq!(host[0]["mtu"].as_u64(), Some(1400));
        assert!(host[0]["flags"].as_array().unwrap().contains(&"UP".into()));
        let node_routes: Value =
            serde_json::from_str(&run("ip", &["-j", "-4", "route", "show"])).unwrap();
        assert!(
            node_routes
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == "10.0.1.10" && r["dev"] == "vhtest0" && r["scope"] == "link"),
            "{node_routes}"
        );
        // The plumbing works: the node (given an address, as a real node has on its
        // uplink) reaches the pod through the /32 route, and the pod answers through its
        // default route and the gateway's neighbour entry.
        run("ip", &["link", "set", "lo", "up"]);
        run("ip", &["addr", "add", "10.0.0.4/32", "dev", "lo"]);
        run("ping", &["-c", "1", "-W", "2", "10.0.1.10"]);

        check_pod_interface(&spec).await.unwrap();

        // Same host name again: AlreadyExists, and the first pod is untouched.
        match create_pod_interface(&spec).await {
            Err(PodInterfaceError::AlreadyExists(what)) => assert!(what.contains("vhtest0")),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        // A new host name but eth0 already in the pod: AlreadyExists, nothing left behind.
        let clash = PodInterfaceSpec {
            host_ifname: "vhtest1".into(),
            ..spec.clone()
        };
        match create_pod_interface(&clash).await {
            Err(PodInterfaceError::AlreadyExists(what)) => assert!(what.contains("eth0")),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(link_by_name("vhtest1").await.unwrap(), None);
        check_pod_interface(&spec).await.unwrap();

        delete_pod_interface("vhtest0").await.unwrap();
        assert_eq!(link_by_name("vhtest0").await.unwrap(), None);
        let pod_links = pod.ip_json(&["link"]);
        assert!(
            pod_links
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["ifname"] != "eth0"),
            "{pod_links}"
        );
        let node_routes = run("ip", &["-4", "route", "show"]);
        assert!(!node_routes.contains("10.0.1.10"), "{node_routes}");
        delete_pod_interface("vhtest0").await.unwrap();

        let err = check_pod_interface(&spec).await.unwrap_err().to_string();
        assert!(err.contains("host veth vhtest0 does not exist"), "{err}");
        assert!(err.contains("eth0 does not exist"), "{err}");

        // The name is free again: a re-ADD after DEL works.
        create_pod_interface(&spec).await.unwrap();
        check_pod_interface(&spec).await.unwrap();
        delete_pod_interface("vhtest0").await.unwrap();
    });
}

#[test]
fn kernel_check_names_what_is_missing() {
    in_fresh_node_ns(|| async {
        let pod = PodNs::new("check");
        let spec = spec(&pod, "vhcheck", [10, 0, 2, 20]);
        create_pod_interface(&spec).await.unwrap();

        // More than the uplink carries (spec.mtu, 1400).
        run(
            "ip",
            &["-n", &pod.name, "link", "set", "eth0", "mtu", "1500"],
        );
        let err = check_pod_interface(&spec).await.unwrap_err().to_string();
        assert!(
            err.contains("eth0 has MTU 1500, more than the uplink's 1400"),
            "{err}"
        );
        run(
            "ip",
            &["-n", &pod.name, "link", "set", "eth0", "mtu", "1400"],
        );
        check_pod_interface(&spec).await.unwrap();

        run("ip", &["-n", &pod.name, "route", "del", "default"]);
        let err = check_pod_interface(&spec).await.unwrap_err().to_string();
        assert!(
            err.contains("no default route via 169.254.1.1 dev eth0"),
            "{err}"
        );
        assert!(err.contains(&pod.name), "{err}");

        run("ip", &["-n", &pod.name, "addr", "flush", "dev", "eth0"]);
        run("ip", &["-n", &pod.name, "link", "set", "eth0", "down"]);
        run("ip", &["link", "set", "vhcheck", "down"]);
        let err = check_pod_interface(&spec).await.unwrap_err().to_string();
        for missing in [
            "host veth vhcheck is not up",
            "eth0 is not up",
            "eth0 does not have 10.0.2.20/32",
            "no default route",
        ] {
            assert!(err.contains(missing), "{missing}: {err}");
        }
        // The node route went with the host veth going down.
        assert!(err.contains("no route 10.0.2.20/32 dev vhcheck"), "{err}");

        let other = PodInterfaceSpec {
            ip: Ipv4Addr::new(10, 0, 2, 21),
            ..spec.clone()
        };
        run("ip", &["link", "set", "vhcheck", "up"]);
        let err = check_pod_interface(&other).await.unwrap_err().to_string();
        assert!(err.contains("no route 10.0.2.21/32"), "{err}");

        delete_pod_interface("vhcheck").await.unwrap();
    });
}

#[test]
fn kernel_failure_midway_leaves_nothing() {
    in_fresh_node_ns(|| async {
        let pod = PodNs::new("midway");
        // A default route already in the pod makes an ADD that asks for one fail after the veth
        // pair exists.
        let n = pod.name.as_str();
        // (A veth pair inside the pod: this kernel has no dummy driver.)
        let add = [
            "-n", n, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ];
        run("ip", &add);
        run("ip", &["-n", n, "link", "set", "d0", "up"]);
        run("ip", &["-n", n, "route", "add", "default", "dev", "d0"]);
        let spec = PodInterfaceSpec {
            routes: Some(vec![super::DEFAULT_ROUTE]),
            ..spec(&pod, "vhmidway", [10, 0, 1, 30])
        };
        let err = match create_pod_interface(&spec).await {
            Err(PodInterfaceError::Other(e)) => format!("{e:#}"),
            other => panic!("expected an error, got {other:?}"),
        };
        assert!(
            err.contains("the pod already has a default route (dev d0)"),
            "{err}"
        );
        assert_eq!(link_by_name("vhmidway").await.unwrap(), None);
        assert_fresh_node_ns().await;
        let pod_links = pod.ip_json(&["link"]);
        let names: Vec<_> = pod_links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap())
            .collect();
        assert!(!names.contains(&"eth0"), "{names:?}");
    });
}

#[test]
fn kernel_missing_netns_creates_nothing() {
    in_fresh_node_ns(|| async {
        let spec = PodInterfaceSpec {
            netns: format!("/run/netns/vnltest{}-absent", std::process::id()).into(),
            ifname: "eth0".into(),
            host_ifname: "vhmissing".into(),
            ip: Ipv4Addr::new(10, 0, 1, 11),
            mtu: 1500,
            routes: None,
        };
        match create_pod_interface(&spec).await {
            Err(PodInterfaceError::NetnsNotFound(p)) => assert_eq!(p, spec.netns),
            other => panic!("expected NetnsNotFound, got {other:?}"),
        }
        assert_eq!(link_by_name("vhmissing").await.unwrap(), None);
        assert_fresh_node_ns().await;
        // Not a namespace file at all: a clear error, nothing created.
        let not_ns = PodInterfaceSpec {
            netns: "/proc/self/status".into(),
            ..spec.clone()
        };
        let err = create_pod_interface(&not_ns).await.unwrap_err();
        assert!(err.to_string().contains("not a network namespace"), "{err}");
        assert_fresh_node_ns().await;
        assert!(check_pod_interface(&spec).await.is_err());
    });
}

#[test]
fn kernel_concurrent_pods_and_link_lookup() {
    in_fresh_node_ns(|| async {
        let (a, b) = (PodNs::new("a"), PodNs::new("b"));
        // Pod b is addressed as a container runtime without named namespaces does it:
        // /proc/PID/ns/net of a process inside it.
        let holder = NsHolder::new(&b);
        let sa = spec(&a, "vha", [10, 0, 1, 20]);
        let sb = PodInterfaceSpec {
            netns: holder.netns_path(),
            ..spec(&b, "vhb", [10, 0, 1, 21])
        };
        let (ra, rb) = futures::join!(create_pod_interface(&sa), create_pod_interface(&sb));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_ne!(ra.host_ifindex, rb.host_ifindex);
        check_pod_interface(&sa).await.unwrap();
        check_pod_interface(&sb).await.unwrap();
        // Each pod has exactly its own address.
        for (pod, ip) in [(&a, "10.0.1.20"), (&b, "10.0.1.21")] {
            let addrs = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
            assert_eq!(addrs[0]["addr_info"][0]["local"].as_str(), Some(ip));
        }

        assert_eq!(link_by_name("lo").await.unwrap(), Some((1, [0; 6])));
        assert_eq!(link_by_name("nope0").await.unwrap(), None);
        assert!(link_by_name("much-too-long-name").await.is_err());
        // Deleting something that is not a veth is refused.
        assert!(delete_pod_interface("lo").await.is_err());

        delete_pod_interface("vha").await.unwrap();
        delete_pod_interface("vhb").await.unwrap();
        assert_fresh_node_ns().await;
    });
}

/// A second interface in a pod (Multus' net1): no second default route, only its own routes,
/// the gateway on link at its own metric, and its address's traffic routed out of it by its
/// rule; CHECK passes for both; removing its rule leaves eth0's.
#[test]
fn kernel_second_interface_routes_and_source_rule() {
    in_fresh_node_ns(|| async {
        let pod = PodNs::new("twoifs");
        let eth0 = spec(&pod, "vheth0", [10, 0, 2, 40]);
        let data: ipnet::Ipv4Net = "10.0.4.0/24".parse().unwrap();
        let net1 = PodInterfaceSpec {
            ifname: "net1".into(),
            routes: Some(vec![data]),
            ..spec(&pod, "vhnet1", [10, 0, 4, 40])
        };
        let first = create_pod_interface(&eth0).await.unwrap();
        assert_eq!(first.routes, vec![DEFAULT_ROUTE]);
        let second = create_pod_interface(&net1).await.unwrap();
        assert_eq!(second.routes, vec![data]);
        // Without `routes`, a third interface takes no default route either.
        let net2 = PodInterfaceSpec {
            ifname: "net2".into(),
            ..spec(&pod, "vhnet2", [10, 0, 4, 41])
        };
        assert_eq!(create_pod_interface(&net2).await.unwrap().routes, vec![]);

        let main = pod.ip_json(&["-4", "route", "show", "table", "main"]);
        let routes = main.as_array().unwrap();
        let defaults: Vec<_> = routes.iter().filter(|r| r["dst"] == "default").collect();
        assert_eq!(defaults.len(), 1, "{main}");
        assert_eq!(defaults[0]["dev"], "eth0", "{main}");
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "10.0.4.0/24" && r["dev"] == "net1"),
            "{main}"
        );
        let on_link = |dev: &str| {
            routes
                .iter()
                .find(|r| r["dst"] == "169.254.1.1" && r["dev"] == dev)
                .map(|r| r["metric"].as_u64().unwrap_or(0))
        };
        assert_eq!(on_link("eth0"), Some(0), "{main}");
        assert_eq!(on_link("net1").map(|m| m > 0), Some(true), "{main}");
        assert_eq!(on_link("net2").map(|m| m > 0), Some(true), "{main}");

        // Traffic from net1's address to anywhere leaves by net1; unbound traffic by eth0.
        let get = |args: &[&str]| {
            let mut full = vec!["-4", "route", "get"];
            full.extend_from_slice(args);
            pod.ip_json(&full)[0]["dev"].as_str().unwrap().to_string()
        };
        assert_eq!(get(&["10.0.2.99", "from", "10.0.4.40"]), "net1");
        assert_eq!(get(&["10.0.2.99"]), "eth0");
        assert_eq!(get(&["10.0.4.99"]), "net1");
        assert_eq!(get(&["10.0.4.99", "from", "10.0.2.40"]), "eth0");

        check_pod_interface(&eth0).await.unwrap();
        check_pod_interface(&net1).await.unwrap();
        let rule_sources = |pod: &PodNs| {
            pod.ip_json(&["-4", "rule", "show"])
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["src"].as_str().filter(|s| *s != "all"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rule_sources(&pod),
            vec!["10.0.2.40", "10.0.4.40", "10.0.4.41"]
        );
        delete_pod_source_rule(&net1.netns, net1.ip).await.unwrap();
        delete_pod_interface("vhnet1").await.unwrap();
        assert_eq!(rule_sources(&pod), vec!["10.0.2.40", "10.0.4.41"]);
        let err = check_pod_interface(&net1).await.unwrap_err().to_string();
        assert!(err.contains("net1 does not exist"), "{err}");
        check_pod_interface(&eth0).await.unwrap();
        // A namespace that is gone took its rules along.
        delete_pod_source_rule(Path::new("/run/netns/vnltest-absent"), net1.ip)
            .await
            .unwrap();
        for host in ["vheth0", "vhnet2"] {
            delete_pod_interface(host).await.unwrap();
        }
    });
}
