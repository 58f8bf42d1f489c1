//! Packet I/O on a Linux network device through an AF_PACKET socket,
//! batched with `recvmmsg`/`sendmmsg`.
//!
//! - Promiscuous, bound to one device, for every EtherType.
//! - Frames this socket (or the kernel) sends out of the device are not
//!   received back (`PACKET_IGNORE_OUTGOING`, and the packet type is
//!   checked as well, for kernels before 4.20).
//! - Linux takes the outer 802.1Q/802.1ad tag off received frames and
//!   reports it in `PACKET_AUXDATA`; it is put back into the frame here, or
//!   segment tags would be lost. Tags in sent frames are inline and leave
//!   as they are.
//! - A frame longer than the receive slot arrives truncated: it is dropped
//!   and counted, never forwarded cut.
//!
//! This is one of the runtime's few FFI surfaces: every `unsafe` block is
//! a system call on buffers owned here.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{PortCounters, RxBatch};

/// Frames moved per system call at most.
pub const BATCH: usize = 32;

/// Bytes before a received frame's start: room to put a stripped VLAN tag
/// back, and for the data path to push tags or tunnel headers in place.
pub const HEADROOM: usize = 64;

/// Control message space for one `tpacket_auxdata`.
const CMSG_SPACE: usize = 64;

