//! A new configuration under load, make-before-break: while the web
//! chain's connections carry data both ways, the operator applies a new
//! generation that leaves every path as it was (a higher firewall
//! capacity). The new rules go in behind the old ones and one swap puts
//! them in force: not one established frame falls to the fast path,
//! nothing is lost, and the DPU reports the swap.
//!
//! There are enough connections (1,000, and their NAT continuations:
//! about 5,000 rules) that installing the new generation's rules takes
//! more than one turn of the data path (it installs 4,096 rules a turn),
//! so frames keep arriving while it happens: with the old rules removed
//! first (break-before-make), those of the sessions still waiting would
//! reach the fast path.

use std::time::{Duration, Instant};

use chaingate_hw_tests::agent::WebChain;
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::rig::{self, traffic_during};

const FLOWS: u32 = 1000;
const PACKETS: u32 = 60;

#[test]
fn established_sessions_stay_in_hardware_through_an_apply() {
    let Some(rig) = rig::pick(3) else { return };
    let instances = ["firewall-0", "ids-0", "nat-0"];
    rig.apply_and_wait(&rig.web_chain(WebChain::default()), &instances);
    let mut plan = Plan::tcp(FLOWS, PACKETS, 6000);
    plan.clients = 16;
    plan.echo = true;
    let total = u64::from(FLOWS * PACKETS);
    let next = rig.web_chain(WebChain {
        firewall_capacity: "400Mbit".into(),
        ..WebChain::default()
    });
    let fast = |s: &chaingate_proto::dpu::Stats| s.fast_path.as_ref().map_or(0, |f| f.forwarded);
    let ((before, after), out) = traffic_during(rig.as_ref(), plan.clone(), total / 4, || {
        let before = rig.dpu_stats();
        rig.apply_and_wait(&next, &instances);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut after = rig.dpu_stats();
        while after.generation == before.generation && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            after = rig.dpu_stats();
        }
        // A little longer: the swap is done within the apply, but the
        // frames in flight then must be counted too.
        std::thread::sleep(Duration::from_millis(200));
        (before, rig.dpu_stats())
    });
    assert_eq!(out.opened, FLOWS);
    assert_eq!(out.forward.lost(&plan), 0, "forward: lost frames");
    assert_eq!(out.back.lost(&plan), 0, "back: lost echoes");
    assert!(
        after.generation > before.generation,
        "the new generation is in force"
    );
    let swaps = |s: &chaingate_proto::dpu::Stats| s.offload.as_ref().map_or(0, |o| o.swaps);
    eprintln!(
        "apply under load: generation {} -> {}, {} frame(s) through the fast path during the apply, swaps {} -> {}",
        before.generation,
        after.generation,
        fast(&after) - fast(&before),
        swaps(&before),
        swaps(&after)
    );
    assert_eq!(
        swaps(&after),
        swaps(&before) + 1,
        "one swap of the session group"
    );
    assert_eq!(
        fast(&after),
        fast(&before),
        "established sessions whose path did not change stay in hardware"
    );
}
