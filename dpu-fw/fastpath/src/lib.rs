//! The chaingate fast path: everything the DPU decides for a packet that the
//! NIC's flow rules did not handle.
//!
//! `no_std` with fixed capacities: this crate runs unchanged on the DPU's
//! Arm cores under the std runtime, and builds for bare-metal
//! `aarch64-unknown-none` as proof that nothing here reaches for an OS.
//! Tables are allocated (`alloc`) when a configuration is applied or the
//! data path is created, never per packet.
//! Nothing in it panics on any input; the lints below hold that line outside
//! tests.

#![no_std]
// Unsafe code is forbidden; only the tests' counting allocator (which
// proves the packet path allocates nothing) needs it.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

extern crate alloc;

pub mod balance;
pub mod classify;
pub mod datapath;
pub mod meter;
pub mod offload;
pub mod session;
pub mod wire;

#[cfg(test)]
mod testing;
