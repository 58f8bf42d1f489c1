//! The fast path's per-packet costs, each against a baseline measured in
//! the same run:
//! - new-session setup: classify against 1,000 policies, choose 3 hops
//!   among 100 instances, insert; baseline: parsing the same frames alone;
//! - classification alone, against a linear scan of the same policies;
//! - established lookup and verdict with 1,000,000 sessions in the table,
//!   one packet at a time and in bursts; baseline: a std HashMap lookup of
//!   the same keys;
//! - memory per session.
//!
//! `cargo bench -p chaingate-fastpath --bench datapath` prints criterion's
//! figures, then a summary with rates and ratios.

#![allow(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use chaingate_fastpath::classify::Classifier;
use chaingate_fastpath::datapath::{Datapath, Options, Verdict};
use chaingate_fastpath::session::{Admission, SessionId};
use chaingate_fastpath::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use chaingate_fastpath::wire::tcp::{TcpFlags, TcpRepr};
use chaingate_fastpath::wire::{EthernetAddress, ParsedFrame, parse_into};
use chaingate_shared::config::{Attachment, FailMode, InstanceState, PortRole, Scaling, Uplink};
use chaingate_shared::policy::{
    ClassifyInput, Dscp, IpPrefix, Match, Policy, PolicyAction, PortRange,
};
use chaingate_shared::{Config, FlowKey, Generation, IpProtocol, Nanos, PortId};
use criterion::{Criterion, Throughput};

const POLICIES: usize = 1000;
const INSTANCES: usize = 100;
const ESTABLISHED: usize = 1_000_000;

/// 1,000 policies: 999 specific ones the test traffic misses (other
/// destination networks, ports and protocols), and the catch-all chain
/// policy for lan at the lowest priority, so every field is looked at.
fn config() -> (Config, PortId) {
    let mut b = Config::builder(Generation(1));
    let lan = b.add_port("lan", PortRole::Uplink(Uplink::Lan)).unwrap();
    b.add_port("wan", PortRole::Uplink(Uplink::Wan)).unwrap();
    let scaling = Scaling {
        min_instances: 1,
        max_instances: 64,
        ..Scaling::default()
    };
    let mut services = Vec::new();
    for name in ["fw", "ids", "nat"] {
        services.push(
            b.add_service(name, 10_000_000_000, scaling, FailMode::Open)
                .unwrap(),
        );
    }
    for i in 0..INSTANCES {
        let svc = services[i % 3];
        let vf = b.add_port(&format!("vf{i}"), PortRole::Vf).unwrap();
        b.add_instance(
            &format!("inst-{i}"),
            svc,
            Attachment::Single(vf),
            InstanceState::Active,
            1,
        )
        .unwrap();
    }
    let chain = b.add_chain("main", &services).unwrap();
    for i in 0..POLICIES - 1 {
        let net = Ipv4Addr::new(172, 16 + (i / 256) as u8, (i % 256) as u8, 0);
        b.add_policy(Policy {
            priority: 100 + (i % 50) as u32,
            matches: Match {
                dst: Some(IpPrefix::new(net.into(), 24).unwrap()),
                proto: Some(if i % 2 == 0 {
                    IpProtocol::Tcp
                } else {
                    IpProtocol::Udp
                }),
                dst_ports: PortRange::new(1000 + i as u16, 1000 + i as u16 + (i % 7) as u16),
                ..Match::default()
            },
            action: if i % 3 == 0 {
                PolicyAction::Drop
            } else {
                PolicyAction::Chain(chain)
            },
        })
        .unwrap();
    }
    b.add_policy(Policy {
        priority: 1,
        matches: Match {
            in_port: Some(lan),
            ..Match::default()
        },
        action: PolicyAction::Chain(chain),
    })
    .unwrap();
    (b.build().unwrap(), lan)
}

/// SYN frames of `n` distinct connections from lan to one server.
fn frames(n: usize, flags: TcpFlags) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let spec = FrameSpec {
                dst_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
                src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
                vlans: &[],
                net: NetSpec::Ip(
                    IpSpec::V4 {
                        src: Ipv4Addr::from_bits(0x0A00_0000 + (i as u32 >> 14)),
                        dst: Ipv4Addr::new(198, 51, 100, 7),
                        ttl: 64,
                        dscp: 0,
                        ident: 1,
                        frag: None,
                        options: &[],
                    },
                    L4Spec::Tcp(TcpRepr {
                        src_port: 1024 + (i as u16 & 0x3FFF),
                        dst_port: 443,
                        seq: 1,
                        ack: 0,
                        flags,
                        window: 1000,
                    }),
                ),
                payload: &[],
            };
            let mut buf = vec![0u8; spec.len()];
            spec.build(&mut buf).unwrap();
            buf
        })
        .collect()
}

