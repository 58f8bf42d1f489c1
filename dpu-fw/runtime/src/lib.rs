//! The chaingate DPU runtime: the std host of the fast path on the DPU's
//! Arm cores (Linux), and the operator tools that come with it.
//!
//! - [`capture`]: a streaming pcap/pcapng reader that trusts no length.
//! - [`flows`]: the `dpu-fw flows` capture dump.

#![forbid(unsafe_code)]

pub mod capture;
pub mod flows;
