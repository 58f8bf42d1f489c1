//! Any bytes as a capture file: the reader and the flow dump must not
//! panic, and never hand out a record larger than the reader's limit.

#![no_main]

use dpu_fw::capture::{CaptureReader, MAX_RECORD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut reader) = CaptureReader::new(data) {
        while let Ok(Some(record)) = reader.next_record() {
            assert!(record.data.len() <= MAX_RECORD);
        }
    }
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let _ = dpu_fw::flows::dump(data, &mut out, &mut notes);
});
