//! Ethdev ports: configured with one receive and one transmit queue, then
//! started (promiscuous) once the flow backend has configured its template
//! API (`rte_flow_configure` wants stopped ports); stopped and closed on
//! drop. [`DpdkIo`] makes one a [`PacketIo`] for the data path.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::Arc;

use super::{Eal, Errno, Mbuf, Mempool};
use crate::io::afpacket::{BATCH, HEADROOM};
use crate::io::{PacketIo, PortCounters, RxBatch};

/// Why a port could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// No ethdev of that name or number.
    #[error("no DPDK port \"{device}\" (ports: {known})")]
    NoSuchPort {
        /// What was asked for.
        device: String,
        /// The ports EAL found.
        known: String,
    },
    /// A setup call failed.
    #[error("DPDK port {device}: cannot {step}: {errno}")]
    Setup {
        /// The port.
        device: String,
        /// What was being done.
        step: &'static str,
        /// Why.
        errno: Errno,
    },
}

/// The name of a port.
fn port_name(id: u16) -> Option<String> {
    let mut buf = [0 as std::ffi::c_char; 64];
    // SAFETY: `buf` is larger than RTE_ETH_NAME_MAX_LEN (64 with the NUL).
    let rc = unsafe { dpdk_sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: on success the name is NUL-terminated inside `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The names of every port EAL found, for messages.
#[must_use]
pub fn known_ports(_eal: &Eal) -> Vec<String> {
    (0..u16::try_from(dpdk_sys::RTE_MAX_ETHPORTS).unwrap_or(u16::MAX))
        // SAFETY: any number may be asked about.
        .filter(|id| unsafe { dpdk_sys::rte_eth_dev_is_valid_port(*id) } != 0)
        .filter_map(port_name)
        .collect()
}

/// The port id of `device`: an ethdev name (`net_ring0`,
/// `0000:03:00.0_representor_vf0`) or a port number.
///
/// # Errors
/// [`PortError::NoSuchPort`].
pub fn find(eal: &Eal, device: &str) -> Result<u16, PortError> {
    let missing = || PortError::NoSuchPort {
        device: device.to_owned(),
        known: known_ports(eal).join(", "),
    };
    if let Ok(id) = device.parse::<u16>() {
        // SAFETY: any number may be asked about.
        return if unsafe { dpdk_sys::rte_eth_dev_is_valid_port(id) } != 0 {
            Ok(id)
        } else {
            Err(missing())
        };
    }
    let name = CString::new(device).map_err(|_| missing())?;
    let mut id = 0u16;
    // SAFETY: a valid name and out-pointer.
    let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(name.as_ptr(), &raw mut id) };
    if rc == 0 { Ok(id) } else { Err(missing()) }
}

/// An ethdev port.
#[derive(Debug)]
pub struct EthPort {
    id: u16,
    name: String,
    pool: Arc<Mempool>,
    started: bool,
}

impl EthPort {
    /// Configures `device` with one queue each way of `descriptors`
    /// entries, receiving into `pool`; [`EthPort::start`] starts it.
    ///
    /// # Errors
    /// [`PortError`] naming the step.
    pub fn open(
        eal: &Eal,
        device: &str,
        pool: Arc<Mempool>,
        descriptors: u16,
    ) -> Result<Self, PortError> {
        let id = find(eal, device)?;
        let fail = |step, ret: i32| PortError::Setup {
            device: device.to_owned(),
            step,
            errno: Errno::from_ret(ret),
        };
        // SAFETY: rte_eth_conf is plain data; all-zero is the default
        // configuration (no offloads, no RSS).
        let conf: dpdk_sys::rte_eth_conf = unsafe { std::mem::zeroed() };
        // SAFETY: a valid port and configuration.
        let rc = unsafe { dpdk_sys::rte_eth_dev_configure(id, 1, 1, &raw const conf) };
        if rc < 0 {
            return Err(fail("configure it", rc));
        }
        // SAFETY: a valid port.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(id) };
        let socket = u32::try_from(socket).unwrap_or(u32::MAX); // SOCKET_ID_ANY
        // SAFETY: a configured port, a live pool (kept alive by `pool` for
        // as long as the port), default queue configurations.
        let rc = unsafe {
            dpdk_sys::rte_eth_rx_queue_setup(
                id,
                0,
                descriptors,
                socket,
                std::ptr::null(),
                pool.as_ptr(),
            )
        };
        if rc < 0 {
            return Err(fail("set its receive queue up", rc));
        }
        // SAFETY: as above.
        let rc = unsafe {
            dpdk_sys::rte_eth_tx_queue_setup(id, 0, descriptors, socket, std::ptr::null())
        };
        if rc < 0 {
            return Err(fail("set its transmit queue up", rc));
        }
        Ok(Self {
            id,
            name: port_name(id).unwrap_or_else(|| device.to_owned()),
            pool,
            started: false,
        })
    }

    /// Starts the port (promiscuous where the driver can).
    ///
    /// # Errors
    /// [`PortError::Setup`].
    pub fn start(&mut self) -> Result<(), PortError> {
        if self.started {
            return Ok(());
        }
        // SAFETY: a configured port with its queues.
        let rc = unsafe { dpdk_sys::rte_eth_dev_start(self.id) };
        if rc < 0 {
            return Err(PortError::Setup {
                device: self.name.clone(),
                step: "start it",
                errno: Errno::from_ret(rc),
            });
        }
        self.started = true;
        // Drivers without promiscuous mode (net_ring) take everything
        // anyway: a refusal here is not an error.
        // SAFETY: a started port.
        let _ = unsafe { dpdk_sys::rte_eth_promiscuous_enable(self.id) };
        Ok(())
    }

    /// Stops the port (representors before their proxy, mlx5.rst).
    pub fn stop(&mut self) {
        if self.started {
            // SAFETY: the port is ours and started.
            let _ = unsafe { dpdk_sys::rte_eth_dev_stop(self.id) };
            self.started = false;
        }
    }

    /// True for the transfer proxy of its eSwitch (or a port without one).
    #[must_use]
    pub fn is_proxy(&self) -> bool {
        let mut proxy = self.id;
        let mut e = dpdk_sys::rte_flow_error {
            type_: 0,
            cause: std::ptr::null(),
            message: std::ptr::null(),
        };
        // SAFETY: a valid port and out-pointers.
        let rc =
            unsafe { dpdk_sys::rte_flow_pick_transfer_proxy(self.id, &raw mut proxy, &raw mut e) };
        rc != 0 || proxy == self.id
    }

    /// The port id.
    #[must_use]
    pub const fn id(&self) -> u16 {
        self.id
    }

    /// The ethdev name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool it receives into.
    #[must_use]
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// The driver's counters.
    #[must_use]
    pub fn stats(&self) -> dpdk_sys::rte_eth_stats {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: a valid port and out-pointer.
        let _ = unsafe { dpdk_sys::rte_eth_stats_get(self.id, &raw mut s) };
        s
    }
}

impl Drop for EthPort {
    fn drop(&mut self) {
        self.stop();
        // SAFETY: the port is ours; nothing uses it after this.
        unsafe {
            let _ = dpdk_sys::rte_eth_dev_close(self.id);
        }
    }
}

/// A DPDK port as the data path's packet I/O: frames are copied out of
/// received mbufs into the data path's buffers (a tag the driver stripped
/// is put back), and into fresh mbufs to send.
#[derive(Debug)]
pub struct DpdkIo {
    port: EthPort,
    tx: Vec<Mbuf>,
    counters: PortCounters,
}

impl DpdkIo {
    /// The data path's I/O over `port`.
    #[must_use]
    pub fn new(port: EthPort) -> Self {
        Self {
            port,
            tx: Vec::with_capacity(BATCH),
            counters: PortCounters::default(),
        }
    }

    /// The port.
    #[must_use]
    pub const fn port(&self) -> &EthPort {
        &self.port
    }
}

impl PacketIo for DpdkIo {
    fn start(&mut self) -> std::io::Result<()> {
        self.port
            .start()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn stop(&mut self) {
        self.port.stop();
    }

    fn transfer_proxy(&self) -> bool {
        self.port.is_proxy()
    }

    fn ethdev_id(&self) -> Option<u16> {
        Some(self.port.id)
    }

    fn recv(&mut self, batch: &mut RxBatch) -> std::io::Result<usize> {
        batch.clear();
        let mut raw = [std::ptr::null_mut::<dpdk_sys::rte_mbuf>(); BATCH];
        let want = u16::try_from(batch.capacity().min(BATCH)).unwrap_or(0);
        // SAFETY: `raw` has room for `want` pointers; the port is started.
        let n = unsafe { dpdk_sys::cg_rx_burst(self.port.id, 0, raw.as_mut_ptr(), want) };
        let room = batch.slot().saturating_sub(HEADROOM);
        for (i, r) in raw.iter().take(usize::from(n)).enumerate() {
            let Some(r) = NonNull::new(*r) else { continue };
            // SAFETY: the burst handed these mbufs to us.
            let m = unsafe { Mbuf::from_raw(r) };
            let data = m.data();
            let (tags, n_tags) = m.stripped_vlans().tags(data);
            let len = data.len() + 4 * n_tags;
            if m.segments() != 1 || len > room || data.len() < 12 || HEADROOM < 4 * n_tags {
                self.counters.rx_errors += 1;
                continue;
            }
            let slot = batch.slot_mut(i);
            // The tags a driver stripped go back between the addresses and
            // the EtherType, with their TPIDs (802.1ad kept as 0x88A8).
            let start = HEADROOM - 4 * n_tags;
            slot[start..start + 12].copy_from_slice(&data[..12]);
            for (k, (tpid, tci)) in tags.iter().take(n_tags).enumerate() {
                let at = start + 12 + 4 * k;
                slot[at..at + 2].copy_from_slice(&tpid.to_be_bytes());
                slot[at + 2..at + 4].copy_from_slice(&tci.to_be_bytes());
            }
            let rest = start + 12 + 4 * n_tags;
            slot[rest..rest + data.len() - 12].copy_from_slice(&data[12..]);
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += len as u64;
            batch.push(i, start, len);
        }
        Ok(batch.len())
    }

    fn send(&mut self, frame: &[u8]) {
        let Some(mut m) = self.port.pool.alloc() else {
            self.counters.tx_dropped += 1;
            return;
        };
        if m.fill(frame).is_none() {
            self.counters.tx_dropped += 1;
            return;
        }
        self.tx.push(m);
        if self.tx.len() == BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        let mut raw = [std::ptr::null_mut::<dpdk_sys::rte_mbuf>(); BATCH];
        let mut lens = [0usize; BATCH];
        let mut n = 0;
        for (m, (r, len)) in self.tx.drain(..).zip(raw.iter_mut().zip(lens.iter_mut())) {
            *len = m.data().len();
            *r = m.into_raw();
            n += 1;
        }
        // SAFETY: `raw` holds `n` mbufs we own; the driver takes those it
        // sends.
        let sent = usize::from(unsafe {
            dpdk_sys::cg_tx_burst(
                self.port.id,
                0,
                raw.as_mut_ptr(),
                u16::try_from(n).unwrap_or(0),
            )
        });
        for len in lens.iter().take(sent) {
            self.counters.tx_packets += 1;
            self.counters.tx_bytes += *len as u64;
        }
        // What the driver did not take is still ours: free it.
        for r in raw.iter().take(n).skip(sent) {
            if let Some(r) = NonNull::new(*r) {
                // SAFETY: not sent, so still owned here.
                drop(unsafe { Mbuf::from_raw(r) });
                self.counters.tx_dropped += 1;
            }
        }
    }

    fn counters(&self) -> PortCounters {
        self.counters
    }

    fn readable_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}
