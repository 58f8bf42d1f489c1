use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chaingate_shared::config::{FailMode, PortRole, Scaling, Uplink};
use chaingate_shared::policy::{
    ClassifyInput, Dscp, IpPrefix, Match, Policy, PolicyAction, PortRange,
};
use chaingate_shared::{Config, FlowKey, Generation, IpProtocol, PortId, VlanId, VlanStack};
use proptest::prelude::*;

use super::*;

/// The definition: the matching policy with the highest priority, the
/// first configured among equals.
fn linear(config: &Config, input: &ClassifyInput<'_>) -> Option<usize> {
    let mut best: Option<(usize, u32)> = None;
    for (i, p) in config.policies().iter().enumerate() {
        if p.matches.matches(input) && best.is_none_or(|(_, prio)| p.priority > prio) {
            best = Some((i, p.priority));
        }
    }
    best.map(|(i, _)| i)
}

const PORTS: u16 = 4;

fn config_with(policies: &[Policy]) -> Config {
    let mut b = Config::builder(Generation(1));
    b.add_port("lan", PortRole::Uplink(Uplink::Lan)).unwrap();
    b.add_port("wan", PortRole::Uplink(Uplink::Wan)).unwrap();
    for i in 2..PORTS {
        b.add_port(&alloc::format!("vf{i}"), PortRole::Vf).unwrap();
    }
    let s = b
        .add_service("svc", 1_000_000, Scaling::default(), FailMode::Open)
        .unwrap();
    b.add_chain("c0", &[s]).unwrap();
    b.add_chain("c1", &[s, s]).unwrap();
    for p in policies {
        b.add_policy(*p).unwrap();
    }
    b.build().unwrap()
}

fn pfx(s: &str, len: u8) -> IpPrefix {
    IpPrefix::new(s.parse().unwrap(), len).unwrap()
}

fn v4_prefixes() -> [IpPrefix; 6] {
    [
        pfx("10.0.0.0", 8),
        pfx("10.1.0.0", 16),
        pfx("10.1.2.0", 24),
        pfx("10.1.2.3", 32),
        pfx("192.168.0.0", 16),
        pfx("0.0.0.0", 0),
    ]
}

fn v6_prefixes() -> [IpPrefix; 4] {
    [
        pfx("2001:db8::", 32),
        pfx("2001:db8:1::", 48),
        pfx("::", 0),
        pfx("2001:db8:1::7", 128),
    ]
}

fn addresses(v6: bool) -> Vec<IpAddr> {
    let list: &[&str] = if v6 {
        &[
            "2001:db8::1",
            "2001:db8:1::7",
            "2001:db8:1::8",
            "2001:db9::1",
            "::1",
        ]
    } else {
        &[
            "10.1.2.3",
            "10.1.2.4",
            "10.1.9.9",
            "10.200.0.1",
            "192.168.5.5",
            "8.8.8.8",
        ]
    };
    list.iter().map(|s| s.parse().unwrap()).collect()
}

const RANGES: [(u16, u16); 6] = [
    (80, 80),
    (443, 443),
    (1000, 2000),
    (0, 1023),
    (1024, 65535),
    (8080, 8080),
];
const PROTOS: [IpProtocol; 3] = [IpProtocol::Tcp, IpProtocol::Udp, IpProtocol::Icmp];

prop_compose! {
    fn any_policy()(
        in_port in proptest::option::of(0..PORTS),
        vlan in proptest::option::of(prop::sample::select(alloc::vec![10u16, 20, 30])),
        v6 in any::<bool>(),
        src in proptest::option::of(0usize..6),
        dst in proptest::option::of(0usize..6),
        proto in proptest::option::of(0usize..3),
        sports in proptest::option::of(0usize..6),
        dports in proptest::option::of(0usize..6),
        dscp in proptest::option::of(prop::sample::select(alloc::vec![0u8, 10, 46])),
        priority in 0u32..6,
        action in 0u8..4,
    ) -> Policy {
        let prefix = |i: usize| if v6 { v6_prefixes()[i % 4] } else { v4_prefixes()[i] };
        let proto = proto.map(|i| PROTOS[i]);
        let has_ports = matches!(proto, Some(IpProtocol::Tcp | IpProtocol::Udp));
        let range = |i: usize| PortRange::new(RANGES[i].0, RANGES[i].1).unwrap();
        Policy {
            priority,
            matches: Match {
                in_port: in_port.map(PortId::from_index),
                vlan: vlan.and_then(VlanId::new),
                src: src.map(prefix),
                dst: dst.map(prefix),
                proto,
                src_ports: sports.filter(|_| has_ports).map(range),
                dst_ports: dports.filter(|_| has_ports).map(range),
                dscp: dscp.and_then(Dscp::new),
            },
            action: match action {
                0 => PolicyAction::Bypass,
                1 => PolicyAction::Drop,
                2 => PolicyAction::Chain(chaingate_shared::ChainId::from_index(0)),
                _ => PolicyAction::Chain(chaingate_shared::ChainId::from_index(1)),
            },
        }
    }
}

