//! Talking to the agent: one request over its socket, and the answer turned into what the
//! plugin reports.
use std::time::Duration;

use super::config::NetConf;
use crate::api::{
    client,
    proto::{CniError, Request, Response},
};

/// How long to wait for the agent: ADD creates a veth pair and programs maps, which can take a
/// moment on a busy node.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls the agent. Not getting an answer is `unreachable_code` (11 "try again later", or 50
/// "not available" for STATUS); an answer we cannot read means the plugin and the agent do not
/// match, which retrying will not fix.
pub(super) fn ask_agent(
    conf: &NetConf,
    request: &Request,
    unreachable_code: u32,
) -> Result<Response, CniError> {
    client::call(&conf.agent_socket, request, AGENT_TIMEOUT).map_err(|err| {
        let garbled = err
            .chain()
            .filter_map(|cause| cause.downcast_ref::<serde_json::Error>())
            .any(|json_err| !json_err.is_eof());
        if garbled {
            CniError::new(
                CniError::INTERNAL,
                format!(
                    "cannot read the answer of the vnetd agent at {} (are the plugin and the \
                     agent the same version?)",
                    conf.agent_socket.display()
                ),
            )
            .with_details(format!("{err:#}"))
        } else {
            CniError::new(
                unreachable_code,
                format!(
                    "no answer from the vnetd agent at {}",
                    conf.agent_socket.display()
                ),
            )
            .with_details(format!("{err:#}"))
        }
    })
}

pub(super) fn expect_done(answer: Result<Response, CniError>) -> Result<String, CniError> {
    match answer? {
        Response::Done => Ok(String::new()),
        other => Err(unexpected(&other)),
    }
}

/// Turns an agent's error into the CNI error it carries, and any other unexpected answer into
/// an internal error.
pub(super) fn unexpected(answer: &Response) -> CniError {
    match answer {
        Response::Error(err) => err.clone(),
        other => CniError::new(
            CniError::INTERNAL,
            format!("the vnetd agent answered {}", answer_kind(other)),
        ),
    }
}

fn answer_kind(answer: &Response) -> &'static str {
    match answer {
        Response::Added(_) => "an ADD result",
        Response::Done => "done",
        Response::Status(_) => "a status report",
        Response::Flows(_) => "flow-log records",
        Response::Error(_) => "an error",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cni::{run, testing::*};

    #[test]
    fn agent_errors_pass_through() {
        let agent = FakeAgent::answering(Response::Error(CniError {
            code: CniError::POOL_EXHAUSTED,
            msg: "subnet apps has no free address".into(),
            details: "10.0.2.0/23".into(),
        }));
        let stdin = config(&agent.socket, "1.1.0", json!({}));
        let (exit, stdout) = run(add_env(""), &stdin);
        assert_eq!(exit, 1);
        assert_eq!(
            parsed(&stdout),
            json!({
                "cniVersion": "1.1.0",
                "code": 100,
                "msg": "subnet apps has no free address",
                "details": "10.0.2.0/23",
            })
        );
        agent.request();
    }

    #[test]
    fn add_with_the_agent_down_is_try_again_later_naming_the_socket() {
        let socket = nowhere();
        let (exit, stdout) = run(add_env(""), &config(&socket, "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, 11));
        assert!(
            parsed(&stdout)["msg"]
                .as_str()
                .unwrap()
                .contains(&*socket.to_string_lossy()),
            "{stdout}"
        );
    }

    #[test]
    fn add_with_a_garbled_answer_is_an_internal_error() {
        let agent = FakeAgent::answering_line(r#"{"what":"ever"}"#.into());
        let (exit, stdout) = run(add_env(""), &config(&agent.socket, "1.1.0", json!({})));
        assert_eq!((exit, code_of(&stdout)), (1, u64::from(CniError::INTERNAL)));
        agent.request();
    }

    #[test]
    fn agent_hanging_up_without_an_answer_is_try_again_later() {
        let agent = FakeAgent::answering_line(String::new());
        let (exit, stdout) = run(
            command_env("DEL"),
            &config(&agent.socket, "1.1.0", json!({})),
        );
        // The fake writes just "\n": an empty answer, as when the agent dies mid-request.
        assert_eq!((exit, code_of(&stdout)), (1, 11));
        agent.request();
    }
}
