//! How long a client waits before it reopens its sockets: from a short
//! first wait, doubling with every failed attempt up to about one
//! heartbeat interval, each wait drawn at random between half and all of
//! it. Bounded by the interval, so that a node is back within a few
//! intervals of its server's return; drawn at random, so that a server
//! restart does not make a whole fleet knock at the same instant. (While
//! the sockets are open, libzmq itself reconnects every 100 ms.) Pure:
//! the randomness comes in.

use std::time::Duration;

/// The longest wait, whatever the interval.
const CAP: Duration = Duration::from_secs(32);
/// The first wait, unless the interval is shorter than twice it.
const FIRST: Duration = Duration::from_secs(1);
/// No wait is shorter.
const FLOOR: Duration = Duration::from_millis(10);

/// The waits between attempts to reopen the link.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits for a client that beats every `ivl`.
    pub fn new(ivl: Duration) -> Backoff {
        let first = FIRST.min(ivl / 2).max(FLOOR);
        let cap = ivl.clamp(first, CAP);
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    /// The interval changed: the same attempt count, new bounds.
    pub fn set_ivl(&mut self, ivl: Duration) {
        let next = self.next;
        *self = Backoff::new(ivl);
        self.next = next.clamp(self.first, self.cap);
    }

    /// The link works: the next failure starts from the first wait.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The wait before the next attempt, given a random number, and the
    /// one after it doubles (up to the cap).
    pub fn next_wait(&mut self, random: u64) -> Duration {
        // Half of it, plus a random part of the other half.
        let half = self.next / 2;
        let spread = half.as_nanos() as u64;
        let extra = if spread == 0 {
            0
        } else {
            random % (spread + 1)
        };
        let wait = (half + Duration::from_nanos(extra)).max(FLOOR);
        self.next = (self.next * 2).min(self.cap);
        wait
    }

    /// The most the next wait can be (for what the log says).
    pub fn upto(&self) -> Duration {
        self.next
    }
}

/// A random number for `next_wait`.
#[cfg(test)]
pub fn random() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_interval_and_are_spread_at_random() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let mut lows = Vec::new();
        for _ in 0..8 {
            lows.push(b.next_wait(0));
        }
        let secs: Vec<f64> = lows.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5]);
        b.reset();
        assert_eq!(
            b.next_wait(u64::MAX),
            Duration::from_secs(1) / 2 + Duration::from_nanos(u64::MAX % 500_000_001)
        );
        b.reset();
        let top = b.next_wait(500_000_000);
        assert_eq!(top, Duration::from_secs(1), "the top of the range");
        // Two clients with different draws wait differently.
        let (mut x, mut y) = (
            Backoff::new(Duration::from_secs(5)),
            Backoff::new(Duration::from_secs(5)),
        );
        assert_ne!(x.next_wait(random()), y.next_wait(random()));
    }

    #[test]
    fn a_short_interval_keeps_the_waits_shorter_than_it() {
        let ivl = Duration::from_millis(300);
        let mut b = Backoff::new(ivl);
        for _ in 0..10 {
            assert!(b.next_wait(u64::MAX) <= ivl);
        }
        // The default interval (60 s) still caps at 32 s.
        let mut b = Backoff::new(Duration::from_secs(60));
        for _ in 0..10 {
            assert!(b.next_wait(u64::MAX) <= CAP);
        }
        assert_eq!(b.upto(), CAP);
        b.set_ivl(Duration::from_secs(2));
        assert_eq!(b.upto(), Duration::from_secs(2));
    }
}
