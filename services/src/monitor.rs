//! `monitor`: passes every frame, counts frames and bytes.

use crate::wire::{Function, Verdict};

/// The monitor function.
#[derive(Debug, Default)]
pub struct Monitor {
    /// Bytes seen.
    pub bytes: u64,
}

impl Function for Monitor {
    fn process(&mut self, frame: &mut [u8]) -> Verdict {
        self.bytes += frame.len() as u64;
        Verdict::Pass
    }
}
