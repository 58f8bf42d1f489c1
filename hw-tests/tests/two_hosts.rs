//! Chains across two hosts, each with its DPU and agent, and a real etcd
//! (docs/cluster.md): the web chain split over the hosts, a host that
//! dies, etcd going away and coming back, a scale-out that lands on the
//! host with a free VF. Asymmetric routing through two DPUs is in
//! `two_dpus.rs` (static configurations, same fast paths).

use std::time::{Duration, Instant};

use chaingate_hw_tests::agent::{FIREWALL_STAMP, IDS_STAMP, NAT_STAMP, WebChain, instances_in};
use chaingate_hw_tests::etcd::require_etcd;
use chaingate_hw_tests::flows::Live;
use chaingate_hw_tests::flows::{Outcome, Plan};
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::two_dpus::Dpu;
use chaingate_hw_tests::two_hosts::TwoHosts;
use std::sync::Arc;
use std::sync::atomic::Ordering;

const TTL: Duration = Duration::from_secs(2);
const UP: Duration = Duration::from_secs(60);

fn ready() -> bool {
    require_root() && require_etcd()
}

/// The web chain with per-host minimums: `(firewall, ids, nat)`.
fn web(min: (u16, u16, u16)) -> String {
    WebChain::with_minimums(min).gateway()
}

fn plan(proto_tcp: bool, port: u16) -> Plan {
    let mut p = if proto_tcp {
        Plan::tcp(8, 30, 500)
    } else {
        Plan::udp(8, 30, 500)
    };
    p.clients = 4;
    p.echo = true;
    p.size = 300;
    p.client.set_port(port);
    p
}

fn assert_whole(out: &Outcome, plan: &Plan, forward: &[u16], what: &str) {
    assert_eq!(out.sent, u64::from(plan.flows * plan.packets), "{what}");
    let mut back = forward.to_vec();
    back.reverse();
    for (side, name, order) in [
        (&out.forward, "forward", forward),
        (&out.back, "back", &back[..]),
    ] {
        assert_eq!(side.lost(plan), 0, "{what} {name}: lost frames");
        assert_eq!(side.corrupt, 0, "{what} {name}: changed frames");
        assert_eq!(
            side.disorder(),
            (0, 0),
            "{what} {name}: duplicates, reordering"
        );
        assert_eq!(
            side.stamps().keys().collect::<Vec<_>>(),
            [&order.to_vec()],
            "{what} {name}: every frame through the chain in order"
        );
    }
}

#[test]
fn the_web_chain_across_two_hosts_keeps_order_and_loses_nothing() {
    if !ready() {
        return;
    }
    let rig = TwoHosts::start([2, 1], TTL).expect("the rig");
    let (a, b) = (rig.host(Dpu::A), rig.host(Dpu::B));
    // firewall and nat on A, ids on B.
    a.agent
        .apply_and_wait(&web((1, 0, 1)), &["firewall-0", "nat-0"], UP);
    b.agent.apply_and_wait(&web((0, 1, 0)), &["ids-0"], UP);
    rig.wait_dpu(Dpu::A, &["firewall-0", "ids-0", "nat-0"], UP);
    rig.wait_dpu(Dpu::B, &["firewall-0", "ids-0", "nat-0"], UP);
    for tcp in [true, false] {
        let p = plan(tcp, 40000 + u16::from(tcp) * 1000);
        let out = rig.traffic(&p);
        if tcp {
            assert_eq!(out.opened, p.flows, "every handshake");
        }
        assert_whole(
            &out,
            &p,
            &[FIREWALL_STAMP, IDS_STAMP, NAT_STAMP],
            if tcp { "tcp" } else { "udp" },
        );
    }
    let sb = b.dpu.stats();
    assert_eq!(
        sb.sessions.map(|s| s.active),
        Some(0),
        "B delivers and returns, and keeps no session"
    );
}

