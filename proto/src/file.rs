//! The gateway configuration as an operator writes it: YAML, with units
//! (`capacity: 10Gbit`, `hold: 2s`, `scale_out_at: 80%`), names for
//! protocols and port ranges as `1024-65535`. Parsing is strict: a
//! misspelt or unknown field is an error naming its path, never ignored.
//!
//! ```yaml
//! generation: 7                 # optional
//! ports:
//!   - { name: lan, role: lan }
//!   - { name: wan, role: wan }
//!   - { name: vf0, role: vf }
//! services:
//!   - name: firewall
//!     capacity: 10Gbit
//!     scaling: { min: 1, max: 4, scale_out_at: 80%, scale_in_at: 30%,
//!                hold: 2s, cooldown: 10s, drain_timeout: 60s }
//!     fail: open
//! instances:
//!   - { name: fw-0, service: firewall, port: vf0 }
//! chains:
//!   - { name: web, services: [firewall] }
//! policies:
//!   - priority: 100
//!     match: { src: 10.0.0.0/8, protocol: tcp, dst_ports: 80-443 }
//!     action: { chain: web }
//! default_action: bypass
//! ```
//!
//! [`parse`] gives a [`dpu::Config`]; [`load`] also validates it as the DPU
//! will (`chaingate_shared::Config`), with error paths in the file's terms.

use std::fmt;
use std::str::FromStr;

use chaingate_shared::{Config, IpProtocol};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::convert::ConvertError;
use crate::dpu;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not YAML of the expected shape (a bad value, an unknown field).
    #[error("{path}: {message}")]
    Syntax {
        /// The field path (`services[0].capacity`), `.` for the document.
        path: String,
        /// What is wrong, with the line and column.
        message: String,
    },
    /// Well formed, but not a valid configuration.
    #[error("{0}")]
    Invalid(ConvertError),
}

impl FileError {
    /// The field path the error is about.
    #[must_use]
    pub fn path(&self) -> &str {
        match self {
            Self::Syntax { path, .. } => path,
            Self::Invalid(e) => &e.path,
        }
    }
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// The generation; a tool may fill in the next one when absent.
    #[serde(default)]
    pub generation: Option<u64>,
    /// First segment VLAN tag (default 2).
    #[serde(default)]
    pub segment_base: Option<u16>,
    /// What connections no policy matches do (default bypass).
    #[serde(default)]
    pub default_action: Option<ActionFile>,
    /// Switch ports.
    pub ports: Vec<PortFile>,
    /// Services.
    #[serde(default)]
    pub services: Vec<ServiceFile>,
    /// Instances (the host agent makes these itself).
    #[serde(default)]
    pub instances: Vec<InstanceFile>,
    /// Chains.
    #[serde(default)]
    pub chains: Vec<ChainFile>,
    /// Policies.
    #[serde(default)]
    pub policies: Vec<PolicyFile>,
    /// This DPU's end of the underlay between DPUs.
    #[serde(default)]
    pub underlay: Option<UnderlayFile>,
    /// The other DPUs.
    #[serde(default)]
    pub peers: Vec<PeerFile>,
    /// Hops prefer instances behind this DPU while one has headroom
    /// (default false).
    #[serde(default)]
    pub prefer_local: bool,
}

/// This DPU's end of the underlay (the port is the one with role
/// `underlay`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnderlayFile {
    /// IPv4 address.
    pub address: String,
    /// MAC address.
    pub mac: String,
    /// Largest IP packet the underlay carries (default 1500).
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// Another DPU.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// The host it serves.
    pub name: String,
    /// Its underlay IPv4 address.
    pub address: String,
    /// Where its underlay traffic goes.
    pub mac: String,
}

/// An instance behind another DPU.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteFile {
    /// The peer's name.
    pub peer: String,
    /// The instance's port index on that DPU.
    pub slot: u32,
}

/// A port's role.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleFile {
    /// The lan uplink.
    Lan,
    /// The wan uplink.
    Wan,
    /// A VF (representor).
    Vf,
    /// Towards the other DPUs.
    Underlay,
}

/// A port.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortFile {
    /// Its name (the DPU runtime's name for a device).
    pub name: String,
    /// Its role.
    pub role: RoleFile,
}

/// Fail open or closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailFile {
    /// Open (default).
    #[default]
    Open,
    /// Closed.
    Closed,
}

