//! SR-IOV and driver binding through sysfs.
//!
//! The kernel files used, under the root (`/sys` on a host):
//!
//! | file | use |
//! | --- | --- |
//! | `bus/pci/devices/PF/sriov_totalvfs` | how many VFs the PF can have |
//! | `bus/pci/devices/PF/sriov_numvfs` | how many it has; written to change it (through 0) |
//! | `bus/pci/devices/PF/virtfnN` | link to VF N's device directory |
//! | `bus/pci/devices/DEV/driver` | link to the bound driver, absent when none |
//! | `bus/pci/devices/DEV/driver/unbind` | written with DEV to unbind it |
//! | `bus/pci/devices/DEV/driver_override` | the only driver that may take DEV |
//! | `bus/pci/devices/DEV/iommu_group` | link to `kernel/iommu_groups/N` |
//! | `bus/pci/drivers/vfio-pci` | present when vfio-pci is loaded |
//! | `bus/pci/drivers_probe` | written with DEV to bind it to a driver |
//!
//! Writes that the kernel acts on asynchronously (new VFs, a driver taking
//! a device) are followed by polling until the result shows, with a
//! deadline.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::{PciAddress, ProvisionError, Step};

/// The driver a VF is bound to for a VM.
pub const VFIO_PCI: &str = "vfio-pci";

const POLL: Duration = Duration::from_millis(20);

/// The sysfs (and devfs) tree provisioning works on.
#[derive(Clone, Debug)]
pub struct Sysfs {
    sys: PathBuf,
    dev: PathBuf,
    timeout: Duration,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/sys", "/dev")
    }
}

/// A VF bound to vfio-pci, with what it was bound to before.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Binding {
    /// The VF.
    pub addr: PciAddress,
    /// Its driver before (`None`: it had none).
    pub previous_driver: Option<String>,
    /// Its IOMMU group.
    pub iommu_group: u32,
}

