//! Raw frame I/O on Linux: how the DPU runtime's ports, the reference
//! service functions and the test rig receive and send frames.
//!
//! [`PacketIo`] is the seam at the hardware edge: [`afpacket`] implements
//! it for Linux network devices (the simulated rig's veths, kernel netdevs
//! on a DPU); the DPDK ports of a BlueField implement it too. Receiving
//! fills an [`RxBatch`]; sending queues and flushes in batches. A port
//! never blocks the data path: what it cannot send now is dropped and
//! counted.

pub mod afpacket;

use std::io;
use std::os::fd::RawFd;

/// What a port has moved.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PortCounters {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames not sent (queue full, too long).
    pub tx_dropped: u64,
    /// Frames received truncated or unusable.
    pub rx_errors: u64,
}

/// A port's packet I/O.
pub trait PacketIo: Send {
    /// Receives up to a batch of frames into `batch` (cleared first).
    ///
    /// # Errors
    /// The device failed (not: nothing to receive).
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize>;

    /// Queues a frame to send.
    fn send(&mut self, frame: &[u8]);

    /// Sends what is queued.
    fn flush(&mut self);

    /// What the port has moved.
    fn counters(&self) -> PortCounters;

    /// A descriptor that is readable when frames wait, for an idle data
    /// path to sleep on (`None`: poll it).
    fn readable_fd(&self) -> Option<RawFd>;

    /// Starts the device, once its flow rules' set-up allows (a DPDK port
    /// is configured stopped, then started).
    ///
    /// # Errors
    /// The device would not start.
    fn start(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Stops the device.
    fn stop(&mut self) {}

    /// True for the transfer proxy of a NIC's switch (started first,
    /// stopped last).
    fn transfer_proxy(&self) -> bool {
        false
    }

    /// The device's DPDK port number, if it is one.
    fn ethdev_id(&self) -> Option<u16> {
        None
    }
}

impl PacketIo for afpacket::AfPacket {
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        Self::recv(self, batch)
    }

    fn send(&mut self, frame: &[u8]) {
        Self::send(self, frame);
    }

    fn flush(&mut self) {
        Self::flush(self);
    }

    fn counters(&self) -> PortCounters {
        *Self::counters(self)
    }

    fn readable_fd(&self) -> Option<RawFd> {
        Some(self.raw_fd())
    }
}

/// Received frames: fixed slots of one buffer, each frame at some offset
/// within its slot so that headers can be pushed in front of it in place.
#[derive(Debug)]
pub struct RxBatch {
    buffer: Vec<u8>,
    slot: usize,
    /// (slot, start, length) of each frame received.
    frames: Vec<(usize, usize, usize)>,
}

impl RxBatch {
    /// A batch of `capacity` slots of `slot` bytes.
    #[must_use]
    pub fn new(capacity: usize, slot: usize) -> Self {
        Self {
            buffer: vec![0; capacity * slot],
            slot,
            frames: Vec::with_capacity(capacity),
        }
    }

    /// Slots.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.buffer.len() / self.slot.max(1)
    }

    /// Bytes per slot.
    #[must_use]
    pub const fn slot(&self) -> usize {
        self.slot
    }

    /// Frames held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True with no frames.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Forgets the frames.
    pub fn clear(&mut self) {
        self.frames.clear();
    }

    /// The whole buffer, for a receiver to fill.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buffer
    }

    /// Slot `i`, for a receiver to fill.
    ///
    /// # Panics
    /// If `i` is not a slot.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.buffer[i * self.slot..(i + 1) * self.slot]
    }

    /// Records that slot `i` holds a frame of `len` bytes from `start`.
    pub fn push(&mut self, i: usize, start: usize, len: usize) {
        self.frames.push((i, start, len));
    }

    /// Frame `n`: its whole slot, and where the frame is in it.
    pub fn frame_mut(&mut self, n: usize) -> Option<(&mut [u8], usize, usize)> {
        let (i, start, len) = *self.frames.get(n)?;
        let slot = self.slot;
        let buf = self.buffer.get_mut(i * slot..(i + 1) * slot)?;
        Some((buf, start, len))
    }

    /// Frame `n`'s bytes.
    #[must_use]
    pub fn frame(&self, n: usize) -> Option<&[u8]> {
        let (i, start, len) = *self.frames.get(n)?;
        self.buffer
            .get(i * self.slot + start..i * self.slot + start + len)
    }
}
