//! Guest images: an initramfs (the kernel's "newc" cpio format) written
//! from Rust, and the kernel modules it needs, in load order.
//!
//! A service image is a kernel and an initramfs holding busybox, the
//! modules the guest needs (NIC, virtio, VFIO), the service binary and an
//! `/init` script. The host needs no cpio, kmod or depmod: the archive is
//! written here, and module dependencies are read from each module's
//! `.modinfo` (`depends=`). Compressed modules (`.ko.xz`, `.ko.zst`) are
//! unpacked with `xz`/`zstd`, which Debian always has.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One entry of the archive.
#[derive(Clone, Debug)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// An initramfs being put together; parent directories are added as
/// needed.
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    /// An empty archive.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn parents(&mut self, key: &str) {
        for (i, _) in key.match_indices('/') {
            self.entries
                .entry(key[..i].to_owned())
                .or_insert(Entry::Dir);
        }
    }

    fn key(path: &str) -> String {
        path.trim_start_matches('/').to_owned()
    }

    /// A directory.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        let key = Self::key(path);
        self.parents(&key);
        self.entries.insert(key, Entry::Dir);
        self
    }

    /// A file with `data` and permission bits `mode` (0o755, 0o644).
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> &mut Self {
        let key = Self::key(path);
        self.parents(&key);
        self.entries.insert(key, Entry::File { data, mode });
        self
    }

    /// A file copied from the host.
    ///
    /// # Errors
    /// The host file cannot be read.
    pub fn copy(&mut self, path: &str, from: &Path, mode: u32) -> io::Result<&mut Self> {
        let data = fs::read(from)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
        Ok(self.file(path, data, mode))
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let key = Self::key(path);
        self.parents(&key);
        self.entries.insert(key, Entry::Symlink(target.to_owned()));
        self
    }

    /// Writes the archive (uncompressed newc, which every kernel takes).
    ///
    /// # Errors
    /// Writing fails.
    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (mode, data): (u32, &[u8]) = match entry {
                Entry::Dir => (0o040_755, &[]),
                Entry::File { data, mode } => (0o100_000 | mode, data),
                Entry::Symlink(target) => (0o120_777, target.as_bytes()),
            };
            write_entry(&mut out, ino, mode, path, data)?;
        }
        write_entry(&mut out, 0, 0, "TRAILER!!!", &[])?;
        out.flush()
    }

    /// Writes the archive to a file.
    ///
    /// # Errors
    /// As [`Self::write_to`].
    pub fn write_file(&self, path: &Path) -> io::Result<()> {
        self.write_to(io::BufWriter::new(fs::File::create(path)?))
    }
}

fn write_entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let size =
        u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name}: over 4 GiB")))?;
    let name_size = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
        0, 0, 0, 0, 0, 0, 0, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(header.len() + name_size)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Why an image cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file or directory is missing or unreadable.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A module is neither built in nor present.
    #[error("kernel module `{0}` is neither built into the kernel nor under {1}")]
    NoModule(String, String),
    /// The kernel directory does not hold exactly one module tree.
    #[error("{0}")]
    Layout(String),
}

/// The modules of one kernel, as unpacked from its package
/// (`lib/modules/VERSION/`).
#[derive(Debug)]
pub struct KernelModules {
    dir: PathBuf,
    files: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

/// Modules are named with `_` and `-` alike (`vfio-pci` is `vfio_pci`).
fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

impl KernelModules {
    /// The module tree under `root/lib/modules/` (one version there).
    ///
    /// # Errors
    /// No tree, or several.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let base = root.join("lib/modules");
        let versions: Vec<PathBuf> = fs::read_dir(&base)
            .map_err(|e| ImageError::Layout(format!("{}: {e}", base.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        let [dir] = versions.as_slice() else {
            return Err(ImageError::Layout(format!(
                "{} holds {} kernel versions; expected one",
                base.display(),
                versions.len()
            )));
        };
        let mut files = HashMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d)? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
                    && let Some((stem, _)) = name.split_once(".ko")
                {
                    files.insert(module_key(stem), path.clone());
                }
            }
        }
        let builtin = fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko").map(module_key))
            .collect();
        Ok(Self {
            dir: dir.clone(),
            files,
            builtin,
        })
    }

