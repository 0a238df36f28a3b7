//! What the plugin prints: ADD's result, the spec's error object and VERSION's answer.
use std::path::Path;

use serde::Serialize;

use super::SUPPORTED_VERSIONS;
use crate::api::proto::{AddResult, CniError};

#[derive(Serialize)]
struct ResultOutput<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    interfaces: [InterfaceOutput; 2],
    ips: [IpOutput; 1],
    routes: Vec<RouteOutput>,
    dns: DnsOutput,
}

#[derive(Serialize)]
struct InterfaceOutput {
    name: String,
    mac: String,
    /// New in 1.1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<String>,
}

#[derive(Serialize)]
struct IpOutput {
    address: String,
    gateway: String,
    /// Index into `interfaces`: the pod's side.
    interface: usize,
}

#[derive(Serialize)]
struct RouteOutput {
    dst: String,
    gw: String,
}

/// The agent configures no DNS; the runtime does.
#[derive(Serialize)]
struct DnsOutput {}

/// Lowercase, colon-separated, as CNI results and `ip link` write MACs.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// ADD's result: the host and pod ends of the veth, the pod's /32 behind the gateway, and the
/// routes through the interface via the gateway (the default route for a pod's first
/// interface, what its network configuration lists for the others).
pub fn result_json(cni_version: &str, ifname: &str, netns: &Path, added: &AddResult) -> String {
    let mtu = (cni_version != "1.0.0").then_some(added.mtu);
    let output = ResultOutput {
        cni_version,
        interfaces: [
            InterfaceOutput {
                name: added.host_ifname.clone(),
                mac: format_mac(&added.host_mac),
                mtu,
                sandbox: None,
            },
            InterfaceOutput {
                name: ifname.to_string(),
                mac: format_mac(&added.pod_mac),
                mtu,
                sandbox: Some(netns.display().to_string()),
            },
        ],
        ips: [IpOutput {
            address: format!("{}/32", added.ip),
            gateway: added.gateway.to_string(),
            interface: 1,
        }],
        routes: added
            .routes
            .iter()
            .map(|dst| RouteOutput {
                dst: dst.to_string(),
                gw: added.gateway.to_string(),
            })
            .collect(),
        dns: DnsOutput {},
    };
    serde_json::to_string(&output).expect("the result serializes")
}

/// The spec's error object.
pub fn error_json(cni_version: &str, err: &CniError) -> String {
    #[derive(Serialize)]
    struct ErrorOutput<'a> {
        #[serde(rename = "cniVersion")]
        cni_version: &'a str,
        code: u32,
        msg: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        details: &'a str,
    }
    let output = ErrorOutput {
        cni_version,
        code: err.code,
        msg: &err.msg,
        details: &err.details,
    };
    serde_json::to_string(&output).expect("the error serializes")
}

/// VERSION's answer, in the requested version when we speak it.
pub fn version_json(cni_version: &str) -> String {
    serde_json::json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS })
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::cni::testing::*;

    #[test]
    fn macs_are_lowercase_colon_separated() {
        assert_eq!(
            format_mac(&[0x02, 0xAB, 0x00, 0x0c, 0xff, 0x10]),
            "02:ab:00:0c:ff:10"
        );
    }

    #[test]
    fn result_has_the_cni_shape() {
        let expected = |version: &str, mtu: Option<u32>| {
            let mut host = json!({"name": "vnd1a2b3c4d", "mac": "ee:ee:ee:ee:ee:ee"});
            let mut pod = json!({"name": "eth0", "mac": "02:1a:2b:3c:4d:5e", "sandbox": NETNS});
            if let Some(mtu) = mtu {
                host["mtu"] = json!(mtu);
                pod["mtu"] = json!(mtu);
            }
            json!({
                "cniVersion": version,
                "interfaces": [host, pod],
                "ips": [{"address": "10.0.2.4/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {},
            })
        };
        let v100 = result_json("1.0.0", "eth0", Path::new(NETNS), &added());
        assert_eq!(parsed(&v100), expected("1.0.0", None));
        assert!(
            v100.starts_with(r#"{"cniVersion":"1.0.0","interfaces":"#),
            "{v100}"
        );
        // 1.1.0 results carry the interfaces' MTU.
        let v110 = result_json("1.1.0", "eth0", Path::new(NETNS), &added());
        assert_eq!(parsed(&v110), expected("1.1.0", Some(1500)));
    }

    #[test]
    fn error_has_the_cni_shape() {
        let err = CniError::new(7, "bad").with_details("why");
        assert_eq!(
            error_json("1.0.0", &err),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"}"#
        );
        assert_eq!(
            error_json("1.1.0", &CniError::new(11, "later")),
            r#"{"cniVersion":"1.1.0","code":11,"msg":"later"}"#
        );
    }

    /// A pod's further interface (Multus' net1) lists only the routes its network asked for.
    #[test]
    fn result_lists_the_interface_routes() {
        let net1 = AddResult {
            routes: vec!["10.0.4.0/24".parse().unwrap()],
            ..added()
        };
        let out = parsed(&result_json("1.1.0", "net1", Path::new(NETNS), &net1));
        assert_eq!(
            out["routes"],
            json!([{"dst": "10.0.4.0/24", "gw": "169.254.1.1"}])
        );
        assert_eq!(out["interfaces"][1]["name"], "net1");
        let none = AddResult {
            routes: vec![],
            ..added()
        };
        let out = parsed(&result_json("1.1.0", "net1", Path::new(NETNS), &none));
        assert_eq!(out["routes"], json!([]));
    }
}
