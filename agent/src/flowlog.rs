//! Flow logs: Azure's NSG flow-log version 2 tuples
//! (`unix-ts,src-ip,dst-ip,src-port,dst-port,T|U,I|O,A|D,B|C|E,pkts-out,bytes-out,pkts-in,bytes-in`)
//! with the NSG and rule that decided, kept in a bounded buffer that `vnetd flows` reads.
//!
//! Where they come from:
//! - **B** (a flow begins, allowed or denied): the programs' `FLOW_EVENTS` ring, one event per
//!   new flow and per refused first packet, read by [`read`]. An event names the deciding rule
//!   of each NSG of each end by (classifier id, rule bit); the names come from the compiled
//!   tables the agent installed ([`FlowLog::set_rules`]). One record per NSG that decided: a
//!   flow between two pods with NSGs is logged at the sender's (O) and the receiver's (I).
//! - **C** (continuing) and **E** (ended): the conntrack collector's walk of FLOWS
//!   ([`crate::gc`]), which reads both directions' packet and byte counts anyway: a C record
//!   when a flow's counts moved since its last record, an E when the collector expires it.
//!
//! Choices: counts are the flow's totals since it began (Azure's v2 counts since the last
//! record; a total needs no summing and an E carries the final counts). Only flows whose B the
//! agent saw get C and E records (after an agent restart, flows begun before it are not
//! followed). ICMP echo is logged with protocol `I` and its identifier as a port, where Azure's
//! v2 tuple only knows T and U. A container group's unexposed port refuses as rule
//! `PortNotExposed` of no NSG.
use std::{
    collections::{HashMap, VecDeque},
    fmt,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{Interest, unix::AsyncFd};
use vnetd_common::{
    DropReason, FLOW_INBOUND, FLOW_OUTBOUND, Flow, FlowEvent, FlowEventVerdict, FlowKey, NO_RULE,
    NsgVerdict,
};

use crate::{dataplane::maps::FlowEventRing, nsg_hits::LiveRules};

/// Records `vnetd flows` can show: the most recent ones.
pub const BUFFERED: usize = 10_000;
/// Flows followed for their C and E records at most (FLOWS holds 131072 flows).
pub const FOLLOWED_MAX: usize = 131_072;
/// Collector passes a followed flow may be missing from (evicted by the LRU, never expired by
/// the collector) before it is forgotten: a flow created during a walk is missing from it once.
const MISSED_PASSES: u8 = 3;
/// How often the reader drains the ring whether or not it was woken (the programs wake it only
/// once a sixteenth of the ring is waiting).
const READ_EVERY: Duration = Duration::from_millis(200);

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One flow-log record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Position in this agent's log: `vnetd flows --follow` asks for what comes after it.
    pub seq: u64,
    /// Unix time, seconds.
    pub time: u64,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// `T` (TCP), `U` (UDP), `I` (ICMP echo), or the protocol number.
    pub protocol: String,
    /// `I` (the receiver's inbound NSG decided) or `O` (the sender's outbound NSG).
    pub direction: char,
    /// `A` (allowed) or `D` (denied).
    pub decision: char,
    /// `B` (began), `C` (continuing) or `E` (ended).
    pub state: char,
    /// Source to destination (the flow's original direction), totals since it began.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Destination to source.
    pub packets_in: u64,
    pub bytes_in: u64,
    pub nsg: String,
    pub rule: String,
}

impl FlowRecord {
    /// The version-2 tuple. A B record's counts are empty, as Azure writes them.
    pub fn tuple(&self) -> String {
        let counts = if self.state == 'B' {
            ",,,".to_string()
        } else {
            format!(
                "{},{},{},{}",
                self.packets_out, self.bytes_out, self.packets_in, self.bytes_in
            )
        };
        format!(
            "{},{},{},{},{},{},{},{},{},{counts}",
            self.time,
            self.src_ip,
            self.dst_ip,
            self.src_port,
            self.dst_port,
            self.protocol,
            self.direction,
            self.decision,
            self.state
        )
    }
}

