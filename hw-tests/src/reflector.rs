//! A stand-in for a service instance: bump in the wire, every frame goes
//! back out the interface it came in on (tag and all), and is counted.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use dpu_fw::io::afpacket::{AfPacket, wait_readable};
use dpu_fw::io::{PacketIo, RxBatch};

use crate::netns::in_netns;

/// A running reflector; stops when dropped.
#[derive(Debug)]
pub struct Reflector {
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    tags: Arc<Mutex<BTreeSet<Option<u16>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reflector {
    /// Starts reflecting on `ifname` in namespace `netns`.
    ///
    /// # Errors
    /// The device cannot be opened.
    pub fn start(netns: &str, ifname: &str) -> io::Result<Self> {
        let mut io =
            in_netns(netns, || AfPacket::open(ifname, 9216 + 64))?.map_err(io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let tags = Arc::new(Mutex::new(BTreeSet::new()));
        let thread = {
            let (stop, seen, tags) = (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&tags));
            std::thread::spawn(move || {
                let mut batch = RxBatch::new(32, 9216 + 64);
                while !stop.load(Ordering::Relaxed) {
                    if !wait_readable(&[io.raw_fd()], 20) {
                        continue;
                    }
                    let Ok(n) = PacketIo::recv(&mut io, &mut batch) else {
                        continue;
                    };
                    for i in 0..n {
                        if let Some(f) = batch.frame(i) {
                            io.send(f);
                            seen.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut t) = tags.lock() {
                                t.insert(crate::frames::outer_vlan(f));
                            }
                        }
                    }
                    io.flush();
                }
            })
        };
        Ok(Self {
            stop,
            seen,
            tags,
            thread: Some(thread),
        })
    }

    /// Frames reflected so far.
    #[must_use]
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// The outer VLAN ids of the frames seen (`None`: untagged).
    #[must_use]
    pub fn tags(&self) -> BTreeSet<Option<u16>> {
        self.tags.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
