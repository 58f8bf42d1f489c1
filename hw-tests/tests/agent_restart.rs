//! The agent's durable state across crashes: SIGKILL, and aborts at each
//! step of launching and stopping an instance (`CHAINGATE_CRASH_AT`). After
//! every restart the agent ends with exactly the instances it should have:
//! running ones adopted (same process), missing ones launched again,
//! unknown ones stopped; never two processes for one instance, never a
//! recorded instance forgotten, never a VF given twice.

use std::collections::BTreeSet;
use std::time::Duration;

use chaingate_agent::launcher::scan;
use chaingate_hw_tests::agent::{AgentProc, device_here, instances_in, monitor_gateway, pid_of};
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::{Link, Topology};
use serde_json::Value;

/// No DPU answers here: the agent's bookkeeping does not need one.
const NO_DPU: &str = "127.0.0.1:9";

fn gateway(min: u16) -> String {
    monitor_gateway(
        "1Gbit",
        &format!("{{ min: {min}, max: 3, drain_timeout: 1s }}"),
    )
}

/// An agent with `vfs` VFs, its configuration applied with `min`
/// instances, once they are active.
fn running(topo: &mut Topology, vfs: usize, min: u16) -> (AgentProc, Vec<Link>, Value) {
    let (links, list) = rig(topo, vfs);
    let agent = AgentProc::start(NO_DPU, &list, "").unwrap();
    assert!(apply(&agent, &gateway(min)).status.success());
    let status = steady(&agent, usize::from(min));
    assert_sound(&agent, &status, usize::from(min), &links);
    (agent, links, status)
}

fn rig(topo: &mut Topology, n: usize) -> (Vec<Link>, Vec<String>) {
    let vfs: Vec<Link> = (0..n)
        .map(|i| topo.host_link(&format!("vf{i}")).unwrap())
        .collect();
    let list = vfs
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{{ port: vf{i}, netdev: {} }}", l.outer))
        .collect();
    (vfs, list)
}

fn apply(agent: &AgentProc, yaml: &str) -> std::process::Output {
    let file = agent.dir.join("gateway.yaml");
    std::fs::write(&file, yaml).unwrap();
    agent.cli(&["apply", "-f", file.to_str().unwrap()])
}

/// The state is sound: `n` active instances, one process each, each on its
/// own VF, and the VFs not in use back in the agent's namespace.
fn assert_sound(agent: &AgentProc, status: &Value, n: usize, vfs: &[Link]) {
    let names = instances_in(status, "active");
    assert_eq!(names.len(), n, "{status:#}");
    let running = scan(&agent.run_dir);
    assert_eq!(
        running.keys().cloned().collect::<Vec<_>>(),
        names,
        "one process per instance, no other"
    );
    let used: BTreeSet<String> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["vfs"][0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(used.len(), n, "no VF given twice: {used:?}");
    let here = vfs.iter().filter(|l| device_here(&l.outer)).count();
    assert_eq!(
        here,
        vfs.len() - n,
        "unused VFs are back in the agent's namespace"
    );
}

fn steady(agent: &AgentProc, n: usize) -> Value {
    agent.wait_for(&format!("{n} active"), Duration::from_secs(30), |s| {
        instances_in(s, "active").len() == n
            && s["instances"].as_array().is_some_and(|a| a.len() == n)
    })
}

#[test]
fn sigkill_adopts_running_instances_and_relaunches_missing_ones() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let (mut agent, vfs, before) = running(&mut topo, 3, 2);

    // SIGKILL, restart: both adopted, the very same processes.
    agent.kill();
    agent.spawn(&[]).unwrap();
    let after = steady(&agent, 2);
    assert_sound(&agent, &after, 2, &vfs);
    for name in ["mon-0", "mon-1"] {
        assert_eq!(
            pid_of(&after, name),
            pid_of(&before, name),
            "{name} adopted, not relaunched"
        );
    }
    assert_eq!(
        agent
            .event_kinds()
            .iter()
            .filter(|k| *k == "instance_adopted")
            .count(),
        2
    );

    // SIGKILL, and mon-0 dies while the agent is down: it is launched
    // again under its name, mon-1 is adopted.
    agent.kill();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid_of(&after, "mon-0").unwrap().to_string()])
        .status();
    agent.spawn(&[]).unwrap();
    let again = agent.wait_for("mon-0 back", Duration::from_secs(30), |s| {
        instances_in(s, "active") == ["mon-0", "mon-1"]
            && pid_of(s, "mon-0") != pid_of(&after, "mon-0")
    });
    assert_eq!(pid_of(&again, "mon-1"), pid_of(&after, "mon-1"));
    assert_sound(&agent, &again, 2, &vfs);
    assert!(
        agent
            .event_kinds()
            .iter()
            .any(|k| k == "instance_relaunched")
    );
}