impl Sysfs {
    /// A tree rooted at `sys` (normally `/sys`), with device nodes under
    /// `dev` (normally `/dev`).
    pub fn new(sys: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> Self {
        Self {
            sys: sys.into(),
            dev: dev.into(),
            timeout: Duration::from_secs(5),
        }
    }

    /// How long to wait for the kernel to act on a write (default 5 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The device node directory (`/dev`).
    #[must_use]
    pub fn dev_root(&self) -> &Path {
        &self.dev
    }

    /// A PCI device's directory.
    #[must_use]
    pub fn device_dir(&self, addr: &PciAddress) -> PathBuf {
        self.sys.join("bus/pci/devices").join(addr.as_str())
    }

    /// Every PCI device with an SR-IOV capability (`sriov_totalvfs`), in
    /// address order: the PFs an operator can name in `sriov:`.
    #[must_use]
    pub fn sriov_pfs(&self) -> Vec<PciAddress> {
        let mut pfs: Vec<PciAddress> = fs::read_dir(self.sys.join("bus/pci/devices"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().join("sriov_totalvfs").exists())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        pfs.sort();
        pfs
    }

    /// The physical function at `addr`, checked to exist and to have SR-IOV.
    ///
    /// # Errors
    /// No such device, or no SR-IOV capability.
    pub fn pf(&self, addr: &PciAddress) -> Result<Pf, ProvisionError> {
        let dir = self.device_dir(addr);
        if !dir.exists() {
            return Err(ProvisionError::new(
                addr,
                Step::ReadSriov,
                format!("no such PCI device ({} is missing)", dir.display()),
            ));
        }
        let pf = Pf {
            sysfs: self.clone(),
            addr: addr.clone(),
        };
        if !dir.join("sriov_totalvfs").exists() {
            return Err(ProvisionError::new(
                addr,
                Step::ReadSriov,
                "the device has no SR-IOV capability (no sriov_totalvfs); is it a PF, with SR-IOV on in the firmware?",
            ));
        }
        Ok(pf)
    }

    /// The driver bound to a device, `None` when none is.
    ///
    /// # Errors
    /// The device does not exist.
    pub fn driver(&self, addr: &PciAddress) -> Result<Option<String>, ProvisionError> {
        let dir = self.device_dir(addr);
        if !dir.exists() {
            return Err(ProvisionError::new(
                addr,
                Step::ReadDriver,
                "no such PCI device",
            ));
        }
        Ok(link_name(&dir.join("driver")))
    }

    /// The device's IOMMU group.
    ///
    /// # Errors
    /// No group: the IOMMU is off (or absent) for this device.
    pub fn iommu_group(&self, addr: &PciAddress) -> Result<u32, ProvisionError> {
        let link = self.device_dir(addr).join("iommu_group");
        let name = link_name(&link).ok_or_else(|| {
            ProvisionError::new(
                addr,
                Step::IommuGroup,
                "the device has no IOMMU group: turn the IOMMU on (intel_iommu=on or amd_iommu=on, and VT-d/AMD-Vi in the firmware)",
            )
        })?;
        name.parse().map_err(|_| {
            ProvisionError::new(
                addr,
                Step::IommuGroup,
                format!("iommu_group points to `{name}`, not a number"),
            )
        })
    }

    /// The other devices of `addr`'s IOMMU group, each with its driver.
    ///
    /// # Errors
    /// As [`Self::iommu_group`].
    pub fn group_peers(
        &self,
        addr: &PciAddress,
    ) -> Result<Vec<(String, Option<String>)>, ProvisionError> {
        let group = self.iommu_group(addr)?;
        let dir = self
            .sys
            .join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices");
        let mut peers = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_error(addr, Step::IommuGroup, &dir, &e))? {
            let entry = entry.map_err(|e| io_error(addr, Step::IommuGroup, &dir, &e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != addr.as_str() {
                let driver = link_name(&entry.path().join("driver"));
                peers.push((name, driver));
            }
        }
        peers.sort();
        Ok(peers)
    }

    /// Binds a device to vfio-pci: `driver_override`, unbind from its
    /// driver, `drivers_probe`, then waits until vfio-pci has it. A device
    /// already on vfio-pci is left as it is.
    ///
    /// # Errors
    /// vfio-pci not loaded, a write refused, or the device not taken by
    /// vfio-pci in time.
    pub fn bind_vfio(&self, addr: &PciAddress) -> Result<Binding, ProvisionError> {
        let step = Step::BindVfio;
        let previous = self.driver(addr)?;
        let iommu_group = self.iommu_group(addr)?;
        if previous.as_deref() == Some(VFIO_PCI) {
            return Ok(Binding {
                addr: addr.clone(),
                previous_driver: None,
                iommu_group,
            });
        }
        if !self.sys.join("bus/pci/drivers").join(VFIO_PCI).exists() {
            return Err(ProvisionError::new(
                addr,
                step,
                "vfio-pci is not loaded (no bus/pci/drivers/vfio-pci): modprobe vfio-pci",
            ));
        }
        let dir = self.device_dir(addr);
        write(addr, step, &dir.join("driver_override"), VFIO_PCI)?;
        if previous.is_some() {
            write(addr, step, &dir.join("driver/unbind"), addr.as_str())?;
        }
        write(
            addr,
            step,
            &self.sys.join("bus/pci/drivers_probe"),
            addr.as_str(),
        )?;
        self.wait_for(|| self.driver(addr).ok().flatten().as_deref() == Some(VFIO_PCI))
            .map_err(|()| {
                let now = self.driver(addr).ok().flatten();
                ProvisionError::new(
                    addr,
                    step,
                    format!(
                        "vfio-pci did not take the device within {:?} (its driver is {})",
                        self.timeout,
                        now.as_deref().unwrap_or("none")
                    ),
                )
            })?;
        Ok(Binding {
            addr: addr.clone(),
            previous_driver: previous,
            iommu_group,
        })
    }

    /// Gives a device back: unbinds it from vfio-pci, clears
    /// `driver_override` and lets the kernel probe its own driver. Waits
    /// until vfio-pci has let go. Releasing a device vfio-pci does not hold
    /// is not an error (release is idempotent).
    ///
    /// # Errors
    /// A write refused, or vfio-pci still holding it after the timeout (a
    /// VM still has it open).
    pub fn release(&self, addr: &PciAddress) -> Result<(), ProvisionError> {
        let step = Step::Release;
        let dir = self.device_dir(addr);
        let driver = self.driver(addr)?;
        // Clear the override first, so that the probe below is free to
        // pick the device's own driver ("\n" clears it, as the kernel
        // documents).
        write(addr, step, &dir.join("driver_override"), "\n")?;
        if driver.as_deref() != Some(VFIO_PCI) {
            return Ok(());
        }
        write(addr, step, &dir.join("driver/unbind"), addr.as_str())?;
        self.wait_for(|| self.driver(addr).ok().flatten().as_deref() != Some(VFIO_PCI))
            .map_err(|()| {
                ProvisionError::new(
                    addr,
                    step,
                    format!(
                        "vfio-pci still holds the device after {:?}: is a VM still using it?",
                        self.timeout
                    ),
                )
            })?;
        write(
            addr,
            step,
            &self.sys.join("bus/pci/drivers_probe"),
            addr.as_str(),
        )
    }

    fn wait_for(&self, mut done: impl FnMut() -> bool) -> Result<(), ()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if done() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(());
            }
            thread::sleep(POLL);
        }
    }
}

