//! Policy picks: overlapping policies, the highest priority wins; bypass
//! skips every service; drop lets nothing through. Which services a
//! connection passed is read from the stamps of the `monitor` instances.

use std::net::{Ipv4Addr, SocketAddrV4};

use chaingate_hw_tests::agent::{AgentRig, service_binary};
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::rig::Rig as _;

fn gateway() -> String {
    let bin = service_binary();
    let bin = bin.display();
    format!(
        "ports:
  - {{ name: lan, role: lan }}
  - {{ name: wan, role: wan }}
services:
  - {{ name: a, capacity: 1Gbit, scaling: {{ max: 1 }}, launch: {{ process: [\"{bin}\", monitor, --stamp, \"10\"] }} }}
  - {{ name: b, capacity: 1Gbit, scaling: {{ max: 1 }}, launch: {{ process: [\"{bin}\", monitor, --stamp, \"20\"] }} }}
chains:
  - {{ name: short, services: [a] }}
  - {{ name: long, services: [a, b] }}
default_action: drop
policies:
  # The /24 takes the short chain, but web traffic to its lower half the
  # long one; port 23 is dropped whatever the address; one client network
  # bypasses everything.
  - {{ priority: 10, match: {{ dst: 192.0.2.0/24 }}, action: {{ chain: short }} }}
  - {{ priority: 20, match: {{ dst: 192.0.2.0/25, protocol: udp, dst_ports: 80 }}, action: {{ chain: long }} }}
  - {{ priority: 30, match: {{ protocol: udp, dst_ports: 23 }}, action: drop }}
  - {{ priority: 40, match: {{ src: 10.9.0.0/16 }}, action: bypass }}
"
    )
}

#[test]
fn the_highest_priority_wins_bypass_skips_drop_stops() {
    if !require_root() {
        return;
    }
    let rig = AgentRig::start(2).unwrap();
    rig.apply_and_wait(&gateway(), &["a-0", "b-0"]);
    let to = |a: [u8; 4], port: u16| SocketAddrV4::new(Ipv4Addr::from(a), port);
    // (client, server, the stamps every frame must carry; None: dropped)
    let cases: [(SocketAddrV4, SocketAddrV4, Option<Vec<u16>>); 6] = [
        (
            to([10, 0, 0, 1], 5000),
            to([192, 0, 2, 10], 80),
            Some(vec![10, 20]),
        ),
        (
            to([10, 0, 0, 1], 5000),
            to([192, 0, 2, 200], 80),
            Some(vec![10]),
        ),
        (
            to([10, 0, 0, 1], 5000),
            to([192, 0, 2, 10], 443),
            Some(vec![10]),
        ),
        (to([10, 0, 0, 1], 5000), to([192, 0, 2, 10], 23), None),
        (
            to([10, 9, 0, 1], 5000),
            to([192, 0, 2, 10], 23),
            Some(vec![]),
        ),
        (to([10, 0, 0, 1], 5000), to([198, 18, 0, 1], 80), None),
    ];
    let before = rig.dpu.stats();
    let (mut dropped_frames, mut dropped_flows) = (0, 0);
    for (client, server, want) in cases {
        let mut plan = Plan::udp(4, 10, 400);
        plan.client = client;
        plan.server = server;
        plan.echo = true;
        plan.settle = std::time::Duration::from_millis(300);
        let out = rig.traffic(&plan);
        let what = format!("{client} -> {server}");
        match want {
            Some(stamps) => {
                assert_eq!(out.forward.lost(&plan), 0, "{what}");
                assert_eq!(out.back.lost(&plan), 0, "{what}: answers");
                assert_eq!(
                    out.forward.stamps().into_keys().collect::<Vec<_>>(),
                    std::slice::from_ref(&stamps),
                    "{what}"
                );
                let back: Vec<u16> = stamps.iter().rev().copied().collect();
                assert_eq!(
                    out.back.stamps().into_keys().collect::<Vec<_>>(),
                    [back],
                    "{what}: answers"
                );
            }
            None => {
                assert_eq!(out.forward.frames(), 0, "{what}: dropped");
                dropped_frames += out.sent;
                dropped_flows += u64::from(plan.flows);
            }
        }
    }
    // The first frame of each dropped connection is the fast path's
    // policy decision; the session's drop rule takes the rest in the
    // eSwitch.
    let after = rig.dpu.stats();
    let policy = |s: &chaingate_proto::dpu::Stats| {
        s.fast_path
            .as_ref()
            .and_then(|f| f.dropped.get("policy").copied())
            .unwrap_or(0)
    };
    let by_rule = |s: &chaingate_proto::dpu::Stats| s.switch.map_or(0, |w| w.dropped);
    assert_eq!(policy(&after) - policy(&before), dropped_flows);
    assert_eq!(
        by_rule(&after) - by_rule(&before),
        dropped_frames - dropped_flows,
        "every other frame of those connections was dropped by rule"
    );
}
