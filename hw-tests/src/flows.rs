//! The traffic tool: flows sent from the lan host, received, checked and
//! answered on the wan host, and the answers checked back on the lan host.
//!
//! Every frame carries, after its UDP or TCP header, a 20-byte header and
//! a filler that both sides can recompute:
//!
//! ```text
//! | "CG" | run u16 | flow u32 | seq u32 | sent ns u64 | filler: byte i = flow + seq + 7i |
//! ```
//!
//! (`run` tells two runs on the same wire apart: another run's frames
//! count as foreign, not as damaged)
//! so a receiver knows each frame's flow and place in it (loss, duplicates,
//! reordering), whether any byte changed on the way (`corrupt`), how long it
//! took (`sent` is nanoseconds since the process's epoch; both ends run in
//! the test's process), which instances it passed (the services' trace
//! trailer after the IP packet, [`chaingate_services::stamp`]) and under
//! which addresses it arrived (a NAT's rewrite).
//!
//! TCP flows have a real handshake's shape: the client sends SYN, the wan
//! host answers SYN-ACK, and only then does the client send its data
//! (ACK|PSH, sequence numbers counting the bytes) and finally FIN, which
//! the wan host answers with FIN-ACK. A stateful firewall in the chain sees
//! what it would see from real hosts. With `echo`, the wan host sends every
//! data frame back (addresses swapped, payload kept), and the lan host
//! checks the answers the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chaingate_fastpath::wire::EthernetAddress;
use chaingate_fastpath::wire::build::L4Spec;
use chaingate_fastpath::wire::tcp::{TcpFlags, TcpRepr};
use chaingate_pktio::afpacket::{AfPacket, wait_readable};
use chaingate_pktio::{PacketIo, RxBatch};

use crate::frames::{LAN_MAC, WAN_MAC};
use crate::netns::in_netns;

const MAGIC: &[u8; 2] = b"CG";
static RUNS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
const HEADER: usize = 20;
const SLOT: usize = 2048;

/// UDP, or TCP with a handshake.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    /// UDP datagrams.
    Udp,
    /// A TCP connection per flow.
    Tcp,
}

/// What to send.
#[derive(Clone, Debug)]
pub struct Plan {
    /// UDP or TCP.
    pub proto: Proto,
    /// Flows; flow `i` comes from the `i % clients`-th address after
    /// `client`'s, source port `client.port() + i`.
    pub flows: u32,
    /// Distinct client addresses the flows come from.
    pub clients: u32,
    /// The first client address and source port.
    pub client: SocketAddrV4,
    /// The server every flow goes to.
    pub server: SocketAddrV4,
    /// Data frames per flow.
    pub packets: u32,
    /// Whole Ethernet frame length of data frames (at least the headers
    /// and the 20-byte stamp of this tool).
    pub size: usize,
    /// Data frames per second, all flows together; 0 for as fast as the
    /// socket takes them.
    pub pps: u32,
    /// The wan host sends each data frame back.
    pub echo: bool,
    /// How long to wait for the last frames after the last was sent.
    pub settle: Duration,
    /// Progress and an early stop, for a run watched from another thread.
    pub live: Option<Arc<Live>>,
}

/// A run's progress, and a way to end it early (the demo's Ctrl-C).
#[derive(Debug, Default)]
pub struct Live {
    /// Data frames sent so far.
    pub sent: AtomicU64,
    /// Set to stop sending; the run then settles and reports.
    pub stop: AtomicBool,
}

