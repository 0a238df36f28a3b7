//! End to end: a container group's ports (`ipAddress.ports`). A port the group does not
//! expose is unreachable from outside the group, whatever its NSG allows, and reached by the
//! group's own containers on localhost. Needs root.
use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, ensure};
use vnetd_lab::{
    EchoServer, Lab, allowed, refused, serial,
    vnetd::{Agent, NsgRule, add_pod, lab_spec, node_cidr, with_nsg},
    wait_for,
};

/// A container group's port that `ipAddress.ports` does not expose is unreachable from outside
/// the group even though its NSG allows it (dropped and counted as `port_not_exposed`, from a
/// pod on the same node and from one on another node), while the group's own containers reach
/// it on localhost: a web server (`busybox httpd`, the "log shipper") and a client process
/// (`busybox wget`, the "api" container) in the group's namespace. The exposed port works from
/// both pods.
#[test]
fn an_unexposed_group_port_is_refused_from_pods_but_reached_on_localhost() -> Result<()> {
    const UNEXPOSED: u16 = 2020;
    let _serial = serial();
    let api_container = "          properties: { image: api, ports: [{ port: 8080 }] }\n";
    let spec = lab_spec().replace(
        api_container,
        &format!(
            "{api_container}        - name: log-shipper\n          properties: {{ image: fluentbit, ports: [{{ port: {UNEXPOSED} }}] }}\n"
        ),
    );
    ensure!(
        spec.contains("log-shipper"),
        "examples/lab.yaml changed: update this test's edit"
    );
    let spec = with_nsg(
        &spec,
        "aci-nsg",
        &["aci"],
        &[NsgRule::allow_in("allow-log-shipper", 100)
            .tcp()
            .from(["VirtualNetwork"])
            .ports([UNEXPOSED.to_string()])],
    );
    let lab = Lab::new()?;
    let node1 = lab.add_node("node-1", node_cidr("10.0.0.4"))?;
    let node2 = lab.add_node("node-2", node_cidr("10.0.0.5"))?;
    let agent1 = Agent::start(&node1, &spec)?;
    let _agent2 = Agent::start(&node2, &spec)?;
    let api = add_pod(&lab, &node1, "api", None, "VNETD_CONTAINER_GROUP=api")?;
    let near = add_pod(&lab, &node1, "near", Some("apps"), "")?;
    let far = add_pod(&lab, &node2, "far", Some("apps"), "")?;

    let www = lab.dir().join("log-shipper");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("health"), "shipping\n")?;
    // Listening on every address of the group, as a container does.
    let shipper = api.spawn([
        "busybox",
        "httpd",
        "-f",
        "-p",
        &UNEXPOSED.to_string(),
        "-h",
        path_str(&www)?,
    ])?;
    let local = |url: String| -> Result<String> {
        let out = api.run_timeout(
            ["busybox", "wget", "-q", "-Y", "off", "-O", "-", &url],
            Duration::from_secs(3),
        )?;
        ensure!(
            out.status.success(),
            "wget {url} in the group: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut body = String::new();
    let up = wait_for(Duration::from_secs(5), || {
        local(format!("http://127.0.0.1:{UNEXPOSED}/health"))
            .map(|b| body = b)
            .is_ok()
    });
    assert!(
        up && body == "shipping\n",
        "the group's client reaches its log shipper on localhost: {body:?} {}",
        shipper.stderr()
    );
    assert_eq!(
        local(format!("http://{}:{UNEXPOSED}/health", api.ip))?,
        "shipping\n",
        "and on the group's own address, from inside"
    );

    let drops_before = agent1.drops("port_not_exposed")?;
    let unexposed = SocketAddr::from((api.ip, UNEXPOSED));
    let from_near = refused(
        &near,
        unexposed,
        "the unexposed port from a pod on the same node",
    );
    let from_far = refused(
        &far,
        unexposed,
        "the unexposed port from a pod on another node",
    );
    let _api_server = EchoServer::tcp(&api, 8080)?;
    let exposed = SocketAddr::from((api.ip, 8080));
    allowed(
        &near,
        exposed,
        "the exposed port from a pod on the same node",
    )?;
    allowed(&far, exposed, "the exposed port from a pod on another node")?;
    from_near?;
    from_far?;
    assert_eq!(
        agent1.drops("port_not_exposed")? - drops_before,
        2,
        "one drop per refused SYN, both on the group's node"
    );
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}
