//! A network namespace and veth pairs for one test.
//!
//! Every pair has one end in the root namespace (where `dpu-fw` runs and
//! opens it as a port) and the other inside the test's namespace (where
//! the hosts and instances of the test live). Names carry the process id
//! and a counter, so that tests running at once never collide; `Drop`
//! removes what was made, in reverse order, also when the test panics.
//! Leftovers of a killed run (its process is gone) are swept on the next
//! start. IPv6 is off on every end, so the kernel sends nothing of its own
//! (router solicitations, MLD) into the test's traffic.

use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A veth pair.
#[derive(Clone, Debug)]
pub struct Link {
    /// The end in the root namespace (a `dpu-fw` port).
    pub inner: String,
    /// The end in the test's namespace.
    pub outer: String,
}

/// A test's namespace and links.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    netns: String,
    links: Vec<Link>,
}

/// Runs `ip` (or another command) and fails with its stderr.
///
/// # Errors
/// The command cannot run or exits non-zero.
pub fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn disable_ipv6(netns: Option<&str>, ifname: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match netns {
        // Without IPv6 in the kernel there is nothing to turn off.
        None => std::fs::write(&path, "1").or_else(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        }),
        Some(ns) => {
            let script = format!("[ ! -e {path} ] || echo 1 > {path}");
            run("ip", &["netns", "exec", ns, "sh", "-c", &script])
        }
    }
}

impl Topology {
    /// A new namespace.
    ///
    /// # Errors
    /// `ip netns add` failed.
    pub fn new() -> io::Result<Self> {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("cg{:x}x{n:x}", std::process::id());
        let netns = format!("{prefix}-ns");
        run("ip", &["netns", "add", &netns])?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(Self {
            prefix,
            netns,
            links: Vec::new(),
        })
    }

    /// The namespace's name.
    #[must_use]
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Adds a veth pair named after `name` (at most 4 characters), both
    /// ends up.
    ///
    /// # Errors
    /// An `ip` command failed.
    pub fn link(&mut self, name: &str) -> io::Result<Link> {
        let netns = self.netns.clone();
        self.veth(name, 'o', Some(&netns))
    }

    /// Adds a veth pair with both ends in the root namespace: a VF for the
    /// host agent, which moves `outer` into the namespace of the instance
    /// it launches there, and `inner` for `dpu-fw`. Removed like the
    /// others (deleting `inner` removes the pair wherever `outer` is).
    ///
    /// # Errors
    /// An `ip` command failed.
    pub fn host_link(&mut self, name: &str) -> io::Result<Link> {
        self.veth(name, 'h', None)
    }

    fn veth(&mut self, name: &str, outer_tag: char, outer_ns: Option<&str>) -> io::Result<Link> {
        let link = Link {
            inner: format!("{}i{name}", self.prefix),
            outer: format!("{}{outer_tag}{name}", self.prefix),
        };
        if link.inner.len() > 15 {
            return Err(io::Error::other(format!(
                "interface name {} is too long",
                link.inner
            )));
        }
        let mut args = vec![
            "link",
            "add",
            &link.inner,
            "type",
            "veth",
            "peer",
            "name",
            &link.outer,
        ];
        if let Some(ns) = outer_ns {
            args.extend(["netns", ns]);
        }
        run("ip", &args)?;
        self.links.push(link.clone());
        disable_ipv6(None, &link.inner)?;
        disable_ipv6(outer_ns, &link.outer)?;
        run("ip", &["link", "set", &link.inner, "up"])?;
        match outer_ns {
            Some(ns) => run("ip", &["-n", ns, "link", "set", &link.outer, "up"])?,
            None => run("ip", &["link", "set", &link.outer, "up"])?,
        }
        Ok(link)
    }

    /// Passes every frame arriving on `a` out of `b` and back, in the
    /// kernel (tc ingress + mirred): two links joined with no gateway
    /// between them. Goes with the links.
    ///
    /// # Errors
    /// A `tc` command failed.
    pub fn cross_connect(&self, a: &str, b: &str) -> io::Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            run("tc", &["qdisc", "add", "dev", from, "ingress"])?;
            run(
                "tc",
                &[
                    "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                    "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )?;
        }
        Ok(())
    }

    /// Adds a tap device in the root namespace (a VF's stand-in for a
    /// QEMU instance). Removed on drop.
    ///
    /// # Errors
    /// An `ip` command failed.
    pub fn tap(&mut self, name: &str) -> io::Result<String> {
        let tap = format!("{}t{name}", self.prefix);
        run("ip", &["tuntap", "add", "mode", "tap", "name", &tap])?;
        self.links.push(Link {
            inner: tap.clone(),
            outer: tap.clone(),
        });
        disable_ipv6(None, &tap)?;
        run("ip", &["link", "set", &tap, "up"])?;
        Ok(tap)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for link in self.links.iter().rev() {
            // Deleting one end removes the pair.
            let _ = run("ip", &["link", "del", &link.inner]);
        }
        let _ = run("ip", &["netns", "del", &self.netns]);
    }
}

/// Removes namespaces and links of runs whose process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("cg")
            .and_then(|r| r.split_once('x'))
            .and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let prefix = name.trim_end_matches("-ns").to_owned();
        if let Ok(links) = std::fs::read_dir("/sys/class/net") {
            for l in links.flatten() {
                let ifname = l.file_name().to_string_lossy().into_owned();
                if ifname.starts_with(&format!("{prefix}i"))
                    || ifname.starts_with(&format!("{prefix}t"))
                {
                    let _ = run("ip", &["link", "del", &ifname]);
                }
            }
        }
        let _ = run("ip", &["netns", "del", &name]);
    }
}