impl Plan {
    /// `flows` UDP flows of `packets` 128-byte frames at `pps` from
    /// 10.0.0.1:10000 (one client) to 192.0.2.10:80, not echoed, half a
    /// second to settle.
    #[must_use]
    pub fn udp(flows: u32, packets: u32, pps: u32) -> Self {
        Self {
            proto: Proto::Udp,
            flows,
            clients: 1,
            client: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 10_000),
            server: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 80),
            packets,
            size: 128,
            pps,
            echo: false,
            settle: Duration::from_millis(500),
            live: None,
        }
    }

    /// As [`Plan::udp`], over TCP.
    #[must_use]
    pub fn tcp(flows: u32, packets: u32, pps: u32) -> Self {
        Self {
            proto: Proto::Tcp,
            ..Self::udp(flows, packets, pps)
        }
    }

    fn client_of(&self, flow: u32) -> SocketAddrV4 {
        let ip = u32::from(*self.client.ip()) + flow % self.clients.max(1);
        let port = self
            .client
            .port()
            .wrapping_add(u16::try_from(flow).unwrap_or(u16::MAX));
        SocketAddrV4::new(Ipv4Addr::from(ip), port)
    }

    fn l4_header(&self) -> usize {
        match self.proto {
            Proto::Udp => 8,
            Proto::Tcp => 20,
        }
    }

    fn payload_len(&self) -> usize {
        self.size
            .saturating_sub(14 + 20 + self.l4_header())
            .max(HEADER)
    }
}

/// Latencies, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Latency(Vec<u64>);

impl Latency {
    /// The `p`-th percentile (0-100), or `None` without samples.
    #[must_use]
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut v = self.0.clone();
        v.sort_unstable();
        let last = v.len().checked_sub(1)?;
        let i = ((p / 100.0) * last as f64).round() as usize;
        v.get(i.min(last)).copied().map(Duration::from_nanos)
    }

    /// Samples.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What one side received of one flow.
#[derive(Clone, Debug, Default)]
pub struct FlowSeen {
    seen: Vec<bool>,
    /// Data frames received (duplicates included).
    pub frames: u64,
    /// Frames received a second time.
    pub duplicates: u64,
    /// Frames that arrived after a later one of the flow.
    pub reordered: u64,
    highest: Option<u32>,
    /// Trace trailers, with how many frames carried each.
    pub stamps: BTreeMap<Vec<u16>, u64>,
    /// (source, destination) the frames arrived with.
    pub tuples: BTreeSet<(SocketAddrV4, SocketAddrV4)>,
}

impl FlowSeen {
    /// Frames of the flow that never arrived.
    #[must_use]
    pub fn lost(&self) -> u64 {
        self.seen.iter().filter(|s| !**s).count() as u64
    }

    /// The sequence numbers of those frames.
    #[must_use]
    pub fn missing(&self) -> Vec<u32> {
        (0..)
            .zip(&self.seen)
            .filter(|(_, s)| !**s)
            .map(|(i, _)| i)
            .collect()
    }
}

/// What one side received.
#[derive(Clone, Debug, Default)]
pub struct Side {
    /// Per flow.
    pub flows: BTreeMap<u32, FlowSeen>,
    /// Frames whose payload was not what was sent.
    pub corrupt: u64,
    /// Frames that were not this tool's (ARP, someone else's).
    pub foreign: u64,
    /// One-way (forward) or round-trip (answers) latency.
    pub latency: Latency,
    /// TCP: handshake frames seen (SYN here, SYN-ACK on the lan side).
    pub handshakes: u64,
    /// TCP: FIN frames seen.
    pub fins: u64,
    /// The run whose frames this side counts.
    run: u16,
}

impl Side {
    /// Data frames received.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.flows.values().map(|f| f.frames).sum()
    }

    /// Data frames lost over all flows (flows never seen count whole).
    #[must_use]
    pub fn lost(&self, plan: &Plan) -> u64 {
        (0..plan.flows)
            .map(|f| {
                self.flows
                    .get(&f)
                    .map_or(u64::from(plan.packets), FlowSeen::lost)
            })
            .sum()
    }

    /// Duplicates and reordered frames over all flows.
    #[must_use]
    pub fn disorder(&self) -> (u64, u64) {
        self.flows
            .values()
            .fold((0, 0), |(d, r), f| (d + f.duplicates, r + f.reordered))
    }

    /// Every trailer seen, with the frames that carried it.
    #[must_use]
    pub fn stamps(&self) -> BTreeMap<Vec<u16>, u64> {
        let mut all = BTreeMap::new();
        for f in self.flows.values() {
            for (s, n) in &f.stamps {
                *all.entry(s.clone()).or_insert(0) += n;
            }
        }
        all
    }
}

