//! The host agent end to end on veths: `dpu-fw` with afpacket ports, the
//! agent with the process launcher and three VFs, `chaingate-service
//! monitor` as the service function. Applying a configuration launches
//! the service's minimum, which becomes active on its probe and carries
//! traffic; `chaingate scale` adds one, `chaingate drain` removes one and
//! gives its VF back; a SIGKILLed instance is replaced and the DPU stops
//! using it.

use std::net::Ipv4Addr;
use std::time::Duration;

use chaingate_hw_tests::agent::{
    AgentRig, device_here, instances_in, monitor_gateway, on_dpu, pid_of,
};
use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::frames::{assert_same, udp};
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::rig::Rig as _;

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn gateway() -> String {
    // A long hold: the scaler stays out of this scenario's manual steps.
    monitor_gateway("1Gbit", "{ min: 1, max: 3, hold: 10m, drain_timeout: 2s }")
}

fn flows(tag: u8) -> Vec<Vec<u8>> {
    (1..=8)
        .map(|i| {
            udp(
                (Ipv4Addr::new(10, 0, tag, i), 4000),
                (SERVER, 53),
                true,
                &[tag, i],
            )
        })
        .collect()
}

#[test]
fn instances_launch_scale_drain_and_are_replaced() {
    if !require_root() {
        return;
    }
    let rig = AgentRig::start(3).unwrap();
    let (agent, topo, lan, wan, vfs) = (&rig.agent, &rig.topo, &rig.lan, &rig.wan, &rig.vfs);
    let mut lan_host = Endpoint::open(topo.netns(), &lan.outer).unwrap();
    let mut wan_host = Endpoint::open(topo.netns(), &wan.outer).unwrap();

    // Apply: the minimum (one) is launched, probed, put on the DPU.
    let status = rig.apply_and_wait(&gateway(), &["mon-0"]);
    assert_eq!(status["services"][0]["running"], 1);
    assert!(
        !device_here(&vfs[0].outer),
        "the VF moved into the instance's namespace"
    );

    let sent = flows(1);
    lan_host.send(&sent);
    assert_same(
        &wan_host.receive(sent.len(), Duration::from_secs(10)),
        &sent,
        "through mon-0",
    );
    assert!(agent.instance_rx("mon-0") >= 8, "mon-0 saw the frames");

    // Scale to two: a second instance on the next VF.
    assert_eq!(
        agent.cli_ok(&["scale", "mon", "2"]).trim(),
        "mon: target 2 instances"
    );
    agent.wait_for("two active", Duration::from_secs(30), |s| {
        instances_in(s, "active").len() == 2 && on_dpu(s)
    });

    // Drain the new one: stopped after the drain, its VF back here.
    assert_eq!(agent.cli_ok(&["drain", "mon-1"]).trim(), "mon-1: draining");
    let status = agent.wait_for("mon-1 gone", Duration::from_secs(30), |s| {
        s["instances"].as_array().is_some_and(|a| a.len() == 1) && on_dpu(s)
    });
    assert_eq!(instances_in(&status, "active"), ["mon-0"]);
    assert_eq!(
        status["services"][0]["target"], 1,
        "drain lowered the target"
    );
    assert!(
        device_here(&vfs[1].outer),
        "mon-1's VF is back in the agent's namespace"
    );

    // SIGKILL mon-0: it is failed, taken off the DPU, and replaced.
    let pid = pid_of(&status, "mon-0").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let status = agent.wait_for("a replacement", Duration::from_secs(30), |s| {
        let active = instances_in(s, "active");
        active.len() == 1 && active[0] != "mon-0" && on_dpu(s)
    });
    let replacement = instances_in(&status, "active").remove(0);
    let sent = flows(2);
    lan_host.send(&sent);
    assert_same(
        &wan_host.receive(sent.len(), Duration::from_secs(10)),
        &sent,
        "through the replacement",
    );
    assert!(
        agent.instance_rx(&replacement) >= 8,
        "{replacement} carries the new sessions"
    );

    // A figure for the reader, not a check: launch to healthy, mon-0.
    let events: Vec<serde_json::Value> = agent
        .cli_ok(&["--json", "events"])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let at = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["instance"] == "mon-0")
            .and_then(|e| e["at_ms"].as_u64())
    };
    if let (Some(a), Some(b)) = (at("instance_launched"), at("instance_ready")) {
        eprintln!("process instance: launched to healthy in {} ms", b - a);
    }
    let kinds = agent.event_kinds();
    for want in [
        "config_applied",
        "instance_launched",
        "instance_ready",
        "scale_set",
        "drain_started",
        "drain_finished",
        "instance_stopped",
        "instance_failed",
    ] {
        assert!(
            kinds.iter().any(|k| k == want),
            "no {want} event in {kinds:?}"
        );
    }
    let table = agent.cli_ok(&["instances"]);
    assert!(table.starts_with("INSTANCE"), "{table}");
    assert!(table.contains(&replacement), "{table}");
    let sessions = agent.cli_ok(&["sessions"]);
    assert!(sessions.contains("192.0.2.80:53"), "{sessions}");

    // The operator asks an instance's function through the agent: its
    // counters, and the monitor's per-flow counts.
    let probe = agent.cli_ok(&["ask", &replacement]);
    assert!(
        probe.starts_with(&format!("ok service=monitor instance={replacement} ")),
        "{probe}"
    );
    let flows = agent.cli_ok(&["ask", &replacement, "flows"]);
    let head = flows.lines().next().unwrap_or_default();
    assert!(head.starts_with("flows "), "{flows}");
    assert!(
        flows.lines().skip(1).any(|l| l.contains("192.0.2.80:53")),
        "{flows}"
    );
    assert_eq!(
        flows.lines().count(),
        1 + head
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap(),
        "the first line counts the rest: {flows}"
    );
    for (args, want) in [
        (vec!["ask", "nobody-0"], "no instance `nobody-0`"),
        (vec!["ask", "mon-1", "probe"], "no instance `mon-1`"),
        (vec!["ask", &replacement, &"x".repeat(65)], "up to 64 bytes"),
    ] {
        let out = agent.cli(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // The instances' own kernels kept quiet on their VFs (no IPv6
    // autoconfiguration): nothing arrived off a segment, or from a VF
    // with no instance.
    let dropped = rig.dpu.stats().fast_path.unwrap_or_default().dropped;
    for reason in ["not_a_segment", "unknown_port"] {
        assert_eq!(dropped.get(reason).copied().unwrap_or(0), 0, "{dropped:?}");
    }
}