/// The time of `iters` session setups, on fresh data paths of as many
/// sessions as there are frames; `burst` hands frames over 32 at a time.
fn setup_time(
    config: &Config,
    lan: PortId,
    frames: &[Vec<u8>],
    iters: u64,
    burst: bool,
) -> Duration {
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let mut out = vec![Verdict::ToHost; 32];
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let options = Options {
            sessions: frames.len(),
            events: frames.len(),
            ..Options::default()
        };
        let mut dp = Datapath::new(config.clone(), &options);
        let n = (iters - done).min(frames.len() as u64) as usize;
        let start = Instant::now();
        if burst {
            for chunk in refs[..n].chunks(32) {
                dp.process_burst(lan, chunk, Nanos(1), &mut out[..chunk.len()]);
                black_box(&out);
            }
        } else {
            for f in &refs[..n] {
                black_box(dp.process(lan, f, Nanos(1)));
            }
        }
        total += start.elapsed();
        done += n as u64;
    }
    total
}

fn parse_time(frames: &[Vec<u8>], iters: u64) -> Duration {
    let mut slot = ParsedFrame::EMPTY;
    let start = Instant::now();
    for i in 0..iters as usize {
        let _ = black_box(parse_into(&frames[i % frames.len()], &mut slot));
    }
    start.elapsed()
}

fn linear(config: &Config, input: &ClassifyInput<'_>) -> Option<usize> {
    let mut best: Option<(usize, u32)> = None;
    for (i, p) in config.policies().iter().enumerate() {
        if p.matches.matches(input) && best.is_none_or(|(_, prio)| p.priority > prio) {
            best = Some((i, p.priority));
        }
    }
    best.map(|(i, _)| i)
}

/// The latency of one dependent random access in a buffer of `bytes`
/// (pointer chasing): what a cache and TLB miss costs here.
fn random_access_ns(bytes: usize) -> f64 {
    let n = bytes / 8;
    let mut perm: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        perm.swap(i, (x % i as u64) as usize);
    }
    let mut next = vec![0usize; n];
    for i in 0..n {
        next[perm[i]] = perm[(i + 1) % n];
    }
    let steps = 2_000_000;
    let mut p = 0;
    let t = Instant::now();
    for _ in 0..steps {
        p = next[p];
    }
    black_box(p);
    ns_per(t.elapsed(), steps)
}

struct Summary(Vec<String>);

impl Summary {
    fn line(&mut self, s: String) {
        self.0.push(s);
    }
}

