//! Launching service instances: [`VmLauncher`] and its two
//! implementations.
//!
//! - [`QemuLauncher`]: a VM from the service image (kernel + initramfs),
//!   KVM where it works and TCG otherwise, the VF passed through
//!   (`vfio-pci,host=BDF`, its `/dev/vfio/N` handed to the VM's user) or a
//!   tap device standing for it (passed open); QEMU unprivileged
//!   (`vm_user`) under its seccomp sandbox; the console captured to a
//!   file, QMP for its run state, devices and stop (the power button, then
//!   `quit`, then signals), the probe on the VM's second serial port.
//! - [`ProcessLauncher`]: the service function as a process in its own
//!   network namespace (`cg-HASH-INSTANCE`) with its VF (a veth end) moved
//!   there: fast tests and the demo.
//!
//! Each instance has a directory `RUN_DIR/instances/NAME/` (logs, sockets).
//! Every process a launcher starts carries `CHAINGATE_RUN_DIR` and
//! `CHAINGATE_INSTANCE` in its environment; [`scan`] finds them again by
//! these after the agent restarts, so an instance is adopted rather than
//! launched twice, and one the store does not know is found as an orphan.
//! Processes start in their own process group, so they outlive an agent
//! that is killed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::qemu::{self, Guest, Nic, VmUser};
use crate::qmp::{PciDevice, Qmp, RunState};
use crate::vf::{VfKind, VfRef};

/// What identifies a running instance to its launcher.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Handle {
    /// The process (QEMU, or the service function).
    pub pid: u32,
    /// The process's start time (clock ticks after boot), so a recycled
    /// pid is never taken for the instance.
    pub start_ticks: u64,
}

/// What an instance runs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Program {
    /// A command, run in the instance's network namespace.
    Process(Vec<String>),
    /// A VM.
    Vm(VmImage),
}

/// A service VM image.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs (`chaingate-agent image` makes one).
    pub initrd: PathBuf,
    /// Memory, MiB (default 256).
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// vCPUs (default 1).
    #[serde(default = "default_cpus")]
    pub cpus: u32,
}

fn default_memory() -> u32 {
    256
}
fn default_cpus() -> u32 {
    1
}

/// One instance to launch.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    /// The instance's name.
    pub instance: String,
    /// Its service.
    pub service: String,
    /// Its VF.
    pub vf: VfRef,
    /// How the host sees the VF.
    pub vf_kind: VfKind,
    /// What it runs.
    pub program: Program,
}

/// A launch or stop that failed.
#[derive(Debug, thiserror::Error)]
#[error("{instance}: {step}: {cause}")]
pub struct LaunchError {
    /// The instance.
    pub instance: String,
    /// The step (`netns`, `spawn`, `stop`, ...).
    pub step: &'static str,
    /// Why.
    pub cause: String,
}

fn fail(instance: &str, step: &'static str, cause: impl std::fmt::Display) -> LaunchError {
    LaunchError {
        instance: instance.to_owned(),
        step,
        cause: cause.to_string(),
    }
}

/// Starts, finds, probes and stops instances of one kind.
pub trait VmLauncher: Send + Sync + std::fmt::Debug {
    /// `qemu` or `process`.
    fn kind(&self) -> &'static str;

    /// The VF kinds it can attach.
    fn vf_kinds(&self) -> &'static [VfKind];

    /// Starts an instance; returns once the process runs (not once it is
    /// healthy: see [`Self::probe`]).
    ///
    /// # Errors
    /// [`LaunchError`]; whatever the launch took is given back.
    fn launch(&self, spec: &LaunchSpec) -> Result<Handle, LaunchError>;

    /// Whether the instance still runs (reaps it when it does not).
    fn alive(&self, instance: &str, handle: &Handle) -> bool;

    /// Asks the instance's health probe; the answer line on success.
    ///
    /// # Errors
    /// No answer within `timeout`, or a bad one.
    fn probe(&self, instance: &str, timeout: Duration) -> Result<String, String>;

    /// Stops the instance (politely, with `timeout` to comply, then less
    /// so, each step with a deadline) and removes what the launch made.
    /// Stopping an instance that is not running only cleans up.
    ///
    /// # Errors
    /// [`LaunchError`].
    fn stop(&self, instance: &str, vf: &VfRef, timeout: Duration) -> Result<Stopped, LaunchError>;
}

