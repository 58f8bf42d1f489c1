//! `chaingate` and `chaingate-agent` as an operator meets them: help that
//! helps, a socket only root can use, bad configurations refused with the
//! field path and line and nothing changed, tables and JSON, clear errors
//! for bad requests, and the Prometheus endpoint.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use chaingate_hw_tests::agent::{AgentProc, instances_in, monitor_gateway, service_binary};
use chaingate_hw_tests::topology::Topology;
use chaingate_hw_tests::{require_root, workspace_binary};
use serde_json::Value;

const NO_DPU: &str = "127.0.0.1:9";

fn gateway() -> String {
    monitor_gateway("2Gbit", "{ min: 1, max: 2 }")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn apply(agent: &AgentProc, name: &str, yaml: &str) -> std::process::Output {
    let file = agent.dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    agent.cli(&["apply", "-f", file.to_str().unwrap()])
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn help_says_what_each_command_does() {
    let out = Command::new(workspace_binary("chaingate-agent", "chaingate"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "apply",
        "status",
        "instances",
        "sessions",
        "scale",
        "drain",
        "events",
        "--json",
    ] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
    }
    let out = Command::new(workspace_binary("chaingate-agent", "chaingate-agent"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["--config", "check", "image", "--dpu"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // No agent: the CLI says where it looked.
    let out = Command::new(workspace_binary("chaingate-agent", "chaingate"))
        .args(["--socket", "/nonexistent/agent.sock", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the agent at /nonexistent/agent.sock"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_agent_config_is_refused_with_its_field() {
    let dir = std::env::temp_dir().join(format!("cg-agent-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("agent.yaml");
    std::fs::write(&file, "vfs:\n  - { port: vf0, netdev: a, tap: b }\n").unwrap();
    let out = Command::new(workspace_binary("chaingate-agent", "chaingate-agent"))
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("vfs[0]: give exactly one of pci, tap, netdev"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        &file,
        "vfs:\n  - { port: vf0, netdev: a }\nmetrics: 127.0.0.1:9464\n",
    )
    .unwrap();
    let out = Command::new(workspace_binary("chaingate-agent", "chaingate-agent"))
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("vf0 -> netdev a"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_operator_api_refuses_bad_requests_and_changes_nothing() {
    if !require_root() {
        return;
    }
    let mut topo = Topology::new().unwrap();
    let vfs: Vec<String> = (0..2)
        .map(|i| {
            format!(
                "{{ port: vf{i}, netdev: {} }}",
                topo.host_link(&format!("vf{i}")).unwrap().outer
            )
        })
        .collect();
    let agent = AgentProc::start(NO_DPU, &vfs, "").unwrap();
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the API socket is root's only");

    assert!(
        agent
            .cli_ok(&["status"])
            .contains("no configuration applied yet")
    );

    // A misspelt field: refused, with its path and line; nothing applied.
    let out = apply(
        &agent,
        "bad.yaml",
        &gateway().replace("capacity: 2Gbit", "capacty: 2Gbit"),
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("services[0]") && e.contains("capacty") && e.contains("line 6"),
        "{e}"
    );
    let status = agent.status();
    assert_eq!(status["configured"], false);
    assert_eq!(status["desired_generation"], 0);

    // Instances are the agent's to make; a service needs a launch.
    let out = apply(
        &agent,
        "inst.yaml",
        &format!(
            "{}instances:\n  - {{ name: x, service: mon, port: vf0 }}\n",
            gateway()
        ),
    );
    assert!(
        stderr(&out).contains("instances: the agent makes the instances itself"),
        "{}",
        stderr(&out)
    );
    let no_launch: String = gateway()
        .lines()
        .filter(|l| !l.contains("launch:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = apply(&agent, "nolaunch.yaml", &no_launch);
    assert!(
        stderr(&out).contains("services[0].launch: give process"),
        "{}",
        stderr(&out)
    );
    let out = apply(
        &agent,
        "chain.yaml",
        &gateway().replace("services: [mon]", "services: [nope]"),
    );
    assert!(stderr(&out).contains("chains[0]"), "{}", stderr(&out));
    assert_eq!(agent.status()["configured"], false);

    // A good one.
    let out = apply(&agent, "good.yaml", &gateway());
    assert!(out.status.success(), "{}", stderr(&out));
    let status = agent.wait_for("mon-0 active", Duration::from_secs(30), |s| {
        instances_in(s, "active") == ["mon-0"]
    });
    let generation = status["desired_generation"].clone();
    let table = agent.cli_ok(&["status"]);
    assert!(
        table.contains("SERVICE") && table.contains("2.0 Gbit/s") && table.contains("mon-0"),
        "{table}"
    );
    assert!(table.contains("not connected"), "{table}");

    // A bad one now leaves the good one in force.
    let out = apply(&agent, "bad2.yaml", &gateway().replace("max: 2", "max: -1"));
    assert!(
        stderr(&out).contains("services[0].scaling.max"),
        "{}",
        stderr(&out)
    );
    let status = agent.status();
    assert_eq!(status["desired_generation"], generation);
    assert_eq!(status["services"][0]["max"], 2);

    // Scale and drain: clear refusals.
    let out = agent.cli(&["scale", "mon", "5"]);
    assert!(
        stderr(&out).contains("mon: 5 instances is outside its scaling bounds 1..=2"),
        "{}",
        stderr(&out)
    );
    let out = agent.cli(&["scale", "nat", "1"]);
    assert!(
        stderr(&out).contains("no service `nat`"),
        "{}",
        stderr(&out)
    );
    let out = agent.cli(&["drain", "mon-9"]);
    assert!(
        stderr(&out).contains("no instance `mon-9`"),
        "{}",
        stderr(&out)
    );
    let json: Value =
        serde_json::from_str(&agent.cli_ok(&["--json", "scale", "mon", "2"])).unwrap();
    assert_eq!(json["instances"], 2);
    agent.wait_for("two", Duration::from_secs(30), |s| {
        instances_in(s, "active").len() == 2
    });
    let json: Value = serde_json::from_str(&agent.cli_ok(&["--json", "instances"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    // Sessions need the DPU, and say so.
    let out = agent.cli(&["sessions"]);
    assert!(stderr(&out).contains("not reachable"), "{}", stderr(&out));

    // Events, as a table and as JSON lines.
    let events = agent.cli_ok(&["events"]);
    assert!(
        events.contains("config_applied") && events.contains("mon/mon-1"),
        "{events}"
    );
    let after: Vec<Value> = agent
        .cli_ok(&["--json", "events", "--after", "2"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(after.iter().all(|e| e["seq"].as_u64().unwrap() > 2));

    // Metrics.
    let metrics = http_get(agent.metrics, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for want in [
        "chaingate_instances{service=\"mon\",phase=\"active\"} 2",
        "chaingate_service_target{service=\"mon\"} 2",
        "chaingate_events_total{service=\"mon\",kind=\"instance_ready\"} 2",
        "chaingate_dpu_connected 0",
        "# TYPE chaingate_provisioning_failures_total counter",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }
    assert!(http_get(agent.metrics, "/").starts_with("HTTP/1.1 404"));
}

#[test]
fn a_vf_that_fails_its_vfio_check_is_reported_and_not_used() {
    // A sysfs tree with one VF already on vfio-pci, and no VFIO device
    // nodes: the check fails at the container, as on a host without VFIO.
    let tree = std::env::temp_dir().join(format!("cg-agent-sysfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    let vf = tree.join("sys/bus/pci/devices/0000:03:10.0");
    std::fs::create_dir_all(&vf).unwrap();
    std::fs::create_dir_all(tree.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
    std::fs::create_dir_all(tree.join("sys/kernel/iommu_groups/7/devices")).unwrap();
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    std::os::unix::fs::symlink("../../drivers/vfio-pci", vf.join("driver")).unwrap();
    std::os::unix::fs::symlink("../../../kernel/iommu_groups/7", vf.join("iommu_group")).unwrap();
    let extra = format!(
        "sysfs: {}\ndevfs: {}\n",
        tree.join("sys").display(),
        tree.join("dev").display()
    );
    // The kernel's part, as far as giving the VF back goes: a write to
    // its driver's `unbind` unbinds it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kernel = {
        let (stop, vf) = (std::sync::Arc::clone(&stop), vf.clone());
        let unbind = tree.join("sys/bus/pci/drivers/vfio-pci/unbind");
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if std::fs::read_to_string(&unbind).is_ok_and(|a| a.trim() == "0000:03:10.0") {
                    let _ = std::fs::remove_file(&unbind);
                    let _ = std::fs::remove_file(vf.join("driver"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let agent = AgentProc::start(
        NO_DPU,
        &["{ port: pf0vf0, pci: \"0000:03:10.0\" }".to_owned()],
        &extra,
    )
    .unwrap();
    let vm = gateway().replace(
        &format!("process: [\"{}\", monitor]", service_binary().display()),
        "vm: { kernel: /nonexistent/vmlinuz, initrd: /nonexistent/monitor.img }",
    );
    let out = apply(&agent, "vm.yaml", &vm);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut events = String::new();
    while std::time::Instant::now() < deadline && !events.contains("provisioning_failed") {
        std::thread::sleep(Duration::from_millis(100));
        events = agent.cli_ok(&["events"]);
    }
    assert!(
        events.contains(
            "0000:03:10.0: open VFIO container: no VFIO on this host: modprobe vfio-pci; VF given back"
        ),
        "{events}"
    );
    // Given back: unbound from vfio-pci (only giving back unbinds).
    assert!(!vf.join("driver").exists());
    assert!(
        agent.status()["instances"].as_array().unwrap().is_empty(),
        "nothing launched"
    );
    let metrics = http_get(agent.metrics, "/metrics");
    assert!(
        metrics.contains("chaingate_provisioning_failures_total{service=\"mon\",step=\"vf\"}"),
        "{metrics}"
    );
    drop(agent);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    kernel.join().unwrap();
    std::fs::remove_dir_all(&tree).unwrap();
}
