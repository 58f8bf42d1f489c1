//! The VFIO check a VF passes before a VM gets it, through the VFIO ioctls
//! of `linux/vfio.h`: the only unsafe code of the host agent.
//!
//! [`check`] does what QEMU will do when it opens the VF, so that a VF that
//! QEMU would refuse is refused here first, with the reason: open the
//! container, check the API version and a type-1 IOMMU, open the IOMMU
//! group, check that it is viable (every device of the group is bound to
//! vfio-pci or to nothing), attach it to the container, set the IOMMU,
//! get the device fd, read the device info and the vendor and device IDs
//! from config space. Everything is closed again before returning.
//!
//! The handful of ioctls needed is written here rather than taken from a
//! crate: rust-vmm's vfio-ioctls brings KVM (or MSHV) bindings the agent
//! has no use for, since QEMU owns the device once the check passed.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::sysfs::{Sysfs, VFIO_PCI};
use crate::{PciAddress, ProvisionError, Step};

// _IO(VFIO_TYPE, VFIO_BASE + n), VFIO_TYPE = ';', VFIO_BASE = 100.
const fn vfio_io(n: u8) -> libc::Ioctl {
    ((b';' as libc::Ioctl) << 8) | (100 + n) as libc::Ioctl
}
const VFIO_GET_API_VERSION: libc::Ioctl = vfio_io(0);
const VFIO_CHECK_EXTENSION: libc::Ioctl = vfio_io(1);
const VFIO_SET_IOMMU: libc::Ioctl = vfio_io(2);
const VFIO_GROUP_GET_STATUS: libc::Ioctl = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: libc::Ioctl = vfio_io(4);
const VFIO_GROUP_UNSET_CONTAINER: libc::Ioctl = vfio_io(5);
const VFIO_GROUP_GET_DEVICE_FD: libc::Ioctl = vfio_io(6);
const VFIO_DEVICE_GET_INFO: libc::Ioctl = vfio_io(7);
const VFIO_DEVICE_GET_REGION_INFO: libc::Ioctl = vfio_io(8);

const VFIO_API_VERSION: libc::c_int = 0;
const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct DeviceInfo {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

/// What the check found: the device as QEMU will see it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VfioDevice {
    /// The device.
    pub addr: PciAddress,
    /// Its IOMMU group.
    pub iommu_group: u32,
    /// The IOMMU type the container took (3: type-1 v2, 1: type-1).
    pub iommu_type: u32,
    /// Its regions (BARs, ROM, config space, ...).
    pub num_regions: u32,
    /// Its interrupt kinds (INTx, MSI, MSI-X, ...).
    pub num_irqs: u32,
    /// It can be reset through VFIO.
    pub resettable: bool,
    /// PCI vendor ID, from config space through VFIO.
    pub vendor: u16,
    /// PCI device ID, likewise.
    pub device: u16,
}

