//! The daemon sets rte_flow up in DPDK's order: `rte_flow_configure` while
//! the ports are configured and stopped, then the ports start.
//!
//! ethdev (`lib/ethdev/rte_flow.c`) checks that a port is stopped before
//! it asks the driver, so the answer a virtual device gives tells which
//! check refused: net_tap has flow ops but no `configure` of its own, and
//! answers ENOTSUP once the call reaches it; on a started port ethdev
//! answers EINVAL ("already started") first. The daemon's order must get
//! the driver's answer; the same call after the start gets ethdev's.
//!
//! net_tap makes a tap interface (root); EAL starts once per process, so
//! this file holds one test.

#![cfg(feature = "dpdk")]

use chaingate_fastpath::offload::FlowOffload;
use dpu_fw::config::RuntimeConfig;
use dpu_fw::daemon::{self, Chosen};
use dpu_fw::dpdk::{DpdkFlow, Eal};

fn root() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    assert!(
        root || std::env::var_os("CHAINGATE_REQUIRE_NETNS").is_none(),
        "net_tap needs root"
    );
    root
}

#[test]
fn rte_flow_configure_reaches_the_driver_before_the_ports_start() {
    if !root() {
        eprintln!("skipped: net_tap needs root");
        return;
    }
    let id = std::process::id() % 100_000;
    let prefix = format!("cgorder{id}");
    let runtime = RuntimeConfig::parse(&format!(
        "ports:\n  - {{ name: lan, io: 'dpdk:net_tap0', role: lan }}\n  - {{ name: wan, io: 'dpdk:net_tap1', role: wan }}\n\
         sessions: 1024\noffload: {{ backend: rte_flow, capacity: 4096 }}\n\
         dpdk: {{ eal: ['--no-huge', '--no-pci', '--no-shconf', '--no-telemetry', '-m', '256', '-l', '0',\
         '--log-level=lib.eal:error', '--file-prefix={prefix}', '--vdev=net_tap0,iface=cgA{id}',\
         '--vdev=net_tap1,iface=cgB{id}'] }}"
    ))
    .unwrap();
    let _files = RuntimeFiles(prefix);
    let (ports, chosen) = daemon::prepare(&runtime).expect("net_tap ports");
    let Chosen::RteFlow(flow) = &chosen else {
        panic!("the rte_flow backend: {chosen:?}");
    };
    let answers = flow.proxies();
    assert_eq!(answers.len(), 2, "each tap port is its own switch");
    for (port, answer) in &answers {
        let e = answer
            .clone()
            .expect("configure was called")
            .expect_err("net_tap has no template API");
        assert_eq!(
            e.errno.0,
            libc::ENOTSUP,
            "port {port}: the driver answered, so the port was stopped: {e}"
        );
    }
    assert!(!flow.template_api());
    // The same call on the started ports: ethdev refuses before the driver.
    let mut late = DpdkFlow::new(ports.dpdk_ids.clone(), 16).unwrap();
    let _ = late.configure(&daemon::port_attr(&runtime));
    for (port, answer) in late.proxies() {
        let e = answer.expect("called").expect_err("refused");
        assert_eq!(e.errno.0, libc::EINVAL, "port {port}: {e}");
    }
    drop(late);
    drop(chosen);
    drop(ports);
    Eal::cleanup();
}

/// Removes EAL's run-time files when the test ends, however it ends.
struct RuntimeFiles(String);

impl Drop for RuntimeFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Eal::runtime_dir(&self.0));
    }
}
