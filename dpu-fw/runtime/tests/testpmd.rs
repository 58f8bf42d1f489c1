//! `dpu-fw rules --testpmd` prints lines that dpdk-testpmd's own parser
//! takes: each is fed to dpdk-testpmd (DPDK 22.11, `--cmdline-file`, a
//! `net_ring` port, no hugepages), and each must reach the driver, which
//! on net_ring answers every flow call with ENOSYS: testpmd prints one
//! "Caught PMD error" per flow command its parser took, and nothing at all
//! for one it could not parse.
//!
//! A rule naming a shared counter (`indirect N`) cannot reach net_ring's
//! driver: the indirect action was never made there, and testpmd looks it
//! up first ("Failed to find indirect action #N", which shows that the
//! parser took the keyword and the number). The same line with `count` in
//! its place must then reach the driver, which checks the rest of it.
//!
//! A VXLAN encapsulation is a `set vxlan` line before its rule. testpmd
//! answers nothing to it, parsed or not (it only stores the headers for
//! the next `vxlan_encap`), so here only the rule after it is checked;
//! the line's words are those of testpmd's `set vxlan` help.
//!
//! Needs `dpdk-testpmd` (Debian's `dpdk` package, which ci/test installs)
//! and root; steps aside without them unless CHAINGATE_REQUIRE_DPDK is set.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

use chaingate_fastpath::offload::rule::{
    EthFields, Ipv4Fields, Spec, TcpFields, UdpFields, VlanFields, VxlanFields,
};
use chaingate_fastpath::offload::testpmd::{Names, write_rule};
use chaingate_fastpath::offload::{Action, CounterId, EncapId, Item, Rule, VxlanTunnel};
use chaingate_fastpath::wire::EthernetAddress;
use chaingate_shared::{PortId, VlanId};