/// How an instance stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stopped {
    /// It was not running.
    NotRunning,
    /// It did as asked (SIGTERM; a VM: its power button).
    Politely,
    /// It did not within the deadline: QEMU's `quit`.
    Quit,
    /// Nothing else worked: SIGKILL.
    Killed,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotRunning => "was not running",
            Self::Politely => "stopped when asked",
            Self::Quit => "did not stop when asked: QEMU quit",
            Self::Killed => "did not stop when asked: killed",
        })
    }
}

/// The instances running under `run_dir` (by the environment of every
/// process of the host), by name.
#[must_use]
pub fn scan(run_dir: &Path) -> BTreeMap<String, Handle> {
    let want_dir = format!("CHAINGATE_RUN_DIR={}", run_dir.display());
    let mut found = BTreeMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let mut dir_matches = false;
        let mut instance = None;
        for var in environ.split(|b| *b == 0) {
            if var == want_dir.as_bytes() {
                dir_matches = true;
            } else if let Some(name) = var.strip_prefix(b"CHAINGATE_INSTANCE=") {
                instance = Some(String::from_utf8_lossy(name).into_owned());
            }
        }
        if let (true, Some(name)) = (dir_matches, instance)
            && let Some(handle) = proc_handle(pid)
        {
            // The oldest process of an instance is the one launched.
            let keep = found
                .get(&name)
                .is_none_or(|h: &Handle| h.start_ticks > handle.start_ticks);
            if keep {
                found.insert(name, handle);
            }
        }
    }
    found
}

/// The handle of a live (not zombie) process.
fn proc_handle(pid: u32) -> Option<Handle> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the
    // last ')'. Field 3 is the state, field 22 the start time.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if matches!(fields.first(), Some(&"Z" | &"X")) {
        return None;
    }
    Some(Handle {
        pid,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn is_running(handle: &Handle) -> bool {
    proc_handle(handle.pid).is_some_and(|h| h.start_ticks == handle.start_ticks)
}

/// Asks a probe served on a Unix socket.
///
/// # Errors
/// No socket, no answer in time, or not `ok`.
pub fn probe_socket(path: &Path, timeout: Duration) -> Result<String, String> {
    let answer = ask_socket(path, "probe", timeout)?;
    if answer.starts_with("ok ") {
        Ok(answer)
    } else {
        Err(answer)
    }
}

/// Sends `request` (one line) to a service's probe socket and returns its
/// answer: one line, or a first line `WORD N ...` that announces N more
/// (the monitor's `flows`). Lines left on a serial line by an earlier,
/// abandoned exchange are skipped.
///
/// # Errors
/// No connection, or no answer within `timeout`.
pub fn ask_socket(path: &Path, request: &str, timeout: Duration) -> Result<String, String> {
    let stream = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    (&stream)
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| format!("{request}: {e}"))?;
    let word = request.split_whitespace().next().unwrap_or_default();
    let mut lines = BufReader::new(&stream).lines();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let line = match lines.next() {
            None => return Err("the service closed without answering".to_owned()),
            Some(Err(e)) => return Err(format!("no answer within {timeout:?}: {e}")),
            Some(Ok(l)) => l,
        };
        let mut tokens = line.split_whitespace();
        let first = tokens.next().unwrap_or_default();
        let answers = (word == "probe" && matches!(first, "ok" | "down"))
            || first == "error"
            || first == word;
        if !answers {
            continue;
        }
        let more: usize = if first == word {
            tokens.next().and_then(|n| n.parse().ok()).unwrap_or(0)
        } else {
            0
        };
        let mut answer = line;
        for _ in 0..more {
            match lines.next() {
                Some(Ok(l)) => {
                    answer.push('\n');
                    answer.push_str(&l);
                }
                _ => return Err(format!("the answer to `{request}` was cut short")),
            }
        }
        return Ok(answer);
    }
    Err(format!("no answer within {timeout:?}"))
}