    /// The kernel version (the tree's directory name).
    #[must_use]
    pub fn version(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The modules to load for `names`, dependencies first, each once;
    /// built-in ones are left out.
    ///
    /// # Errors
    /// A module (or a dependency) missing, or unreadable.
    pub fn resolve(&self, names: &[&str]) -> Result<Vec<(String, PathBuf)>, ImageError> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            self.visit(&module_key(name), &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), ImageError> {
        if !seen.insert(name.to_owned()) || self.builtin.contains(name) {
            return Ok(());
        }
        let path = self
            .files
            .get(name)
            .ok_or_else(|| ImageError::NoModule(name.to_owned(), self.dir.display().to_string()))?;
        let data = read_module(path)?;
        for dep in depends(&data) {
            self.visit(&module_key(&dep), seen, order)?;
        }
        order.push((name.to_owned(), path.clone()));
        Ok(())
    }

    /// Puts `names` and their dependencies, unpacked, under `/lib/modules/`
    /// of `image`, and returns the paths to `insmod` in order.
    ///
    /// # Errors
    /// As [`Self::resolve`].
    pub fn add_to(&self, image: &mut Initramfs, names: &[&str]) -> Result<Vec<String>, ImageError> {
        let mut load = Vec::new();
        for (name, path) in self.resolve(names)? {
            let at = format!("/lib/modules/{name}.ko");
            image.file(&at, read_module(&path)?, 0o644);
            load.push(at);
        }
        Ok(load)
    }
}

/// A module file, unpacked.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return Ok(fs::read(path)?);
    };
    let (ok, out, err) = unpack(tool, &fs::read(path)?)?;
    if !ok {
        return Err(ImageError::Io(io::Error::other(format!(
            "{tool} -dc {name}: {err}"
        ))));
    }
    Ok(out)
}

/// `TOOL -dc` over `data`: whether it succeeded, its output, its errors.
fn unpack(tool: &str, data: &[u8]) -> Result<(bool, Vec<u8>, String), ImageError> {
    use std::process::Stdio;
    let mut child = Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{tool}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = data.to_vec();
    // Fed from a thread: the tool's output fills its pipe while it reads.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    Ok((
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    ))
}

/// The uncompressed kernel (ELF) inside a bzImage: QEMU boots it directly
/// through its PVH entry, which skips the decompressor (about 1.3 s of a
/// 7.5 s boot under TCG).
///
/// # Errors
/// No compressed ELF found in it.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    const FORMATS: [(&str, &[u8]); 3] = [
        ("zstd", b"\x28\xb5\x2f\xfd"),
        ("xz", b"\xfd7zXZ\x00"),
        ("gzip", b"\x1f\x8b\x08"),
    ];
    for (tool, magic) in FORMATS {
        let starts = bzimage
            .windows(magic.len())
            .enumerate()
            .filter(|(_, w)| *w == magic)
            .map(|(i, _)| i);
        for at in starts.take(4) {
            // The payload is followed by the rest of the bzImage: the tool
            // complains of trailing data after a complete output.
            let (_, out, _) = unpack(tool, &bzimage[at..])?;
            if out.starts_with(b"\x7fELF") {
                return Ok(out);
            }
        }
    }
    Err(ImageError::Layout(
        "no compressed ELF kernel (zstd, xz or gzip) in the image".into(),
    ))
}

