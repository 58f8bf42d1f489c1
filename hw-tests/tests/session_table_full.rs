//! A full session table: the DPU holds 16 sessions; more new connections
//! are refused (dropped, counted), the connections it holds pass whole,
//! and the agent says so: an event naming the fix, and metrics.

use std::time::{Duration, Instant};

use chaingate_hw_tests::agent::{AgentRig, monitor_gateway};
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::rig::Rig as _;

#[test]
fn refused_connections_are_counted_and_said() {
    if !require_root() {
        return;
    }
    let rig = AgentRig::start_with(1, "sessions: 16\n").unwrap();
    rig.apply_and_wait(&monitor_gateway("1Gbit", "{ min: 1, max: 1 }"), &["mon-0"]);
    let mut plan = Plan::udp(40, 10, 400);
    plan.settle = Duration::from_millis(300);
    let out = rig.traffic(&plan);

    // Each flow is one session (the monitor rewrites nothing): at most 16
    // flows passed, each whole; the others not at all.
    let whole = out.forward.flows.values().filter(|f| f.lost() == 0).count();
    assert_eq!(whole, out.forward.flows.len(), "no flow passed in part");
    assert!((1..=16).contains(&whole), "{whole} flows passed");
    let stats = rig.dpu.stats();
    let sessions = stats.sessions.unwrap_or_default();
    assert_eq!(sessions.capacity, 16);
    assert!(sessions.refused > 0, "{sessions:?}");
    let table_full = stats
        .fast_path
        .as_ref()
        .and_then(|f| f.dropped.get("table_full").copied())
        .unwrap_or(0);
    assert_eq!(
        table_full,
        u64::from(plan.flows * plan.packets) - out.forward.frames(),
        "every frame that did not pass was dropped as `table_full`"
    );

    // The agent says it once, with the fix, and in its metrics.
    let deadline = Instant::now() + Duration::from_secs(5);
    let said = loop {
        let events = rig.agent.cli_ok(&["events"]);
        if let Some(line) = events.lines().find(|l| l.contains("sessions_refused")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no sessions_refused event:\n{events}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        said.contains("of 16") && said.contains("raise `sessions`"),
        "{said}"
    );
    let m = rig.agent.scrape();
    assert_eq!(m.get("chaingate_dpu_session_capacity"), Some(&16.0));
    assert!(
        m.get("chaingate_dpu_sessions_refused_total") > Some(&0.0),
        "{m:?}"
    );
    let kinds = rig.agent.event_kinds();
    assert_eq!(
        kinds.iter().filter(|k| *k == "sessions_refused").count(),
        1,
        "said once, not on every telemetry message"
    );
}