#[test]
fn a_dead_host_loses_its_instances_when_its_lease_expires() {
    if !ready() {
        return;
    }
    let mut rig = TwoHosts::start([3, 1], TTL).expect("the rig");
    // A firewall on each host; ids and nat on A.
    rig.host(Dpu::A)
        .agent
        .apply_and_wait(&web((1, 1, 1)), &["firewall-0", "ids-0", "nat-0"], UP);
    rig.host(Dpu::B)
        .agent
        .apply_and_wait(&web((1, 0, 0)), &["firewall-1"], UP);
    let all = ["firewall-0", "firewall-1", "ids-0", "nat-0"];
    rig.wait_dpu(Dpu::A, &all, UP);
    let theirs = FIREWALL_STAMP + 1;

    // UDP flows through both firewalls while B dies.
    let mut p = Plan::udp(16, 300, 400);
    p.echo = false;
    p.size = 200;
    let live = Arc::new(Live::default());
    p.live = Some(Arc::clone(&live));
    let total = u64::from(p.flows * p.packets);
    let run = rig.traffic_in_background(p.clone());
    while live.sent.load(Ordering::Relaxed) < total / 4 && !run.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let b = rig.host_mut(Dpu::B);
    b.agent.kill();
    b.dpu.kill();
    let dead = Instant::now();
    let gone = rig.wait_dpu(Dpu::A, &["firewall-0", "ids-0", "nat-0"], UP);
    eprintln!(
        "host B dead: A's DPU without its instances after {:?} (lease TTL {TTL:?})",
        dead.elapsed().min(gone)
    );
    let out = run.join().expect("traffic");
    let mut lost_theirs = 0;
    for (flow, seen) in &out.forward.flows {
        let via_b = seen.stamps.keys().any(|s| s.first() == Some(&theirs));
        if via_b {
            lost_theirs += seen.lost();
        } else {
            assert_eq!(seen.lost(), 0, "flow {flow} through host A lost frames");
        }
    }
    assert!(lost_theirs > 0, "flows through the dead host lost frames");
    eprintln!("lost through the dead host: {lost_theirs} of {total}");

    // New connections avoid the dead host: all through A's firewall.
    let mut p = plan(false, 30000);
    p.flows = 16;
    let out = rig.traffic(&p);
    assert_whole(&out, &p, &[FIREWALL_STAMP, IDS_STAMP, NAT_STAMP], "after");
}

#[test]
fn agents_keep_the_inventory_while_etcd_is_away_and_resync() {
    if !ready() {
        return;
    }
    let mut rig = TwoHosts::start([2, 2], TTL).expect("the rig");
    rig.host(Dpu::A)
        .agent
        .apply_and_wait(&web((1, 0, 1)), &["firewall-0", "nat-0"], UP);
    rig.host(Dpu::B)
        .agent
        .apply_and_wait(&web((0, 1, 0)), &["ids-0"], UP);
    let all = ["firewall-0", "ids-0", "nat-0"];
    rig.wait_dpu(Dpu::A, &all, UP);
    rig.etcd.stop();
    // Longer than the lease: nothing expires while etcd is away.
    std::thread::sleep(TTL * 2);
    let p = plan(true, 41000);
    let out = rig.traffic(&p);
    assert_whole(
        &out,
        &p,
        &[FIREWALL_STAMP, IDS_STAMP, NAT_STAMP],
        "etcd away",
    );
    assert_eq!(
        rig.dpu_instances(Dpu::A).len(),
        3,
        "A's DPU kept B's instance"
    );

    rig.etcd.restart().expect("etcd again");
    // A change after the return reaches the other host: B's second ids.
    let out = rig.host(Dpu::B).agent.cli_ok(&["scale", "ids", "2"]);
    assert!(out.contains('2'), "{out}");
    rig.host(Dpu::B).agent.wait_for("ids-1 active", UP, |s| {
        instances_in(s, "active").contains(&"ids-1".to_owned())
    });
    rig.wait_dpu(Dpu::A, &["firewall-0", "ids-0", "ids-1", "nat-0"], UP);
    let p = plan(true, 42000);
    let out = rig.traffic(&p);
    assert_eq!(out.forward.lost(&p), 0, "after the resync");
}

