//! Packet buffers: a pool of mbufs, and an owned mbuf that returns to its
//! pool when dropped.

use std::ffi::CString;
use std::ptr::NonNull;

use super::{Eal, Errno};

/// A pool of packet buffers (`rte_pktmbuf_pool_create`), freed on drop.
#[derive(Debug)]
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
    size: u32,
}

// SAFETY: a mempool is made for use from several threads (lock-free rings
// and per-lcore caches); this handle only frees it, once, on drop.
unsafe impl Send for Mempool {}
// SAFETY: as above: every operation through a shared handle is one of
// DPDK's thread-safe mempool calls.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// A pool of `size` mbufs of the default data room (2,048 bytes plus
    /// headroom), named `name` (unique in the process).
    ///
    /// # Errors
    /// EAL's errno (no memory, a name taken).
    pub fn new(_eal: &Eal, name: &str, size: u32) -> Result<Self, Errno> {
        let cname = CString::new(name).map_err(|_| Errno(libc::EINVAL))?;
        let room = u16::try_from(dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE).unwrap_or(2176);
        // SAFETY: a valid name; EAL runs (the `_eal` proof). SOCKET_ID_ANY
        // is -1.
        let raw = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), size, 256.min(size / 2), 0, room, -1)
        };
        NonNull::new(raw)
            .map(|raw| Self { raw, size })
            .ok_or_else(Errno::last)
    }

    /// The pool's pointer, for DPDK calls.
    #[must_use]
    pub const fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }

    /// Mbufs in the pool (free).
    #[must_use]
    pub fn available(&self) -> u32 {
        // SAFETY: a live pool.
        unsafe { dpdk_sys::cg_mempool_avail(self.raw.as_ptr()) }
    }

    /// Mbufs the pool was made with.
    #[must_use]
    pub const fn size(&self) -> u32 {
        self.size
    }

    /// A fresh, empty mbuf.
    #[must_use]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: a live pool.
        NonNull::new(unsafe { dpdk_sys::cg_pktmbuf_alloc(self.raw.as_ptr()) })
            .map(|raw| Mbuf { raw })
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the pool is ours; every port using it holds an Arc of
        // this handle, so none is left when it drops.
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) };
    }
}

/// The VLAN tags a driver stripped (their TCIs, outermost first).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stripped {
    /// None.
    None,
    /// One tag (`RTE_MBUF_F_RX_VLAN_STRIPPED`).
    One(u16),
    /// Both tags of a QinQ frame (`RTE_MBUF_F_RX_QINQ_STRIPPED`).
    Two(u16, u16),
}

impl Stripped {
    /// The tags to put back in front of `data`'s EtherType, outermost
    /// first, as (TPID, TCI), and how many there are. The mbuf keeps TCIs,
    /// not TPIDs: two stripped tags are a QinQ pair (802.1ad outer, 802.1Q
    /// inner); a single one is 802.1ad when another tag still follows it
    /// (it was a QinQ frame's service tag), 802.1Q otherwise.
    #[must_use]
    pub fn tags(self, data: &[u8]) -> ([(u16, u16); 2], usize) {
        const Q: u16 = 0x8100;
        const AD: u16 = 0x88A8;
        let next = data
            .get(12..14)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        match self {
            Self::None => ([(0, 0); 2], 0),
            Self::One(tci) => {
                let tpid = if next == Q || next == AD { AD } else { Q };
                ([(tpid, tci), (0, 0)], 1)
            }
            Self::Two(outer, inner) => ([(AD, outer), (Q, inner)], 2),
        }
    }
}

/// One owned mbuf (possibly a chain of segments); freed on drop.
#[derive(Debug)]
pub struct Mbuf {
    raw: NonNull<dpdk_sys::rte_mbuf>,
}

// SAFETY: an mbuf has one owner at a time; moving it to another thread
// moves that ownership.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf from a receive burst.
    ///
    /// # Safety
    /// `raw` is a valid mbuf nobody else owns.
    #[must_use]
    pub const unsafe fn from_raw(raw: NonNull<dpdk_sys::rte_mbuf>) -> Self {
        Self { raw }
    }

    /// Gives ownership up (to a transmit burst).
    #[must_use]
    pub fn into_raw(self) -> *mut dpdk_sys::rte_mbuf {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// The first segment's bytes.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        // SAFETY: the first segment holds data_len bytes at its data
        // pointer, alive while we own the mbuf.
        unsafe {
            let len = usize::from(dpdk_sys::cg_pktmbuf_data_len(self.raw.as_ptr()));
            std::slice::from_raw_parts(dpdk_sys::cg_pktmbuf_data(self.raw.as_ptr()), len)
        }
    }

    /// The whole packet's length (all segments).
    #[must_use]
    pub fn pkt_len(&self) -> u32 {
        // SAFETY: a live mbuf.
        unsafe { dpdk_sys::cg_pktmbuf_pkt_len(self.raw.as_ptr()) }
    }

    /// Segments in the chain.
    #[must_use]
    pub fn segments(&self) -> u16 {
        // SAFETY: a live mbuf.
        unsafe { dpdk_sys::cg_pktmbuf_nb_segs(self.raw.as_ptr()) }
    }

    /// The VLAN tags the driver took off the packet, outermost first
    /// (TCIs).
    #[must_use]
    pub fn stripped_vlans(&self) -> Stripped {
        let (mut outer, mut tci) = (0u16, 0u16);
        // SAFETY: a live mbuf; valid out-pointers.
        let n = unsafe {
            dpdk_sys::cg_pktmbuf_vlan_stripped(self.raw.as_ptr(), &raw mut outer, &raw mut tci)
        };
        match n {
            2 => Stripped::Two(outer, tci),
            1 => Stripped::One(tci),
            _ => Stripped::None,
        }
    }

    /// Sets the data to `bytes` (an empty mbuf fresh from its pool);
    /// `None` when the mbuf has no room for them.
    #[must_use]
    pub fn fill(&mut self, bytes: &[u8]) -> Option<()> {
        let len = u16::try_from(bytes.len()).ok()?;
        // SAFETY: a live mbuf; append returns a pointer to `len` writable
        // bytes inside its buffer, or NULL without room.
        unsafe {
            let at = dpdk_sys::cg_pktmbuf_append(self.raw.as_ptr(), len);
            if at.is_null() {
                return None;
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len());
        }
        Some(())
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; free returns its segments to their pool.
        unsafe { dpdk_sys::cg_pktmbuf_free(self.raw.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::Stripped;

    fn frame(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    #[test]
    fn stripped_tags_come_back_with_their_tpids() {
        assert_eq!(Stripped::None.tags(&frame(0x0800)).1, 0);
        // A single tag over an IP packet: 802.1Q.
        assert_eq!(
            Stripped::One(7).tags(&frame(0x0800)),
            ([(0x8100, 7), (0, 0)], 1)
        );
        // A single tag over another tag: the service tag of a QinQ frame.
        assert_eq!(
            Stripped::One(7).tags(&frame(0x8100)),
            ([(0x88A8, 7), (0, 0)], 1)
        );
        // Both tags stripped: 802.1ad outside, 802.1Q inside.
        assert_eq!(
            Stripped::Two(100, 200).tags(&frame(0x0800)),
            ([(0x88A8, 100), (0x8100, 200)], 2)
        );
    }
}
