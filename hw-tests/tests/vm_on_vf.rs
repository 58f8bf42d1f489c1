//! A service VM on a passed-through VF, for real.
//!
//! This machine's kernel has no VFIO, so the scenario runs one level down:
//! an outer QEMU guest (TCG; q35 with an emulated Intel IOMMU and an igb
//! NIC with SR-IOV) shares the host's root file system read-only over
//! virtio-9p, mounts tmpfs on `/run` (its scratch space: `TMPDIR`, since
//! the workspace itself may live under `/tmp`), chroots into it and runs
//! this very test binary's in-guest half. There, with the host's own
//! binaries and a real VFIO:
//!
//! 1. two igb VFs are made; VF 0 stays on igbvf (the sender), VF 1 is the
//!    agent's (`pci` in its pool), and a tap is its second VF;
//! 2. a VM whose kernel its user cannot read fails to start: the
//!    `instance_failed` event says why and VF 1 is back on igbvf;
//! 3. with a readable image, the real `chaingate-agent` binds VF 1 to
//!    vfio-pci, checks it through VFIO, and its QEMU launcher starts the
//!    service VM (nested QEMU, TCG) with the VF passed through, as the
//!    unprivileged VM user under the sandbox, beside a second VM on the
//!    tap; the guest kernel binds igbvf and the service runs on it;
//! 4. frames sent from VF 0 reach the service in the VM through the igb's
//!    internal switch and come back, unchanged;
//! 5. the service leaves the configuration: the VM stops on its power
//!    button and VF 1 is given back.
//!
//! It prints each VM's boot-to-healthy time (`instance_launched` to
//! `instance_ready`, the agent's events), the VF's beside the tap's.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chaingate_agent::launcher::{DEFAULT_VM_USER, QemuLauncher, VmLauncher};
use chaingate_agent::qemu::{self, Guest, VmUser};
use chaingate_hw_tests::agent::{AgentProc, instances_in};
use chaingate_hw_tests::frames::udp;
use chaingate_hw_tests::vm::{require_vm, static_service};
use chaingate_hw_tests::{require_root, workspace_binary};
use chaingate_pktio::afpacket::{AfPacket, wait_readable};
use chaingate_pktio::{PacketIo, RxBatch};
use chaingate_provision::Sysfs;
use chaingate_services::stamp;
use serde_json::Value;

const MARKER: &str = "CHAINGATE-GUEST-RESULT=";
const NO_DPU: &str = "127.0.0.1:9";
/// The VM's service stamps frames with this.
const STAMP: u16 = 77;

/// Where the host leaves what the guest needs (the guest sees the host's
/// root read-only, at the same paths).
fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("hw-tests is in the workspace")
        .join("target/vm-on-vf")
}

