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
//!
//! # The scenarios (chain_order, nat_keeps_path, malformed_storm) run
//! # against the host agent, with traffic between two host interfaces:
//! agent: /run/chaingate/agent.sock
//! lan_netns: lan                 # where `lan` is (default: the host's namespace)
//! wan_netns: wan
//! web_chain:                     # how the agent launches the web chain's services
//!   firewall: { vm: { kernel: /var/lib/chaingate/vmlinuz, initrd: /var/lib/chaingate/firewall.img, memory_mib: 256, cpus: 1 } }
//!   ids: { vm: { kernel: /var/lib/chaingate/vmlinuz, initrd: /var/lib/chaingate/ids.img, memory_mib: 256, cpus: 1 } }
//!   nat: { vm: { kernel: /var/lib/chaingate/vmlinuz, initrd: /var/lib/chaingate/nat.img, memory_mib: 256, cpus: 1 } }
//! boot: 120s                     # how long instances may take to come up
//! ```
//!
//! The web chain's images must run the functions as the simulated rig
//! does (`chaingate_hw_tests::agent::WebChain`): `chaingate-agent image
//! --function "firewall --rule 'deny tcp port 23' --stamp 100+"`, `"ids
//! --signature EVIL --mode drop --stamp 200+"`, `"nat --inside 10.0.0.0/8
//! --to 198.51.100.1 --ports 20000-59999 --port-block 1000 --stamp 300+"`.
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
    /// The gateway configuration, YAML (the offload test).
    #[serde(default)]
    pub gateway: Option<String>,
    /// Frames to send of one flow.
    #[serde(default = "default_frames")]
    pub frames: u32,
    /// The host agent's API socket (the scenarios).
    #[serde(default)]
    pub agent: Option<std::path::PathBuf>,
    /// The namespace `lan` is in; the host's when absent.
    #[serde(default)]
    pub lan_netns: Option<String>,
    /// The namespace `wan` is in.
    #[serde(default)]
    pub wan_netns: Option<String>,
    /// The web chain's launch per service (`firewall`, `ids`, `nat`).
    #[serde(default)]
    pub web_chain: std::collections::BTreeMap<String, serde_yaml_ng::Value>,
    /// How long instances may take to come up (`120s`).
    #[serde(default = "default_boot", deserialize_with = "duration")]
    pub boot: std::time::Duration,
}

const fn default_boot() -> std::time::Duration {
    std::time::Duration::from_secs(120)
}

/// `120s`, `2m`: a duration as the gateway files write them.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<chaingate_proto::file::Millis>()
        .map(|m| std::time::Duration::from_millis(u64::from(m.0)))
        .map_err(serde::de::Error::custom)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_description_parses_and_mistakes_are_named() {
        let lab: LabRig = serde_yaml_ng::from_str(
            "dpu: \"192.168.100.2:7400\"\nlan: enp1s0f0\nwan: enp1s0f1\n\
             agent: /run/chaingate/agent.sock\nlan_netns: lan\nboot: 2m\n\
             web_chain:\n  firewall: { vm: { kernel: /k, initrd: /f.img } }\n",
        )
        .unwrap();
        assert_eq!(lab.boot, std::time::Duration::from_secs(120));
        assert_eq!(lab.gateway, None);
        assert_eq!(lab.frames, 10_000);
        let launch = serde_json::to_string(&lab.web_chain["firewall"]).unwrap();
        assert_eq!(launch, r#"{"vm":{"kernel":"/k","initrd":"/f.img"}}"#);
        let e = serde_yaml_ng::from_str::<LabRig>("dpu: x\nlan: a\nwan: b\nboot: soon\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon"), "{e}");
        let e = serde_yaml_ng::from_str::<LabRig>("dpu: x\nlan: a\nwan: b\nagnet: /s\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("agnet"), "{e}");
    }
}