/// The result of a run.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Data frames sent.
    pub sent: u64,
    /// Frames the lan socket did not take (its queue was full).
    pub unsent: u64,
    /// TCP flows whose SYN-ACK came back (data was sent only on those).
    pub opened: u32,
    /// From the first data frame sent to the last one sent.
    pub sending: Duration,
    /// What the wan host received.
    pub forward: Side,
    /// What came back to the lan host (answers: SYN-ACK, echoes, FIN-ACK).
    pub back: Side,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn filler(flow: u32, seq: u32, i: usize) -> u8 {
    // byte i = flow + seq + 7i (mod 256)
    (flow.wrapping_add(seq) as u8).wrapping_add((i as u8).wrapping_mul(7))
}

fn payload(run: u16, flow: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&run.to_be_bytes());
    p.extend_from_slice(&flow.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&now_ns().to_be_bytes());
    p.extend((0..len - HEADER).map(|i| filler(flow, seq, i)));
    p
}

/// A received frame, taken apart.
struct Rx<'a> {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    tcp: Option<(TcpFlags, u32, u32)>,
    payload: &'a [u8],
    stamps: Vec<u16>,
}

fn take_apart(frame: &[u8]) -> Option<Rx<'_>> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    if ethertype != 0x0800 {
        return None;
    }
    let ip = frame.get(at + 2..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let body = ip.get(..total)?;
    let trailer = &ip[total..];
    let proto = *body.get(9)?;
    let src_ip = Ipv4Addr::new(body[12], body[13], body[14], body[15]);
    let dst_ip = Ipv4Addr::new(body[16], body[17], body[18], body[19]);
    let l4 = body.get(ihl..)?;
    let sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    let (tcp, payload) = match proto {
        17 => (None, l4.get(8..)?),
        6 => {
            let off = usize::from(l4.get(12)? >> 4) * 4;
            let seq = u32::from_be_bytes(l4.get(4..8)?.try_into().ok()?);
            let ack = u32::from_be_bytes(l4.get(8..12)?.try_into().ok()?);
            (Some((TcpFlags(*l4.get(13)?), seq, ack)), l4.get(off..)?)
        }
        _ => return None,
    };
    // The trailer: stamps, or Ethernet padding (no magic).
    let stamps = chaingate_services::stamp::read(trailer)
        .map(|(ids, _)| ids)
        .unwrap_or_default();
    Some(Rx {
        src: SocketAddrV4::new(src_ip, sport),
        dst: SocketAddrV4::new(dst_ip, dport),
        tcp,
        payload,
        stamps,
    })
}

/// Checks a data payload; its (flow, seq, sent ns), or `Err(())` when it
/// is this tool's but changed on the way.
fn check(run: u16, payload: &[u8]) -> Option<Result<(u32, u32, u64), ()>> {
    if payload.len() < HEADER || payload[..2] != *MAGIC || payload[2..4] != run.to_be_bytes() {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap_or_default());
    let (flow, seq) = (word(4), word(8));
    let sent = u64::from_be_bytes(payload[12..20].try_into().unwrap_or_default());
    let intact = payload[HEADER..]
        .iter()
        .enumerate()
        .all(|(i, b)| *b == filler(flow, seq, i));
    Some(if intact {
        Ok((flow, seq, sent))
    } else {
        Err(())
    })
}

impl Side {
    /// Counts a data frame; returns its flow when it was sound.
    fn data(&mut self, plan: &Plan, rx: &Rx<'_>) -> Option<u32> {
        match check(self.run, rx.payload) {
            None => {
                self.foreign += 1;
                None
            }
            Some(Err(())) => {
                self.corrupt += 1;
                None
            }
            Some(Ok((flow, seq, sent))) if flow < plan.flows && seq < plan.packets => {
                self.latency.0.push(now_ns().saturating_sub(sent));
                let f = self.flows.entry(flow).or_default();
                if f.seen.is_empty() {
                    f.seen = vec![false; plan.packets as usize];
                }
                f.frames += 1;
                let slot = &mut f.seen[seq as usize];
                if *slot {
                    f.duplicates += 1;
                }
                *slot = true;
                if f.highest.is_some_and(|h| seq < h) {
                    f.reordered += 1;
                }
                f.highest = f.highest.max(Some(seq));
                *f.stamps.entry(rx.stamps.clone()).or_insert(0) += 1;
                f.tuples.insert((rx.src, rx.dst));
                Some(flow)
            }
            Some(Ok(_)) => {
                self.corrupt += 1;
                None
            }
        }
    }
}

