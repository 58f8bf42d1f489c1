//! The VFs the agent gives to instances.
//!
//! Each VF is known twice: by the DPU port that is its representor (the
//! name in the DPU's configuration) and by what the host sees of it:
//! - `pci`: an SR-IOV VF (`0000:03:10.1`), bound to vfio-pci and checked
//!   through VFIO before a VM gets it, given back to its driver after;
//! - `tap`: a tap device standing for a VF on the simulated rig (QEMU
//!   instances);
//! - `netdev`: a network device (a veth end on the simulated rig) that a
//!   process instance gets in its own network namespace.

use std::collections::BTreeSet;
use std::path::Path;

use chaingate_provision::{PciAddress, Sysfs, vfio};
use serde::{Deserialize, Serialize};

/// How the host sees a VF.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VfKind {
    /// An SR-IOV VF, by PCI address.
    Pci,
    /// A tap device.
    Tap,
    /// A network device.
    Netdev,
}

impl VfKind {
    /// The word in configurations.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pci => "pci",
            Self::Tap => "tap",
            Self::Netdev => "netdev",
        }
    }
}

/// A VF: its DPU port and its host device.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct VfRef {
    /// The DPU port (representor) name.
    pub port: String,
    /// The host side: PCI address, tap or network device name.
    pub device: String,
}

/// One VF of the pool.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PoolVf {
    /// Which it is.
    pub vf: VfRef,
    /// How the host sees it.
    pub kind: VfKind,
}

/// The VFs the agent may use.
#[derive(Clone, Debug)]
pub struct VfPool {
    vfs: Vec<PoolVf>,
    sysfs: Sysfs,
}

/// A VF that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VfError {
    /// Provisioning (sysfs, VFIO) failed.
    #[error(transparent)]
    Provision(#[from] chaingate_provision::ProvisionError),
    /// The device is not there.
    #[error("VF {port}: {kind} device `{device}` does not exist")]
    Missing {
        /// The port.
        port: String,
        /// Its kind.
        kind: &'static str,
        /// The device.
        device: String,
    },
}

impl VfPool {
    /// A pool of `vfs`, with sysfs at `sysfs`.
    #[must_use]
    pub fn new(vfs: Vec<PoolVf>, sysfs: Sysfs) -> Self {
        Self { vfs, sysfs }
    }

    /// Every VF.
    #[must_use]
    pub fn all(&self) -> &[PoolVf] {
        &self.vfs
    }

    /// The kind of a VF of the pool.
    #[must_use]
    pub fn kind_of(&self, vf: &VfRef) -> Option<VfKind> {
        self.vfs.iter().find(|p| &p.vf == vf).map(|p| p.kind)
    }

    /// The first VF of one of `kinds` that is not in `used`.
    #[must_use]
    pub fn free(&self, kinds: &[VfKind], used: &BTreeSet<&VfRef>) -> Option<PoolVf> {
        self.vfs
            .iter()
            .find(|p| kinds.contains(&p.kind) && !used.contains(&p.vf))
            .cloned()
    }

    /// Gets a VF ready for an instance: a PCI VF is bound to vfio-pci and
    /// passes the VFIO check; a tap or network device must exist.
    ///
    /// # Errors
    /// [`VfError`], naming the VF and the step.
    pub fn prepare(&self, vf: &PoolVf) -> Result<(), VfError> {
        match vf.kind {
            VfKind::Pci => {
                let addr: PciAddress = vf.vf.device.parse().map_err(|_| VfError::Missing {
                    port: vf.vf.port.clone(),
                    kind: "pci",
                    device: vf.vf.device.clone(),
                })?;
                self.sysfs.bind_vfio(&addr)?;
                let device = vfio::check(&self.sysfs, &addr)?;
                tracing::info!(vf = %addr, group = device.iommu_group, vendor = device.vendor, device = device.device, "VF ready for VFIO");
                Ok(())
            }
            VfKind::Tap | VfKind::Netdev => {
                if Path::new("/sys/class/net").join(&vf.vf.device).exists() {
                    Ok(())
                } else {
                    Err(VfError::Missing {
                        port: vf.vf.port.clone(),
                        kind: vf.kind.as_str(),
                        device: vf.vf.device.clone(),
                    })
                }
            }
        }
    }

    /// Gives a VF back after its instance stopped (a PCI VF to its own
    /// driver).
    ///
    /// # Errors
    /// [`VfError`].
    pub fn release(&self, vf: &VfRef) -> Result<(), VfError> {
        if self.kind_of(vf) == Some(VfKind::Pci)
            && let Ok(addr) = vf.device.parse::<PciAddress>()
        {
            self.sysfs.release(&addr)?;
        }
        Ok(())
    }
}
