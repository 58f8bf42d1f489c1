//! QEMU for service VMs and test guests: the command line, and the start.
//!
//! One place decides the accelerator, the machine and the devices, so the
//! launcher and the tests boot guests the same way. KVM is used where it
//! works; where `/dev/kvm` is missing, or is the nested `kvm_pvm` layer
//! that cannot boot a stock kernel, QEMU runs under TCG.
//!
//! QEMU is given what it needs as open files, never as paths it would open
//! itself: the kernel and the initramfs, the QMP and probe sockets (bound
//! and listening before QEMU starts), and the tap queue. So it can run as
//! an unprivileged user ([`VmUser`]) that can reach nothing of the agent's
//! files, under its seccomp sandbox (`-sandbox on` with every optional
//! deny), and no shell is ever involved. A passed-through VF is the one
//! node QEMU opens: `/dev/vfio/N`, which the launcher hands to the user.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use command_fds::{CommandFdExt, FdMapping};

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

/// A value inside a QEMU option (`-device igb,bus=VALUE`), escaped as
/// QEMU's option parser requires: a comma is written twice.
#[must_use]
pub fn opt_value(value: &str) -> String {
    value.replace(',', ",,")
}

/// The user a VM runs as.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VmUser {
    /// Its name (for messages).
    pub name: String,
    /// User ID.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

impl VmUser {
    /// Looks `name` up (the system's user database), or takes `UID:GID`.
    ///
    /// # Errors
    /// No such user.
    pub fn lookup(name: &str) -> Result<Self, String> {
        if let Some((uid, gid)) = name.split_once(':')
            && let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse())
        {
            return Ok(Self {
                name: name.to_owned(),
                uid,
                gid,
            });
        }
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(Self {
                name: name.to_owned(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(format!(
                "no user `{name}` to run VMs as: create it (useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or set `vm_user`"
            )),
            Err(e) => Err(format!("looking up user `{name}`: {e}")),
        }
    }

    /// Whether this user may read a file with `meta`'s owner and mode.
    #[must_use]
    pub fn can_read(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        self.uid == 0
            || if meta.uid() == self.uid {
                mode & 0o400 != 0
            } else if meta.gid() == self.gid {
                mode & 0o040 != 0
            } else {
                mode & 0o004 != 0
            }
    }
}

/// How a guest's network attachment is made.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Nic {
    /// A VF passed through with VFIO (`-device vfio-pci,host=BDF`): real
    /// hosts.
    Vfio(String),
    /// A tap device standing for the VF (virtio-net): the simulated rig.
    /// It must exist; QEMU gets it open.
    Tap {
        /// The tap interface (made by the caller, in the caller's netns).
        ifname: String,
        /// The guest's MAC address.
        mac: String,
    },
}

/// The file descriptors QEMU finds its files at (fixed, so that the
/// command line is known before anything is opened).
const KERNEL_FD: i32 = 3;
const INITRD_FD: i32 = 4;
const QMP_FD: i32 = 5;
const PROBE_FD: i32 = 6;
const FIRST_TAP_FD: i32 = 7;

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
    /// VFIO guest tests); otherwise a plain q35.
    pub iommu_with_igb: bool,
    /// The host's root file system shared read-only with the guest over
    /// virtio-9p (mount tag `hostroot`): a guest that runs the host's own
    /// programs (the nested VF scenario).
    pub share_host_root: bool,
    /// Network attachments.
    pub nics: Vec<Nic>,
    /// The first serial port (the console) goes to this file.
    pub console_log: PathBuf,
    /// The second serial port (the service's probe channel) is served on
    /// this Unix socket.
    pub probe_socket: Option<PathBuf>,
    /// The QMP socket.
    pub qmp_socket: Option<PathBuf>,
    /// Run QEMU as this user (none: as the caller).
    pub user: Option<VmUser>,
}

impl Guest {
    /// A guest with the defaults: 256 MiB, one vCPU, no NIC, no sockets,
    /// QEMU as the caller.
    #[must_use]
    pub fn new(kernel: &Path, initrd: &Path, console_log: &Path) -> Self {
        Self {
            kernel: kernel.to_owned(),
            initrd: initrd.to_owned(),
            append: String::new(),
            memory_mib: 256,
            cpus: 1,
            iommu_with_igb: false,
            share_host_root: false,
            nics: Vec::new(),
            console_log: console_log.to_owned(),
            probe_socket: None,
            qmp_socket: None,
            user: None,
        }
    }

