//! Capture files written byte by byte, as other tools write them.

#![allow(dead_code)]

/// A libpcap file in the given byte order and timestamp precision.
pub(crate) fn pcap(big_endian: bool, nanos: bool, link: u32, frames: &[(&[u8], u32)]) -> Vec<u8> {
    let w32 = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let w16 = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut f = Vec::new();
    f.extend_from_slice(&w32(if nanos { 0xA1B2_3C4D } else { 0xA1B2_C3D4 }));
    f.extend_from_slice(&w16(2));
    f.extend_from_slice(&w16(4));
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&w32(65535));
    f.extend_from_slice(&w32(link));
    for (data, orig) in frames {
        f.extend_from_slice(&w32(1));
        f.extend_from_slice(&w32(2));
        f.extend_from_slice(&w32(data.len() as u32));
        f.extend_from_slice(&w32(*orig));
        f.extend_from_slice(data);
    }
    f
}

/// pcapng blocks in one byte order.
pub(crate) struct Ng {
    big: bool,
    pub(crate) out: Vec<u8>,
}

impl Ng {
    fn w32(&self, v: u32) -> [u8; 4] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    pub(crate) fn block(&mut self, ty: u32, body: &[u8]) -> &mut Self {
        let mut padded = body.to_vec();
        while !padded.len().is_multiple_of(4) {
            padded.push(0);
        }
        let total = 12 + padded.len() as u32;
        let (t, l) = (self.w32(ty), self.w32(total));
        self.out.extend_from_slice(&t);
        self.out.extend_from_slice(&l);
        self.out.extend_from_slice(&padded);
        self.out.extend_from_slice(&l);
        self
    }

    pub(crate) fn section(big: bool, out: Vec<u8>) -> Self {
        let mut ng = Self { big, out };
        let mut body = Vec::new();
        body.extend_from_slice(&ng.w32(0x1A2B_3C4D));
        body.extend_from_slice(&[0, 1, 0, 0]); // version 1.0 (order-agnostic enough)
        body.extend_from_slice(&[0xFF; 8]); // section length unknown
        // SHB type reads the same in both orders.
        ng.block(0x0A0D_0D0A, &body);
        ng
    }

    pub(crate) fn interface(&mut self, link: u16) -> &mut Self {
        let mut body = Vec::new();
        body.extend_from_slice(&if self.big {
            link.to_be_bytes()
        } else {
            link.to_le_bytes()
        });
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&self.w32(262_144));
        self.block(1, &body)
    }

    pub(crate) fn enhanced(&mut self, interface: u32, data: &[u8], orig: u32) -> &mut Self {
        let mut body = Vec::new();
        for v in [interface, 0, 0, data.len() as u32, orig] {
            body.extend_from_slice(&self.w32(v));
        }
        body.extend_from_slice(data);
        self.block(6, &body)
    }

    pub(crate) fn simple(&mut self, data: &[u8]) -> &mut Self {
        let mut body = self.w32(data.len() as u32).to_vec();
        body.extend_from_slice(data);
        self.block(3, &body)
    }
}
