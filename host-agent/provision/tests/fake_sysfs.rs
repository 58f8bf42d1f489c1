//! Provisioning against a sysfs tree the test builds, with a small "kernel"
//! thread that acts on the files the way Linux does: writing
//! `sriov_numvfs` creates the VFs, `driver/unbind` unbinds, `drivers_probe`
//! binds to the override or the device's own driver.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use chaingate_provision::{PciAddress, Step, Sysfs, vfio};

const PF: &str = "0000:03:00.0";

struct Tree {
    root: PathBuf,
    stop: Arc<AtomicBool>,
    kernel: Option<thread::JoinHandle<()>>,
    /// Every value written to the PF's sriov_numvfs, in order.
    numvfs_log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Tree {
    /// A PF with `total` possible VFs, drivers igb, igbvf and (when
    /// `vfio_loaded`) vfio-pci. The kernel thread runs when `kernel`.
    fn new(name: &str, total: u16, vfio_loaded: bool, kernel: bool) -> Self {
        let root =
            std::env::temp_dir().join(format!("chaingate-sysfs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let sys = root.join("sys");
        let devices = sys.join("bus/pci/devices");
        fs::create_dir_all(&devices).unwrap();
        for d in ["igb", "igbvf"]
            .into_iter()
            .chain(vfio_loaded.then_some("vfio-pci"))
        {
            let dir = sys.join("bus/pci/drivers").join(d);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("unbind"), "").unwrap();
        }
        fs::write(sys.join("bus/pci/drivers_probe"), "").unwrap();
        let pf = devices.join(PF);
        fs::create_dir_all(&pf).unwrap();
        fs::write(pf.join("sriov_totalvfs"), format!("{total}\n")).unwrap();
        fs::write(pf.join("sriov_numvfs"), "0\n").unwrap();
        fs::write(pf.join("driver_override"), "(null)\n").unwrap();
        symlink("../../drivers/igb", pf.join("driver")).unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        let mut tree = Self {
            root,
            stop: Arc::new(AtomicBool::new(false)),
            kernel: None,
            numvfs_log: Arc::default(),
        };
        if kernel {
            let (sys, stop, log) = (sys.clone(), tree.stop.clone(), tree.numvfs_log.clone());
            tree.kernel = Some(thread::spawn(move || run_kernel(&sys, &stop, &log)));
        }
        tree
    }

    fn sysfs(&self) -> Sysfs {
        Sysfs::new(self.root.join("sys"), self.root.join("dev"))
            .with_timeout(Duration::from_millis(500))
    }

    fn device(&self, addr: &str) -> PathBuf {
        self.root.join("sys/bus/pci/devices").join(addr)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(k) = self.kernel.take() {
            let _ = k.join();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn vf_addr(i: u16) -> String {
    // VFs at 03:10.0 and on, eight functions a slot, as igb places them.
    format!("0000:03:{:02x}.{}", 0x10 + i / 8, i % 8)
}

fn driver_of(dev: &Path) -> Option<String> {
    fs::read_link(dev.join("driver"))
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
}

fn take(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    if !text.is_empty() {
        fs::write(path, "").unwrap();
    }
    text.trim().to_owned()
}

fn run_kernel(sys: &Path, stop: &AtomicBool, log: &std::sync::Mutex<Vec<String>>) {
    let devices = sys.join("bus/pci/devices");
    let pf = devices.join(PF);
    let mut made = 0u16;
    while !stop.load(Ordering::Relaxed) {
        // sriov_numvfs: the file holds what was last written.
        let want: u16 = fs::read_to_string(pf.join("sriov_numvfs"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(made);
        if want != made {
            log.lock().unwrap().push(want.to_string());
            for i in 0..made {
                let _ = fs::remove_file(pf.join(format!("virtfn{i}")));
                let _ = fs::remove_dir_all(devices.join(vf_addr(i)));
            }
            for i in 0..want {
                let vf = devices.join(vf_addr(i));
                fs::create_dir_all(&vf).unwrap();
                fs::write(vf.join("driver_override"), "(null)\n").unwrap();
                symlink("../../drivers/igbvf", vf.join("driver")).unwrap();
                let group = 20 + u32::from(i);
                let gdir = sys.join(format!("kernel/iommu_groups/{group}/devices"));
                fs::create_dir_all(&gdir).unwrap();
                let _ = symlink(&vf, gdir.join(vf_addr(i)));
                symlink(
                    format!("../../../kernel/iommu_groups/{group}"),
                    vf.join("iommu_group"),
                )
                .unwrap();
                symlink(format!("../{}", vf_addr(i)), pf.join(format!("virtfn{i}"))).unwrap();
            }
            made = want;
        }
        // driver/unbind: each driver's file names the device to let go.
        for d in ["igb", "igbvf", "vfio-pci"] {
            let unbind = sys.join("bus/pci/drivers").join(d).join("unbind");
            let dev = take(&unbind);
            if !dev.is_empty() {
                let _ = fs::remove_file(devices.join(&dev).join("driver"));
            }
        }
        // drivers_probe: the override if set, the device's own otherwise.
        let dev = take(&sys.join("bus/pci/drivers_probe"));
        if !dev.is_empty() {
            let dir = devices.join(&dev);
            let over = fs::read_to_string(dir.join("driver_override")).unwrap_or_default();
            let over = over.trim();
            let driver = if over.is_empty() || over == "(null)" {
                "igbvf"
            } else {
                over
            };
            if driver_of(&dir).is_none() && sys.join("bus/pci/drivers").join(driver).exists() {
                symlink(format!("../../drivers/{driver}"), dir.join("driver")).unwrap();
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    false
}

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

#[test]
fn vfs_are_made_and_listed_in_index_order() {
    let tree = Tree::new("order", 16, true, true);
    let pf = tree.sysfs().pf(&addr(PF)).unwrap();
    assert_eq!(pf.total_vfs().unwrap(), 16);
    assert_eq!(pf.num_vfs().unwrap(), 0);
    pf.set_num_vfs(12).unwrap();
    let vfs = pf.vfs().unwrap();
    let want: Vec<PciAddress> = (0..12).map(|i| addr(&vf_addr(i))).collect();
    // virtfn10 sorts after virtfn9, not after virtfn1.
    assert_eq!(vfs, want);
}

#[test]
fn the_pfs_are_the_devices_with_sr_iov_and_not_their_vfs() {
    let tree = Tree::new("pfs", 4, true, true);
    let sysfs = tree.sysfs();
    sysfs.pf(&addr(PF)).unwrap().set_num_vfs(2).unwrap();
    assert_eq!(sysfs.sriov_pfs(), [addr(PF)]);
}

#[test]
fn a_changed_vf_count_goes_through_zero() {
    let tree = Tree::new("zero", 8, true, true);
    let pf = tree.sysfs().pf(&addr(PF)).unwrap();
    pf.set_num_vfs(2).unwrap();
    pf.set_num_vfs(2).unwrap();
    pf.set_num_vfs(3).unwrap();
    assert_eq!(pf.vfs().unwrap().len(), 3);
    let log = tree.numvfs_log.lock().unwrap().clone();
    // Linux refuses a change from one non-zero count to another.
    assert_eq!(log, ["2", "0", "3"]);
}

#[test]
fn more_vfs_than_the_device_has_is_refused() {
    let tree = Tree::new("toomany", 4, true, true);
    let pf = tree.sysfs().pf(&addr(PF)).unwrap();
    let e = pf.set_num_vfs(5).unwrap_err();
    assert_eq!(e.step, Step::SetNumVfs);
    assert_eq!(
        e.to_string(),
        "0000:03:00.0: set sriov_numvfs: asked for 5 VFs; the device supports at most 4"
    );
    assert_eq!(pf.num_vfs().unwrap(), 0);
}

#[test]
fn vfs_that_never_appear_time_out_with_the_reason() {
    let tree = Tree::new("noappear", 4, true, false);
    let pf = tree.sysfs().pf(&addr(PF)).unwrap();
    let e = pf.set_num_vfs(2).unwrap_err();
    assert_eq!(e.step, Step::SetNumVfs);
    assert!(e.to_string().contains("did not appear"), "{e}");
}

#[test]
fn a_vf_goes_to_vfio_pci_and_back() {
    let tree = Tree::new("bind", 4, true, true);
    let sysfs = tree.sysfs();
    let pf = sysfs.pf(&addr(PF)).unwrap();
    pf.set_num_vfs(2).unwrap();
    let vf = pf.vfs().unwrap()[1].clone();
    assert_eq!(sysfs.driver(&vf).unwrap().as_deref(), Some("igbvf"));

    let binding = sysfs.bind_vfio(&vf).unwrap();
    assert_eq!(binding.previous_driver.as_deref(), Some("igbvf"));
    assert_eq!(binding.iommu_group, 21);
    assert_eq!(sysfs.driver(&vf).unwrap().as_deref(), Some("vfio-pci"));
    let dir = tree.device(vf.as_str());
    assert_eq!(
        fs::read_to_string(dir.join("driver_override")).unwrap(),
        "vfio-pci"
    );
    // The other VF is untouched.
    assert_eq!(
        sysfs.driver(&pf.vfs().unwrap()[0]).unwrap().as_deref(),
        Some("igbvf")
    );
    // Binding again is a no-op.
    assert_eq!(sysfs.bind_vfio(&vf).unwrap().previous_driver, None);

    sysfs.release(&vf).unwrap();
    // Linux probes synchronously; this tree's kernel a moment later.
    assert!(eventually(
        || sysfs.driver(&vf).unwrap().as_deref() == Some("igbvf")
    ));
    assert_eq!(
        fs::read_to_string(dir.join("driver_override")).unwrap(),
        "\n"
    );
    // Releasing twice is fine.
    sysfs.release(&vf).unwrap();
    assert_eq!(sysfs.driver(&vf).unwrap().as_deref(), Some("igbvf"));
}

#[test]
fn binding_without_vfio_pci_loaded_says_so() {
    let tree = Tree::new("novfio", 4, false, true);
    let sysfs = tree.sysfs();
    let pf = sysfs.pf(&addr(PF)).unwrap();
    pf.set_num_vfs(1).unwrap();
    let vf = pf.vfs().unwrap()[0].clone();
    let e = sysfs.bind_vfio(&vf).unwrap_err();
    assert_eq!(e.step, Step::BindVfio);
    assert_eq!(e.addr, vf);
    assert!(e.to_string().contains("modprobe vfio-pci"), "{e}");
    assert_eq!(sysfs.driver(&vf).unwrap().as_deref(), Some("igbvf"));
}

#[test]
fn a_driver_that_does_not_take_the_vf_is_reported() {
    let tree = Tree::new("stuck", 4, true, true);
    let sysfs = tree.sysfs();
    let pf = sysfs.pf(&addr(PF)).unwrap();
    pf.set_num_vfs(1).unwrap();
    let vf = pf.vfs().unwrap()[0].clone();
    // Stop the kernel: the writes land but nobody acts on them.
    tree.stop.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_millis(20));
    let e = sysfs.bind_vfio(&vf).unwrap_err();
    assert_eq!(e.step, Step::BindVfio);
    assert!(e.to_string().contains("did not take the device"), "{e}");
}

#[test]
fn no_iommu_group_means_the_iommu_is_off() {
    let tree = Tree::new("noiommu", 4, true, true);
    let sysfs = tree.sysfs();
    let pf = sysfs.pf(&addr(PF)).unwrap();
    pf.set_num_vfs(1).unwrap();
    let vf = pf.vfs().unwrap()[0].clone();
    fs::remove_file(tree.device(vf.as_str()).join("iommu_group")).unwrap();
    let e = sysfs.bind_vfio(&vf).unwrap_err();
    assert_eq!(e.step, Step::IommuGroup);
    assert!(e.to_string().contains("intel_iommu=on"), "{e}");
}

#[test]
fn missing_and_non_sriov_devices_are_named() {
    let tree = Tree::new("nodev", 4, true, false);
    let sysfs = tree.sysfs();
    let e = sysfs.pf(&addr("0000:09:00.0")).unwrap_err();
    assert_eq!(
        e.to_string()
            .split(':')
            .take(3)
            .collect::<Vec<_>>()
            .join(":"),
        "0000:09:00.0"
    );
    assert!(e.to_string().contains("no such PCI device"), "{e}");
    fs::remove_file(tree.device(PF).join("sriov_totalvfs")).unwrap();
    let e = sysfs.pf(&addr(PF)).unwrap_err();
    assert!(e.to_string().contains("no SR-IOV capability"), "{e}");
}

#[test]
fn vfio_check_without_vfio_says_what_to_load() {
    let tree = Tree::new("vfiocheck", 4, true, true);
    let sysfs = tree.sysfs();
    let pf = sysfs.pf(&addr(PF)).unwrap();
    pf.set_num_vfs(1).unwrap();
    let vf = pf.vfs().unwrap()[0].clone();
    let e = vfio::check(&sysfs, &vf).unwrap_err();
    assert_eq!(e.step, Step::Container);
    assert!(e.to_string().contains("modprobe vfio-pci"), "{e}");
}

#[test]
fn group_peers_name_their_drivers() {
    let tree = Tree::new("peers", 4, true, true);
    let sysfs = tree.sysfs();
    let pf = sysfs.pf(&addr(PF)).unwrap();
    pf.set_num_vfs(2).unwrap();
    let vfs = pf.vfs().unwrap();
    // Put VF 1 in VF 0's group, as a switch without ACS would.
    let gdir = tree.root.join("sys/kernel/iommu_groups/20/devices");
    symlink(tree.device(vfs[1].as_str()), gdir.join(vfs[1].as_str())).unwrap();
    let peers = sysfs.group_peers(&vfs[0]).unwrap();
    assert_eq!(peers, vec![(vfs[1].to_string(), Some("igbvf".to_owned()))]);
}