struct Builder {
    proto: Proto,
}

impl Builder {
    fn frame(
        &self,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        macs: (EthernetAddress, EthernetAddress),
        tcp: Option<(TcpFlags, u32, u32)>,
        payload: &[u8],
    ) -> Vec<u8> {
        let l4 = match (self.proto, tcp) {
            (Proto::Tcp, Some((flags, seq, ack))) => L4Spec::Tcp(TcpRepr {
                src_port: src.port(),
                dst_port: dst.port(),
                seq,
                ack,
                flags,
                window: 65_000,
            }),
            _ => L4Spec::Udp {
                src_port: src.port(),
                dst_port: dst.port(),
            },
        };
        crate::frames::ipv4((*src.ip(), macs.0), (*dst.ip(), macs.1), l4, payload)
    }
}

/// The client's initial sequence number of a flow.
fn isn(flow: u32) -> u32 {
    flow.wrapping_mul(100_000).wrapping_add(1)
}

const SERVER_ISN: u32 = 7_000_000;

/// The wan host: checks what arrives, answers SYN, FIN and (with `echo`)
/// data.
fn serve_wan(plan: &Plan, run: u16, port: &mut AfPacket, stop: &AtomicBool) -> Side {
    let mut side = Side {
        run,
        ..Side::default()
    };
    let mut batch = RxBatch::new(64, SLOT);
    let builder = Builder { proto: plan.proto };
    let macs = (WAN_MAC, LAN_MAC);
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(&[port.raw_fd()], 20) {
            continue;
        }
        let Ok(n) = PacketIo::recv(port, &mut batch) else {
            continue;
        };
        for i in 0..n {
            let Some(rx) = batch.frame(i).and_then(take_apart) else {
                side.foreign += 1;
                continue;
            };
            let answer = |tcp: Option<(TcpFlags, u32, u32)>, payload: &[u8]| {
                builder.frame(rx.dst, rx.src, macs, tcp, payload)
            };
            match rx.tcp {
                Some((flags, seq, _)) if flags.contains(TcpFlags::SYN) => {
                    side.handshakes += 1;
                    let synack = TcpFlags::SYN.union(TcpFlags::ACK);
                    port.send(&answer(
                        Some((synack, SERVER_ISN, seq.wrapping_add(1))),
                        &[],
                    ));
                }
                Some((flags, seq, _)) if flags.contains(TcpFlags::FIN) => {
                    side.fins += 1;
                    let finack = TcpFlags::FIN.union(TcpFlags::ACK);
                    port.send(&answer(
                        Some((finack, SERVER_ISN + 1, seq.wrapping_add(1))),
                        &[],
                    ));
                }
                tcp => {
                    if side.data(plan, &rx).is_some() && plan.echo {
                        let ack = tcp.map(|(_, seq, _)| {
                            let len = u32::try_from(rx.payload.len()).unwrap_or(0);
                            (TcpFlags::ACK, SERVER_ISN + 1, seq.wrapping_add(len))
                        });
                        port.send(&answer(ack, rx.payload));
                    }
                }
            }
        }
        port.flush();
    }
    side
}

/// The lan side's receive step: SYN-ACKs open flows, answers are checked.
fn receive_lan(
    plan: &Plan,
    port: &mut AfPacket,
    batch: &mut RxBatch,
    side: &mut Side,
    opened: &mut [bool],
    wait_ms: i32,
) {
    if !wait_readable(&[port.raw_fd()], wait_ms) {
        return;
    }
    let Ok(n) = PacketIo::recv(port, batch) else {
        return;
    };
    for i in 0..n {
        let Some(rx) = batch.frame(i).and_then(take_apart) else {
            side.foreign += 1;
            continue;
        };
        match rx.tcp {
            Some((flags, _, ack)) if flags.contains(TcpFlags::SYN) => {
                side.handshakes += 1;
                // The flow is the one whose ISN the SYN-ACK acknowledges.
                let flow = ack.wrapping_sub(1) / 100_000;
                if let Some(o) = opened.get_mut(flow as usize)
                    && isn(flow).wrapping_add(1) == ack
                {
                    *o = true;
                }
            }
            Some((flags, _, _)) if flags.contains(TcpFlags::FIN) => side.fins += 1,
            _ => {
                side.data(plan, &rx);
            }
        }
    }
}