/// A service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Its name.
    pub name: String,
    /// What one instance handles.
    pub capacity: Bandwidth,
    /// Scaling (defaults for what is left out).
    #[serde(default)]
    pub scaling: ScalingFile,
    /// Fail open or closed.
    #[serde(default)]
    pub fail: FailFile,
    /// How the host agent runs its instances (the DPU ignores it).
    #[serde(default)]
    pub launch: Option<LaunchFile>,
}

/// How the host agent runs a service's instances: give one of the two.
///
/// ```yaml
/// launch: { process: [chaingate-service, monitor] }
/// launch: { vm: { kernel: /var/lib/chaingate/vmlinuz, initrd: /var/lib/chaingate/monitor.img } }
/// ```
#[derive(Clone, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchFile {
    /// A command, run in the instance's own network namespace with its VF.
    #[serde(default)]
    pub process: Option<Vec<String>>,
    /// A VM image.
    #[serde(default)]
    pub vm: Option<VmFile>,
}

/// A service VM image.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFile {
    /// The guest kernel.
    pub kernel: String,
    /// The initramfs holding the service function.
    pub initrd: String,
    /// Memory, MiB (default 256).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// vCPUs (default 1).
    #[serde(default)]
    pub cpus: Option<u32>,
}

/// Scaling bounds and thresholds.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingFile {
    /// Least instances.
    pub min: u16,
    /// Most instances.
    pub max: u16,
    /// Load above which an instance is short of bandwidth.
    pub scale_out_at: Fraction,
    /// Load below which instances are too many.
    pub scale_in_at: Fraction,
    /// How long a condition must hold.
    pub hold: Millis,
    /// Least time between two scaling actions.
    pub cooldown: Millis,
    /// How long a draining instance keeps its sessions.
    pub drain_timeout: Millis,
}

impl Default for ScalingFile {
    fn default() -> Self {
        Self {
            min: 1,
            max: 4,
            scale_out_at: Fraction(800),
            scale_in_at: Fraction(300),
            hold: Millis(2_000),
            cooldown: Millis(10_000),
            drain_timeout: Millis(60_000),
        }
    }
}

/// An instance state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateFile {
    /// Active (default).
    #[default]
    Active,
    /// Draining.
    Draining,
    /// Down.
    Down,
}

/// An instance: `port` for one VF, or `ingress` and `egress`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFile {
    /// Its name.
    pub name: String,
    /// Its service.
    pub service: String,
    /// Its VF, when it has one.
    #[serde(default)]
    pub port: Option<String>,
    /// Where lan-to-wan traffic enters a pair.
    #[serde(default)]
    pub ingress: Option<String>,
    /// Where it leaves a pair.
    #[serde(default)]
    pub egress: Option<String>,
    /// Behind another DPU.
    #[serde(default)]
    pub remote: Option<RemoteFile>,
    /// Its state.
    #[serde(default)]
    pub state: StateFile,
    /// Its weight (default 1).
    #[serde(default)]
    pub weight: Option<u16>,
}

/// A chain.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainFile {
    /// Its name.
    pub name: String,
    /// Service names, lan to wan.
    pub services: Vec<String>,
}

/// A policy's action: `bypass`, `drop` or `{ chain: NAME }`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ActionFile {
    /// Through a chain.
    Chain(String),
    /// Between the uplinks, no services.
    Bypass,
    /// Dropped.
    Drop,
}

impl<'de> Deserialize<'de> for ActionFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ActionFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bypass, drop or { chain: NAME }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ActionFile, E> {
                match v {
                    "bypass" => Ok(ActionFile::Bypass),
                    "drop" => Ok(ActionFile::Drop),
                    other => Err(E::custom(format!(
                        "unknown action `{other}`: use bypass, drop or {{ chain: NAME }}"
                    ))),
                }
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<ActionFile, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("give { chain: NAME }"));
                };
                if key != "chain" {
                    return Err(de::Error::unknown_field(&key, &["chain"]));
                }
                let chain: String = map.next_value()?;
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::unknown_field(&extra, &["chain"]));
                }
                Ok(ActionFile::Chain(chain))
            }
        }
        d.deserialize_any(V)
    }
}

/// A policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Higher wins.
    pub priority: u32,
    /// What it matches (default: everything).
    #[serde(default, rename = "match")]
    pub matches: MatchFile,
    /// What it does.
    pub action: ActionFile,
}

