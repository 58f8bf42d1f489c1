use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::dpu::instance::Attachment as PbAttachment;
use crate::dpu::policy_action::Action;

fn port(name: &str, role: dpu::PortRole) -> dpu::Port {
    dpu::Port {
        name: name.into(),
        role: role.into(),
    }
}

fn service(name: &str) -> dpu::Service {
    dpu::Service {
        name: name.into(),
        capacity_bps: 1_000_000_000,
        scaling: None,
        fail: 0,
    }
}

fn instance(name: &str, service: &str, vf: &str) -> dpu::Instance {
    dpu::Instance {
        name: name.into(),
        service: service.into(),
        attachment: Some(PbAttachment::Port(vf.into())),
        state: 0,
        weight: 0,
    }
}

fn chain_action(name: &str) -> dpu::PolicyAction {
    dpu::PolicyAction {
        action: Some(Action::Chain(name.into())),
    }
}

/// Two uplinks, three VFs, two services with an instance each (one on a
/// pair), a chain through both, a policy for TCP from 10/8.
fn valid() -> dpu::Config {
    dpu::Config {
        generation: 3,
        underlay: None,
        peers: vec![],
        prefer_local: false,
        ports: vec![
            port("lan", dpu::PortRole::Lan),
            port("wan", dpu::PortRole::Wan),
            port("vf0", dpu::PortRole::Vf),
            port("vf1", dpu::PortRole::Vf),
            port("vf2", dpu::PortRole::Vf),
        ],
        services: vec![service("fw"), service("nat")],
        instances: vec![
            instance("fw-0", "fw", "vf0"),
            dpu::Instance {
                attachment: Some(PbAttachment::Pair(dpu::PortPair {
                    ingress: "vf1".into(),
                    egress: "vf2".into(),
                })),
                ..instance("nat-0", "nat", "")
            },
        ],
        chains: vec![dpu::Chain {
            name: "web".into(),
            services: vec!["fw".into(), "nat".into()],
        }],
        policies: vec![dpu::Policy {
            priority: 10,
            r#match: Some(dpu::Match {
                src: Some("10.0.0.0/8".into()),
                protocol: Some(6),
                dst_ports: Some(dpu::PortRange { lo: 80, hi: 443 }),
                ..dpu::Match::default()
            }),
            action: Some(chain_action("web")),
        }],
        default_action: None,
        segment_base: 0,
    }
}

fn error(msg: &dpu::Config) -> String {
    Config::try_from(msg).unwrap_err().to_string()
}

#[test]
fn a_valid_message_converts_with_names_resolved() {
    let c = Config::try_from(valid()).unwrap();
    assert_eq!(c.generation(), Generation(3));
    assert_eq!(c.ports().len(), 5);
    let nat = c
        .instance(chaingate_shared::InstanceId::from_index(1))
        .unwrap();
    assert_eq!(
        nat.attachment(),
        Attachment::Pair {
            ingress: PortId::from_index(3),
            egress: PortId::from_index(4)
        }
    );
    assert_eq!(nat.weight(), 1, "unset weight is 1");
    assert_eq!(nat.state(), InstanceState::Active, "unset state is active");
    let p = c.policies()[0];
    assert_eq!(p.action, PolicyAction::Chain(ChainId::from_index(0)));
    assert_eq!(p.matches.proto, Some(IpProtocol::Tcp));
    assert_eq!(p.matches.dst_ports, PortRange::new(80, 443));
    assert_eq!(c.default_action(), PolicyAction::Bypass);
    assert_eq!(c.services()[0].scaling(), &Scaling::default());
}

