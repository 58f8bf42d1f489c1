//! The chaingate DPU runtime: the std host of the fast path on the DPU's
//! Arm cores (Linux), and the operator tools that come with it.
//!
//! - [`config`]: the runtime's own configuration file (ports, sizes,
//!   control address).
//! - [`io`]: packet I/O behind [`io::PacketIo`]; [`io::afpacket`] for
//!   Linux network devices.
//! - [`engine`]: the data path loop: switch, fast path, offload manager,
//!   telemetry.
//! - [`control`]: the control API server.
//! - [`daemon`]: `dpu-fw run`, putting those together.
//! - `dpdk` (feature `dpdk`): DPDK ports and the rte_flow backend.
//! - [`ctl`]: a control API client for operators.
//! - [`capture`]: a streaming pcap/pcapng reader that trusts no length.
//! - [`flows`]: the `dpu-fw flows` capture dump.
//! - [`rules`]: the rules in force, or those synthetic sessions would
//!   get, as dpdk-testpmd commands (`dpu-fw rules`, `dpu-fw ctl rules`).
//!
//! Unsafe code lives only in `dpdk` (the safe layer over DPDK); the
//! system calls of AF_PACKET I/O are in `chaingate-pktio`.

#![deny(unsafe_code)]

pub mod capture;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod engine;
pub mod flows;
pub mod rules;

/// Packet I/O (the `chaingate-pktio` crate, shared with the service
/// functions and the test rig).
pub use chaingate_pktio as io;
