//! Established connections pass the eSwitch's rules only: once the web
//! chain's connections are open, every data frame and every echo crosses
//! firewall -> ids -> nat and back without one packet reaching the fast
//! path. The rig's eSwitch is the mlx5 profile (a BlueField's rules, as
//! its driver takes them), and every session is offloaded whole: nothing
//! is refused. On a LabRig the same holds on the card.

use chaingate_hw_tests::agent::WebChain;
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::rig::{self, traffic_during};

const FLOWS: u32 = 16;
const PACKETS: u32 = 400;

#[test]
fn established_packets_pass_by_rules_only() {
    let Some(rig) = rig::pick(3) else { return };
    rig.apply_and_wait(
        &rig.web_chain(WebChain::default()),
        &["firewall-0", "ids-0", "nat-0"],
    );
    let mut plan = Plan::tcp(FLOWS, PACKETS, 4000);
    plan.clients = 4;
    plan.echo = true;
    plan.size = 200;
    let total = u64::from(FLOWS * PACKETS);
    // A first look once every connection is open and a fifth of the data
    // went; a second one close to the end, before the FINs.
    let ((first, second), out) = traffic_during(rig.as_ref(), plan.clone(), total / 5, || {
        let first = rig.dpu_stats();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let now = rig.dpu_stats();
            let moved = now.switch.as_ref().map_or(0, |s| s.out)
                - first.switch.as_ref().map_or(0, |s| s.out);
            // 8 rule hits a frame and its echo (4 steps each way): three
            // fifths of the data.
            if moved >= 8 * total * 3 / 5 || std::time::Instant::now() > deadline {
                return (first, now);
            }
        }
    });
    assert_eq!(out.opened, FLOWS, "every handshake completed");
    assert_eq!(out.sent, total);
    assert_eq!(out.forward.lost(&plan), 0, "forward: lost frames");
    assert_eq!(out.back.lost(&plan), 0, "back: lost echoes");
    let fast = |s: &chaingate_proto::dpu::Stats| s.fast_path.as_ref().map_or(0, |f| f.forwarded);
    let offload = second.offload.clone().expect("offload counters");
    eprintln!(
        "offload ({}): {} sessions with {} rules in {} tables; refused {:?} {:?}; fast path forwarded {} then {}",
        offload.backend,
        offload.sessions,
        offload.rules,
        offload.tables,
        offload.refused,
        offload.reasons,
        fast(&first),
        fast(&second)
    );
    assert_eq!(
        fast(&second),
        fast(&first),
        "established packets: none through the fast path"
    );
    assert!(
        offload.refused.values().all(|n| *n == 0),
        "the web chain's sessions are offloaded whole: {:?}",
        offload.reasons
    );
    // Each connection and its NAT continuation.
    assert_eq!(offload.sessions, u64::from(2 * FLOWS));
    if offload.backend == "soft" {
        let out = |s: &chaingate_proto::dpu::Stats| s.switch.as_ref().map_or(0, |s| s.out);
        assert!(
            out(&second) - out(&first) >= 8 * total * 3 / 5,
            "the frames went by rules: {} rule hits",
            out(&second) - out(&first)
        );
    }
}