/// A physical function with SR-IOV.
#[derive(Clone, Debug)]
pub struct Pf {
    sysfs: Sysfs,
    addr: PciAddress,
}

impl Pf {
    /// Its address.
    #[must_use]
    pub fn addr(&self) -> &PciAddress {
        &self.addr
    }

    /// The most VFs it can have.
    ///
    /// # Errors
    /// The file cannot be read or is not a number.
    pub fn total_vfs(&self) -> Result<u16, ProvisionError> {
        self.read_number("sriov_totalvfs")
    }

    /// The VFs it has now.
    ///
    /// # Errors
    /// As [`Self::total_vfs`].
    pub fn num_vfs(&self) -> Result<u16, ProvisionError> {
        self.read_number("sriov_numvfs")
    }

    /// Makes it have `n` VFs, and waits until their `virtfnN` links are
    /// all there. The kernel refuses to change a non-zero count except
    /// through 0, so a change goes through 0: every VF is removed and made
    /// anew, which must not happen under running instances (the agent sets
    /// the count once, at start).
    ///
    /// # Errors
    /// More than `sriov_totalvfs`, a refused write (the PF driver may not
    /// support SR-IOV), or the VFs not appearing in time.
    pub fn set_num_vfs(&self, n: u16) -> Result<(), ProvisionError> {
        let step = Step::SetNumVfs;
        let total = self.total_vfs()?;
        if n > total {
            return Err(ProvisionError::new(
                &self.addr,
                step,
                format!("asked for {n} VFs; the device supports at most {total}"),
            ));
        }
        let now = self.num_vfs()?;
        if now == n {
            return Ok(());
        }
        let file = self.sysfs.device_dir(&self.addr).join("sriov_numvfs");
        if now != 0 {
            write(&self.addr, step, &file, "0")?;
            // Linux removes the VFs before the write returns; waiting for
            // it costs nothing there and keeps the order with a slower
            // implementation of the file.
            self.sysfs
                .wait_for(|| self.vfs().is_ok_and(|v| v.is_empty()))
                .map_err(|()| {
                    ProvisionError::new(&self.addr, step, "the VFs did not go away after writing 0")
                })?;
        }
        if n != 0 {
            write(&self.addr, step, &file, &n.to_string())?;
        }
        self.sysfs
            .wait_for(|| self.vfs().is_ok_and(|v| v.len() == usize::from(n)))
            .map_err(|()| {
                ProvisionError::new(
                    &self.addr,
                    step,
                    format!(
                        "the kernel accepted {n} VFs but they did not appear within {:?}",
                        self.sysfs.timeout
                    ),
                )
            })
    }

    /// Its VFs' addresses, by VF index (`virtfn0` first).
    ///
    /// # Errors
    /// The device directory cannot be read, or a link is not an address.
    pub fn vfs(&self) -> Result<Vec<PciAddress>, ProvisionError> {
        let step = Step::ListVfs;
        let dir = self.sysfs.device_dir(&self.addr);
        let mut vfs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_error(&self.addr, step, &dir, &e))? {
            let entry = entry.map_err(|e| io_error(&self.addr, step, &dir, &e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(index) = name
                .strip_prefix("virtfn")
                .and_then(|i| i.parse::<u16>().ok())
            else {
                continue;
            };
            let target = link_name(&entry.path()).unwrap_or_default();
            let addr = target.parse::<PciAddress>().map_err(|e| {
                ProvisionError::new(&self.addr, step, format!("{name} points to {target}: {e}"))
            })?;
            vfs.push((index, addr));
        }
        vfs.sort();
        Ok(vfs.into_iter().map(|(_, a)| a).collect())
    }

    fn read_number(&self, file: &str) -> Result<u16, ProvisionError> {
        let path = self.sysfs.device_dir(&self.addr).join(file);
        let text = fs::read_to_string(&path)
            .map_err(|e| io_error(&self.addr, Step::ReadSriov, &path, &e))?;
        text.trim().parse().map_err(|_| {
            ProvisionError::new(
                &self.addr,
                Step::ReadSriov,
                format!("{} holds `{}`, not a number", path.display(), text.trim()),
            )
        })
    }
}

/// The last component of a symlink's target (`../../bus/pci/drivers/igb`
/// gives `igb`).
fn link_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn write(addr: &PciAddress, step: Step, path: &Path, value: &str) -> Result<(), ProvisionError> {
    fs::write(path, value).map_err(|e| io_error(addr, step, path, &e))
}

fn io_error(addr: &PciAddress, step: Step, path: &Path, e: &io::Error) -> ProvisionError {
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied => " (run as root)",
        io::ErrorKind::NotFound => " (missing)",
        _ => "",
    };
    ProvisionError::new(addr, step, format!("{}: {e}{hint}", path.display()))
}
