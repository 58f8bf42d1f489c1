use chaingate_shared::Nanos;

use super::*;
use crate::testing::{Svc, rig};

#[test]
fn steady_traffic_converges_to_its_rate() {
    let r = rig(&[Svc::new("fw", 2)]);
    let mut m = Meters::new(&r.config, Nanos::from_millis(500));
    let inst = r.instances[0][0];
    m.tick(Nanos(0));
    // 100 Mbit/s and 10 kpps in 100 ms steps, for five seconds.
    for step in 1..=50 {
        m.add_counts(inst, 100_000_000 / 8 / 10, 1_000);
        m.tick(Nanos::from_millis(step * 100));
    }
    let load = m.load(inst).unwrap();
    assert!((load.bps - 100e6).abs() < 1e6, "{}", load.bps);
    assert!((load.pps - 10_000.0).abs() < 100.0, "{}", load.pps);
    assert!((load.utilisation - 0.1).abs() < 0.01);
    // Software-forwarded packets count too: 200 Mbit/s for this step.
    for _ in 0..2_000 {
        m.record(inst, 1250);
    }
    m.tick(Nanos::from_millis(5_100));
    assert!(m.load(inst).unwrap().bps > 110e6);
}

#[test]
fn a_sustained_overload_asks_once_per_cooldown() {
    let r = rig(&[Svc::new("fw", 2)]);
    let mut m = Meters::new(&r.config, Nanos::from_millis(100));
    m.tick(Nanos(0));
    let mut asked = Vec::new();
    // Both instances at 90 % of 1 Gbit/s for 25 s; cooldown is 10 s.
    for step in 1..=250u64 {
        for inst in &r.instances[0] {
            m.add_counts(*inst, 900_000_000 / 8 / 10, 100);
        }
        m.tick(Nanos::from_millis(step * 100));
        while let Some(req) = m.pop_request() {
            asked.push(req);
        }
    }
    let times: Vec<u64> = asked.iter().map(|r| r.at.0 / 1_000_000).collect();
    assert_eq!(asked.len(), 3, "{times:?}");
    assert!(
        times[1] - times[0] >= 10_000 && times[2] - times[1] >= 10_000,
        "{times:?}"
    );
    let first = asked[0];
    assert_eq!(
        (first.service, first.instances, first.capacity_bps),
        (r.services[0], 2, 2_000_000_000)
    );
    assert!(first.load_bps > 1_600_000_000);
}

#[test]
fn one_instance_with_headroom_means_no_shortage() {
    let r = rig(&[Svc::new("fw", 2)]);
    let mut m = Meters::new(&r.config, Nanos::from_millis(100));
    m.tick(Nanos(0));
    for step in 1..=100u64 {
        m.add_counts(r.instances[0][0], 950_000_000 / 8 / 10, 100);
        m.tick(Nanos::from_millis(step * 100));
    }
    assert!(!m.has_headroom(r.instances[0][0]));
    assert!(m.has_headroom(r.instances[0][1]));
    assert_eq!(m.pop_request(), None);
}

#[test]
fn the_request_queue_is_bounded() {
    let r = rig(&[Svc::new("fw", 1)]);
    let mut m = Meters::new(&r.config, Nanos::SECOND);
    for i in 0..(SCALE_QUEUE as u64 + 10) {
        assert!(m.request_scale(r.services[0], Nanos::from_secs(i * 60)));
    }
    assert_eq!(m.requests_dropped(), 10);
    assert_eq!(
        m.pop_request().unwrap().at,
        Nanos::from_secs(10 * 60),
        "the oldest went first"
    );
}

#[test]
fn load_carries_over_a_new_configuration() {
    let r = rig(&[Svc::new("fw", 2)]);
    let mut m = Meters::new(&r.config, Nanos::from_millis(1));
    m.tick(Nanos(0));
    m.add_counts(r.instances[0][1], 500_000_000 / 8, 1);
    m.tick(Nanos::SECOND);
    let before = m.load(r.instances[0][1]).unwrap().bps;
    // The new configuration lists the instances the other way round.
    let (a, b) = (r.instances[0][0], r.instances[0][1]);
    m.reconfigure(&r.config, |new| Some(if new == a { b } else { a }));
    assert_eq!(m.load(a).unwrap().bps, before);
    assert_eq!(m.load(b).unwrap().bps, 0.0);
}