impl fmt::Display for FlowRecord {
    /// The tuple, then the NSG and rule that decided.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nsg.is_empty() {
            write!(f, "{} {}", self.tuple(), self.rule)
        } else {
            write!(f, "{} {}/{}", self.tuple(), self.nsg, self.rule)
        }
    }
}

/// What `vnetd flows` gets: the buffered records after the one it asked from, and the records
/// the programs could not write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsReport {
    pub records: Vec<FlowRecord>,
    pub lost: u64,
}

/// One NSG's decision on a flow: what each of its records says besides the tuple and counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub direction: char,
    pub decision: char,
    pub nsg: String,
    pub rule: String,
}

/// The NSG decisions an event records, named by the first of `rules` (kernel id -> rule names
/// by bit) that knows the classifier.
pub fn sides(event: &FlowEvent, rules: &[&LiveRules]) -> Vec<Side> {
    let mut out = Vec::new();
    for (index, direction) in [(FLOW_OUTBOUND, 'O'), (FLOW_INBOUND, 'I')] {
        let d = &event.decisions[index];
        if d.verdict == NsgVerdict::Unclassified as u8 {
            continue;
        }
        let end_denied = d.verdict == NsgVerdict::Deny as u8;
        for (classifier, rule) in [
            (d.classifier_subnet, d.rule_subnet),
            (d.classifier_group, d.rule_group),
        ] {
            if classifier == 0 {
                continue;
            }
            let names = rules.iter().find_map(|r| r.get(&classifier));
            let named = names.and_then(|r| r.get(usize::from(rule)));
            let side = match named {
                Some(name) => Side {
                    direction,
                    decision: if name.access == "deny" { 'D' } else { 'A' },
                    nsg: name.nsg.clone(),
                    rule: name.rule.clone(),
                },
                None => Side {
                    direction,
                    // Only the end's last classifier can deny: the others allowed.
                    decision: if end_denied { 'D' } else { 'A' },
                    nsg: names
                        .and_then(|r| r.first())
                        .map_or_else(String::new, |n| n.nsg.clone()),
                    rule: if rule == NO_RULE {
                        format!("no rule (classifier {classifier} missing)")
                    } else {
                        format!("classifier {classifier} rule {rule}")
                    },
                },
            };
            out.push(side);
        }
        if end_denied {
            // Of a denying end's classifiers, those that allowed did not decide the packet.
            let denied: Vec<Side> = out
                .iter()
                .filter(|s| s.direction == direction && s.decision == 'D')
                .cloned()
                .collect();
            if !denied.is_empty() {
                out.retain(|s| s.direction != direction);
                out.extend(denied);
            }
        }
    }
    if out.is_empty()
        && event.verdict == FlowEventVerdict::Denied as u8
        && event.reason == DropReason::PortNotExposed as u8
    {
        out.push(Side {
            direction: 'I',
            decision: 'D',
            nsg: String::new(),
            rule: "PortNotExposed".into(),
        });
    }
    out
}

/// The protocol as a flow-log record writes it.
pub fn protocol(proto: u8) -> String {
    match proto {
        IPPROTO_TCP => "T".into(),
        IPPROTO_UDP => "U".into(),
        IPPROTO_ICMP => "I".into(),
        other => other.to_string(),
    }
}

/// A record of `key` for `side`, `seq` left 0 (the log numbers it).
fn record(key: &FlowKey, side: &Side, time: u64, state: char, counts: Counts) -> FlowRecord {
    FlowRecord {
        seq: 0,
        time,
        src_ip: key.src_ip.into(),
        dst_ip: key.dst_ip.into(),
        src_port: u16::from_be(key.src_port),
        dst_port: u16::from_be(key.dst_port),
        protocol: protocol(key.proto),
        direction: side.direction,
        decision: side.decision,
        state,
        packets_out: counts.packets_out,
        bytes_out: counts.bytes_out,
        packets_in: counts.packets_in,
        bytes_in: counts.bytes_in,
        nsg: side.nsg.clone(),
        rule: side.rule.clone(),
    }
}

