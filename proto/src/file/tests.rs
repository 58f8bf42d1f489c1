use super::*;

const GOOD: &str = "
ports:
  - { name: lan, role: lan }
  - { name: wan, role: wan }
  - { name: vf0, role: vf }
  - { name: vf1, role: vf }
  - { name: vf2, role: vf }
services:
  - name: firewall
    capacity: 10Gbit
    scaling: { min: 1, max: 4, scale_out_at: 80%, scale_in_at: 0.25, hold: 1.5s, cooldown: 10s, drain_timeout: 1m }
    fail: closed
  - { name: nat, capacity: 2500000 }
instances:
  - { name: fw-0, service: firewall, port: vf0 }
  - { name: nat-0, service: nat, ingress: vf1, egress: vf2, state: draining, weight: 3 }
chains:
  - { name: web, services: [firewall, nat] }
policies:
  - priority: 100
    match: { in_port: lan, src: 10.0.0.0/8, protocol: tcp, dst_ports: 80-443, dscp: 46, vlan: 7 }
    action: { chain: web }
  - { priority: 5, match: { protocol: 17, src_ports: 53 }, action: drop }
default_action: bypass
";

#[test]
fn a_full_file_becomes_the_message_it_says() {
    let (_, m) = load(GOOD, 9).unwrap();
    assert_eq!(m.generation, 9, "no generation in the file: the caller's");
    let fw = &m.services[0];
    assert_eq!(fw.capacity_bps, 10_000_000_000);
    let sc = fw.scaling.unwrap();
    assert_eq!(
        (
            sc.scale_out_permille,
            sc.scale_in_permille,
            sc.hold_ms,
            sc.drain_timeout_ms
        ),
        (800, 250, 1500, 60_000)
    );
    assert_eq!(fw.fail, i32::from(dpu::FailMode::Closed));
    assert_eq!(m.services[1].capacity_bps, 2_500_000);
    assert_eq!(
        m.services[1].scaling.unwrap().max_instances,
        4,
        "defaults for what is left out"
    );
    let nat = &m.instances[1];
    assert_eq!(
        nat.attachment,
        Some(dpu::instance::Attachment::Pair(dpu::PortPair {
            ingress: "vf1".into(),
            egress: "vf2".into()
        }))
    );
    assert_eq!(
        (nat.state, nat.weight),
        (i32::from(dpu::InstanceState::Draining), 3)
    );
    let web = m.policies[0].r#match.as_ref().unwrap();
    assert_eq!(web.protocol, Some(6));
    assert_eq!(web.dst_ports, Some(dpu::PortRange { lo: 80, hi: 443 }));
    assert_eq!((web.vlan, web.dscp), (Some(7), Some(46)));
    let dns = m.policies[1].r#match.as_ref().unwrap();
    assert_eq!(dns.src_ports, Some(dpu::PortRange { lo: 53, hi: 53 }));
    assert_eq!(
        m.default_action.unwrap().action,
        Some(dpu::policy_action::Action::Bypass(dpu::Bypass {}))
    );
    let generation = load(&format!("generation: 4\n{GOOD}"), 9)
        .unwrap()
        .1
        .generation;
    assert_eq!(generation, 4, "the file's own generation wins");
}

fn err(text: &str) -> (String, String) {
    let e = load(text, 1).unwrap_err();
    (e.path().to_owned(), e.to_string())
}

#[test]
fn unknown_fields_and_bad_values_name_their_path() {
    let cases = [
        (
            GOOD.replace("capacity: 10Gbit", "capcity: 10Gbit"),
            "services[0].capcity",
            "unknown field `capcity`",
        ),
        (
            GOOD.replace("default_action: bypass", "default_actoin: bypass"),
            "default_actoin",
            "unknown field `default_actoin`",
        ),
        (
            GOOD.replace("hold: 1.5s", "hold: 2"),
            "services[0].scaling.hold",
            "durations need a unit",
        ),
        (
            GOOD.replace("capacity: 10Gbit", "capacity: 10Gbyte"),
            "services[0].capacity",
            "use a unit of bit",
        ),
        (
            GOOD.replace("scale_out_at: 80%", "scale_out_at: 180%"),
            "services[0].scaling.scale_out_at",
            "fraction from 0 to 1",
        ),
        (
            GOOD.replace("protocol: tcp", "protocol: tpc"),
            "policies[0].match.protocol",
            "use tcp, udp",
        ),
        (
            GOOD.replace("dst_ports: 80-443", "dst_ports: 443-80"),
            "policies[0].match.dst_ports",
            "the range is empty",
        ),
        (
            GOOD.replace("role: wan", "role: uplink"),
            "ports[1].role",
            "unknown variant `uplink`",
        ),
        (
            GOOD.replace("action: drop", "action: reject"),
            "policies[1].action",
            "unknown action `reject`",
        ),
        (
            GOOD.replace("port: vf0", "port: vf7"),
            "instances[0].port",
            "no port named \"vf7\"",
        ),
        (
            GOOD.replace("ingress: vf1", "ingress: vf0"),
            "instances[1].ingress",
            "port \"vf0\" is already attached to instance \"fw-0\"",
        ),
        (
            GOOD.replace("port: vf0", "port: vf0, ingress: vf1"),
            "instances[0]",
            "one of port, ingress and egress, or remote",
        ),
        (
            GOOD.replace(
                "{ name: nat, capacity: 2500000 }",
                "{ name: nat, capacity: 0 }",
            ),
            "services[1].capacity",
            "must be above 0",
        ),
        (
            GOOD.replace("max: 4,", "max: 0,"),
            "services[0].scaling.max",
            "must be 1 to 64",
        ),
        (
            GOOD.replace("src: 10.0.0.0/8", "src: 10.0.0.0/40"),
            "policies[0].match.src",
            "prefix length above",
        ),
        (
            GOOD.replace("services: [firewall, nat]", "services: [firewall, ids]"),
            "chains[0].services[1]",
            "no service named \"ids\"",
        ),
        (
            "ports: [".to_owned(),
            "ports",
            "did not find expected node content at line 2",
        ),
    ];
    let mut wrong = Vec::new();
    for (text, path, message) in cases {
        let (got_path, got) = err(&text);
        if got_path != path || !got.contains(message) {
            wrong.push(format!("expected {path}: ...{message}..., got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn units_parse_exactly() {
    assert_eq!("1.5Gbit".parse::<Bandwidth>(), Ok(Bandwidth(1_500_000_000)));
    assert_eq!("800 kbps".parse::<Bandwidth>(), Ok(Bandwidth(800_000)));
    assert!("1e9".parse::<Bandwidth>().is_err());
    assert!("99999999999Tbit".parse::<Bandwidth>().is_err(), "overflow");
    assert_eq!("250ms".parse::<Millis>(), Ok(Millis(250)));
    assert_eq!("2m".parse::<Millis>(), Ok(Millis(120_000)));
    assert!("50d".parse::<Millis>().is_err());
    assert_eq!("12.5%".parse::<Fraction>(), Ok(Fraction(125)));
    assert_eq!("1".parse::<Fraction>(), Ok(Fraction(1000)));
    assert_eq!(
        "icmpv6".parse::<Protocol>(),
        Ok(Protocol(IpProtocol::Icmpv6))
    );
    assert_eq!("47".parse::<Protocol>(), Ok(Protocol(IpProtocol::Gre)));
    assert_eq!("0-65535".parse::<Ports>(), Ok(Ports(0, 65535)));
    assert!("70000".parse::<Ports>().is_err());
}
