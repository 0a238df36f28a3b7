//! The lab's own tests: the topology routes what it should and nothing more, and everything it
//! makes is gone afterwards (also after a panic, also after a dead process). No eBPF is loaded
//! here, so pods reach nothing; that is the dataplane's job, tested elsewhere.

use anyhow::{Context, Result, ensure};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};
use vnetd_lab::{
    CniCall, DEFAULT_TIMEOUT, EchoServer, GATEWAY, INTERNET_HOST_IP, Lab, POD_GATEWAY, serial,
    tcp_echo, tcp_echo_ok, tcp_roundtrip, udp_echo, wait_for,
};

/// The names of the root namespace's links.
fn root_links() -> BTreeSet<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip -o link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// The namespaces whose name starts with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn topology_routes_and_cleans_up() -> Result<()> {
    let _serial = serial();
    let links_before = root_links();
    let (prefix, dir);
    {
        let t = Instant::now();
        let lab = Lab::new()?;
        let n1 = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
        let n2 = lab.add_node("node-2", "10.0.0.5/24".parse()?)?;
        let nva = lab.add_appliance("nva", "10.0.0.100/24".parse()?)?;
        let pa = lab.add_veth_pod(&n1, "pod-a", ip("10.0.1.10"))?;
        let pb = lab.add_veth_pod(&n2, "pod-b", ip("10.0.1.11"))?;
        eprintln!("built in {:?}:\n{lab}", t.elapsed());
        prefix = lab.prefix().to_string();
        dir = lab.dir().to_path_buf();

        // Naming and handles.
        assert!(prefix.starts_with(&format!("vnl{}x", std::process::id())));
        assert_eq!(n1.name, format!("{prefix}node-1"));
        assert_eq!(n1.path, Path::new("/run/netns").join(&n1.name));
        assert_eq!(n1.uplink, "eth0");
        assert_eq!(n1.ip, ip("10.0.0.4"));
        assert_eq!(n1.mac, "02:00:0a:00:00:04");
        assert_eq!(n1.link_info("eth0")?.mac, n1.mac);
        assert_eq!(namespaces_with(&prefix).len(), 8);
        assert_eq!(lab.node("node-2").map(|n| n.ip), Some(n2.ip));
        assert_eq!(n1.sysctl_get("net.ipv4.ip_forward")?, "1");
        assert_eq!(nva.sysctl_get("net.ipv4.ip_forward")?, "1");
        assert_eq!(lab.edge().sysctl_get("net.ipv4.ip_forward")?, "1");
        assert_eq!(lab.internet().sysctl_get("net.ipv4.ip_forward")?, "0");

        // No link of the lab in the root namespace, ever.
        assert_eq!(
            root_links(),
            links_before,
            "the lab created root-namespace links"
        );

        // The fabric switches, the edge routes members to the internet host and back.
        assert_eq!(n1.ping_count(n2.ip, 3)?, 3);
        assert!(n1.ping(GATEWAY, 1));
        assert!(n1.ping(INTERNET_HOST_IP, 1));
        assert!(nva.ping(INTERNET_HOST_IP, 1));
        assert!(lab.internet().ping(n2.ip, 1));
        let r = tcp_echo(&n1, &n2, n2.ip, 7000, DEFAULT_TIMEOUT)?;
        assert_eq!(*r.server_peer.ip(), n1.ip);
        assert_eq!(r.server_local, Some(SocketAddrV4::new(n2.ip, 7000)));
        let r = udp_echo(&n2, lab.internet(), INTERNET_HOST_IP, 7001, DEFAULT_TIMEOUT)?;
        assert_eq!(*r.server_peer.ip(), n2.ip, "the edge must not translate");
        assert_eq!(r.reply_from, SocketAddrV4::new(INTERNET_HOST_IP, 7001));

        // Pod addresses have no way back from the edge: the internet cannot reach them.
        let route = lab.edge().run(["ip", "route", "get", "10.0.1.10"])?;
        assert!(!route.status.success(), "the edge has a route to pods");
        assert!(!lab.internet().ping(pa.ip, 1));
        assert!(tcp_echo(lab.internet(), &pa, pa.ip, 7002, Duration::from_millis(500)).is_err());

        // Extra internet addresses and public IPs are routed by the edge.
        lab.add_internet_ip(ip("192.0.2.80"))?;
        assert!(n2.ping(ip("192.0.2.80"), 1));
        lab.host_public_ip(&n1, ip("203.0.113.20"))?;
        let route = lab.edge().run_ok(["ip", "route", "get", "203.0.113.20"])?;
        assert!(route.contains("via 10.0.0.4"), "{route}");
        lab.host_public_ip(&n2, ip("203.0.113.20"))?;
        let route = lab.edge().run_ok(["ip", "route", "get", "203.0.113.20"])?;
        assert!(route.contains("via 10.0.0.5"), "{route}");
        lab.unhost_public_ip(ip("203.0.113.20"))?;

        // Veth pods are wired as the dataplane expects.
        for (pod, node) in [(&pa, &n1), (&pb, &n2)] {
            let host = node.link_info(&pod.host_ifname)?;
            assert_eq!(host.ifindex, pod.host_ifindex);
            assert!(host.up);
            assert_eq!(host.mtu, 1500);
            let eth0 = pod.link_info("eth0")?;
            assert_eq!(eth0.mac, pod.pod_mac);
            assert_eq!(eth0.mtu, 1500);
            let routes = pod.ip(["route", "show", "default"])?;
            assert!(
                routes.contains(&format!("via {POD_GATEWAY} dev eth0 onlink")),
                "{routes}"
            );
            let addrs = pod.ip(["-4", "addr", "show", "dev", "eth0"])?;
            assert!(addrs.contains(&format!("{}/32", pod.ip)), "{addrs}");
            let host_routes = node.ip(["route", "show", &format!("{}/32", pod.ip)])?;
            assert!(host_routes.contains(&pod.host_ifname), "{host_routes}");
            // No static neighbour for the gateway.
            let neigh = pod.ip(["neigh", "show", "dev", "eth0"])?;
            assert!(!neigh.contains("PERMANENT"), "{neigh}");
        }

        // Captures and counters on the appliance.
        let before = nva.link_stats("eth0")?;
        let cap = nva.capture("eth0", "icmp")?;
        assert!(n1.ping(nva.ip, 2));
        assert!(cap.wait_for("10.0.0.4 > 10.0.0.100", Duration::from_secs(3)));
        let lines = cap.stop()?;
        assert!(
            lines.iter().any(|l| l.contains("02:00:0a:00:00:04 >")),
            "{lines:?}"
        );
        let after = nva.link_stats("eth0")?;
        assert!(after.rx_packets >= before.rx_packets + 2);

        // Background processes: logs, readiness, killed on drop.
        let bg = n1.spawn(["sh", "-c", "echo ready; sleep 600"])?;
        bg.wait_for_output("ready", Duration::from_secs(5))?;
        let pid = bg.pid();
        assert!(n1.pids()?.contains(&(pid as i32)));
        drop(bg);
        assert!(
            !Path::new(&format!("/proc/{pid}/ns")).exists(),
            "not killed"
        );
        let bg = n1.spawn(["sh", "-c", "echo oops >&2; exit 3"])?;
        assert!(bg.wait_for_output("never", Duration::from_secs(2)).is_err());
        assert_eq!(bg.stderr().trim(), "oops");
        assert_eq!(bg.stop()?.code(), Some(3));
        let failed = n1.run_ok(["sh", "-c", "echo out; echo err >&2; exit 4"]);
        let msg = format!("{:#}", failed.unwrap_err());
        assert!(
            msg.contains("in netns") && msg.contains("out") && msg.contains("err"),
            "{msg}"
        );
        let slow = n1.run_timeout(["sleep", "10"], Duration::from_millis(200));
        assert!(slow.is_err());

        // A long-lived connection: the same socket keeps working.
        let srv = EchoServer::tcp(&n2, 0)?;
        let mut conn = n1.tcp_connect(SocketAddr::from((n2.ip, srv.port())), DEFAULT_TIMEOUT)?;
        for _ in 0..3 {
            tcp_roundtrip(&mut conn, b"hello", DEFAULT_TIMEOUT)?;
        }
        assert_eq!(srv.seen().len(), 1);
        drop(conn);
        drop(srv);

        // Pods reach nothing without the dataplane (no one answers ARP for 169.254.1.1).
        assert!(tcp_echo(&pa, &n1, n1.ip, 7003, Duration::from_millis(500)).is_err());
        assert!(tcp_echo_ok(&n1, &n2, n2.ip, 7004).is_ok());

        // Agent arguments are per node.
        let args = n1.agent_args(Path::new("/x/spec.yaml"));
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--node" && w[1] == "node-1")
        );
        assert!(
            args.iter()
                .any(|a| a.starts_with(&lab.bpffs_dir().display().to_string()))
        );

        // Root namespace still untouched.
        assert_eq!(root_links(), links_before);
    }
    assert!(namespaces_with(&prefix).is_empty(), "namespaces left");
    assert!(!dir.exists(), "lab dir left");
    assert_eq!(root_links(), links_before);
    Ok(())
}

