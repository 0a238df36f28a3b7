//! The CNI plugin `vnetd-cni` (spec 1.0.0 and 1.1.0), kept here rather than in the binary so that
//! tests can drive it without a process. The plugin is a thin client of the agent: it reads the
//! `CNI_*` environment and the network configuration, sends one request over the agent's socket,
//! and turns the answer into CNI's result or error JSON. The agent creates the interfaces and
//! programs the dataplane.
//!
//! `mod.rs` dispatches the commands; `env` reads the `CNI_*` environment, `config` the network
//! configuration, `client` talks to the agent and `result` writes the output.
mod client;
mod config;
mod env;
mod result;
#[cfg(test)]
mod testing;

pub use client::AGENT_TIMEOUT;
use client::{ask_agent, expect_done, unexpected};
pub use config::{DEFAULT_AGENT_SOCKET, NetConf, parse_config};
use config::{check_prev_result, output_version};
pub use env::{CniArgs, CniEnv, parse_cni_args, parse_env};
pub use result::{error_json, format_mac, result_json, version_json};

/// The plugin's errors are the agent's: one type, defined with the protocol both speak.
pub use crate::api::proto::CniError;
use crate::api::proto::{AddRequest, Attachment, CheckRequest, Request, Response};

/// The spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// The newest supported version: used for output when the caller asked for none we speak.
pub const LATEST_VERSION: &str = "1.1.0";

/// Runs one invocation: returns the exit code and what to print on stdout. Errors are also
/// written to stderr in human form, because runtimes log the plugin's stderr.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (i32, String) {
    let version = output_version(stdin);
    match execute(&env, stdin, version) {
        Ok(stdout) => (0, stdout),
        Err((command, err)) => {
            let details = if err.details.is_empty() {
                String::new()
            } else {
                format!(" ({})", err.details)
            };
            eprintln!(
                "vnetd-cni {command}: {}{details} [CNI error {}]",
                err.msg, err.code
            );
            (1, error_json(version, &err))
        }
    }
}

