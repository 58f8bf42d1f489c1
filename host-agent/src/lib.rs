//! The chaingate host agent.
//!
//! - [`dpu`]: the client that keeps the DPU configured and brings its
//!   telemetry to the rest of the agent.
//! - [`image`]: guest images (initramfs, kernel modules) for service VMs.
//! - [`inventory`]: the cluster inventory in etcd: this host's instances
//!   published under a lease, every host's watched.
//! - [`qemu`]: QEMU command lines for service VMs and test guests.
//!
//! VF provisioning (sysfs, VFIO) is the `chaingate-provision` crate, the
//! only place with unsafe code.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cluster;
pub mod config;
pub mod dpu;
pub mod image;
pub mod inventory;
pub mod launcher;
pub mod metrics;
pub mod qemu;
pub mod qmp;
pub mod scaler;
pub mod store;
pub mod vf;
