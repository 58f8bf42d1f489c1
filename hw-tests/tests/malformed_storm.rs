//! A storm of malformed frames from the lan side while good connections
//! run through the chain: dpu-fw and the services keep running, the DPU
//! counts what it cannot parse, and not one good frame is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chaingate_hw_tests::agent::{WebChain, instances_in};
use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::frames::udp;
use chaingate_hw_tests::rig;

/// Frames the parser must refuse, built from a good UDP frame; then
/// frames of random bytes. Returns (frames, how many are surely malformed).
fn storm() -> (Vec<Vec<u8>>, u64) {
    let good = udp(
        ([10, 0, 0, 99].into(), 4000),
        ([192, 0, 2, 10].into(), 53),
        true,
        b"0123456789abcdef",
    );
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut g = good.clone();
        f(&mut g);
        g
    };
    let sure = vec![
        with(&|g| g.truncate(14 + 10)), // IPv4 header cut short
        with(&|g| g[14] = 0x43),        // IHL 3
        with(&|g| g[14] = 0x4f),        // IHL 15, past the packet
        with(&|g| g[16..18].copy_from_slice(&2000u16.to_be_bytes())), // total > frame
        with(&|g| g[16..18].copy_from_slice(&10u16.to_be_bytes())), // total < header
        with(&|g| g[14] = 0x65),        // version 6 under IPv4's type
        with(&|g| g.truncate(14 + 20 + 4)), // UDP header cut short
        with(&|g| {
            // IPv6 type, 10 bytes of header
            g[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            g.truncate(24);
        }),
    ];
    let n = sure.len() as u64;
    let mut frames = sure;
    // Random bytes under IPv4, IPv6 and VLAN types (xorshift, fixed seed).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..48 {
        let len = 15 + (i * 37) % 200;
        let mut f = good[..12].to_vec();
        f.extend_from_slice(&[[0x08, 0x00], [0x86, 0xdd], [0x81, 0x00]][i % 3]);
        while f.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.push(x as u8);
        }
        frames.push(f);
    }
    (frames, n)
}

#[test]
fn a_storm_of_malformed_frames_harms_nothing() {
    let Some(rig) = rig::pick(3) else { return };
    let names = ["firewall-0", "ids-0", "nat-0"];
    rig.apply_and_wait(&rig.web_chain(WebChain::default()), &names);
    let before = rig.dpu_stats();

    let (frames, sure) = storm();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let (netns, lan) = rig.lan();
    let mut storm_port = Endpoint::open(netns, lan).unwrap();
    let storm = {
        let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                storm_port.send(&frames);
                rounds.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let mut plan = Plan::tcp(16, 60, 800);
    plan.echo = true;
    let out = {
        // The storm stops even when the traffic tool fails.
        struct Calm<'a>(&'a AtomicBool);
        impl Drop for Calm<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _calm = Calm(&stop);
        rig.traffic(&plan)
    };
    storm.join().unwrap();
    let rounds = rounds.load(Ordering::Relaxed);

    assert_eq!(out.opened, plan.flows, "every handshake completed");
    assert_eq!(out.forward.lost(&plan), 0, "good frames lost");
    assert_eq!(out.back.lost(&plan), 0, "good answers lost");
    assert_eq!((out.forward.corrupt, out.back.corrupt), (0, 0));

    let after = rig.dpu_stats();
    assert_eq!(after.boot_id, before.boot_id, "dpu-fw did not restart");
    let malformed = |s: &chaingate_proto::dpu::Stats| {
        s.fast_path
            .as_ref()
            .and_then(|f| f.dropped.get("malformed").copied())
            .unwrap_or(0)
    };
    assert!(
        malformed(&after) - malformed(&before) >= sure * rounds,
        "{} frames counted malformed, {} sent surely malformed",
        malformed(&after) - malformed(&before),
        sure * rounds
    );
    // The services are all still up, none replaced.
    let status = rig.agent().status();
    assert_eq!(instances_in(&status, "active"), names);
    assert!(
        !rig.agent().event_kinds().iter().any(|k| k.contains("fail")),
        "{}",
        rig.agent().cli_ok(&["events"])
    );
}
