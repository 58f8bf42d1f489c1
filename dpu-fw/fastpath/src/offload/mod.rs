//! Hardware flow rules: the rule language ([`rule`]), the generator that
//! turns a session's path into rules ([`generate`]), the [`FlowOffload`]
//! trait every backend implements, the offload manager that keeps a
//! backend's rules in step with the fast path's sessions ([`manager`]), the
//! software eSwitch that executes rules over frames ([`soft`]), and a
//! backend that refuses everything ([`refuse`]).
//!
//! A refused rule never costs a packet: the session stays on the software
//! path, where the fast path forwards it, and the refusal is counted by
//! reason.

pub mod generate;
pub mod manager;
pub mod refuse;
pub mod rule;
pub mod soft;
pub mod template;
pub mod testpmd;

use core::fmt;

use chaingate_shared::{Nanos, PortId};

pub use manager::{ManagerOptions, ManagerStats, OffloadManager};
pub use refuse::Refusing;
pub use rule::{Action, ActionKind, Age, Attr, CounterId, EncapId, Item, Rule, Spec, VxlanTunnel};
pub use soft::{Mlx5, Outcome, Profile, SoftSwitch, SwitchDrop, SwitchStats};
pub use template::{Place, PortAttr, TableId, TableSpec};

/// A backend's handle of an installed rule.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RuleHandle(pub u64);

/// Packets and bytes a rule or counter has seen.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Counts {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Counts {
    /// What was added since `earlier` (a counter that went back, as after
    /// a reset, counts from zero).
    #[must_use]
    pub const fn since(self, earlier: Self) -> Self {
        if self.packets < earlier.packets || self.bytes < earlier.bytes {
            self
        } else {
            Self {
                packets: self.packets - earlier.packets,
                bytes: self.bytes - earlier.bytes,
            }
        }
    }
}

/// Why a backend did not do what it was asked; the refusal reasons of
/// DPDK's rte_flow, by errno.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum OffloadError {
    /// No room for another rule or object (ENOSPC, ENOMEM).
    Full,
    /// An item, action or combination the backend cannot do (ENOTSUP).
    Unsupported(&'static str),
    /// The port has no flow rule support at all (ENOSYS).
    NoSys,
    /// An equal rule is installed already (EEXIST).
    Exists,
    /// The rule is malformed (EINVAL).
    Invalid(&'static str),
    /// No rule or object with this handle.
    UnknownHandle,
    /// Any other errno.
    Other(i32),
}

impl OffloadError {
    /// The counter this refusal counts under.
    #[must_use]
    pub const fn refusal(&self) -> Refusal {
        match self {
            Self::Full => Refusal::Full,
            Self::Unsupported(_) => Refusal::Unsupported,
            Self::NoSys => Refusal::NoSys,
            Self::Exists => Refusal::Exists,
            Self::Invalid(_) => Refusal::Invalid,
            Self::UnknownHandle | Self::Other(_) => Refusal::Other,
        }
    }
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("rule table full"),
            Self::Unsupported(what) => write!(f, "unsupported: {what}"),
            Self::NoSys => f.write_str("no flow rule support on this port"),
            Self::Exists => f.write_str("an equal rule exists"),
            Self::Invalid(what) => write!(f, "invalid rule: {what}"),
            Self::UnknownHandle => f.write_str("no such rule or object"),
            Self::Other(errno) => write!(f, "error {errno}"),
        }
    }
}

impl core::error::Error for OffloadError {}

/// What a refusal is counted as.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Refusal {
    /// The backend's table is full.
    Full,
    /// The backend cannot express the rule.
    Unsupported,
    /// The backend has no rules at all.
    NoSys,
    /// The rule exists.
    Exists,
    /// The backend found the rule malformed.
    Invalid,
    /// The manager's own rule budget is spent.
    Budget,
    /// Anything else.
    Other,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Self; 7] = [
        Self::Full,
        Self::Unsupported,
        Self::NoSys,
        Self::Exists,
        Self::Invalid,
        Self::Budget,
        Self::Other,
    ];

    /// A short name for counters and logs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Unsupported => "unsupported",
            Self::NoSys => "nosys",
            Self::Exists => "exists",
            Self::Invalid => "invalid",
            Self::Budget => "budget",
            Self::Other => "other",
        }
    }
}

