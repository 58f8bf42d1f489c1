//! The chaingate host agent.
//!
//! - [`dpu`]: the client that keeps the DPU configured and brings its
//!   telemetry to the rest of the agent.

#![forbid(unsafe_code)]

pub mod dpu;