fn execute(
    env: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    version: &str,
) -> Result<String, (String, CniError)> {
    let command_name = || env("CNI_COMMAND").unwrap_or_else(|| "(no CNI_COMMAND)".into());
    let invocation = parse_env(env).map_err(|err| (command_name(), err))?;
    let command = invocation.command();
    let failed = |err: CniError| (command.to_string(), err);
    if invocation == CniEnv::Version {
        return Ok(version_json(version));
    }
    let conf = parse_config(stdin).map_err(failed)?;
    if matches!(invocation, CniEnv::Status | CniEnv::Gc) && conf.cni_version == "1.0.0" {
        return Err(failed(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            format!("{command} needs cniVersion 1.1.0; the configuration says 1.0.0"),
        )));
    }
    let on_network = |attachment: Attachment| Attachment {
        network: conf.name.clone(),
        ..attachment
    };
    match invocation {
        CniEnv::Add {
            attachment,
            netns,
            args,
        } => {
            let attachment = on_network(attachment);
            let ifname = attachment.ifname.clone();
            let request = Request::Add(AddRequest {
                attachment,
                netns: netns.clone(),
                subnet: conf.subnet.clone(),
                container_group: args.container_group,
                k8s_namespace: args.k8s_namespace,
                k8s_pod: args.k8s_pod,
                mtu: conf.mtu,
                routes: conf.routes.clone(),
            });
            match ask_agent(&conf, &request, CniError::TRY_AGAIN_LATER).map_err(failed)? {
                Response::Added(added) => {
                    Ok(result_json(&conf.cni_version, &ifname, &netns, &added))
                }
                other => Err(failed(unexpected(&other))),
            }
        }
        CniEnv::Del { attachment } => {
            // Agent down on DEL: we cannot tell whether anything is left to clean up, and
            // answering success would make the runtime forget the attachment while the agent
            // may still hold its address and interface. Code 11 makes the runtime retry.
            let request = Request::Del(on_network(attachment));
            expect_done(ask_agent(&conf, &request, CniError::TRY_AGAIN_LATER)).map_err(failed)
        }
        CniEnv::Check { attachment, netns } => {
            check_prev_result(&conf, &attachment.ifname, &netns).map_err(failed)?;
            let request = Request::Check(CheckRequest {
                attachment: on_network(attachment),
                netns,
            });
            expect_done(ask_agent(&conf, &request, CniError::TRY_AGAIN_LATER)).map_err(failed)
        }
        CniEnv::Status => {
            let request = Request::Ready {
                subnet: conf.subnet.clone(),
            };
            expect_done(ask_agent(&conf, &request, CniError::NOT_AVAILABLE)).map_err(failed)
        }
        CniEnv::Gc => {
            // Without the list, GC would release every attachment on the node: refuse instead.
            let valid = conf.valid_attachments.clone().ok_or_else(|| {
                failed(CniError::new(
                    CniError::INVALID_CONFIG,
                    "GC needs cni.dev/valid-attachments in the configuration",
                ))
            })?;
            let request = Request::Gc {
                network: conf.name.clone(),
                valid,
            };
            expect_done(ask_agent(&conf, &request, CniError::TRY_AGAIN_LATER)).map_err(failed)
        }
        CniEnv::Version => Ok(version_json(version)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::cni::testing::*;

    #[test]
    fn version_reports_supported_versions() {
        let env = env_of(&[("CNI_COMMAND", "VERSION")]);
        let (exit, stdout) = run(&env, br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(exit, 0);
        assert_eq!(
            parsed(&stdout),
            json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
        );
        for stdin in [&b""[..], br#"{"cniVersion":"0.4.0"}"#, b"garbage"] {
            let (exit, stdout) = run(&env, stdin);
            assert_eq!(exit, 0);
            assert_eq!(parsed(&stdout)["cniVersion"], "1.1.0");
        }
    }

    #[test]
    fn add_sends_the_attachment_and_prints_the_result() {
        let agent = FakeAgent::answering(Response::Added(added()));
        let stdin = config(&agent.socket, "1.0.0", json!({}));
        let (exit, stdout) = run(
            add_env(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;VNETD_CONTAINER_GROUP=api",
            ),
            &stdin,
        );
        assert_eq!(
            (exit, parsed(&stdout)),
            (
                0,
                parsed(&result_json("1.0.0", "eth0", Path::new(NETNS), &added()))
            )
        );
        assert_eq!(
            agent.request(),
            json!({
                "op": "add",
                "network": "vnetd",
                "container_id": "c0ffee",
                "ifname": "eth0",
                "netns": NETNS,
                "subnet": "apps",
                "container_group": "api",
                "k8s_namespace": "shop",
                "k8s_pod": "web-0",
            })
        );
    }

    #[test]
    fn add_passes_the_configured_mtu_to_the_agent() {
        let agent = FakeAgent::answering(Response::Added(added()));
        let stdin = config(&agent.socket, "1.1.0", json!({"mtu": 1300}));
        let (exit, stdout) = run(add_env(""), &stdin);
        assert_eq!(exit, 0, "{stdout}");
        assert_eq!(agent.request()["mtu"], 1300);
    }

    #[test]
    fn add_passes_the_configured_routes_to_the_agent() {
        let agent = FakeAgent::answering(Response::Added(added()));
        let stdin = config(
            &agent.socket,
            "1.1.0",
            json!({"routes": [{"dst": "10.0.4.0/24"}]}),
        );
        let (exit, stdout) = run(add_env(""), &stdin);
        assert_eq!(exit, 0, "{stdout}");
        assert_eq!(agent.request()["routes"], json!(["10.0.4.0/24"]));
    }

    #[test]
    fn add_with_missing_env_or_bad_stdin_fails_before_calling_the_agent() {
        let full = add_env("");
        let no_ifname = |name: &str| {
            if name == "CNI_IFNAME" {
                None
            } else {
                full(name)
            }
        };
        let (exit, stdout) = run(no_ifname, &config(&nowhere(), "1.0.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 4));
        assert!(
            parsed(&stdout)["msg"]
                .as_str()
                .unwrap()
                .contains("CNI_IFNAME")
        );
        assert_eq!(parsed(&stdout)["cniVersion"], "1.0.0");

        let (exit, stdout) = run(add_env(""), b"{\"cniVersion\": ");
        assert_eq!((exit, code_of(&stdout)), (1, 6));

        let (exit, stdout) = run(env_of(&[("CNI_COMMAND", "UPDATE")]), b"{}");
        assert_eq!((exit, code_of(&stdout)), (1, 4));

        let (exit, stdout) = run(
            add_env(""),
            br#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#,
        );
        assert_eq!((exit, code_of(&stdout)), (1, 1));
    }

    #[test]
    fn del_is_silent_on_success_and_retried_when_the_agent_is_down() {
        let agent = FakeAgent::answering(Response::Done);
        let del = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(
            run(&del, &config(&agent.socket, "1.1.0", json!({}))),
            (0, String::new())
        );
        assert_eq!(
            agent.request(),
            json!({"op": "del", "network": "vnetd", "container_id": "c0ffee", "ifname": "eth0"})
        );

        let (exit, stdout) = run(&del, &config(&nowhere(), "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 11));
    }

    #[test]
    fn check_needs_a_valid_prev_result() {
        let socket = nowhere();
        let env = command_env("CHECK");
        for prev in [
            json!({}),
            json!({"prevResult": "not a result"}),
            json!({"prevResult": {"interfaces": [{"name": "eth1", "sandbox": NETNS}], "ips": [{}]}}),
            json!({"prevResult": {"interfaces": [{"name": "eth0", "sandbox": "/other"}], "ips": [{}]}}),
            json!({"prevResult": {"interfaces": [{"name": "eth0", "sandbox": NETNS}], "ips": []}}),
        ] {
            let (exit, stdout) = run(&env, &config(&socket, "1.1.0", prev.clone()));
            assert_eq!((exit, code_of(&stdout)), (1, 7), "{prev}");
        }
    }

    #[test]
    fn check_asks_the_agent() {
        let agent = FakeAgent::answering(Response::Done);
        let prev = parsed(&result_json("1.1.0", "eth0", Path::new(NETNS), &added()));
        let stdin = config(&agent.socket, "1.1.0", json!({ "prevResult": prev }));
        assert_eq!(run(command_env("CHECK"), &stdin), (0, String::new()));
        assert_eq!(
            agent.request(),
            json!({"op": "check", "network": "vnetd", "container_id": "c0ffee", "ifname": "eth0",
                   "netns": NETNS})
        );
    }

    #[test]
    fn status_is_not_available_when_the_agent_is_down_or_the_pool_is_empty() {
        let socket = nowhere();
        let status = env_of(&[("CNI_COMMAND", "STATUS")]);
        let (exit, stdout) = run(&status, &config(&socket, "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 50));
        assert!(
            parsed(&stdout)["msg"]
                .as_str()
                .unwrap()
                .contains(&*socket.to_string_lossy())
        );

        let agent = FakeAgent::answering(Response::Error(CniError::new(
            CniError::NOT_AVAILABLE,
            "no free address in the pool of node n1",
        )));
        let (exit, stdout) = run(&status, &config(&agent.socket, "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 50));
        assert!(parsed(&stdout)["msg"].as_str().unwrap().contains("pool"));
        assert_eq!(agent.request(), json!({"op": "ready", "subnet": "apps"}));

        let agent = FakeAgent::answering(Response::Done);
        assert_eq!(
            run(&status, &config(&agent.socket, "1.1.0", json!({}))),
            (0, String::new())
        );
        agent.request();

        // STATUS is a 1.1.0 command.
        let (exit, stdout) = run(&status, &config(&socket, "1.0.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 1));
    }

    #[test]
    fn gc_sends_the_valid_attachments() {
        let agent = FakeAgent::answering(Response::Done);
        let gc = env_of(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")]);
        let valid = json!({"cni.dev/valid-attachments": [
            {"containerID": "c1", "ifname": "eth0"},
            {"containerID": "c2", "ifname": "net1"},
        ]});
        assert_eq!(
            run(&gc, &config(&agent.socket, "1.1.0", valid)),
            (0, String::new())
        );
        assert_eq!(
            agent.request(),
            json!({"op": "gc", "network": "vnetd", "valid": [
                {"network": "vnetd", "container_id": "c1", "ifname": "eth0"},
                {"network": "vnetd", "container_id": "c2", "ifname": "net1"},
            ]})
        );
        // No list at all: refuse rather than release everything.
        let (exit, stdout) = run(&gc, &config(&nowhere(), "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 7));
    }
}