/// Opens `addr` through VFIO as a VM would, then closes it. The device
/// must be bound to vfio-pci ([`Sysfs::bind_vfio`]).
///
/// # Errors
/// A [`ProvisionError`] naming the step: no VFIO (module or IOMMU), the
/// group not viable (naming the devices that make it so), the group or
/// device busy (another process holds it), or an ioctl refused.
pub fn check(sysfs: &Sysfs, addr: &PciAddress) -> Result<VfioDevice, ProvisionError> {
    let group = sysfs.iommu_group(addr)?;

    let container_path = sysfs.dev_root().join("vfio/vfio");
    let container = open(&container_path).map_err(|e| {
        let why = if e.kind() == io::ErrorKind::NotFound {
            "no VFIO on this host: modprobe vfio-pci".to_owned()
        } else {
            format!("{}: {e}", container_path.display())
        };
        ProvisionError::new(addr, Step::Container, why)
    })?;
    // SAFETY: a plain ioctl without argument on an fd we own.
    let version = unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION) };
    if version != VFIO_API_VERSION {
        return Err(ProvisionError::new(
            addr,
            Step::Container,
            format!("VFIO API version {version}, expected {VFIO_API_VERSION}"),
        ));
    }
    let iommu_type = [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU]
        .into_iter()
        // SAFETY: CHECK_EXTENSION takes the extension number by value.
        .find(|t| unsafe { libc::ioctl(container.as_raw_fd(), VFIO_CHECK_EXTENSION, *t) } > 0)
        .ok_or_else(|| {
            ProvisionError::new(
                addr,
                Step::Container,
                "no type-1 IOMMU: enable the IOMMU (intel_iommu=on)",
            )
        })?;

    let group_path = sysfs.dev_root().join(format!("vfio/{group}"));
    let group_file = open(&group_path).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => {
                format!("IOMMU group {group} is busy: another process (a VM?) has it open")
            }
            Some(libc::ENOENT) => format!(
                "{} is missing: is the device bound to vfio-pci?",
                group_path.display()
            ),
            _ => format!("{}: {e}", group_path.display()),
        };
        ProvisionError::new(addr, Step::Group, why)
    })?;
    let mut status = GroupStatus {
        argsz: size_of::<GroupStatus>() as u32,
        flags: 0,
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `status`, which
    // lives across the call.
    ioctl_result(unsafe {
        libc::ioctl(
            group_file.as_raw_fd(),
            VFIO_GROUP_GET_STATUS,
            &raw mut status,
        )
    })
    .map_err(|e| ProvisionError::new(addr, Step::Group, format!("GROUP_GET_STATUS: {e}")))?;
    if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
        let others: Vec<String> = sysfs
            .group_peers(addr)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, d)| d.as_deref().is_some_and(|d| d != VFIO_PCI))
            .map(|(dev, d)| format!("{dev} on {}", d.unwrap_or_default()))
            .collect();
        return Err(ProvisionError::new(
            addr,
            Step::Group,
            format!(
                "IOMMU group {group} is not viable: every device in it must be bound to vfio-pci or to nothing (others: {})",
                if others.is_empty() {
                    "none found".to_owned()
                } else {
                    others.join(", ")
                }
            ),
        ));
    }
    let container_fd: libc::c_int = container.as_raw_fd();
    // SAFETY: SET_CONTAINER reads one int through the pointer.
    ioctl_result(unsafe {
        libc::ioctl(
            group_file.as_raw_fd(),
            VFIO_GROUP_SET_CONTAINER,
            &raw const container_fd,
        )
    })
    .map_err(|e| ProvisionError::new(addr, Step::Group, format!("GROUP_SET_CONTAINER: {e}")))?;
    let attached = Attached(&group_file);
    // SAFETY: SET_IOMMU takes the type by value.
    ioctl_result(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_SET_IOMMU, iommu_type) })
        .map_err(|e| ProvisionError::new(addr, Step::Container, format!("SET_IOMMU: {e}")))?;

    let name = std::ffi::CString::new(addr.as_str()).expect("PCI addresses have no NUL");
    // SAFETY: GET_DEVICE_FD reads a NUL-terminated string that outlives
    // the call; a non-negative result is a new fd that we take ownership of.
    let device_fd = unsafe {
        libc::ioctl(
            group_file.as_raw_fd(),
            VFIO_GROUP_GET_DEVICE_FD,
            name.as_ptr(),
        )
    };
    if device_fd < 0 {
        let e = io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => "the device is busy: another process has it open".to_owned(),
            _ => format!("GROUP_GET_DEVICE_FD: {e}"),
        };
        return Err(ProvisionError::new(addr, Step::Device, why));
    }
    // SAFETY: the kernel just gave us this fd and nothing else owns it.
    let device = File::from(unsafe { OwnedFd::from_raw_fd(device_fd) });

    let mut info = DeviceInfo {
        argsz: size_of::<DeviceInfo>() as u32,
        ..DeviceInfo::default()
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `info`.
    ioctl_result(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_GET_INFO, &raw mut info) })
        .map_err(|e| ProvisionError::new(addr, Step::Device, format!("DEVICE_GET_INFO: {e}")))?;
    if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
        return Err(ProvisionError::new(
            addr,
            Step::Device,
            "VFIO does not present it as a PCI device",
        ));
    }
    let mut region = RegionInfo {
        argsz: size_of::<RegionInfo>() as u32,
        index: VFIO_PCI_CONFIG_REGION_INDEX,
        ..RegionInfo::default()
    };
    // SAFETY: the kernel reads `index` and writes at most `argsz` bytes.
    ioctl_result(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            VFIO_DEVICE_GET_REGION_INFO,
            &raw mut region,
        )
    })
    .map_err(|e| ProvisionError::new(addr, Step::Device, format!("config space region: {e}")))?;
    let mut ids = [0u8; 4];
    device
        .read_exact_at(&mut ids, region.offset)
        .map_err(|e| ProvisionError::new(addr, Step::Device, format!("config space read: {e}")))?;
    drop(device);
    drop(attached);

    Ok(VfioDevice {
        addr: addr.clone(),
        iommu_group: group,
        iommu_type: iommu_type as u32,
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
        resettable: info.flags & VFIO_DEVICE_FLAGS_RESET != 0,
        vendor: u16::from_le_bytes([ids[0], ids[1]]),
        device: u16::from_le_bytes([ids[2], ids[3]]),
    })
}

/// Detaches the group from its container when dropped, so that the check
/// leaves nothing behind even when a later step fails.
struct Attached<'a>(&'a File);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        // SAFETY: a plain ioctl without argument on an fd that is open for
        // as long as `self` borrows it. A failure leaves the kernel to
        // detach when the fds close.
        unsafe { libc::ioctl(self.0.as_raw_fd(), VFIO_GROUP_UNSET_CONTAINER) };
    }
}

fn open(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn ioctl_result(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_vfio_h() {
        // _IO(';', 100) and on, as the kernel header defines them.
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(size_of::<RegionInfo>(), 32);
        assert_eq!(size_of::<DeviceInfo>(), 16);
    }
}
