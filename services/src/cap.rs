//! The bandwidth cap: a token bucket, so that a test (or an operator
//! trying the scaler) can make an instance run short of bandwidth. Frames
//! over the cap are dropped and counted.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A rate in bits per second, written `500kbit`, `10Mbit`, `1Gbit`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let scale: u64 = match unit {
            "bit" => 1,
            "kbit" => 1_000,
            "Mbit" => 1_000_000,
            "Gbit" => 1_000_000_000,
            _ => return Err(format!("`{s}`: write a rate as 500kbit, 10Mbit or 1Gbit")),
        };
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .filter(|r| *r > 0)
            .map(Self)
            .ok_or_else(|| format!("`{s}` is not a rate above 0"))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}bit/s", self.0)
    }
}

/// A token bucket over bytes: `rate`, and a burst of 10 ms at that rate
/// (at least one jumbo frame).
#[derive(Clone, Debug)]
pub struct TokenBucket {
    bytes_per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Option<Duration>,
}

impl TokenBucket {
    /// A full bucket for `rate`.
    #[must_use]
    pub fn new(rate: Rate) -> Self {
        #[allow(clippy::cast_precision_loss)] // rates far below 2^53
        let bytes_per_sec = rate.0 as f64 / 8.0;
        let burst = (bytes_per_sec / 100.0).max(9216.0);
        Self {
            bytes_per_sec,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Whether a frame of `len` bytes may pass at `now` (any monotonic
    /// clock's reading); takes its tokens when it may.
    pub fn admit(&mut self, len: usize, now: Duration) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_sub(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.bytes_per_sec).min(self.burst);
        }
        self.last = Some(now);
        #[allow(clippy::cast_precision_loss)]
        let need = len as f64;
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!("10Mbit".parse(), Ok(Rate(10_000_000)));
        assert_eq!("500kbit".parse(), Ok(Rate(500_000)));
        assert_eq!("1Gbit".parse(), Ok(Rate(1_000_000_000)));
        for bad in ["10", "10MB", "0Mbit", "Mbit", "-1Mbit"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bucket_passes_its_rate_and_no_more() {
        // 8 Mbit/s = 1 MB/s; 1000-byte frames offered at 2000/s for 10 s.
        let mut b = TokenBucket::new(Rate(8_000_000));
        let mut passed = 0u64;
        for i in 0..20_000u64 {
            if b.admit(1000, Duration::from_micros(i * 500)) {
                passed += 1;
            }
        }
        // 10 s at 1000 frames/s, plus the initial burst of 10 frames.
        assert!((10_000..=10_011).contains(&passed), "{passed}");
    }

    #[test]
    fn an_idle_bucket_refills_only_to_its_burst() {
        let mut b = TokenBucket::new(Rate(8_000_000));
        assert!(b.admit(9216, Duration::ZERO));
        assert!(!b.admit(1000, Duration::ZERO), "empty");
        // A minute idle: no more than the burst.
        let later = Duration::from_secs(60);
        assert!(b.admit(9216, later));
        assert!(!b.admit(1000, later));
    }
}
