//! dpu-fw killed (SIGKILL) and started again while connections run
//! through the chain: the agent notices, configures it again by itself,
//! the instances are untouched, and the established connections go on
//! through the same services; only frames sent while it was down are lost.

use std::time::{Duration, Instant};

use chaingate_hw_tests::agent::{AgentRig, WebChain, instances_in, on_dpu, pid_of};
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::rig::Rig as _;

const NAMES: [&str; 3] = ["firewall-0", "ids-0", "nat-0"];

#[test]
fn connections_survive_a_dpu_restart() {
    if !require_root() {
        return;
    }
    let mut rig = AgentRig::start(3).unwrap();
    let before = rig.apply_and_wait(&WebChain::default().gateway(), &NAMES);

    // Eight connections for five seconds (one frame of each per 10 ms).
    let mut plan = Plan::tcp(8, 500, 800);
    plan.echo = true;
    plan.settle = Duration::from_secs(1);
    let traffic = rig.traffic_in_background(plan.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let boot = rig.dpu.stats().boot_id;
    rig.dpu.kill();
    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    rig.dpu.restart().unwrap();
    let status = rig
        .agent
        .wait_for("configured again", Duration::from_secs(10), on_dpu);
    let outage = down.elapsed();
    let out = traffic.join().unwrap();

    assert_ne!(rig.dpu.stats().boot_id, boot, "it really restarted");
    assert_eq!(instances_in(&status, "active"), NAMES);
    for name in NAMES {
        assert_eq!(
            pid_of(&status, name),
            pid_of(&before, name),
            "{name} untouched"
        );
    }
    assert_eq!(out.opened, plan.flows);
    assert_eq!((out.forward.corrupt, out.back.corrupt), (0, 0));
    let lost = out.forward.lost(&plan);
    assert!(lost > 0, "frames sent while it was down are lost");
    eprintln!("down for {outage:?} until configured again: {lost} frames lost");
    // A frame of each flow goes every 10 ms: the losses lie in the
    // outage (from 1.5 s, with a second's slack for the start), and
    // the connections' last second came through whole.
    let last_lost = out
        .forward
        .flows
        .values()
        .flat_map(|f| f.missing())
        .max()
        .unwrap_or(0);
    let window_end = (1.5 + outage.as_secs_f64() + 1.0) * 100.0;
    assert!(
        f64::from(last_lost) <= window_end && last_lost < 400,
        "frame {last_lost} lost, after the outage ({outage:?})"
    );
    for (flow, seen) in &out.forward.flows {
        assert_eq!(
            seen.stamps.keys().collect::<Vec<_>>(),
            [&vec![100, 200, 300]],
            "flow {flow} kept its path through the chain"
        );
    }
    assert_eq!(out.forward.flows.len(), 8, "every connection went on");
}
