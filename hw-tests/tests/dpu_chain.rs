//! dpu-fw on veths: a configuration with a two-hop chain through two
//! reflector instances, applied over the control API; frames sent from the
//! lan side arrive at the wan side having passed both instances with their
//! segment tags, and replies come back the same way.

use std::net::Ipv4Addr;
use std::time::Duration;

use chaingate_hw_tests::dpu::DpuFw;
use chaingate_hw_tests::endpoint::Endpoint;
use chaingate_hw_tests::frames::{assert_same, outer_vlan, udp};
use chaingate_hw_tests::reflector::Reflector;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::Topology;
use chaingate_proto::dpu;

const GATEWAY: &str = "
ports:
  - { name: lan, role: lan }
  - { name: wan, role: wan }
  - { name: vf0, role: vf }
  - { name: vf1, role: vf }
services:
  - { name: fw, capacity: 1Gbit }
  - { name: ids, capacity: 1Gbit }
instances:
  - { name: fw-0, service: fw, port: vf0 }
  - { name: ids-0, service: ids, port: vf1 }
chains:
  - { name: web, services: [fw, ids] }
policies:
  - { priority: 10, action: { chain: web } }
";

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn client(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_walk_the_chain_both_ways() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let lan = topo.link("lan").unwrap();
    let wan = topo.link("wan").unwrap();
    let vf0 = topo.link("vf0").unwrap();
    let vf1 = topo.link("vf1").unwrap();
    let vf2 = topo.link("vf2").unwrap();
    let dpu = DpuFw::start(
        &[
            ("lan", &lan.inner, "lan"),
            ("wan", &wan.inner, "wan"),
            ("vf0", &vf0.inner, "vf"),
            ("vf1", &vf1.inner, "vf"),
            ("vf2", &vf2.inner, "vf"),
        ],
        "sessions: 1024\n",
    )
    .unwrap();
    let fw = Reflector::start(topo.netns(), &vf0.outer).unwrap();
    let ids = Reflector::start(topo.netns(), &vf1.outer).unwrap();
    let fw1 = Reflector::start(topo.netns(), &vf2.outer).unwrap();
    let mut lan_host = Endpoint::open(topo.netns(), &lan.outer).unwrap();
    let mut wan_host = Endpoint::open(topo.netns(), &wan.outer).unwrap();

    let mut control = dpu.client().await.unwrap();
    let (_, config) = chaingate_proto::file::load(GATEWAY, 1).unwrap();
    let applied = control
        .apply_config(dpu::ApplyConfigRequest {
            config: Some(config),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied);
    assert_eq!(applied.current_generation, 1);

    // Ten flows, two packets each, lan to wan: the first packet of each
    // goes through the fast path, the second through the eSwitch's rules.
    let out: Vec<Vec<u8>> = (1..=10)
        .flat_map(|i| {
            (0..2).map(move |n| udp((client(i), 5000), (SERVER, 53), true, &[i, n, 0xAB]))
        })
        .collect();
    lan_host.send(&out);
    let arrived = wan_host.receive(out.len(), Duration::from_secs(10));
    assert_same(&arrived, &out, "lan to wan");
    assert_eq!(
        (fw.seen(), ids.seen()),
        (20, 20),
        "each passed both instances"
    );

    // Replies walk the instances back.
    let back: Vec<Vec<u8>> = (1..=10)
        .map(|i| udp((SERVER, 53), (client(i), 5000), false, &[i, 0xCD]))
        .collect();
    wan_host.send(&back);
    let returned = lan_host.receive(back.len(), Duration::from_secs(10));
    assert_same(&returned, &back, "wan to lan");
    assert_eq!((fw.seen(), ids.seen()), (30, 30));
    assert!(
        wan_host.drain(Duration::from_millis(200)).is_empty(),
        "nothing else came out"
    );

    // The instances saw segment tags (restored from the kernel's auxdata
    // by the runtime's receive path), one per hop and direction.
    let fw_tags = fw.tags();
    let ids_tags = ids.tags();
    assert_eq!(fw_tags.len(), 2, "fw: one tag per direction: {fw_tags:?}");
    assert_eq!(ids_tags.len(), 2, "ids: {ids_tags:?}");
    assert!(fw_tags.iter().chain(&ids_tags).all(Option::is_some));
    assert!(fw_tags.is_disjoint(&ids_tags));
    assert_eq!(outer_vlan(&arrived[0]), None);

    let stats = control
        .get_stats(dpu::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let sessions = stats.sessions.unwrap();
    assert_eq!(sessions.active, 10);
    let offload = stats.offload.unwrap();
    assert_eq!(offload.sessions, 10, "every session got its rules");
    let switch = stats.switch.unwrap();
    assert!(
        switch.out > 0,
        "some frames were moved by rules alone: {switch:?}"
    );
    let fast = stats.fast_path.unwrap();
    assert!(fast.dropped.values().all(|d| *d == 0), "{:?}", fast.dropped);

    let listed = control
        .list_sessions(dpu::ListSessionsRequest {
            instance: Some("ids-0".into()),
            ..dpu::ListSessionsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 10);
    let s = &listed.sessions[0];
    assert_eq!((s.origin.as_str(), s.chain.as_str()), ("lan", "web"));
    assert_eq!(
        s.hops
            .iter()
            .map(|h| h.instance.as_str())
            .collect::<Vec<_>>(),
        ["fw-0", "ids-0"]
    );
    assert_eq!(s.dst, SERVER.to_string(), "shown as the opener sent it");
    // Pages of three: four pages, every session once.
    let mut token = String::new();
    let mut pages = Vec::new();
    loop {
        let page = control
            .list_sessions(dpu::ListSessionsRequest {
                page_size: 3,
                page_token: token,
                ..dpu::ListSessionsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total, 10);
        pages.push(page.sessions.len());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, [3, 3, 3, 1]);

    // Generation 2 adds a second firewall instance: established sessions
    // keep theirs, new ones spread over both.
    let grown = GATEWAY
        .replace("  - { name: vf1, role: vf }", "  - { name: vf1, role: vf }\n  - { name: vf2, role: vf }")
        .replace(
            "  - { name: ids-0, service: ids, port: vf1 }",
            "  - { name: ids-0, service: ids, port: vf1 }\n  - { name: fw-1, service: fw, port: vf2 }",
        );
    let (_, config) = chaingate_proto::file::load(&grown, 2).unwrap();
    let applied = control
        .apply_config(dpu::ApplyConfigRequest {
            config: Some(config),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied);
    let again: Vec<Vec<u8>> = (1..=10)
        .map(|i| udp((client(i), 5000), (SERVER, 53), true, &[i, 9]))
        .collect();
    lan_host.send(&again);
    assert_same(
        &wan_host.receive(again.len(), Duration::from_secs(10)),
        &again,
        "established, after generation 2",
    );
    assert_eq!((fw.seen(), fw1.seen()), (40, 0), "they kept fw-0");
    let fresh: Vec<Vec<u8>> = (100..120)
        .map(|i| udp((client(i), 6000), (SERVER, 53), true, &[i]))
        .collect();
    lan_host.send(&fresh);
    assert_same(
        &wan_host.receive(fresh.len(), Duration::from_secs(10)),
        &fresh,
        "new sessions",
    );
    assert_eq!(fw.seen() + fw1.seen(), 60);
    assert!(fw1.seen() > 0, "the new instance takes new sessions");
    assert_eq!(ids.seen(), 60);
}
