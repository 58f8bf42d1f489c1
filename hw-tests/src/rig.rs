//! One face for the two rigs, so that a scenario runs on either: the
//! simulated rig ([`AgentRig`]: namespaces, veths, dpu-fw and the agent as
//! the test's processes) or a LabRig (a BlueField and its host, the agent
//! already running there; [`crate::labrig`]). [`pick`] takes the LabRig
//! when `CHAINGATE_LABRIG` names one, the simulated rig otherwise.

use std::time::Duration;

use chaingate_proto::dpu::Stats;
use serde_json::Value;

use crate::agent::{AgentCli, AgentRig, WebChain};
use crate::flows::{self, Outcome, Plan};
use crate::labrig::LabRig;

/// The host's own network namespace.
pub const HOST_NETNS: &str = "/proc/1/ns/net";

/// What a scenario needs of a rig.
pub trait Rig {
    /// The host agent.
    fn agent(&self) -> &AgentCli;
    /// The lan host's (namespace, interface).
    fn lan(&self) -> (&str, &str);
    /// The wan host's.
    fn wan(&self) -> (&str, &str);
    /// The DPU's counters.
    fn dpu_stats(&self) -> Stats;
    /// The web chain's gateway file on this rig.
    fn web_chain(&self, chain: WebChain) -> String;
    /// How long instances may take to come up.
    fn boot_within(&self) -> Duration;

    /// Applies `yaml` and waits until exactly `instances` are active and
    /// on the DPU.
    ///
    /// # Panics
    /// If it is refused or does not happen.
    fn apply_and_wait(&self, yaml: &str, instances: &[&str]) -> Value {
        self.agent()
            .apply_and_wait(yaml, instances, self.boot_within())
    }

    /// Runs the traffic tool from the lan host to the wan host.
    ///
    /// # Panics
    /// The hosts' interfaces cannot be opened.
    fn traffic(&self, plan: &Plan) -> Outcome {
        flows::run(plan, self.lan(), self.wan()).expect("the traffic tool")
    }
}

/// Runs `plan` from the lan host to the wan host on a thread of its own
/// and, on this one, `during` once `at` data frames have gone (or the run
/// ended first); returns what `during` gave and the run's outcome.
///
/// # Panics
/// The traffic tool fails.
pub fn traffic_during<T>(
    rig: &dyn Rig,
    mut plan: Plan,
    at: u64,
    during: impl FnOnce() -> T,
) -> (T, Outcome) {
    let live = std::sync::Arc::new(flows::Live::default());
    plan.live = Some(std::sync::Arc::clone(&live));
    let (lan, wan) = (rig.lan(), rig.wan());
    std::thread::scope(|s| {
        let run = s.spawn(|| flows::run(&plan, lan, wan).expect("the traffic tool"));
        while live.sent.load(std::sync::atomic::Ordering::Relaxed) < at && !run.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = during();
        (got, run.join().expect("the traffic thread"))
    })
}

impl Rig for AgentRig {
    fn agent(&self) -> &AgentCli {
        &self.agent
    }

    fn lan(&self) -> (&str, &str) {
        (self.topo.netns(), &self.lan.outer)
    }

    fn wan(&self) -> (&str, &str) {
        (self.topo.netns(), &self.wan.outer)
    }

    fn dpu_stats(&self) -> Stats {
        self.dpu.stats()
    }

    fn web_chain(&self, chain: WebChain) -> String {
        chain.gateway()
    }

    fn boot_within(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// A LabRig with what the scenarios need.
#[derive(Debug)]
pub struct LabScenarios {
    lab: LabRig,
    agent: AgentCli,
}

impl LabScenarios {
    /// The scenarios' view of `lab`.
    ///
    /// # Panics
    /// The description lacks `agent` or `web_chain`: the lab asked for
    /// the scenarios and cannot run them.
    #[must_use]
    pub fn new(lab: LabRig) -> Self {
        let socket = lab
            .agent
            .clone()
            .expect("the LabRig file needs `agent` (the host agent's socket) for the scenarios");
        for service in ["firewall", "ids", "nat"] {
            assert!(
                lab.web_chain.contains_key(service),
                "the LabRig file's `web_chain` needs `{service}`"
            );
        }
        Self {
            lab,
            agent: AgentCli { socket, log: None },
        }
    }
}

impl Rig for LabScenarios {
    fn agent(&self) -> &AgentCli {
        &self.agent
    }

    fn lan(&self) -> (&str, &str) {
        (
            self.lab.lan_netns.as_deref().unwrap_or(HOST_NETNS),
            &self.lab.lan,
        )
    }

    fn wan(&self) -> (&str, &str) {
        (
            self.lab.wan_netns.as_deref().unwrap_or(HOST_NETNS),
            &self.lab.wan,
        )
    }

    fn dpu_stats(&self) -> Stats {
        crate::dpu::stats_at(&self.lab.dpu)
    }

    fn web_chain(&self, mut chain: WebChain) -> String {
        chain.launch = self
            .lab
            .web_chain
            .iter()
            .map(|(service, launch)| {
                // JSON is YAML's flow style.
                let flow = serde_json::to_string(launch).expect("a YAML value is JSON");
                (service.clone(), flow)
            })
            .collect();
        chain.gateway()
    }

    fn boot_within(&self) -> Duration {
        self.lab.boot
    }
}

/// The rig a scenario runs on: the LabRig that `CHAINGATE_LABRIG` names,
/// or a new simulated rig with `vfs` VFs; `None` when neither can run
/// here (no root: see [`crate::require_root`]).
///
/// # Panics
/// The simulated rig does not come up.
#[must_use]
pub fn pick(vfs: usize) -> Option<Box<dyn Rig>> {
    if let Some(lab) = LabRig::from_env() {
        return Some(Box::new(LabScenarios::new(lab)));
    }
    if !crate::require_root() {
        return None;
    }
    Some(Box::new(AgentRig::start(vfs).expect("the simulated rig")))
}
