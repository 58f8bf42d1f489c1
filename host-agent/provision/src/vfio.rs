//! The VFIO check a VF passes before a VM gets it, through rust-vmm's
//! `vfio-ioctls` (typed container, group and device objects that release
//! themselves when dropped; built without its KVM and MSHV bindings, since
//! QEMU owns the device once the check passed).
//!
//! [`check`] does what QEMU will do when it opens the VF, so that a VF that
//! QEMU would refuse is refused here first, with the reason: a container
//! with a type-1 v2 IOMMU, the IOMMU group viable (every device of the
//! group bound to vfio-pci or to nothing) and attached, the device fd,
//! vendor and device IDs read from config space, one page mapped for DMA
//! through the IOMMU and unmapped again, and a device reset. Everything is
//! closed again before returning.

use std::io;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use vfio_ioctls::{VfioContainer, VfioError};

use crate::sysfs::{Sysfs, VFIO_PCI};
use crate::{PciAddress, ProvisionError, Step};

/// What the check found: the device as QEMU will see it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VfioDevice {
    /// The device.
    pub addr: PciAddress,
    /// Its IOMMU group.
    pub iommu_group: u32,
    /// Size of its config space region, bytes.
    pub config_size: u64,
    /// Size of BAR 0, bytes (0: the device has none).
    pub bar0_size: u64,
    /// The most interrupt vectors of one kind (INTx, MSI, MSI-X) it has.
    pub max_interrupts: u32,
    /// PCI vendor ID, from config space through VFIO.
    pub vendor: u16,
    /// PCI device ID, likewise.
    pub device: u16,
}

/// The IOVA the check maps its page at: any address the IOMMU accepts will
/// do, since nothing uses the mapping.
const CHECK_IOVA: u64 = 0x1000_0000;

/// Opens `addr` through VFIO as a VM would, then closes it. The device
/// must be bound to vfio-pci ([`Sysfs::bind_vfio`]). VFIO itself is always
/// reached at `/dev/vfio` (as QEMU reaches it); `sysfs`'s device root only
/// tells whether it is there.
///
/// # Errors
/// A [`ProvisionError`] naming the step: no VFIO (module or IOMMU), the
/// group not viable (naming the devices that make it so), the group or
/// device busy (another process holds it), a DMA mapping refused (the
/// locked-memory limit), or an ioctl refused.
pub fn check(sysfs: &Sysfs, addr: &PciAddress) -> Result<VfioDevice, ProvisionError> {
    let group = sysfs.iommu_group(addr)?;
    if !sysfs.dev_root().join("vfio/vfio").exists() {
        return Err(ProvisionError::new(
            addr,
            Step::Container,
            "no VFIO on this host: modprobe vfio-pci",
        ));
    }
    if !sysfs.dev_root().join(format!("vfio/{group}")).exists() {
        return Err(ProvisionError::new(
            addr,
            Step::Group,
            format!(
                "{} is missing: is the device bound to vfio-pci?",
                sysfs.dev_root().join(format!("vfio/{group}")).display()
            ),
        ));
    }
    let container = VfioContainer::new(None).map_err(|e| {
        let why = match e {
            VfioError::VfioExtension => {
                "no type-1 v2 IOMMU: enable the IOMMU (intel_iommu=on)".to_owned()
            }
            e => e.to_string(),
        };
        ProvisionError::new(addr, Step::Container, why)
    })?;
    let container = Arc::new(container);
    let device = vfio_ioctls::VfioDevice::new(&sysfs.device_dir(addr), container.clone(), false)
        .map_err(|e| opening_failed(sysfs, addr, group, &e))?;

    // All ones, as a PCI read from nothing: what a failed read leaves.
    let mut ids = [0xffu8; 4];
    device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut ids, 0);
    let found = VfioDevice {
        addr: addr.clone(),
        iommu_group: group,
        config_size: device.get_region_size(VFIO_PCI_CONFIG_REGION_INDEX),
        bar0_size: device.get_region_size(VFIO_PCI_BAR0_REGION_INDEX),
        max_interrupts: device.max_interrupts(),
        vendor: u16::from_le_bytes([ids[0], ids[1]]),
        device: u16::from_le_bytes([ids[2], ids[3]]),
    };
    if found.config_size == 0 || found.vendor == 0xffff {
        return Err(ProvisionError::new(
            addr,
            Step::Device,
            format!(
                "config space unreadable through VFIO (size {}, vendor {:04x})",
                found.config_size, found.vendor
            ),
        ));
    }
    map_one_page(&container).map_err(|why| ProvisionError::new(addr, Step::Dma, why))?;
    device.reset();
    Ok(found)
}

/// Why `VfioDevice::new` failed, in words an operator can act on.
fn opening_failed(sysfs: &Sysfs, addr: &PciAddress, group: u32, e: &VfioError) -> ProvisionError {
    match e {
        VfioError::OpenGroup(io, _) if io.raw_os_error() == Some(libc::EBUSY) => {
            ProvisionError::new(
                addr,
                Step::Group,
                format!("IOMMU group {group} is busy: another process (a VM?) has it open"),
            )
        }
        VfioError::GroupViable => {
            let others: Vec<String> = sysfs
                .group_peers(addr)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, d)| d.as_deref().is_some_and(|d| d != VFIO_PCI))
                .map(|(dev, d)| format!("{dev} on {}", d.unwrap_or_default()))
                .collect();
            ProvisionError::new(
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
            )
        }
        VfioError::ContainerSetIOMMU(_) | VfioError::GroupSetContainer => {
            ProvisionError::new(addr, Step::Container, e.to_string())
        }
        VfioError::OpenGroup(..) | VfioError::GetGroupStatus => {
            ProvisionError::new(addr, Step::Group, e.to_string())
        }
        VfioError::GroupGetDeviceFD(errno) if errno.errno() == libc::EBUSY => ProvisionError::new(
            addr,
            Step::Device,
            "the device is busy: another process has it open",
        ),
        e => ProvisionError::new(addr, Step::Device, e.to_string()),
    }
}

/// Maps one anonymous page for DMA through the container's IOMMU and
/// unmaps it: the step where a VM's guest memory would meet the IOMMU (and
/// the locked-memory limit).
fn map_one_page(container: &VfioContainer) -> Result<(), String> {
    const PAGE: usize = 4096;
    // SAFETY: a fresh private anonymous mapping at an address the kernel
    // picks; nothing else refers to it, and it is unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(format!("mmap: {}", io::Error::last_os_error()));
    }
    // SAFETY: no Rust reference to the page exists while it is mapped for
    // DMA, and no device is running that could write to it; the mapping is
    // undone before the page is unmapped.
    let mapped = unsafe { container.vfio_dma_map(CHECK_IOVA, PAGE, page.cast()) };
    let result = match mapped {
        Ok(()) => container
            .vfio_dma_unmap(CHECK_IOVA, PAGE)
            .map_err(|e| format!("DMA unmap: {e}")),
        Err(e) => Err(format!(
            "{e}: is the locked-memory limit (ulimit -l) below a page?"
        )),
    };
    // SAFETY: `page` is the mapping made above, no longer mapped for DMA.
    unsafe { libc::munmap(page, PAGE) };
    result
}
