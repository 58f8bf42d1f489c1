//! Bump in the wire: frames come in on the VF, a service function decides
//! each one's fate, what passes goes back out the same interface.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::Instant;

use chaingate_pktio::afpacket::{AfPacket, wait_readable};

use crate::cap::{Rate, TokenBucket};
use crate::stamp;
use chaingate_pktio::{PacketIo, RxBatch};

/// The largest frame taken (jumbo, with tags).
pub const SLOT: usize = 9216 + 64;

/// What a service function does with a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Back out, as it is now (a function may have rewritten it).
    Pass,
    /// Dropped (and counted).
    Drop,
}

/// A service function: sees every frame, may rewrite it in place.
pub trait Function: Send {
    /// Decides one frame.
    fn process(&mut self, frame: &mut [u8]) -> Verdict;
}

/// Frame counters, read by the probe.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames received.
    pub rx: AtomicU64,
    /// Frames sent back out.
    pub tx: AtomicU64,
    /// Frames dropped by the function.
    pub dropped: AtomicU64,
    /// Frames dropped by the bandwidth cap.
    pub capped: AtomicU64,
}

/// A copy of the counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Snapshot {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames over the cap.
    pub capped: u64,
}

impl Counters {
    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            rx: self.rx.load(Ordering::Relaxed),
            tx: self.tx.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            capped: self.capped.load(Ordering::Relaxed),
        }
    }
}

/// What every function can have done around it.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Frames over this rate are dropped (counted as `capped`).
    pub cap: Option<Rate>,
    /// This ID is added to each passing frame's trace trailer.
    pub stamp: Option<u16>,
}

/// Runs `function` on `iface` until `stop` is set.
///
/// # Errors
/// The interface cannot be opened, or receiving fails for good.
pub fn run(
    iface: &str,
    function: &mut dyn Function,
    options: &Options,
    counters: &Counters,
    stop: &Arc<AtomicBool>,
) -> io::Result<()> {
    let mut port = AfPacket::open(iface, SLOT).map_err(io::Error::other)?;
    let mut batch = RxBatch::new(32, SLOT);
    let mut bucket = options.cap.map(TokenBucket::new);
    let clock = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(&[port.raw_fd()], 100) {
            continue;
        }
        let n = PacketIo::recv(&mut port, &mut batch)?;
        counters.rx.fetch_add(n as u64, Ordering::Relaxed);
        for i in 0..n {
            let Some((slot, start, len)) = batch.frame_mut(i) else {
                continue;
            };
            if let Some(b) = bucket.as_mut()
                && !b.admit(len, clock.elapsed())
            {
                counters.capped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match function.process(&mut slot[start..start + len]) {
                Verdict::Pass => {
                    let len = options
                        .stamp
                        .and_then(|id| stamp::stamp(&mut slot[start..], len, id))
                        .unwrap_or(len);
                    port.send(&slot[start..start + len]);
                    counters.tx.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Drop => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        port.flush();
    }
    Ok(())
}
