//! Bandwidth-driven scaling on the simulated rig: `dpu-fw` on veths, the
//! agent with the process launcher, `chaingate-service monitor` instances
//! of a service with a small capacity, and rate-limited traffic from the
//! lan side.
//!
//! - Overload the one instance: exactly one new instance comes, new
//!   sessions reach it, established ones stay where they are; the reaction
//!   time is an event and a metric.
//! - The load drops: the instance with the fewest sessions drains, and its
//!   sessions keep flowing through it until the drain timeout.
//! - SIGKILL an instance: it is replaced, and new sessions avoid it a
//!   second later.
//! - At max: no launch, a clear event.

use std::net::Ipv4Addr;
use std::time::Duration;

use chaingate_hw_tests::agent::{AgentProc, AgentRig, instances_in, monitor_gateway, pid_of};
use chaingate_hw_tests::frames::udp;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::rig::Rig as _;
use chaingate_hw_tests::traffic::Traffic;
use serde_json::Value;

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
const PAYLOAD: usize = 1000;

/// 4 Mbit/s an instance: 250 frames/s of ~1 kB fill it half.
fn gateway(max: u16, hold: &str) -> String {
    monitor_gateway(
        "4Mbit",
        &format!(
            "{{ min: 1, max: {max}, scale_out_at: 50%, scale_in_at: 20%, hold: {hold}, cooldown: 2s, drain_timeout: 4s }}"
        ),
    )
}

/// Flow `i` of group `g`: a UDP 5-tuple of its own, ~1 kB frames.
fn flow(g: u8, i: u8) -> Vec<u8> {
    udp(
        (Ipv4Addr::new(10, g, 0, i), 4000 + u16::from(i)),
        (SERVER, 5001),
        true,
        &[g; PAYLOAD],
    )
}

fn rig(max: u16, hold: &str) -> AgentRig {
    let rig = AgentRig::start(3).unwrap();
    rig.apply_and_wait(&gateway(max, hold), &["mon-0"]);
    rig
}

