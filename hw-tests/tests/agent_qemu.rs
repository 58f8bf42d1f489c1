//! The qemu launcher with a real service VM: a static `chaingate-service`
//! in an image made by `chaingate_agent::image`, booted under QEMU (TCG on
//! this kind of machine) with a tap device standing for its VF. The VM
//! answers its probe through the second serial port, reflects frames on
//! its NIC as a bump in the wire, and stops through QMP.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use chaingate_agent::launcher::{LaunchSpec, Program, QemuLauncher, VmImage, VmLauncher, scan};
use chaingate_agent::vf::{VfKind, VfRef};
use chaingate_hw_tests::frames::udp;
use chaingate_hw_tests::require_root;
use chaingate_hw_tests::topology::Topology;
use chaingate_hw_tests::vm::{require_vm, static_service};
use chaingate_pktio::afpacket::{AfPacket, wait_readable};
use chaingate_pktio::{PacketIo, RxBatch};

/// Waits for the probe; `None` if the VM does not answer in time.
fn wait_probe(launcher: &QemuLauncher, instance: &str, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(answer) = launcher.probe(instance, Duration::from_secs(2)) {
            return Some(answer);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

#[test]
fn a_service_vm_boots_answers_its_probe_and_reflects_frames() {
    if !require_root() {
        return;
    }
    let Some(kit) = require_vm() else { return };
    let service = static_service();
    let mut topo = Topology::new().unwrap();
    let tap = topo.tap("q0").unwrap();
    let work = std::env::temp_dir().join(format!("cg-qemu-launcher-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let initrd = work.join("monitor.img");
    kit.service_initramfs(&service, "monitor", &[])
        .unwrap()
        .write_file(&initrd)
        .unwrap();

    let run_dir = work.join("run");
    let launcher = QemuLauncher::new(&run_dir);
    let spec = LaunchSpec {
        instance: "vmmon-0".into(),
        service: "mon".into(),
        vf: VfRef {
            port: "vf0".into(),
            device: tap.clone(),
        },
        vf_kind: VfKind::Tap,
        program: Program::Vm(VmImage {
            kernel: kit.kernel.clone(),
            initrd,
            memory_mib: 256,
            cpus: 1,
        }),
    };
    // One boot in a dozen stalls under TCG (notes/vm-rig.md): one retry.
    let mut answer = None;
    for _ in 0..2 {
        let started = Instant::now();
        let handle = launcher.launch(&spec).unwrap();
        assert!(launcher.alive("vmmon-0", &handle));
        assert_eq!(
            scan(&run_dir).get("vmmon-0"),
            Some(&handle),
            "found again by its environment"
        );
        answer = wait_probe(&launcher, "vmmon-0", Duration::from_secs(90));
        if answer.is_some() {
            // A figure for the reader, not a check: machines differ.
            eprintln!(
                "launch to first probe answer: {:.1} s ({})",
                started.elapsed().as_secs_f64(),
                chaingate_agent::qemu::accelerator()
            );
            break;
        }
        let console = std::fs::read_to_string(run_dir.join("instances/vmmon-0/console.log"))
            .unwrap_or_default();
        eprintln!("no probe answer; console:\n{console}");
        launcher
            .stop("vmmon-0", &spec.vf, Duration::from_secs(5))
            .unwrap();
    }
    let answer = answer.expect("the VM answered its probe");
    assert!(
        answer.starts_with("ok service=monitor instance=vmmon-0 "),
        "{answer}"
    );

    // A frame into the VM's NIC comes back out of it, unchanged.
    let mut port = AfPacket::open(&tap, 2048).unwrap();
    let frame = udp(
        (Ipv4Addr::new(10, 9, 0, 1), 7000),
        (Ipv4Addr::new(192, 0, 2, 9), 53),
        true,
        b"through the VM",
    );
    let mut batch = RxBatch::new(32, 2048);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut back = false;
    while !back && Instant::now() < deadline {
        port.send(&frame);
        port.flush();
        let until = Instant::now() + Duration::from_millis(500);
        while !back && Instant::now() < until {
            if wait_readable(&[port.raw_fd()], 100) && PacketIo::recv(&mut port, &mut batch).is_ok()
            {
                // The guest's kernel may send frames of its own: look for ours.
                back = (0..batch.len()).any(|i| batch.frame(i) == Some(&frame[..]));
            }
        }
    }
    assert!(back, "the frame came back through the VM");
    let answer = launcher.probe("vmmon-0", Duration::from_secs(2)).unwrap();
    assert!(
        !answer.contains(" rx=0 "),
        "the service counted it: {answer}"
    );

    // QMP quit: the VM is gone, and so are its files.
    let handle = scan(&run_dir).remove("vmmon-0").unwrap();
    launcher
        .stop("vmmon-0", &spec.vf, Duration::from_secs(10))
        .unwrap();
    assert!(!launcher.alive("vmmon-0", &handle));
    assert!(scan(&run_dir).is_empty());
    assert!(!run_dir.join("instances/vmmon-0").exists());
    let _ = std::fs::remove_dir_all(&work);
}
