extern crate std;
use std::vec::Vec;

use chaingate_shared::config::InstanceState;
use chaingate_shared::{FlowKey, InstanceId, IpProtocol, Nanos};
use core::net::Ipv4Addr;

use super::*;
use crate::meter::Meters;
use crate::testing::{Svc, rig};

fn key(i: u32) -> FlowKey {
    FlowKey::v4(
        Ipv4Addr::from_bits(0x0A00_0000 | (i >> 8)),
        Ipv4Addr::new(192, 0, 2, 1),
        IpProtocol::Tcp,
        (i & 0xFFFF) as u16,
        443,
    )
}

fn states(down: &[InstanceId]) -> impl Fn(InstanceId) -> InstanceState + '_ {
    move |i| {
        if down.contains(&i) {
            InstanceState::Down
        } else {
            InstanceState::Active
        }
    }
}

#[test]
fn both_directions_pick_the_same_instance() {
    let r = rig(&[Svc::new("fw", 7)]);
    let b = Balancer::new(&r.config, states(&[]));
    let meters = Meters::new(&r.config, Nanos::SECOND);
    for i in 0..2000 {
        let k = key(i);
        let there = b.choose(r.services[0], k.symmetric_hash(), &meters);
        let back = b.choose(r.services[0], k.reversed().symmetric_hash(), &meters);
        assert_eq!(there, back);
        assert!(matches!(there, Choice::Picked(_)));
    }
}

/// Fraction of table slots that change owner when one instance joins N.
fn remapped_fraction(n: usize) -> f64 {
    let r = rig(&[Svc::new("fw", n + 1)]);
    let newest = r.instances[0][n];
    let before = Balancer::new(&r.config, states(&[newest]));
    let after = Balancer::new(&r.config, states(&[]));
    let owner = |b: &Balancer, slot: usize| {
        let t = b.table(r.services[0]).unwrap();
        b.active(r.services[0])[usize::from(t.at(slot).unwrap())]
    };
    let size = before.table(r.services[0]).unwrap().len();
    let moved = (0..size)
        .filter(|s| owner(&before, *s) != owner(&after, *s))
        .count();
    moved as f64 / size as f64
}

#[test]
fn adding_one_instance_moves_about_one_in_n_plus_one() {
    let mut report = Vec::new();
    for n in [1, 2, 3, 5, 8, 16, 31] {
        let f = remapped_fraction(n);
        let ideal = 1.0 / (n + 1) as f64;
        report.push(std::format!("N={n}: {f:.4} (ideal {ideal:.4})"));
        // Maglev is near-minimal with 1,000 slots per instance.
        assert!(f <= ideal * 1.3, "N={n}: moved {f}, ideal {ideal}");
        assert!(
            f >= ideal * 0.95,
            "N={n}: moved {f}, the newcomer must get its share"
        );
    }
    std::println!("remapped when one instance joins N: {}", report.join("; "));
}

#[test]
fn draining_and_down_instances_take_no_new_sessions() {
    let r = rig(&[Svc::new("fw", 3)]);
    let (a, b_, c) = (r.instances[0][0], r.instances[0][1], r.instances[0][2]);
    let state = move |i: InstanceId| {
        if i == a {
            InstanceState::Draining
        } else if i == c {
            InstanceState::Down
        } else {
            InstanceState::Active
        }
    };
    let bal = Balancer::new(&r.config, state);
    let meters = Meters::new(&r.config, Nanos::SECOND);
    assert_eq!(bal.active(r.services[0]), &[b_]);
    for i in 0..500 {
        assert_eq!(
            bal.choose(r.services[0], key(i).symmetric_hash(), &meters),
            Choice::Picked(b_)
        );
    }
    let none = Balancer::new(&r.config, |_| InstanceState::Down);
    assert_eq!(none.choose(r.services[0], 7, &meters), Choice::Unavailable);
}

#[test]
fn an_instance_over_its_watermark_is_skipped_for_new_sessions() {
    let r = rig(&[Svc::new("fw", 4)]);
    let bal = Balancer::new(&r.config, states(&[]));
    let mut meters = Meters::new(&r.config, Nanos::from_millis(1));
    let hot = r.instances[0][1];
    // 1 Gbit/s capacity, watermark 80 %: 950 Mbit/s over one second.
    meters.tick(Nanos(0));
    meters.add_counts(hot, 950_000_000 / 8, 1000);
    meters.tick(Nanos::SECOND);
    assert!(!meters.has_headroom(hot));
    let mut moved = 0;
    for i in 0..4000 {
        let h = key(i).symmetric_hash();
        let plain = bal.table(r.services[0]).unwrap().lookup(h).unwrap();
        let choice = bal.choose(r.services[0], h, &meters);
        assert_ne!(choice, Choice::Picked(hot));
        if bal.active(r.services[0])[usize::from(plain)] == hot {
            moved += 1;
        } else {
            // Keys of instances with headroom stay where Maglev puts them.
            assert_eq!(
                choice,
                Choice::Picked(bal.active(r.services[0])[usize::from(plain)])
            );
        }
    }
    assert!(
        moved > 800,
        "the hot instance's keys went elsewhere: {moved}"
    );
}

#[test]
fn with_no_headroom_anywhere_the_least_loaded_takes_it() {
    let r = rig(&[Svc::new("fw", 3)]);
    let bal = Balancer::new(&r.config, states(&[]));
    let mut meters = Meters::new(&r.config, Nanos::from_millis(1));
    meters.tick(Nanos(0));
    for (i, inst) in r.instances[0].iter().enumerate() {
        meters.add_counts(*inst, (900_000_000 + 30_000_000 * i as u64) / 8, 10);
    }
    meters.tick(Nanos::SECOND);
    let least = r.instances[0][0];
    for i in 0..100 {
        assert_eq!(
            bal.choose(r.services[0], key(i).symmetric_hash(), &meters),
            Choice::Overloaded(least)
        );
    }
}

#[test]
fn preferred_instances_take_sessions_while_they_have_headroom() {
    let r = rig(&[Svc::new("fw", 4)]);
    let bal = Balancer::new(&r.config, states(&[]));
    let mut meters = Meters::new(&r.config, Nanos::from_millis(1));
    let fw = &r.instances[0];
    // Instances 0 and 1 are "local".
    let local = |i: InstanceId| i == fw[0] || i == fw[1];
    let mut count = [0usize; 4];
    for i in 0..4000 {
        let h = key(i).symmetric_hash();
        let Choice::Picked(p) = bal.choose_preferring(r.services[0], h, &meters, local) else {
            panic!("a pick with headroom");
        };
        count[fw.iter().position(|x| *x == p).unwrap()] += 1;
    }
    assert_eq!(count[2] + count[3], 0, "only the preferred: {count:?}");
    assert!(
        count[0] > 1000 && count[1] > 1000,
        "spread over both: {count:?}"
    );
    // Both preferred ones over their watermark: the others take sessions.
    meters.tick(Nanos(0));
    for hot in [fw[0], fw[1]] {
        meters.add_counts(hot, 950_000_000 / 8, 1000);
    }
    meters.tick(Nanos::SECOND);
    for i in 0..400 {
        let h = key(i).symmetric_hash();
        let p = bal.choose_preferring(r.services[0], h, &meters, local);
        assert!(
            p == Choice::Picked(fw[2]) || p == Choice::Picked(fw[3]),
            "{p:?}"
        );
    }
}
