//! The network configuration on stdin: one plugin object of a conflist, decoded and checked, and
//! the version the output is written in.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::{CniError, LATEST_VERSION, SUPPORTED_VERSIONS};
use crate::{
    api::proto::{Attachment, network_name_problem},
    netlink::POD_GATEWAY,
};

pub const DEFAULT_AGENT_SOCKET: &str = "/run/vnetd/vnetd.sock";

/// The plugin's configuration: one plugin object of a conflist, as the runtime passes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub agent_socket: PathBuf,
    /// Which subnet's pool ADD allocates from; the agent picks when absent.
    pub subnet: Option<String>,
    pub mtu: Option<u32>,
    /// The destinations routed through the interface (via the gateway, 169.254.1.1) in the
    /// pod's main table. `None`: the default route if the pod has none yet, else none.
    pub routes: Option<Vec<Ipv4Net>>,
    /// CHECK's `prevResult`, checked only by CHECK (DEL may carry one too and ignores it).
    pub prev_result: Option<serde_json::Value>,
    /// GC's `cni.dev/valid-attachments`; `None` when the key is absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The configuration as it arrives; `parse_config` checks it.
#[derive(Deserialize)]
struct RawNetConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    #[serde(rename = "agentSocket")]
    agent_socket: Option<PathBuf>,
    subnet: Option<String>,
    mtu: Option<u32>,
    routes: Option<Vec<RawRoute>>,
    ipam: Option<serde_json::Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<serde_json::Value>,
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        deserialize_with = "present"
    )]
    valid_attachments: Option<Option<Vec<GcAttachment>>>,
    /// libcni also sends the list under this name (a spec typo it keeps compatible with).
    #[serde(rename = "cni.dev/attachments", default, deserialize_with = "present")]
    attachments: Option<Option<Vec<GcAttachment>>>,
}

/// Tells a key given as `null` (`Some(None)`) from an absent key (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A route as CNI results and IPAM configurations write them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    dst: String,
    gw: Option<String>,
}

#[derive(Deserialize)]
struct GcAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// Parses and checks the configuration on stdin. JSON that does not decode into the expected
/// shapes is code 6 (as a Go plugin's unmarshal failure is); decoded values that make no sense
/// are code 7; a version we do not speak is code 1.
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    let raw: RawNetConf = serde_json::from_slice(stdin).map_err(|err| {
        CniError::new(
            CniError::DECODE_FAILURE,
            "cannot decode the network configuration",
        )
        .with_details(err.to_string())
    })?;
    let cni_version = check_version(raw.cni_version.as_deref())?;
    let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
    let name = raw.name.filter(|name| !name.is_empty());
    let name = name.ok_or_else(|| invalid("the network configuration has no name".into()))?;
    if let Some(problem) = network_name_problem(&name) {
        return Err(invalid(format!("the network configuration's {problem}")));
    }
    if raw
        .plugin_type
        .is_none_or(|plugin_type| plugin_type.is_empty())
    {
        return Err(invalid("the network configuration has no type".into()));
    }
    // Addresses come from the agent's pools; an `ipam` section would silently do nothing.
    if let Some(ipam) = raw.ipam {
        return Err(CniError::new(
            CniError::UNSUPPORTED_FIELD,
            format!(
                "unsupported field ipam={ipam}: vnetd-cni takes addresses from the agent's pools \
                 (choose one with \"subnet\")"
            ),
        ));
    }
    if let Some(mtu) = raw.mtu.filter(|mtu| !(68..=65535).contains(mtu)) {
        return Err(invalid(format!("mtu {mtu} is outside 68..=65535")));
    }
    let routes = raw.routes.map(|routes| parse_routes(&routes)).transpose()?;
    let agent_socket = raw
        .agent_socket
        .unwrap_or_else(|| DEFAULT_AGENT_SOCKET.into());
    if agent_socket.as_os_str().is_empty() {
        return Err(invalid("agentSocket is empty".into()));
    }
    let valid_attachments = raw.valid_attachments.or(raw.attachments).map(|list| {
        // libcni sends `null` when the runtime has no attachments at all.
        list.unwrap_or_default()
            .into_iter()
            .map(|a| Attachment {
                network: name.clone(),
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect()
    });
    Ok(NetConf {
        cni_version,
        name,
        agent_socket,
        subnet: raw.subnet.filter(|subnet| !subnet.is_empty()),
        mtu: raw.mtu,
        routes,
        prev_result: raw.prev_result,
        valid_attachments,
    })
}

/// `routes`: IPv4 prefixes without host bits, each once; a `gw` may only name the gateway the
/// dataplane is (169.254.1.1).
fn parse_routes(routes: &[RawRoute]) -> Result<Vec<Ipv4Net>, CniError> {
    let invalid = |i: usize, msg: String| {
        CniError::new(CniError::INVALID_CONFIG, format!("routes[{i}]: {msg}"))
    };
    let mut out: Vec<Ipv4Net> = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let dst: Ipv4Net = route.dst.parse().map_err(|_| {
            invalid(
                i,
                format!(
                    "dst {:?} is not an IPv4 prefix such as 10.0.4.0/24",
                    route.dst
                ),
            )
        })?;
        if dst.trunc() != dst {
            return Err(invalid(
                i,
                format!(
                    "dst {dst} has host bits set (did you mean {}?)",
                    dst.trunc()
                ),
            ));
        }
        if let Some(gw) = &route.gw
            && gw.parse::<Ipv4Addr>().ok() != Some(POD_GATEWAY)
        {
            return Err(invalid(
                i,
                format!(
                    "gw {gw:?}: a pod's routes all go via its gateway {POD_GATEWAY}, where the \
                     dataplane routes them (leave gw out)"
                ),
            ));
        }
        if out.contains(&dst) {
            return Err(invalid(i, format!("dst {dst} is listed twice")));
        }
        out.push(dst);
    }
    Ok(out)
}