/// The instance each session of group `g` uses (by source address).
fn paths(agent: &AgentProc, g: u8) -> Vec<String> {
    let sessions: Value =
        serde_json::from_str(&agent.cli_ok(&["--json", "sessions", "--limit", "1000"])).unwrap();
    sessions
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["src"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("10.{g}.0.")))
        })
        .map(|s| {
            s["hops"][0]["instance"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn overload_scales_out_once_then_in_with_a_drain() {
    if !require_root() {
        return;
    }
    let rig = rig(3, "1s");
    let agent = &rig.agent;

    // Group 1: four sessions, 400 frames/s of 1 kB: ~3.3 Mbit/s, over 50%.
    let old = Traffic::start(
        rig.topo.netns(),
        &rig.lan.outer,
        (1..=4).map(|i| flow(1, i)).collect(),
        400,
    )
    .unwrap();
    let out = agent.wait_event("scale_out", Duration::from_secs(30), |_| true);
    assert_eq!(out["service"], "mon");
    let status = agent.wait_for("mon-1 active on the DPU", Duration::from_secs(30), |s| {
        instances_in(s, "active") == ["mon-0", "mon-1"]
            && s["dpu_generation"] == s["desired_generation"]
    });
    assert_eq!(status["services"][0]["target"], 2);

    // Group 2: two new sessions, light. mon-0 has no headroom: they go to
    // mon-1; group 1 stays on mon-0.
    let new = Traffic::start(
        rig.topo.netns(),
        &rig.lan.outer,
        (1..=2).map(|i| flow(2, i)).collect(),
        20,
    )
    .unwrap();
    let complete = agent.wait_event("scale_out_complete", Duration::from_secs(20), |_| true);
    assert_eq!(complete["instance"], "mon-1");
    eprintln!(
        "scale-out reaction (process instances): {}",
        complete["message"]
    );
    assert_eq!(
        paths(agent, 2),
        ["mon-1", "mon-1"],
        "new sessions on the new instance"
    );
    assert_eq!(
        paths(agent, 1),
        ["mon-0"; 4],
        "established sessions did not move"
    );

    // Exactly one: mon-1 has headroom, so no third however long we wait.
    std::thread::sleep(Duration::from_secs(4));
    let status = agent.status();
    assert_eq!(
        status["instances"].as_array().unwrap().len(),
        2,
        "{status:#}"
    );
    assert_eq!(
        agent
            .events()
            .iter()
            .filter(|e| e["kind"] == "scale_out")
            .count(),
        1
    );

    // The load drops: group 1 stops. mon-1 (two sessions, fewer than
    // mon-0's four) drains; group 2 keeps flowing through it meanwhile.
    drop(old);
    let drain = agent.wait_event("scale_in", Duration::from_secs(30), |_| true);
    assert_eq!(drain["service"], "mon");
    let started = agent.wait_event("drain_started", Duration::from_secs(5), |_| true);
    assert_eq!(
        started["instance"], "mon-1",
        "the one with the fewest sessions"
    );
    let rx = agent.instance_rx("mon-1");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.instance_rx("mon-1") > rx,
        "a draining instance still carries its sessions"
    );
    let finished = agent.wait_event("drain_finished", Duration::from_secs(20), |_| true);
    assert_eq!(finished["instance"], "mon-1");
    let waited = finished["at_ms"].as_u64().unwrap() - started["at_ms"].as_u64().unwrap();
    assert!(
        waited >= 4000,
        "its sessions were live: it drained for the whole timeout ({waited} ms)"
    );
    agent.wait_for("back to one", Duration::from_secs(20), |s| {
        s["instances"].as_array().is_some_and(|a| a.len() == 1)
    });
    drop(new);
}

#[test]
fn a_killed_instance_is_replaced_and_avoided() {
    if !require_root() {
        return;
    }
    // A long hold: the scaler leaves the two instances alone.
    let rig = rig(3, "10m");
    let agent = &rig.agent;
    let _ = agent.cli_ok(&["scale", "mon", "2"]);
    let status = agent.wait_for("two on the DPU", Duration::from_secs(30), |s| {
        instances_in(s, "active").len() == 2 && s["dpu_generation"] == s["desired_generation"]
    });
    let pid = pid_of(&status, "mon-0").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    // A second later, new sessions avoid it.
    std::thread::sleep(Duration::from_secs(1));
    let fresh = Traffic::start(
        rig.topo.netns(),
        &rig.lan.outer,
        (1..=8).map(|i| flow(3, i)).collect(),
        80,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let used = paths(agent, 3);
    assert_eq!(used.len(), 8, "{used:?}");
    assert!(used.iter().all(|i| i != "mon-0"), "{used:?}");
    drop(fresh);
    agent.wait_for("replaced", Duration::from_secs(30), |s| {
        let active = instances_in(s, "active");
        active.len() == 2 && !active.contains(&"mon-0".to_owned())
    });
    assert!(
        agent
            .events()
            .iter()
            .any(|e| e["kind"] == "instance_failed" && e["instance"] == "mon-0")
    );
}

#[test]
fn at_max_there_is_no_launch_and_an_event_says_why() {
    if !require_root() {
        return;
    }
    let rig = rig(1, "1s");
    let agent = &rig.agent;
    let load = Traffic::start(
        rig.topo.netns(),
        &rig.lan.outer,
        (1..=4).map(|i| flow(4, i)).collect(),
        400,
    )
    .unwrap();
    let refused = agent.wait_event("scale_out_refused", Duration::from_secs(30), |_| true);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("at its max of 1 instances"),
        "{refused}"
    );
    drop(load);
    let status = agent.status();
    assert_eq!(instances_in(&status, "active"), ["mon-0"]);
    assert!(!agent.events().iter().any(|e| e["kind"] == "scale_out"));
}
