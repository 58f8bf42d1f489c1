//! The agent: keeps the instances the operator's configuration asks for
//! running, and the DPU configured with them.
//!
//! The operator's actions ([`Agent::apply`], [`Agent::scale`],
//! [`Agent::drain`]) change the store and wake the supervisor; the
//! supervisor (a thread of its own, since launching and provisioning are
//! blocking work) compares the store with what runs and acts, one step at
//! a time, each step recorded before it is taken (see [`crate::store`]):
//!
//! - an instance whose process is gone is failed: taken off the DPU at
//!   once, stopped and its VF released, and replaced;
//! - a starting instance becomes active on its first good probe answer
//!   (then the DPU gets it), or failed after the start timeout; an active
//!   one is failed after `probe.failures` bad answers in a row;
//! - a service with fewer starting or active instances than its target
//!   gets a new one: a free VF (bound and checked through VFIO when it is a
//!   PCI VF), a record, a launch; one with more has its newest instance
//!   drained;
//! - a draining instance is stopped once the DPU reports no session on it,
//!   or its service's drain timeout has passed;
//! - after a restart, instances found running are adopted, recorded ones
//!   that are not running are launched again, and processes of this run
//!   directory that the store does not know are stopped (orphans).
//!
//! Every change of the instance set or of the configuration is pushed to
//! the DPU as a new generation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chaingate_proto::dpu;
use chaingate_proto::file::{self, GatewayFile, InstanceFile, PortFile, RoleFile, StateFile};
use tokio::sync::broadcast;

use crate::config::{ProbeConfig, ms};
use crate::dpu::DpuClient;
use crate::launcher::{self, LaunchSpec, Program, VmImage, VmLauncher};
use crate::scaler::{Decision, Load, Policy, Scaler};
use crate::store::{EventRecord, InstanceRecord, Phase, Store, StoreError};
use crate::vf::{VfPool, VfRef};

/// How the supervisor paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Probing.
    pub probe: ProbeConfig,
    /// How long an instance has to stop.
    pub stop_timeout: Duration,
    /// The longest the supervisor sleeps between two looks.
    pub tick: Duration,
    /// How often processes are scanned for orphans.
    pub orphan_scan: Duration,
    /// Wait after a failed provisioning or launch before the next try for
    /// the same service; doubled at each failure in a row, up to
    /// `retry_max`.
    pub retry_after: Duration,
    /// The longest wait between two tries.
    pub retry_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            probe: ProbeConfig::default(),
            stop_timeout: Duration::from_secs(10),
            tick: Duration::from_millis(200),
            orphan_scan: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// An operator action that was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The request is wrong; the message names the field or the thing.
    #[error("{0}")]
    Invalid(String),
    /// No such service or instance.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The thing asked did not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    /// Scaling and lifecycle events by (service, kind).
    pub events: Mutex<BTreeMap<(String, String), u64>>,
    /// Provisioning failures by (service, step).
    pub provisioning_failures: Mutex<BTreeMap<(String, String), u64>>,
    /// Scale-out reaction times per service: (last, sum, count), seconds.
    pub reactions: Mutex<BTreeMap<String, (f64, f64, u64)>>,
}

fn bump(map: &Mutex<BTreeMap<(String, String), u64>>, a: &str, b: &str) {
    let mut m = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *m.entry((a.to_owned(), b.to_owned())).or_default() += 1;
}

/// What the agent is made of.
#[derive(Debug)]
pub struct Parts {
    /// The store.
    pub store: Store,
    /// The VFs.
    pub pool: VfPool,
    /// The launchers (`process`, `qemu`).
    pub launchers: Vec<Box<dyn VmLauncher>>,
    /// Where instances' files go.
    pub run_dir: PathBuf,
    /// The DPU.
    pub dpu: DpuClient,
    /// The runtime the DPU client runs on (the supervisor, a thread of its
    /// own, calls the DPU through it).
    pub runtime: tokio::runtime::Handle,
    /// Pacing.
    pub options: Options,
    /// This host's part in a cluster of hosts, if it is in one.
    pub cluster: Option<crate::cluster::Cluster>,
}

#[derive(Debug)]
struct Shared {
    parts: Parts,
    events: broadcast::Sender<EventRecord>,
    counters: Counters,
    wake: (Mutex<bool>, Condvar),
    ticks: (Mutex<u64>, Condvar),
    stop: AtomicBool,
}

/// A running agent; the supervisor stops when this is dropped.
#[derive(Debug)]
pub struct Agent {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Agent {
    /// Starts the supervisor over `parts`.
    #[must_use]
    pub fn start(parts: Parts) -> Self {
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            parts,
            events,
            counters: Counters::default(),
            wake: (Mutex::new(false), Condvar::new()),
            ticks: (Mutex::new(0), Condvar::new()),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("supervisor".into())
                .spawn(move || Supervisor::new(shared).run())
                .expect("a thread starts")
        };
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.shared.parts.store
    }

    /// The DPU client.
    #[must_use]
    pub fn dpu(&self) -> &DpuClient {
        &self.shared.parts.dpu
    }

    /// The DPU's address.
    #[must_use]
    pub fn dpu_address(&self) -> &str {
        self.shared.parts.dpu.addr()
    }

