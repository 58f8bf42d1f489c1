//! Raw frames on an interface of the test's namespace: what a host on the
//! lan or wan side sends and receives.

use std::io;
use std::time::{Duration, Instant};

use dpu_fw::io::afpacket::{AfPacket, wait_readable};
use dpu_fw::io::{PacketIo, RxBatch};

use crate::netns::in_netns;

/// Receive slots of an endpoint.
const SLOT: usize = 9216 + 64;

/// An interface to send and receive raw frames on.
#[derive(Debug)]
pub struct Endpoint {
    io: AfPacket,
    batch: RxBatch,
}

impl Endpoint {
    /// Opens `ifname` inside namespace `netns`.
    ///
    /// # Errors
    /// The namespace or the device cannot be opened.
    pub fn open(netns: &str, ifname: &str) -> io::Result<Self> {
        let io = in_netns(netns, || AfPacket::open(ifname, SLOT))?.map_err(io::Error::other)?;
        Ok(Self {
            io,
            batch: RxBatch::new(32, SLOT),
        })
    }

    /// Sends frames.
    pub fn send(&mut self, frames: &[Vec<u8>]) {
        for f in frames {
            self.io.send(f);
        }
        self.io.flush();
    }

    /// Receives frames until `want` have come or `within` has passed.
    pub fn receive(&mut self, want: usize, within: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ms = i32::try_from(left.as_millis().min(50)).unwrap_or(50);
            if !wait_readable(&[self.io.raw_fd()], ms) {
                continue;
            }
            if let Ok(n) = PacketIo::recv(&mut self.io, &mut self.batch) {
                for i in 0..n {
                    if let Some(f) = self.batch.frame(i) {
                        got.push(f.to_vec());
                    }
                }
            }
        }
        got
    }

    /// Frames that arrive within `within` (to show that nothing does).
    pub fn drain(&mut self, within: Duration) -> Vec<Vec<u8>> {
        self.receive(usize::MAX, within)
    }
}
