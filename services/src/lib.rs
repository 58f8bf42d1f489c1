//! chaingate's reference service functions and what they share.
//!
//! A service function runs in a service instance (a VM, or a network
//! namespace on the simulated rig) on its VF interface, bump in the wire:
//! a frame comes in, is processed, and goes back out the same interface
//! with its segment VLAN tag kept, so the DPU knows where in the chain it
//! is.
//!
//! - [`probe`]: the health probe the host agent asks, on a Unix socket
//!   (process instances) or a serial port (VMs).
//! - [`wire`]: the bump-in-the-wire loop and its counters.
//! - [`monitor`]: passes everything, counts.
//! - [`firewall`]: a stateful filter.
//! - [`ids`]: payload signatures, alert or drop.
//! - [`nat`]: source NAT with port allocation.
//! - [`cap`], [`stamp`]: what every function can have: a bandwidth cap,
//!   and the trace stamp tests read.

#![forbid(unsafe_code)]

pub mod cap;
pub mod firewall;
pub mod ids;
pub mod monitor;
pub mod nat;
pub mod probe;
pub mod stamp;
pub mod wire;