/// What a policy matches; absent fields match anything.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// Ingress port name.
    #[serde(default)]
    pub in_port: Option<String>,
    /// Outermost customer VLAN.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Source prefix.
    #[serde(default)]
    pub src: Option<String>,
    /// Destination prefix.
    #[serde(default)]
    pub dst: Option<String>,
    /// Protocol, by name or number.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Source ports.
    #[serde(default)]
    pub src_ports: Option<Ports>,
    /// Destination ports.
    #[serde(default)]
    pub dst_ports: Option<Ports>,
    /// DSCP.
    #[serde(default)]
    pub dscp: Option<u8>,
}

/// Parses a file into the message the DPU takes. Values are checked for
/// form here (units, names of protocols); references and bounds are
/// checked by [`load`] or by the DPU.
///
/// # Errors
/// [`FileError::Syntax`] with the field path.
pub fn parse(text: &str) -> Result<GatewayFile, FileError> {
    parse_yaml(text)
}

/// Parses any strict YAML document of the project (this file, the
/// runtime's and the agent's configurations) with the field path of an
/// error.
///
/// # Errors
/// [`FileError::Syntax`] with the field path.
pub fn parse_yaml<T: de::DeserializeOwned>(text: &str) -> Result<T, FileError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // The YAML error starts with its own, shorter idea of the path.
        let message = match message.split_once(": ") {
            Some((head, rest)) if !head.contains(' ') => rest.to_owned(),
            _ => message,
        };
        FileError::Syntax { path, message }
    })
}

impl GatewayFile {
    /// The message for the DPU, with `generation` unless the file gives one.
    #[must_use]
    pub fn to_proto(&self, generation: u64) -> dpu::Config {
        dpu::Config {
            generation: self.generation.unwrap_or(generation),
            ports: self
                .ports
                .iter()
                .map(|p| dpu::Port {
                    name: p.name.clone(),
                    role: match p.role {
                        RoleFile::Lan => dpu::PortRole::Lan,
                        RoleFile::Wan => dpu::PortRole::Wan,
                        RoleFile::Vf => dpu::PortRole::Vf,
                        RoleFile::Underlay => dpu::PortRole::Underlay,
                    }
                    .into(),
                })
                .collect(),
            services: self.services.iter().map(ServiceFile::to_proto).collect(),
            instances: self.instances.iter().map(InstanceFile::to_proto).collect(),
            chains: self
                .chains
                .iter()
                .map(|c| dpu::Chain {
                    name: c.name.clone(),
                    services: c.services.clone(),
                })
                .collect(),
            policies: self
                .policies
                .iter()
                .map(|p| dpu::Policy {
                    priority: p.priority,
                    r#match: Some(p.matches.to_proto()),
                    action: Some(p.action.to_proto()),
                })
                .collect(),
            default_action: self.default_action.as_ref().map(ActionFile::to_proto),
            segment_base: self.segment_base.map_or(0, u32::from),
            underlay: self.underlay.as_ref().map(|u| dpu::Underlay {
                address: u.address.clone(),
                mac: u.mac.clone(),
                mtu: u.mtu.map_or(0, u32::from),
            }),
            prefer_local: self.prefer_local,
            peers: self
                .peers
                .iter()
                .map(|p| dpu::Peer {
                    name: p.name.clone(),
                    address: p.address.clone(),
                    mac: p.mac.clone(),
                })
                .collect(),
        }
    }
}

impl ServiceFile {
    fn to_proto(&self) -> dpu::Service {
        let s = &self.scaling;
        dpu::Service {
            name: self.name.clone(),
            capacity_bps: self.capacity.0,
            scaling: Some(dpu::Scaling {
                min_instances: s.min.into(),
                max_instances: s.max.into(),
                scale_out_permille: s.scale_out_at.0.into(),
                scale_in_permille: s.scale_in_at.0.into(),
                hold_ms: s.hold.0,
                cooldown_ms: s.cooldown.0,
                drain_timeout_ms: s.drain_timeout.0,
            }),
            fail: match self.fail {
                FailFile::Open => dpu::FailMode::Open,
                FailFile::Closed => dpu::FailMode::Closed,
            }
            .into(),
        }
    }
}

