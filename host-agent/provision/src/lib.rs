//! SR-IOV virtual functions for chaingate's service instances.
//!
//! Provisioning a VF for a service VM is a fixed sequence, each step of
//! which can fail on a real host for reasons an operator must be told
//! precisely:
//!
//! 1. [`Sysfs::pf`]: the physical function, its `sriov_totalvfs`;
//!    [`Pf::set_num_vfs`] creates the VFs and [`Pf::vfs`] maps `virtfnN`
//!    to PCI addresses.
//! 2. [`Sysfs::bind_vfio`]: `driver_override`, unbind from the VF driver,
//!    `drivers_probe`, and a check that vfio-pci took it.
//! 3. [`vfio::check`]: the VF's IOMMU group through the VFIO ioctls: a
//!    container, the group viable, the device fd and its info, config space
//!    readable. Only then does a VM get the VF.
//! 4. [`Sysfs::release`]: the VF back to its own driver.
//!
//! Every path hangs off one root ([`Sysfs::new`]), so the unit tests run on
//! a tree they build, and the same code runs against a real kernel in the
//! VFIO guest test (`chaingate-agent`'s `tests/vfio_guest.rs`).
//!
//! Every error is a [`ProvisionError`]: the PCI address, the step, and the
//! cause.

pub mod sysfs;
pub mod tap;
pub mod vfio;

pub use sysfs::{Binding, Pf, Sysfs};

use std::fmt;
use std::str::FromStr;

/// A PCI address in the kernel's form, `dddd:bb:dd.f` (lowercase hex).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PciAddress(String);

impl PciAddress {
    /// The address as sysfs spells it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not a PCI address.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a PCI address: write dddd:bb:dd.f, as in 0000:03:00.1")]
pub struct BadPciAddress(String);

impl FromStr for PciAddress {
    type Err = BadPciAddress;

    /// Takes `dddd:bb:dd.f`, or `bb:dd.f` for domain 0; hex of any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPciAddress(s.to_owned());
        let full = if s.matches(':').count() == 1 {
            format!("0000:{s}")
        } else {
            s.to_owned()
        };
        let (domain, rest) = full.split_once(':').ok_or_else(bad)?;
        let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let hex = |part: &str, digits: usize, max: u32| {
            (part.len() == digits && part.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(part, 16).ok())
                .flatten()
                .filter(|v| *v <= max)
        };
        let (Some(domain), Some(bus), Some(dev), Some(func)) = (
            hex(domain, 4, 0xffff),
            hex(bus, 2, 0xff),
            hex(dev, 2, 0x1f),
            hex(func, 1, 7),
        ) else {
            return Err(bad());
        };
        Ok(Self(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}")))
    }
}

/// The provisioning step that failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    /// Reading the PF's SR-IOV capability.
    ReadSriov,
    /// Changing `sriov_numvfs`.
    SetNumVfs,
    /// Mapping `virtfnN` to addresses.
    ListVfs,
    /// Finding the device's driver.
    ReadDriver,
    /// Binding to vfio-pci.
    BindVfio,
    /// Giving the VF back to its driver.
    Release,
    /// Finding the IOMMU group.
    IommuGroup,
    /// The VFIO container (`/dev/vfio/vfio`).
    Container,
    /// The IOMMU group (`/dev/vfio/N`).
    Group,
    /// The device in its group.
    Device,
    /// Mapping memory for the device's DMA through the IOMMU.
    Dma,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReadSriov => "read SR-IOV capability",
            Self::SetNumVfs => "set sriov_numvfs",
            Self::ListVfs => "list VFs",
            Self::ReadDriver => "read driver",
            Self::BindVfio => "bind to vfio-pci",
            Self::Dma => "map DMA",
            Self::Release => "release to its driver",
            Self::IommuGroup => "find IOMMU group",
            Self::Container => "open VFIO container",
            Self::Group => "open IOMMU group",
            Self::Device => "open VFIO device",
        })
    }
}

/// A provisioning step that failed, for one device.
#[derive(Debug, thiserror::Error)]
#[error("{addr}: {step}: {cause}")]
pub struct ProvisionError {
    /// The device.
    pub addr: PciAddress,
    /// The step.
    pub step: Step,
    /// What went wrong, in words an operator can act on.
    pub cause: String,
}

impl ProvisionError {
    pub(crate) fn new(addr: &PciAddress, step: Step, cause: impl Into<String>) -> Self {
        Self {
            addr: addr.clone(),
            step,
            cause: cause.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_normalised() {
        let a: PciAddress = "0000:03:00.1".parse().unwrap();
        assert_eq!(a.as_str(), "0000:03:00.1");
        let b: PciAddress = "03:1F.7".parse().unwrap();
        assert_eq!(b.as_str(), "0000:03:1f.7");
        let c: PciAddress = "ABCD:ff:00.0".parse().unwrap();
        assert_eq!(c.to_string(), "abcd:ff:00.0");
    }

    #[test]
    fn bad_pci_addresses_are_refused() {
        for s in [
            "",
            "03:00",
            "0000:03:00.8",
            "0000:03:20.0",
            "0000:3:00.0",
            "00000:03:00.0",
            "0000:03:00.x",
            "0000:03:00.1 ",
            "0000/03:00.1",
        ] {
            let e = s.parse::<PciAddress>().unwrap_err();
            assert!(e.to_string().contains("dddd:bb:dd.f"), "{s}: {e}");
        }
    }
}
