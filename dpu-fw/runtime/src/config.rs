//! The runtime's own configuration file: which devices are the switch's
//! ports, how big the tables are, where the control API listens. What
//! traffic does (services, chains, policies) is not here: the host agent
//! sends that over the control API.
//!
//! ```yaml
//! ports:
//!   - { name: lan, io: "afpacket:eth0", role: lan }
//!   - { name: wan, io: "afpacket:eth1", role: wan }
//!   - { name: vf0, io: "afpacket:pf0vf0", role: vf }
//! sessions: 1048576          # session table capacity (default 65536)
//! control:
//!   listen: "0.0.0.0:7400"   # the host reaches the DPU over the network
//! telemetry:
//!   period: 500ms
//! offload:
//!   backend: soft            # soft (the software eSwitch), refuse, rte_flow
//!   profile: mlx5            # soft only: mlx5 (a BlueField, the default) or generic
//!   multiport: false         # mlx5: one eSwitch for every PF (multiport E-Switch)
//!   capacity: 1000000        # rules the backend holds
//!   table_size: 1000000      # rules a template table holds
//!   offload_after: 1         # packets in software before rules
//! dpdk:                      # for `dpdk:` ports (a build with feature dpdk)
//!   eal: ["-l", "0", "-a", "0000:03:00.0,representor=vf[0-3],dv_flow_en=2"]
//!   mbufs: 16383
//!   descriptors: 1024
//! ```
//!
//! Parsing is strict: an unknown field is an error naming its path.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// What is wrong with a runtime configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A field is missing, unknown, or has a bad value.
    #[error("{path}: {message}")]
    Field {
        /// Its path (`ports[2].io`).
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn field(path: impl Into<String>, message: impl Into<String>) -> ConfigFileError {
    ConfigFileError::Field {
        path: path.into(),
        message: message.into(),
    }
}

/// The role of a port, as the control API's configuration must repeat it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The uplink towards the protected side.
    Lan,
    /// The uplink towards the outside.
    Wan,
    /// A VF representor: a service instance's attachment.
    Vf,
    /// The port towards the other DPUs (the underlay).
    Underlay,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lan => "lan",
            Self::Wan => "wan",
            Self::Vf => "vf",
            Self::Underlay => "underlay",
        })
    }
}

/// How a port's packets are sent and received.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum IoSpec {
    /// A Linux network device through an AF_PACKET socket.
    AfPacket {
        /// The device's name.
        ifname: String,
    },
    /// A DPDK port (a BlueField uplink or VF representor): its ethdev name
    /// (`0000:03:00.0`, `net_ring0`) or port number. The devices
    /// themselves are given to EAL in `dpdk.eal` (`-a`, `--vdev`).
    Dpdk {
        /// The ethdev name or number.
        device: String,
    },
}

impl FromStr for IoSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("afpacket", name)) if !name.is_empty() && name.len() < 16 => Ok(Self::AfPacket {
                ifname: name.to_owned(),
            }),
            Some(("afpacket", _)) => Err(format!(
                "\"{s}\": give an interface name of 1 to 15 characters"
            )),
            Some(("dpdk", device)) if !device.is_empty() => Ok(Self::Dpdk {
                device: device.to_owned(),
            }),
            _ => Err(format!("\"{s}\": use afpacket:IFNAME or dpdk:DEVICE")),
        }
    }
}

impl fmt::Display for IoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AfPacket { ifname } => write!(f, "afpacket:{ifname}"),
            Self::Dpdk { device } => write!(f, "dpdk:{device}"),
        }
    }
}

/// One switch port.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PortSpec {
    /// The name the control API's configuration uses for it.
    pub name: String,
    /// Its device.
    pub io: IoSpec,
    /// Its role.
    pub role: Role,
    /// The PF whose eSwitch it is on (the software eSwitch's mlx5
    /// profile: a BlueField has one eSwitch per PF unless multiport
    /// E-Switch joins them).
    pub pf: u16,
}

/// Which card the software eSwitch stands for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileName {
    /// A BlueField under DPDK 22.11's mlx5 driver with hardware steering:
    /// what it refuses is refused (docs/offload.md).
    #[default]
    Mlx5,
    /// rte_flow as documented, without a driver's limits.
    Generic,
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mlx5 => "mlx5",
            Self::Generic => "generic",
        })
    }
}

