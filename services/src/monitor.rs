//! `monitor`: passes every frame and counts it, in total and per flow.
//!
//! The flow table is shared with the probe thread, which answers the
//! `flows` request from it (see [`crate::probe`]). It holds at most
//! [`FLOW_LIMIT`] flows; frames of flows past that are counted as
//! untracked rather than growing the table without bound.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use chaingate_fastpath::wire::parse;
use chaingate_shared::IpProtocol;

use crate::probe::Report;
use crate::wire::{Function, Verdict};

/// Most flows the table keeps.
pub const FLOW_LIMIT: usize = 65_536;

/// A flow as the monitor sees it: protocol, source and destination
/// (address, port); ports are 0 for protocols without them.
pub type Flow = (IpProtocol, (IpAddr, u16), (IpAddr, u16));

/// Frames and bytes of one flow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FlowCount {
    /// Frames.
    pub frames: u64,
    /// Bytes (whole frames).
    pub bytes: u64,
}

/// The per-flow counts.
#[derive(Debug, Default)]
pub struct FlowTable {
    flows: HashMap<Flow, FlowCount>,
    /// Frames of flows that did not fit in the table, or had no flow
    /// (ARP, malformed frames).
    pub untracked: u64,
}

impl FlowTable {
    /// The count of `flow`.
    #[must_use]
    pub fn get(&self, flow: &Flow) -> Option<FlowCount> {
        self.flows.get(flow).copied()
    }

    /// Flows counted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow was counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn count(&mut self, flow: Option<Flow>, bytes: usize) {
        let room = self.flows.len() < FLOW_LIMIT;
        let entry = flow.and_then(|f| {
            if room {
                Some(self.flows.entry(f).or_default())
            } else {
                self.flows.get_mut(&f)
            }
        });
        match entry {
            Some(c) => {
                c.frames += 1;
                c.bytes += bytes as u64;
            }
            None => self.untracked += 1,
        }
    }

    /// The `flows` answer: `flows N untracked=N`, then one line per flow,
    /// busiest first: `PROTO SRC:PORT DST:PORT frames=N bytes=N`.
    #[must_use]
    pub fn render(&self) -> String {
        let mut rows: Vec<(&Flow, &FlowCount)> = self.flows.iter().collect();
        rows.sort_by(|a, b| b.1.frames.cmp(&a.1.frames).then(a.0.cmp(b.0)));
        let mut out = format!("flows {} untracked={}\n", rows.len(), self.untracked);
        for ((proto, (sa, sp), (da, dp)), c) in rows {
            let _ = writeln!(
                out,
                "{} {} {} frames={} bytes={}",
                u8::from(*proto),
                std::net::SocketAddr::new(*sa, *sp),
                std::net::SocketAddr::new(*da, *dp),
                c.frames,
                c.bytes
            );
        }
        out
    }
}

/// The monitor function.
#[derive(Clone, Debug, Default)]
pub struct Monitor {
    table: Arc<Mutex<FlowTable>>,
}

impl Monitor {
    /// The per-flow counts, shared with whoever reads them.
    #[must_use]
    pub fn table(&self) -> Arc<Mutex<FlowTable>> {
        Arc::clone(&self.table)
    }
}

fn flow_of(frame: &[u8]) -> Option<Flow> {
    let parsed = parse(frame).ok()?;
    let key = *parsed.outer().key()?;
    Some((
        key.proto(),
        (key.src(), key.src_port()),
        (key.dst(), key.dst_port()),
    ))
}

impl Function for Monitor {
    fn process(&mut self, frame: &mut [u8]) -> Verdict {
        let flow = flow_of(frame);
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count(flow, frame.len());
        Verdict::Pass
    }
}

impl Report for Monitor {
    fn answer(&self, request: &str) -> Option<String> {
        (request == "flows").then(|| {
            self.table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .render()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use chaingate_fastpath::wire::EthernetAddress;
    use chaingate_fastpath::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};

    fn udp(sport: u16, len: usize) -> Vec<u8> {
        let payload = vec![7u8; len];
        let spec = FrameSpec {
            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            vlans: &[],
            net: NetSpec::Ip(
                IpSpec::v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(192, 0, 2, 1)),
                L4Spec::Udp {
                    src_port: sport,
                    dst_port: 53,
                },
            ),
            payload: &payload,
        };
        let mut buf = vec![0u8; spec.len()];
        let n = spec.build(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn counts_each_flow_and_answers_flows() {
        let mut m = Monitor::default();
        for _ in 0..3 {
            assert_eq!(m.process(&mut udp(1000, 10)), Verdict::Pass);
        }
        let mut other = udp(1001, 100);
        let other_len = other.len() as u64;
        m.process(&mut other);
        m.process(&mut [0u8; 20]);
        let flow = (
            IpProtocol::Udp,
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 1000),
            (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 53),
        );
        let table = m.table();
        let t = table.lock().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&flow).map(|c| c.frames), Some(3));
        assert_eq!(t.untracked, 1, "the runt has no flow");
        drop(t);
        let answer = m.answer("flows").unwrap();
        let lines: Vec<&str> = answer.lines().collect();
        assert_eq!(lines[0], "flows 2 untracked=1");
        assert!(lines[1].starts_with("17 10.0.0.1:1000 192.0.2.1:53 frames=3 "));
        assert_eq!(
            lines[2],
            format!("17 10.0.0.1:1001 192.0.2.1:53 frames=1 bytes={other_len}")
        );
        assert_eq!(m.answer("probe"), None);
    }

    #[test]
    fn the_table_stops_growing_at_its_limit() {
        let mut t = FlowTable::default();
        let flow = |p: u16| {
            Some((
                IpProtocol::Udp,
                (IpAddr::V4(Ipv4Addr::LOCALHOST), p),
                (IpAddr::V4(Ipv4Addr::LOCALHOST), 9),
            ))
        };
        for i in 0..FLOW_LIMIT {
            t.count(flow(u16::try_from(i % 65_536).unwrap()), 60);
        }
        assert_eq!(t.len(), FLOW_LIMIT);
        t.count(flow(0), 60);
        assert_eq!(
            t.get(&flow(0).unwrap()).unwrap().frames,
            2,
            "known flows still count"
        );
        t.count(
            Some((
                IpProtocol::Tcp,
                (IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
                (IpAddr::V4(Ipv4Addr::LOCALHOST), 9),
            )),
            60,
        );
        assert_eq!((t.len(), t.untracked), (FLOW_LIMIT, 1));
    }
}
