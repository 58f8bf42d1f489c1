//! chaingate's gRPC APIs and the boundary where their messages become
//! validated configuration.
//!
//! - [`dpu`]: the DPU control API (`chaingate.dpu.v1`) the host agent uses
//!   to drive `dpu-fw`.
//! - [`agent`]: the operator API (`chaingate.agent.v1`) of the host agent.
//! - [`convert`]: `TryFrom<&dpu::Config> for chaingate_shared::Config`,
//!   which rejects bad input with the path of the field at fault
//!   (`instances[2].attachment.port: no port named "vf9"`). Nothing past
//!   it checks again.
//! - [`file`]: the YAML an operator writes, parsed strictly (an unknown
//!   field is an error with its path) into a [`dpu::Config`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// The generated code, nested as the protobuf packages are (the agent API
/// refers to the DPU API's messages by relative path).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic
)]
pub mod chaingate {
    /// `chaingate.dpu.*`.
    pub mod dpu {
        /// `chaingate.dpu.v1`.
        pub mod v1 {
            tonic::include_proto!("chaingate.dpu.v1");
        }
    }
    /// `chaingate.agent.*`.
    pub mod agent {
        /// `chaingate.agent.v1`.
        pub mod v1 {
            tonic::include_proto!("chaingate.agent.v1");
        }
    }
}

/// The DPU control API, `chaingate.dpu.v1`.
pub use chaingate::dpu::v1 as dpu;

/// The host agent's operator API, `chaingate.agent.v1`.
pub use chaingate::agent::v1 as agent;

pub mod convert;
pub mod file;

pub use convert::ConvertError;
pub use file::FileError;