#[test]
fn a_service_vm_on_a_passed_through_vf_passes_frames() {
    if !require_root() {
        return;
    }
    let Some(kit) = require_vm() else { return };
    // Everything the guest runs is built here first: it cannot build.
    let service = static_service();
    let _ = workspace_binary("chaingate-agent", "chaingate-agent");
    let _ = workspace_binary("chaingate-agent", "chaingate");
    let shared = shared_dir();
    std::fs::create_dir_all(&shared).unwrap();
    // The monitor stamps what it passes (services' `stamp`): the igb's
    // switch also hands the sender its own broadcast, unstamped.
    kit.service_initramfs(&service, &format!("monitor --stamp {STAMP}"), &["igbvf"])
        .unwrap()
        .write_file(&shared.join("monitor-igbvf.img"))
        .unwrap();

    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "R=/mnt/host
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mount -t tmpfs tmpfs $R/run
mkdir -p $R/run/tmp
chroot $R /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1 TMPDIR=/run/tmp \
  CHAINGATE_VM_DIR={vm_dir} {compare} {exe} --ignored --exact in_guest_service_vm_on_a_vf --nocapture --test-threads=1
echo \"{MARKER}$?\"
",
        vm_dir = kit.kernel.parent().unwrap().display(),
        compare = if std::env::var_os("CHAINGATE_VF_VM_COMPARE").is_some() {
            "CHAINGATE_VF_VM_COMPARE=1"
        } else {
            ""
        },
        exe = exe.display(),
    );
    let image = kit
        .initramfs(
            &[
                "igb",
                "igbvf",
                "vfio",
                "vfio_iommu_type1",
                "vfio_pci",
                "9p",
                "9pnet_virtio",
                "tun",
            ],
            &script,
        )
        .expect("the guest kit has the modules");
    let work = std::env::temp_dir().join(format!("cg-vm-on-vf-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let initrd = work.join("outer.img");
    image.write_file(&initrd).unwrap();
    let mut guest = Guest::new(&kit.kernel, &initrd, &work.join("console.log"));
    guest.memory_mib = 1536;
    guest.cpus = 2;
    guest.iommu_with_igb = true;
    guest.share_host_root = true;
    let started = Instant::now();
    let f = qemu::run_to_end(&guest, Duration::from_secs(1200)).expect("qemu starts");
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "outer guest ran {:.0} s; its console:\n{}",
        started.elapsed().as_secs_f64(),
        f.console
    );
    assert!(
        f.console.contains(&format!("{MARKER}0"))
            && f.console.contains("test result: ok. 1 passed"),
        "the in-guest half failed (console above); QEMU: {}",
        f.stderr
    );
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gateway(services: &[(&str, &Path, &Path)]) -> String {
    let mut text = String::from(
        "ports:\n  - { name: lan, role: lan }\n  - { name: wan, role: wan }\nservices:\n",
    );
    for (name, kernel, initrd) in services {
        text.push_str(&format!(
            "  - name: {name}\n    capacity: 1Gbit\n    scaling: {{ min: 1, max: 1 }}\n    launch: {{ vm: {{ kernel: {}, initrd: {}, memory_mib: 256 }} }}\n",
            kernel.display(),
            initrd.display()
        ));
    }
    if services.is_empty() {
        text.push_str("  []\nchains: []\npolicies: []\n");
        return text.replace("services:\n  []", "services: []");
    }
    text.push_str("chains:\n");
    for (name, ..) in services {
        text.push_str(&format!("  - {{ name: c-{name}, services: [{name}] }}\n"));
    }
    text.push_str(&format!(
        "policies:\n  - {{ priority: 10, action: {{ chain: c-{} }} }}\n",
        services[0].0
    ));
    text
}

/// The instance of `service` that became ready, and the seconds from its
/// `instance_launched` to its `instance_ready` event.
fn boot_to_healthy(agent: &AgentProc, service: &str) -> (String, f64) {
    let all = agent.events();
    let ready = all
        .iter()
        .find(|e| e["kind"] == "instance_ready" && e["service"] == service)
        .expect("a ready event");
    let name = ready["instance"].as_str().unwrap().to_owned();
    let at = |e: &Value| e["at_ms"].as_u64().unwrap();
    let launched = all
        .iter()
        .rfind(|e| e["kind"] == "instance_launched" && e["instance"] == name.as_str())
        .expect("a launched event");
    #[allow(clippy::cast_precision_loss)]
    let seconds = (at(ready) - at(launched)) as f64 / 1000.0;
    (name, seconds)
}

fn apply(agent: &AgentProc, yaml: &str) {
    let file = std::env::temp_dir().join(format!("cg-vf-gw-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml).unwrap();
    let out = agent.cli_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.starts_with("applied"), "{out}");
}

fn uid_of(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_default()
            .to_owned()
    };
    format!("uid={} seccomp={}", field("Uid:"), field("Seccomp:"))
}

#[test]
#[ignore = "changes the host's NICs: runs in the outer guest of a_service_vm_on_a_passed_through_vf_passes_frames"]
fn in_guest_service_vm_on_a_vf() {
    let sysfs = Sysfs::default();
    let pfs = sysfs.sriov_pfs();
    assert_eq!(pfs.len(), 1, "the guest's igb is its one PF: {pfs:?}");
    let pf = sysfs.pf(&pfs[0]).unwrap();
    // A VF has link only while its PF's does.
    let pf_if = std::fs::read_dir(sysfs.device_dir(&pfs[0]).join("net"))
        .unwrap()
        .next()
        .expect("igb made the PF's interface")
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    ip(&["link", "set", &pf_if, "up"]);
    pf.set_num_vfs(2).unwrap();
    let vfs = pf.vfs().unwrap();
    let (sender, vf) = (vfs[0].clone(), vfs[1].clone());
    // The igbvf driver makes the sender's interface.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sender_if = loop {
        if let Some(name) = std::fs::read_dir(sysfs.device_dir(&sender).join("net"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
        {
            break name.file_name().to_string_lossy().into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "igbvf made no interface for {sender}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{sender_if}/disable_ipv6"),
        "1",
    );
    ip(&["link", "set", &sender_if, "up"]);
    ip(&["tuntap", "add", "mode", "tap", "name", "cgvm-tap"]);
    ip(&["link", "set", "cgvm-tap", "up"]);
    // The service is a bump in the wire: it sends frames with other
    // hosts' addresses, which the NIC's anti-spoofing would drop.
    ip(&["link", "set", &pf_if, "vf", "1", "spoofchk", "off"]);
    let group = sysfs.iommu_group(&vf).unwrap();
    let vm_user = VmUser::lookup(DEFAULT_VM_USER).unwrap();

    let agent = AgentProc::start(
        NO_DPU,
        &[
            format!("{{ port: pf0vf1, pci: \"{vf}\" }}"),
            "{ port: tap0, tap: cgvm-tap }".to_owned(),
        ],
        // A nested TCG guest boots in minutes, not seconds.
        "probe: { interval: 500ms, timeout: 5s, start_timeout: 15m, failures: 3 }\nstop_timeout: 60s\n",
    )
    .unwrap();
    let kernel = std::env::var_os("CHAINGATE_VM_DIR")
        .map(PathBuf::from)
        .expect("CHAINGATE_VM_DIR")
        .join("vmlinux");
    let image = shared_dir().join("monitor-igbvf.img");

    // 2. A kernel the VM user cannot read: the launch fails, says why, and
    //    the VF goes back to igbvf.
    let secret = std::env::temp_dir().join("vmlinux-0600");
    std::fs::copy(&kernel, &secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    apply(&agent, &gateway(&[("vfmon", &secret, &image)]));
    let failed = agent.wait_event("instance_failed", Duration::from_secs(60), |_| true);
    let why = failed["message"].as_str().unwrap();
    assert!(
        why.contains("not readable by chaingate-vm"),
        "the event says why: {why}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sysfs.driver(&vf).unwrap().as_deref() != Some("igbvf") {
        assert!(
            Instant::now() < deadline,
            "VF {vf} was not given back to igbvf"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("a VM that cannot start: {why}; VF back on igbvf");

    // 3. The real thing.
    apply(&agent, &gateway(&[("vfmon", &kernel, &image)]));
    let status = agent.wait_for("the VM on the VF active", Duration::from_secs(900), |s| {
        instances_in(s, "active")
            .iter()
            .any(|n| n.starts_with("vfmon-"))
    });
    let (vf_vm, vf_s) = boot_to_healthy(&agent, "vfmon");
    println!("boot to healthy, VM on the VF (nested TCG): {vf_s:.1} s");
    assert_eq!(sysfs.driver(&vf).unwrap().as_deref(), Some("vfio-pci"));
    let instance = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == vf_vm.as_str())
        .unwrap();
    assert_eq!(instance["vfs"][0], format!("pf0vf1 ({vf})"), "{instance}");
    let pid = chaingate_hw_tests::agent::pid_of(&status, &vf_vm).expect("a pid");
    assert_eq!(
        uid_of(pid),
        format!("uid={} seccomp=2", vm_user.uid),
        "QEMU unprivileged, sandboxed"
    );
    let node = format!("/dev/vfio/{group}");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&node).unwrap());
    assert_eq!(owner, vm_user.uid, "{node} is the VM user's while it runs");
    let launcher = QemuLauncher::new(&agent.run_dir);
    let devices = launcher.devices(&vf_vm).unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d.id == "vf0" && (d.vendor, d.device) == (0x8086, 0x10ca)),
        "the igb VF is in the VM: {devices:?}"
    );
    let console_log = agent
        .run_dir
        .join("instances")
        .join(&vf_vm)
        .join("console.log");
    let console = std::fs::read_to_string(&console_log).unwrap();
    assert!(
        console.contains("(igbvf)"),
        "the guest bound igbvf:\n{console}"
    );

    // The same image on the tap, for the figure beside it (the bench).
    if std::env::var_os("CHAINGATE_VF_VM_COMPARE").is_some() {
        apply(
            &agent,
            &gateway(&[("vfmon", &kernel, &image), ("tapmon", &kernel, &image)]),
        );
        agent.wait_for("the VM on the tap active", Duration::from_secs(900), |s| {
            instances_in(s, "active")
                .iter()
                .any(|n| n.starts_with("tapmon-"))
        });
        let (_, tap_s) = boot_to_healthy(&agent, "tapmon");
        println!(
            "boot to healthy (nested TCG, same run): VF passthrough {vf_s:.1} s, tap {tap_s:.1} s ({:.2}x)",
            vf_s / tap_s
        );
    }

    // 4. A frame from VF 0 through the service and back. Broadcast: the
    //    service sends what it gets back out unchanged (but for its
    //    stamp), and the igb's switch delivers a broadcast from VF 1 to
    //    VF 0. (QEMU's igb also hands VF 1 its own broadcast back, so the
    //    frame keeps going round through the service until the VM stops:
    //    one frame, sent again only if it never came back.)
    let mut port = AfPacket::open(&sender_if, 2048).unwrap();
    let mut batch = RxBatch::new(32, 2048);
    let mut frame = udp(
        (Ipv4Addr::new(10, 9, 0, 1), 7000),
        (Ipv4Addr::new(192, 0, 2, 9), 53),
        true,
        // Long enough that no NIC pads it.
        &[0x5a; 64],
    );
    frame[..6].copy_from_slice(&[0xff; 6]);
    let frames = [frame];
    let mut back = [false];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !back[0] && Instant::now() < deadline {
        port.send(&frames[0]);
        port.flush();
        let until = Instant::now() + Duration::from_secs(10);
        while !back[0] && Instant::now() < until {
            if wait_readable(&[port.raw_fd()], 100) && PacketIo::recv(&mut port, &mut batch).is_ok()
            {
                back[0] = (0..batch.len()).filter_map(|i| batch.frame(i)).any(|f| {
                    stamp::read(f).is_some_and(|(ids, len)| {
                        ids.first() == Some(&STAMP) && f[..len] == frames[0][..]
                    })
                });
            }
        }
    }
    let returned = back.iter().filter(|b| **b).count();
    if returned < frames.len() {
        let probe = VmLauncher::probe(&launcher, &vf_vm, Duration::from_secs(5));
        let links = |dev: &str| {
            let out = Command::new("ip")
                .args(["-s", "link", "show", dev])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let console = std::fs::read_to_string(&console_log).unwrap_or_default();
        panic!(
            "{returned} of {} frames came back through the VM\nprobe: {probe:?}\n{}\n{}\nVM console:\n{console}",
            frames.len(),
            links(&sender_if),
            links(&pf_if),
        );
    }
    // The agent probes the same serial line: a few tries.
    let answer = (0..10)
        .find_map(|_| {
            let a = VmLauncher::probe(&launcher, &vf_vm, Duration::from_secs(5)).ok();
            if a.is_none() {
                std::thread::sleep(Duration::from_millis(300));
            }
            a
        })
        .expect("the VM answers its probe");
    assert!(
        answer.ends_with(" link=up") && !answer.contains(" rx=0 "),
        "the service counted them, on a VF with link: {answer}"
    );
    println!("a frame through the VM on the VF and back, stamped; probe: {answer}");

    // 5. Out of the configuration: the power button, and the VF back.
    apply(&agent, &gateway(&[]));
    let stopped = agent.wait_event("instance_stopped", Duration::from_secs(180), |e| {
        e["instance"] == vf_vm.as_str()
    });
    let how = stopped["message"].as_str().unwrap();
    assert!(how.starts_with("stopped when asked"), "{how}");
    assert_eq!(sysfs.driver(&vf).unwrap().as_deref(), Some("igbvf"));
    println!("stopped: {how}");
    drop(agent);
    ip(&["link", "del", "cgvm-tap"]);
    pf.set_num_vfs(0).unwrap();
    std::io::stdout().flush().unwrap();
}