#[test]
fn cni_runs_in_the_node_namespace() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let pod = lab.add_pod_netns("pod-a")?;
    assert_eq!(
        pod.ip(["-o", "link", "show"])?.lines().count(),
        1,
        "only lo"
    );
    let plugin = node.dir.join("fake-cni");
    std::fs::write(
        &plugin,
        r#"#!/bin/sh
cfg=$(cat)
[ "$CNI_COMMAND" = FAIL ] && { echo '{"code":7,"msg":"no"}'; exit 7; }
printf '{"cmd":"%s","cid":"%s","netns":"%s","ifname":"%s","args":"%s","path":"%s","mine":"%s","config":%s}' \
  "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" \
  "$(readlink /proc/self/ns/net)" "$cfg"
"#,
    )?;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))?;
    let config = r#"{"cniVersion":"1.1.0","name":"vnetd","type":"fake-cni"}"#;
    let (exit, out) = lab.cni(
        &node,
        "ADD",
        &plugin,
        "c1",
        &pod.path,
        "eth0",
        "K8S_POD_NAME=a",
        config,
    )?;
    assert_eq!(exit, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).context(out.clone())?;
    assert_eq!(v["cmd"], "ADD");
    assert_eq!(v["cid"], "c1");
    assert_eq!(v["netns"], pod.path.display().to_string());
    assert_eq!(v["ifname"], "eth0");
    assert_eq!(v["args"], "K8S_POD_NAME=a");
    assert_eq!(v["path"], node.dir.display().to_string());
    assert_eq!(v["config"]["name"], "vnetd");
    let ino = std::fs::metadata(&node.path)?.ino();
    assert_eq!(
        v["mine"],
        format!("net:[{ino}]"),
        "not run in the node's netns"
    );
    let out = node.cni(&CniCall {
        command: "FAIL".into(),
        plugin: plugin.clone(),
        ..CniCall::default()
    })?;
    assert_eq!(out.exit, 7);
    assert_eq!(out.json()?["code"], 7);
    lab.remove_ns(&pod)?;
    assert!(!pod.exists());
    // Removing a veth pod frees its name, address and host veth.
    let vp = lab.add_veth_pod(&node, "pod-b", "10.0.1.10".parse()?)?;
    lab.remove_ns(&vp)?;
    assert!(node.link_info(&vp.host_ifname).is_err());
    lab.add_veth_pod(&node, "pod-b", "10.0.1.10".parse()?)?;
    assert!(
        lab.add_veth_pod(&node, "pod-c", "10.0.1.10".parse()?)
            .is_err()
    );
    assert!(lab.add_node("node-1", "10.0.0.8/24".parse()?).is_err());
    lab.teardown()?;
    lab.teardown()?;
    assert!(!node.exists());
    assert!(lab.add_node("late", "10.0.0.9/24".parse()?).is_err());
    Ok(())
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let _serial = serial();
    let links_before = root_links();
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new().unwrap();
        *prefix.lock().unwrap() = lab.prefix().to_string();
        let n = lab
            .add_node("node-1", "10.0.0.4/24".parse().unwrap())
            .unwrap();
        let _bg = n.spawn(["sleep", "600"]).unwrap();
        let _orphan = lab.internet().spawn(["sleep", "600"]).unwrap();
        panic!("deliberate");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert!(
        namespaces_with(&prefix).is_empty(),
        "namespaces left after a panic"
    );
    assert_eq!(root_links(), links_before);
    // Logs are kept for the post-mortem; a later sweep of a dead pid removes them.
    let dir = Path::new(vnetd_lab::LAB_DIR_ROOT).join(prefix.trim_end_matches('-'));
    assert!(dir.exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn new_lab_sweeps_leftovers_of_dead_processes() -> Result<()> {
    let _serial = serial();
    // A pid that no longer exists.
    let mut t = std::process::Command::new("true").spawn()?;
    let dead = t.id();
    t.wait()?;
    let name = format!("vnl{dead}x0-leftover");
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()?;
    ensure!(st.success(), "ip netns add {name}");
    let mut sleeper = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{name}"))
        .args(["sleep", "600"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let leftover = vnetd_lab::Ns::open(&name);
    assert!(wait_for(Duration::from_secs(5), || leftover
        .pids()
        .is_ok_and(|p| p.contains(&(sleeper.id() as i32)))));
    let leftover_dir = Path::new(vnetd_lab::LAB_DIR_ROOT).join(format!("vnl{dead}x0"));
    std::fs::create_dir_all(leftover_dir.join("logs"))?;
    // A lab of a live process (this one) with the same shape must survive.
    let live = Lab::new()?;
    assert!(
        !Path::new("/run/netns").join(&name).exists(),
        "leftover namespace not swept"
    );
    assert!(!leftover_dir.exists(), "leftover dir not swept");
    assert!(
        wait_for(Duration::from_secs(5), || matches!(
            sleeper.try_wait(),
            Ok(Some(_))
        )),
        "process in the leftover namespace not killed"
    );
    let other = Lab::new()?;
    assert!(live.fabric().exists(), "a live lab was swept");
    drop(other);
    assert!(live.edge().exists());

    // A lab whose pid is ours but whose recorded owner is another process (a CI container
    // reuses pids): stale, swept.
    let own = std::process::id();
    let reused = format!("vnl{own}x99999");
    std::fs::create_dir_all(Path::new(vnetd_lab::LAB_DIR_ROOT).join(&reused))?;
    std::fs::write(
        Path::new(vnetd_lab::LAB_DIR_ROOT)
            .join(&reused)
            .join("owner"),
        "1",
    )?;
    let name = format!("{reused}-old");
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()?;
    ensure!(st.success(), "ip netns add {name}");
    let third = Lab::new()?;
    assert!(
        !Path::new("/run/netns").join(&name).exists(),
        "a reused pid's leftover was not swept"
    );
    assert!(live.fabric().exists() && third.fabric().exists());
    Ok(())
}

/// Run as a child process by `ctrl_c_removes_the_labs` (hence ignored): builds a lab, installs
/// the signal cleanup, says where it is, and waits to be killed. Run any other way it fails.
#[test]
#[ignore = "run as a child process by ctrl_c_removes_the_labs"]
fn signal_child() -> Result<()> {
    ensure!(
        std::env::var_os("VNETD_LAB_SIGNAL_CHILD").is_some(),
        "signal_child only runs as the child of ctrl_c_removes_the_labs"
    );
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let bg = node.spawn(["sleep", "600"])?;
    vnetd_lab::cleanup_on_signal()?;
    println!("PREFIX={} PID={}", lab.prefix(), bg.pid());
    std::thread::sleep(Duration::from_secs(60));
    Ok(())
}

#[test]
fn ctrl_c_removes_the_labs() -> Result<()> {
    use std::io::BufRead;
    let _serial = serial();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "signal_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VNETD_LAB_SIGNAL_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    let said = (|| -> Result<(String, String)> {
        let mut line = String::new();
        loop {
            line.clear();
            ensure!(reader.read_line(&mut line)? > 0, "the child said nothing");
            // libtest prints "test signal_child ... " before it on the same line.
            if let Some(i) = line.find("PREFIX=") {
                let (prefix, pid) = line[i + 7..].trim().split_once(" PID=").unwrap();
                return Ok((prefix.to_string(), pid.to_string()));
            }
        }
    })();
    let (prefix, pid) = match said {
        Ok(v) => v,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    assert!(!namespaces_with(&prefix).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let status = child.wait()?;
    assert_eq!(status.code(), Some(128 + 2));
    assert!(
        namespaces_with(&prefix).is_empty(),
        "namespaces left after SIGINT"
    );
    // Gone, or a zombie waiting for init (no namespace any more).
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::metadata(format!(
            "/proc/{pid}/ns/net"
        ))
        .is_err()),
        "the lab's process survived"
    );
    Ok(())
}

/// The helpers of the SNAT tests on a path that needs no dataplane (the node's own traffic to
/// the internet host): thousands of connections held at once against one echo server, and a
/// connection from a chosen source port.
#[test]
fn many_connections_and_chosen_source_ports() -> Result<()> {
    let _serial = serial();
    let limit = vnetd_lab::raise_open_files_limit(16384)?;
    ensure!(limit >= 5000, "open-files limit {limit}");
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    let server = EchoServer::tcp_many(lab.internet(), 7201)?;
    let dst = SocketAddr::from((INTERNET_HOST_IP, 7201));
    let mut conns = node.tcp_connect_many(dst, 2000, Duration::from_secs(5))?;
    assert!(server.wait_seen(2000, Duration::from_secs(10)));
    for (i, stream) in conns.iter_mut().enumerate() {
        tcp_roundtrip(
            stream,
            format!("connection {i}").as_bytes(),
            DEFAULT_TIMEOUT,
        )?;
    }
    let ports: BTreeSet<u16> = server.seen().iter().map(|c| c.peer.port()).collect();
    assert_eq!(ports.len(), 2000);

    let mut from = node.tcp_connect_from(
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 40123)),
        dst,
        DEFAULT_TIMEOUT,
    )?;
    assert_eq!(from.local_addr()?.port(), 40123);
    tcp_roundtrip(&mut from, b"from a chosen port", DEFAULT_TIMEOUT)?;
    assert!(server.wait_seen(2001, DEFAULT_TIMEOUT));
    assert_eq!(server.seen()[2000].peer, "10.0.0.4:40123".parse()?);
    Ok(())
}

