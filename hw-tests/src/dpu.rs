//! `dpu-fw` as a child process: a runtime configuration written for the
//! test's links, a free control port on loopback, its log kept in a file
//! for the failure message, and the process killed when dropped.

#![allow(unsafe_code)]

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chaingate_proto::dpu::dpu_control_client::DpuControlClient;
use tonic::transport::Channel;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The `dpu-fw` binary of this build (`DPU_FW_BIN` overrides), built if
/// it is not there yet.
///
/// # Panics
/// If it cannot be found or built.
#[must_use]
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DPU_FW_BIN") {
        return p.into();
    }
    crate::workspace_binary("dpu-fw", "dpu-fw")
}

/// A running `dpu-fw`.
#[derive(Debug)]
pub struct DpuFw {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    /// Its control API.
    pub addr: SocketAddr,
}

impl DpuFw {
    /// Starts `dpu-fw` with ports given as (name, interface, role) and
    /// `extra` YAML appended to its configuration (`sessions: 1024`), and
    /// waits until its control API answers.
    ///
    /// # Errors
    /// It cannot be started, or exits before it listens (its log is in the
    /// error).
    pub fn start(ports: &[(&str, &str, &str)], extra: &str) -> io::Result<Self> {
        let ports: Vec<(&str, String, &str)> = ports
            .iter()
            .map(|(name, ifname, role)| (*name, format!("afpacket:{ifname}"), *role))
            .collect();
        Self::start_with_io(&ports, extra)
    }

    /// As [`DpuFw::start`], with each port's I/O spelt out
    /// (`dpdk:net_af_packet0`).
    ///
    /// # Errors
    /// As [`DpuFw::start`].
    pub fn start_with_io(ports: &[(&str, String, &str)], extra: &str) -> io::Result<Self> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("cg-dpu-{}-{n}", std::process::id()));
        let config = base.with_extension("yaml");
        let log = base.with_extension("log");
        let mut text = String::from("ports:\n");
        for (name, io, role) in ports {
            let _ = writeln!(text, "  - {{ name: {name}, io: \"{io}\", role: {role} }}");
        }
        let _ = writeln!(text, "control: {{ listen: \"{addr}\" }}");
        if !extra.contains("telemetry") {
            text.push_str("telemetry: { period: 50ms }\n");
        }
        text.push_str(extra);
        std::fs::write(&config, text)?;
        let mut dpu = Self {
            child: None,
            config,
            log,
            addr,
        };
        dpu.spawn()?;
        Ok(dpu)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // Its own process group: a Ctrl-C at the terminal is for the test
        // or demo, which stops this in its own time.
        let child = Command::new(binary())
            .process_group(0)
            .arg("run")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let addr = self.addr;
        let child = self.child.insert(child);
        crate::wait_ready(
            child,
            &format!("dpu-fw (control on {addr})"),
            &self.log,
            || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        )
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same configuration and address.
    ///
    /// # Errors
    /// As [`DpuFw::start`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Sends SIGTERM and waits up to `within` for it to exit.
    ///
    /// # Errors
    /// It did not exit in time (it is then killed).
    pub fn terminate(&mut self, within: Duration) -> io::Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            return Err(io::Error::other("not running"));
        };
        let pid = i32::try_from(c.id()).unwrap_or(0);
        // SAFETY: kill(2) on our own child's pid; it is not yet reaped, so
        // the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(io::Error::other("dpu-fw did not stop on SIGTERM"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The DPU's counters.
    ///
    /// # Panics
    /// No answer.
    #[must_use]
    pub fn stats(&self) -> chaingate_proto::dpu::Stats {
        stats_at(&self.addr.to_string())
    }

    /// A control API client.
    ///
    /// # Errors
    /// No connection.
    pub async fn client(&self) -> Result<DpuControlClient<Channel>, dpu_fw::ctl::CtlError> {
        dpu_fw::ctl::connect(&self.addr.to_string()).await
    }
}

impl Drop for DpuFw {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The counters of the dpu-fw whose control API is at `addr`, for a test
/// without a runtime of its own.
///
/// # Panics
/// No answer.
#[must_use]
pub fn stats_at(addr: &str) -> chaingate_proto::dpu::Stats {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        dpu_fw::ctl::connect(addr)
            .await
            .expect("dpu-fw's control API")
            .get_stats(chaingate_proto::dpu::GetStatsRequest {})
            .await
            .expect("stats")
            .into_inner()
    })
}
