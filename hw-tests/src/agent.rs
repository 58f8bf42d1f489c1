//! The host agent as a process of the test: `chaingate-agent` with a
//! configuration, state and run directory of its own, driven through the
//! `chaingate` CLI as an operator would.
//!
//! Instances outlive their agent by design; dropping an [`AgentProc`]
//! stops the agent and then every instance of its run directory (moving
//! VFs back, removing namespaces), so nothing is left behind, also when
//! the test fails.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chaingate_agent::launcher::{self, ProcessLauncher, QemuLauncher, VmLauncher};
use chaingate_agent::vf::VfRef;
use serde_json::Value;

use crate::workspace_binary;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The `chaingate-service` binary of this build.
#[must_use]
pub fn service_binary() -> PathBuf {
    workspace_binary("chaingate-services", "chaingate-service")
}

/// A gateway file for the agent: lan, wan, one service `mon` of
/// `capacity` with `scaling` (YAML flow map), run as a
/// `chaingate-service monitor` process, and one chain `web` through it
/// that every connection takes.
#[must_use]
pub fn monitor_gateway(capacity: &str, scaling: &str) -> String {
    format!(
        "ports:
  - {{ name: lan, role: lan }}
  - {{ name: wan, role: wan }}
services:
  - name: mon
    capacity: {capacity}
    scaling: {scaling}
    launch: {{ process: [\"{}\", monitor] }}
chains:
  - {{ name: web, services: [mon] }}
policies:
  - {{ priority: 10, action: {{ chain: web }} }}
",
        service_binary().display()
    )
}

/// The address the web chain's NAT translates to.
pub const NAT_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 1);

/// The stamps of the web chain's services: instance `k` of the firewall
/// stamps `FIREWALL_STAMP + k`, and so on.
pub const FIREWALL_STAMP: u16 = 100;
/// See [`FIREWALL_STAMP`].
pub const IDS_STAMP: u16 = 200;
/// See [`FIREWALL_STAMP`].
pub const NAT_STAMP: u16 = 300;

/// The web chain: firewall (denies telnet) -> ids (drops `EVIL`) -> nat
/// (10.0.0.0/8 leaves as [`NAT_ADDRESS`], 1,000-port blocks per instance),
/// `chaingate-service` processes, taken by every connection from
/// 10.0.0.0/8.
#[derive(Clone, Debug)]
pub struct WebChain {
    /// The firewall's capacity.
    pub firewall_capacity: String,
    /// The firewall's `scaling` (a YAML flow map).
    pub firewall_scaling: String,
    /// The IDS's.
    pub ids_scaling: String,
    /// The NAT's.
    pub nat_scaling: String,
    /// Whether instances stamp the frames they pass.
    pub stamps: bool,
    /// How the agent launches a service (`firewall`, `ids`, `nat`), a
    /// YAML flow map, instead of `chaingate-service` processes: a LabRig's
    /// VM images, which must run the functions with the arguments above.
    pub launch: std::collections::BTreeMap<String, String>,
}

impl Default for WebChain {
    fn default() -> Self {
        Self {
            firewall_capacity: "200Mbit".into(),
            firewall_scaling: "{ min: 1, max: 1 }".into(),
            ids_scaling: "{ min: 1, max: 1 }".into(),
            nat_scaling: "{ min: 1, max: 1 }".into(),
            stamps: true,
            launch: std::collections::BTreeMap::new(),
        }
    }
}

impl WebChain {
    /// The web chain scaling each service from a per-host minimum
    /// `(firewall, ids, nat)` up to 4.
    #[must_use]
    pub fn with_minimums(min: (u16, u16, u16)) -> Self {
        Self {
            firewall_scaling: format!("{{ min: {}, max: 4 }}", min.0),
            ids_scaling: format!("{{ min: {}, max: 4 }}", min.1),
            nat_scaling: format!("{{ min: {}, max: 4 }}", min.2),
            ..Self::default()
        }
    }

    /// The gateway file.
    #[must_use]
    pub fn gateway(&self) -> String {
        let bin = service_binary();
        let bin = bin.display();
        let stamp = |n: u16| {
            if self.stamps {
                format!(", --stamp, \"{n}+\"")
            } else {
                String::new()
            }
        };
        let launch = |service: &str, args: String| {
            self.launch
                .get(service)
                .cloned()
                .unwrap_or_else(|| format!("{{ process: [\"{bin}\", {args}] }}"))
        };
        format!(
            "ports:
  - {{ name: lan, role: lan }}
  - {{ name: wan, role: wan }}
services:
  - name: firewall
    capacity: {}
    scaling: {}
    launch: {}
  - name: ids
    capacity: 200Mbit
    scaling: {}
    launch: {}
  - name: nat
    capacity: 200Mbit
    scaling: {}
    launch: {}
chains:
  - {{ name: web, services: [firewall, ids, nat] }}
policies:
  - {{ priority: 10, match: {{ src: 10.0.0.0/8 }}, action: {{ chain: web }} }}
",
            self.firewall_capacity,
            self.firewall_scaling,
            launch(
                "firewall",
                format!(
                    "firewall, --rule, \"deny tcp port 23\"{}",
                    stamp(FIREWALL_STAMP)
                )
            ),
            self.ids_scaling,
            launch(
                "ids",
                format!("ids, --signature, EVIL, --mode, drop{}", stamp(IDS_STAMP))
            ),
            self.nat_scaling,
            launch(
                "nat",
                format!(
                    "nat, --inside, 10.0.0.0/8, --to, {NAT_ADDRESS}, --ports, 20000-59999, \
                     --port-block, \"1000\"{}",
                    stamp(NAT_STAMP)
                )
            ),
        )
    }
}

/// An agent driven through the `chaingate` CLI, as an operator would: one
/// the test started ([`AgentProc`] derefs to it), or one already running
/// (a LabRig's).
#[derive(Clone, Debug)]
pub struct AgentCli {
    /// The API socket.
    pub socket: PathBuf,
    /// Its log file, for failure messages.
    pub log: Option<PathBuf>,
}

impl AgentCli {
    /// Applies `yaml` with `chaingate apply` and waits up to `within`
    /// until exactly `instances` are active and the DPU has the
    /// configuration.
    ///
    /// # Panics
    /// If it is refused or does not happen.
    pub fn apply_and_wait(&self, yaml: &str, instances: &[&str], within: Duration) -> Value {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let file = std::env::temp_dir().join(format!("cg-gateway-{}-{n}.yaml", std::process::id()));
        std::fs::write(&file, yaml).expect("write the gateway file");
        let out = self.cli_ok(&["apply", "-f", file.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&file);
        assert!(out.starts_with("applied"), "{out}");
        let mut want: Vec<&str> = instances.to_vec();
        want.sort_unstable();
        self.wait_for(&format!("{want:?} on the DPU"), within, |s| {
            instances_in(s, "active") == want && on_dpu(s)
        })
    }

    /// The agent's log, when the test has it.
    #[must_use]
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Runs `chaingate --socket S ARGS...`.
    ///
    /// # Panics
    /// If the CLI cannot run.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(workspace_binary("chaingate-agent", "chaingate"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("chaingate runs")
    }

    /// Runs the CLI and returns its standard output.
    ///
    /// # Panics
    /// If it fails.
    #[must_use]
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "chaingate {args:?} failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `chaingate --json status`.
    ///
    /// # Panics
    /// If it fails.
    #[must_use]
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.cli_ok(&["--json", "status"])).expect("status is JSON")
    }

    /// Waits until `ok` holds for the status, and returns it.
    ///
    /// # Panics
    /// If it does not within `within` (with the last status and the log).
    pub fn wait_for(&self, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.status();
            if ok(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: not within {within:?}\nlast status: {last:#}\nagent log:\n{}",
            self.log()
        );
    }

    /// The `chaingate --json events`, in order.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        self.cli_ok(&["--json", "events"])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// The events' kinds, in order.
    #[must_use]
    pub fn event_kinds(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits for the first event of `kind` for which `also` holds.
    ///
    /// # Panics
    /// If none comes within `within` (with the events and the log).
    pub fn wait_event(&self, kind: &str, within: Duration, also: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e["kind"] == kind && also(e))
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event within {within:?}:\n{:#?}\nagent log:\n{}",
                self.events(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl std::ops::Deref for AgentProc {
    type Target = AgentCli;

    fn deref(&self) -> &AgentCli {
        &self.cli
    }
}

/// A running (or killed) `chaingate-agent`.
#[derive(Debug)]
pub struct AgentProc {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    /// The CLI on its socket.
    pub cli: AgentCli,
    /// The scratch directory (state, sockets, logs).
    pub dir: PathBuf,
    /// The instances' run directory.
    pub run_dir: PathBuf,
    /// The metrics address.
    pub metrics: SocketAddr,
}

impl AgentProc {
    /// Starts an agent talking to the DPU at `dpu`, with `vfs` (YAML flow
    /// list items, `{ port: vf0, netdev: x }`) and `extra` configuration
    /// (its `probe:` and `stop_timeout:` replace the rig's quick ones).
    ///
    /// # Errors
    /// It does not come up (its log is in the error).
    pub fn start(dpu: &str, vfs: &[String], extra: &str) -> io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cg-agent-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let socket = dir.join("agent.sock");
        let run_dir = dir.join("run");
        let mut text = format!(
            "socket: {}\nstate: {}\nrun_dir: {}\ndpu: \"{dpu}\"\nmetrics: \"{metrics}\"\n",
            socket.display(),
            dir.join("state.redb").display(),
            run_dir.display(),
        );
        // The rig's quick defaults, unless `extra` sets them.
        for (key, line) in [
            (
                "probe:",
                "probe: { interval: 200ms, timeout: 1s, start_timeout: 30s, failures: 2 }\n",
            ),
            ("stop_timeout:", "stop_timeout: 3s\n"),
        ] {
            if !extra.lines().any(|l| l.starts_with(key)) {
                text.push_str(line);
            }
        }
        text.push_str("vfs:\n");
        for v in vfs {
            text.push_str(&format!("  - {v}\n"));
        }
        if vfs.is_empty() {
            text = text.replace("vfs:\n", "vfs: []\n");
        }
        text.push_str(extra);
        let config = dir.join("agent.yaml");
        std::fs::write(&config, text)?;
        let mut agent = Self {
            child: None,
            config,
            log: dir.join("agent.log"),
            cli: AgentCli {
                socket,
                log: Some(dir.join("agent.log")),
            },
            dir,
            run_dir,
            metrics,
        };
        agent.spawn(&[])?;
        Ok(agent)
    }

    /// Starts the agent process again (after [`Self::kill`]), with `env`
    /// added (`CHAINGATE_CRASH_AT`), and waits until it serves, or exits.
    ///
    /// # Errors
    /// It exits before serving, or does not serve in time.
    pub fn spawn(&mut self, env: &[(&str, &str)]) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(workspace_binary("chaingate-agent", "chaingate-agent"));
        // Its own process group, as dpu-fw's.
        cmd.process_group(0)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env_remove("CHAINGATE_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = self.child.insert(cmd.spawn()?);
        let socket = self.cli.socket.clone();
        crate::wait_ready(child, "the agent", &self.log, || {
            UnixStream::connect(&socket).is_ok()
        })
    }

    /// SIGKILLs the agent (its instances keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the agent to exit by itself (a crash point).
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops every instance of the run directory (after the agent is gone).
    pub fn stop_instances(&self) {
        let process = ProcessLauncher::new(&self.run_dir);
        let qemu = QemuLauncher::new(&self.run_dir);
        for name in launcher::scan(&self.run_dir).into_keys() {
            let owner = std::fs::read_to_string(
                self.run_dir
                    .join("instances")
                    .join(&name)
                    .join("owner.json"),
            )
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
            let kind = owner
                .as_ref()
                .and_then(|o| o["launcher"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let vf: VfRef = owner
                .and_then(|o| serde_json::from_value(o["vf"].clone()).ok())
                .unwrap_or(VfRef {
                    port: String::new(),
                    device: String::new(),
                });
            let l: &dyn VmLauncher = if kind == "qemu" { &qemu } else { &process };
            let _ = l.stop(&name, &vf, Duration::from_secs(2));
        }
    }
}

/// The instances of a status, by phase (`"active"`).
#[must_use]
pub fn instances_in(status: &Value, phase: &str) -> Vec<String> {
    status["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["phase"] == phase)
                .filter_map(|i| i["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The pid in an instance's status (`handle: "pid N"`).
#[must_use]
pub fn pid_of(status: &Value, instance: &str) -> Option<u32> {
    status["instances"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == instance)?["handle"]
        .as_str()?
        .strip_prefix("pid ")?
        .parse()
        .ok()
}

/// Whether a network device is in this (the root) namespace.
#[must_use]
pub fn device_here(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop_instances();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The gateway on one box: a namespace with the lan and wan hosts,
/// `dpu-fw` on afpacket ports (lan, wan, `vf0`..), and an agent whose VFs
/// are the host ends of those `vf` veths (netdev VFs, process instances).
/// Fields drop in order: the agent (and its instances, giving their VFs
/// back) before `dpu-fw`, both before the namespace and links.
#[derive(Debug)]
pub struct AgentRig {
    /// The agent.
    pub agent: AgentProc,
    /// The DPU runtime.
    pub dpu: crate::dpu::DpuFw,
    /// The lan uplink (`outer` in the namespace: the lan host's side).
    pub lan: crate::topology::Link,
    /// The wan uplink.
    pub wan: crate::topology::Link,
    /// The VFs.
    pub vfs: Vec<crate::topology::Link>,
    /// The namespace and links.
    pub topo: crate::topology::Topology,
}

impl AgentRig {
    /// A rig with `n` VFs.
    ///
    /// # Errors
    /// A part does not come up.
    pub fn start(n: usize) -> io::Result<Self> {
        Self::start_with(n, "")
    }

    /// A rig with `n` VFs and `dpu_extra` added to dpu-fw's configuration
    /// (`offload: { capacity: 40 }`; `sessions: N` replaces the rig's
    /// 65,536).
    ///
    /// # Errors
    /// A part does not come up.
    pub fn start_with(n: usize, dpu_extra: &str) -> io::Result<Self> {
        let mut topo = crate::topology::Topology::new()?;
        let lan = topo.link("lan")?;
        let wan = topo.link("wan")?;
        let vfs = (0..n)
            .map(|i| topo.host_link(&format!("vf{i}")))
            .collect::<io::Result<Vec<_>>>()?;
        let mut ports = vec![
            ("lan".to_owned(), lan.inner.clone(), "lan"),
            ("wan".to_owned(), wan.inner.clone(), "wan"),
        ];
        ports.extend(
            vfs.iter()
                .enumerate()
                .map(|(i, l)| (format!("vf{i}"), l.inner.clone(), "vf")),
        );
        let ports: Vec<(&str, &str, &str)> = ports
            .iter()
            .map(|(p, d, r)| (p.as_str(), d.as_str(), *r))
            .collect();
        let sessions = if dpu_extra.contains("sessions:") {
            ""
        } else {
            "sessions: 65536\n"
        };
        let dpu = crate::dpu::DpuFw::start(&ports, &format!("{sessions}{dpu_extra}"))?;
        let list: Vec<String> = vfs
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{{ port: vf{i}, netdev: {} }}", l.outer))
            .collect();
        let agent = AgentProc::start(&dpu.addr.to_string(), &list, "")?;
        Ok(Self {
            agent,
            dpu,
            lan,
            wan,
            vfs,
            topo,
        })
    }
}

impl AgentRig {
    /// As [`crate::rig::Rig::traffic`], on a thread of its own, while the test
    /// does something else.
    #[must_use]
    pub fn traffic_in_background(
        &self,
        plan: crate::flows::Plan,
    ) -> std::thread::JoinHandle<crate::flows::Outcome> {
        let (netns, lan, wan) = (
            self.topo.netns().to_owned(),
            self.lan.outer.clone(),
            self.wan.outer.clone(),
        );
        std::thread::spawn(move || {
            crate::flows::run(&plan, (&netns, &lan), (&netns, &wan)).expect("the traffic tool")
        })
    }
}

/// The DPU is connected and runs the configuration the agent pushed last.
#[must_use]
pub fn on_dpu(status: &Value) -> bool {
    status["dpu_connected"] == true && status["dpu_generation"] == status["desired_generation"]
}

impl AgentProc {
    /// The agent's metrics, by name with labels (`chaingate_dpu_sessions`,
    /// `chaingate_instances{service="fw",phase="active"}`); empty when it
    /// does not answer.
    #[must_use]
    pub fn scrape(&self) -> std::collections::BTreeMap<String, f64> {
        use std::io::{Read, Write};
        let mut text = String::new();
        if let Ok(mut s) =
            std::net::TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1))
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = s.read_to_string(&mut text);
        }
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            })
            .collect()
    }

    /// Frames an instance's service function has received, from its probe.
    #[must_use]
    pub fn instance_rx(&self, instance: &str) -> u64 {
        let probe = self
            .run_dir
            .join("instances")
            .join(instance)
            .join("probe.sock");
        launcher::probe_socket(&probe, Duration::from_secs(2))
            .unwrap_or_default()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rx="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}