/// Runs `plan`: the lan host on `lan` (namespace, interface), the wan host
/// on `wan`, until everything was sent and answered or `settle` passed
/// after the last frame sent.
///
/// # Errors
/// An interface cannot be opened.
pub fn run(plan: &Plan, lan: (&str, &str), wan: (&str, &str)) -> io::Result<Outcome> {
    epoch();
    let mut lan_port =
        in_netns(lan.0, || AfPacket::open(lan.1, SLOT))?.map_err(io::Error::other)?;
    let mut wan_port =
        in_netns(wan.0, || AfPacket::open(wan.1, SLOT))?.map_err(io::Error::other)?;
    // A tag of this run: the process and a clock's low bits.
    let run = (std::process::id() as u16)
        ^ (now_ns() as u16).rotate_left(7)
        ^ RUNS.fetch_add(1, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (plan, stop) = (plan.clone(), Arc::clone(&stop));
        std::thread::spawn(move || serve_wan(&plan, run, &mut wan_port, &stop))
    };
    let mut out = Outcome::default();
    let mut back = Side {
        run,
        ..Side::default()
    };
    let mut batch = RxBatch::new(64, SLOT);
    let builder = Builder { proto: plan.proto };
    let macs = (LAN_MAC, WAN_MAC);
    let len = plan.payload_len();
    let mut opened = vec![plan.proto == Proto::Udp; plan.flows as usize];

    if plan.proto == Proto::Tcp {
        // SYNs, sent again once for flows still unanswered after a second.
        for round in 0..2 {
            for flow in (0..plan.flows).filter(|f| !opened[*f as usize]) {
                let syn = Some((TcpFlags::SYN, isn(flow), 0));
                lan_port.send(&builder.frame(plan.client_of(flow), plan.server, macs, syn, &[]));
            }
            lan_port.flush();
            let deadline = Instant::now() + Duration::from_secs(1 + round);
            while Instant::now() < deadline && opened.iter().any(|o| !o) {
                receive_lan(plan, &mut lan_port, &mut batch, &mut back, &mut opened, 10);
            }
            if opened.iter().all(|o| *o) {
                break;
            }
        }
        out.opened = u32::try_from(opened.iter().filter(|o| **o).count()).unwrap_or(u32::MAX);
    }

    // Data, round-robin over the open flows, paced from the start.
    let live: Vec<u32> = (0..plan.flows).filter(|f| opened[*f as usize]).collect();
    let total = live.len() as u64 * u64::from(plan.packets);
    let start = Instant::now();
    let before = lan_port.counters().tx_dropped;
    let mut done = 0u64;
    while done < total {
        if let Some(live) = &plan.live {
            live.sent.store(done, Ordering::Relaxed);
            if live.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let due = if plan.pps == 0 {
            total
        } else {
            ((start.elapsed().as_secs_f64() * f64::from(plan.pps)) as u64).min(total)
        };
        let mut burst = 0;
        while done < due && burst < 256 {
            let flow = live[(done % live.len() as u64) as usize];
            let seq = u32::try_from(done / live.len() as u64).unwrap_or(u32::MAX);
            let tcp = (plan.proto == Proto::Tcp).then(|| {
                let at = isn(flow) + 1 + seq * u32::try_from(len).unwrap_or(0);
                (TcpFlags::ACK.union(TcpFlags::PSH), at, SERVER_ISN + 1)
            });
            let frame = builder.frame(
                plan.client_of(flow),
                plan.server,
                macs,
                tcp,
                &payload(run, flow, seq, len),
            );
            lan_port.send(&frame);
            done += 1;
            burst += 1;
        }
        lan_port.flush();
        receive_lan(plan, &mut lan_port, &mut batch, &mut back, &mut opened, 0);
        if done < due {
            continue;
        }
        if plan.pps != 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    out.sending = start.elapsed();
    out.sent = done;
    if let Some(live) = &plan.live {
        live.sent.store(done, Ordering::Relaxed);
    }
    if plan.proto == Proto::Tcp {
        for &flow in &live {
            let at = isn(flow) + 1 + plan.packets * u32::try_from(len).unwrap_or(0);
            let fin = Some((TcpFlags::FIN.union(TcpFlags::ACK), at, SERVER_ISN + 1));
            lan_port.send(&builder.frame(plan.client_of(flow), plan.server, macs, fin, &[]));
        }
        lan_port.flush();
    }
    out.unsent = lan_port.counters().tx_dropped - before;

    // Answers, until all are in or the plan's settle time passes.
    let expected_back = if plan.echo { total } else { 0 }
        + if plan.proto == Proto::Tcp {
            live.len() as u64
        } else {
            0
        };
    let deadline = Instant::now() + plan.settle;
    while Instant::now() < deadline && back.frames() + back.fins < expected_back {
        receive_lan(plan, &mut lan_port, &mut batch, &mut back, &mut opened, 10);
    }
    // The forward side settles over the same time.
    std::thread::sleep(
        deadline
            .saturating_duration_since(Instant::now())
            .min(plan.settle),
    );
    stop.store(true, Ordering::Relaxed);
    out.forward = server
        .join()
        .map_err(|_| io::Error::other("the wan host's thread panicked"))?;
    out.back = back;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_check_and_a_changed_byte_is_caught() {
        let p = payload(77, 3, 9, 64);
        let (flow, seq, _) = check(77, &p).unwrap().unwrap();
        assert_eq!((flow, seq), (3, 9));
        let mut bad = p.clone();
        bad[40] ^= 1;
        assert_eq!(check(77, &bad), Some(Err(())));
        assert_eq!(check(78, &p), None, "another run's frame is not damaged");
        assert_eq!(check(77, b"not ours at all, not ours"), None);
    }

    #[test]
    fn frames_come_apart_with_their_stamps() {
        let plan = Plan::tcp(1, 1, 0);
        let b = Builder { proto: Proto::Tcp };
        let p = payload(5, 0, 0, plan.payload_len());
        let mut f = b.frame(
            plan.client_of(0),
            plan.server,
            (LAN_MAC, WAN_MAC),
            Some((TcpFlags::ACK, 5, 6)),
            &p,
        );
        let len = f.len();
        f.resize(len + 16, 0);
        let len = chaingate_services::stamp::stamp(&mut f, len, 100).unwrap();
        let len = chaingate_services::stamp::stamp(&mut f, len, 200).unwrap();
        let rx = take_apart(&f[..len]).unwrap();
        assert_eq!(rx.stamps, [100, 200]);
        assert_eq!(rx.payload, p.as_slice(), "the trailer is not payload");
        assert_eq!(rx.src, plan.client_of(0));
        assert_eq!(rx.tcp.map(|t| (t.1, t.2)), Some((5, 6)));
        let mut side = Side {
            run: 5,
            ..Side::default()
        };
        assert_eq!(side.data(&plan, &rx), Some(0));
        assert_eq!(side.data(&plan, &rx), Some(0));
        assert_eq!(side.flows[&0].duplicates, 1);
        assert_eq!(side.lost(&plan), 0);
        assert_eq!(side.stamps()[&vec![100, 200]], 2);
    }

    #[test]
    fn percentiles_pick_from_the_sorted_samples() {
        let l = Latency((1..=100).rev().collect());
        assert_eq!(l.percentile(50.0), Some(Duration::from_nanos(51)));
        assert_eq!(l.percentile(99.0), Some(Duration::from_nanos(99)));
        assert_eq!(l.percentile(100.0), Some(Duration::from_nanos(100)));
        assert_eq!(Latency::default().percentile(50.0), None);
    }

    #[test]
    fn flows_spread_over_clients_and_ports() {
        let mut plan = Plan::udp(4, 1, 0);
        plan.clients = 2;
        assert_eq!(plan.client_of(0), "10.0.0.1:10000".parse().unwrap());
        assert_eq!(plan.client_of(1), "10.0.0.2:10001".parse().unwrap());
        assert_eq!(plan.client_of(2), "10.0.0.1:10002".parse().unwrap());
        plan.size = 64;
        assert_eq!(plan.payload_len(), 22);
    }
}