prop_compose! {
    fn any_packet()(
        in_port in 0..PORTS,
        vlan in prop::sample::select(alloc::vec![None, Some(10u16), Some(20), Some(99)]),
        v6 in any::<bool>(),
        src in 0usize..6,
        dst in 0usize..6,
        proto in 0usize..4,
        sport in prop::sample::select(alloc::vec![80u16, 443, 1000, 1500, 2000, 2001, 8080, 50000, 0, 1023, 1024]),
        dport in prop::sample::select(alloc::vec![80u16, 443, 1000, 1500, 2000, 2001, 8080, 50000, 0, 1023, 1024]),
        dscp in prop::sample::select(alloc::vec![0u8, 10, 46, 63]),
    ) -> (PortId, FlowKey, Dscp) {
        let addrs = addresses(v6);
        let proto = [IpProtocol::Tcp, IpProtocol::Udp, IpProtocol::Icmp, IpProtocol::Gre][proto];
        let key = FlowKey::new(addrs[src % addrs.len()], addrs[dst % addrs.len()], proto, sport, dport)
            .unwrap()
            .with_vlans(vlan.and_then(VlanId::new).map_or(VlanStack::EMPTY, VlanStack::single));
        (PortId::from_index(in_port), key, Dscp::new(dscp).unwrap())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn agrees_with_a_linear_scan(
        policies in proptest::collection::vec(any_policy(), 0..150),
        packets in proptest::collection::vec(any_packet(), 64),
    ) {
        let config = config_with(&policies);
        let classifier = Classifier::new(&config);
        for (in_port, key, dscp) in &packets {
            let input = ClassifyInput { in_port: *in_port, key, dscp: *dscp };
            let got = classifier.classify(&input);
            let want = linear(&config, &input);
            prop_assert_eq!(got.policy, want, "{}", key);
            let action = want.map_or(config.default_action(), |i| config.policies()[i].action);
            prop_assert_eq!(got.action, action);
        }
    }
}

extern crate std;

#[test]
fn highest_priority_wins_and_ties_go_to_the_first() {
    let web = Match {
        proto: Some(IpProtocol::Tcp),
        dst_ports: Some(PortRange::single(80)),
        ..Match::default()
    };
    let policies = [
        Policy {
            priority: 1,
            matches: Match::default(),
            action: PolicyAction::Drop,
        },
        Policy {
            priority: 5,
            matches: web,
            action: PolicyAction::Bypass,
        },
        Policy {
            priority: 5,
            matches: Match {
                dst: Some(pfx("10.0.0.0", 8)),
                ..web
            },
            action: PolicyAction::Drop,
        },
        Policy {
            priority: 9,
            matches: Match {
                src: Some(pfx("2001:db8::", 32)),
                ..Match::default()
            },
            action: PolicyAction::Chain(chaingate_shared::ChainId::from_index(0)),
        },
    ];
    let config = config_with(&policies);
    let c = Classifier::new(&config);
    let classify = |src: &str, dst: &str, dport| {
        let key = FlowKey::new(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            IpProtocol::Tcp,
            40000,
            dport,
        )
        .unwrap();
        c.classify(&ClassifyInput {
            in_port: PortId::from_index(0),
            key: &key,
            dscp: Dscp::new(0).unwrap(),
        })
        .policy
    };
    assert_eq!(
        classify("10.1.1.1", "10.2.2.2", 80),
        Some(1),
        "tie at 5: the first configured"
    );
    assert_eq!(classify("10.1.1.1", "10.2.2.2", 81), Some(0));
    assert_eq!(
        classify("2001:db8::5", "2001:db8::6", 80),
        Some(3),
        "the v6 policy outranks"
    );
    assert_eq!(
        classify("2001:db9::5", "2001:db8::6", 80),
        Some(1),
        "v4 prefix never matches v6"
    );
}

#[test]
fn no_match_takes_the_default_action() {
    let config = config_with(&[Policy {
        priority: 1,
        matches: Match {
            vlan: VlanId::new(10),
            ..Match::default()
        },
        action: PolicyAction::Drop,
    }]);
    let c = Classifier::new(&config);
    let key = FlowKey::v4(
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::LOCALHOST,
        IpProtocol::Udp,
        1,
        2,
    );
    let got = c.classify(&ClassifyInput {
        in_port: PortId::from_index(1),
        key: &key,
        dscp: Dscp::new(0).unwrap(),
    });
    assert_eq!(
        got,
        Classification {
            action: PolicyAction::Bypass,
            policy: None
        }
    );
    let key6 = FlowKey::v6(
        Ipv6Addr::LOCALHOST,
        Ipv6Addr::LOCALHOST,
        IpProtocol::Udp,
        1,
        2,
    )
    .with_vlans(VlanStack::single(VlanId::new(10).unwrap()));
    let got = c.classify(&ClassifyInput {
        in_port: PortId::from_index(1),
        key: &key6,
        dscp: Dscp::new(0).unwrap(),
    });
    assert_eq!(got.policy, Some(0));
}
