//! The real provisioning sequence against a real kernel. These tests run
//! inside a QEMU guest with an emulated IOMMU and an igb NIC (SR-IOV),
//! booted by `chaingate-agent`'s `tests/vfio_guest.rs`, which builds this
//! file as a static binary and runs it with `--ignored`. On a host they
//! would change its NICs, so they are ignored there.

use std::fs::OpenOptions;

use chaingate_provision::{PciAddress, Step, Sysfs, vfio};

/// The igb PF of the guest: the one device with SR-IOV.
fn the_pf(sysfs: &Sysfs) -> PciAddress {
    let pfs = sysfs.sriov_pfs();
    assert_eq!(pfs.len(), 1, "one SR-IOV PF expected, found {pfs:?}");
    assert_eq!(sysfs.driver(&pfs[0]).unwrap().as_deref(), Some("igb"));
    pfs[0].clone()
}

#[test]
#[ignore = "changes the host's NICs: runs in the VFIO guest (chaingate-agent tests/vfio_guest.rs)"]
fn provision_a_vf_for_a_vm_and_release_it() {
    let sysfs = Sysfs::default();
    let pf = sysfs.pf(&the_pf(&sysfs)).unwrap();
    assert_eq!(pf.total_vfs().unwrap(), 7);
    pf.set_num_vfs(2).unwrap();
    let vfs = pf.vfs().unwrap();
    assert_eq!(vfs.len(), 2);
    let vf = &vfs[1];
    assert_eq!(sysfs.driver(vf).unwrap().as_deref(), Some("igbvf"));

    let binding = sysfs.bind_vfio(vf).unwrap();
    assert_eq!(binding.previous_driver.as_deref(), Some("igbvf"));
    assert_eq!(sysfs.driver(vf).unwrap().as_deref(), Some("vfio-pci"));
    // VF 0 stays with igbvf.
    assert_eq!(sysfs.driver(&vfs[0]).unwrap().as_deref(), Some("igbvf"));

    let device = vfio::check(&sysfs, vf).unwrap();
    println!("checked {device:?}");
    assert_eq!(device.iommu_group, binding.iommu_group);
    assert_eq!(
        (device.vendor, device.device),
        (0x8086, 0x10ca),
        "an igb VF"
    );
    // An igb VF: 4 KiB of config space (PCIe), 16 KiB of BAR 0, MSI-X.
    assert_eq!(device.config_size, 4096, "{device:?}");
    assert_eq!(device.bar0_size, 16 * 1024, "{device:?}");
    assert!(device.max_interrupts >= 1, "{device:?}");

    // A group someone else holds open is busy, and the error says so.
    let held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/vfio/{}", binding.iommu_group))
        .unwrap();
    let e = vfio::check(&sysfs, vf).unwrap_err();
    assert_eq!(e.step, Step::Group);
    assert!(e.to_string().contains("busy"), "{e}");
    drop(held);
    vfio::check(&sysfs, vf).unwrap();

    // A VF still on igbvf has no /dev/vfio node.
    let e = vfio::check(&sysfs, &vfs[0]).unwrap_err();
    assert_eq!(e.step, Step::Group);
    assert!(e.to_string().contains("bound to vfio-pci"), "{e}");

    sysfs.release(vf).unwrap();
    assert_eq!(sysfs.driver(vf).unwrap().as_deref(), Some("igbvf"));
    pf.set_num_vfs(0).unwrap();
    assert!(pf.vfs().unwrap().is_empty());
}

#[test]
#[ignore = "changes the host's NICs: runs in the VFIO guest (chaingate-agent tests/vfio_guest.rs)"]
fn the_kernel_refuses_more_vfs_than_the_nic_has() {
    let sysfs = Sysfs::default();
    let pf = sysfs.pf(&the_pf(&sysfs)).unwrap();
    let e = pf.set_num_vfs(8).unwrap_err();
    assert_eq!(e.step, Step::SetNumVfs);
    assert!(e.to_string().contains("at most 7"), "{e}");
}