/// Which flow-offload backend steers established connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The software eSwitch: frames between the runtime's ports go through
    /// flow rules executed in software (the simulated rig, a NIC without
    /// an eSwitch).
    #[default]
    Soft,
    /// No offload: every packet goes through the fast path.
    Refuse,
    /// The NIC's switch through DPDK's rte_flow (DPDK ports only; needs a
    /// build with the `dpdk` feature).
    #[serde(rename = "rte_flow")]
    RteFlow,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Soft => "soft",
            Self::Refuse => "refuse",
            Self::RteFlow => "rte_flow",
        })
    }
}

/// The whole runtime configuration, checked.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RuntimeConfig {
    /// Ports, in the order the runtime polls them.
    pub ports: Vec<PortSpec>,
    /// Session table capacity.
    pub sessions: usize,
    /// Where the control API listens.
    pub listen: SocketAddr,
    /// How often telemetry is sampled (and the fastest a watcher gets it).
    pub telemetry_period: Duration,
    /// The offload backend.
    pub backend: Backend,
    /// Rules the backend holds.
    pub capacity: usize,
    /// Rules a template table holds.
    pub table_size: u32,
    /// The software eSwitch's profile.
    pub profile: ProfileName,
    /// The mlx5 profile: every PF's ports on one eSwitch.
    pub multiport: bool,
    /// Packets a session has in software before its rules are installed.
    pub offload_after: u16,
    /// DPDK settings (used when a port is `dpdk:`).
    pub dpdk: DpdkSettings,
}

/// How DPDK is started and its ports sized.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DpdkSettings {
    /// EAL arguments (`-l 0`, `-a 0000:03:00.0,representor=vf[0-3]`,
    /// `--vdev=net_ring0`, `--no-huge`, ...).
    pub eal: Vec<String>,
    /// Mbufs in the pool all DPDK ports share.
    pub mbufs: u32,
    /// Receive and transmit descriptors per port.
    pub descriptors: u16,
}