/// The `depends=` list of a module's `.modinfo` strings.
fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    module
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| {
            let rest = &module[at + KEY.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// What guests are made of on this host: a kernel, its modules, busybox.
#[derive(Debug)]
pub struct GuestKit {
    /// The kernel: the uncompressed `vmlinux` (PVH boot) when it could be
    /// made, else `vmlinuz`.
    pub kernel: PathBuf,
    /// Its modules.
    pub modules: KernelModules,
    /// A static busybox.
    pub busybox: PathBuf,
}

impl GuestKit {
    /// The kit in `dir` (a kernel package unpacked there, `vmlinuz` beside
    /// it, as `ci/lib.sh`'s `ensure_vm_tools` leaves it) and busybox from
    /// `/bin/busybox`.
    ///
    /// # Errors
    /// A piece missing, naming it and how to get it.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        let kernel = dir.join("vmlinuz");
        if !kernel.exists() {
            return Err(ImageError::Layout(format!(
                "no guest kernel at {}: run ci/lib.sh's ensure_vm_tools (docs/vms.md)",
                kernel.display()
            )));
        }
        let busybox = PathBuf::from("/bin/busybox");
        if !busybox.exists() {
            return Err(ImageError::Layout(
                "no /bin/busybox: apt-get install busybox-static".to_owned(),
            ));
        }
        // The uncompressed kernel boots faster; made once, beside it.
        let vmlinux = dir.join("vmlinux");
        if !vmlinux.exists() {
            match fs::read(&kernel)
                .map_err(ImageError::from)
                .and_then(|b| extract_vmlinux(&b))
            {
                Ok(elf) => {
                    let tmp = dir.join(format!(".vmlinux.{}", std::process::id()));
                    if fs::write(&tmp, elf)
                        .and_then(|()| fs::rename(&tmp, &vmlinux))
                        .is_err()
                    {
                        let _ = fs::remove_file(&tmp);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "booting the compressed kernel"),
            }
        }
        Ok(Self {
            kernel: if vmlinux.exists() { vmlinux } else { kernel },
            modules: KernelModules::open(dir)?,
            busybox,
        })
    }

    /// The kit where the project keeps it: `$CHAINGATE_VM_DIR`, else
    /// `/var/cache/chaingate/vm`.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn from_env() -> Result<Self, ImageError> {
        let dir = std::env::var_os("CHAINGATE_VM_DIR")
            .map_or_else(|| PathBuf::from("/var/cache/chaingate/vm"), PathBuf::from);
        Self::open(&dir)
    }

    /// An initramfs with busybox (its applets installed by `/init`), the
    /// modules `modules` need, and `/init` running `script` after the
    /// usual mounts and the module loads. The script's last duty is
    /// `poweroff -f`.
    ///
    /// # Errors
    /// A module missing, or busybox unreadable.
    pub fn initramfs(&self, modules: &[&str], script: &str) -> Result<Initramfs, ImageError> {
        let mut image = Initramfs::new();
        image.copy("/bin/busybox", &self.busybox, 0o755)?;
        image.symlink("/bin/sh", "busybox");
        for d in [
            "/dev",
            "/proc",
            "/sys",
            "/tmp",
            "/run",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
        ] {
            image.dir(d);
        }
        let load = self.modules.add_to(&mut image, modules)?;
        let mut init = String::from(
            "#!/bin/sh\n/bin/busybox --install -s\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev\n",
        );
        for m in load {
            init.push_str(&format!("insmod {m} || echo \"init: insmod {m} failed\"\n"));
        }
        init.push_str(script);
        init.push_str("\npoweroff -f\n");
        image.file("/init", init.into_bytes(), 0o755);
        Ok(image)
    }

    /// A service VM image: `binary` (a static `chaingate-service`) runs
    /// `function` on the guest's NIC, with the instance name from the
    /// kernel command line (`chaingate.instance=NAME`, which the qemu
    /// launcher sets), and answers the probe on the second serial port
    /// (made raw first), reporting the NIC's link. virtio-net (the rig's
    /// tap), the ACPI power button and evdev are always in; `modules` adds
    /// the VF drivers for passthrough ([`VF_DRIVERS`]), and the guest's
    /// kernel binds whichever VF it is given. The service is started again
    /// if it exits, except after the power button: then it is stopped
    /// (SIGTERM, two seconds) and the guest powers off.
    ///
    /// # Errors
    /// A module missing, or a file unreadable.
    pub fn service_initramfs(
        &self,
        binary: &Path,
        function: &str,
        modules: &[&str],
    ) -> Result<Initramfs, ImageError> {
        let mut all = vec!["virtio_net", "button", "evdev"];
        all.extend_from_slice(modules);
        let script = format!(
            r#"stty -F /dev/ttyS1 raw -echo
instance=$(sed -n 's/.*chaingate[.]instance=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set lo up
# The VF's driver may take a moment to make its interface.
for i in $(seq 50); do
  iface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
  [ -n "$iface" ] && break
  sleep 0.1
done
driver=$(basename "$(readlink "/sys/class/net/$iface/device/driver")")
# A bump in the wire: the guest's own kernel keeps quiet on the VF.
echo 1 > "/proc/sys/net/ipv6/conf/$iface/disable_ipv6" 2>/dev/null || true
ip link set "$iface" up
echo "chaingate: {function} $instance on $iface ($driver)"
# The power button (QMP system_powerdown): busybox acpid runs
# /etc/acpi/PWRF/00000080.
acpid -f -c /etc/acpi -l /run/acpid.log -p /run/acpid.pid &
while [ ! -e /run/stopping ]; do
  /bin/chaingate-service {function} --iface "$iface" --probe tty:/dev/ttyS1 --instance "$instance" &
  echo $! > /run/service.pid
  wait $!
  [ -e /run/stopping ] && break
  echo "chaingate: service exited $?, restarting"
  sleep 1
done
sleep 10
"#
        );
        let mut image = self.initramfs(&all, &script)?;
        image.copy("/bin/chaingate-service", binary, 0o755)?;
        image.file(
            "/etc/acpi/PWRF/00000080",
            b"#!/bin/sh\nexec >/dev/console 2>&1\necho 'chaingate: power button: stopping the service'\ntouch /run/stopping\nkill -TERM $(cat /run/service.pid)\nfor i in $(seq 20); do kill -0 $(cat /run/service.pid) 2>/dev/null || break; sleep 0.1; done\necho 'chaingate: powering off'\npoweroff -f\n".to_vec(),
            0o755,
        );
        Ok(image)
    }
}

/// The VF drivers a service image has by default: Intel's igbvf (the
/// emulated igb VFs of the test rig) and mlx5 (BlueField and ConnectX
/// VFs).
pub const VF_DRIVERS: &[&str] = &["igbvf", "mlx5_core"];

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (name, mode, data) per entry.
    fn read_back(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let h = std::str::from_utf8(&bytes[at..at + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let field =
                |i: usize| u32::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).unwrap() as usize;
            let (mode, size, name_size) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&bytes[at + 110..at + 110 + name_size - 1])
                .unwrap()
                .to_owned();
            at += 110 + name_size;
            at += pad4(at);
            let data = bytes[at..at + size].to_vec();
            at += size;
            at += pad4(at);
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len());
                return out;
            }
            out.push((name, mode as u32, data));
        }
    }

    #[test]
    fn newc_archive_reads_back_with_parents_first() {
        let mut image = Initramfs::new();
        image.file("/a/b/c.txt", b"hello".to_vec(), 0o644);
        image.symlink("/bin/sh", "busybox");
        image.file("/init", b"#!/bin/sh\n".to_vec(), 0o755);
        let mut bytes = Vec::new();
        image.write_to(&mut bytes).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = read_back(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a", "a/b", "a/b/c.txt", "bin", "bin/sh", "init"]);
        assert_eq!(entries[0].1, 0o040_755);
        assert_eq!(
            entries[2],
            ("a/b/c.txt".to_owned(), 0o100_644, b"hello".to_vec())
        );
        assert_eq!(
            entries[4],
            ("bin/sh".to_owned(), 0o120_777, b"busybox".to_vec())
        );
        assert_eq!(entries[5].1, 0o100_755);
    }

    #[test]
    fn the_elf_kernel_is_found_inside_a_bzimage() {
        let elf = [b"\x7fELF".as_slice(), &[7u8; 5000]].concat();
        let mut gzip = Command::new("gzip")
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        gzip.stdin.take().unwrap().write_all(&elf).unwrap();
        let packed = gzip.wait_with_output().unwrap().stdout;
        // A setup header, a decoy magic, the payload, and the rest.
        let bzimage = [
            b"MZ setup \x1f\x8b\x08 not really".as_slice(),
            &packed,
            b"trailer bytes",
        ]
        .concat();
        assert_eq!(extract_vmlinux(&bzimage).unwrap(), elf);
        let e = extract_vmlinux(b"MZ nothing here").unwrap_err();
        assert!(e.to_string().contains("no compressed ELF kernel"), "{e}");
    }

    #[test]
    fn modinfo_depends_are_read() {
        let mut module =
            b"\x7fELF....\0license=GPL\0depends=vfio,vfio-pci-core,irqbypass\0name=vfio_pci\0"
                .to_vec();
        assert_eq!(depends(&module), ["vfio", "vfio-pci-core", "irqbypass"]);
        module = b"\0depends=\0name=x\0".to_vec();
        assert!(depends(&module).is_empty());
    }

    #[test]
    fn modules_resolve_dependencies_first_and_skip_builtins() {
        let root = std::env::temp_dir().join(format!("chaingate-modules-{}", std::process::id()));
        let dir = root.join("lib/modules/6.1.0-test/kernel/drivers");
        fs::create_dir_all(&dir).unwrap();
        let module = |name: &str, deps: &str| {
            fs::write(
                dir.join(format!("{name}.ko")),
                format!("ELF\0depends={deps}\0name={name}\0"),
            )
            .unwrap();
        };
        module("vfio-pci", "vfio-pci-core,vfio");
        module("vfio-pci-core", "vfio,irqbypass");
        module("vfio", "");
        module("irqbypass", "");
        module("igb", "dca,i2c-algo-bit");
        module("dca", "");
        fs::write(
            root.join("lib/modules/6.1.0-test/modules.builtin"),
            "kernel/drivers/i2c/i2c-algo-bit.ko\n",
        )
        .unwrap();
        let modules = KernelModules::open(&root).unwrap();
        assert_eq!(modules.version(), "6.1.0-test");
        let order: Vec<String> = modules
            .resolve(&["igb", "vfio_pci"])
            .unwrap()
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(
            order,
            [
                "dca",
                "igb",
                "vfio",
                "irqbypass",
                "vfio_pci_core",
                "vfio_pci"
            ]
        );
        let e = modules.resolve(&["igbvf"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("`igbvf` is neither built into the kernel"),
            "{e}"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
