//! The agent's own configuration (`/etc/chaingate/agent.yaml`): where it
//! listens, keeps its state, finds the DPU, and which VFs it may use.
//! Everything but the VFs has a default. Parsing is strict: an unknown
//! field is an error naming its path.
//!
//! ```yaml
//! socket: /run/chaingate/agent.sock   # the operator API (gRPC)
//! socket_mode: "0600"
//! state: /var/lib/chaingate/state.redb
//! run_dir: /run/chaingate             # instances' logs and sockets
//! dpu: 192.0.2.2:50051                # the DPU's control API
//! metrics: 127.0.0.1:9464             # Prometheus; leave out to turn off
//! probe: { interval: 1s, timeout: 1s, start_timeout: 60s, failures: 3 }
//! stop_timeout: 10s                  # a VM: its power button, then `quit`
//! vm_user: chaingate-vm               # QEMU runs as this user (or UID:GID)
//! vfs:                                # DPU port (representor) and host side
//!   - { port: pf0vf0, pci: "0000:03:10.0" }
//!   - { port: vf1, tap: tap-vf1 }     # simulated rig, QEMU instances
//!   - { port: vf2, netdev: vf2-h }    # simulated rig, process instances
//! sriov: { pf: "0000:03:00.0", num_vfs: 4, port_prefix: pf0vf }
//! ```
//!
//! `sriov` makes `num_vfs` VFs on the PF at start and adds them to the
//! pool as `pci` VFs named `PORT_PREFIX0`, `PORT_PREFIX1`, ...

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chaingate_proto::file::Millis;
use serde::Deserialize;

use crate::vf::{PoolVf, VfKind, VfRef};

/// The agent's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The operator API's Unix socket.
    pub socket: PathBuf,
    /// Its permission bits, octal (default `0600`: root only).
    pub socket_mode: String,
    /// The state database.
    pub state: PathBuf,
    /// Instances' files (logs, probe and QMP sockets).
    pub run_dir: PathBuf,
    /// The DPU's control API, `HOST:PORT`.
    pub dpu: String,
    /// Where to serve Prometheus metrics (`/metrics`); none: off.
    pub metrics: Option<SocketAddr>,
    /// Health probing.
    pub probe: ProbeConfig,
    /// How long an instance has to stop before it is killed.
    pub stop_timeout: Millis,
    /// The user QEMU runs as: a name, or `UID:GID` (default
    /// `chaingate-vm`; `root` works and is warned about).
    pub vm_user: String,
    /// The sysfs root (tests point it at a tree of their own).
    pub sysfs: PathBuf,
    /// The device node root.
    pub devfs: PathBuf,
    /// The VFs the agent may give to instances.
    pub vfs: Vec<VfFile>,
    /// VFs to make on a PF at start.
    pub sriov: Option<SriovFile>,
    /// Several hosts: the inventory in etcd and this DPU's underlay
    /// (docs/cluster.md); none: this host alone.
    pub cluster: Option<ClusterFile>,
}

/// This host's place in a cluster of hosts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This host's name, unique in the cluster (its keys are named after
    /// it; no `/`).
    pub host: String,
    /// etcd's client URLs.
    pub etcd: Vec<String>,
    /// The prefix of the cluster's keys (default `/chaingate`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The lease's time to live: how long a dead host's instances stay in
    /// the others' DPUs (default 10s).
    #[serde(default = "default_ttl")]
    pub lease_ttl: Millis,
    /// This DPU's end of the underlay.
    pub underlay: UnderlayPortFile,
}

fn default_prefix() -> String {
    "/chaingate".into()
}

const fn default_ttl() -> Millis {
    Millis(10_000)
}

/// The DPU's underlay port and addresses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayPortFile {
    /// The DPU port (dpu-fw's configuration names it, role `underlay`).
    pub port: String,
    /// Its IPv4 address.
    pub address: std::net::Ipv4Addr,
    /// Its MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// The largest IP packet the underlay carries (default 1500).
    #[serde(default)]
    pub mtu: Option<u16>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            socket: "/run/chaingate/agent.sock".into(),
            socket_mode: "0600".into(),
            state: "/var/lib/chaingate/state.redb".into(),
            run_dir: "/run/chaingate".into(),
            dpu: "127.0.0.1:50051".into(),
            metrics: None,
            probe: ProbeConfig::default(),
            stop_timeout: Millis(10_000),
            vm_user: crate::launcher::DEFAULT_VM_USER.into(),
            sysfs: "/sys".into(),
            devfs: "/dev".into(),
            vfs: Vec::new(),
            sriov: None,
            cluster: None,
        }
    }
}

