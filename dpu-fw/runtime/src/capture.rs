//! Reading capture files: libpcap (`.pcap`) and pcapng, as written by
//! tcpdump, Wireshark and dumpcap.
//!
//! Formats: libpcap is a 24-byte file header (magic 0xA1B2C3D4 for
//! microseconds or 0xA1B23C4D for nanoseconds, in the writer's byte order)
//! then records of a 16-byte header (time, captured length, original
//! length) and the bytes. pcapng (draft-ietf-opsawg-pcapng) is a sequence
//! of blocks `type, total length, body, total length`; a section header
//! block (0x0A0D0D0A) sets the byte order and starts a new list of
//! interfaces; interface description blocks (1) give each interface's link
//! type; enhanced (6), simple (3) and the obsolete packet blocks (2) carry
//! frames; every other block is skipped.
//!
//! The reader streams (one record buffer, reused) and trusts no length in
//! the file: a record or block larger than [`MAX_RECORD`] is corruption,
//! never an allocation, and a file that ends inside a record says so.

use std::io::{self, ErrorKind, Read, Write};

/// The largest record or block the reader accepts (tcpdump's maximum snap
/// length, 256 KiB, plus room for pcapng options).
pub const MAX_RECORD: usize = 256 * 1024 + 4096;

/// LINKTYPE_ETHERNET: the only link type whose frames the gateway parses.
pub const LINKTYPE_ETHERNET: u16 = 1;

/// Why a capture cannot be read (further).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be read.
    #[error("cannot read the capture")]
    Io(#[source] io::Error),
    /// The first bytes are neither pcap nor pcapng.
    #[error("not a pcap or pcapng capture (first bytes {0:02x?})")]
    NotACapture([u8; 4]),
    /// The file ends inside a header or record.
    #[error("capture ends inside {what} at byte {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Byte offset in the file where it started.
        offset: u64,
    },
    /// A length field is impossible.
    #[error("corrupt capture: {what} of {len} bytes at byte {offset}")]
    BadLength {
        /// Which length.
        what: &'static str,
        /// Its value.
        len: u64,
        /// Byte offset in the file of the record or block.
        offset: u64,
    },
    /// A pcapng packet names an interface that was not described.
    #[error("corrupt capture: packet at byte {offset} names undescribed interface {interface}")]
    UnknownInterface {
        /// The interface id.
        interface: u32,
        /// Byte offset of the block.
        offset: u64,
    },
}

/// One captured frame, borrowed from the reader until the next call.
#[derive(Debug)]
pub struct Record<'a> {
    /// The captured bytes.
    pub data: &'a [u8],
    /// The frame's length on the wire (more than `data.len()` when the
    /// capture used a snap length).
    pub orig_len: u32,
    /// Link type of the interface it was captured on.
    pub link_type: u16,
    /// Interface index (pcapng; 0 for pcap).
    pub interface: u32,
}

impl Record<'_> {
    /// True when the capture kept less than the frame.
    #[must_use]
    pub fn is_snapped(&self) -> bool {
        u64::from(self.orig_len) > self.data.len() as u64
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Self::Little => u16::from_le_bytes(b),
            Self::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Self::Little => u32::from_le_bytes(b),
            Self::Big => u32::from_be_bytes(b),
        }
    }
}

enum Format {
    Pcap { order: Order, link_type: u16 },
    PcapNg { order: Order, interfaces: Vec<u16> },
}

/// A streaming reader of pcap and pcapng captures.
pub struct CaptureReader<R> {
    input: R,
    format: Format,
    /// Bytes consumed so far (for error messages).
    offset: u64,
    buf: Vec<u8>,
}

impl<R> std::fmt::Debug for CaptureReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureReader")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

const PCAP_MICRO: u32 = 0xA1B2_C3D4;
const PCAP_NANO: u32 = 0xA1B2_3C4D;
const PCAPNG_SHB: u32 = 0x0A0D_0D0A;
const PCAPNG_BYTE_ORDER: u32 = 0x1A2B_3C4D;

