//! Rule table full: the eSwitch holds rules for a few sessions only; the
//! rest stay in the fast path's software, and not one frame is lost or
//! sent the wrong way. The DPU reports them as refused for `full`.

use chaingate_hw_tests::agent::{AgentRig, FIREWALL_STAMP, IDS_STAMP, NAT_STAMP, WebChain};
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::rig::Rig as _;

#[test]
fn sessions_past_the_rule_table_stay_in_software_and_nothing_is_lost() {
    if !require_root() {
        return;
    }
    let rig = AgentRig::start_with(3, "offload: { capacity: 40 }\n").unwrap();
    rig.apply_and_wait(
        &WebChain::default().gateway(),
        &["firewall-0", "ids-0", "nat-0"],
    );
    let mut plan = Plan::tcp(32, 30, 1500);
    plan.clients = 8;
    plan.echo = true;
    let out = rig.traffic(&plan);
    let stats = rig.dpu.stats();
    let offload = stats.offload.unwrap_or_default();
    let switch = stats.switch.unwrap_or_default();
    assert_eq!(out.opened, plan.flows);
    assert_eq!(out.forward.lost(&plan), 0, "{offload:?}");
    assert_eq!(out.back.lost(&plan), 0, "{offload:?}");
    assert_eq!((out.forward.corrupt, out.back.corrupt), (0, 0));
    assert_eq!(
        out.forward.stamps().into_keys().collect::<Vec<_>>(),
        [vec![FIREWALL_STAMP, IDS_STAMP, NAT_STAMP]]
    );
    assert!(
        offload.refused.get("full").copied().unwrap_or(0) > 0,
        "sessions were refused for a full table: {offload:?}"
    );
    assert!(
        offload.sessions > 0,
        "some sessions are in the table: {offload:?}"
    );
    assert!(offload.rules <= 40, "never past the capacity: {offload:?}");
    assert!(
        switch.out > 0 && switch.to_software > 0,
        "frames went both ways, by rule and through software: {switch:?}"
    );
}