#[test]
fn every_mistake_names_its_field() {
    type Mutation = fn(&mut dpu::Config);
    let cases: Vec<(Mutation, &str)> = vec![
        (
            |m| m.ports[2].role = 0,
            "ports[2].role: must be lan, wan, vf or underlay",
        ),
        (|m| m.ports[2].role = 9, "ports[2].role: unknown value 9"),
        (
            |m| m.ports[3].name = "vf0".into(),
            "ports[3].name: another item has this name",
        ),
        (
            |m| m.ports[1].name = "bad name".into(),
            "ports[1].name: name must start",
        ),
        (|m| m.ports.remove(1).name.clear(), "ports: no wan uplink"),
        (
            |m| m.services[1].capacity_bps = 0,
            "services[1].capacity_bps: must be above 0",
        ),
        (
            |m| {
                m.services[0].scaling = Some(dpu::Scaling {
                    min_instances: 1,
                    max_instances: 2,
                    scale_out_permille: 1200,
                    ..dpu::Scaling::default()
                });
            },
            "services[0].scaling.scale_out_permille: must be 0 to 1000",
        ),
        (
            |m| m.services[0].fail = 5,
            "services[0].fail: unknown value 5",
        ),
        (
            |m| m.instances[0].service = "ids".into(),
            "instances[0].service: no service named \"ids\"",
        ),
        (
            |m| m.instances[0].attachment = Some(PbAttachment::Port("vf9".into())),
            "instances[0].attachment.port: no port named \"vf9\"",
        ),
        (
            |m| m.instances[0].attachment = Some(PbAttachment::Port("lan".into())),
            "instances[0].attachment.port: port \"lan\" is not a VF",
        ),
        (
            |m| m.instances[1].attachment = Some(PbAttachment::Port("vf0".into())),
            "instances[1].attachment.port: port \"vf0\" is already attached to instance \"fw-0\"",
        ),
        (
            |m| m.instances[0].attachment = None,
            "instances[0].attachment: missing",
        ),
        (
            |m| m.instances[1].name = "fw-0".into(),
            "instances[1].name: another item has this name",
        ),
        (
            |m| m.instances[0].weight = 70_000,
            "instances[0].weight: must be 1 to 65535",
        ),
        (
            |m| m.chains[0].services[1] = "ids".into(),
            "chains[0].services[1]: no service named \"ids\"",
        ),
        (
            |m| m.chains[0].services.clear(),
            "chains[0].services: a chain needs at least one service",
        ),
        (
            |m| m.policies[0].action = Some(chain_action("mail")),
            "policies[0].action.chain: no chain named \"mail\"",
        ),
        (
            |m| m.policies[0].action = None,
            "policies[0].action: missing",
        ),
        (
            |m| m.policies[0].r#match.as_mut().unwrap().src = Some("10.0.0.1/8".into()),
            "policies[0].match.src: \"10.0.0.1/8\": host bits set",
        ),
        (
            |m| m.policies[0].r#match.as_mut().unwrap().dst = Some("ten".into()),
            "policies[0].match.dst: \"ten\" is not an IPv4 or IPv6 prefix",
        ),
        (
            |m| m.policies[0].r#match.as_mut().unwrap().dst = Some("2001:db8::/32".into()),
            "policies[0].match.dst: source and destination are of different families",
        ),
        (
            |m| m.policies[0].r#match.as_mut().unwrap().protocol = Some(1),
            "policies[0].match.dst_ports: port ranges need protocol",
        ),
        (
            |m| m.policies[0].r#match.as_mut().unwrap().protocol = Some(300),
            "policies[0].match.protocol: must be 0 to 255",
        ),
        (
            |m| {
                m.policies[0].r#match.as_mut().unwrap().src_ports =
                    Some(dpu::PortRange { lo: 9, hi: 8 });
            },
            "policies[0].match.src_ports: must be lo <= hi",
        ),
        (
            |m| m.policies[0].r#match.as_mut().unwrap().vlan = Some(4095),
            "policies[0].match.vlan: must be 1 to 4094",
        ),
        (
            |m| m.policies[0].r#match.as_mut().unwrap().dscp = Some(64),
            "policies[0].match.dscp: must be 0 to 63",
        ),
        (
            |m| m.policies[0].r#match.as_mut().unwrap().in_port = Some("eth9".into()),
            "policies[0].match.in_port: no port named \"eth9\"",
        ),
        (
            |m| m.default_action = Some(chain_action("mail")),
            "default_action.chain: no chain named \"mail\"",
        ),
        (|m| m.segment_base = 4095, "segment_base: must be 1 to 4094"),
        (
            |m| m.segment_base = 4092,
            "segment_base: the chains need 4 segment tags (two per hop, and as many again per peer) from VLAN 4092",
        ),
    ];
    for (n, (mutate, expected)) in cases.into_iter().enumerate() {
        let mut m = valid();
        mutate(&mut m);
        let got = error(&m);
        assert!(
            got.starts_with(expected),
            "case {n}: expected {expected:?}, got {got:?}"
        );
    }
}