fn check_version(version: Option<&str>) -> Result<String, CniError> {
    match version {
        Some(version) if SUPPORTED_VERSIONS.contains(&version) => Ok(version.to_string()),
        // libcni reads a missing cniVersion as 0.1.0.
        other => Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version {}: vnetd-cni supports {}",
                other.unwrap_or("0.1.0 (no cniVersion)"),
                SUPPORTED_VERSIONS.join(", ")
            ),
        )),
    }
}

/// The version to write output in: the configuration's when we speak it, else the newest.
pub(super) fn output_version(stdin: &[u8]) -> &'static str {
    #[derive(Deserialize)]
    struct VersionOnly {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let requested = serde_json::from_slice::<VersionOnly>(stdin)
        .ok()
        .and_then(|v| v.cni_version);
    SUPPORTED_VERSIONS
        .into_iter()
        .find(|v| requested.as_deref() == Some(*v))
        .unwrap_or(LATEST_VERSION)
}

/// CHECK's `prevResult`: what the runtime recorded from ADD. The agent checks the live state;
/// here we only make sure the record is a result that lists our interface in this sandbox.
pub(super) fn check_prev_result(
    conf: &NetConf,
    ifname: &str,
    netns: &Path,
) -> Result<(), CniError> {
    #[derive(Deserialize)]
    struct PrevResult {
        #[serde(default)]
        interfaces: Vec<PrevInterface>,
        #[serde(default)]
        ips: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct PrevInterface {
        name: String,
        sandbox: Option<String>,
    }
    let invalid = |msg: String| CniError::new(CniError::INVALID_CONFIG, msg);
    let Some(prev) = &conf.prev_result else {
        return Err(invalid(
            "CHECK needs prevResult in the configuration".into(),
        ));
    };
    let prev = PrevResult::deserialize(prev).map_err(|err| {
        invalid("prevResult is not a CNI result".into()).with_details(err.to_string())
    })?;
    let netns = netns.display().to_string();
    let ours = prev
        .interfaces
        .iter()
        .any(|i| i.name == ifname && i.sandbox.as_deref().is_none_or(|s| s == netns));
    if !ours {
        return Err(invalid(format!(
            "prevResult lists no interface {ifname} in {netns}"
        )));
    }
    if prev.ips.is_empty() {
        return Err(invalid("prevResult lists no address".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_fields() {
        let conf = parse_config(
            br#"{"cniVersion":"1.1.0","name":"vnetd","type":"vnetd-cni","runtimeConfig":{}}"#,
        )
        .unwrap();
        assert_eq!(
            conf,
            NetConf {
                cni_version: "1.1.0".into(),
                name: "vnetd".into(),
                agent_socket: DEFAULT_AGENT_SOCKET.into(),
                subnet: None,
                mtu: None,
                routes: None,
                prev_result: None,
                valid_attachments: None,
            }
        );
        let conf = parse_config(
            br#"{"cniVersion":"1.0.0","name":"vnetd","type":"vnetd-cni","agentSocket":"/tmp/a.sock",
                 "subnet":"apps","mtu":1400}"#,
        )
        .unwrap();
        assert_eq!(conf.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(conf.subnet.as_deref(), Some("apps"));
        assert_eq!(conf.mtu, Some(1400));
    }

    #[test]
    fn valid_attachments_null_means_none_valid_and_absent_means_not_given() {
        let with = |list: &str| {
            let text = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":{list}}}"#
            );
            parse_config(text.as_bytes()).unwrap().valid_attachments
        };
        assert_eq!(with("null"), Some(vec![]));
        assert_eq!(
            with(r#"[{"containerID":"a","ifname":"eth0"}]"#),
            Some(vec![Attachment {
                network: "n".into(),
                container_id: "a".into(),
                ifname: "eth0".into()
            }])
        );
        let legacy = br#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/attachments":[]}"#;
        assert_eq!(
            parse_config(legacy).unwrap().valid_attachments,
            Some(vec![])
        );
    }

    #[test]
    fn config_errors_have_the_spec_codes() {
        let cases: [(&[u8], u32); 9] = [
            (b"{not json", CniError::DECODE_FAILURE),
            (b"", CniError::DECODE_FAILURE),
            (
                br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":"big"}"#,
                CniError::DECODE_FAILURE,
            ),
            (
                br#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#,
                CniError::INCOMPATIBLE_VERSION,
            ),
            (
                br#"{"name":"n","type":"t"}"#,
                CniError::INCOMPATIBLE_VERSION,
            ),
            (
                br#"{"cniVersion":"1.1.0","type":"t"}"#,
                CniError::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n"}"#,
                CniError::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":20}"#,
                CniError::INVALID_CONFIG,
            ),
            (
                br#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{"type":"host-local"}}"#,
                CniError::UNSUPPORTED_FIELD,
            ),
        ];
        for (text, code) in cases {
            let err = parse_config(text).unwrap_err();
            assert_eq!(err.code, code, "{}: {err:?}", String::from_utf8_lossy(text));
        }
        let err = parse_config(br#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#).unwrap_err();
        assert!(
            err.msg.contains("0.4.0") && err.msg.contains("1.0.0, 1.1.0"),
            "{}",
            err.msg
        );
        let err =
            parse_config(br#"{"cniVersion":"1.1.0","name":"n","type":"t","ipam":{}}"#).unwrap_err();
        assert!(err.msg.contains("ipam"), "{}", err.msg);
    }

    #[test]
    fn network_name_follows_the_cni_rule_and_keys_every_request() {
        let err = parse_config(br#"{"cniVersion":"1.1.0","name":"a/b","type":"t"}"#).unwrap_err();
        assert_eq!(err.code, CniError::INVALID_CONFIG);
        assert!(err.msg.contains("\"a/b\""), "{}", err.msg);
        let conf = parse_config(
            br#"{"cniVersion":"1.1.0","name":"net-b","type":"t",
                 "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"net1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            conf.valid_attachments.unwrap()[0].network,
            "net-b",
            "GC's list is of this network"
        );
    }

    #[test]
    fn routes_are_prefixes_via_the_pod_gateway() {
        let with = |routes: &str| {
            let text =
                format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"t","routes":{routes}}}"#);
            parse_config(text.as_bytes())
        };
        assert_eq!(
            with(r#"[{"dst":"10.0.4.0/24"},{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]"#)
                .unwrap()
                .routes,
            Some(vec![
                "10.0.4.0/24".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap()
            ])
        );
        assert_eq!(with("[]").unwrap().routes, Some(vec![]), "no routes at all");
        for (routes, needle) in [
            (
                r#"[{"dst":"10.0.4.1/24"}]"#,
                "routes[0]: dst 10.0.4.1/24 has host bits",
            ),
            (
                r#"[{"dst":"10.0.4.0"}]"#,
                "routes[0]: dst \"10.0.4.0\" is not",
            ),
            (r#"[{"dst":"fd00::/8"}]"#, "is not an IPv4 prefix"),
            (
                r#"[{"dst":"10.0.4.0/24","gw":"10.0.0.1"}]"#,
                "gw \"10.0.0.1\"",
            ),
            (
                r#"[{"dst":"10.0.4.0/24"},{"dst":"10.0.4.0/24"}]"#,
                "routes[1]: dst 10.0.4.0/24 is listed twice",
            ),
        ] {
            let err = with(routes).unwrap_err();
            assert_eq!(err.code, CniError::INVALID_CONFIG, "{routes}");
            assert!(err.msg.contains(needle), "{routes}: {}", err.msg);
        }
        assert_eq!(
            with(r#"[{"dst":"10.0.4.0/24","via":"x"}]"#)
                .unwrap_err()
                .code,
            CniError::DECODE_FAILURE
        );
    }
}