#[test]
fn a_crash_at_any_launch_step_ends_with_one_instance() {
    if !require_root() {
        return;
    }
    for point in ["recorded", "launched"] {
        let mut topo = Topology::new().unwrap();
        let (vfs, list) = rig(&mut topo, 2);
        let mut agent = AgentProc::start(NO_DPU, &list, "").unwrap();
        agent.kill();
        agent.spawn(&[("CHAINGATE_CRASH_AT", point)]).unwrap();
        // The agent stores the configuration, then dies launching: the CLI
        // may or may not have its answer.
        let _ = apply(&agent, &gateway(1));
        assert!(
            agent.wait_exit(Duration::from_secs(20)).is_some(),
            "{point}: the agent crashed\n{}",
            agent.log()
        );
        agent.spawn(&[]).unwrap();
        let status = steady(&agent, 1);
        assert_eq!(
            instances_in(&status, "active"),
            ["mon-0"],
            "{point}: the recorded instance, not a new one"
        );
        assert_sound(&agent, &status, 1, &vfs);
    }
}

#[test]
fn a_crash_at_any_stop_step_ends_with_the_instance_gone() {
    if !require_root() {
        return;
    }
    for point in ["stopping", "stopped"] {
        let mut topo = Topology::new().unwrap();
        let (mut agent, vfs, _) = running(&mut topo, 2, 1);
        let _ = agent.cli_ok(&["scale", "mon", "2"]);
        steady(&agent, 2);
        agent.kill();
        agent.spawn(&[("CHAINGATE_CRASH_AT", point)]).unwrap();
        let _ = agent.cli(&["scale", "mon", "1"]);
        assert!(
            agent.wait_exit(Duration::from_secs(20)).is_some(),
            "{point}: the agent crashed\n{}",
            agent.log()
        );
        agent.spawn(&[]).unwrap();
        let status = steady(&agent, 1);
        assert_eq!(instances_in(&status, "active"), ["mon-0"], "{point}");
        assert_sound(&agent, &status, 1, &vfs);
    }
}

#[test]
fn an_instance_the_store_does_not_know_is_stopped() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let (mut agent, vfs, _) = running(&mut topo, 2, 1);
    // The state is lost (a new disk, say): mon-0 runs with no record.
    agent.kill();
    std::fs::remove_file(agent.dir.join("state.redb")).unwrap();
    agent.spawn(&[]).unwrap();
    let status = agent.wait_for("the orphan stopped", Duration::from_secs(30), |_| {
        scan(&agent.run_dir).is_empty()
    });
    assert!(status["instances"].as_array().unwrap().is_empty());
    assert!(agent.event_kinds().iter().any(|k| k == "orphan_stopped"));
    assert!(vfs.iter().all(|l| device_here(&l.outer)), "its VF is back");
}

#[test]
fn a_service_that_keeps_failing_is_retried_with_backoff() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let (vfs, list) = rig(&mut topo, 2);
    let agent = AgentProc::start(NO_DPU, &list, "").unwrap();
    // The "service" exits at once, every time.
    let yaml = gateway(1).replace(
        &format!(
            "process: [\"{}\", monitor]",
            chaingate_hw_tests::agent::service_binary().display()
        ),
        "process: [/bin/sh, -c, \"exit 3\"]",
    );
    assert!(apply(&agent, &yaml).status.success());
    std::thread::sleep(Duration::from_millis(6500));
    let kinds = agent.event_kinds();
    let launches = kinds.iter().filter(|k| *k == "instance_launched").count();
    let failures = kinds.iter().filter(|k| *k == "instance_failed").count();
    // Retried at once, then after 1, 2 and 4 s: about four launches in
    // 6.5 s, where a loop at the supervisor's pace would make thirty.
    assert!(
        (2..=6).contains(&launches),
        "{launches} launches: {kinds:?}"
    );
    assert!(failures + 1 >= launches, "{kinds:?}");
    // Each failure gave its VF back: at most the current attempt holds one.
    let out = vfs.iter().filter(|l| !device_here(&l.outer)).count();
    assert!(out <= 1, "{out} VFs still out");
}