/// A flow-rule backend: the NIC through DPDK's rte_flow, the software
/// eSwitch, or one that refuses.
///
/// The calls follow rte_flow's life cycle: [`configure`](Self::configure)
/// the template API while the ports are stopped, [`start`](Self::start),
/// then make tables and enqueue rules into them. `create` is rte_flow's
/// one-by-one API, which some drivers (mlx5 with hardware steering) do not
/// serve at all.
pub trait FlowOffload {
    /// Reserves what the template API needs (`rte_flow_configure`): only
    /// before the ports start.
    ///
    /// # Errors
    /// The port is started, or the backend has no template API (then
    /// rules go one by one through [`create`](Self::create)).
    fn configure(&mut self, attr: &PortAttr) -> Result<(), OffloadError>;

    /// The ports have started: tables may be made from now on.
    ///
    /// # Errors
    /// Started twice.
    fn start(&mut self) -> Result<(), OffloadError>;

    /// The eSwitch (transfer proxy) `port` belongs to.
    fn switch_of(&self, _port: PortId) -> u16 {
        0
    }

    /// Installs a rule one by one (`rte_flow_create`).
    ///
    /// # Errors
    /// Why the backend refused it.
    fn create(&mut self, rule: &Rule) -> Result<RuleHandle, OffloadError>;

    /// Makes a template table.
    ///
    /// # Errors
    /// Why the backend refused it (a template it cannot do, no room).
    fn create_table(&mut self, spec: &TableSpec) -> Result<TableId, OffloadError>;

    /// Removes a table; its rules must be gone first.
    ///
    /// # Errors
    /// An unknown table, or one that still holds rules.
    fn destroy_table(&mut self, table: TableId) -> Result<(), OffloadError>;

    /// Inserts rules into tables (`rte_flow_async_create`, pushed and
    /// pulled as one batch); `out` gets one result per rule, in order.
    /// `places[i]` is where `rules[i]` goes.
    fn enqueue(
        &mut self,
        rules: &[Rule],
        places: &[Place],
        out: &mut alloc::vec::Vec<Result<RuleHandle, OffloadError>>,
    );

    /// Removes a rule.
    ///
    /// # Errors
    /// [`OffloadError::UnknownHandle`] for a rule not installed.
    fn destroy(&mut self, rule: RuleHandle) -> Result<(), OffloadError>;

    /// Removes rules as one batch; returns how many were removed.
    fn destroy_batch(&mut self, rules: &[RuleHandle]) -> usize {
        rules.iter().filter(|r| self.destroy(**r).is_ok()).count()
    }

    /// Creates a shared counter for [`Action::SharedCount`] on eSwitch
    /// `switch`.
    ///
    /// # Errors
    /// No room, or no support.
    fn create_counter(&mut self, switch: u16) -> Result<CounterId, OffloadError>;

    /// A shared counter's value.
    ///
    /// # Errors
    /// An unknown counter.
    fn query_counter(&mut self, counter: CounterId) -> Result<Counts, OffloadError>;

    /// Removes a shared counter.
    ///
    /// # Errors
    /// An unknown counter.
    fn destroy_counter(&mut self, counter: CounterId) -> Result<(), OffloadError>;

    /// Defines the outer headers of a VXLAN encapsulation, for
    /// [`Action::VxlanEncap`].
    ///
    /// # Errors
    /// No room, or no support.
    fn create_encap(&mut self, tunnel: &VxlanTunnel) -> Result<EncapId, OffloadError>;

    /// Appends the contexts of rules whose AGE expired since the last
    /// call (`rte_flow_get_q_aged_flows`); each is reported once. `now`
    /// is the data path's clock (a hardware backend keeps its own).
    fn aged(&mut self, now: Nanos, out: &mut alloc::vec::Vec<u64>);

    /// How many rules the backend holds at most, if it knows.
    fn capacity(&self) -> Option<usize>;
}

#[cfg(test)]
mod tests;