impl<R: Read> CaptureReader<R> {
    /// Reads the file header (pcap) or first section header (pcapng).
    ///
    /// # Errors
    /// [`CaptureError::NotACapture`] for other files, or a truncated or
    /// corrupt header.
    pub fn new(input: R) -> Result<Self, CaptureError> {
        let mut reader = Self {
            input,
            format: Format::Pcap {
                order: Order::Little,
                link_type: 0,
            },
            offset: 0,
            buf: Vec::new(),
        };
        let mut magic = [0u8; 4];
        if !reader.read_exact(&mut magic, "file header", 0)? {
            return Err(CaptureError::NotACapture(magic));
        }
        let le = u32::from_le_bytes(magic);
        let be = u32::from_be_bytes(magic);
        reader.format = if le == PCAP_MICRO || le == PCAP_NANO {
            reader.pcap_header(Order::Little)?
        } else if be == PCAP_MICRO || be == PCAP_NANO {
            reader.pcap_header(Order::Big)?
        } else if le == PCAPNG_SHB {
            let order = reader.section_header(0)?;
            Format::PcapNg {
                order,
                interfaces: Vec::new(),
            }
        } else {
            return Err(CaptureError::NotACapture(magic));
        };
        Ok(reader)
    }

    fn pcap_header(&mut self, order: Order) -> Result<Format, CaptureError> {
        // version (4), thiszone (4), sigfigs (4), snaplen (4), linktype (4)
        let mut rest = [0u8; 20];
        self.require(&mut rest, "file header", 0)?;
        // The link type is the low half of the last field; the high half
        // carries FCS flags.
        let [.., a, b, c, d] = rest;
        let link_type = match order {
            Order::Little => u16::from_le_bytes([a, b]),
            Order::Big => u16::from_be_bytes([c, d]),
        };
        Ok(Format::Pcap { order, link_type })
    }

    /// Reads a section header block whose type field (at `start`) was
    /// already consumed; returns its byte order.
    fn section_header(&mut self, start: u64) -> Result<Order, CaptureError> {
        let mut head = [0u8; 8];
        self.require(&mut head, "section header", start)?;
        let [l0, l1, l2, l3, m0, m1, m2, m3] = head;
        let order = if u32::from_le_bytes([m0, m1, m2, m3]) == PCAPNG_BYTE_ORDER {
            Order::Little
        } else if u32::from_be_bytes([m0, m1, m2, m3]) == PCAPNG_BYTE_ORDER {
            Order::Big
        } else {
            return Err(CaptureError::NotACapture([m0, m1, m2, m3]));
        };
        let total = order.u32([l0, l1, l2, l3]);
        // type, length and byte-order magic are read; the rest is skipped.
        let body = self.block_body_len(total, 12, start)?;
        self.fill(body, "section header", start)?;
        Ok(order)
    }

    /// The length of a block's remainder after `consumed` bytes, with the
    /// block's sanity checked.
    fn block_body_len(
        &self,
        total: u32,
        consumed: usize,
        start: u64,
    ) -> Result<usize, CaptureError> {
        let total_usize = usize::try_from(total).unwrap_or(usize::MAX);
        if !total.is_multiple_of(4) || total_usize < consumed + 4 || total_usize > MAX_RECORD {
            return Err(CaptureError::BadLength {
                what: "block length",
                len: u64::from(total),
                offset: start,
            });
        }
        Ok(total_usize - consumed)
    }

