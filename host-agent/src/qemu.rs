//! QEMU command lines for service VMs and test guests.
//!
//! One place decides the accelerator, the machine and the devices, so the
//! launcher and the tests boot guests the same way. KVM is used where it
//! works; where `/dev/kvm` is missing, or is the nested `kvm_pvm` layer
//! that cannot boot a stock kernel, QEMU runs under TCG.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The accelerator to use on this host: `kvm` or `tcg`.
#[must_use]
pub fn accelerator() -> &'static str {
    let kvm_usable = Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists();
    if kvm_usable { "kvm" } else { "tcg" }
}

/// The QEMU binary: `$CHAINGATE_QEMU`, else `qemu-system-x86_64`.
#[must_use]
pub fn binary() -> PathBuf {
    std::env::var_os("CHAINGATE_QEMU")
        .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from)
}

/// How a guest's network attachment is made.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Nic {
    /// A VF passed through with VFIO (`-device vfio-pci,host=BDF`): real
    /// hosts.
    Vfio(String),
    /// A tap device standing for the VF (virtio-net): the simulated rig.
    Tap {
        /// The tap interface (made by the caller, in the caller's netns).
        ifname: String,
        /// The guest's MAC address.
        mac: String,
    },
}

/// One guest.
#[derive(Clone, Debug)]
pub struct Guest {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Extra kernel command line (the console is set here).
    pub append: String,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// q35 with an emulated Intel IOMMU and an igb NIC with SR-IOV (the
    /// VFIO guest test); otherwise a plain q35.
    pub iommu_with_igb: bool,
    /// Network attachments.
    pub nics: Vec<Nic>,
    /// The first serial port (the console) goes to this file.
    pub console_log: PathBuf,
    /// The second serial port (the service's probe channel) is served on
    /// this Unix socket.
    pub probe_socket: Option<PathBuf>,
    /// The QMP socket.
    pub qmp_socket: Option<PathBuf>,
}

impl Guest {
    /// A guest with the defaults: 256 MiB, one vCPU, no NIC, no sockets.
    #[must_use]
    pub fn new(kernel: &Path, initrd: &Path, console_log: &Path) -> Self {
        Self {
            kernel: kernel.to_owned(),
            initrd: initrd.to_owned(),
            append: String::new(),
            memory_mib: 256,
            cpus: 1,
            iommu_with_igb: false,
            nics: Vec::new(),
            console_log: console_log.to_owned(),
            probe_socket: None,
            qmp_socket: None,
        }
    }

    /// The arguments after the binary.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let accel = accelerator();
        let mut a: Vec<String> = vec!["-M".into(), "q35".into(), "-accel".into(), accel.into()];
        a.extend([
            "-cpu".into(),
            if accel == "kvm" { "host" } else { "max" }.into(),
        ]);
        a.extend([
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
        ]);
        a.extend([
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
        ]);
        a.extend(["-no-reboot".into()]);
        a.extend([
            "-kernel".into(),
            path(&self.kernel),
            "-initrd".into(),
            path(&self.initrd),
        ]);
        let mut append = String::from("console=ttyS0 panic=-1 quiet");
        if self.iommu_with_igb {
            append.push_str(" intel_iommu=on");
            a.extend(["-device".into(), "intel-iommu,intremap=on".into()]);
            a.extend([
                "-device".into(),
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1".into(),
            ]);
            a.extend(["-device".into(), "igb,bus=rp1".into()]);
        }
        if !self.append.is_empty() {
            append.push(' ');
            append.push_str(&self.append);
        }
        a.extend(["-append".into(), append]);
        a.extend([
            "-serial".into(),
            format!("file:{}", path(&self.console_log)),
        ]);
        if let Some(probe) = &self.probe_socket {
            a.extend([
                "-chardev".into(),
                format!("socket,id=probe,path={},server=on,wait=off", path(probe)),
            ]);
            a.extend(["-serial".into(), "chardev:probe".into()]);
        }
        if let Some(qmp) = &self.qmp_socket {
            a.extend([
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", path(qmp)),
            ]);
        }
        for (i, nic) in self.nics.iter().enumerate() {
            match nic {
                Nic::Vfio(bdf) => a.extend(["-device".into(), format!("vfio-pci,host={bdf}")]),
                Nic::Tap { ifname, mac } => {
                    a.extend([
                        "-netdev".into(),
                        format!("tap,id=n{i},ifname={ifname},script=no,downscript=no"),
                        "-device".into(),
                        format!("virtio-net-pci,netdev=n{i},mac={mac}"),
                    ]);
                }
            }
        }
        a
    }

    /// The command, ready to spawn.
    #[must_use]
    pub fn command(&self) -> Command {
        let mut c = Command::new(binary());
        c.args(self.args());
        c
    }
}

/// How a guest that was run to its end ended.
#[derive(Debug)]
pub struct Finished {
    /// QEMU's exit status, `None` when it was killed at the deadline.
    pub status: Option<std::process::ExitStatus>,
    /// The guest's console.
    pub console: String,
    /// What QEMU itself printed.
    pub stderr: String,
}

/// Boots `guest` and waits for it to power off, killing QEMU at
/// `timeout`. For guests that do a job and stop (tests, image checks).
///
/// # Errors
/// QEMU cannot be started.
pub fn run_to_end(guest: &Guest, timeout: std::time::Duration) -> std::io::Result<Finished> {
    use std::process::Stdio;
    let stderr_path = guest.console_log.with_extension("qemu-stderr");
    let mut child = guest
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", binary().display())))?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Ok(Finished {
        status,
        console: read(&guest.console_log),
        stderr: read(&stderr_path),
    })
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_guest_has_its_console_probe_qmp_and_nics() {
        let mut g = Guest::new(Path::new("/k"), Path::new("/i"), Path::new("/log"));
        g.probe_socket = Some("/run/p.sock".into());
        g.qmp_socket = Some("/run/q.sock".into());
        g.nics = vec![
            Nic::Tap {
                ifname: "tap0".into(),
                mac: "02:00:00:00:00:01".into(),
            },
            Nic::Vfio("0000:03:10.1".into()),
        ];
        let args = g.args().join(" ");
        for want in [
            "-kernel /k -initrd /i",
            "-serial file:/log",
            "-chardev socket,id=probe,path=/run/p.sock,server=on,wait=off -serial chardev:probe",
            "-qmp unix:/run/q.sock,server=on,wait=off",
            "-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01",
            "-device vfio-pci,host=0000:03:10.1",
            "-append console=ttyS0",
        ] {
            assert!(args.contains(want), "{want} missing from {args}");
        }
        assert!(!args.contains("intel-iommu"));
        // The console is the first serial port, the probe the second.
        assert!(args.find("-serial file:").unwrap() < args.find("-serial chardev:").unwrap());
    }
}