fn dpu_fw(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dpu-fw"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "{}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

/// Every shape the generator makes: a chain (tagged and untagged
/// customers, TCP, UDP, ICMP echo, IPv6), a bypass, a drop.
const SHAPES: &str = "
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
  - { priority: 60, match: { protocol: udp, dst_ports: 53 }, action: bypass }
  - { priority: 50, match: { protocol: 47 }, action: drop }
  - { priority: 40, match: { vlan: 10 }, action: { chain: web } }
  - { priority: 30, match: { src: '2001:db8::/32' }, action: { chain: web } }
  - { priority: 20, match: { protocol: udp }, action: { chain: web } }
  - { priority: 10, action: { chain: web } }
";

/// The rules of a chain hop to a service instance behind another DPU
/// over a VXLAN underlay (port 0 the underlay, 1 and 2 VFs), as the fast
/// path prints them: (a) into a remote instance, (b) a session coming back
/// from one (eight items), (c) out to one.
fn vxlan_shapes() -> Vec<String> {
    let v4 = |src: u32, dst: u32| {
        Item::Ipv4(Spec::new(
            Ipv4Fields {
                src,
                dst,
                ..Ipv4Fields::default()
            },
            Ipv4Fields {
                src: u32::MAX,
                dst: u32::MAX,
                ..Ipv4Fields::default()
            },
        ))
    };
    let tcp = Item::Tcp(Spec::new(
        TcpFields {
            src_port: 40_000,
            dst_port: 443,
            flags: 0,
        },
        TcpFields {
            src_port: 0xFFFF,
            dst_port: 0xFFFF,
            flags: 0x07,
        },
    ));
    let from_peer = [
        Item::RepresentedPort(PortId::from_index(0)),
        Item::Eth(Spec::default()),
        v4(0xC0A8_0001, 0xC0A8_0002),
        Item::Udp(Spec::new(
            UdpFields {
                src_port: 0,
                dst_port: 4789,
            },
            UdpFields {
                src_port: 0,
                dst_port: 0xFFFF,
            },
        )),
        Item::Vxlan(VxlanFields::exactly(100)),
    ];
    let flow = [
        Item::Eth(Spec::default()),
        v4(0x0A00_0001, 0xC633_6401),
        tcp,
    ];
    let vid = |v| Action::OfSetVlanVid(VlanId::new(v).unwrap());
    let rule = |items: &[Item], actions: &[Action]| {
        let mut r = Rule::transfer(1, 1);
        for i in items {
            r.item(*i).unwrap();
        }
        for a in actions {
            r.action(*a).unwrap();
        }
        r
    };
    let a = rule(
        &from_peer,
        &[
            Action::VxlanDecap,
            Action::OfPushVlan(0x8100),
            vid(7),
            Action::RepresentedPort(PortId::from_index(1)),
        ],
    );
    let b_items: Vec<Item> = from_peer.iter().chain(&flow).copied().collect();
    let b = rule(
        &b_items,
        &[
            Action::VxlanDecap,
            Action::SharedCount(CounterId(1)),
            Action::OfPushVlan(0x8100),
            vid(9),
            Action::RepresentedPort(PortId::from_index(2)),
        ],
    );
    let tagged = |has_vlan| EthFields {
        has_vlan,
        ..EthFields::default()
    };
    let c_items = [
        Item::RepresentedPort(PortId::from_index(2)),
        Item::Eth(Spec::new(tagged(true), tagged(true))),
        Item::Vlan(Spec::new(
            VlanFields {
                tci: 9,
                inner_type: 0x0800,
                has_more_vlan: false,
            },
            VlanFields {
                tci: 0x0FFF,
                inner_type: 0xFFFF,
                has_more_vlan: false,
            },
        )),
        v4(0x0A00_0001, 0xC633_6401),
        tcp,
    ];
    let c = rule(
        &c_items,
        &[
            Action::OfPopVlan,
            Action::Count,
            Action::VxlanEncap(EncapId(0)),
            Action::RepresentedPort(PortId::from_index(0)),
        ],
    );
    let port = |p: PortId| u16::try_from(p.index()).unwrap();
    let encap = |_| {
        Some(VxlanTunnel {
            dst_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            src_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            src: 0xC0A8_0002,
            dst: 0xC0A8_0001,
            src_port: 49_152,
            vni: 200,
            ttl: 64,
        })
    };
    let names = Names {
        port: &port,
        encap: &encap,
    };
    let mut out = String::new();
    for r in [a, b, c] {
        write_rule(&mut out, &r, &names).unwrap();
    }
    out.lines().map(str::to_owned).collect()
}

/// What testpmd must print for each line, in order.
enum Expect {
    /// The driver's refusal: the line parsed.
    Driver,
    /// The indirect action's look-up: parsed up to `indirect N`.
    NoIndirect(u32),
}

fn testpmd() -> Option<&'static str> {
    let present = Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    // SAFETY-free root check: testpmd's EAL needs it.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if present && root {
        return Some("dpdk-testpmd");
    }
    assert!(
        std::env::var_os("CHAINGATE_REQUIRE_DPDK").is_none(),
        "dpdk-testpmd is needed (present: {present}, root: {root})"
    );
    eprintln!("skipped: needs dpdk-testpmd and root");
    None
}