    /// The next frame, or `None` at the end of the capture.
    ///
    /// # Errors
    /// A truncated or corrupt record or block; reading may not continue
    /// after an error.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, CaptureError> {
        match self.format {
            Format::Pcap { order, link_type } => self.pcap_record(order, link_type),
            Format::PcapNg { .. } => self.pcapng_record(),
        }
    }

    fn pcap_record(
        &mut self,
        order: Order,
        link_type: u16,
    ) -> Result<Option<Record<'_>>, CaptureError> {
        let start = self.offset;
        let mut head = [0u8; 16];
        if !self.read_exact(&mut head, "record header", start)? {
            return Ok(None);
        }
        let [_, _, _, _, _, _, _, _, c0, c1, c2, c3, o0, o1, o2, o3] = head;
        let caplen = order.u32([c0, c1, c2, c3]);
        let orig_len = order.u32([o0, o1, o2, o3]);
        let len = usize::try_from(caplen).unwrap_or(usize::MAX);
        if len > MAX_RECORD {
            return Err(CaptureError::BadLength {
                what: "record length",
                len: u64::from(caplen),
                offset: start,
            });
        }
        self.fill(len, "record", start)?;
        Ok(Some(Record {
            data: &self.buf,
            orig_len,
            link_type,
            interface: 0,
        }))
    }

    fn pcapng_record(&mut self) -> Result<Option<Record<'_>>, CaptureError> {
        loop {
            let start = self.offset;
            let mut head = [0u8; 8];
            if !self.read_exact(&mut head, "block header", start)? {
                return Ok(None);
            }
            let [t0, t1, t2, t3, l0, l1, l2, l3] = head;
            let Format::PcapNg { order, .. } = self.format else {
                return Ok(None);
            };
            if u32::from_le_bytes([t0, t1, t2, t3]) == PCAPNG_SHB {
                // A new section: new byte order, new interfaces. The length
                // was read in the old order; read it again in the new one.
                let mut magic = [0u8; 4];
                self.require(&mut magic, "section header", start)?;
                let new_order = match magic {
                    m if u32::from_le_bytes(m) == PCAPNG_BYTE_ORDER => Order::Little,
                    m if u32::from_be_bytes(m) == PCAPNG_BYTE_ORDER => Order::Big,
                    m => return Err(CaptureError::NotACapture(m)),
                };
                let total = new_order.u32([l0, l1, l2, l3]);
                let body = self.block_body_len(total, 12, start)?;
                self.fill(body, "section header", start)?;
                self.format = Format::PcapNg {
                    order: new_order,
                    interfaces: Vec::new(),
                };
                continue;
            }
            let block_type = order.u32([t0, t1, t2, t3]);
            let total = order.u32([l0, l1, l2, l3]);
            let body = self.block_body_len(total, 8, start)?;
            self.fill(body, "block", start)?;
            // The body ends with the repeated total length.
            let body_len = body - 4;
            let too_short = |min: usize| {
                (body_len < min).then_some(CaptureError::BadLength {
                    what: "block length",
                    len: u64::from(total),
                    offset: start,
                })
            };
            match block_type {
                1 => {
                    if let Some(e) = too_short(8) {
                        return Err(e);
                    }
                    let link = self.field16(order, 0);
                    if let Format::PcapNg { interfaces, .. } = &mut self.format {
                        interfaces.push(link);
                    }
                }
                2 | 6 => {
                    if let Some(e) = too_short(20) {
                        return Err(e);
                    }
                    // Obsolete packet block: interface id is 16 bits (plus
                    // 16 bits of drop count); enhanced: 32 bits.
                    let interface = if block_type == 2 {
                        u32::from(self.field16(order, 0))
                    } else {
                        self.field32(order, 0)
                    };
                    let caplen = self.field32(order, 12);
                    let orig_len = self.field32(order, 16);
                    let cap = usize::try_from(caplen).unwrap_or(usize::MAX);
                    if cap > body_len - 20 {
                        return Err(CaptureError::BadLength {
                            what: "captured length",
                            len: u64::from(caplen),
                            offset: start,
                        });
                    }
                    let link_type = self.interface_link(interface, start)?;
                    self.buf.drain(..20);
                    self.buf.truncate(cap);
                    return Ok(Some(Record {
                        data: &self.buf,
                        orig_len,
                        link_type,
                        interface,
                    }));
                }
                3 => {
                    if let Some(e) = too_short(4) {
                        return Err(e);
                    }
                    // Simple packet block: original length, then as much of
                    // the frame as the block holds (interface 0's snap
                    // length applied by the writer).
                    let orig_len = self.field32(order, 0);
                    let link_type = self.interface_link(0, start)?;
                    let cap = usize::try_from(orig_len)
                        .unwrap_or(usize::MAX)
                        .min(body_len - 4);
                    self.buf.drain(..4);
                    self.buf.truncate(cap);
                    return Ok(Some(Record {
                        data: &self.buf,
                        orig_len,
                        link_type,
                        interface: 0,
                    }));
                }
                _ => {}
            }
        }
    }

    fn interface_link(&self, interface: u32, offset: u64) -> Result<u16, CaptureError> {
        let Format::PcapNg { interfaces, .. } = &self.format else {
            return Ok(0);
        };
        usize::try_from(interface)
            .ok()
            .and_then(|i| interfaces.get(i))
            .copied()
            .ok_or(CaptureError::UnknownInterface { interface, offset })
    }

    fn field16(&self, order: Order, at: usize) -> u16 {
        match self.buf.get(at..at + 2) {
            Some(&[a, b]) => order.u16([a, b]),
            _ => 0,
        }
    }

    fn field32(&self, order: Order, at: usize) -> u32 {
        match self.buf.get(at..at + 4) {
            Some(&[a, b, c, d]) => order.u32([a, b, c, d]),
            _ => 0,
        }
    }

    /// Reads `len` bytes into the record buffer.
    fn fill(&mut self, len: usize, what: &'static str, start: u64) -> Result<(), CaptureError> {
        self.buf.clear();
        self.buf.resize(len, 0);
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.require(&mut buf, what, start);
        self.buf = buf;
        result
    }

    /// Reads exactly `out.len()` bytes; the end of the file is an error.
    fn require(
        &mut self,
        out: &mut [u8],
        what: &'static str,
        start: u64,
    ) -> Result<(), CaptureError> {
        if out.is_empty() || self.read_exact(out, what, start)? {
            Ok(())
        } else {
            Err(CaptureError::Truncated {
                what,
                offset: start,
            })
        }
    }

    /// Reads exactly `out.len()` bytes: `Ok(false)` at a clean end of file
    /// (nothing read), an error if the file ends part way.
    /// `start` is where the enclosing record began, for the error.
    fn read_exact(
        &mut self,
        out: &mut [u8],
        what: &'static str,
        start: u64,
    ) -> Result<bool, CaptureError> {
        let mut got = 0;
        while got < out.len() {
            let Some(rest) = out.get_mut(got..) else {
                break;
            };
            match self.input.read(rest) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(CaptureError::Truncated {
                        what,
                        offset: start,
                    });
                }
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(CaptureError::Io(e)),
            }
        }
        Ok(true)
    }
}