    /// The arguments after the binary. Files are named by the descriptors
    /// [`Self::spawn`] passes.
    ///
    /// # Errors
    /// A NIC that cannot be named on a command line (a PCI address that is
    /// not one).
    pub fn args(&self) -> Result<Vec<String>, String> {
        let accel = accelerator();
        let mut a: Vec<String> = vec!["-M".into(), "q35".into(), "-accel".into(), accel.into()];
        let cpu = if accel == "kvm" { "host" } else { "max" };
        a.extend(["-cpu".into(), cpu.into()]);
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
            "-no-reboot".into(),
        ]);
        // Every optional deny of QEMU's seccomp filter: no old syscalls, no
        // set*uid, no fork/exec, no scheduler or affinity changes.
        a.extend([
            "-sandbox".into(),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        ]);
        a.extend([
            "-kernel".into(),
            format!("/proc/self/fd/{KERNEL_FD}"),
            "-initrd".into(),
            format!("/proc/self/fd/{INITRD_FD}"),
        ]);
        let mut append = String::from("console=ttyS0 panic=-1 quiet");
        if self.iommu_with_igb {
            append.push_str(" intel_iommu=on");
            a.extend(["-device".into(), "intel-iommu,intremap=on".into()]);
            a.extend([
                "-device".into(),
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1".into(),
            ]);
            // A wire for the igb (a hub with nothing else on it): without
            // a peer its PF has no carrier, and so its VFs no link.
            a.extend([
                "-netdev".into(),
                "hubport,id=igbwire,hubid=0".into(),
                "-device".into(),
                "igb,bus=rp1,netdev=igbwire".into(),
            ]);
        }
        if self.share_host_root {
            a.extend([
                "-fsdev".into(),
                "local,id=hostroot,path=/,security_model=none,readonly=on".into(),
                "-device".into(),
                "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot".into(),
            ]);
        }
        if !self.append.is_empty() {
            append.push(' ');
            append.push_str(&self.append);
        }
        a.extend(["-append".into(), append]);
        // The console is QEMU's standard output (a file the caller opened).
        a.extend([
            "-chardev".into(),
            "stdio,id=console,signal=off".into(),
            "-serial".into(),
            "chardev:console".into(),
        ]);
        if self.probe_socket.is_some() {
            a.extend([
                "-chardev".into(),
                format!("socket,id=probe,fd={PROBE_FD},server=on,wait=off"),
                "-serial".into(),
                "chardev:probe".into(),
            ]);
        }
        if self.qmp_socket.is_some() {
            a.extend([
                "-chardev".into(),
                format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
                "-mon".into(),
                "chardev=qmp,mode=control".into(),
            ]);
        }
        let mut tap_fd = FIRST_TAP_FD;
        for (i, nic) in self.nics.iter().enumerate() {
            match nic {
                Nic::Vfio(bdf) => {
                    let bdf: chaingate_provision::PciAddress =
                        bdf.parse().map_err(|e| format!("{e}"))?;
                    a.extend([
                        "-device".into(),
                        format!("vfio-pci,id=vf{i},host={}", opt_value(bdf.as_str())),
                    ]);
                }
                Nic::Tap { mac, .. } => {
                    a.extend([
                        "-netdev".into(),
                        format!("tap,id=n{i},fd={tap_fd}"),
                        "-device".into(),
                        format!("virtio-net-pci,id=vf{i},netdev=n{i},mac={}", opt_value(mac)),
                    ]);
                    tap_fd += 1;
                }
            }
        }
        Ok(a)
    }

    /// The command that starts QEMU: opens the kernel and the initramfs, binds and listens
    /// on the sockets (an old socket file is replaced), attaches to the
    /// taps, and spawns QEMU with them as its descriptors, as
    /// [`Self::user`], standard output (the console) to
    /// [`Self::console_log`] and standard error to `stderr`. With a user,
    /// the kernel and initramfs must be readable by it.
    ///
    /// # Errors
    /// A file that cannot be opened (named), a file the user cannot read,
    /// a tap that cannot be attached, or QEMU that cannot be started.
    pub fn command(&self, stderr: File) -> io::Result<Command> {
        let args = self.args().map_err(io::Error::other)?;
        let named = |what: &str, p: &Path, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
        };
        let mut fds = Vec::new();
        for (what, path, fd) in [
            ("kernel", &self.kernel, KERNEL_FD),
            ("initramfs", &self.initrd, INITRD_FD),
        ] {
            let file = File::open(path).map_err(|e| named(what, path, e))?;
            if let Some(user) = &self.user {
                let meta = file.metadata().map_err(|e| named(what, path, e))?;
                if !user.can_read(&meta) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{what} {} is not readable by {} (uid {}), whom QEMU runs as: make it readable (chmod o+r)",
                            path.display(),
                            user.name,
                            user.uid
                        ),
                    ));
                }
            }
            fds.push(FdMapping {
                parent_fd: file.into(),
                child_fd: fd,
            });
        }
        for (socket, fd) in [(&self.qmp_socket, QMP_FD), (&self.probe_socket, PROBE_FD)] {
            if let Some(path) = socket {
                let _ = std::fs::remove_file(path);
                let listener = UnixListener::bind(path).map_err(|e| named("socket", path, e))?;
                fds.push(FdMapping {
                    parent_fd: OwnedFd::from(listener),
                    child_fd: fd,
                });
            }
        }
        let mut tap_fd = FIRST_TAP_FD;
        for nic in &self.nics {
            if let Nic::Tap { ifname, .. } = nic {
                fds.push(FdMapping {
                    parent_fd: chaingate_provision::tap::open(ifname)?,
                    child_fd: tap_fd,
                });
                tap_fd += 1;
            }
        }
        let console = File::create(&self.console_log)
            .map_err(|e| named("console log", &self.console_log, e))?;
        let mut command = Command::new(binary());
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(stderr)
            .fd_mappings(fds)
            .map_err(io::Error::other)?;
        if let Some(user) = &self.user {
            // std drops the supplementary groups too when root starts a
            // child as another user.
            command.uid(user.uid).gid(user.gid);
        }
        Ok(command)
    }

    /// Spawns [`Self::command`].
    ///
    /// # Errors
    /// As [`Self::command`], or QEMU cannot be started.
    pub fn spawn(&self, stderr: File) -> io::Result<Child> {
        self.command(stderr)?
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binary().display())))
    }

    /// The command line as one string, for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut line: Vec<OsString> = vec![binary().into()];
        line.extend(self.args().unwrap_or_default().into_iter().map(Into::into));
        line.iter()
            .map(|s| s.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
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
pub fn run_to_end(guest: &Guest, timeout: std::time::Duration) -> io::Result<Finished> {
    let stderr_path = guest.console_log.with_extension("qemu-stderr");
    let mut child = guest.spawn(File::create(&stderr_path)?)?;
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
            Nic::Vfio("03:10.1".into()),
        ];
        let args = g.args().unwrap().join(" ");
        for want in [
            "-kernel /proc/self/fd/3 -initrd /proc/self/fd/4",
            "-chardev stdio,id=console,signal=off -serial chardev:console",
            "-chardev socket,id=probe,fd=6,server=on,wait=off -serial chardev:probe",
            "-chardev socket,id=qmp,fd=5,server=on,wait=off -mon chardev=qmp,mode=control",
            "-netdev tap,id=n0,fd=7 -device virtio-net-pci,id=vf0,netdev=n0,mac=02:00:00:00:00:01",
            "-device vfio-pci,id=vf1,host=0000:03:10.1",
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-append console=ttyS0",
        ] {
            assert!(args.contains(want), "{want} missing from {args}");
        }
        assert!(!args.contains("intel-iommu"));
        assert!(!args.contains("tap0"), "the tap is passed open: {args}");
        // The console is the first serial port, the probe the second.
        assert!(
            args.find("-serial chardev:console").unwrap()
                < args.find("-serial chardev:probe").unwrap()
        );
    }

    #[test]
    fn option_values_double_their_commas_and_bad_addresses_are_refused() {
        assert_eq!(opt_value("a,b,,c"), "a,,b,,,,c");
        assert_eq!(opt_value("plain"), "plain");
        let mut g = Guest::new(Path::new("/k"), Path::new("/i"), Path::new("/log"));
        g.nics = vec![Nic::Vfio("0000:03:10.1,x-no-mmap=on".into())];
        let e = g.args().unwrap_err();
        assert!(e.contains("not a PCI address"), "{e}");
    }

    #[test]
    fn users_resolve_by_name_or_number_and_read_by_mode() {
        let root = VmUser::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let n = VmUser::lookup("65534:65534").unwrap();
        assert_eq!((n.uid, n.gid), (65534, 65534));
        let e = VmUser::lookup("cg-no-such-user").unwrap_err();
        assert!(e.contains("useradd"), "{e}");

        let dir = std::env::temp_dir().join(format!("cg-qemu-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        let owner = VmUser {
            name: "owner".into(),
            uid: std::os::unix::fs::MetadataExt::uid(&meta),
            gid: 4242,
        };
        assert!(owner.can_read(&meta));
        assert!(!n.can_read(&meta) || n.uid == 0);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(n.can_read(&std::fs::metadata(&f).unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
