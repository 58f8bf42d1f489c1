//! `ids`: payload signatures, matched with Aho-Corasick over each frame's
//! L4 payload (all signatures in one pass). A match is an alert: a log
//! line (at most one a second per signature, with a count of the rest) and
//! a counter; in `drop` mode the frame is also dropped.
//!
//! Signatures from `--signature` (repeatable) or `--signatures FILE` (one
//! per line, `#` comments; `\xNN` for a byte).

use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use chaingate_fastpath::wire::parse;

use crate::wire::{Function, Verdict};

/// What a match does.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Mode {
    /// Log and count; the frame passes.
    Alert,
    /// Log, count and drop.
    Drop,
}

/// Reads a signature: text, with `\\xNN` for a byte and `\\\\` for `\\`.
///
/// # Errors
/// A bad escape, or an empty signature.
pub fn parse_signature(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let v = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("`{s}`: \\x needs two hex digits"))?;
                out.push(v);
            }
            _ => return Err(format!("`{s}`: escapes are \\xNN and \\\\")),
        }
    }
    if out.is_empty() {
        return Err("an empty signature matches everything".into());
    }
    Ok(out)
}

/// Reads signatures, one per line.
///
/// # Errors
/// The line number and what is wrong.
pub fn parse_signatures(text: &str) -> Result<Vec<Vec<u8>>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| parse_signature(l.trim()).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// The IDS function.
#[derive(Debug)]
pub struct Ids {
    matcher: AhoCorasick,
    names: Vec<String>,
    mode: Mode,
    /// Alerts per signature.
    pub alerts: Vec<u64>,
    logged: Vec<Option<Instant>>,
}

impl Ids {
    /// An IDS with `signatures`.
    ///
    /// # Errors
    /// No signature, or the automaton cannot be built.
    pub fn new(signatures: &[Vec<u8>], mode: Mode) -> Result<Self, String> {
        if signatures.is_empty() {
            return Err("give at least one signature".into());
        }
        let matcher = AhoCorasick::new(signatures).map_err(|e| e.to_string())?;
        Ok(Self {
            matcher,
            names: signatures
                .iter()
                .map(|s| s.escape_ascii().to_string())
                .collect(),
            mode,
            alerts: vec![0; signatures.len()],
            logged: vec![None; signatures.len()],
        })
    }

    /// Alerts over all signatures.
    #[must_use]
    pub fn total_alerts(&self) -> u64 {
        self.alerts.iter().sum()
    }

    /// Decides one frame at `now`.
    pub fn decide(&mut self, frame: &[u8], now: Instant) -> Verdict {
        let Ok(parsed) = parse(frame) else {
            return Verdict::Pass;
        };
        let Some(payload) = parsed
            .outer()
            .payload_offset()
            .and_then(|at| frame.get(at..parsed.outer().end()))
        else {
            return Verdict::Pass;
        };
        let Some(m) = self.matcher.find(payload) else {
            return Verdict::Pass;
        };
        let i = m.pattern().as_usize();
        self.alerts[i] += 1;
        if self.logged[i].is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.logged[i] = Some(now);
            let key = parsed.outer().key().map(|k| {
                format!(
                    "{}:{} > {}:{} proto {}",
                    k.src(),
                    k.src_port(),
                    k.dst(),
                    k.dst_port(),
                    u8::from(k.proto())
                )
            });
            eprintln!(
                "ids: alert: signature \"{}\" ({} so far) in {}",
                self.names[i],
                self.alerts[i],
                key.unwrap_or_default()
            );
        }
        match self.mode {
            Mode::Alert => Verdict::Pass,
            Mode::Drop => Verdict::Drop,
        }
    }
}

impl Function for Ids {
    fn process(&mut self, frame: &mut [u8]) -> Verdict {
        self.decide(frame, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[192, 0, 2, 1]);
        let sum = chaingate_fastpath::wire::checksum::finish(
            chaingate_fastpath::wire::checksum::sum(&ip),
        );
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0x13, 0x88, 0, 53]);
        f.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        // Ethernet padding after the datagram is not payload.
        f.extend_from_slice(b"EVIL");
        f
    }

    #[test]
    fn signatures_parse_with_escapes() {
        assert_eq!(parse_signature("GET /admin").unwrap(), b"GET /admin");
        assert_eq!(
            parse_signature("\\x90\\x90\\\\").unwrap(),
            [0x90, 0x90, b'\\']
        );
        assert!(
            parse_signature("\\x9")
                .unwrap_err()
                .contains("two hex digits")
        );
        assert!(parse_signature("\\n").unwrap_err().contains("escapes are"));
        assert!(parse_signature("").is_err());
        let e = parse_signatures("# list\nok\n\\q\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
    }

    #[test]
    fn matches_alert_or_drop_and_are_counted_per_signature() {
        let sigs = parse_signatures("EVIL\n\\xde\\xad\\xbe\\xef\n").unwrap();
        let mut alert = Ids::new(&sigs, Mode::Alert).unwrap();
        let t = Instant::now();
        assert_eq!(alert.decide(&udp(b"hello"), t), Verdict::Pass);
        assert_eq!(
            alert.total_alerts(),
            0,
            "padding after the datagram is not looked at"
        );
        assert_eq!(alert.decide(&udp(b"xx EVIL xx"), t), Verdict::Pass);
        assert_eq!(
            alert.decide(&udp(&[1, 0xde, 0xad, 0xbe, 0xef]), t),
            Verdict::Pass
        );
        assert_eq!(alert.alerts, [1, 1]);
        let mut drop = Ids::new(&sigs, Mode::Drop).unwrap();
        assert_eq!(drop.decide(&udp(b"EVIL"), t), Verdict::Drop);
        assert_eq!(drop.decide(&udp(b"good"), t), Verdict::Pass);
        assert!(Ids::new(&[], Mode::Alert).is_err());
    }
}
