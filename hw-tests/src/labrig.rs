//! LabRig: the scenarios against a real BlueField, described by a file the
//! lab writes. `dpu-fw` runs on the DPU's Arm cores with the rte_flow
//! backend (docs/bluefield.md); the test runs on the host, where the VF
//! netdevs of the service instances and the interfaces facing the DPU's
//! uplinks are.
//!
//! ```yaml
//! dpu: "192.168.100.2:7400"      # dpu-fw's control API on the BlueField
//! lan: enp1s0f0                  # host interface wired to the lan uplink
//! wan: enp1s0f1                  # host interface wired to the wan uplink
//! reflect: [enp3s0f0v0]          # instance VFs' netdevs: the test reflects on them
//! gateway: |                     # the configuration to apply (docs/config.md)
//!   ports: ...
//! frames: 10000                  # frames of one established flow
//! ```
//!
//! Tests that use it run only when `CHAINGATE_LABRIG` names such a file.

use std::path::Path;

use serde::Deserialize;

/// A LabRig description.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabRig {
    /// dpu-fw's control API.
    pub dpu: String,
    /// The host interface on the lan side.
    pub lan: String,
    /// The host interface on the wan side.
    pub wan: String,
    /// Netdevs to reflect frames on (the instances).
    #[serde(default)]
    pub reflect: Vec<String>,
    /// The gateway configuration, YAML.
    pub gateway: String,
    /// Frames to send of one flow.
    #[serde(default = "default_frames")]
    pub frames: u32,
}

const fn default_frames() -> u32 {
    10_000
}

impl LabRig {
    /// The description `CHAINGATE_LABRIG` names, or `None` (the test does
    /// not apply here).
    ///
    /// # Panics
    /// The file is named but cannot be read or parsed.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("CHAINGATE_LABRIG")?;
        let path = Path::new(&path);
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Some(serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }
}
