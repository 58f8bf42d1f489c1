//! When a service gets another instance, or one fewer: the decisions,
//! apart from the acting (the supervisor acts on them).
//!
//! The inputs are the DPU's telemetry: the smoothed load of every active
//! instance as a share of its capacity, and the DPU's scale requests. For
//! each service:
//!
//! - **out** when every active instance is at or over the service's
//!   `scale_out_at` and has been for `hold` (the DPU steers new sessions to
//!   instances with headroom, so one busy instance beside an idle one is
//!   not a shortage), or at once on a scale request from the DPU (raised
//!   when a new session found no instance with headroom); never over `max`;
//! - **in** when every active instance is under `scale_in_at` and has been
//!   for `hold`, and the load would still fit under `scale_out_at` on one
//!   instance fewer (so scaling in never causes the next scale-out); never
//!   under `min`;
//! - at most one action per `cooldown` per service.
//!
//! The moment the load crossed the watermark is kept with the decision, so
//! the supervisor can measure the reaction time: from that moment to the
//! first session on the new instance.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A service's scaling policy, in the scaler's terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Fewest instances.
    pub min: u64,
    /// Most instances.
    pub max: u64,
    /// Share of capacity at which an instance is short of bandwidth.
    pub out_at: f64,
    /// Share under which instances are too many.
    pub in_at: f64,
    /// How long a condition must hold.
    pub hold: Duration,
    /// Least time between two actions.
    pub cooldown: Duration,
}

/// What the telemetry says of one service now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Load {
    /// Utilisation of each active instance the DPU reports (1.0 is full).
    pub utilisation: Vec<f64>,
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing.
    Stay,
    /// One more instance; the load crossed the watermark at `since`.
    Out {
        /// When the condition began.
        since: Instant,
    },
    /// One fewer.
    In,
    /// One more is wanted, but the service is at its max.
    AtMax,
}

#[derive(Clone, Copy, Debug, Default)]
struct State {
    over_since: Option<Instant>,
    under_since: Option<Instant>,
    last_action: Option<Instant>,
    requested: Option<Instant>,
}

/// The scaler's memory, per service.
#[derive(Debug, Default)]
pub struct Scaler {
    services: HashMap<String, State>,
}

impl Scaler {
    /// A scaler that has seen nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The DPU asked for another instance of `service` (it found no
    /// instance with headroom for a new session).
    pub fn requested(&mut self, service: &str, now: Instant) {
        let s = self.services.entry(service.to_owned()).or_default();
        s.requested.get_or_insert(now);
    }

    /// Forgets a service's conditions (its instances changed under it: a
    /// manual scale, a failure), keeping its cooldown.
    pub fn reset(&mut self, service: &str) {
        if let Some(s) = self.services.get_mut(service) {
            s.over_since = None;
            s.under_since = None;
            s.requested = None;
        }
    }

    /// Decides for `service`, which has `running` instances (starting or
    /// active) and whose active ones carry `load`.
    pub fn decide(
        &mut self,
        service: &str,
        policy: &Policy,
        running: u64,
        load: &Load,
        now: Instant,
    ) -> Decision {
        let s = self.services.entry(service.to_owned()).or_default();
        let measured = !load.utilisation.is_empty();
        let all_over = measured && load.utilisation.iter().all(|u| *u >= policy.out_at);
        let all_under = measured && load.utilisation.iter().all(|u| *u < policy.in_at);
        // A starting instance is capacity on its way: wait for it.
        let settled = measured && load.utilisation.len() as u64 == running;
        s.over_since = if all_over {
            s.over_since.or(Some(now))
        } else {
            None
        };
        s.under_since = if all_under {
            s.under_since.or(Some(now))
        } else {
            None
        };
        let cooled = s
            .last_action
            .is_none_or(|t| now.duration_since(t) >= policy.cooldown);

        let held_over = s
            .over_since
            .is_some_and(|t| now.duration_since(t) >= policy.hold);
        if settled && (held_over || s.requested.is_some()) {
            let since = match (s.over_since, s.requested) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(now),
            };
            if running >= policy.max {
                s.requested = None;
                return Decision::AtMax;
            }
            if cooled {
                s.last_action = Some(now);
                s.over_since = None;
                s.requested = None;
                return Decision::Out { since };
            }
            return Decision::Stay;
        }

