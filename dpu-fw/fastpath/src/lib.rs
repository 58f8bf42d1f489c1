//! The chaingate fast path: everything the DPU decides for a packet that the
//! NIC's flow rules did not handle.
//!
//! `no_std`, no allocation, fixed capacities: this crate runs unchanged on
//! the DPU's Arm cores under the std runtime, and builds for bare-metal
//! `aarch64-unknown-none` as proof that nothing here reaches for an OS.
//! Nothing in it panics on any input; the lints below hold that line outside
//! tests.

#![no_std]
#![forbid(unsafe_code)]
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

pub mod wire;