/// Why a device cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum AfPacketError {
    /// There is no such device.
    #[error("no network device named \"{0}\"")]
    NoDevice(String),
    /// A system call failed.
    #[error("cannot {step} on \"{device}\"")]
    Sys {
        /// The device.
        device: String,
        /// What was being done.
        step: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An AF_PACKET socket bound to one device.
#[derive(Debug)]
pub struct AfPacket {
    fd: OwnedFd,
    ifindex: i32,
    device: String,
    counters: PortCounters,
    // Send batch: frames copied in, flushed with one sendmmsg.
    tx_buf: Vec<u8>,
    tx_lens: Vec<usize>,
    slot: usize,
}

/// `htons(ETH_P_ALL)`.
fn eth_p_all() -> u16 {
    u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be()
}

fn sockopt<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    let len = u32::try_from(size_of::<T>()).unwrap_or(u32::MAX);
    // SAFETY: `value` points to a live `T` of `len` bytes for the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, std::ptr::from_ref(value).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl AfPacket {
    /// Opens `device` with receive slots of `slot` bytes (the largest frame
    /// taken, tags included).
    ///
    /// # Errors
    /// [`AfPacketError`] naming the device and the step that failed.
    pub fn open(device: &str, slot: usize) -> Result<Self, AfPacketError> {
        let sys = |step, source| AfPacketError::Sys {
            device: device.to_owned(),
            step,
            source,
        };
        let name = CString::new(device).map_err(|_| AfPacketError::NoDevice(device.to_owned()))?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        let ifindex = i32::try_from(index)
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| AfPacketError::NoDevice(device.to_owned()))?;
        // SAFETY: plain socket creation; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(eth_p_all()),
            )
        };
        if raw < 0 {
            return Err(sys("open an AF_PACKET socket", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: i32 = 1;
        // Before 4.20 the option is missing; outgoing frames are then
        // recognised by their packet type.
        let _ = sockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
        );
        sockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)
            .map_err(|e| sys("enable PACKET_AUXDATA", e))?;
        let buffer: i32 = 4 << 20;
        // FORCE needs CAP_NET_ADMIN; the plain one is capped by rmem_max.
        if sockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &buffer,
        )
        .is_err()
        {
            let _ = sockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &buffer);
        }
        if sockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &buffer,
        )
        .is_err()
        {
            let _ = sockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &buffer);
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(17);
        addr.sll_protocol = eth_p_all();
        addr.sll_ifindex = ifindex;
        let len = u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(u32::MAX);
        // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), len) };
        if rc != 0 {
            return Err(sys("bind the socket", io::Error::last_os_error()));
        }
        // SAFETY: packet_mreq is plain data; all-zero is a valid value.
        let mut mreq: libc::packet_mreq = unsafe { zeroed() };
        mreq.mr_ifindex = ifindex;
        mreq.mr_type = u16::try_from(libc::PACKET_MR_PROMISC).unwrap_or(1);
        sockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq,
        )
        .map_err(|e| sys("set promiscuous mode", e))?;
        Ok(Self {
            fd,
            ifindex,
            device: device.to_owned(),
            counters: PortCounters::default(),
            tx_buf: vec![0; BATCH * slot],
            tx_lens: Vec::with_capacity(BATCH),
            slot,
        })
    }

    /// The device's name.
    #[must_use]
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The device's index.
    #[must_use]
    pub const fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// The socket, for `poll`.
    #[must_use]
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// What the port has moved.
    #[must_use]
    pub const fn counters(&self) -> &PortCounters {
        &self.counters
    }

    /// Receives up to a batch of frames into `batch` (which it clears),
    /// with stripped VLAN tags put back. Returns how many there are.
    ///
    /// # Errors
    /// A failed `recvmmsg` other than "nothing to read".
    pub fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        batch.clear();
        let slot = batch.slot();
        let n = batch.capacity().min(BATCH);
        let base = batch.buffer_mut().as_mut_ptr();
        // SAFETY: arrays of plain C structs; all-zero is a valid value.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut names: [libc::sockaddr_ll; BATCH] = unsafe { zeroed() };
        let mut cmsgs = [[0u8; CMSG_SPACE]; BATCH];
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..n {
            // SAFETY: slot `i` lies inside the batch buffer (capacity
            // slots of `slot` bytes); HEADROOM < slot.
            iov[i].iov_base = unsafe { base.add(i * slot + HEADROOM) }.cast();
            iov[i].iov_len = slot - HEADROOM;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = std::ptr::from_mut(&mut names[i]).cast();
            h.msg_namelen = u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or(0);
            h.msg_iov = std::ptr::from_mut(&mut iov[i]);
            h.msg_iovlen = 1;
            h.msg_control = cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE;
        }
        // SAFETY: every header points at buffers that live until the call
        // returns; `n` headers are initialised.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                u32::try_from(n).unwrap_or(0),
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = usize::try_from(got).unwrap_or(0);
        for i in 0..got {
            let h = &msgs[i].msg_hdr;
            let len = msgs[i].msg_len as usize;
            if names[i].sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if h.msg_flags & libc::MSG_TRUNC != 0 {
                self.counters.rx_errors += 1;
                continue;
            }
            let tag = auxdata_tag(h);
            let buf = batch.slot_mut(i);
            let start = match tag {
                None => HEADROOM,
                Some((tpid, tci)) if len >= 12 => {
                    // Put the tag back after the MAC addresses.
                    let at = HEADROOM - 4;
                    buf.copy_within(HEADROOM..HEADROOM + 12, at);
                    buf[at + 12..at + 14].copy_from_slice(&tpid.to_be_bytes());
                    buf[at + 14..at + 16].copy_from_slice(&tci.to_be_bytes());
                    at
                }
                Some(_) => {
                    self.counters.rx_errors += 1;
                    continue;
                }
            };
            let frame_len = len + HEADROOM - start;
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += frame_len as u64;
            batch.push(i, start, frame_len);
        }
        Ok(batch.len())
    }

    /// Queues a frame to send; the queue goes out when it holds a batch or
    /// at [`AfPacket::flush`]. A frame longer than a slot is dropped and
    /// counted.
    pub fn send(&mut self, frame: &[u8]) {
        if frame.len() > self.slot {
            self.counters.tx_dropped += 1;
            return;
        }
        let i = self.tx_lens.len();
        let at = i * self.slot;
        self.tx_buf[at..at + frame.len()].copy_from_slice(frame);
        self.tx_lens.push(frame.len());
        if self.tx_lens.len() == BATCH {
            self.flush();
        }
    }

    /// Sends the queued frames. Frames the device does not take now (its
    /// queue is full) are dropped and counted: the data path never waits.
    pub fn flush(&mut self) {
        let n = self.tx_lens.len();
        if n == 0 {
            return;
        }
        // SAFETY: arrays of plain C structs; all-zero is a valid value.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let base = self.tx_buf.as_mut_ptr();
        for i in 0..n {
            // SAFETY: slot `i` lies inside tx_buf (BATCH slots).
            iov[i].iov_base = unsafe { base.add(i * self.slot) }.cast();
            iov[i].iov_len = self.tx_lens[i];
            msgs[i].msg_hdr.msg_iov = std::ptr::from_mut(&mut iov[i]);
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: headers `sent..n` point into tx_buf, alive for the
            // call; the socket is bound, so no address is needed.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[sent..].as_mut_ptr(),
                    u32::try_from(n - sent).unwrap_or(0),
                    libc::MSG_DONTWAIT,
                )
            };
            if rc <= 0 {
                let e = io::Error::last_os_error();
                if rc < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The frame at `sent` was refused (a full queue, too long
                // for the device): drop it and go on with the rest.
                self.counters.tx_dropped += 1;
                sent += 1;
                continue;
            }
            for len in &self.tx_lens[sent..sent + rc as usize] {
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += *len as u64;
            }
            sent += rc as usize;
        }
        self.tx_lens.clear();
    }
}

/// The VLAN tag the kernel took off a received frame, from its auxdata.
fn auxdata_tag(h: &libc::msghdr) -> Option<(u16, u16)> {
    // SAFETY: `h` was filled by recvmmsg; the CMSG_* macros walk its
    // control buffer within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                let aux = libc::CMSG_DATA(c)
                    .cast::<libc::tpacket_auxdata>()
                    .read_unaligned();
                let valid = aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0;
                if !valid && aux.tp_vlan_tci == 0 {
                    return None;
                }
                let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    aux.tp_vlan_tpid
                } else {
                    0x8100
                };
                return Some((tpid, aux.tp_vlan_tci));
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Waits until one of `fds` is readable or `timeout_ms` passes. Returns
/// whether any is.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> bool {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polls` holds `len` initialised pollfd entries.
    let rc = unsafe {
        libc::poll(
            polls.as_mut_ptr(),
            libc::nfds_t::try_from(polls.len()).unwrap_or(0),
            timeout_ms,
        )
    };
    rc > 0
}