fn ns_per(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut summary = Summary(Vec::new());
    // `--profile-time` profiles one benchmark: skip the summary then.
    let summarise = !std::env::args().any(|a| a == "--profile-time");
    let (config, lan) = config();

    // New sessions.
    let syn = frames(200_000, TcpFlags::SYN);
    {
        let mut g = c.benchmark_group("new_session");
        g.throughput(Throughput::Elements(1));
        g.bench_function("setup", |b| {
            b.iter_custom(|iters| setup_time(&config, lan, &syn, iters, false));
        });
        g.bench_function("setup_burst_32", |b| {
            b.iter_custom(|iters| setup_time(&config, lan, &syn, iters, true));
        });
        g.bench_function("baseline_parse_only", |b| {
            b.iter_custom(|iters| parse_time(&syn, iters));
        });
        g.finish();
    }
    let n = syn.len() as u64;
    if summarise {
        let setup = ns_per(setup_time(&config, lan, &syn, n, false), n);
        let setup_burst = ns_per(setup_time(&config, lan, &syn, n, true), n);
        let parse = ns_per(parse_time(&syn, n), n);
        summary.line(format!(
        "new-session setup (parse, classify against {POLICIES} policies, 3 hops among {INSTANCES} instances, insert): \
         {setup:.0} ns = {:.2} M sessions/s one at a time, {setup_burst:.0} ns = {:.2} M sessions/s in bursts of 32, \
         on one core (goal >= 2); parsing alone {parse:.0} ns",
        1e3 / setup,
        1e3 / setup_burst,
    ));
    }

    // Classification alone against a linear scan.
    let classifier = Classifier::new(&config);
    let keys: Vec<FlowKey> = syn
        .iter()
        .take(4096)
        .map(|f| {
            let mut p = ParsedFrame::EMPTY;
            parse_into(f, &mut p).unwrap();
            *p.key().unwrap()
        })
        .collect();
    let dscp = Dscp::new(0).unwrap();
    {
        let mut g = c.benchmark_group("classify_1000");
        g.throughput(Throughput::Elements(keys.len() as u64));
        g.bench_function("bitvector", |b| {
            b.iter(|| {
                for k in &keys {
                    black_box(classifier.classify(&ClassifyInput {
                        in_port: lan,
                        key: k,
                        dscp,
                    }));
                }
            });
        });
        g.bench_function("baseline_linear_scan", |b| {
            b.iter(|| {
                for k in &keys {
                    black_box(linear(
                        &config,
                        &ClassifyInput {
                            in_port: lan,
                            key: k,
                            dscp,
                        },
                    ));
                }
            });
        });
        g.finish();
    }
    if summarise {
        let time = |f: &dyn Fn()| {
            let start = Instant::now();
            for _ in 0..20 {
                f();
            }
            ns_per(start.elapsed(), 20 * keys.len() as u64)
        };
        let bv = time(&|| {
            keys.iter().for_each(|k| {
                black_box(classifier.classify(&ClassifyInput {
                    in_port: lan,
                    key: k,
                    dscp,
                }));
            });
        });
        let lin = time(&|| {
            keys.iter().for_each(|k| {
                black_box(linear(
                    &config,
                    &ClassifyInput {
                        in_port: lan,
                        key: k,
                        dscp,
                    },
                ));
            });
        });
        summary.line(format!("classify against {POLICIES} policies: {bv:.0} ns; linear scan {lin:.0} ns ({:.0}x faster)", lin / bv));
    }

    // Established sessions: a table of a million.
    let estab = frames(ESTABLISHED, TcpFlags::SYN);
    let options = Options {
        sessions: 1 << 20,
        admission: Admission::Refuse,
        events: 16,
        ..Options::default()
    };
    let mut dp = Datapath::new(config.clone(), &options);
    for f in &estab {
        assert!(matches!(
            dp.process(lan, f, Nanos(1)),
            Verdict::Forward { .. }
        ));
    }
    while dp.next_event().is_some() {}
    drop(estab);
    // The packets of established sessions, in arrival order (their
    // sessions are all over the table, as hashing puts them).
    let acks = frames(ESTABLISHED, TcpFlags::ACK);
    let refs: Vec<&[u8]> = acks.iter().map(Vec::as_slice).collect();
    let mut verdicts = vec![Verdict::ToHost; 32];
    let mut pos = 0usize;
    {
        let mut g = c.benchmark_group("established_1m");
        g.throughput(Throughput::Elements(1));
        g.bench_function("process", |b| {
            b.iter(|| {
                pos = (pos + 1) % ESTABLISHED;
                black_box(dp.process(lan, refs[pos], Nanos(2)))
            });
        });
        g.throughput(Throughput::Elements(32));
        g.bench_function("process_burst_32", |b| {
            b.iter(|| {
                pos = (pos + 32) % (ESTABLISHED - 32);
                dp.process_burst(lan, &refs[pos..pos + 32], Nanos(2), &mut verdicts);
                black_box(&verdicts);
            });
        });
        g.finish();
    }
    if !summarise {
        c.final_summary();
        return;
    }
    let mut slot = ParsedFrame::EMPTY;
    let lookups: Vec<(FlowKey, u64)> = acks
        .iter()
        .map(|f| {
            parse_into(f, &mut slot).unwrap();
            let (n, _, h) = slot.key().unwrap().normalised_with_hash();
            (n, h)
        })
        .collect();
    let table = dp.sessions();
    let mut out = vec![None::<SessionId>; 32];
    let mut map: HashMap<FlowKey, u32> = HashMap::with_capacity(ESTABLISHED);
    for (i, (k, _)) in lookups.iter().enumerate() {
        map.insert(*k, i as u32);
    }
    let rounds = 3;
    let per = |d: Duration| ns_per(d, rounds * ESTABLISHED as u64);
    let t = Instant::now();
    for _ in 0..rounds {
        for (k, h) in &lookups {
            black_box(table.find(k, *h));
        }
    }
    let single = per(t.elapsed());
    let t = Instant::now();
    for _ in 0..rounds {
        for chunk in lookups.chunks(32) {
            table.find_burst(chunk, &mut out[..chunk.len()]);
            black_box(&out);
        }
    }
    let burst = per(t.elapsed());
    let t = Instant::now();
    for _ in 0..rounds {
        for (k, _) in &lookups {
            black_box(map.get(k));
        }
    }
    let hashmap = per(t.elapsed());
    let chase = random_access_ns(128 << 20);
    let t = Instant::now();
    for r in &refs {
        black_box(dp.process(lan, r, Nanos(3)));
    }
    let full = ns_per(t.elapsed(), ESTABLISHED as u64);
    let t = Instant::now();
    for chunk in refs.chunks(32) {
        dp.process_burst(lan, chunk, Nanos(3), &mut verdicts[..chunk.len()]);
        black_box(&verdicts);
    }
    let full_burst = ns_per(t.elapsed(), ESTABLISHED as u64);
    summary.line(format!(
        "established, {ESTABLISHED} sessions: lookup {single:.1} ns ({:.1} M/s), in bursts of 32 {burst:.1} ns ({:.1} M/s; goal >= 20); \
         std HashMap baseline {hashmap:.1} ns ({:.1}x slower than the burst); one dependent random memory access on this machine \
         costs {chase:.0} ns (a lookup touches two cache lines)",
        1e3 / single,
        1e3 / burst,
        hashmap / burst,
    ));
    summary.line(format!(
        "established, whole packet (parse, lookup, verdict, meters): {full:.0} ns ({:.1} M/s) one at a time, \
         {full_burst:.0} ns ({:.1} M/s) in bursts of 32",
        1e3 / full,
        1e3 / full_burst
    ));
    summary.line(format!(
        "memory per session: {} bytes (goal <= 128)",
        dp.sessions().bytes_per_session()
    ));

    c.final_summary();
    println!();
    for line in summary.0 {
        println!("{line}");
    }
}