/// The probe socket of `instance` under `run_dir` (both launchers serve
/// it there: the process's own listener, or QEMU's end of the VM's
/// second serial port).
#[must_use]
pub fn probe_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join("instances").join(instance).join("probe.sock")
}

/// What the two launchers share: the run directory and their own children.
#[derive(Debug)]
struct Base {
    run_dir: PathBuf,
    children: Mutex<HashMap<String, Child>>,
}

impl Base {
    fn new(run_dir: &Path) -> Self {
        Self {
            run_dir: run_dir.to_owned(),
            children: Mutex::default(),
        }
    }

    fn dir(&self, instance: &str) -> PathBuf {
        self.run_dir.join("instances").join(instance)
    }

    fn make_dir(&self, instance: &str) -> Result<PathBuf, LaunchError> {
        let dir = self.dir(instance);
        fs::create_dir_all(&dir)
            .map_err(|e| fail(instance, "run directory", format!("{}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Spawns `command` with its output to `log`.
    fn spawn(
        &self,
        instance: &str,
        mut command: Command,
        log: &Path,
    ) -> Result<Handle, LaunchError> {
        let out = fs::File::create(log)
            .map_err(|e| fail(instance, "log", format!("{}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| fail(instance, "log", e))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        self.mark(instance, &mut command);
        let child = command
            .spawn()
            .map_err(|e| fail(instance, "spawn", format!("{command:?}: {e}")))?;
        self.adopt(instance, child, log)
    }

    /// What every instance's process carries: the marks [`scan`] finds it
    /// by, and its own process group.
    fn mark(&self, instance: &str, command: &mut Command) {
        command
            .env("CHAINGATE_RUN_DIR", &self.run_dir)
            .env("CHAINGATE_INSTANCE", instance)
            .process_group(0);
    }

    /// Takes a just spawned child as the instance's process, once it shows
    /// its marks; one that exited at once is an error quoting the end of
    /// `log`.
    fn adopt(&self, instance: &str, mut child: Child, log: &Path) -> Result<Handle, LaunchError> {
        // Until the new program has set up its stack, /proc shows no
        // environment; wait for it, so that from here on `scan` finds the
        // instance (a crash right after this returns loses nothing).
        let tag = format!("CHAINGATE_INSTANCE={instance}");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && child.try_wait().is_ok_and(|s| s.is_none()) {
            let environ = fs::read(format!("/proc/{}/environ", child.id())).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|v| v == tag.as_bytes()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(handle) = proc_handle(child.id()) else {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(fail(
                instance,
                "spawn",
                format!("exited at once ({status}): {}", tail(log, 3)),
            ));
        };
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(instance.to_owned(), child);
        Ok(handle)
    }

    fn alive(&self, instance: &str, handle: &Handle) -> bool {
        let mut children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(child) = children.get_mut(instance)
            && child.id() == handle.pid
        {
            return match child.try_wait() {
                Ok(None) => true,
                _ => {
                    children.remove(instance);
                    false
                }
            };
        }
        is_running(handle)
    }

    /// SIGTERM to the process group, then SIGKILL after `timeout`.
    fn terminate(&self, instance: &str, timeout: Duration) -> Stopped {
        let handle = {
            let mut children = self
                .children
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            children.remove(instance)
        };
        let target = handle
            .as_ref()
            .and_then(|c| proc_handle(c.id()))
            .or_else(|| scan(&self.run_dir).remove(instance));
        let mut child = handle;
        let Some(target) = target else {
            if let Some(c) = child.as_mut() {
                let _ = c.wait();
            }
            return Stopped::NotRunning;
        };
        let group = rustix::process::Pid::from_raw(target.pid.cast_signed());
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        }
        let gone = |child: &mut Option<Child>| match child {
            Some(c) => c.try_wait().map(|s| s.is_some()).unwrap_or(true),
            None => !is_running(&target),
        };
        let deadline = Instant::now() + timeout;
        while !gone(&mut child) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if gone(&mut child) {
            return Stopped::Politely;
        }
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        if let Some(c) = child.as_mut() {
            let _ = c.wait();
        } else {
            while !gone(&mut child) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Stopped::Killed
    }

    /// The instance's process, if it runs: the agent's own child, or found
    /// by [`scan`].
    fn running(&self, instance: &str) -> Option<Handle> {
        let own = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(instance)
            .and_then(|c| proc_handle(c.id()));
        own.or_else(|| scan(&self.run_dir).remove(instance))
    }

    /// Waits until the instance's process is gone, at most `timeout`.
    fn wait_gone(&self, instance: &str, handle: &Handle, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.alive(instance, handle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last `lines` lines of a log, on one line.
fn tail(log: &Path, lines: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let last: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = last.len().saturating_sub(lines);
    if last.is_empty() {
        format!("nothing in {}", log.display())
    } else {
        last[from..].join(" | ")
    }
}

/// Runs `ip` with `args`; its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The service function as a process in its own network namespace.
#[derive(Debug)]
pub struct ProcessLauncher {
    base: Base,
}

impl ProcessLauncher {
    /// A launcher keeping its files under `run_dir`.
    #[must_use]
    pub fn new(run_dir: &Path) -> Self {
        Self {
            base: Base::new(run_dir),
        }
    }

    /// The instance's network namespace: `cg-RUNDIR-INSTANCE`, where
    /// RUNDIR is a short hash of the run directory, so that two agents on
    /// one host (two test rigs) never share a name.
    #[must_use]
    pub fn netns(&self, instance: &str) -> String {
        let h = self
            .base
            .run_dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
            });
        format!("cg-{h:08x}-{instance}")
    }

    fn probe_path(&self, instance: &str) -> PathBuf {
        self.base.dir(instance).join("probe.sock")
    }
}

impl VmLauncher for ProcessLauncher {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn vf_kinds(&self) -> &'static [VfKind] {
        &[VfKind::Netdev]
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<Handle, LaunchError> {
        let name = spec.instance.as_str();
        let Program::Process(command) = &spec.program else {
            return Err(fail(
                name,
                "spawn",
                "the process launcher runs commands, not VM images",
            ));
        };
        let Some((program, args)) = command.split_first() else {
            return Err(fail(name, "spawn", "empty command"));
        };
        let dir = self.base.make_dir(name)?;
        let ns = self.netns(name);
        let dev = spec.vf.device.as_str();
        if !Path::new("/run/netns").join(&ns).exists() {
            ip(&["netns", "add", &ns]).map_err(|e| fail(name, "netns", e))?;
        }
        // After a crash the VF may already be there.
        if ip(&["-n", &ns, "link", "show", dev]).is_err() {
            ip(&["link", "set", dev, "netns", &ns]).map_err(|e| fail(name, "netns", e))?;
        }
        ip(&["-n", &ns, "link", "set", "lo", "up"]).map_err(|e| fail(name, "netns", e))?;
        // The service is a bump in the wire: the namespace's own kernel
        // must not talk on the VF (IPv6 autoconfiguration would send
        // router solicitations and MLD reports, which the DPU drops as
        // frames on no segment). Best effort: a kernel without IPv6 has
        // nothing to turn off.
        if let Err(e) = quiet_ipv6(&ns, dev) {
            tracing::debug!(instance = name, error = %e, "IPv6 left on");
        }
        ip(&["-n", &ns, "link", "set", dev, "up"]).map_err(|e| fail(name, "netns", e))?;
        let probe = self.probe_path(name);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, program])
            .args(args)
            .env("CHAINGATE_VF", dev)
            .env("CHAINGATE_PROBE", format!("unix:{}", probe.display()));
        self.base.spawn(name, cmd, &dir.join("log"))
    }

    fn alive(&self, instance: &str, handle: &Handle) -> bool {
        self.base.alive(instance, handle)
    }

    fn probe(&self, instance: &str, timeout: Duration) -> Result<String, String> {
        probe_socket(&self.probe_path(instance), timeout)
    }

    fn stop(&self, instance: &str, vf: &VfRef, timeout: Duration) -> Result<Stopped, LaunchError> {
        let stopped = self.base.terminate(instance, timeout);
        let ns = self.netns(instance);
        if Path::new("/run/netns").join(&ns).exists() {
            // Give the VF back to the agent's namespace before the
            // namespace goes: a veth left in it would be destroyed.
            if ip(&["-n", &ns, "link", "show", &vf.device]).is_ok() {
                let me = std::process::id().to_string();
                ip(&["-n", &ns, "link", "set", &vf.device, "netns", &me])
                    .map_err(|e| fail(instance, "stop", e))?;
            }
            ip(&["netns", "del", &ns]).map_err(|e| fail(instance, "stop", e))?;
        }
        let _ = fs::remove_dir_all(self.base.dir(instance));
        Ok(stopped)
    }
}

/// Turns IPv6 off on `dev` in the network namespace `ns`: a thread of this
/// process enters the namespace and writes the sysctl (which resolves in
/// the writer's namespace), no shell and no helper program.
fn quiet_ipv6(ns: &str, dev: &str) -> Result<(), String> {
    if dev.contains('/') || dev.starts_with('.') {
        return Err(format!("`{dev}` is not an interface name"));
    }
    let ns_file = fs::File::open(Path::new("/run/netns").join(ns)).map_err(|e| e.to_string())?;
    let dev = dev.to_owned();
    std::thread::spawn(move || -> Result<(), String> {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns_file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("setns: {e}"))?;
        fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1")
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_owned())?
}

/// Service VMs under QEMU.
#[derive(Debug)]
pub struct QemuLauncher {
    base: Base,
    user: String,
}

/// The user QEMU runs as unless the configuration says otherwise.
pub const DEFAULT_VM_USER: &str = "chaingate-vm";

impl QemuLauncher {
    /// A launcher keeping its files under `run_dir`, running QEMU as
    /// [`DEFAULT_VM_USER`].
    #[must_use]
    pub fn new(run_dir: &Path) -> Self {
        Self {
            base: Base::new(run_dir),
            user: DEFAULT_VM_USER.to_owned(),
        }
    }

    /// Runs QEMU as `user` (a name, or `UID:GID`), looked up at each
    /// launch. `root` is allowed and warned about at every launch.
    #[must_use]
    pub fn with_user(mut self, user: &str) -> Self {
        user.clone_into(&mut self.user);
        self
    }

    /// A locally administered MAC for the instance's virtio NIC.
    #[must_use]
    pub fn mac(instance: &str) -> String {
        // FNV-1a: stable across runs and hosts.
        let h = instance.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let b = h.to_be_bytes();
        format!("02:c6:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
    }

    /// A QMP connection to the instance's VM.
    ///
    /// # Errors
    /// No VM, or it does not answer within two seconds.
    pub fn qmp(&self, instance: &str) -> Result<Qmp, String> {
        Qmp::connect(
            &self.base.dir(instance).join("qmp.sock"),
            Duration::from_secs(2),
        )
    }

    /// The VM's run state (QMP `query-status`).
    ///
    /// # Errors
    /// As [`Self::qmp`].
    pub fn run_state(&self, instance: &str) -> Result<RunState, String> {
        self.qmp(instance)?.status()
    }

    /// The VM's PCI devices (QMP `query-pci`): its VF is `vf0`.
    ///
    /// # Errors
    /// As [`Self::qmp`].
    pub fn devices(&self, instance: &str) -> Result<Vec<PciDevice>, String> {
        self.qmp(instance)?.pci_devices()
    }
}

/// The IOMMU group node of a PCI device (`/dev/vfio/N`).
fn vfio_node(bdf: &str) -> Result<PathBuf, String> {
    let link = Path::new("/sys/bus/pci/devices")
        .join(bdf)
        .join("iommu_group");
    let group = fs::read_link(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    let n = group
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: no group", link.display()))?;
    Ok(Path::new("/dev/vfio").join(n))
}

/// Raises this process's locked-memory limit to at least `bytes` (both
/// limits): a VM with a VF pins all its memory for DMA, and QEMU (a child,
/// unprivileged) inherits the limit.
fn ensure_memlock(bytes: u64) -> Result<(), String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Memlock);
    let enough = |l: Option<u64>| l.is_none_or(|l| l >= bytes);
    if enough(now.current) && enough(now.maximum) {
        return Ok(());
    }
    let raise = |l: Option<u64>| if enough(l) { l } else { Some(bytes) };
    setrlimit(
        Resource::Memlock,
        Rlimit {
            current: raise(now.current),
            maximum: raise(now.maximum),
        },
    )
    .map_err(|e| format!("RLIMIT_MEMLOCK to {bytes} bytes: {e}"))
}

impl VmLauncher for QemuLauncher {
    fn kind(&self) -> &'static str {
        "qemu"
    }

    fn vf_kinds(&self) -> &'static [VfKind] {
        &[VfKind::Pci, VfKind::Tap]
    }

    fn launch(&self, spec: &LaunchSpec) -> Result<Handle, LaunchError> {
        let name = spec.instance.as_str();
        let Program::Vm(image) = &spec.program else {
            return Err(fail(
                name,
                "spawn",
                "the qemu launcher runs VM images, not commands",
            ));
        };
        let user = VmUser::lookup(&self.user).map_err(|e| fail(name, "user", e))?;
        if user.uid == 0 {
            tracing::warn!(
                instance = name,
                "QEMU runs as root (vm_user: {})",
                self.user
            );
        }
        let dir = self.base.make_dir(name)?;
        let mut guest = Guest::new(&image.kernel, &image.initrd, &dir.join("console.log"));
        guest.memory_mib = image.memory_mib;
        guest.cpus = image.cpus;
        guest.append = format!("chaingate.instance={name}");
        guest.probe_socket = Some(dir.join("probe.sock"));
        guest.qmp_socket = Some(dir.join("qmp.sock"));
        guest.user = Some(user.clone());
        match spec.vf_kind {
            VfKind::Pci => {
                // QEMU opens the group itself: it becomes the user's for as
                // long as the VM runs (`stop` gives it back to root).
                let node = vfio_node(&spec.vf.device).map_err(|e| fail(name, "vfio", e))?;
                rustix::fs::chown(
                    &node,
                    Some(rustix::fs::Uid::from_raw(user.uid)),
                    Some(rustix::fs::Gid::from_raw(user.gid)),
                )
                .map_err(|e| fail(name, "vfio", format!("{}: {e}", node.display())))?;
                ensure_memlock((u64::from(image.memory_mib) + 1024) << 20)
                    .map_err(|e| fail(name, "vfio", e))?;
                guest.nics.push(Nic::Vfio(spec.vf.device.clone()));
            }
            VfKind::Tap | VfKind::Netdev => guest.nics.push(Nic::Tap {
                ifname: spec.vf.device.clone(),
                mac: Self::mac(name),
            }),
        }
        let log = dir.join("qemu.log");
        let stderr = fs::File::create(&log)
            .map_err(|e| fail(name, "log", format!("{}: {e}", log.display())))?;
        let mut command = guest.command(stderr).map_err(|e| fail(name, "spawn", e))?;
        self.base.mark(name, &mut command);
        let child = command
            .spawn()
            .map_err(|e| fail(name, "spawn", format!("{}: {e}", qemu::binary().display())))?;
        let handle = self.base.adopt(name, child, &log)?;
        tracing::info!(
            instance = name,
            accel = qemu::accelerator(),
            user = %user.name,
            pid = handle.pid,
            "QEMU started"
        );
        Ok(handle)
    }

    fn alive(&self, instance: &str, handle: &Handle) -> bool {
        if !self.base.alive(instance, handle) {
            return false;
        }
        // A QEMU whose guest panicked or shut down is not a live instance,
        // though its process runs; one that does not answer QMP is judged
        // by its probe.
        match self.run_state(instance) {
            Ok(state) if !state.is_up() => {
                tracing::warn!(instance, state = %state.0, "the VM is not running");
                false
            }
            _ => true,
        }
    }

    fn probe(&self, instance: &str, timeout: Duration) -> Result<String, String> {
        probe_socket(&self.base.dir(instance).join("probe.sock"), timeout)
    }

    fn stop(&self, instance: &str, vf: &VfRef, timeout: Duration) -> Result<Stopped, LaunchError> {
        let stopped = match self.base.running(instance) {
            None => {
                self.base.terminate(instance, Duration::ZERO);
                Stopped::NotRunning
            }
            Some(handle) => {
                // The power button: the guest shuts its service down and
                // powers off (QEMU exits: -no-reboot).
                let pressed = self.qmp(instance).and_then(|mut q| q.powerdown());
                if let Err(e) = &pressed {
                    tracing::info!(instance, error = %e, "no power button; quitting");
                }
                if pressed.is_ok() && self.base.wait_gone(instance, &handle, timeout) {
                    self.base.terminate(instance, Duration::ZERO);
                    Stopped::Politely
                } else {
                    let quit = self.qmp(instance).and_then(|mut q| q.quit());
                    if quit.is_ok()
                        && self
                            .base
                            .wait_gone(instance, &handle, Duration::from_secs(5))
                    {
                        self.base.terminate(instance, Duration::ZERO);
                        Stopped::Quit
                    } else {
                        match self.base.terminate(instance, Duration::from_secs(2)) {
                            Stopped::Politely => Stopped::Quit,
                            other => other,
                        }
                    }
                }
            }
        };
        if let Ok(node) = vfio_node(&vf.device)
            && vf.device.parse::<chaingate_provision::PciAddress>().is_ok()
        {
            let root = (Some(rustix::fs::Uid::ROOT), Some(rustix::fs::Gid::ROOT));
            if let Err(e) = rustix::fs::chown(&node, root.0, root.1) {
                tracing::warn!(instance, node = %node.display(), error = %e, "VFIO group not given back to root");
            }
        }
        let _ = fs::remove_dir_all(self.base.dir(instance));
        Ok(stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_skips_stale_lines_and_reads_announced_ones() {
        use std::io::Read as _;
        let path = std::env::temp_dir().join(format!("cg-ask-{}.sock", std::process::id()));
        let _ = fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for answer in [
                // A serial line with the tail of an abandoned probe first.
                "ok service=monitor instance=m-0 rx=1\nflows 2 untracked=0\nA\nB\n",
                "ok service=monitor instance=m-0 rx=3\n",
                "flows 3 untracked=0\nA\n",
                "down service=monitor instance=m-0 rx=3 link=down\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 16];
                let _ = s.read(&mut req);
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(
            ask_socket(&path, "flows", t).unwrap(),
            "flows 2 untracked=0\nA\nB"
        );
        assert_eq!(
            ask_socket(&path, "probe", t).unwrap(),
            "ok service=monitor instance=m-0 rx=3"
        );
        assert!(
            ask_socket(&path, "flows", t)
                .unwrap_err()
                .contains("cut short")
        );
        // A service whose VF has no link answers, and fails its probe.
        assert_eq!(
            probe_socket(&path, t).unwrap_err(),
            "down service=monitor instance=m-0 rx=3 link=down"
        );
        server.join().unwrap();
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn macs_are_local_unicast_and_stable() {
        let a = QemuLauncher::mac("fw-0");
        assert_eq!(a, QemuLauncher::mac("fw-0"));
        assert_ne!(a, QemuLauncher::mac("fw-1"));
        assert!(a.starts_with("02:"), "{a}");
        assert_eq!(a.len(), 17);
    }

    #[test]
    fn this_process_has_a_handle_and_a_recycled_pid_is_not_it() {
        let me = proc_handle(std::process::id()).unwrap();
        assert!(is_running(&me));
        let other = Handle {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(!is_running(&other));
    }

    #[test]
    fn scan_finds_processes_by_run_dir_and_instance() {
        let run_dir = std::env::temp_dir().join(format!("chaingate-scan-{}", std::process::id()));
        let launcher = ProcessLauncher::new(&run_dir);
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        fs::create_dir_all(&run_dir).unwrap();
        let handle = launcher
            .base
            .spawn("svc-7", cmd, &run_dir.join("log"))
            .unwrap();
        // Found as soon as the launch returned.
        let found = scan(&run_dir);
        assert_eq!(found.get("svc-7"), Some(&handle));
        assert_eq!(found.len(), 1);
        // Another run directory sees nothing of it.
        assert!(scan(&run_dir.join("other")).is_empty());
        assert!(launcher.alive("svc-7", &handle));
        assert_eq!(
            launcher.base.terminate("svc-7", Duration::from_secs(2)),
            Stopped::Politely
        );
        assert!(!launcher.alive("svc-7", &handle));
        assert!(scan(&run_dir).is_empty());
        fs::remove_dir_all(&run_dir).unwrap();
    }
}
