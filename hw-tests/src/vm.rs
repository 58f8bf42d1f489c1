//! What the VM scenarios need: the guest kit (QEMU with igb, busybox, a
//! guest kernel; ci/lib.sh's `ensure_vm_tools`) and static builds of the
//! project's binaries to put in guests.

use std::path::{Path, PathBuf};
use std::process::Command;

use chaingate_agent::image::GuestKit;
use chaingate_agent::qemu;

/// The guest kit, or `None` (with the reason printed) when this machine
/// lacks it. With `CHAINGATE_REQUIRE_VM` set (CI) a missing kit fails the
/// test instead.
///
/// # Panics
/// When the kit is missing and required.
#[must_use]
pub fn require_vm() -> Option<GuestKit> {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipped: the guests are x86_64");
        return None;
    }
    let igb = Command::new(qemu::binary())
        .args(["-device", "help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"igb\""));
    let user = qemu::VmUser::lookup(chaingate_agent::launcher::DEFAULT_VM_USER);
    match (igb, GuestKit::from_env(), user) {
        (true, Ok(kit), Ok(_)) => Some(kit),
        (igb, kit, user) => {
            let why = format!(
                "VM tools missing (QEMU with igb: {igb}; guest kit: {}; VM user: {})",
                kit.err().map_or_else(|| "ok".to_owned(), |e| e.to_string()),
                user.err().unwrap_or_else(|| "ok".to_owned())
            );
            assert!(std::env::var_os("CHAINGATE_REQUIRE_VM").is_none(), "{why}");
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Builds `cargo ARGS` as static, stripped x86_64 binaries (in `target/guest`, so
/// the normal build is untouched) and returns the last executable cargo
/// names.
///
/// # Panics
/// If the build fails.
#[must_use]
pub fn static_build(args: &[&str]) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("hw-tests is in the workspace");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace)
        .args(args)
        .args([
            "--message-format=json",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        // Stripped: a guest unpacks every byte of its initramfs under TCG.
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env("CARGO_TARGET_DIR", workspace.join("target/guest"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "static build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let at = l.find("\"executable\":\"/")? + "\"executable\":\"".len();
            Some(PathBuf::from(&l[at..at + l[at..].find('"')?]))
        })
        .next_back()
        .expect("cargo names the executable")
}

/// `chaingate-service` for guests: static, stripped, release (a debug
/// binary makes the initramfs, and so the boot, several times larger).
///
/// # Panics
/// If the build fails.
#[must_use]
pub fn static_service() -> PathBuf {
    static_build(&[
        "build",
        "--release",
        "-p",
        "chaingate-services",
        "--bin",
        "chaingate-service",
    ])
}
