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
