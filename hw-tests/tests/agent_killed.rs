//! The agent killed and restarted while connections run: the data path
//! does not notice (the DPU and the instances do not depend on the agent),
//! the restarted agent adopts every instance (no duplicate), and when an
//! instance died while the agent was away, it is launched again under its
//! name and traffic recovers.

use std::time::Duration;

use chaingate_agent::launcher;
use chaingate_hw_tests::agent::{AgentRig, WebChain, instances_in, pid_of};
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::rig::Rig as _;

const NAMES: [&str; 3] = ["firewall-0", "ids-0", "nat-0"];

#[test]
fn killing_the_agent_loses_nothing_and_duplicates_nothing() {
    if !require_root() {
        return;
    }
    let mut rig = AgentRig::start(4).unwrap();
    let before = rig.apply_and_wait(&WebChain::default().gateway(), &NAMES);
    // Connections for about four seconds; the agent dies after one and
    // is back after two.
    let mut plan = Plan::tcp(16, 150, 600);
    plan.echo = true;
    let traffic = rig.traffic_in_background(plan.clone());
    std::thread::sleep(Duration::from_secs(1));
    rig.agent.kill();
    std::thread::sleep(Duration::from_secs(1));
    rig.agent.spawn(&[]).unwrap();
    let out = traffic.join().unwrap();
    assert_eq!(out.opened, plan.flows);
    assert_eq!(out.forward.lost(&plan), 0, "lost while the agent was away");
    assert_eq!(out.back.lost(&plan), 0);

    let after = rig.agent.wait_for("adopted", Duration::from_secs(20), |s| {
        instances_in(s, "active") == NAMES
    });
    for name in NAMES {
        assert_eq!(
            pid_of(&after, name),
            pid_of(&before, name),
            "{name} adopted"
        );
    }
    assert_eq!(
        launcher::scan(&rig.agent.run_dir).len(),
        3,
        "one process per instance"
    );

    // Away again, and the firewall dies meanwhile: nothing passes it.
    rig.agent.kill();
    let fw = pid_of(&after, "firewall-0").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", &fw.to_string()])
        .status();
    let mut short = Plan::udp(4, 20, 400);
    short.client.set_port(30_000);
    let out = rig.traffic(&short);
    assert_eq!(
        out.forward.frames(),
        0,
        "the chain is broken at the firewall"
    );

    // The agent comes back, relaunches firewall-0, and traffic recovers.
    rig.agent.spawn(&[]).unwrap();
    let back = rig
        .agent
        .wait_for("firewall-0 relaunched", Duration::from_secs(30), |s| {
            instances_in(s, "active") == NAMES && pid_of(s, "firewall-0").is_some_and(|p| p != fw)
        });
    assert_eq!(pid_of(&back, "ids-0"), pid_of(&before, "ids-0"));
    assert_eq!(launcher::scan(&rig.agent.run_dir).len(), 3);
    let mut again = Plan::tcp(8, 30, 600);
    again.client.set_port(40_000);
    again.echo = true;
    let out = rig.traffic(&again);
    assert_eq!(out.opened, again.flows, "{}", rig.agent.log());
    assert_eq!(out.forward.lost(&again), 0);
    assert_eq!(out.back.lost(&again), 0);
}