/// Writes libpcap captures (little-endian, microsecond timestamps): what
/// tests, the traffic tool and the sample captures record frames with.
#[derive(Debug)]
pub struct CaptureWriter<W: Write> {
    out: W,
    snaplen: u32,
}

impl<W: Write> CaptureWriter<W> {
    /// Writes the file header.
    ///
    /// # Errors
    /// The output's error.
    pub fn new(mut out: W, link_type: u16, snaplen: u32) -> io::Result<Self> {
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&PCAP_MICRO.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&[0; 8]); // thiszone, sigfigs
        header.extend_from_slice(&snaplen.to_le_bytes());
        header.extend_from_slice(&u32::from(link_type).to_le_bytes());
        out.write_all(&header)?;
        Ok(Self { out, snaplen })
    }

    /// Writes one frame captured at `micros` since the epoch, cut to the
    /// snap length.
    ///
    /// # Errors
    /// The output's error, or a frame longer than 4 GiB.
    pub fn write(&mut self, frame: &[u8], micros: u64) -> io::Result<()> {
        let orig_len = u32::try_from(frame.len())
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
        self.write_cut(frame, orig_len, micros)
    }

    /// Writes the first bytes of a frame of `orig_len` bytes, as a capture
    /// with a shorter snap length would have kept them (also cut to this
    /// file's snap length).
    ///
    /// # Errors
    /// The output's error, or a kept part longer than 4 GiB.
    pub fn write_cut(&mut self, kept: &[u8], orig_len: u32, micros: u64) -> io::Result<()> {
        let kept_len = u32::try_from(kept.len())
            .map_err(|_| io::Error::new(ErrorKind::InvalidInput, "frame longer than 4 GiB"))?;
        let caplen = kept_len.min(self.snaplen);
        let secs = u32::try_from(micros / 1_000_000).unwrap_or(u32::MAX);
        let usecs = u32::try_from(micros % 1_000_000).unwrap_or(0);
        let mut head = [0u8; 16];
        for (i, v) in [secs, usecs, caplen, orig_len].into_iter().enumerate() {
            if let Some(slot) = head.get_mut(i * 4..i * 4 + 4) {
                slot.copy_from_slice(&v.to_le_bytes());
            }
        }
        self.out.write_all(&head)?;
        self.out
            .write_all(kept.get(..caplen as usize).unwrap_or(kept))
    }

    /// Flushes and returns the output.
    ///
    /// # Errors
    /// The output's error.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