/// Both directions' packet and byte totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
}

impl Counts {
    pub fn of(original: &Flow, reply: &Flow) -> Self {
        Self {
            packets_out: original.packets,
            bytes_out: original.bytes,
            packets_in: reply.packets,
            bytes_in: reply.bytes,
        }
    }
}

/// B records of an event at unix time `time`.
pub fn begin_records(event: &FlowEvent, rules: &LiveRules, time: u64) -> Vec<FlowRecord> {
    sides(event, &[rules])
        .iter()
        .map(|side| record(&event.key, side, time, 'B', Counts::default()))
        .collect()
}

/// A flow the collector saw: its original direction's key, both directions' totals, and
/// whether it expired in this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSample {
    pub key: FlowKey,
    pub counts: Counts,
    pub ended: bool,
}

/// A flow whose B was logged: who decided it, and the counts of its last record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Followed {
    pub sides: Vec<Side>,
    pub reported: Counts,
    missed: u8,
}

impl Followed {
    pub fn new(sides: Vec<Side>) -> Self {
        Self {
            sides,
            reported: Counts::default(),
            missed: 0,
        }
    }
}

/// The C or E records of a followed flow the collector saw at unix time `time`: E when it
/// expired, C when its counts moved since the last record, none otherwise.
pub fn sample_records(followed: &mut Followed, sample: &FlowSample, time: u64) -> Vec<FlowRecord> {
    followed.missed = 0;
    let state = if sample.ended {
        'E'
    } else if sample.counts != followed.reported {
        'C'
    } else {
        return Vec::new();
    };
    followed.reported = sample.counts;
    followed
        .sides
        .iter()
        .map(|side| record(&sample.key, side, time, state, sample.counts))
        .collect()
}

/// The log: rule names, the buffered records, the flows followed.
pub struct FlowLog(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// The installed classifiers' rule names, and the generation before (an event may name a
    /// classifier a reload has just replaced).
    rules: LiveRules,
    previous: LiveRules,
    records: VecDeque<FlowRecord>,
    next_seq: u64,
    followed: HashMap<FlowKey, Followed>,
}

impl Inner {
    fn push(&mut self, mut record: FlowRecord) {
        self.next_seq += 1;
        record.seq = self.next_seq;
        if self.records.len() == BUFFERED {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }
}

impl FlowLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Inner::default())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The classifiers installed now (after a start or a switch).
    pub fn set_rules(&self, live: LiveRules) {
        let mut inner = self.lock();
        let old = std::mem::replace(&mut inner.rules, live);
        inner.previous = old;
    }

    /// Logs the B records of `events`; allowed flows are followed for their C and E.
    pub fn events(&self, events: &[FlowEvent]) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let clock = Clock::now();
        for event in events {
            let sides = sides(event, &[&inner.rules, &inner.previous]);
            let time = clock.unix_of(event.time_ns);
            for side in &sides {
                inner.push(record(&event.key, side, time, 'B', Counts::default()));
            }
            if event.verdict == FlowEventVerdict::Allowed as u8
                && !sides.is_empty()
                && inner.followed.len() < FOLLOWED_MAX
            {
                inner.followed.insert(event.key, Followed::new(sides));
            }
        }
    }

    /// Logs the C and E records of a collector pass (`samples`: the flows an NSG decided).
    pub fn samples(&self, samples: &[FlowSample]) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let time = Clock::now().unix;
        let mut seen = std::collections::HashSet::new();
        for sample in samples {
            let Some(followed) = inner.followed.get_mut(&sample.key) else {
                continue;
            };
            seen.insert(sample.key);
            let records = sample_records(followed, sample, time);
            if sample.ended {
                inner.followed.remove(&sample.key);
            }
            for r in records {
                inner.push(r);
            }
        }
        inner.followed.retain(|key, f| {
            if seen.contains(key) {
                return true;
            }
            f.missed += 1;
            f.missed < MISSED_PASSES
        });
    }

    /// The buffered records after `after` (all of them for `None`).
    pub fn since(&self, after: Option<u64>) -> Vec<FlowRecord> {
        let inner = self.lock();
        let after = after.unwrap_or(0);
        inner
            .records
            .iter()
            .filter(|r| r.seq > after)
            .cloned()
            .collect()
    }
}

