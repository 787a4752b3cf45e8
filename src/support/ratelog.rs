//! Saying a repeated error at most once per period, with how many times it
//! happened in between, so a failing disk or a flood cannot fill the log.

use std::time::{Duration, Instant};

/// A gate that opens once per period.
#[derive(Debug)]
pub struct Every {
    period: Duration,
    last: Option<Instant>,
    /// Times the gate stayed shut since it last opened.
    pub suppressed: u64,
}

impl Every {
    pub fn new(period: Duration) -> Every {
        Every {
            period,
            last: None,
            suppressed: 0,
        }
    }

    pub fn minute() -> Every {
        Every::new(Duration::from_secs(60))
    }

    /// True if the event should be said now (then `suppressed` holds how
    /// many were not said since the last time; reset by the next call).
    pub fn first(&mut self, now: Instant) -> bool {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < self.period => {
                self.suppressed += 1;
                false
            }
            _ => {
                self.last = Some(now);
                true
            }
        }
    }

    /// Take the count of events not said, for the next message.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }

    /// The condition cleared: the next event is said at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_period_with_a_count() {
        let t0 = Instant::now();
        let mut e = Every::minute();
        assert!(e.first(t0));
        assert!(!e.first(t0 + Duration::from_secs(1)));
        assert!(!e.first(t0 + Duration::from_secs(59)));
        assert!(e.first(t0 + Duration::from_secs(60)));
        assert_eq!(e.take_suppressed(), 2);
        e.reset();
        assert!(e.first(t0 + Duration::from_secs(61)));
    }
}