#[test]
fn a_scale_out_lands_on_the_host_with_a_free_vf() {
    if !ready() {
        return;
    }
    // A's three VFs are taken by its three instances; B has two free.
    let rig = TwoHosts::start([3, 2], TTL).expect("the rig");
    let gateway = |min: u16| {
        WebChain {
            firewall_capacity: "2Mbit".into(),
            firewall_scaling: format!(
                "{{ min: {min}, max: 2, scale_out_at: 50%, scale_in_at: 1%, hold: 1s, cooldown: 5s }}"
            ),
            ids_scaling: format!("{{ min: {min}, max: 1 }}"),
            nat_scaling: format!("{{ min: {min}, max: 1 }}"),
            ..WebChain::default()
        }
        .gateway()
    };
    rig.host(Dpu::A)
        .agent
        .apply_and_wait(&gateway(1), &["firewall-0", "ids-0", "nat-0"], UP);
    rig.host(Dpu::B).agent.apply_and_wait(&gateway(0), &[], UP);
    // About 2.4 Mbit/s through the 2 Mbit/s firewall, until it is over.
    let mut p = Plan::udp(8, 100_000, 300);
    p.size = 1000;
    let live = Arc::new(Live::default());
    p.live = Some(Arc::clone(&live));
    let run = rig.traffic_in_background(p);
    let t0 = Instant::now();
    rig.host(Dpu::B).agent.wait_for("firewall-1 on B", UP, |s| {
        instances_in(s, "active").contains(&"firewall-1".to_owned())
    });
    let took = rig.wait_dpu(Dpu::A, &["firewall-0", "firewall-1", "ids-0", "nat-0"], UP);
    eprintln!("scale-out onto host B: {:?}", t0.elapsed().max(took));
    live.stop.store(true, Ordering::Relaxed);
    let _ = run.join();
    let events = rig.host(Dpu::A).agent.event_kinds();
    assert!(
        events.contains(&"scale_out".to_owned()),
        "A decided: {events:?}"
    );
    assert!(
        !instances_in(&rig.host(Dpu::A).agent.status(), "starting")
            .iter()
            .any(|i| i.starts_with("firewall")),
        "nothing started on A, which has no free VF"
    );
}

#[test]
fn a_remote_instance_leaves_without_losing_a_frame() {
    if !ready() {
        return;
    }
    let rig = TwoHosts::start([3, 1], TTL).expect("the rig");
    let gateway = |min: (u16, u16, u16)| {
        WebChain {
            firewall_scaling: format!(
                "{{ min: {}, max: 4, scale_in_at: 0%, drain_timeout: 1s }}",
                min.0
            ),
            ids_scaling: format!("{{ min: {}, max: 4 }}", min.1),
            nat_scaling: format!("{{ min: {}, max: 4 }}", min.2),
            ..WebChain::default()
        }
        .gateway()
    };
    rig.host(Dpu::A).agent.apply_and_wait(
        &gateway((1, 1, 1)),
        &["firewall-0", "ids-0", "nat-0"],
        UP,
    );
    let b = &rig.host(Dpu::B).agent;
    b.apply_and_wait(&gateway((0, 0, 0)), &[], UP);
    let out = b.cli_ok(&["scale", "firewall", "1"]);
    assert!(out.contains('1'), "{out}");
    b.wait_for("firewall-1 active", UP, |s| {
        instances_in(s, "active").contains(&"firewall-1".to_owned())
    });
    rig.wait_dpu(Dpu::A, &["firewall-0", "firewall-1", "ids-0", "nat-0"], UP);

    // Flows through both firewalls while B's leaves: drained for its
    // timeout, then stopped once A has taken it out.
    let mut p = Plan::udp(16, 400, 400);
    p.size = 200;
    let live = Arc::new(Live::default());
    p.live = Some(Arc::clone(&live));
    let total = u64::from(p.flows * p.packets);
    let run = rig.traffic_in_background(p.clone());
    while live.sent.load(Ordering::Relaxed) < total / 5 && !run.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = b.cli_ok(&["scale", "firewall", "0"]);
    assert!(out.contains('0'), "{out}");
    let out = run.join().expect("traffic");
    rig.wait_dpu(Dpu::A, &["firewall-0", "ids-0", "nat-0"], UP);
    let via_b = out
        .forward
        .flows
        .values()
        .filter(|f| {
            f.stamps
                .keys()
                .any(|s| s.first() == Some(&(FIREWALL_STAMP + 1)))
        })
        .count();
    assert!(via_b > 0, "some flows went through B's firewall");
    assert_eq!(
        out.forward.lost(&p),
        0,
        "nothing lost while it left\n{}",
        rig.logs()
    );
    let events = b.event_kinds();
    assert!(events.contains(&"drain_finished".to_owned()), "{events:?}");
}