    /// The counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Events as they happen.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.shared.events.subscribe()
    }

    /// Wakes the supervisor and waits (up to `within`) until it has made a
    /// full pass after this call.
    pub fn settle(&self, within: Duration) {
        let start = *self
            .shared
            .ticks
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.shared.wake();
        let (lock, cvar) = &self.shared.ticks;
        let guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = cvar.wait_timeout_while(guard, within, |t| *t < start + 2);
    }

    /// Applies the operator's configuration: checked as the DPU will check
    /// it (with the agent's VF ports added), then stored; the supervisor
    /// launches or drains to match. Returns the generation in force after.
    ///
    /// # Errors
    /// [`ActionError::Invalid`] naming the field path (and the line for a
    /// syntax error); nothing is changed then.
    pub fn apply(&self, yaml: &str) -> Result<u64, ActionError> {
        let gateway = check_config(yaml, &self.shared.parts)?;
        let bounds = gateway
            .services
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    (u64::from(s.scaling.min), u64::from(s.scaling.max)),
                )
            })
            .collect();
        self.shared.parts.store.set_desired(yaml, &bounds)?;
        self.shared.event(
            "config_applied",
            "",
            "",
            format!(
                "{} services, {} chains, {} policies",
                gateway.services.len(),
                gateway.chains.len(),
                gateway.policies.len()
            ),
        );
        self.settle(Duration::from_secs(5));
        Ok(self.shared.parts.store.generation()?)
    }

    /// Sets a service's instance count, within its bounds.
    ///
    /// # Errors
    /// No such service, or `n` outside its min and max.
    pub fn scale(&self, service: &str, n: u64) -> Result<u64, ActionError> {
        let gateway = self
            .shared
            .desired()?
            .ok_or_else(|| ActionError::NotFound("no configuration applied yet".into()))?;
        let s = gateway
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ActionError::NotFound(format!("no service `{service}`")))?;
        let (min, max) = (u64::from(s.scaling.min), u64::from(s.scaling.max));
        if n < min || n > max {
            return Err(ActionError::Invalid(format!(
                "{service}: {n} instances is outside its scaling bounds {min}..={max}"
            )));
        }
        self.shared.parts.store.set_target(service, n)?;
        self.shared.event(
            "scale_set",
            service,
            "",
            format!("target {n} instances (operator)"),
        );
        self.shared.wake();
        Ok(n)
    }

    /// Drains an instance: no new sessions on the DPU, stopped when its
    /// sessions are gone or its service's drain timeout passes. The
    /// service's target drops by one, but not below its min (at the min a
    /// replacement is launched).
    ///
    /// # Errors
    /// No such instance, or it is already draining or stopping.
    /// Asks an instance's service function through its probe channel:
    /// `probe` (its counters), or a request of the function's own
    /// (`flows` for a monitor); the answer as the function gives it.
    ///
    /// # Errors
    /// A request that is not one printable line, an unknown instance or
    /// one not running, or no answer within two seconds.
    pub fn ask(&self, instance: &str, request: &str) -> Result<String, ActionError> {
        let request = request.trim();
        if request.is_empty()
            || request.len() > 64
            || !request.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(ActionError::Invalid(
                "a request is one line of printable ASCII, up to 64 bytes (`probe`, `flows`)"
                    .into(),
            ));
        }
        let record = self
            .shared
            .parts
            .store
            .instances()?
            .remove(instance)
            .ok_or_else(|| ActionError::NotFound(format!("no instance `{instance}`")))?;
        if !matches!(
            record.phase,
            Phase::Starting | Phase::Active | Phase::Draining
        ) {
            return Err(ActionError::Invalid(format!(
                "{instance} is {}: nothing runs to answer",
                record.phase.as_str()
            )));
        }
        let path = launcher::probe_path(&self.shared.parts.run_dir, instance);
        launcher::ask_socket(&path, request, Duration::from_secs(2))
            .map_err(|e| ActionError::Unavailable(format!("{instance}: {e}")))
    }

    pub fn drain(&self, instance: &str) -> Result<(), ActionError> {
        let store = &self.shared.parts.store;
        let mut record = store
            .instances()?
            .remove(instance)
            .ok_or_else(|| ActionError::NotFound(format!("no instance `{instance}`")))?;
        if !matches!(record.phase, Phase::Active | Phase::Starting) {
            return Err(ActionError::Invalid(format!(
                "{instance} is already {}",
                record.phase.as_str()
            )));
        }
        let min = self
            .shared
            .desired()?
            .and_then(|g| {
                g.services
                    .iter()
                    .find(|s| s.name == record.service)
                    .map(|s| u64::from(s.scaling.min))
            })
            .unwrap_or(0);
        if let Some(t) = store.targets()?.get(&record.service) {
            store.set_target(&record.service, t.saturating_sub(1).max(min))?;
        }
        record.phase = if record.phase == Phase::Starting {
            Phase::Stopping
        } else {
            Phase::Draining
        };
        record.since_ms = now_ms();
        store.put_instance(&record)?;
        self.shared.event(
            "drain_started",
            &record.service,
            instance,
            "drained by the operator".to_owned(),
        );
        self.shared.wake();
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Parses and checks an operator configuration for this agent.
fn check_config(yaml: &str, parts: &Parts) -> Result<GatewayFile, ActionError> {
    let gateway = file::parse(yaml).map_err(|e| ActionError::Invalid(e.to_string()))?;
    if !gateway.instances.is_empty() {
        return Err(ActionError::Invalid(
            "instances: the agent makes the instances itself; leave this section out".into(),
        ));
    }
    for (i, s) in gateway.services.iter().enumerate() {
        let program = program_of(s)
            .map_err(|m| ActionError::Invalid(format!("services[{i}].launch: {m}")))?;
        let kind = match program {
            Program::Process(_) => "process",
            Program::Vm(_) => "qemu",
        };
        let Some(launcher) = parts.launchers.iter().find(|l| l.kind() == kind) else {
            return Err(ActionError::Invalid(format!(
                "services[{i}].launch: this agent has no {kind} launcher"
            )));
        };
        if s.scaling.max > 0
            && !parts
                .pool
                .all()
                .iter()
                .any(|v| launcher.vf_kinds().contains(&v.kind))
        {
            let kinds: Vec<&str> = launcher.vf_kinds().iter().map(|k| k.as_str()).collect();
            return Err(ActionError::Invalid(format!(
                "services[{i}].launch: {kind} instances need {} VFs, and the agent's configuration lists none",
                kinds.join(" or ")
            )));
        }
        if s.scaling.min > s.scaling.max {
            return Err(ActionError::Invalid(format!(
                "services[{i}].scaling: min {} is over max {}",
                s.scaling.min, s.scaling.max
            )));
        }
    }
    // As the DPU will check it, with the agent's VF ports in it.
    file::validate(&with_instances(&gateway, &[], &parts.pool), 1)
        .map_err(|e| ActionError::Invalid(e.to_string()))?;
    Ok(gateway)
}

/// The launch program of a service file.
fn program_of(s: &file::ServiceFile) -> Result<Program, String> {
    match s.launch.as_ref().map(|l| (&l.process, &l.vm)) {
        Some((Some(cmd), None)) if !cmd.is_empty() => Ok(Program::Process(cmd.clone())),
        Some((Some(_), None)) => Err("process: empty command".into()),
        Some((None, Some(vm))) => Ok(Program::Vm(VmImage {
            kernel: vm.kernel.clone().into(),
            initrd: vm.initrd.clone().into(),
            memory_mib: vm.memory_mib.unwrap_or(256),
            cpus: vm.cpus.unwrap_or(1),
        })),
        None | Some((None, None)) => {
            Err("give process: [COMMAND...] or vm: { kernel, initrd }".into())
        }
        Some((Some(_), Some(_))) => Err("give process or vm, not both".into()),
    }
}

/// The configuration with the agent's instances and VF ports in it.
fn with_instances(
    gateway: &GatewayFile,
    records: &[&InstanceRecord],
    pool: &VfPool,
) -> GatewayFile {
    let mut g = gateway.clone();
    for v in pool.all() {
        if !g.ports.iter().any(|p| p.name == v.vf.port) {
            g.ports.push(PortFile {
                name: v.vf.port.clone(),
                role: RoleFile::Vf,
            });
        }
    }
    g.instances = records
        .iter()
        .map(|r| InstanceFile {
            name: r.name.clone(),
            service: r.service.clone(),
            port: Some(r.vf.port.clone()),
            ingress: None,
            egress: None,
            remote: None,
            // A stopping one (kept in a cluster) is down: this DPU's
            // sessions leave it, and what peers still send it is
            // delivered until they have taken it out.
            state: match r.phase {
                Phase::Draining => StateFile::Draining,
                Phase::Stopping => StateFile::Down,
                _ => StateFile::Active,
            },
            weight: None,
        })
        .collect();
    g.generation = None;
    g
}

impl Shared {
    fn wake(&self) {
        let (lock, cvar) = &self.wake;
        *lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        cvar.notify_all();
    }

    fn desired(&self) -> Result<Option<GatewayFile>, StoreError> {
        Ok(self
            .parts
            .store
            .desired()?
            .and_then(|y| file::parse(&y).ok()))
    }

    fn event(&self, kind: &str, service: &str, instance: &str, message: String) {
        tracing::info!(kind, service, instance, "{message}");
        if !service.is_empty() {
            bump(&self.counters.events, service, kind);
        }
        let record = EventRecord {
            seq: 0,
            at_ms: now_ms(),
            kind: kind.to_owned(),
            service: service.to_owned(),
            instance: instance.to_owned(),
            message,
        };
        match self.parts.store.add_event(record) {
            Ok(e) => {
                let _ = self.events.send(e);
            }
            Err(e) => tracing::error!(error = %e, "event not recorded"),
        }
    }
}

/// The supervisor's memory between passes (none of it needs to survive a
/// restart).
struct Supervisor {
    shared: Arc<Shared>,
    first: bool,
    last_scan: Option<Instant>,
    last_probe: HashMap<String, Instant>,
    probe_failures: HashMap<String, u32>,
    retry_at: HashMap<String, Instant>,
    failures_in_a_row: HashMap<String, u32>,
    said: HashMap<String, String>,
    pushed: Option<dpu::Config>,
    scaler: Scaler,
    requests: broadcast::Receiver<dpu::ScaleRequest>,
    /// Scale-outs waiting for their first session: since when the load
    /// was over, and the instances the service had then.
    pending_out: HashMap<String, (Instant, BTreeSet<String>)>,
    /// The DPU's refused-sessions counter last seen (boot, count), and
    /// when the agent last said so.
    refused: Option<(u64, u64)>,
    refused_said: Option<Instant>,
    /// Cluster-wide scaling decisions in flight: the service's lock, held
    /// until the cluster shows `count` instances of it, or `until`.
    deciding: HashMap<String, (crate::inventory::InventoryLock, u64, Instant)>,
}

impl Supervisor {
    fn new(shared: Arc<Shared>) -> Self {
        let requests = shared.parts.dpu.scale_requests();
        Self {
            scaler: Scaler::new(),
            requests,
            pending_out: HashMap::new(),
            refused: None,
            refused_said: None,
            deciding: HashMap::new(),
            failures_in_a_row: HashMap::new(),
            shared,
            first: true,
            last_scan: None,
            last_probe: HashMap::new(),
            probe_failures: HashMap::new(),
            retry_at: HashMap::new(),
            said: HashMap::new(),
            pushed: None,
        }
    }

    fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.pass() {
                tracing::error!(error = %e, "supervisor pass failed; retrying");
            }
            {
                let (lock, cvar) = &self.shared.ticks;
                *lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
                cvar.notify_all();
            }
            let (lock, cvar) = &self.shared.wake;
            let guard = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (mut woken, _) = cvar
                .wait_timeout_while(guard, self.shared.parts.options.tick, |w| !*w)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *woken = false;
        }
    }

    fn pass(&mut self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let parts = &shared.parts;
        let desired = self.shared.desired()?;
        let now = Instant::now();
        if self.first
            || self
                .last_scan
                .is_none_or(|t| now.duration_since(t) >= parts.options.orphan_scan)
        {
            self.reconcile_processes()?;
            self.last_scan = Some(now);
        }
        self.first = false;

        for record in parts.store.instances()?.into_values() {
            self.look_after(record, desired.as_ref())?;
        }
        if let Some(gateway) = &desired {
            self.autoscale(gateway)?;
        }
        self.scale(desired.as_ref())?;
        if let Some(gateway) = &desired {
            self.push(gateway)?;
        }
        Ok(())
    }

    /// Says when the DPU refuses new connections for a full session
    /// table: at most one event every ten seconds while it lasts.
    fn session_table(&mut self, telemetry: &dpu::Telemetry, now: Instant) {
        let Some(s) = telemetry.sessions.as_ref() else {
            return;
        };
        let last = match self.refused {
            Some((boot, n)) if boot == telemetry.boot_id && n <= s.refused => n,
            // A new DPU, or the first look: counted from here.
            _ => s.refused,
        };
        if s.refused > last
            && self
                .refused_said
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.shared.event(
                "sessions_refused",
                "",
                "",
                format!(
                    "the DPU's session table is full ({} of {}): {} new connections refused; \
                     raise `sessions` in dpu-fw's configuration",
                    s.active,
                    s.capacity,
                    s.refused - last
                ),
            );
            self.refused_said = Some(now);
            self.refused = Some((telemetry.boot_id, s.refused));
        } else if s.refused == last {
            self.refused = Some((telemetry.boot_id, s.refused));
        }
    }

    /// Reads the DPU's telemetry and scale requests, and moves targets as
    /// the [`Scaler`] decides; measures scale-out reaction times.
    fn autoscale(&mut self, gateway: &GatewayFile) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let parts = &shared.parts;
        let now = Instant::now();
        loop {
            match self.requests.try_recv() {
                Ok(r) => self.scaler.requested(&r.service, now),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        let state = parts.dpu.state().borrow().clone();
        let Some(telemetry) = state.telemetry.filter(|_| state.connected) else {
            return Ok(());
        };
        self.session_table(&telemetry, now);
        let records = parts.store.instances()?;
        let active = |name: &str| records.get(name).is_some_and(|r| r.phase == Phase::Active);
        let sessions = |name: &str| {
            telemetry
                .instances
                .iter()
                .find(|l| l.instance == name)
                .map_or(0, |l| l.sessions)
        };

        // Reaction times: the first session on an instance that came after
        // the decision.
        let done: Vec<(String, String)> = self
            .pending_out
            .iter()
            .filter_map(|(service, (_, before))| {
                records
                    .values()
                    .find(|r| {
                        &r.service == service
                            && r.phase == Phase::Active
                            && !before.contains(&r.name)
                            && sessions(&r.name) > 0
                    })
                    .map(|r| (service.clone(), r.name.clone()))
            })
            .collect();
        for (service, instance) in done {
            let (since, _) = self.pending_out.remove(&service).expect("listed above");
            let secs = now.duration_since(since).as_secs_f64();
            {
                let mut r = shared
                    .counters
                    .reactions
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let e = r.entry(service.clone()).or_default();
                *e = (secs, e.1 + secs, e.2 + 1);
            }
            self.shared.event(
                "scale_out_complete",
                &service,
                &instance,
                format!(
                    "first new session on it {:.0} ms after the load crossed the watermark",
                    secs * 1000.0
                ),
            );
        }
        self.pending_out
            .retain(|_, (since, _)| now.duration_since(*since) < Duration::from_secs(600));

        let snapshot = parts
            .cluster
            .as_ref()
            .map(|c| c.inventory.watch().borrow().clone());
        // Decisions whose instance shows in the cluster (or that took too
        // long) free their service's lock.
        if let (Some(c), Some(snap)) = (&parts.cluster, &snapshot) {
            self.deciding.retain(|service, (_, count, until)| {
                c.count(snap, service, &records) < *count && now < *until
            });
        }
        for service in &gateway.services {
            let sc = &service.scaling;
            let policy = Policy {
                min: u64::from(sc.min),
                max: u64::from(sc.max),
                out_at: f64::from(sc.scale_out_at.0) / 1000.0,
                in_at: f64::from(sc.scale_in_at.0) / 1000.0,
                hold: ms(sc.hold),
                cooldown: ms(sc.cooldown),
            };
            let running: Vec<&InstanceRecord> = records
                .values()
                .filter(|r| {
                    r.service == service.name && matches!(r.phase, Phase::Starting | Phase::Active)
                })
                .collect();
            let mut load = Load {
                utilisation: telemetry
                    .instances
                    .iter()
                    .filter(|l| l.service == service.name && active(&l.instance))
                    .map(|l| l.utilisation)
                    .collect(),
            };
            let mut n = running.len() as u64;
            // In a cluster the service is all its instances, on every host.
            if let (Some(c), Some(snap)) = (&parts.cluster, &snapshot) {
                if self.deciding.contains_key(&service.name) {
                    continue;
                }
                let (theirs, count) = c.remote_load(snap, &service.name);
                load.utilisation.extend(theirs);
                n += count;
            }
            let decision = self.scaler.decide(&service.name, &policy, n, &load, now);
            let decision = match (decision, &parts.cluster, &snapshot) {
                (Decision::Out { .. } | Decision::In, Some(c), Some(snap)) => self
                    .cluster_decision(
                        c,
                        snap,
                        &service.name,
                        decision,
                        (n, policy.min),
                        &load,
                        &records,
                    )?,
                _ => decision,
            };
            let local = running.len() as u64;
            match decision {
                Decision::Stay => {}
                Decision::Out { since } => {
                    parts.store.set_target(&service.name, local + 1)?;
                    let before = running.iter().map(|r| r.name.clone()).collect();
                    self.pending_out
                        .insert(service.name.clone(), (since, before));
                    self.said.remove(&service.name);
                    self.shared.event(
                        "scale_out",
                        &service.name,
                        "",
                        format!(
                            "load over {:.0}% of capacity on every instance ({}): {n} -> {} instances",
                            policy.out_at * 100.0,
                            percentages(&load),
                            n + 1
                        ),
                    );
                }
                Decision::In => {
                    parts
                        .store
                        .set_target(&service.name, local.saturating_sub(1))?;
                    self.shared.event(
                        "scale_in",
                        &service.name,
                        "",
                        format!(
                            "load under {:.0}% on every instance ({}) for {:?}: {n} -> {} instances",
                            policy.in_at * 100.0,
                            percentages(&load),
                            policy.hold,
                            n - 1
                        ),
                    );
                }
                Decision::AtMax => self.say_once(
                    &service.name,
                    "scale_out_refused",
                    format!(
                        "short of bandwidth ({}), but at its max of {} instances",
                        percentages(&load),
                        policy.max
                    ),
                ),
            }
        }
        Ok(())
    }

    /// A scaling decision for a service of the cluster: taken under the
    /// service's cluster-wide lock (another host deciding for it: none
    /// here), and placed. Scale-out goes to this host while it has a free
    /// VF, else to the host with the most free VFs, which is asked
    /// through the inventory (the decision is then made: `Stay` here).
    /// Scale-in drains one of this host's instances, if it has more than
    /// its own minimum.
    #[allow(clippy::too_many_arguments)]
    fn cluster_decision(
        &mut self,
        c: &crate::cluster::Cluster,
        snap: &crate::inventory::Snapshot,
        service: &str,
        decision: Decision,
        (n, min): (u64, u64),
        load: &Load,
        records: &BTreeMap<String, InstanceRecord>,
    ) -> Result<Decision, StoreError> {
        let parts = &self.shared.parts;
        let Some(lock) = c.try_lock(service, &parts.runtime) else {
            // Another host decides for this service now.
            self.scaler.reset(service);
            return Ok(Decision::Stay);
        };
        let until = Instant::now() + Duration::from_secs(10);
        let local = records
            .values()
            .filter(|r| r.service == service && matches!(r.phase, Phase::Starting | Phase::Active))
            .count() as u64;
        match decision {
            Decision::Out { since } => {
                let used: BTreeSet<&VfRef> = records.values().map(|r| &r.vf).collect();
                let free = parts
                    .pool
                    .all()
                    .iter()
                    .filter(|v| !used.contains(&v.vf))
                    .count();
                match c.place(snap, u32::try_from(free).unwrap_or(u32::MAX)) {
                    None => {
                        self.say_once(
                            service,
                            "scale_out_refused",
                            format!(
                                "short of bandwidth ({}), but no host has a free VF",
                                percentages(load)
                            ),
                        );
                        Ok(Decision::Stay)
                    }
                    Some(host) if host == c.host => {
                        self.deciding
                            .insert(service.to_owned(), (lock, n + 1, until));
                        Ok(Decision::Out { since })
                    }
                    Some(host) => {
                        let theirs = snap
                            .instances
                            .values()
                            .filter(|i| i.host == host && i.service == service)
                            .count() as u64;
                        if let Err(e) = c.ask(&host, service, theirs + 1, &parts.runtime) {
                            tracing::warn!(service, host, error = %e, "could not place an instance");
                            return Ok(Decision::Stay);
                        }
                        self.shared.event(
                            "scale_out",
                            service,
                            "",
                            format!(
                                "load over its watermark on every instance ({}): {n} -> {} instances, the new one on host {host} (no free VF here)",
                                percentages(load),
                                n + 1
                            ),
                        );
                        self.deciding
                            .insert(service.to_owned(), (lock, n + 1, until));
                        Ok(Decision::Stay)
                    }
                }
            }
            // The drain is in the store at once, and published with this
            // pass: the lock can go with it. A host keeps its own minimum.
            Decision::In if local > min => {
                drop(lock);
                Ok(Decision::In)
            }
            _ => Ok(Decision::Stay),
        }
    }

    /// After a start, and now and then: adopt what runs, relaunch what is
    /// recorded and does not run, stop what runs and is not recorded.
    fn reconcile_processes(&mut self) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let parts = &shared.parts;
        let running = launcher::scan(&parts.run_dir);
        let records = parts.store.instances()?;
        for (name, handle) in &running {
            if records.contains_key(name) {
                continue;
            }
            let owner = read_owner(&parts.run_dir, name);
            let (kind, vf) = owner.unwrap_or_else(|| {
                (
                    "process".to_owned(),
                    VfRef {
                        port: String::new(),
                        device: String::new(),
                    },
                )
            });
            if let Some(l) = launcher_of(parts, &kind)
                && let Err(e) = l.stop(name, &vf, parts.options.stop_timeout)
            {
                tracing::warn!(instance = %name, error = %e, "stopping an orphan");
            }
            self.shared.event(
                "orphan_stopped",
                "",
                name,
                format!("pid {} ran with no record; stopped", handle.pid),
            );
        }
        if !self.first {
            return Ok(());
        }
        for mut record in records.into_values() {
            if record.phase == Phase::Stopping {
                continue;
            }
            match running.get(&record.name) {
                Some(handle) => {
                    if record.handle.as_ref() != Some(handle) {
                        record.handle = Some(handle.clone());
                        parts.store.put_instance(&record)?;
                    }
                    self.shared.event(
                        "instance_adopted",
                        &record.service,
                        &record.name,
                        format!("found running (pid {})", handle.pid),
                    );
                }
                None if record.phase == Phase::Draining => {
                    record.phase = Phase::Stopping;
                    parts.store.put_instance(&record)?;
                }
                None => {
                    let why = if record.handle.is_none() {
                        "recorded but never launched"
                    } else {
                        "not running"
                    };
                    self.shared.event(
                        "instance_relaunched",
                        &record.service,
                        &record.name,
                        format!("{why}; launching it again"),
                    );
                    record.handle = None;
                    record.phase = Phase::Starting;
                    parts.store.put_instance(&record)?;
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, mut record: InstanceRecord, why: String) -> Result<(), StoreError> {
        self.shared
            .event("instance_failed", &record.service, &record.name, why);
        // An instance that keeps failing is not relaunched in a loop.
        self.back_off(&record.service);
        if matches!(record.phase, Phase::Active | Phase::Draining) {
            // Down on the DPU now, before the next configuration: its
            // sessions move (fail open) or are dropped (fail closed), and
            // new sessions avoid it.
            let parts = &self.shared.parts;
            let down = parts.runtime.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(1),
                    parts
                        .dpu
                        .set_instance_state(&record.name, dpu::InstanceState::Down),
                )
                .await
            });
            match down {
                Ok(Ok(())) => tracing::info!(instance = %record.name, "set down on the DPU"),
                Ok(Err(e)) => {
                    tracing::warn!(instance = %record.name, error = %e, "could not set it down; the next configuration drops it");
                }
                Err(_) => {
                    tracing::warn!(instance = %record.name, "the DPU did not answer in 1 s; the next configuration drops it");
                }
            }
        }
        record.phase = Phase::Stopping;
        record.since_ms = now_ms();
        self.shared.parts.store.put_instance(&record)
    }

    fn look_after(
        &mut self,
        mut record: InstanceRecord,
        desired: Option<&GatewayFile>,
    ) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let parts = &shared.parts;
        let Some(launcher) = launcher_of(parts, &record.launcher) else {
            tracing::error!(instance = %record.name, launcher = %record.launcher, "no such launcher here");
            return Ok(());
        };
        let service = desired.and_then(|g| g.services.iter().find(|s| s.name == record.service));
        match record.phase {
            Phase::Stopping => {
                // In a cluster the other DPUs take it out first (it is
                // published down): their sessions move to other instances
                // before it stops, for up to five seconds.
                let waited = Duration::from_millis(now_ms().saturating_sub(record.since_ms));
                if waited < Duration::from_secs(5)
                    && parts.cluster.as_ref().is_some_and(|c| {
                        c.used_elsewhere(&c.inventory.watch().borrow(), &record.name)
                    })
                {
                    return Ok(());
                }
                crash_point("stopping");
                let how = match launcher.stop(&record.name, &record.vf, parts.options.stop_timeout)
                {
                    Ok(how) => how,
                    Err(e) => {
                        tracing::warn!(instance = %record.name, error = %e, "stop failed; trying again");
                        return Ok(());
                    }
                };
                if let Err(e) = parts.pool.release(&record.vf) {
                    bump(
                        &self.shared.counters.provisioning_failures,
                        &record.service,
                        "release",
                    );
                    self.shared.event(
                        "provisioning_failed",
                        &record.service,
                        &record.name,
                        e.to_string(),
                    );
                }
                crash_point("stopped");
                parts.store.remove_instance(&record.name)?;
                self.last_probe.remove(&record.name);
                self.probe_failures.remove(&record.name);
                self.shared.event(
                    "instance_stopped",
                    &record.service,
                    &record.name,
                    format!("{how}; VF {} released", record.vf.port),
                );
                Ok(())
            }
            Phase::Starting if record.handle.is_none() => {
                self.start(record, service);
                Ok(())
            }
            Phase::Starting | Phase::Active | Phase::Draining => {
                let handle = record.handle.clone().expect("checked above");
                if !launcher.alive(&record.name, &handle) {
                    if record.phase == Phase::Draining {
                        record.phase = Phase::Stopping;
                        return parts.store.put_instance(&record);
                    }
                    return self.fail(record, format!("its {} exited", launcher.kind()));
                }
                match record.phase {
                    Phase::Starting => self.probe_starting(record, launcher),
                    Phase::Active => self.probe_active(record, launcher),
                    _ => self.check_drain(record, service),
                }
            }
        }
    }

    fn probe_starting(
        &mut self,
        mut record: InstanceRecord,
        launcher: &dyn VmLauncher,
    ) -> Result<(), StoreError> {
        let opts = self.shared.parts.options;
        match launcher.probe(&record.name, opts.probe.timeout()) {
            Ok(answer) => {
                record.phase = Phase::Active;
                record.since_ms = now_ms();
                self.shared.parts.store.put_instance(&record)?;
                self.last_probe.insert(record.name.clone(), Instant::now());
                self.failures_in_a_row.remove(&record.service);
                self.retry_at.remove(&record.service);
                self.shared.event(
                    "instance_ready",
                    &record.service,
                    &record.name,
                    format!("healthy ({answer}); on the DPU"),
                );
                Ok(())
            }
            Err(e)
                if now_ms().saturating_sub(record.since_ms)
                    > ms(opts.probe.start_timeout).as_millis() as u64 =>
            {
                self.fail(
                    record,
                    format!(
                        "no healthy answer within {:?}: {e}",
                        opts.probe.start_timeout()
                    ),
                )
            }
            Err(_) => Ok(()),
        }
    }

    fn probe_active(
        &mut self,
        record: InstanceRecord,
        launcher: &dyn VmLauncher,
    ) -> Result<(), StoreError> {
        let opts = self.shared.parts.options;
        let due = self
            .last_probe
            .get(&record.name)
            .is_none_or(|t| t.elapsed() >= opts.probe.interval());
        if !due {
            return Ok(());
        }
        self.last_probe.insert(record.name.clone(), Instant::now());
        match launcher.probe(&record.name, opts.probe.timeout()) {
            Ok(_) => {
                self.probe_failures.remove(&record.name);
                Ok(())
            }
            Err(e) => {
                let n = self.probe_failures.entry(record.name.clone()).or_default();
                *n += 1;
                if *n >= opts.probe.failures {
                    let n = *n;
                    self.probe_failures.remove(&record.name);
                    self.fail(record, format!("{n} health probes failed in a row: {e}"))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn check_drain(
        &mut self,
        mut record: InstanceRecord,
        service: Option<&file::ServiceFile>,
    ) -> Result<(), StoreError> {
        let timeout = service.map_or(Duration::ZERO, |s| ms(s.scaling.drain_timeout));
        let waited = Duration::from_millis(now_ms().saturating_sub(record.since_ms));
        let state = self.shared.parts.dpu.state().borrow().clone();
        // Empty only once the DPU itself reports the instance draining.
        // In a cluster other DPUs may hold sessions on it too: they say
        // so in the inventory.
        let elsewhere = self
            .shared
            .parts
            .cluster
            .as_ref()
            .is_some_and(|c| c.used_elsewhere(&c.inventory.watch().borrow(), &record.name));
        let empty = !elsewhere
            && state.connected
            && state.telemetry.as_ref().is_some_and(|t| {
                t.instances.iter().any(|l| {
                    l.instance == record.name
                        && l.state == i32::from(dpu::InstanceState::Draining)
                        && l.sessions == 0
                })
            });
        if empty || waited >= timeout {
            let why = if empty {
                "its sessions are gone".to_owned()
            } else {
                format!("drain timeout ({timeout:?}) passed")
            };
            self.shared
                .event("drain_finished", &record.service, &record.name, why);
            record.phase = Phase::Stopping;
            record.since_ms = now_ms();
            self.shared.parts.store.put_instance(&record)?;
        }
        Ok(())
    }

    /// Launches a recorded instance (first launch, or again after a
    /// restart found it not running).
    fn start(&mut self, mut record: InstanceRecord, service: Option<&file::ServiceFile>) {
        let shared = Arc::clone(&self.shared);
        let parts = &shared.parts;
        let Some(Ok(program)) = service.map(program_of) else {
            // Its service left the configuration: it is not wanted.
            record.phase = Phase::Stopping;
            let _ = parts.store.put_instance(&record);
            return;
        };
        let Some(launcher) = launcher_of(parts, &record.launcher) else {
            return;
        };
        let spec = LaunchSpec {
            instance: record.name.clone(),
            service: record.service.clone(),
            vf: record.vf.clone(),
            vf_kind: parts
                .pool
                .kind_of(&record.vf)
                .unwrap_or(crate::vf::VfKind::Netdev),
            program,
        };
        write_owner(&parts.run_dir, &record.name, launcher.kind(), &record.vf);
        match launcher.launch(&spec) {
            Ok(handle) => {
                crash_point("launched");
                let pid = handle.pid;
                record.handle = Some(handle);
                record.launches += 1;
                record.since_ms = now_ms();
                if let Err(e) = parts.store.put_instance(&record) {
                    tracing::error!(error = %e, "launched but not recorded; the next pass adopts it");
                }
                self.shared.event(
                    "instance_launched",
                    &record.service,
                    &record.name,
                    format!("{} pid {pid} on VF {}", launcher.kind(), record.vf.port),
                );
            }
            Err(e) => {
                bump(
                    &self.shared.counters.provisioning_failures,
                    &record.service,
                    e.step,
                );
                let _ = self.fail(record, format!("launch failed: {e}"));
            }
        }
    }

    fn scale(&mut self, desired: Option<&GatewayFile>) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let parts = &shared.parts;
        let records = parts.store.instances()?;
        let targets = parts.store.targets()?;
        let wanted: BTreeSet<&str> = desired
            .map(|g| g.services.iter().map(|s| s.name.as_str()).collect())
            .unwrap_or_default();
        // Instances of services no longer configured are drained.
        for r in records
            .values()
            .filter(|r| !wanted.contains(r.service.as_str()))
        {
            if matches!(r.phase, Phase::Active | Phase::Starting) {
                self.retire(r.clone(), "its service left the configuration".into())?;
            }
        }
        let Some(gateway) = desired else {
            return Ok(());
        };
        // Instances other hosts asked this one for (it had a free VF).
        if let Some(c) = &parts.cluster {
            for (service, count) in c.asked(&c.inventory.watch().borrow()) {
                let now_target = targets.get(&service).copied().unwrap_or_default();
                if count > now_target {
                    parts.store.set_target(&service, count)?;
                    self.shared.event(
                        "scale_out",
                        &service,
                        "",
                        format!("another host asked for an instance here: target {count}"),
                    );
                }
                c.answered(&service, &parts.runtime);
            }
        }
        let targets = parts.store.targets()?;
        for service in &gateway.services {
            let target = targets
                .get(&service.name)
                .copied()
                .unwrap_or(u64::from(service.scaling.min));
            let mut live: Vec<&InstanceRecord> = records
                .values()
                .filter(|r| {
                    r.service == service.name && matches!(r.phase, Phase::Starting | Phase::Active)
                })
                .collect();
            let count = live.len() as u64;
            if count < target {
                if self
                    .retry_at
                    .get(&service.name)
                    .is_some_and(|t| Instant::now() < *t)
                {
                    continue;
                }
                self.launch_new(service);
            } else if count > target {
                // The one with the fewest sessions goes (the fewest cut at
                // the drain timeout), the newest of those; a starting one
                // (no sessions, not on the DPU) first of all.
                let state = parts.dpu.state().borrow().clone();
                let sessions = |name: &str| {
                    state
                        .telemetry
                        .as_ref()
                        .and_then(|t| t.instances.iter().find(|l| l.instance == name))
                        .map_or(0, |l| l.sessions)
                };
                live.sort_by_key(|r| {
                    (
                        r.phase == Phase::Active,
                        sessions(&r.name),
                        std::cmp::Reverse(r.since_ms),
                        std::cmp::Reverse(r.name.clone()),
                    )
                });
                let r = (*live.first().expect("count > 0")).clone();
                self.retire(r, format!("{count} instances, target {target}"))?;
            }
        }
        Ok(())
    }

    /// Waits longer before the next try for `service` after each failure
    /// in a row.
    fn back_off(&mut self, service: &str) {
        let opts = self.shared.parts.options;
        let n = self
            .failures_in_a_row
            .entry(service.to_owned())
            .or_default();
        // The first failure is retried at once (a killed instance is
        // replaced without delay); failures in a row wait 1, 2, 4, ... s.
        let wait = if *n == 0 {
            Duration::ZERO
        } else {
            opts.retry_after
                .saturating_mul(1 << (*n - 1).min(16))
                .min(opts.retry_max)
        };
        *n += 1;
        self.retry_at
            .insert(service.to_owned(), Instant::now() + wait);
        tracing::info!(service, ?wait, failures = *n, "backing off");
    }

    /// Takes an instance out of service: an active one drains, one still
    /// starting (not on the DPU) stops at once.
    fn retire(&self, mut r: InstanceRecord, why: String) -> Result<(), StoreError> {
        r.phase = if r.phase == Phase::Active {
            Phase::Draining
        } else {
            Phase::Stopping
        };
        r.since_ms = now_ms();
        self.shared.parts.store.put_instance(&r)?;
        self.shared.event("drain_started", &r.service, &r.name, why);
        Ok(())
    }

    fn launch_new(&mut self, service: &file::ServiceFile) {
        let shared = Arc::clone(&self.shared);
        let parts = &shared.parts;
        let Ok(program) = program_of(service) else {
            return;
        };
        let kind = if matches!(program, Program::Vm(_)) {
            "qemu"
        } else {
            "process"
        };
        let Some(launcher) = launcher_of(parts, kind) else {
            return;
        };
        // Read now, not from the pass's snapshot: an instance launched
        // earlier in this pass holds its VF already.
        let records = match parts.store.instances() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the instances");
                return;
            }
        };
        let used: BTreeSet<&VfRef> = records.values().map(|r| &r.vf).collect();
        let Some(vf) = parts.pool.free(launcher.vf_kinds(), &used) else {
            self.say_once(
                &service.name,
                "no_free_vf",
                "no free VF for a new instance".into(),
            );
            return;
        };
        if let Err(e) = parts.pool.prepare(&vf) {
            bump(
                &self.shared.counters.provisioning_failures,
                &service.name,
                "vf",
            );
            self.back_off(&service.name);
            // The VF goes back to its own driver (and stays in the pool):
            // a half-done binding must not outlive the attempt.
            let back = match parts.pool.release(&vf.vf) {
                Ok(()) => "VF given back".to_owned(),
                Err(r) => format!("and giving the VF back failed: {r}"),
            };
            self.shared.event(
                "provisioning_failed",
                &service.name,
                "",
                format!("{e}; {back}"),
            );
            return;
        }
        self.said.remove(&service.name);
        // In a cluster the number comes from etcd: unique across hosts.
        let number = match &parts.cluster {
            None => 0,
            Some(c) => match c.next_number(&service.name, &parts.runtime) {
                Ok(n) => n,
                Err(e) => {
                    self.back_off(&service.name);
                    self.say_once(
                        &service.name,
                        "no_instance_number",
                        format!("cannot number a new instance: {e}"),
                    );
                    return;
                }
            },
        };
        match parts
            .store
            .new_instance_from(&service.name, number, vf.vf, kind, now_ms())
        {
            Ok(record) => {
                crash_point("recorded");
                self.start(record, Some(service));
            }
            Err(e) => tracing::error!(error = %e, "could not record a new instance"),
        }
    }

    /// An event that is not repeated while the condition lasts.
    fn say_once(&mut self, service: &str, kind: &str, message: String) {
        if self.said.get(service).map(String::as_str) != Some(kind) {
            self.said.insert(service.to_owned(), kind.to_owned());
            self.shared.event(kind, service, "", message);
        }
    }

    /// Pushes the configuration with the active and draining instances
    /// when it differs from what was pushed last.
    fn push(&mut self, gateway: &GatewayFile) -> Result<(), StoreError> {
        let shared = Arc::clone(&self.shared);
        let parts = &shared.parts;
        let records = parts.store.instances()?;
        // In a cluster a stopping instance stays on this DPU (down) until
        // it stops: the other DPUs send it frames until they have taken
        // it out, and this DPU delivers them.
        let clustered = parts.cluster.is_some();
        let on_dpu: Vec<&InstanceRecord> = records
            .values()
            .filter(|r| {
                matches!(r.phase, Phase::Active | Phase::Draining)
                    || (clustered && r.phase == Phase::Stopping)
            })
            .collect();
        let mut g = with_instances(gateway, &on_dpu, &parts.pool);
        if let Some(c) = &parts.cluster {
            let layout = crate::cluster::Cluster::layout(gateway);
            let state = parts.dpu.state().borrow().clone();
            let mine: Vec<&InstanceRecord> = records
                .values()
                .filter(|r| matches!(r.phase, Phase::Starting | Phase::Active | Phase::Draining))
                .collect();
            let used: BTreeSet<&VfRef> = records.values().map(|r| &r.vf).collect();
            let free = parts
                .pool
                .all()
                .iter()
                .filter(|v| !used.contains(&v.vf))
                .count();
            let snapshot = c.inventory.watch().borrow().clone();
            c.merge(&mut g, &snapshot, layout);
            c.publish(
                &g,
                &mine,
                state.telemetry.as_deref(),
                u32::try_from(free).unwrap_or(u32::MAX),
                layout,
            );
        }
        let mut config = g.to_proto(0);
        if self.pushed.as_ref() == Some(&config) {
            return Ok(());
        }
        let generation = parts.store.generation()? + 1;
        parts.store.set_generation(generation)?;
        self.pushed = Some(config.clone());
        config.generation = generation;
        tracing::info!(
            generation,
            instances = on_dpu.len(),
            "configuration for the DPU"
        );
        parts.dpu.set_desired(config);
        Ok(())
    }
}

