//! etcd as a child process for the cluster tests: a single member on
//! loopback, on ports free when it starts, with its data (a ~62 MB
//! preallocated WAL) in a scratch directory removed when dropped. It can be
//! stopped and started again on the same ports and data, as an outage.
//!
//! [`EtcdLink`] stands between an agent and etcd as a TCP relay a test can
//! cut: a network partition, during which etcd keeps running (and leases
//! expire), unlike [`EtcdServer::stop`].
//!
//! [`require_etcd`] lets a test step aside where etcd is not installed,
//! and fails it in CI (`CHAINGATE_REQUIRE_ETCD=1`).

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The etcd binary: `ETCD_BIN`, else `etcd` on the `PATH` or in
/// `/usr/bin`.
#[must_use]
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(p.into());
    }
    find("etcd")
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// True when etcd and etcdctl are installed. Otherwise it prints why the
/// test does nothing, or panics when `CHAINGATE_REQUIRE_ETCD` is set.
///
/// # Panics
/// etcd missing and `CHAINGATE_REQUIRE_ETCD` set.
#[must_use]
pub fn require_etcd() -> bool {
    let found = binary().is_some_and(|p| p.is_file()) && find("etcdctl").is_some();
    if !found {
        assert!(
            std::env::var_os("CHAINGATE_REQUIRE_ETCD").is_none(),
            "this test needs etcd and etcdctl (Debian: etcd-server, etcd-client)"
        );
        eprintln!("skipped: needs etcd and etcdctl (Debian: etcd-server, etcd-client)");
    }
    found
}

/// A running single-member etcd.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports with a fresh data directory, and
    /// waits (up to 20 s) until it answers.
    ///
    /// # Errors
    /// It is not installed, or exits or stays silent (its log is in the
    /// error).
    pub fn start() -> io::Result<Self> {
        // Both listeners at once, so that the two ports differ.
        let a = TcpListener::bind("127.0.0.1:0")?;
        let b = TcpListener::bind("127.0.0.1:0")?;
        let (client, peer) = (a.local_addr()?.port(), b.local_addr()?.port());
        drop((a, b));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cg-etcd-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut etcd = Self {
            child: None,
            dir,
            client,
            peer,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let bin = binary().ok_or_else(|| io::Error::other("etcd is not installed"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        // Its own process group: a Ctrl-C at the terminal is for the test.
        let child = Command::new(bin)
            .process_group(0)
            .arg("--name=default")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let (addr, log) = (self.addr(), self.log_path());
        let what = format!("etcd (client port {})", self.client);
        let child = self.child.insert(child);
        crate::wait_ready(child, &what, &log, || healthy(addr))
    }

    /// Its client URL, `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Its client address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client))
    }

    /// Kills it (SIGKILL) and reaps it; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Runs `etcdctl ARGS` against it and returns its output.
    ///
    /// # Errors
    /// etcdctl is missing or fails (its stderr is in the error).
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<String> {
        let bin = find("etcdctl").ok_or_else(|| io::Error::other("etcdctl is not installed"))?;
        let out = Command::new(bin)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "etcdctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // The log stays for the failure; the data does not.
            let _ = std::fs::remove_dir_all(self.dir.join("data"));
            eprintln!("etcd's log: {}", self.log_path().display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// etcd answers `GET /health` with `"health":"true"` once it has a leader
/// and serves reads.
fn healthy(addr: SocketAddr) -> bool {
    let ask = || -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    };
    ask().is_ok_and(|r| r.contains("\"health\":\"true\""))
}

/// A TCP relay to etcd that a test can cut, standing for a network
/// partition between one agent and etcd.
#[derive(Debug)]
pub struct EtcdLink {
    addr: SocketAddr,
    state: Arc<LinkState>,
}

#[derive(Debug, Default)]
struct LinkState {
    cut: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every relayed connection, to shut down on a cut.
    streams: Mutex<Vec<TcpStream>>,
}

impl EtcdLink {
    /// Starts relaying from a free loopback port to `upstream`.
    ///
    /// # Errors
    /// No port.
    pub fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(LinkState::default());
        let st = state.clone();
        std::thread::spawn(move || accept(&listener, upstream, &st));
        Ok(Self { addr, state })
    }

    /// Its URL, for the agent: `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Breaks every relayed connection and refuses new ones, until
    /// [`EtcdLink::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        shut_all(&self.state);
    }

    /// Relays again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for EtcdLink {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        shut_all(&self.state);
    }
}

fn shut_all(state: &LinkState) {
    let mut streams = state.streams.lock().unwrap_or_else(|e| e.into_inner());
    for s in streams.drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

fn accept(listener: &TcpListener, upstream: SocketAddr, state: &Arc<LinkState>) {
    while !state.stop.load(Ordering::SeqCst) {
        let down = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => return,
        };
        if state.cut.load(Ordering::SeqCst) {
            // A partition: the connection goes nowhere.
            drop(down);
            continue;
        }
        let Ok(up) = TcpStream::connect(upstream) else {
            continue;
        };
        let _ = down.set_nonblocking(false);
        let ends = [
            down.try_clone(),
            up.try_clone(),
            down.try_clone(),
            up.try_clone(),
        ];
        let [Ok(d1), Ok(u1), Ok(d2), Ok(u2)] = ends else {
            continue;
        };
        state
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([down, up]);
        std::thread::spawn(move || relay(d1, u1));
        std::thread::spawn(move || relay(u2, d2));
    }
}

fn relay(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
