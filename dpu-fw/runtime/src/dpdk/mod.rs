//! The safe layer over DPDK (feature `dpdk`): EAL start-up, mbuf pools and
//! mbufs, ethdev ports as [`PacketIo`](crate::io::PacketIo), and rte_flow
//! as a [`FlowOffload`](chaingate_fastpath::offload::FlowOffload) backend.
//!
//! This module and [`crate::io::afpacket`] are the runtime's only unsafe
//! code. Every C handle has an owner that releases it on drop (mempools,
//! mbufs, ports, flow rules, indirect actions, template tables); errors
//! carry the errno, named, and the driver's own message.
//!
//! What runs where: EAL, ports and bursts work on any DPDK device (CI uses
//! net_ring and net_af_packet); rule installation needs a device with
//! flow support (a BlueField's mlx5 in switchdev mode). On devices without
//! it every rte_flow call comes back refused (ENOSYS), which the offload
//! manager counts, and the data path forwards in software.

#![allow(unsafe_code)]

pub mod eal;
pub mod flow;
pub mod mbuf;
pub mod port;

use std::ffi::CStr;
use std::fmt;

pub use eal::{Eal, EalError};
pub use flow::{DpdkFlow, FlowError};
pub use mbuf::{Mbuf, Mempool, Stripped};
pub use port::{DpdkIo, EthPort, PortError};

/// An errno as DPDK returns it (positive), with its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Errno(pub i32);

impl Errno {
    /// `rte_errno` of this thread.
    #[must_use]
    pub fn last() -> Self {
        // SAFETY: reads a thread-local integer.
        Self(unsafe { dpdk_sys::cg_errno() })
    }

    /// From a negative return value (`-errno`).
    #[must_use]
    pub const fn from_ret(ret: i32) -> Self {
        Self(ret.wrapping_neg())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: rte_strerror returns a static or thread-local string for
        // any value.
        let text = unsafe { CStr::from_ptr(dpdk_sys::rte_strerror(self.0)) };
        write!(f, "{} (errno {})", text.to_string_lossy(), self.0)
    }
}
