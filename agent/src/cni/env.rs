//! The invocation as the `CNI_*` environment describes it: which command, on which attachment,
//! and what `CNI_ARGS` says about the pod.
use std::path::PathBuf;

use super::CniError;
use crate::api::proto::{Attachment, container_id_problem, ifname_problem};

/// What `CNI_ARGS` tells us about the pod; every other key is ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub container_group: Option<String>,
    pub k8s_namespace: Option<String>,
    pub k8s_pod: Option<String>,
}

/// The invocation, from the `CNI_*` environment: each command with exactly what it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CniEnv {
    Add {
        attachment: Attachment,
        netns: PathBuf,
        args: CniArgs,
    },
    /// `CNI_NETNS` is optional on DEL (the namespace may already be gone) and the agent does not
    /// need it: it knows what it made for the attachment.
    Del {
        attachment: Attachment,
    },
    Check {
        attachment: Attachment,
        netns: PathBuf,
    },
    Status,
    Gc,
    Version,
}

impl CniEnv {
    pub fn command(&self) -> &'static str {
        match self {
            CniEnv::Add { .. } => "ADD",
            CniEnv::Del { .. } => "DEL",
            CniEnv::Check { .. } => "CHECK",
            CniEnv::Status => "STATUS",
            CniEnv::Gc => "GC",
            CniEnv::Version => "VERSION",
        }
    }
}

/// Reads the `CNI_*` environment. `env` looks a variable up (`std::env::var` in the binary).
pub fn parse_env(env: &impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
    let var = |name: &str| env(name).filter(|value| !value.is_empty());
    let required = |name: &str| {
        var(name).ok_or_else(|| {
            CniError::new(CniError::INVALID_ENVIRONMENT, format!("{name} is not set"))
        })
    };
    let command = required("CNI_COMMAND")?;
    let attachment = || -> Result<Attachment, CniError> {
        Ok(Attachment {
            // The network's name is in the configuration, not the environment: see `execute`.
            network: String::new(),
            container_id: required("CNI_CONTAINERID")?,
            ifname: required("CNI_IFNAME")?,
        })
    };
    match command.as_str() {
        "ADD" => {
            let attachment = attachment()?;
            validate_container_id(&attachment.container_id)?;
            validate_ifname(&attachment.ifname)?;
            let netns = PathBuf::from(required("CNI_NETNS")?);
            let args = parse_cni_args(&var("CNI_ARGS").unwrap_or_default())?;
            Ok(CniEnv::Add {
                attachment,
                netns,
                args,
            })
        }
        "DEL" => Ok(CniEnv::Del {
            attachment: attachment()?,
        }),
        "CHECK" => {
            let attachment = attachment()?;
            Ok(CniEnv::Check {
                attachment,
                netns: PathBuf::from(required("CNI_NETNS")?),
            })
        }
        "STATUS" => Ok(CniEnv::Status),
        "GC" => Ok(CniEnv::Gc),
        "VERSION" => Ok(CniEnv::Version),
        other => Err(CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )),
    }
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    match container_id_problem(id) {
        Some(problem) => Err(CniError::new(CniError::INVALID_ENVIRONMENT, problem)),
        None => Ok(()),
    }
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    match ifname_problem(name) {
        Some(problem) => Err(CniError::new(CniError::INVALID_ENVIRONMENT, problem)),
        None => Ok(()),
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Unknown keys (including `IgnoreUnknown`) are ignored; an empty value
/// counts as not given.
pub fn parse_cni_args(cni_args: &str) -> Result<CniArgs, CniError> {
    let mut args = CniArgs::default();
    for pair in cni_args.split(';').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=').filter(|(key, _)| !key.is_empty()) else {
            return Err(CniError::new(
                CniError::INVALID_ENVIRONMENT,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            ));
        };
        let value = (!value.is_empty()).then(|| value.to_string());
        match key {
            "VNETD_CONTAINER_GROUP" => args.container_group = value,
            "K8S_POD_NAMESPACE" => args.k8s_namespace = value,
            "K8S_POD_NAME" => args.k8s_pod = value,
            _ => {}
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::testing::*;

    #[test]
    fn cni_args_take_our_keys_and_ignore_the_rest() {
        let args = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;VNETD_CONTAINER_GROUP=api;",
        )
        .unwrap();
        assert_eq!(
            args,
            CniArgs {
                container_group: Some("api".into()),
                k8s_namespace: Some("shop".into()),
                k8s_pod: Some("web-0".into()),
            }
        );
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        assert_eq!(
            parse_cni_args("VNETD_CONTAINER_GROUP=").unwrap(),
            CniArgs::default()
        );
    }

    #[test]
    fn malformed_cni_args_are_invalid_environment() {
        for bad in ["K8S_POD_NAME", "a=b;=c"] {
            let err = parse_cni_args(bad).unwrap_err();
            assert_eq!(err.code, CniError::INVALID_ENVIRONMENT, "{bad}");
            assert!(err.msg.contains("CNI_ARGS"), "{}", err.msg);
        }
    }

    #[test]
    fn add_needs_container_id_netns_and_ifname() {
        for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let full = add_env("");
            let env = |name: &str| if name == missing { None } else { full(name) };
            let err = parse_env(&env).unwrap_err();
            assert_eq!(err.code, CniError::INVALID_ENVIRONMENT);
            assert!(err.msg.contains(missing), "{}", err.msg);
        }
    }

    #[test]
    fn env_is_parsed_per_command() {
        let env = add_env("K8S_POD_NAME=web-0");
        let attachment = Attachment {
            network: String::new(),
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            parse_env(&env).unwrap(),
            CniEnv::Add {
                attachment: attachment.clone(),
                netns: NETNS.into(),
                args: CniArgs {
                    k8s_pod: Some("web-0".into()),
                    ..CniArgs::default()
                },
            }
        );
        // DEL without a namespace: it may be gone already.
        let del = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(parse_env(&del).unwrap(), CniEnv::Del { attachment });
        assert_eq!(
            parse_env(&env_of(&[("CNI_COMMAND", "STATUS")])).unwrap(),
            CniEnv::Status
        );
        assert_eq!(
            parse_env(&env_of(&[("CNI_COMMAND", "GC")])).unwrap(),
            CniEnv::Gc
        );
        assert_eq!(
            parse_env(&env_of(&[("CNI_COMMAND", "VERSION")])).unwrap(),
            CniEnv::Version
        );
        let err = parse_env(&env_of(&[("CNI_COMMAND", "UPDATE")])).unwrap_err();
        assert_eq!(err.code, CniError::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("UPDATE"), "{}", err.msg);
    }

    #[test]
    fn add_rejects_invalid_container_ids_and_ifnames() {
        for (var, value) in [
            ("CNI_IFNAME", "a-very-long-ifname"),
            ("CNI_IFNAME", "eth/0"),
            ("CNI_IFNAME", ".."),
            ("CNI_CONTAINERID", "-leading-dash"),
            ("CNI_CONTAINERID", "has space"),
        ] {
            let full = add_env("");
            let env = |name: &str| {
                if name == var {
                    Some(value.to_string())
                } else {
                    full(name)
                }
            };
            let err = parse_env(&env).unwrap_err();
            assert_eq!(err.code, CniError::INVALID_ENVIRONMENT, "{var}={value}");
            assert!(err.msg.contains(var), "{}", err.msg);
        }
    }
}