/// Feeds `lines` to testpmd and checks each one's answer.
fn replay(testpmd: &str, lines: &[String]) {
    let mut file = String::new();
    let mut expect = Vec::new();
    for line in lines {
        if line.starts_with("set ") {
            // `set vxlan ...` stores the headers of the next vxlan_encap
            // and answers nothing either way.
            file.push_str(line);
            file.push('\n');
            continue;
        }
        let indirect = line
            .split_once(" indirect ")
            .and_then(|(_, rest)| rest.split(' ').next()?.parse::<u32>().ok());
        file.push_str(line);
        file.push('\n');
        match indirect {
            Some(n) => {
                expect.push(Expect::NoIndirect(n));
                let _ = writeln!(file, "{}", line.replace(&format!("indirect {n}"), "count"));
                expect.push(Expect::Driver);
            }
            None => expect.push(Expect::Driver),
        }
    }
    let dir = std::env::temp_dir().join(format!("cg-testpmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cmds = dir.join("rules.testpmd");
    std::fs::write(&cmds, &file).unwrap();
    let prefix = format!("cgtestpmd{}", std::process::id());
    let out = Command::new("timeout")
        .args(["120", testpmd])
        .args([
            "--no-huge",
            "--no-pci",
            "--no-shconf",
            "-m",
            "512",
            "--lcores=0@0,1@0",
            "--log-level=lib.eal:error",
            "--no-telemetry",
            "--vdev=net_ring0",
        ])
        .arg(format!("--file-prefix={prefix}"))
        .arg("--")
        .arg(format!("--cmdline-file={}", cmds.display()))
        .args(["-i", "--no-mlockall", "--total-num-mbufs=2048"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "testpmd failed: {stderr}");
    let answers: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Caught PMD error") || l.contains("Failed to find indirect action"))
        .collect();
    assert_eq!(
        answers.len(),
        expect.len(),
        "one answer per line; a line testpmd could not parse has none.\n{stderr}"
    );
    for (i, (answer, want)) in answers.iter().zip(&expect).enumerate() {
        match want {
            Expect::Driver => assert!(
                answer.contains("Caught PMD error") && answer.contains("Function not implemented"),
                "command {i} did not reach the driver: {answer}"
            ),
            Expect::NoIndirect(n) => assert!(
                answer.contains(&format!("Failed to find indirect action #{n} on port 0")),
                "command {i}: {answer}"
            ),
        }
    }
}

#[test]
fn every_printed_rule_is_a_command_testpmd_parses() {
    let Some(testpmd) = testpmd() else { return };
    // The web chain under the mlx5 profile (what a BlueField gets), and
    // every shape the generator makes under the generic one (mlx5 refuses
    // some: IPv6 5-tuples, two VLAN items).
    let (web, summary) = dpu_fw(&[
        "rules",
        "samples/gateway.yaml",
        "--sessions",
        "4",
        "--testpmd",
    ]);
    assert!(summary.contains("4 offloaded"), "{summary}");
    let dir = std::env::temp_dir().join(format!("cg-shapes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shapes_file = dir.join("shapes.yaml");
    std::fs::write(&shapes_file, SHAPES).unwrap();
    let (shapes, summary) = dpu_fw(&[
        "rules",
        shapes_file.to_str().unwrap(),
        "--sessions",
        "12",
        "--profile",
        "generic",
        "--testpmd",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(summary.contains("refused: none"), "{summary}");
    let lines: Vec<String> = web
        .lines()
        .chain(shapes.lines())
        .map(str::to_owned)
        .chain(vxlan_shapes())
        .collect();
    for needle in [
        "flow indirect_action 0 create",
        "actions jump group 1",
        "of_push_vlan ethertype 0x8100 / of_set_vlan_vid",
        "of_pop_vlan / age timeout",
        "ipv6 src is 2001:db8::",
        "udp src is",
        "actions age timeout 30 / drop",
        "vlan tci spec 0xa tci mask 0xfff",
        "ipv4 src is 10.0.0.1 dst is 198.51.100.1 proto is 47",
        "udp dst is 4789 / vxlan vni is 100 / end actions vxlan_decap / of_push_vlan",
        "vxlan vni is 100 / eth / ipv4 src is 10.0.0.1 dst is 198.51.100.1 / tcp src is 40000",
        "set vxlan ip-version ipv4 vni 200",
        "of_pop_vlan / count / vxlan_encap / represented_port ethdev_port_id 0",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "no printed rule has {needle:?}"
        );
    }
    assert!(
        lines.iter().all(|l| l.len() <= 512),
        "testpmd reads at most 512 characters a line"
    );
    replay(testpmd, &lines);
}
