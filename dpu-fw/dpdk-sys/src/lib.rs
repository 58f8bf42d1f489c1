//! Raw bindings to DPDK 22.11: EAL, ethdev, rte_flow (with the template and
//! asynchronous API), mbuf, mempool, and `cg_*` wrappers for what DPDK
//! only has as inline functions, macros or thread-local variables.
//!
//! Generated at build time by bindgen over the system's headers when the
//! `bindings` feature is on; without it this crate is empty, so that a
//! build of the workspace needs no DPDK. Everything here is `unsafe` to
//! call; dpu-fw's `dpdk` module is the safe layer.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks
)]

#[cfg(feature = "bindings")]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