/// CLOCK_MONOTONIC_COARSE (the programs' clock) and the wall clock, read together.
struct Clock {
    monotonic_ns: u64,
    unix: u64,
}

impl Clock {
    fn now() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            monotonic_ns: crate::gc::monotonic_ns(),
            unix,
        }
    }

    /// The unix time (seconds) of a monotonic stamp taken before now.
    fn unix_of(&self, monotonic_ns: u64) -> u64 {
        let ago = Duration::from_nanos(self.monotonic_ns.saturating_sub(monotonic_ns));
        self.unix.saturating_sub(ago.as_secs())
    }
}

/// Reads FLOW_EVENTS into `log`, forever: when the programs wake the ring, and every
/// [`READ_EVERY`] (they do not wake it for every record).
pub async fn read(ring: FlowEventRing, log: Arc<FlowLog>) -> Result<()> {
    // SAFETY: the ring owns its map fd for as long as the AsyncFd owns the ring, and always
    // answers that same fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("watching the flow-log ring")?;
    let mut tick = tokio::time::interval(READ_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready.context("waiting on the flow-log ring")?;
                guard.clear_ready();
            }
            _ = tick.tick() => {}
        }
        while let Some(event) = ring.get_mut().next_event() {
            batch.push(event);
            if batch.len() == 1024 {
                log.events(&batch);
                batch.clear();
            }
        }
        if !batch.is_empty() {
            log.events(&batch);
            batch.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use vnetd_common::{FlowDecision, FlowKind};

    use super::*;
    use crate::nsg_hits::RuleName;

    fn name(nsg: &str, rule: &str, direction: &'static str, access: &'static str) -> RuleName {
        RuleName {
            nsg: nsg.into(),
            rule: rule.into(),
            direction,
            access,
        }
    }

    /// Classifier 5: apps-nsg inbound; 6: apps-nsg outbound; 9: a group's inbound NSG.
    fn rules() -> LiveRules {
        BTreeMap::from([
            (
                5,
                vec![
                    name("apps-nsg", "allow-web", "inbound", "allow"),
                    name("apps-nsg", "AllowVnetInBound", "inbound", "allow"),
                    name("apps-nsg", "DenyAllInBound", "inbound", "deny"),
                ],
            ),
            (
                6,
                vec![
                    name("apps-nsg", "deny-smtp-out", "outbound", "deny"),
                    name("apps-nsg", "AllowVnetOutBound", "outbound", "allow"),
                ],
            ),
            (
                9,
                vec![
                    name("group-nsg", "deny-ssh", "inbound", "deny"),
                    name("group-nsg", "AllowVnetInBound", "inbound", "allow"),
                ],
            ),
        ])
    }

    fn key(proto: u8, sport: u16, dport: u16) -> FlowKey {
        FlowKey {
            src_ip: [10, 0, 2, 10],
            dst_ip: [10, 0, 2, 11],
            src_port: sport.to_be(),
            dst_port: dport.to_be(),
            proto,
            _pad: [0; 3],
        }
    }

    fn decision(verdict: NsgVerdict, subnet: (u32, u16), group: (u32, u16)) -> FlowDecision {
        FlowDecision {
            classifier_subnet: subnet.0,
            classifier_group: group.0,
            rule_subnet: subnet.1,
            rule_group: group.1,
            verdict: verdict as u8,
            _pad: [0; 3],
        }
    }

    const NONE: (u32, u16) = (0, NO_RULE);

    fn none() -> FlowDecision {
        decision(NsgVerdict::Unclassified, NONE, NONE)
    }

    #[test]
    fn a_b_record_is_the_v2_tuple_with_empty_counts_and_the_rule() {
        let event = FlowEvent {
            time_ns: 0,
            key: key(IPPROTO_TCP, 40000, 80),
            decisions: [
                decision(NsgVerdict::Allow, (6, 1), NONE),
                decision(NsgVerdict::Allow, (5, 0), NONE),
            ],
            kind: FlowKind::Nsg as u8,
            verdict: FlowEventVerdict::Allowed as u8,
            ..FlowEvent::default()
        };
        let records = begin_records(&event, &rules(), 1_700_000_000);
        let lines: Vec<String> = records.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "1700000000,10.0.2.10,10.0.2.11,40000,80,T,O,A,B,,,, apps-nsg/AllowVnetOutBound",
                "1700000000,10.0.2.10,10.0.2.11,40000,80,T,I,A,B,,,, apps-nsg/allow-web",
            ]
        );
        let json = serde_json::to_value(&records[1]).unwrap();
        assert_eq!(json["direction"], "I");
        assert_eq!(json["decision"], "A");
        assert_eq!(json["state"], "B");
        assert_eq!(json["protocol"], "T");
        assert_eq!(json["rule"], "allow-web");
        assert_eq!(json["src_port"], 40000);
    }

    #[test]
    fn a_denial_names_the_denying_nsg_only() {
        // The subnet's NSG allowed (AllowVnetInBound), the group's denied (deny-ssh).
        let event = FlowEvent {
            key: key(IPPROTO_TCP, 40000, 22),
            decisions: [none(), decision(NsgVerdict::Deny, (5, 1), (9, 0))],
            verdict: FlowEventVerdict::Denied as u8,
            reason: DropReason::NsgDenied as u8,
            ..FlowEvent::default()
        };
        let s = sides(&event, &[&rules()]);
        assert_eq!(
            s,
            [Side {
                direction: 'I',
                decision: 'D',
                nsg: "group-nsg".into(),
                rule: "deny-ssh".into()
            }]
        );
        let out = FlowEvent {
            key: key(IPPROTO_TCP, 40000, 25),
            decisions: [decision(NsgVerdict::Deny, (6, 0), NONE), none()],
            verdict: FlowEventVerdict::Denied as u8,
            reason: DropReason::NsgDenied as u8,
            ..FlowEvent::default()
        };
        let line = begin_records(&out, &rules(), 7)[0].to_string();
        assert_eq!(
            line,
            "7,10.0.2.10,10.0.2.11,40000,25,T,O,D,B,,,, apps-nsg/deny-smtp-out"
        );
    }

    #[test]
    fn unexposed_ports_unknown_classifiers_and_other_protocols_are_named() {
        let event = FlowEvent {
            key: key(IPPROTO_UDP, 5000, 53),
            decisions: [none(), none()],
            verdict: FlowEventVerdict::Denied as u8,
            reason: DropReason::PortNotExposed as u8,
            ..FlowEvent::default()
        };
        assert_eq!(
            begin_records(&event, &rules(), 1)[0].to_string(),
            "1,10.0.2.10,10.0.2.11,5000,53,U,I,D,B,,,, PortNotExposed"
        );
        let unknown = FlowEvent {
            key: key(47, 0, 0),
            decisions: [decision(NsgVerdict::Allow, (77, 3), NONE), none()],
            verdict: FlowEventVerdict::Allowed as u8,
            ..FlowEvent::default()
        };
        let r = &begin_records(&unknown, &rules(), 1)[0];
        assert_eq!((r.protocol.as_str(), r.decision), ("47", 'A'));
        assert_eq!(r.rule, "classifier 77 rule 3");
        // No NSG decided: nothing to log.
        let unclassified = FlowEvent {
            key: key(IPPROTO_TCP, 1, 2),
            verdict: FlowEventVerdict::Allowed as u8,
            ..FlowEvent::default()
        };
        assert!(begin_records(&unclassified, &rules(), 1).is_empty());
    }

    #[test]
    fn c_records_follow_moving_counts_and_e_carries_the_final_ones() {
        let side = Side {
            direction: 'I',
            decision: 'A',
            nsg: "apps-nsg".into(),
            rule: "allow-web".into(),
        };
        let mut followed = Followed::new(vec![side]);
        let k = key(IPPROTO_TCP, 40000, 80);
        let sample = |p, ended| FlowSample {
            key: k,
            counts: Counts {
                packets_out: p,
                bytes_out: p * 100,
                packets_in: p / 2,
                bytes_in: p * 10,
            },
            ended,
        };
        let c = sample_records(&mut followed, &sample(4, false), 10);
        assert_eq!(
            c[0].to_string(),
            "10,10.0.2.10,10.0.2.11,40000,80,T,I,A,C,4,400,2,40 apps-nsg/allow-web"
        );
        assert!(
            sample_records(&mut followed, &sample(4, false), 15).is_empty(),
            "an idle flow gets no C record"
        );
        let e = sample_records(&mut followed, &sample(6, true), 20);
        assert_eq!(
            e[0].to_string(),
            "20,10.0.2.10,10.0.2.11,40000,80,T,I,A,E,6,600,3,60 apps-nsg/allow-web"
        );
        // An expired flow gets its E even if nothing moved since its last C.
        let mut quiet = Followed::new(followed.sides.clone());
        sample_records(&mut quiet, &sample(2, false), 1);
        assert_eq!(
            sample_records(&mut quiet, &sample(2, true), 2)[0].state,
            'E'
        );
    }

    #[test]
    fn the_log_numbers_buffers_and_forgets() {
        let log = FlowLog::new();
        log.set_rules(rules());
        let allowed = FlowEvent {
            key: key(IPPROTO_UDP, 5000, 53),
            decisions: [none(), decision(NsgVerdict::Allow, (5, 1), NONE)],
            verdict: FlowEventVerdict::Allowed as u8,
            time_ns: crate::gc::monotonic_ns(),
            ..FlowEvent::default()
        };
        log.events(&[allowed]);
        let b = log.since(None);
        assert_eq!((b.len(), b[0].seq, b[0].state), (1, 1, 'B'));
        let counts = Counts {
            packets_out: 1,
            bytes_out: 60,
            packets_in: 1,
            bytes_in: 60,
        };
        let sample = FlowSample {
            key: allowed.key,
            counts,
            ended: false,
        };
        log.samples(&[sample]);
        log.samples(&[FlowSample {
            ended: true,
            ..sample
        }]);
        let after = log.since(Some(1));
        assert_eq!(
            after.iter().map(|r| (r.seq, r.state)).collect::<Vec<_>>(),
            [(2, 'C'), (3, 'E')]
        );
        assert!(log.lock().followed.is_empty(), "an ended flow is forgotten");
        // A flow missing from the collector's passes (evicted) is forgotten after a few.
        log.events(&[allowed]);
        for _ in 0..MISSED_PASSES {
            log.samples(&[]);
        }
        assert!(log.lock().followed.is_empty());
        // The buffer keeps the newest records.
        for _ in 0..BUFFERED {
            log.events(&[allowed]);
        }
        let all = log.since(None);
        assert_eq!(all.len(), BUFFERED);
        assert_eq!(all.last().unwrap().seq, 4 + BUFFERED as u64);
    }
}