impl InstanceFile {
    fn to_proto(&self) -> dpu::Instance {
        use dpu::instance::Attachment;
        // Both forms at once is refused by `load`; here the port wins.
        let attachment = match (&self.port, &self.ingress, &self.egress) {
            _ if self.remote.is_some() => self.remote.as_ref().map(|r| {
                Attachment::Remote(dpu::RemoteAttachment {
                    peer: r.peer.clone(),
                    slot: r.slot,
                })
            }),
            (Some(p), _, _) => Some(Attachment::Port(p.clone())),
            (None, None, None) => None,
            (None, i, e) => Some(Attachment::Pair(dpu::PortPair {
                ingress: i.clone().unwrap_or_default(),
                egress: e.clone().unwrap_or_default(),
            })),
        };
        dpu::Instance {
            name: self.name.clone(),
            service: self.service.clone(),
            attachment,
            state: match self.state {
                StateFile::Active => dpu::InstanceState::Active,
                StateFile::Draining => dpu::InstanceState::Draining,
                StateFile::Down => dpu::InstanceState::Down,
            }
            .into(),
            weight: self.weight.map_or(1, u32::from),
        }
    }
}

impl ActionFile {
    fn to_proto(&self) -> dpu::PolicyAction {
        use dpu::policy_action::Action;
        dpu::PolicyAction {
            action: Some(match self {
                Self::Chain(c) => Action::Chain(c.clone()),
                Self::Bypass => Action::Bypass(dpu::Bypass {}),
                Self::Drop => Action::Drop(dpu::Drop {}),
            }),
        }
    }
}

impl MatchFile {
    fn to_proto(&self) -> dpu::Match {
        let range = |p: &Option<Ports>| {
            p.map(|p| dpu::PortRange {
                lo: p.0.into(),
                hi: p.1.into(),
            })
        };
        dpu::Match {
            in_port: self.in_port.clone(),
            vlan: self.vlan.map(u32::from),
            src: self.src.clone(),
            dst: self.dst.clone(),
            protocol: self.protocol.map(|p| u32::from(p.0.number())),
            src_ports: range(&self.src_ports),
            dst_ports: range(&self.dst_ports),
            dscp: self.dscp.map(u32::from),
        }
    }
}

/// Parses and validates a file as the DPU would, with `generation` unless
/// the file gives one.
///
/// # Errors
/// [`FileError`], with the path in the file's terms.
pub fn load(text: &str, generation: u64) -> Result<(GatewayFile, dpu::Config), FileError> {
    let file = parse(text)?;
    let msg = validate(&file, generation)?;
    Ok((file, msg))
}

/// Validates a parsed file as the DPU would (for a tool that changes the
/// file before it goes to the DPU, as the host agent adds its instances).
///
/// # Errors
/// [`FileError::Invalid`], with the path in the file's terms.
pub fn validate(file: &GatewayFile, generation: u64) -> Result<dpu::Config, FileError> {
    for (i, inst) in file.instances.iter().enumerate() {
        let forms = [
            inst.port.is_some(),
            inst.ingress.is_some() || inst.egress.is_some(),
            inst.remote.is_some(),
        ];
        if forms.iter().filter(|f| **f).count() > 1 {
            return Err(FileError::Invalid(ConvertError {
                path: format!("instances[{i}]"),
                message: "give one of port, ingress and egress, or remote".into(),
            }));
        }
    }
    let msg = file.to_proto(generation);
    Config::try_from(&msg).map_err(|e| FileError::Invalid(in_file_terms(e)))?;
    Ok(msg)
}

/// Rewrites a message field path into the file's field names.
fn in_file_terms(mut e: ConvertError) -> ConvertError {
    const RENAMES: [(&str, &str); 14] = [
        (".attachment.remote.peer", ".remote.peer"),
        (".attachment.remote.slot", ".remote.slot"),
        (".attachment.remote", ".remote"),
        (".attachment.peer", ".remote.peer"),
        (".attachment.port", ".port"),
        (".attachment.ingress", ".ingress"),
        (".attachment.egress", ".egress"),
        (".attachment.slot", ".remote.slot"),
        (".attachment", ".port"),
        (".capacity_bps", ".capacity"),
        (".scaling.min_instances", ".scaling.min"),
        (".scaling.max_instances", ".scaling.max"),
        (".scaling.scale_out_permille", ".scaling.scale_out_at"),
        (".scaling.scale_in_permille", ".scaling.scale_in_at"),
    ];
    for (from, to) in RENAMES {
        if e.path.ends_with(from) {
            let cut = e.path.len() - from.len();
            e.path.truncate(cut);
            e.path.push_str(to);
            break;
        }
    }
    e
}

