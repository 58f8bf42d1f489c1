//! Writers for what NAT and rule actions change in place: IP addresses, L4
//! ports and the ICMP echo identifier, with every checksum that covers the
//! changed bytes updated incrementally (RFC 1624), so the cost does not
//! depend on the payload length.
//!
//! Which checksums cover what:
//! - IPv4 address: the IPv4 header checksum, and the TCP/UDP checksum
//!   through the pseudo-header (ICMPv4 has none).
//! - IPv6 address: the TCP, UDP and ICMPv6 checksums (pseudo-header).
//! - Ports: the TCP/UDP checksum. Echo identifier: the ICMP checksum.
//!
//! A UDP checksum of zero means "not computed" and stays zero; a computed
//! zero is written as 0xFFFF (RFC 768). After a non-first fragment there is
//! no transport header to update; a first fragment's transport checksum
//! covers the whole datagram and its incremental update is still right.
//! An ICMP error's quote is left as it is.
//!
//! The functions take the [`Layers`] of the frame from [`super::parse`]
//! (the outer ones, or a tunnel's inner ones). A tunnel's outer UDP
//! checksum, when not zero, is not updated for inner changes.

use core::fmt;
use core::net::IpAddr;

use chaingate_shared::IpProtocol;

use super::checksum;
use super::{Layers, Network};

/// Why a rewrite could not be done. The frame is unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RewriteError {
    /// The layers have no IP header.
    NotIp,
    /// An IPv4 address for an IPv6 packet, or the reverse.
    FamilyMismatch,
    /// No transport header with this field (non-first fragment, or a
    /// protocol without ports or echo identifier).
    NoSuchField,
    /// The frame is shorter than its layers say (layers of another frame).
    OutOfBounds,
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotIp => "frame has no ip header",
            Self::FamilyMismatch => "address family differs from the packet's",
            Self::NoSuchField => "packet has no such transport field",
            Self::OutOfBounds => "frame is shorter than its parsed layers",
        })
    }
}

impl core::error::Error for RewriteError {}

/// Which end of the flow a field belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum End {
    /// Source address or port.
    Src,
    /// Destination address or port.
    Dst,
}

/// A checksum field that covers a rewritten field.
#[derive(Clone, Copy)]
struct Covering {
    offset: usize,
    /// UDP rules: zero means absent, a computed zero is sent as all ones.
    udp: bool,
}

/// Sets the source or destination IP address.
///
/// # Errors
/// See [`RewriteError`]; on error the frame is unchanged.
pub fn set_addr(
    frame: &mut [u8],
    layers: &Layers,
    end: End,
    addr: IpAddr,
) -> Result<(), RewriteError> {
    let l4 = transport_checksum(layers, true);
    match (layers.network(), addr) {
        (Network::Ipv4(l3), IpAddr::V4(a)) => {
            let at = l3 + if end == End::Src { 12 } else { 16 };
            let ip = Covering {
                offset: l3 + 10,
                udp: false,
            };
            replace(frame, at, &a.octets(), &[Some(ip), l4])
        }
        (Network::Ipv6(l3), IpAddr::V6(a)) => {
            let at = l3 + if end == End::Src { 8 } else { 24 };
            replace(frame, at, &a.octets(), &[l4])
        }
        (Network::Ipv4(_) | Network::Ipv6(_), _) => Err(RewriteError::FamilyMismatch),
        _ => Err(RewriteError::NotIp),
    }
}

/// Sets the TCP or UDP source or destination port.
///
/// # Errors
/// [`RewriteError::NoSuchField`] for other protocols or non-first
/// fragments; on error the frame is unchanged.
pub fn set_port(
    frame: &mut [u8],
    layers: &Layers,
    end: End,
    port: u16,
) -> Result<(), RewriteError> {
    let l4 = layers.transport_offset().ok_or(RewriteError::NoSuchField)?;
    match layers.protocol() {
        Some(IpProtocol::Tcp | IpProtocol::Udp) => {
            let at = l4 + if end == End::Src { 0 } else { 2 };
            replace(
                frame,
                at,
                &port.to_be_bytes(),
                &[transport_checksum(layers, false)],
            )
        }
        _ => Err(RewriteError::NoSuchField),
    }
}

/// Sets the identifier of an ICMP or ICMPv6 echo request or reply.
///
/// # Errors
/// [`RewriteError::NoSuchField`] for other messages; on error the frame is
/// unchanged.
pub fn set_echo_ident(frame: &mut [u8], layers: &Layers, ident: u16) -> Result<(), RewriteError> {
    let l4 = layers.transport_offset().ok_or(RewriteError::NoSuchField)?;
    let is_echo = match (layers.protocol(), frame.get(l4)) {
        (Some(IpProtocol::Icmp), Some(&ty)) => ty == 0 || ty == 8,
        (Some(IpProtocol::Icmpv6), Some(&ty)) => ty == 128 || ty == 129,
        _ => false,
    };
    if !is_echo {
        return Err(RewriteError::NoSuchField);
    }
    let ck = Covering {
        offset: l4 + 2,
        udp: false,
    };
    replace(frame, l4 + 4, &ident.to_be_bytes(), &[Some(ck)])
}

/// The transport checksum that covers ports, and (when `pseudo`) the
/// addresses through the pseudo-header.
fn transport_checksum(layers: &Layers, pseudo: bool) -> Option<Covering> {
    let l4 = layers.transport_offset()?;
    let (offset, udp) = match layers.protocol()? {
        IpProtocol::Tcp => (16, false),
        IpProtocol::Udp => (6, true),
        // ICMPv6 covers the pseudo-header; ICMPv4 covers no address.
        IpProtocol::Icmpv6 if pseudo => (2, false),
        _ => return None,
    };
    Some(Covering {
        offset: l4 + offset,
        udp,
    })
}

/// Replaces `frame[at..at + new.len()]` with `new` and updates the
/// checksums that cover it. Checks every bound before writing anything.
fn replace(
    frame: &mut [u8],
    at: usize,
    new: &[u8],
    covering: &[Option<Covering>],
) -> Result<(), RewriteError> {
    let mut old = [0u8; 16];
    let old = old.get_mut(..new.len()).ok_or(RewriteError::OutOfBounds)?;
    old.copy_from_slice(
        frame
            .get(at..at + new.len())
            .ok_or(RewriteError::OutOfBounds)?,
    );
    for c in covering.iter().flatten() {
        frame
            .get(c.offset..c.offset + 2)
            .ok_or(RewriteError::OutOfBounds)?;
    }
    for c in covering.iter().flatten() {
        let Some([hi, lo]) = frame.get_mut(c.offset..c.offset + 2) else {
            continue;
        };
        let current = u16::from_be_bytes([*hi, *lo]);
        if c.udp && current == 0 {
            continue;
        }
        let mut updated = checksum::update(current, old, new);
        if c.udp && updated == 0 {
            updated = 0xFFFF;
        }
        [*hi, *lo] = updated.to_be_bytes();
    }
    if let Some(field) = frame.get_mut(at..at + new.len()) {
        field.copy_from_slice(new);
    }
    Ok(())
}