/// The default control API address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7400";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    ports: Vec<PortFile>,
    #[serde(default)]
    sessions: Option<usize>,
    #[serde(default)]
    control: ControlFile,
    #[serde(default)]
    telemetry: TelemetryFile,
    #[serde(default)]
    offload: OffloadFile,
    #[serde(default)]
    dpdk: DpdkFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DpdkFile {
    #[serde(default)]
    eal: Vec<String>,
    #[serde(default)]
    mbufs: Option<u32>,
    #[serde(default)]
    descriptors: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortFile {
    name: String,
    io: String,
    role: Role,
    #[serde(default)]
    pf: u16,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ControlFile {
    #[serde(default)]
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TelemetryFile {
    #[serde(default)]
    period: Option<chaingate_proto::file::Millis>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OffloadFile {
    #[serde(default)]
    backend: Backend,
    #[serde(default)]
    profile: Option<ProfileName>,
    #[serde(default)]
    multiport: bool,
    #[serde(default)]
    capacity: Option<usize>,
    #[serde(default)]
    table_size: Option<u32>,
    #[serde(default)]
    offload_after: Option<u16>,
}

impl RuntimeConfig {
    /// Reads and checks a file.
    ///
    /// # Errors
    /// [`ConfigFileError`].
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks the text of a file.
    ///
    /// # Errors
    /// [`ConfigFileError::Field`] naming the field.
    pub fn parse(text: &str) -> Result<Self, ConfigFileError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            let message = match message.split_once(": ") {
                Some((head, rest)) if !head.contains(' ') => rest.to_owned(),
                _ => message,
            };
            field(path, message)
        })?;
        let mut names = HashSet::new();
        let mut devices = HashSet::new();
        let mut ports = Vec::with_capacity(file.ports.len());
        for (i, p) in file.ports.into_iter().enumerate() {
            chaingate_shared::Name::new(&p.name)
                .map_err(|e| field(format!("ports[{i}].name"), e.to_string()))?;
            if !names.insert(p.name.clone()) {
                return Err(field(
                    format!("ports[{i}].name"),
                    format!("a second port named \"{}\"", p.name),
                ));
            }
            let io: IoSpec =
                p.io.parse()
                    .map_err(|e: String| field(format!("ports[{i}].io"), e))?;
            if !devices.insert(io.clone()) {
                return Err(field(
                    format!("ports[{i}].io"),
                    format!("{io} is already another port"),
                ));
            }
            if p.role != Role::Vf && ports.iter().any(|q: &PortSpec| q.role == p.role) {
                return Err(field(
                    format!("ports[{i}].role"),
                    format!("a second {} port", p.role),
                ));
            }
            ports.push(PortSpec {
                name: p.name,
                io,
                role: p.role,
                pf: p.pf,
            });
        }
        if ports.len() > chaingate_shared::config::MAX_PORTS {
            return Err(field(
                "ports",
                format!("at most {} ports", chaingate_shared::config::MAX_PORTS),
            ));
        }
        for role in [Role::Lan, Role::Wan] {
            if !ports.iter().any(|p| p.role == role) {
                return Err(field("ports", format!("no port has role {role}")));
            }
        }
        let sessions = file.sessions.unwrap_or(1 << 16);
        if !(16..=1 << 26).contains(&sessions) {
            return Err(field("sessions", "must be 16 to 67108864"));
        }
        let listen = file.control.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            field(
                "control.listen",
                format!("\"{listen}\" is not an address:port"),
            )
        })?;
        let period = file.telemetry.period.map_or(500, |m| m.0);
        if !(10..=60_000).contains(&period) {
            return Err(field("telemetry.period", "must be 10ms to 60s"));
        }
        let capacity = file.offload.capacity.unwrap_or(1 << 20);
        if capacity > 1 << 26 {
            return Err(field("offload.capacity", "must be at most 67108864"));
        }
        if file.offload.profile.is_some() && file.offload.backend != Backend::Soft {
            return Err(field(
                "offload.profile",
                "a profile is for the software eSwitch (backend: soft); a card has its own",
            ));
        }
        let table_size = file
            .offload
            .table_size
            .unwrap_or_else(|| u32::try_from(capacity).unwrap_or(u32::MAX).max(1));
        if table_size == 0 {
            return Err(field("offload.table_size", "must be at least 1"));
        }
        let offload_after = file.offload.offload_after.unwrap_or(1);
        if offload_after == 0 {
            return Err(field("offload.offload_after", "must be at least 1"));
        }
        let dpdk_ports = ports
            .iter()
            .filter(|p| matches!(p.io, IoSpec::Dpdk { .. }))
            .count();
        if file.offload.backend == Backend::RteFlow && dpdk_ports == 0 {
            return Err(field(
                "offload.backend",
                "rte_flow installs rules on DPDK ports, and no port is dpdk:",
            ));
        }
        let descriptors = file.dpdk.descriptors.unwrap_or(1024);
        if !(64..=8192).contains(&descriptors) || !descriptors.is_power_of_two() {
            return Err(field(
                "dpdk.descriptors",
                "must be a power of two from 64 to 8192",
            ));
        }
        // Every port's rings full both ways, plus bursts in flight.
        let needed = u32::try_from(dpdk_ports)
            .unwrap_or(u32::MAX)
            .saturating_mul(2 * u32::from(descriptors))
            .saturating_add(1024);
        let mbufs = file.dpdk.mbufs.unwrap_or_else(|| needed.max(8191));
        if mbufs < needed {
            return Err(field(
                "dpdk.mbufs",
                format!(
                    "{dpdk_ports} DPDK ports with {descriptors} descriptors need at least {needed}"
                ),
            ));
        }
        Ok(Self {
            ports,
            sessions,
            listen,
            telemetry_period: Duration::from_millis(u64::from(period)),
            backend: file.offload.backend,
            capacity,
            table_size,
            profile: file.offload.profile.unwrap_or_default(),
            multiport: file.offload.multiport,
            offload_after,
            dpdk: DpdkSettings {
                eal: file.dpdk.eal,
                mbufs,
                descriptors,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
ports:
  - { name: lan, io: "afpacket:veth-lan", role: lan }
  - { name: wan, io: "afpacket:veth-wan", role: wan }
  - { name: vf0, io: "afpacket:vf0", role: vf }
sessions: 4096
control: { listen: "127.0.0.1:7401" }
telemetry: { period: 100ms }
offload: { backend: refuse, capacity: 5000, offload_after: 2 }
"#;

    #[test]
    fn a_good_file() {
        let c = RuntimeConfig::parse(GOOD).unwrap();
        assert_eq!(c.ports.len(), 3);
        assert_eq!(
            c.ports[2].io,
            IoSpec::AfPacket {
                ifname: "vf0".into()
            }
        );
        assert_eq!(c.sessions, 4096);
        assert_eq!(c.listen, "127.0.0.1:7401".parse().unwrap());
        assert_eq!(c.telemetry_period, Duration::from_millis(100));
        assert_eq!(
            (c.backend, c.capacity, c.offload_after),
            (Backend::Refuse, 5000, 2)
        );
        let minimal = RuntimeConfig::parse(
            "ports: [{name: a, io: 'afpacket:a', role: lan}, {name: b, io: 'afpacket:b', role: wan}]",
        )
        .unwrap();
        assert_eq!(minimal.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(minimal.backend, Backend::Soft);
        assert_eq!(
            (minimal.profile, minimal.multiport, minimal.table_size),
            (ProfileName::Mlx5, false, 1 << 20),
            "the software eSwitch is a BlueField unless told otherwise"
        );
        let two_pfs = RuntimeConfig::parse(
            "ports: [{name: a, io: 'afpacket:a', role: lan}, {name: b, io: 'afpacket:b', role: wan, pf: 1}]\n\
             offload: { profile: generic, multiport: true, table_size: 4096 }",
        )
        .unwrap();
        assert_eq!(
            (
                two_pfs.ports[1].pf,
                two_pfs.profile,
                two_pfs.multiport,
                two_pfs.table_size
            ),
            (1, ProfileName::Generic, true, 4096)
        );
        let dpdk = RuntimeConfig::parse(
            "ports: [{name: a, io: 'dpdk:net_ring0', role: lan}, {name: b, io: 'dpdk:1', role: wan}]\n\
             offload: { backend: rte_flow }\n\
             dpdk: { eal: ['--no-huge', '--vdev=net_ring0'] }",
        )
        .unwrap();
        assert_eq!(dpdk.ports[1].io, IoSpec::Dpdk { device: "1".into() });
        assert_eq!(dpdk.dpdk.eal, ["--no-huge", "--vdev=net_ring0"]);
        assert_eq!((dpdk.dpdk.descriptors, dpdk.dpdk.mbufs), (1024, 8191));
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases = [
            (
                GOOD.replace("sessions: 4096", "sesions: 4096"),
                "sesions: unknown field",
            ),
            (
                GOOD.replace("afpacket:vf0", "pcap:vf0"),
                "ports[2].io: \"pcap:vf0\": use afpacket",
            ),
            (
                GOOD.replace("afpacket:vf0", "afpacket:veth-lan"),
                "ports[2].io: afpacket:veth-lan is already another port",
            ),
            (
                GOOD.replace("name: vf0", "name: lan"),
                "ports[2].name: a second port named",
            ),
            (
                GOOD.replace("role: vf", "role: wan"),
                "ports[2].role: a second wan port",
            ),
            (
                GOOD.replace("role: vf", "role: tap"),
                "ports[2].role: unknown variant `tap`",
            ),
            (
                GOOD.replace("127.0.0.1:7401", "localhost"),
                "control.listen: \"localhost\" is not",
            ),
            (
                GOOD.replace("period: 100ms", "period: 1ms"),
                "telemetry.period: must be 10ms",
            ),
            (
                GOOD.replace("offload_after: 2", "offload_after: 0"),
                "offload.offload_after",
            ),
            (
                GOOD.replace("sessions: 4096", "sessions: 1"),
                "sessions: must be 16",
            ),
            (
                GOOD.replace("role: lan", "role: vf"),
                "ports: no port has role lan",
            ),
            (
                GOOD.replace("backend: refuse,", "backend: refuse, profile: mlx5,"),
                "offload.profile: a profile is for the software eSwitch",
            ),
            (
                GOOD.replace("backend: refuse,", "profile: cx7,"),
                "offload.profile: unknown variant `cx7`",
            ),
        ];
        for (text, expected) in cases {
            let got = RuntimeConfig::parse(&text).unwrap_err().to_string();
            assert!(
                got.starts_with(expected),
                "expected {expected:?}, got {got:?}"
            );
        }
    }
}