#[test]
fn prefixes_take_an_address_alone_as_a_host() {
    assert_eq!(parse_prefix("10.1.2.3").unwrap().len(), 32);
    assert_eq!(parse_prefix("2001:db8::1").unwrap().len(), 128);
    assert_eq!(parse_prefix(" 10.0.0.0 / 8 ").unwrap().len(), 8);
    assert!(parse_prefix("10.0.0.0/33").is_err());
    assert!(parse_prefix("10.0.0.0/x").is_err());
}

fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z]{1,3}",
        Just("lan".to_owned()),
        Just("vf0".to_owned()),
        Just("fw".to_owned()),
        Just("web".to_owned()),
        ".{0,70}",
    ]
}

prop_compose! {
    fn any_match()(
        in_port in proptest::option::of(any_name()),
        vlan in proptest::option::of(any::<u32>()),
        src in proptest::option::of(prop_oneof!["10.0.0.0/8", ".{0,20}", "[0-9a-f:./]{0,20}"]),
        dst in proptest::option::of(prop_oneof!["::/0", ".{0,20}"]),
        protocol in proptest::option::of(prop_oneof![Just(6u32), Just(17), any::<u32>()]),
        lo in any::<u32>(), hi in any::<u32>(), ports in any::<bool>(),
        dscp in proptest::option::of(any::<u32>()),
    ) -> dpu::Match {
        dpu::Match {
            in_port, vlan, src, dst, protocol,
            src_ports: ports.then_some(dpu::PortRange { lo, hi }),
            dst_ports: (!ports).then_some(dpu::PortRange { lo: hi, hi: lo }),
            dscp,
        }
    }
}

prop_compose! {
    fn any_config()(
        generation in any::<u64>(),
        ports in proptest::collection::vec((any_name(), -1i32..5), 0..8),
        services in proptest::collection::vec((any_name(), any::<u64>(), proptest::option::of(any::<(u32, u32, u32, u32)>()), -1i32..4), 0..4),
        instances in proptest::collection::vec((any_name(), any_name(), any_name(), proptest::option::of(any_name()), -1i32..5, any::<u32>()), 0..6),
        chains in proptest::collection::vec((any_name(), proptest::collection::vec(any_name(), 0..10)), 0..3),
        policies in proptest::collection::vec((any::<u32>(), proptest::option::of(any_match()), proptest::option::of(any_name()), 0u8..4), 0..4),
        segment_base in prop_oneof![Just(0u32), any::<u32>()],
    ) -> dpu::Config {
        dpu::Config {
            generation,
            underlay: None,
            peers: vec![],
            prefer_local: false,
            ports: ports.into_iter().map(|(name, role)| dpu::Port { name, role }).collect(),
            services: services.into_iter().map(|(name, capacity_bps, sc, fail)| dpu::Service {
                name,
                capacity_bps,
                scaling: sc.map(|(a, b, c, d)| dpu::Scaling {
                    min_instances: a % 8, max_instances: b % 80, scale_out_permille: c, scale_in_permille: d,
                    hold_ms: a, cooldown_ms: b, drain_timeout_ms: c,
                }),
                fail,
            }).collect(),
            instances: instances.into_iter().map(|(name, service, a, b, state, weight)| dpu::Instance {
                name,
                service,
                attachment: Some(match b {
                    None => PbAttachment::Port(a),
                    Some(b) => PbAttachment::Pair(dpu::PortPair { ingress: a, egress: b }),
                }),
                state,
                weight,
            }).collect(),
            chains: chains.into_iter().map(|(name, services)| dpu::Chain { name, services }).collect(),
            policies: policies.into_iter().map(|(priority, r#match, chain, kind)| dpu::Policy {
                priority,
                r#match,
                action: match kind {
                    0 => None,
                    1 => Some(dpu::PolicyAction { action: Some(Action::Bypass(dpu::Bypass {})) }),
                    2 => Some(dpu::PolicyAction { action: Some(Action::Drop(dpu::Drop {})) }),
                    _ => chain.map(|c| chain_action(&c)),
                },
            }).collect(),
            default_action: None,
            segment_base,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    /// Arbitrary messages convert or fail with a path; never a panic.
    #[test]
    fn arbitrary_messages_never_panic(msg in any_config()) {
        match Config::try_from(&msg) {
            Ok(c) => prop_assert_eq!(c.ports().len(), msg.ports.len()),
            Err(e) => prop_assert!(!e.path.is_empty() && !e.message.is_empty(), "{e:?}"),
        }
    }

    /// Arbitrary bytes, decoded as a message when they decode, too.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(msg) = dpu::Config::decode(bytes.as_slice()) {
            let _ = Config::try_from(&msg);
        }
    }

    /// A valid message with one item's reference swapped for an unknown
    /// name fails, and says which.
    #[test]
    fn dangling_references_are_named(which in 0usize..4, name in "[a-z]{1,8}") {
        prop_assume!(!["lan", "wan", "vf0", "vf1", "vf2", "fw", "nat", "web"].contains(&name.as_str()));
        let mut m = valid();
        let path = match which {
            0 => { m.instances[0].service = name.clone(); "instances[0].service" }
            1 => { m.instances[0].attachment = Some(PbAttachment::Port(name.clone())); "instances[0].attachment.port" }
            2 => { m.chains[0].services[0] = name.clone(); "chains[0].services[0]" }
            _ => { m.policies[0].action = Some(chain_action(&name)); "policies[0].action.chain" }
        };
        let e = Config::try_from(&m).unwrap_err();
        prop_assert_eq!(e.path, path);
        prop_assert!(e.message.contains(&name));
    }
}

