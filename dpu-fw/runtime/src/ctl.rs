//! `dpu-fw ctl`: talks to a running dpu-fw's control API, for operators
//! debugging a DPU by hand (the host agent is the normal client). Every
//! answer is printed as one JSON object per line.

use std::path::Path;
use std::time::Duration;

use chaingate_proto::dpu;
use chaingate_proto::dpu::dpu_control_client::DpuControlClient;
use tonic::transport::Channel;

/// What went wrong talking to the DPU.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The address is not a URI.
    #[error("\"{0}\" is not an address (give HOST:PORT)")]
    Address(String),
    /// No connection.
    #[error("cannot reach dpu-fw at {addr}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The DPU refused the request.
    #[error("{}", .0.message())]
    Refused(tonic::Status),
    /// The configuration file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: chaingate_proto::FileError,
    },
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> Self {
        Self::Refused(s)
    }
}

/// Connects to `addr` (`HOST:PORT` or a URI), within a few seconds.
///
/// # Errors
/// [`CtlError`].
pub async fn connect(addr: &str) -> Result<DpuControlClient<Channel>, CtlError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Channel::from_shared(uri)
        .map_err(|_| CtlError::Address(addr.to_owned()))?
        .connect_timeout(Duration::from_secs(3));
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| CtlError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(DpuControlClient::new(channel))
}

/// Applies a configuration file. Without a generation in the file, the one
/// after the DPU's current generation is used.
///
/// # Errors
/// [`CtlError`]: the file's error with its field path, or the DPU's.
pub async fn apply(
    client: &mut DpuControlClient<Channel>,
    path: &Path,
) -> Result<dpu::ApplyConfigResponse, CtlError> {
    let text = std::fs::read_to_string(path).map_err(|source| CtlError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file_error = |source| CtlError::File {
        path: path.display().to_string(),
        source,
    };
    let parsed = chaingate_proto::file::parse(&text).map_err(file_error)?;
    let generation = match parsed.generation {
        Some(g) => g,
        None => {
            client
                .get_stats(dpu::GetStatsRequest {})
                .await?
                .into_inner()
                .generation
                + 1
        }
    };
    let (_, config) = chaingate_proto::file::load(&text, generation).map_err(file_error)?;
    Ok(client
        .apply_config(dpu::ApplyConfigRequest {
            config: Some(config),
        })
        .await?
        .into_inner())
}

/// Prints a message as one JSON line.
pub fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("dpu-fw: cannot print the answer: {e}"),
    }
}