        let held_under = s
            .under_since
            .is_some_and(|t| now.duration_since(t) >= policy.hold);
        if settled && held_under && running > policy.min && cooled {
            // On one instance fewer, would the load still be under the
            // scale-out watermark?
            let total: f64 = load.utilisation.iter().sum();
            #[allow(clippy::cast_precision_loss)] // instance counts are small
            let after = total / (running - 1) as f64;
            if after < policy.out_at {
                s.last_action = Some(now);
                s.under_since = None;
                return Decision::In;
            }
        }
        Decision::Stay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        min: 1,
        max: 3,
        out_at: 0.8,
        in_at: 0.3,
        hold: Duration::from_secs(2),
        cooldown: Duration::from_secs(10),
    };

    fn load(u: &[f64]) -> Load {
        Load {
            utilisation: u.to_vec(),
        }
    }

    #[test]
    fn out_only_after_the_load_held_over_the_watermark() {
        let mut s = Scaler::new();
        let t0 = Instant::now();
        assert_eq!(
            s.decide("fw", &POLICY, 1, &load(&[0.9]), t0),
            Decision::Stay
        );
        assert_eq!(
            s.decide(
                "fw",
                &POLICY,
                1,
                &load(&[0.95]),
                t0 + Duration::from_secs(1)
            ),
            Decision::Stay
        );
        // A dip resets the clock.
        assert_eq!(
            s.decide(
                "fw",
                &POLICY,
                1,
                &load(&[0.5]),
                t0 + Duration::from_millis(1500)
            ),
            Decision::Stay
        );
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            s.decide("fw", &POLICY, 1, &load(&[0.9]), t1),
            Decision::Stay
        );
        assert_eq!(
            s.decide("fw", &POLICY, 1, &load(&[0.9]), t1 + Duration::from_secs(2)),
            Decision::Out { since: t1 }
        );
    }

    #[test]
    fn one_busy_instance_beside_an_idle_one_is_no_shortage() {
        let mut s = Scaler::new();
        let t0 = Instant::now();
        for i in 0..10 {
            let d = s.decide(
                "fw",
                &POLICY,
                2,
                &load(&[1.0, 0.1]),
                t0 + Duration::from_secs(i),
            );
            assert_eq!(d, Decision::Stay);
        }
    }

    #[test]
    fn a_dpu_request_acts_at_once_but_not_during_cooldown_nor_over_max() {
        let mut s = Scaler::new();
        let t0 = Instant::now();
        s.requested("fw", t0);
        assert_eq!(
            s.decide("fw", &POLICY, 1, &load(&[0.85]), t0),
            Decision::Out { since: t0 }
        );
        // The new instance is starting: nothing until it carries load.
        let t1 = t0 + Duration::from_secs(1);
        s.requested("fw", t1);
        assert_eq!(
            s.decide("fw", &POLICY, 2, &load(&[0.9]), t1),
            Decision::Stay
        );
        // Active, both over, but in cooldown.
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!(
            s.decide("fw", &POLICY, 2, &load(&[0.9, 0.9]), t2),
            Decision::Stay
        );
        let t3 = t0 + Duration::from_secs(11);
        assert!(matches!(
            s.decide("fw", &POLICY, 2, &load(&[0.9, 0.9]), t3),
            Decision::Out { .. }
        ));
        // At max: said, not done.
        s.requested("fw", t3);
        let t4 = t0 + Duration::from_secs(30);
        assert_eq!(
            s.decide("fw", &POLICY, 3, &load(&[0.9, 0.9, 0.9]), t4),
            Decision::AtMax
        );
    }

    #[test]
    fn in_only_when_the_rest_can_carry_the_load_and_never_under_min() {
        let mut s = Scaler::new();
        let t0 = Instant::now();
        let later = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            s.decide("fw", &POLICY, 2, &load(&[0.2, 0.1]), t0),
            Decision::Stay
        );
        assert_eq!(
            s.decide("fw", &POLICY, 2, &load(&[0.2, 0.1]), later(2)),
            Decision::In
        );
        // Three under 0.3 each but 0.85 in all: two would be over 0.8... no,
        // 0.425 each: fine. Four at 0.29 on three: 0.39, fine; but the
        // same total on one instance would not be.
        let mut s = Scaler::new();
        assert_eq!(
            s.decide("fw", &POLICY, 3, &load(&[0.29, 0.29, 0.29]), t0),
            Decision::Stay
        );
        assert_eq!(
            s.decide("fw", &POLICY, 3, &load(&[0.29, 0.29, 0.29]), later(2)),
            Decision::In
        );
        let mut s = Scaler::new();
        let tight = Policy {
            in_at: 0.5,
            out_at: 0.8,
            ..POLICY
        };
        assert_eq!(
            s.decide("fw", &tight, 2, &load(&[0.45, 0.45]), t0),
            Decision::Stay
        );
        assert_eq!(
            s.decide("fw", &tight, 2, &load(&[0.45, 0.45]), later(5)),
            Decision::Stay,
            "0.9 on one"
        );
        let mut s = Scaler::new();
        assert_eq!(
            s.decide("fw", &POLICY, 1, &load(&[0.0]), t0),
            Decision::Stay
        );
        assert_eq!(
            s.decide("fw", &POLICY, 1, &load(&[0.0]), later(60)),
            Decision::Stay,
            "never under min"
        );
    }

    #[test]
    fn no_telemetry_no_decision() {
        let mut s = Scaler::new();
        let t0 = Instant::now();
        s.requested("fw", t0);
        assert_eq!(
            s.decide(
                "fw",
                &POLICY,
                1,
                &Load::default(),
                t0 + Duration::from_secs(5)
            ),
            Decision::Stay
        );
    }
}