#[test]
fn an_underlay_with_peers_and_remote_instances_converts() {
    let mut m = valid();
    m.ports.push(port("ul", dpu::PortRole::Underlay));
    m.underlay = Some(dpu::Underlay {
        address: "10.9.0.1".into(),
        mac: "02:00:00:09:00:01".into(),
        mtu: 9000,
    });
    m.peers.push(dpu::Peer {
        name: "b".into(),
        address: "10.9.0.2".into(),
        mac: "02:00:00:09:00:02".into(),
    });
    m.instances.push(dpu::Instance {
        attachment: Some(PbAttachment::Remote(dpu::RemoteAttachment {
            peer: "b".into(),
            slot: 4,
        })),
        ..instance("fw-b", "fw", "")
    });
    let c = Config::try_from(&m).unwrap();
    let u = c.underlay().unwrap();
    assert_eq!((u.addr.to_string(), u.mtu), ("10.9.0.1".into(), 9000));
    assert_eq!(u.mac, [2, 0, 0, 9, 0, 1]);
    assert_eq!(c.peers()[0].mac(), [2, 0, 0, 9, 0, 2]);
    let remote = c
        .instances()
        .iter()
        .find(|i| i.name().as_str() == "fw-b")
        .unwrap();
    assert!(remote.attachment().is_remote());

    for (change, path, message) in [
        (
            (|m: &mut dpu::Config| m.peers[0].mac = "02:00:00:09:00".into())
                as fn(&mut dpu::Config),
            "peers[0].mac",
            "\"02:00:00:09:00\" is not a MAC (aa:bb:cc:dd:ee:ff)",
        ),
        (
            |m| m.underlay.as_mut().unwrap().address = "10.9.0".into(),
            "underlay.address",
            "\"10.9.0\" is not an IPv4 address",
        ),
        (
            |m| {
                if let Some(PbAttachment::Remote(r)) = &mut m.instances[2].attachment {
                    r.peer = "c".into();
                }
            },
            "instances[2].attachment.remote.peer",
            "no peer named \"c\"",
        ),
        (
            |m| {
                if let Some(PbAttachment::Remote(r)) = &mut m.instances[2].attachment {
                    r.slot = 256;
                }
            },
            "instances[2].attachment.remote.slot",
            "must be 0 to 255",
        ),
        (
            |m| m.ports.retain(|p| p.name != "ul"),
            "underlay",
            "no underlay is configured (a port with role underlay and its address)",
        ),
    ] {
        let mut bad = m.clone();
        change(&mut bad);
        let e = Config::try_from(&bad).unwrap_err();
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            (path, message),
            "{e}"
        );
    }
}
