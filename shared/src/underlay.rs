//! The underlay between DPUs: how a frame for a service instance behind
//! another DPU travels, and what its VXLAN header says.
//!
//! A hop whose instance sits behind another DPU (a peer) is reached over
//! VXLAN (RFC 7348) between the two DPUs' underlay addresses. The inner
//! frame is the customer's frame without the segment tag; the 24-bit VNI
//! carries what the peer needs instead:
//!
//! ```text
//!  23            12   11   10  8  7        0
//! | segment tag (VID) | R | 000 | slot      |
//! ```
//!
//! - segment tag: the segment (chain, hop, direction) as the sender tags
//!   it. Every DPU of a cluster derives the same tags from the same chains
//!   (see [`crate::Config::layout`]), so the tag names the segment on both.
//! - R: 0 on the way to the instance (deliver), 1 on the way back to the
//!   DPU that sent it (return).
//! - slot: the instance's port on the DPU it is attached to (its
//!   representor's index there), so the receiver knows the instance
//!   without a table shared with the sender.
//!
//! The DPU that owns the session (the one whose uplink saw the packet)
//! makes every decision; the peer only delivers to the instance and sends
//! what comes back to the DPU it came from, statelessly: it tags the frame
//! it delivers with a guest tag that stands for (sender, segment)
//! ([`crate::Config::guest_tag`]), and the instance keeps the tag, as it
//! keeps a segment tag. A rewritten frame (NAT) therefore finds its way
//! back too.
//!
//! VXLAN and not Geneve: mlx5 matches the VNI and decapsulates VXLAN in
//! hardware steering on every BlueField generation, while Geneve options
//! need the flex parser; the 24 bits are enough.

use crate::VlanId;

/// The IANA UDP port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;

/// Bytes the outer headers add to a frame: Ethernet (14), IPv4 (20), UDP
/// (8), VXLAN (8).
pub const OVERHEAD: usize = 50;

/// Bytes the outer headers add to the IP packet the underlay carries: the
/// underlay's MTU must be at least the largest inner frame plus this.
pub const IP_OVERHEAD: usize = OVERHEAD - 14;

/// Which way a frame travels on the underlay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Leg {
    /// To the instance, from the DPU that owns the session.
    Deliver,
    /// Back from the instance, to the DPU that sent it.
    Return,
}

/// What a VNI says.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Vni {
    /// The segment's tag.
    pub segment: VlanId,
    /// The way the frame travels.
    pub leg: Leg,
    /// The instance's port on the DPU it is attached to.
    pub slot: u8,
}

impl Vni {
    /// The 24-bit VNI.
    #[must_use]
    pub const fn encode(self) -> u32 {
        let r = match self.leg {
            Leg::Deliver => 0,
            Leg::Return => 1,
        };
        ((self.segment.get() as u32) << 12) | (r << 11) | self.slot as u32
    }

    /// Reads a VNI; `None` when it cannot be one of ours (reserved bits
    /// set, no segment, more than 24 bits).
    #[must_use]
    pub fn decode(vni: u32) -> Option<Self> {
        if vni >> 24 != 0 || vni & 0x700 != 0 {
            return None;
        }
        let segment = VlanId::new(u16::try_from(vni >> 12).ok()?)?;
        if segment.get() == 0 {
            return None;
        }
        let leg = if vni & 0x800 == 0 {
            Leg::Deliver
        } else {
            Leg::Return
        };
        Some(Self {
            segment,
            leg,
            slot: u8::try_from(vni & 0xFF).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vni_reads_back_as_written() {
        for leg in [Leg::Deliver, Leg::Return] {
            for (tag, slot) in [(2, 0), (4094, 255), (100, 7)] {
                let v = Vni {
                    segment: VlanId::new(tag).unwrap(),
                    leg,
                    slot,
                };
                assert!(v.encode() < 1 << 24);
                assert_eq!(Vni::decode(v.encode()), Some(v));
            }
        }
        let v = Vni {
            segment: VlanId::new(0x123).unwrap(),
            leg: Leg::Return,
            slot: 0x45,
        };
        assert_eq!(v.encode(), 0x0012_3845);
    }

    #[test]
    fn foreign_vnis_are_not_read() {
        // Reserved bits, no segment, beyond 24 bits.
        assert_eq!(Vni::decode(0x0012_3100), None);
        assert_eq!(Vni::decode(0x0000_0005), None);
        assert_eq!(Vni::decode(0x0100_2005), None);
    }
}