/// Bits per second: a number, or a string with a unit (`bit`, `kbit`,
/// `Mbit`, `Gbit`, `Tbit`; `bps`, `kbps`, ... the same).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Bandwidth(pub u64);

impl FromStr for Bandwidth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "bit" | "bps" | "b/s" => 1,
            "kbit" | "kbps" | "kb/s" => 1_000,
            "mbit" | "mbps" | "mb/s" => 1_000_000,
            "gbit" | "gbps" | "gb/s" => 1_000_000_000,
            "tbit" | "tbps" | "tb/s" => 1_000_000_000_000,
            _ => {
                return Err(format!(
                    "\"{s}\": use a unit of bit, kbit, Mbit, Gbit or Tbit"
                ));
            }
        };
        let value = scaled(num, scale).ok_or_else(|| format!("\"{s}\" is not a bandwidth"))?;
        Ok(Self(value))
    }
}

/// `num * scale` for a decimal `num` with at most 9 decimals, exactly.
fn scaled(num: &str, scale: u64) -> Option<u64> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 9 {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(scale)?;
    if !frac.is_empty() {
        let digits: u64 = frac.parse().ok()?;
        let denom = 10u64.pow(u32::try_from(frac.len()).ok()?);
        let part = u128::from(digits) * u128::from(scale) / u128::from(denom);
        value = value.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(value)
}

/// Milliseconds, written with a unit: `500ms`, `2s`, `1.5s`, `5m`, `1h`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Millis(pub u32);

impl FromStr for Millis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let scale = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "" => return Err(format!("\"{s}\": durations need a unit (500ms, 2s, 1m)")),
            _ => return Err(format!("\"{s}\": use a unit of ms, s, m or h")),
        };
        scaled(num, scale)
            .and_then(|v| u32::try_from(v).ok())
            .map(Self)
            .ok_or_else(|| format!("\"{s}\" is not a duration up to 49 days"))
    }
}

/// A fraction in thousandths: `0.8` or `80%`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fraction(pub u16);

impl FromStr for Fraction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let permille = match t.strip_suffix('%') {
            Some(p) => scaled(p.trim(), 10),
            None => scaled(t, 1000),
        };
        permille
            .and_then(|v| u16::try_from(v).ok())
            .filter(|v| *v <= 1000)
            .map(Self)
            .ok_or_else(|| format!("\"{s}\": give a fraction from 0 to 1, or a percentage"))
    }
}

/// An IP protocol: `tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `gre`, `esp`,
/// `ah`, or a number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Protocol(pub IpProtocol);

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let p = match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => IpProtocol::Tcp,
            "udp" => IpProtocol::Udp,
            "icmp" => IpProtocol::Icmp,
            "icmpv6" => IpProtocol::Icmpv6,
            "sctp" => IpProtocol::Sctp,
            "gre" => IpProtocol::Gre,
            "esp" => IpProtocol::Esp,
            "ah" => IpProtocol::Ah,
            other => other.parse::<u8>().map(IpProtocol::from).map_err(|_| {
                format!("\"{s}\": use tcp, udp, icmp, icmpv6, sctp, gre, esp, ah or a number")
            })?,
        };
        Ok(Self(p))
    }
}

/// A port range: `80`, `"1024-65535"`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ports(pub u16, pub u16);

impl FromStr for Ports {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\": give a port or a range like 1024-65535");
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo > hi {
            return Err(format!("\"{s}\": the range is empty (low above high)"));
        }
        Ok(Self(lo, hi))
    }
}

/// Deserializes a value written as a string (parsed with `FromStr`) or as
/// a plain number (parsed from its decimal form).
struct StrOrNumber<T>(std::marker::PhantomData<T>);

impl<T: FromStr<Err = String>> Visitor<'_> for StrOrNumber<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a string with a unit")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

macro_rules! from_str_or_number {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(StrOrNumber::<$t>(std::marker::PhantomData))
            }
        }
    )*};
}

from_str_or_number!(Bandwidth, Millis, Fraction, Protocol, Ports);

#[cfg(test)]
mod tests;
