//! Opening a tap device for a VM, so that QEMU gets the open queue as a
//! file descriptor (`-netdev tap,fd=N`) and needs neither
//! `CAP_NET_ADMIN` nor ownership of the tap: it runs unprivileged.
//!
//! A tap stands for a VF on the simulated rig; the tap must exist (made
//! persistent by whoever made the rig) and no other process may have it
//! open.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Frames carry a virtio-net header, as QEMU's own tap opening asks.
const IFF_VNET_HDR: libc::c_short = 0x4000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches to the existing tap `ifname` as QEMU would (`IFF_TAP`,
/// `IFF_NO_PI`, `IFF_VNET_HDR`) and returns the queue.
///
/// # Errors
/// The name is too long, `/dev/net/tun` is missing, the tap does not exist
/// (a new one would be made and vanish with the fd: refused here), or the
/// kernel refused the attach (busy: another process has it).
pub fn open(ifname: &str) -> io::Result<OwnedFd> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{ifname}` is not an interface name"),
        ));
    }
    if !std::path::Path::new("/sys/class/net").join(ifname).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {ifname}"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
    // lays out and which lives across the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &raw mut req) } < 0 {
        let e = io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::EBUSY) => format!("tap {ifname} is busy: another process has it open"),
            Some(libc::EINVAL) => format!("{ifname} is not a tap device"),
            _ => format!("attach to tap {ifname}: {e}"),
        };
        return Err(io::Error::new(e.kind(), why));
    }
    Ok(tun.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_is_the_kernels_size() {
        assert_eq!(size_of::<IfReq>(), 40);
    }

    #[test]
    fn names_the_kernel_cannot_take_are_refused_before_any_syscall() {
        for bad in ["", "a-name-longer-than-15", "a/b"] {
            assert_eq!(open(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
        assert_eq!(
            open("cg-no-such-tap").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
