//! `dpu-fw flows`: one JSON object per frame of a capture, with the flow
//! keys the fast path reads from it. Operators use it to see how the
//! gateway will classify captured traffic; tests use it to check the
//! parser against real captures.
//!
//! Output, one line per frame, frame numbers from 1 as in tcpdump and
//! Wireshark:
//! `{"frame":1,"key":{"src":"10.0.0.1","dst":"10.0.0.2","proto":6,"sport":1234,"dport":80,"vlan":[100]},"inner":null,"error":null}`
//! `inner` is the key inside a VXLAN or Geneve tunnel. A frame that does not
//! parse has `"key":null` and `"error":"<what> at offset N"`. A frame
//! without IP (ARP, LLDP, ...) has neither key nor error. Frames of other
//! link types than Ethernet are skipped, with a note on stderr.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::IpAddr;

use chaingate_fastpath::wire::{parse, parse_snapped};
use chaingate_shared::FlowKey;
use serde::Serialize;

use crate::capture::{CaptureError, CaptureReader, LINKTYPE_ETHERNET};

/// A flow key as printed.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct KeyJson {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    vlan: Vec<u16>,
}

impl From<&FlowKey> for KeyJson {
    fn from(k: &FlowKey) -> Self {
        Self {
            src: k.src(),
            dst: k.dst(),
            proto: k.proto().number(),
            sport: k.src_port(),
            dport: k.dst_port(),
            vlan: k.vlans().as_slice().iter().map(|v| v.get()).collect(),
        }
    }
}

/// One output line.
#[derive(Serialize, Debug)]
pub struct FrameJson {
    frame: u64,
    key: Option<KeyJson>,
    inner: Option<KeyJson>,
    error: Option<String>,
}

/// The line for one Ethernet frame; `snapped` when the capture kept less
/// than the whole frame.
#[must_use]
pub fn frame_json(frame: u64, data: &[u8], snapped: bool) -> FrameJson {
    let parsed = if snapped {
        parse_snapped(data)
    } else {
        parse(data)
    };
    match parsed {
        Ok(p) => FrameJson {
            frame,
            key: p.key().map(KeyJson::from),
            inner: p.inner_key().map(KeyJson::from),
            error: None,
        },
        Err(e) => FrameJson {
            frame,
            key: None,
            inner: None,
            error: Some(e.to_string()),
        },
    }
}

/// What a dump went through.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames read (all link types).
    pub frames: u64,
    /// Frames skipped because they are not Ethernet, by link type.
    pub skipped: BTreeMap<u16, u64>,
    /// Why the capture stopped early, if it did.
    pub stopped: Option<String>,
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    /// The capture could not be opened or read at all.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The output could not be written.
    #[error("cannot write the flow dump")]
    Output(#[source] io::Error),
}

/// Writes one line per frame of `input` to `out`, and notes about skipped
/// frames to `notes`. A capture that turns out truncated or corrupt part
/// way stops there: what came before is written, and the summary says why
/// it stopped.
///
/// # Errors
/// [`FlowsError::Capture`] when the input is not a capture at all,
/// [`FlowsError::Output`] when writing fails.
pub fn dump(
    input: impl Read,
    out: &mut impl Write,
    notes: &mut impl Write,
) -> Result<Summary, FlowsError> {
    let mut reader = CaptureReader::new(input)?;
    let mut summary = Summary::default();
    loop {
        let record = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                summary.stopped = Some(e.to_string());
                break;
            }
        };
        summary.frames += 1;
        if record.link_type != LINKTYPE_ETHERNET {
            let n = summary.skipped.entry(record.link_type).or_insert(0);
            if *n == 0 {
                writeln!(
                    notes,
                    "note: frame {}: link type {} is not Ethernet; frames of this type are skipped",
                    summary.frames, record.link_type
                )
                .map_err(FlowsError::Output)?;
            }
            *n += 1;
            continue;
        }
        let line = frame_json(summary.frames, record.data, record.is_snapped());
        serde_json::to_writer(&mut *out, &line).map_err(|e| FlowsError::Output(e.into()))?;
        out.write_all(b"\n").map_err(FlowsError::Output)?;
    }
    out.flush().map_err(FlowsError::Output)?;
    Ok(summary)
}