/// The lab's path-MTU setting as the SNAT test uses it, with the node's own traffic: the edge's
/// link to the internet lowered to 1200 bytes, the edge answers with fragmentation-needed, the
/// sender's route cache learns 1200 and a bulk transfer to the sink arrives intact.
#[test]
fn a_lowered_edge_mtu_is_discovered_by_the_sender() -> Result<()> {
    let _serial = serial();
    let lab = Lab::new()?;
    let node = lab.add_node("node-1", "10.0.0.4/24".parse()?)?;
    lab.edge().ip(["link", "set", "eth1", "mtu", "1200"])?;
    let server = EchoServer::tcp_sink(lab.internet(), 7501)?;
    let capture = node.capture("eth0", "icmp")?;
    let mut stream =
        node.tcp_connect(SocketAddr::from((INTERNET_HOST_IP, 7501)), DEFAULT_TIMEOUT)?;
    vnetd_lab::sink_transfer(&mut stream, 4 << 20, Duration::from_secs(30))?;
    assert!(
        capture.wait_for("need to frag (mtu 1200)", Duration::from_secs(2)),
        "{:?}",
        capture.lines()
    );
    let route = node.ip(["route", "get", &INTERNET_HOST_IP.to_string()])?;
    assert!(route.contains("mtu 1200"), "{route}");
    assert_eq!(server.seen().len(), 1);
    Ok(())
}
