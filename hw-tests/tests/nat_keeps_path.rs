//! NAT keeps the path: with two NAT instances, each connection's answers
//! come back through the NAT instance that translated it (the only one
//! that can translate them back) and then through the same IDS and
//! firewall, although the DPU sees them under the NAT's address.

use std::collections::BTreeSet;

use chaingate_hw_tests::agent::{FIREWALL_STAMP, IDS_STAMP, NAT_ADDRESS, NAT_STAMP, WebChain};
use chaingate_hw_tests::flows::Plan;
use chaingate_hw_tests::rig;

#[test]
fn answers_return_through_the_nat_instance_that_translated_them() {
    let Some(rig) = rig::pick(4) else { return };
    let chain = WebChain {
        nat_scaling: "{ min: 2, max: 2 }".into(),
        ..WebChain::default()
    };
    rig.apply_and_wait(
        &rig.web_chain(chain),
        &["firewall-0", "ids-0", "nat-0", "nat-1"],
    );
    let mut plan = Plan::tcp(24, 20, 600);
    plan.clients = 6;
    plan.echo = true;
    let out = rig.traffic(&plan);
    assert_eq!(out.opened, plan.flows, "every handshake completed");
    assert_eq!(out.forward.lost(&plan), 0);
    assert_eq!(out.back.lost(&plan), 0);
    assert_eq!((out.forward.corrupt, out.back.corrupt), (0, 0));

    let mut nats = BTreeSet::new();
    for (flow, seen) in &out.forward.flows {
        let stamps: Vec<&Vec<u16>> = seen.stamps.keys().collect();
        assert_eq!(stamps.len(), 1, "flow {flow} took one path: {stamps:?}");
        let path = stamps[0];
        assert_eq!(path[..2], [FIREWALL_STAMP, IDS_STAMP], "flow {flow}");
        let nat = path[2] - NAT_STAMP;
        nats.insert(nat);
        // The port comes from that instance's block.
        let (src, _) = seen.tuples.iter().next().copied().unwrap();
        assert_eq!(*src.ip(), NAT_ADDRESS);
        let block = 20_000 + 1_000 * nat;
        assert!(
            (block..block + 1_000).contains(&src.port()),
            "flow {flow}: port {} outside nat-{nat}'s block",
            src.port()
        );
        let back: Vec<&Vec<u16>> = out.back.flows[flow].stamps.keys().collect();
        assert_eq!(
            back,
            [&vec![NAT_STAMP + nat, IDS_STAMP, FIREWALL_STAMP]],
            "flow {flow}: answers through nat-{nat}, then ids and firewall"
        );
    }
    assert_eq!(
        nats,
        BTreeSet::from([0, 1]),
        "the flows were spread over both NAT instances"
    );
}
