//! Rate-limited traffic for the scaling scenarios: a thread that sends a
//! set of frames round-robin at a packet rate from an interface of the
//! test's namespace, until stopped.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chaingate_pktio::afpacket::AfPacket;

use crate::netns::in_netns;

/// A running sender; stops when dropped.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    /// Sends `frames` round-robin at `pps` packets per second from `ifname`
    /// in namespace `netns`, in 10 ms batches.
    ///
    /// # Errors
    /// The interface cannot be opened.
    pub fn start(netns: &str, ifname: &str, frames: Vec<Vec<u8>>, pps: u32) -> io::Result<Self> {
        let mut port =
            in_netns(netns, || AfPacket::open(ifname, 2048))?.map_err(io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut next = 0usize;
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) && !frames.is_empty() {
                    // Frames due by now, at the rate from the start.
                    let due = (start.elapsed().as_secs_f64() * f64::from(pps)) as u64;
                    while done < due {
                        port.send(&frames[next % frames.len()]);
                        next += 1;
                        done += 1;
                    }
                    port.flush();
                    sent.store(done, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Ok(Self {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Frames sent so far.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counts the frames arriving on an interface of the test's namespace,
/// and those whose IPv4 source is `mark` (a NAT's address, say).
#[derive(Debug)]
pub struct Sink {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    marked: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts counting on `ifname` in `netns`.
    ///
    /// # Errors
    /// The interface cannot be opened.
    pub fn start(netns: &str, ifname: &str, mark: std::net::Ipv4Addr) -> io::Result<Self> {
        use chaingate_pktio::afpacket::wait_readable;
        use chaingate_pktio::{PacketIo, RxBatch};
        let mut port =
            in_netns(netns, || AfPacket::open(ifname, 2048))?.map_err(io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let marked = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, seen, marked) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&marked));
            std::thread::spawn(move || {
                let mut batch = RxBatch::new(64, 2048);
                while !stop.load(Ordering::Relaxed) {
                    if !wait_readable(&[port.raw_fd()], 50) {
                        continue;
                    }
                    let Ok(n) = PacketIo::recv(&mut port, &mut batch) else {
                        continue;
                    };
                    seen.fetch_add(n as u64, Ordering::Relaxed);
                    let m = (0..n)
                        .filter_map(|i| batch.frame(i))
                        .filter(|f| {
                            f.len() >= 30 && f[12..14] == [0x08, 0x00] && f[26..30] == mark.octets()
                        })
                        .count();
                    marked.fetch_add(m as u64, Ordering::Relaxed);
                }
            })
        };
        Ok(Self {
            stop,
            seen,
            marked,
            thread: Some(thread),
        })
    }

    /// Frames seen so far, and how many of them came from the mark.
    #[must_use]
    pub fn counts(&self) -> (u64, u64) {
        (
            self.seen.load(Ordering::Relaxed),
            self.marked.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
