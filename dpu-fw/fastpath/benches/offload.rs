//! The offload layer's rates, each against a baseline from the same run:
//! - rules generated, placed in their template tables and installed into
//!   the software eSwitch by the offload manager, per second, under the
//!   mlx5 profile (the rig's) and the generic one, against the fast
//!   path's new-session setup rate (the goal: rule installation does not
//!   limit session setup);
//! - eSwitch lookups per second with 1,000,000 rules installed (mlx5
//!   profile), in random order, against the fast path handling the same
//!   established packets in software.
//!
//! `cargo bench -p chaingate-fastpath --bench offload`.

#![allow(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use chaingate_fastpath::datapath::{Datapath, Options, Verdict};
use chaingate_fastpath::offload::generate::{SESSION_GROUPS, session_rules};
use chaingate_fastpath::offload::manager::{ManagerOptions, OffloadManager};
use chaingate_fastpath::offload::soft::{Mlx5, Outcome, Profile, SoftSwitch};
use chaingate_fastpath::offload::{Age, CounterId, Rule};
use chaingate_fastpath::session::SessionId;
use chaingate_fastpath::wire::build::{FrameSpec, IpSpec, L4Spec, NetSpec};
use chaingate_fastpath::wire::{EthernetAddress, FrameBuf};
use chaingate_shared::config::{Attachment, FailMode, InstanceState, PortRole, Scaling, Uplink};
use chaingate_shared::policy::{Match, Policy, PolicyAction};
use chaingate_shared::{Config, Generation, InstanceId, Nanos, PortId};
use criterion::{Criterion, Throughput};

/// Sessions whose rules make a million (8 rules each: 3 hops, both ways).
const SESSIONS: usize = 125_000;

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
    for i in 0..30 {
        let vf = b.add_port(&format!("vf{i}"), PortRole::Vf).unwrap();
        b.add_instance(
            &format!("i{i}"),
            services[i % 3],
            Attachment::Single(vf),
            InstanceState::Active,
            1,
        )
        .unwrap();
    }
    let chain = b.add_chain("main", &services).unwrap();
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

/// A datagram of flow `i` (UDP: a flow asks for rules at its first
/// packet).
fn frame(i: usize) -> Vec<u8> {
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
            L4Spec::Udp {
                src_port: 1024 + (i as u16 & 0x3FFF),
                dst_port: 443,
            },
        ),
        payload: &[],
    };
    let mut buf = vec![0u8; spec.len()];
    spec.build(&mut buf).unwrap();
    buf
}

