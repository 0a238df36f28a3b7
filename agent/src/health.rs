//! Liveness and readiness for kubelet's probes, served beside the metrics on `--metrics-addr`:
//!
//! - `/healthz` answers 200 as long as the event loop answers, from the start (while the
//!   dataplane is still being loaded) to the exit. Once the agent serves, it also fails (503)
//!   when the agent's state has not been refreshed for `--stuck-after` (default
//!   [`DEFAULT_STUCK_AFTER`]): the refresh takes the agent's lock every second, so a lock held
//!   that long means a request is stuck, and a restart (which leaves the dataplane running) is
//!   the way out.
//! - `/readyz` answers 200 only while the agent serves: the dataplane is attached to the
//!   uplink and the API socket the CNI plugin calls is bound and served; 503 (with the reason)
//!   while it starts, when the socket file is gone, and from SIGTERM on.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use crate::metrics::StatusFeed;

/// How long the agent's state may go without a refresh before `/healthz` fails, unless
/// `--stuck-after` says otherwise.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(30);

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const STOPPING: u8 = 2;

/// Where the agent is in its life, shared by the daemon (which moves it on) and the HTTP
/// server (which answers the probes from it).
#[derive(Clone)]
pub struct Health(Arc<Inner>);

struct Inner {
    phase: AtomicU8,
    api_socket: PathBuf,
    stuck_after: Duration,
}

/// A probe's answer: the HTTP status and a line saying why.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    fn ok(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
        }
    }

    fn unavailable(body: impl Into<String>) -> Self {
        Self {
            status: 503,
            body: body.into(),
        }
    }
}

impl Health {
    /// Starting: alive, not ready. Readiness also checks that `api_socket` is still there;
    /// liveness fails once the state is older than `stuck_after`.
    pub fn new(api_socket: PathBuf, stuck_after: Duration) -> Self {
        Self(Arc::new(Inner {
            phase: AtomicU8::new(STARTING),
            api_socket,
            stuck_after,
        }))
    }

    /// The dataplane is attached and the API socket is bound: ready.
    pub fn serving(&self) {
        self.0.phase.store(SERVING, Ordering::SeqCst);
    }

    /// SIGTERM: not ready any more (new pods go elsewhere while the agent drains), still alive.
    pub fn stopping(&self) {
        self.0.phase.store(STOPPING, Ordering::SeqCst);
    }

    /// `/healthz`.
    pub fn liveness(&self, feed: &StatusFeed) -> Answer {
        match self.0.phase.load(Ordering::SeqCst) {
            STARTING => Answer::ok("ok: starting\n"),
            STOPPING => Answer::ok("ok: stopping\n"),
            _ => {
                let age = feed.age();
                if age > self.0.stuck_after {
                    Answer::unavailable(format!(
                        "stuck: the agent's state was last refreshed {}s ago (its lock has been \
                         held since)\n",
                        age.as_secs()
                    ))
                } else {
                    Answer::ok("ok\n")
                }
            }
        }
    }

    /// `/readyz`.
    pub fn readiness(&self, feed: &StatusFeed) -> Answer {
        match self.0.phase.load(Ordering::SeqCst) {
            STARTING => return Answer::unavailable("not ready: starting\n"),
            STOPPING => return Answer::unavailable("not ready: stopping\n"),
            _ => {}
        }
        if !self.0.api_socket.exists() {
            return Answer::unavailable(format!(
                "not ready: the API socket {} is gone\n",
                self.0.api_socket.display()
            ));
        }
        match feed.latest() {
            Err(err) => Answer::unavailable(format!("not ready: reading the dataplane: {err}\n")),
            Ok(report)
                if !report
                    .links
                    .iter()
                    .any(|(_, ifname)| *ifname == report.uplink) =>
            {
                Answer::unavailable(format!(
                    "not ready: no program is attached to the uplink {}\n",
                    report.uplink
                ))
            }
            Ok(_) => Answer::ok("ready\n"),
        }
    }
}