/// Health probing of instances.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    /// Between two probes of a running instance.
    pub interval: Millis,
    /// For an answer.
    pub timeout: Millis,
    /// For a new instance's first good answer.
    pub start_timeout: Millis,
    /// Failed probes in a row that make an instance failed.
    pub failures: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval: Millis(1_000),
            timeout: Millis(1_000),
            start_timeout: Millis(60_000),
            failures: 3,
        }
    }
}

impl ProbeConfig {
    /// The interval.
    #[must_use]
    pub fn interval(&self) -> Duration {
        ms(self.interval)
    }
    /// The timeout.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        ms(self.timeout)
    }
    /// The start timeout.
    #[must_use]
    pub fn start_timeout(&self) -> Duration {
        ms(self.start_timeout)
    }
}

/// A duration from a configured value.
#[must_use]
pub fn ms(m: Millis) -> Duration {
    Duration::from_millis(u64::from(m.0))
}

/// One VF: its DPU port and exactly one host side.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfFile {
    /// The DPU port (representor) name.
    pub port: String,
    /// An SR-IOV VF's PCI address.
    #[serde(default)]
    pub pci: Option<String>,
    /// A tap device.
    #[serde(default)]
    pub tap: Option<String>,
    /// A network device.
    #[serde(default)]
    pub netdev: Option<String>,
}

