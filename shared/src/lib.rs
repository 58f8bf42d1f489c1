//! Types that the DPU fast path, the DPU runtime, the host agent and the
//! protocol crate all speak: the identity of a connection ([`FlowKey`]),
//! the validated configuration ([`Config`]), identifiers, time and
//! telemetry.
//!
//! This crate is `no_std` and allocation-free so that the fast path running
//! on the DPU's Arm cores can use every type here unchanged. Types are
//! validated when constructed and keep their invariants in private fields:
//! code that receives one does not check it again.

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

pub mod code;
pub mod config;
pub mod flow;
pub mod hash;
pub mod ids;
pub mod policy;
pub mod telemetry;
pub mod time;
pub mod underlay;

pub use config::{Config, ConfigBuilder, ConfigError};
pub use flow::{FlowDirection, FlowKey, IpProtocol, VlanId, VlanStack, VlanStackFull};
pub use ids::{ChainId, Generation, InstanceId, Name, PeerId, PortId, ServiceId};
pub use time::Nanos;
