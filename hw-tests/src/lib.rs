//! The simulated rig: what stands for a DPU's ports, its service instances
//! and the hosts on either side, on one Linux machine.
//!
//! - [`netns`]: running code inside a network namespace.
//! - [`topology`]: a namespace and veth pairs, removed in `Drop` (also when
//!   a test fails), with names no other run uses.
//! - [`endpoint`]: sending and receiving raw frames on an interface.
//! - [`frames`]: the frames tests send.
//! - [`flows`]: the traffic tool: flows sent, checked and answered.
//! - [`reflector`]: a bump-in-the-wire stand-in for a service instance.
//! - [`dpu`]: `dpu-fw` as a child process with a generated configuration.
//! - [`etcd`]: an etcd server as a child process, and a link to it a test
//!   can cut, for the cluster inventory.
//! - [`labrig`]: the description of a real BlueField rig (opt-in tests).
//! - [`rig`]: one face for both, so that a scenario runs on either.
//! - [`two_dpus`]: two `dpu-fw`s joined by an underlay, with instances
//!   behind each (chains across DPUs).
//!
//! Everything here needs root (namespaces, raw sockets). [`require_root`]
//! lets a test step aside for an unprivileged developer, and fails it in
//! CI (`CHAINGATE_REQUIRE_NETNS=1`), where skipping would hide a defect.

pub mod agent;
pub mod dpu;
pub mod endpoint;
pub mod etcd;
pub mod flows;
pub mod frames;
pub mod labrig;
pub mod measure;
pub mod netns;
pub mod reflector;
pub mod rig;
pub mod topology;
pub mod traffic;
pub mod two_dpus;
pub mod two_hosts;
pub mod vm;

/// A binary of this workspace, beside the running test's profile
/// (`target/<profile>/NAME`), built first if it is not there yet.
///
/// # Panics
/// If it cannot be built.
#[must_use]
pub fn workspace_binary(package: &str, name: &str) -> std::path::PathBuf {
    // target/<profile>/deps/<test> (a test or bench), or
    // target/<profile>/<bin> (the demo) -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("the running binary's path");
    let parent = exe.parent().expect("a binary lives in a directory");
    let dir = if parent.ends_with("deps") {
        parent.parent().unwrap_or(parent)
    } else {
        parent
    };
    let bin = dir.join(name);
    if !bin.exists() {
        let mut cargo =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "-q", "-p", package, "--bin", name]);
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("cargo runs");
        assert!(status.success(), "cannot build {name}");
    }
    bin
}

/// Waits (up to 20 s) until `ready()` holds for a process just started,
/// or it exits; `what` and its log make the error.
///
/// # Errors
/// It exited first, or was not ready in time.
pub fn wait_ready(
    child: &mut std::process::Child,
    what: &str,
    log: &std::path::Path,
    mut ready: impl FnMut() -> bool,
) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    while std::time::Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(std::io::Error::other(format!(
                "{what} exited ({status}) before it was ready:\n{}",
                log()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(std::io::Error::other(format!(
        "{what} was not ready within 20 s:\n{}",
        log()
    )))
}

/// True when the rig can run (root). Without root it prints why the test
/// does nothing, or panics when `CHAINGATE_REQUIRE_NETNS` is set.
///
/// # Panics
/// Without root when `CHAINGATE_REQUIRE_NETNS` is set.
#[must_use]
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CHAINGATE_REQUIRE_NETNS").is_none(),
            "this test needs root (network namespaces, raw sockets)"
        );
        eprintln!("skipped: needs root (network namespaces, raw sockets)");
    }
    root
}
