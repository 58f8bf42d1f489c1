//! Chain order: every frame of every connection passes firewall -> ids ->
//! nat in that order on its way to the wan, and the answers pass nat -> ids
//! -> firewall on their way back; nothing is lost, reordered or changed,
//! the wan host sees the NAT's address and the lan host its own again.
//! The services are `chaingate-service` processes launched by the agent,
//! each stamping what it passes (hw-tests `flows` reads the stamps), or
//! a LabRig's service VMs.

use std::net::SocketAddrV4;

use chaingate_hw_tests::agent::{FIREWALL_STAMP, IDS_STAMP, NAT_ADDRESS, NAT_STAMP, WebChain};
use chaingate_hw_tests::flows::{self, Plan};
use chaingate_hw_tests::rig;

const FORWARD: [u16; 3] = [FIREWALL_STAMP, IDS_STAMP, NAT_STAMP];
const BACK: [u16; 3] = [NAT_STAMP, IDS_STAMP, FIREWALL_STAMP];

#[test]
fn frames_pass_the_chain_in_order_and_answers_in_reverse() {
    let Some(rig) = rig::pick(3) else { return };
    rig.apply_and_wait(
        &rig.web_chain(WebChain::default()),
        &["firewall-0", "ids-0", "nat-0"],
    );

    for mut plan in [Plan::tcp(8, 40, 800), Plan::udp(8, 40, 800)] {
        plan.clients = 4;
        plan.echo = true;
        plan.size = 300;
        let what = format!("{:?}", plan.proto);
        let out = rig.traffic(&plan);
        let total = u64::from(plan.flows * plan.packets);
        if plan.proto == flows::Proto::Tcp {
            assert_eq!(out.opened, plan.flows, "{what}: every handshake completed");
            assert_eq!(out.forward.handshakes, u64::from(plan.flows));
            assert_eq!(out.back.fins, u64::from(plan.flows), "{what}: FIN answered");
        }
        assert_eq!(out.sent, total, "{what}");
        for (side, name, order) in [
            (&out.forward, "forward", FORWARD),
            (&out.back, "back", BACK),
        ] {
            assert_eq!(side.lost(&plan), 0, "{what} {name}: lost frames");
            assert_eq!(side.corrupt, 0, "{what} {name}: changed frames");
            assert_eq!(
                side.disorder(),
                (0, 0),
                "{what} {name}: duplicates, reordering"
            );
            let stamps = side.stamps();
            assert_eq!(
                stamps.keys().collect::<Vec<_>>(),
                [&order.to_vec()],
                "{what} {name}: every frame passed the chain in order"
            );
            assert_eq!(side.latency.len() as u64, total);
        }
        for (flow, seen) in &out.forward.flows {
            let client = plan.client.ip().to_bits() + flow % plan.clients;
            let tuples: Vec<_> = seen.tuples.iter().collect();
            assert_eq!(tuples.len(), 1, "{what}: flow {flow} kept one NAT mapping");
            let (src, dst) = tuples[0];
            assert_eq!(
                *src.ip(),
                NAT_ADDRESS,
                "{what}: the wan sees the NAT's address"
            );
            assert!((20_000..21_000).contains(&src.port()), "nat-0's port block");
            assert_eq!(*dst, plan.server);
            let back = &out.back.flows[flow];
            let (bsrc, bdst) = back.tuples.iter().next().copied().unwrap();
            assert_eq!(bsrc, plan.server, "{what}: answers come from the server");
            assert_eq!(
                bdst,
                SocketAddrV4::new(client.into(), plan.client.port() + *flow as u16),
                "{what}: answers reach the client's own address again"
            );
        }
        eprintln!(
            "{what}: one way p50 {:?} p99 {:?}; round trip p50 {:?} p99 {:?}",
            out.forward.latency.percentile(50.0).unwrap(),
            out.forward.latency.percentile(99.0).unwrap(),
            out.back.latency.percentile(50.0).unwrap(),
            out.back.latency.percentile(99.0).unwrap(),
        );
    }
}