/// A manager over a fresh eSwitch of `profile`, for `config`.
fn manager(
    config: &Config,
    profile: Profile,
    offload_after: u16,
    install_budget: usize,
) -> (Datapath, OffloadManager<SoftSwitch>) {
    let options = Options {
        sessions: 1 << 17,
        events: 1 << 18,
        offload_after,
        ..Options::default()
    };
    let dp = Datapath::new(config.clone(), &options);
    let manager = ManagerOptions {
        install_budget,
        max_pending: 1 << 17,
        ..ManagerOptions::default()
    };
    let sw = SoftSwitch::ready(SESSIONS * 8 + 1024, profile);
    let mgr = OffloadManager::new(sw, &dp, manager);
    (dp, mgr)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let (config, lan) = config();
    let mlx5 = || Profile::Mlx5(Mlx5::default());
    let flows: Vec<Vec<u8>> = (0..SESSIONS).map(frame).collect();
    // Session setup alone, the baseline.
    let options = Options {
        sessions: 1 << 17,
        events: 1 << 18,
        ..Options::default()
    };
    let mut dp = Datapath::new(config.clone(), &options);
    let t = Instant::now();
    for f in &flows {
        assert!(matches!(
            dp.process(lan, f, Nanos(1)),
            Verdict::Forward { .. }
        ));
    }
    let setup_ns = t.elapsed().as_nanos() as f64 / SESSIONS as f64;
    while dp.next_event().is_some() {}
    let ids: Vec<SessionId> = dp.sessions().ids().collect();

    // Generation alone.
    let mut rules: Vec<Rule> = Vec::with_capacity(16);
    let age = Age {
        timeout_s: 30,
        context: 0,
    };
    let generate = |rules: &mut Vec<Rule>, id: SessionId| {
        rules.clear();
        session_rules(
            dp.config(),
            dp.session(id).unwrap(),
            SESSION_GROUPS[0],
            |i: InstanceId| Some(CounterId(i.index() as u32)),
            age,
            rules,
        )
        .unwrap();
    };
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(1));
    let mut n = 0;
    g.bench_function("generate_session", |b| {
        b.iter(|| {
            n = (n + 1) % ids.len();
            generate(&mut rules, ids[n]);
            black_box(&rules);
        });
    });
    g.finish();

    // Per session, in criterion: the fast path setting a new session up
    // (the baseline), and the offload manager generating, placing and
    // installing its rules into the eSwitch (both profiles).
    let chunk = |iters: u64, mut timed: Box<dyn FnMut(usize) -> std::time::Duration + '_>| {
        let mut left = usize::try_from(iters).unwrap_or(usize::MAX);
        let mut total = std::time::Duration::ZERO;
        while left > 0 {
            let n = left.min(SESSIONS);
            total += timed(n);
            left -= n;
        }
        total
    };
    let mut g = c.benchmark_group("sessions");
    g.throughput(Throughput::Elements(1));
    // Each sample makes a data path and an eSwitch of a million rules.
    g.sample_size(10);
    g.bench_function("setup_fast_path", |b| {
        b.iter_custom(|iters| {
            chunk(
                iters,
                Box::new(|n| {
                    let (mut dp, _) = manager(&config, mlx5(), 1, usize::MAX);
                    let t = Instant::now();
                    for f in flows.iter().take(n) {
                        black_box(dp.process(lan, f, Nanos(1)));
                    }
                    t.elapsed()
                }),
            )
        });
    });
    for (name, profile) in [
        ("install_mlx5", mlx5()),
        ("install_generic", Profile::Generic),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                chunk(
                    iters,
                    Box::new(|n| {
                        let (mut dp, mut mgr) = manager(&config, profile.clone(), 1, usize::MAX);
                        for f in flows.iter().take(n) {
                            dp.process(lan, f, Nanos(1));
                        }
                        let t = Instant::now();
                        mgr.handle_events(&mut dp);
                        let elapsed = t.elapsed();
                        assert_eq!(mgr.stats().sessions_offloaded, n);
                        elapsed
                    }),
                )
            });
        });
    }
    g.finish();

    // Installation by the manager: every session asks for rules at its
    // first packet; the manager generates, places and installs them all.
    let install = |profile: Profile| {
        let (mut dp, mut mgr) = manager(&config, profile, 1, usize::MAX);
        for f in &flows {
            dp.process(lan, f, Nanos(1));
        }
        let t = Instant::now();
        mgr.handle_events(&mut dp);
        let s = t.elapsed().as_secs_f64();
        assert_eq!(
            mgr.stats().sessions_offloaded,
            SESSIONS,
            "{:?}",
            mgr.refusal_reasons()
        );
        (mgr.stats().rules, s, mgr)
    };
    let (installed, install_s, mgr) = install(mlx5());
    let (_, generic_s, _) = install(Profile::Generic);
    let rules_per_s = installed as f64 / install_s;
    let sessions_per_s = ids.len() as f64 / install_s;
    let mut sw = mgr.into_backend();

    // Lookups with a million rules: established packets from lan, in a
    // random order (a stride through the flows).
    let mut buf = vec![0u8; 256];
    let mut pos = 0;
    let mut g = c.benchmark_group("eswitch_1m_rules");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup", |b| {
        b.iter(|| {
            pos = (pos + 7919) % flows.len();
            let f = &flows[pos];
            buf[64..64 + f.len()].copy_from_slice(f);
            let mut fb = FrameBuf::new(&mut buf, 64, f.len()).unwrap();
            black_box(sw.process(lan, &mut fb, Nanos(2)))
        });
    });
    g.finish();
    c.final_summary();

    if std::env::args().any(|a| a == "--profile-time") {
        return;
    }
    // Session setup with the manager in the loop, one burst of 32 new
    // sessions at a time: rules at the first packet (every session), or
    // after the second (one-packet flows never get rules). The manager
    // installs at most `install_budget` rules per burst; the rest waits.
    let paced = |offload_after: u16, install_budget: usize| {
        let (mut dp, mut mgr) = manager(&config, mlx5(), offload_after, install_budget);
        let refs: Vec<&[u8]> = flows.iter().map(Vec::as_slice).collect();
        let mut out = [Verdict::ToHost; 32];
        let t = Instant::now();
        for chunk in refs.chunks(32) {
            dp.process_burst(lan, chunk, Nanos(1), &mut out[..chunk.len()]);
            mgr.handle_events(&mut dp);
        }
        let per_s = SESSIONS as f64 / t.elapsed().as_secs_f64();
        (per_s, mgr.stats().sessions_offloaded, mgr.pending())
    };
    let alone = {
        let mut dp = Datapath::new(config.clone(), &options);
        let refs: Vec<&[u8]> = flows.iter().map(Vec::as_slice).collect();
        let mut out = [Verdict::ToHost; 32];
        let t = Instant::now();
        for chunk in refs.chunks(32) {
            dp.process_burst(lan, chunk, Nanos(1), &mut out[..chunk.len()]);
            while dp.next_event().is_some() {}
        }
        SESSIONS as f64 / t.elapsed().as_secs_f64()
    };
    let (every, every_offloaded, _) = paced(1, 1 << 12);
    let (budget, budget_offloaded, budget_pending) = paced(1, 64);
    let (later, later_offloaded, _) = paced(2, 1 << 12);
    let rounds = 2;
    let order: Vec<usize> = (0..flows.len()).map(|i| (i * 7919) % flows.len()).collect();
    let t = Instant::now();
    for _ in 0..rounds {
        for &i in &order {
            let f = &flows[i];
            buf[64..64 + f.len()].copy_from_slice(f);
            let mut fb = FrameBuf::new(&mut buf, 64, f.len()).unwrap();
            assert!(matches!(
                sw.process(lan, &mut fb, Nanos(2)),
                Outcome::Out(_)
            ));
        }
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / (rounds * flows.len()) as f64;
    let t = Instant::now();
    for _ in 0..rounds {
        for &i in &order {
            black_box(dp.process(lan, &flows[i], Nanos(2)));
        }
    }
    let software_ns = t.elapsed().as_nanos() as f64 / (rounds * flows.len()) as f64;
    println!();
    println!(
        "rules generated, placed and installed by the manager into the software eSwitch (mlx5 profile): \
         {:.2} M rules/s = {:.2} M sessions/s ({} rules per session; generic profile {:.2} M sessions/s); \
         the fast path set sessions up at {:.2} M/s in the same run: installation is {:.2}x that",
        rules_per_s / 1e6,
        sessions_per_s / 1e6,
        installed / ids.len(),
        ids.len() as f64 / generic_s / 1e6,
        1e3 / setup_ns,
        sessions_per_s / (1e9 / setup_ns)
    );
    println!(
        "session setup in bursts of 32, fast path alone: {:.2} M/s; with every session offloaded at its first packet: \
         {:.2} M/s ({every_offloaded} offloaded, {:.2}x); installing at most 64 rules per burst: {:.2} M/s \
         ({budget_offloaded} offloaded, {budget_pending} waiting, {:.2}x); rules after the second packet (these \
         one-packet flows get none): {:.2} M/s ({later_offloaded} offloaded, {:.2}x)",
        alone / 1e6,
        every / 1e6,
        every / alone,
        budget / 1e6,
        budget / alone,
        later / 1e6,
        later / alone
    );
    println!(
        "eSwitch lookup with {} rules, random order: {lookup_ns:.0} ns = {:.2} M lookups/s; the fast path on the same packets {software_ns:.0} ns ({:.2}x)",
        sw.len(),
        1e3 / lookup_ns,
        software_ns / lookup_ns
    );
}
