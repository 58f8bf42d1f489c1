//! VF provisioning against a real kernel: a QEMU guest (TCG here, q35 with
//! an emulated Intel IOMMU and an igb NIC with SR-IOV) boots an initramfs
//! made by `chaingate_agent::image` holding a static build of
//! `chaingate-provision`'s `tests/in_guest.rs`, and runs it there. The host
//! kernel has no VFIO; this is where the code meets one.
//!
//! Needs QEMU >= 8, busybox-static and a guest kernel (ci/lib.sh's
//! `ensure_vm_tools`); without them the test says so and passes, unless
//! CHAINGATE_REQUIRE_VM=1 (CI) makes the absence a failure.

use std::time::Duration;

use chaingate_agent::qemu::{self, Guest};
use chaingate_hw_tests::vm::{require_vm, static_build};

const MARKER: &str = "CHAINGATE-GUEST-RESULT=";

#[test]
fn a_vf_is_provisioned_through_vfio_in_a_guest() {
    let Some(kit) = require_vm() else { return };
    let binary = static_build(&[
        "test",
        "-p",
        "chaingate-provision",
        "--test",
        "in_guest",
        "--no-run",
    ]);
    let work = std::env::temp_dir().join(format!("chaingate-vfio-guest-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    let script = format!("/in_guest --ignored --test-threads=1 --nocapture\necho \"{MARKER}$?\"\n");
    let mut image = kit
        .initramfs(
            &["igb", "igbvf", "vfio", "vfio_iommu_type1", "vfio_pci"],
            &script,
        )
        .expect("the guest kit has the modules");
    image.copy("/in_guest", &binary, 0o755).unwrap();
    let initrd = work.join("initramfs");
    image.write_file(&initrd).unwrap();

    let mut guest = Guest::new(&kit.kernel, &initrd, &work.join("console.log"));
    guest.memory_mib = 512;
    guest.iommu_with_igb = true;
    // One boot in a dozen stalls under TCG (notes/vm-rig.md): one retry.
    let mut finished = None;
    for attempt in 1..=2 {
        let f = qemu::run_to_end(&guest, Duration::from_secs(240)).expect("qemu starts");
        if f.console.contains(MARKER) {
            finished = Some(f);
            break;
        }
        eprintln!(
            "attempt {attempt}: no result from the guest\n{}\n{}",
            f.console, f.stderr
        );
    }
    let f = finished.expect("the guest reported a result");
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        f.console.contains(&format!("{MARKER}0"))
            && f.console.contains("test result: ok. 2 passed"),
        "in-guest tests failed:\n{}",
        f.console
    );
    assert!(f.console.contains("checked VfioDevice"), "{}", f.console);
}
