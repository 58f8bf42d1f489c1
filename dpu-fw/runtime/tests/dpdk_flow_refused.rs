//! rte_flow on a port without flow support (net_ring): `rte_flow_configure`
//! is refused, so no async call is ever made (they crash such ports in
//! DPDK 22.11); every other call comes back as a typed refusal, and the
//! offload manager counts the sessions it leaves in software while the
//! data path forwards them.
//!
//! EAL starts once per process, so this file holds one test.

#![cfg(feature = "dpdk")]

use chaingate_fastpath::datapath::{Datapath, Options, Verdict};
use chaingate_fastpath::offload::rule::{Spec, UdpFields};
use chaingate_fastpath::offload::{
    Action, Age, FlowOffload, Item, ManagerOptions, OffloadError, OffloadManager, Place, PortAttr,
    Refusal, Rule, RuleHandle, TableSpec,
};
use chaingate_shared::config::{PortRole, Uplink};
use chaingate_shared::{Config, Generation, Nanos, PortId};
use dpu_fw::dpdk::{DpdkFlow, Eal, EthPort, Mempool};
use dpu_fw::engine::Switch;

fn eal_args() -> Vec<String> {
    [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "256",
        "-l",
        "0",
        "--log-level=lib.eal:error",
        "--no-telemetry",
        "--vdev=net_ring0",
        "--vdev=net_ring1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("--file-prefix={}", prefix())])
    .collect()
}

fn prefix() -> String {
    format!("cgflow{}", std::process::id())
}

/// Removes EAL's run-time files when the test ends, however it ends.
struct RuntimeFiles;

impl Drop for RuntimeFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Eal::runtime_dir(&prefix()));
    }
}

fn udp_frame(sport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let ip = [
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    f.extend_from_slice(&ip);
    let sum = !ip
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])))
        .to_be_bytes()
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = u16::try_from(sum & 0xFFFF).unwrap();
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&[0, 53, 0, 8, 0, 0]);
    f
}

#[test]
fn every_call_is_a_typed_refusal_and_nothing_is_lost() {
    let _files = RuntimeFiles;
    let eal = Eal::init(&eal_args()).unwrap();
    let pool = std::sync::Arc::new(Mempool::new(eal, "flowtest", 2047).unwrap());
    let mut lan = EthPort::open(eal, "net_ring0", std::sync::Arc::clone(&pool), 256).unwrap();
    let mut wan = EthPort::open(eal, "net_ring1", std::sync::Arc::clone(&pool), 256).unwrap();
    let mut flow = DpdkFlow::new(vec![Some(lan.id()), Some(wan.id())], 1000).unwrap();
    assert_eq!(
        flow.configure(&PortAttr::for_rules(1000, 8)),
        Err(OffloadError::NoSys),
        "net_ring has no flow ops"
    );
    assert!(!flow.template_api());
    lan.start().unwrap();
    wan.start().unwrap();
    flow.start().unwrap();
    flow.set_port_map(&[Some(0), Some(1)]);

    let mut rule = Rule::transfer(1, 1);
    rule.item(Item::RepresentedPort(PortId::from_index(0)))
        .unwrap()
        .item(Item::Udp(Spec::new(
            UdpFields {
                src_port: 1,
                dst_port: 53,
            },
            UdpFields {
                src_port: 0xFFFF,
                dst_port: 0xFFFF,
            },
        )))
        .unwrap();
    rule.action(Action::Age(Age {
        timeout_s: 30,
        context: 1,
    }))
    .unwrap()
    .action(Action::RepresentedPort(PortId::from_index(1)))
    .unwrap();
    assert_eq!(flow.create(&rule), Err(OffloadError::NoSys));
    // A table of a port without the template API is only remembered: its
    // rules go one by one, and are refused one by one.
    let table = flow
        .create_table(&TableSpec::of(&rule, &[], 0, 64))
        .unwrap();
    let place = Place { table, actions: 0 };
    let mut out = Vec::new();
    flow.enqueue(&[rule.clone(), rule.clone()], &[place, place], &mut out);
    assert_eq!(out, [Err(OffloadError::NoSys), Err(OffloadError::NoSys)]);
    assert!(flow.create_counter(0).is_err());
    assert_eq!(
        flow.destroy(RuleHandle(1)),
        Err(OffloadError::UnknownHandle)
    );
    let mut aged = Vec::new();
    flow.aged(Nanos(0), &mut aged);
    assert!(aged.is_empty());
    // A rule naming a port with no DPDK device is refused before DPDK sees
    // it.
    let mut stray = rule.clone();
    stray.pattern[0] = Item::RepresentedPort(PortId::from_index(5));
    assert!(matches!(flow.create(&stray), Err(OffloadError::Invalid(_))));

    // Under the offload manager: sessions stay in software, counted, and
    // the fast path forwards every packet.
    let mut b = Config::builder(Generation(1));
    let lan_id = b.add_port("lan", PortRole::Uplink(Uplink::Lan)).unwrap();
    let wan_id = b.add_port("wan", PortRole::Uplink(Uplink::Wan)).unwrap();
    let config = b.build().unwrap();
    let mut dp = Datapath::new(
        config,
        &Options {
            sessions: 256,
            ..Options::default()
        },
    );
    let mut mgr = OffloadManager::new(flow, &dp, ManagerOptions::default());
    assert_eq!(mgr.stats().base_refused, 2, "a jump per port");
    for i in 0..20 {
        let verdict = dp.process(lan_id, &udp_frame(1000 + i), Nanos(1));
        assert!(
            matches!(verdict, Verdict::Forward { port, .. } if port == wan_id),
            "{verdict:?}"
        );
        mgr.handle_events(&mut dp);
    }
    assert_eq!(mgr.stats().refusals(Refusal::NoSys), 20);
    assert_eq!(mgr.stats().sessions_offloaded, 0);
    assert_eq!(dp.counters().forwarded, 20);
    assert_eq!(dp.counters().dropped.iter().sum::<u64>(), 0);
    drop(mgr);
    drop((lan, wan));
}