/// `90%, 85%`: the utilisations of a load.
fn percentages(load: &Load) -> String {
    load.utilisation
        .iter()
        .map(|u| format!("{:.0}%", u * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A test hook: with `CHAINGATE_CRASH_AT=POINT` in its environment the
/// agent aborts at that step, leaving its state as a power cut or a
/// SIGKILL there would. The points: `recorded` (a new instance is
/// recorded, not launched), `launched` (launched, its handle not
/// recorded), `stopping` (marked stopping, not stopped), `stopped`
/// (stopped and its VF released, the record not removed).
fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("CHAINGATE_CRASH_AT").ok())
        .as_deref()
        == Some(point)
    {
        tracing::error!(point, "CHAINGATE_CRASH_AT: aborting");
        std::process::abort();
    }
}

fn launcher_of<'a>(parts: &'a Parts, kind: &str) -> Option<&'a dyn VmLauncher> {
    parts
        .launchers
        .iter()
        .find(|l| l.kind() == kind)
        .map(AsRef::as_ref)
}

/// Which launcher and VF an instance directory belongs to, for stopping an
/// orphan that the store does not know.
fn write_owner(run_dir: &std::path::Path, name: &str, kind: &str, vf: &VfRef) {
    let dir = run_dir.join("instances").join(name);
    let _ = std::fs::create_dir_all(&dir);
    let text = serde_json::json!({ "launcher": kind, "vf": vf }).to_string();
    let _ = std::fs::write(dir.join("owner.json"), text);
}

fn read_owner(run_dir: &std::path::Path, name: &str) -> Option<(String, VfRef)> {
    let text =
        std::fs::read_to_string(run_dir.join("instances").join(name).join("owner.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        v["launcher"].as_str()?.to_owned(),
        serde_json::from_value(v["vf"].clone()).ok()?,
    ))
}