/// VFs made on a PF at start.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SriovFile {
    /// The PF's PCI address.
    pub pf: String,
    /// VFs to have.
    pub num_vfs: u16,
    /// DPU port names: the prefix and the VF index.
    pub port_prefix: String,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl AgentConfig {
    /// Parses and checks a configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = chaingate_proto::file::parse_yaml(text).map_err(|e| ConfigError {
            path: e.path().to_owned(),
            message: match e {
                chaingate_proto::file::FileError::Syntax { message, .. } => message,
                other => other.to_string(),
            },
        })?;
        config.pool()?;
        config.mode()?;
        if let Some(c) = &config.cluster {
            let bad = |path: &str, message: String| ConfigError {
                path: format!("cluster.{path}"),
                message,
            };
            if c.host.is_empty() || c.host.contains('/') {
                return Err(bad("host", "must be a name without /".into()));
            }
            if c.etcd.is_empty() {
                return Err(bad("etcd", "give at least one etcd URL".into()));
            }
            chaingate_proto::convert::mac(&c.underlay.mac, "cluster.underlay.mac")
                .map_err(|e| bad("underlay.mac", e.message))?;
            if config.vfs.iter().any(|v| v.port == c.underlay.port) {
                return Err(bad("underlay.port", format!("{} is a VF", c.underlay.port)));
            }
        }
        Ok(config)
    }

    /// The socket's permission bits.
    ///
    /// # Errors
    /// Not an octal mode.
    pub fn mode(&self) -> Result<u32, ConfigError> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError {
                path: "socket_mode".into(),
                message: format!(
                    "`{}` is not a permission mode: write it in octal, as 0600",
                    self.socket_mode
                ),
            })
    }

    /// The listed VFs (not those `sriov` makes at start), checked: one host
    /// side each, no port or device twice.
    ///
    /// # Errors
    /// [`ConfigError`] naming the VF.
    pub fn pool(&self) -> Result<Vec<PoolVf>, ConfigError> {
        let mut out = Vec::new();
        let mut ports = BTreeSet::new();
        let mut devices = BTreeSet::new();
        for (i, v) in self.vfs.iter().enumerate() {
            let err = |field: &str, message: String| ConfigError {
                path: format!("vfs[{i}]{field}"),
                message,
            };
            let sides: Vec<(VfKind, &String)> = [
                (VfKind::Pci, &v.pci),
                (VfKind::Tap, &v.tap),
                (VfKind::Netdev, &v.netdev),
            ]
            .into_iter()
            .filter_map(|(k, d)| d.as_ref().map(|d| (k, d)))
            .collect();
            let [(kind, device)] = sides.as_slice() else {
                return Err(err("", "give exactly one of pci, tap, netdev".into()));
            };
            let device = if *kind == VfKind::Pci {
                device
                    .parse::<chaingate_provision::PciAddress>()
                    .map_err(|e| err(".pci", e.to_string()))?
                    .to_string()
            } else {
                (*device).clone()
            };
            if v.port.is_empty() {
                return Err(err(".port", "empty".into()));
            }
            if !ports.insert(v.port.clone()) {
                return Err(err(".port", format!("port `{}` is listed twice", v.port)));
            }
            if !devices.insert(device.clone()) {
                return Err(err("", format!("device `{device}` is listed twice")));
            }
            out.push(PoolVf {
                vf: VfRef {
                    port: v.port.clone(),
                    device,
                },
                kind: *kind,
            });
        }
        if let Some(s) = &self.sriov {
            s.pf.parse::<chaingate_provision::PciAddress>()
                .map_err(|e| ConfigError {
                    path: "sriov.pf".into(),
                    message: e.to_string(),
                })?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_is_left_out() {
        let c = AgentConfig::parse("vfs: [{ port: vf0, netdev: vf0-h }]").unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/chaingate/agent.sock"));
        assert_eq!(c.mode().unwrap(), 0o600);
        assert_eq!(c.probe.failures, 3);
        assert_eq!(c.probe.start_timeout(), Duration::from_secs(60));
        assert_eq!(c.pool().unwrap()[0].kind, VfKind::Netdev);
        assert!(c.metrics.is_none());
    }

    #[test]
    fn the_example_parses() {
        let text = "socket: /tmp/a.sock\nsocket_mode: \"0660\"\nstate: /tmp/s.redb\nrun_dir: /tmp/run\n\
                    dpu: 10.0.0.2:50051\nmetrics: 127.0.0.1:9464\n\
                    probe: { interval: 500ms, timeout: 1s, start_timeout: 2m, failures: 2 }\nstop_timeout: 5s\n\
                    vfs:\n  - { port: pf0vf0, pci: \"03:10.0\" }\n  - { port: vf1, tap: tap1 }\n\
                    sriov: { pf: \"0000:03:00.0\", num_vfs: 4, port_prefix: pf0vf }\n";
        let c = AgentConfig::parse(text).unwrap();
        assert_eq!(c.mode().unwrap(), 0o660);
        assert_eq!(c.probe.interval(), Duration::from_millis(500));
        assert_eq!(c.probe.start_timeout(), Duration::from_secs(120));
        let pool = c.pool().unwrap();
        assert_eq!(pool[0].vf.device, "0000:03:10.0");
        assert_eq!(pool[1].kind, VfKind::Tap);
    }

    #[test]
    fn errors_name_the_field() {
        for (text, want) in [
            ("sockit: /x", "sockit: unknown field `sockit`"),
            (
                "vfs: [{ port: a, netdev: x, tap: y }]",
                "vfs[0]: give exactly one of pci, tap, netdev",
            ),
            ("vfs: [{ port: a }]", "vfs[0]: give exactly one"),
            (
                "vfs: [{ port: a, pci: nope }]",
                "vfs[0].pci: `nope` is not a PCI address",
            ),
            (
                "vfs: [{ port: a, netdev: x }, { port: a, netdev: y }]",
                "vfs[1].port: port `a` is listed twice",
            ),
            (
                "vfs: [{ port: a, netdev: x }, { port: b, netdev: x }]",
                "vfs[1]: device `x` is listed twice",
            ),
            (
                "socket_mode: \"rw\"",
                "socket_mode: `rw` is not a permission mode",
            ),
            ("probe: { timeout: 3 parsecs }", "probe.timeout"),
            (
                "sriov: { pf: x, num_vfs: 1, port_prefix: p }",
                "sriov.pf: `x` is not a PCI address",
            ),
        ] {
            let e = AgentConfig::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want) || e.contains(want), "{text}: {e}");
        }
    }
}
