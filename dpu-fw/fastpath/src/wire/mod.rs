//! Packet formats: zero-copy views, checked representations, the frame
//! parser the fast path runs on every packet, and the writers the data path
//! and the services use to change frames.
//!
//! One header per file, in the smoltcp style: `XxxPacket<B>` is a view over
//! a byte slice that only reads and writes fields and whose `new_checked`
//! guarantees every accessor stays in bounds; `XxxRepr` is the parsed,
//! checked form the rest of the code uses (`parse`, `emit`, `buffer_len`).
//! Raw headers are private zerocopy structs with network-endian fields.
//!
//! [`parse`] is the one entry point for whole frames: it returns the layer
//! offsets and flow keys of a [`ParsedFrame`], or a [`ParseError`] that says
//! what was wrong and at which offset. Nothing here panics, whatever the
//! bytes.

mod error;
mod frame;
mod framebuf;

pub mod build;
pub mod checksum;
pub mod ethernet;
pub mod geneve;
pub mod icmp;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod ipv6ext;
pub mod rewrite;
pub mod tcp;
pub mod udp;
pub mod vlan;
pub mod vxlan;

pub use error::{BufferTooShort, Context, Header, ParseError, ParseErrorKind};
pub use ethernet::{EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
pub use frame::{
    Fragment, IcmpError, Layers, Network, ParsedFrame, Tunnel, TunnelKind, parse, parse_into,
    parse_snapped,
};
pub use framebuf::{FrameBuf, FrameBufError};
pub use vlan::Tci;
pub use vxlan::Vni;

use zerocopy::{Immutable, IntoBytes, SplitByteSlice};

/// Whether a buffer holds whole packets, which decides what a declared
/// length (IPv4 total length, IPv6 payload length, UDP length) beyond the
/// end of the buffer means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Capture {
    /// The buffer holds the whole packet: a length beyond it is an error.
    /// This is what the data path sees.
    Whole,
    /// The buffer may stop short of declared lengths: a capture taken with
    /// a snap length, or the quote of the original packet in an ICMP error.
    /// Each header must still be whole.
    Snapped,
}

impl Capture {
    /// The first `len` bytes of `rest`, or what there is of them when
    /// snapped.
    fn cut<B: SplitByteSlice>(
        self,
        rest: B,
        len: usize,
        header: Header,
    ) -> Result<B, ParseErrorKind> {
        match rest.split_at(len) {
            Ok((head, _)) => Ok(head),
            Err(all) => match self {
                Self::Whole => Err(ParseErrorKind::LengthBeyondFrame(header)),
                Self::Snapped => Ok(all),
            },
        }
    }
}

/// Writes a raw header at the start of `buf`: the last step of every
/// `XxxRepr::emit`.
fn write_header<T: IntoBytes + Immutable>(
    buf: &mut [u8],
    header: &T,
) -> Result<(), BufferTooShort> {
    let bytes = header.as_bytes();
    let available = buf.len();
    buf.get_mut(..bytes.len())
        .ok_or(BufferTooShort {
            needed: bytes.len(),
            available,
        })?
        .copy_from_slice(bytes);
    Ok(())
}
