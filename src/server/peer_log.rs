//! Warnings about what peers send, limited per peer: a peer that floods the
//! server with garbage gets a few log lines and a note that the rest are
//! suppressed, instead of a log that drowns everything else. The table of
//! peers is bounded too, since a garbage sender can pick a new identity for
//! every message. `Once` is the stricter form, for events that say the same
//! thing every time (a refused key knocking again).

use crate::support::hash::{Map as HashMap, Set as HashSet};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const PER_WINDOW: u32 = 20;
const MAX_PEERS: usize = 4096;

struct Window {
    start: Instant,
    count: u32,
}

/// Rate-limited warnings, by peer identity.
#[derive(Default)]
pub struct PeerLog {
    peers: HashMap<String, Window>,
}

impl PeerLog {
    /// Log `msg` about `peer` unless it has had its share this minute.
    pub fn warn(&mut self, peer: &str, now: Instant, msg: fmt::Arguments) {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(peer) {
            self.peers
                .retain(|_, w| now.duration_since(w.start) < WINDOW);
            if self.peers.len() >= MAX_PEERS {
                self.peers.clear();
            }
        }
        let w = self.peers.entry(peer.to_owned()).or_insert(Window {
            start: now,
            count: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            if w.count > PER_WINDOW {
                log::warn!(
                    "node={peer}: {} more warnings were suppressed",
                    w.count - PER_WINDOW
                );
            }
            *w = Window {
                start: now,
                count: 0,
            };
        }
        w.count += 1;
        match w.count {
            n if n < PER_WINDOW => log::warn!("node={peer}: {msg}"),
            n if n == PER_WINDOW => {
                log::warn!("node={peer}: {msg}");
                log::warn!(
                    "node={peer}: too many warnings; suppressing the rest for up to {}s",
                    WINDOW.as_secs()
                );
            }
            _ => {}
        }
    }
}

/// Remembers what was said, so each thing is said once. Bounded: past
/// `cap` entries it forgets them all (and may say each once more).
pub struct Once<T> {
    said: HashSet<T>,
    cap: usize,
}

impl<T: Eq + Hash> Once<T> {
    pub fn new(cap: usize) -> Once<T> {
        Once {
            said: HashSet::default(),
            cap,
        }
    }

    /// True the first time `what` is seen.
    pub fn first(&mut self, what: T) -> bool {
        if self.said.len() >= self.cap && !self.said.contains(&what) {
            self.said.clear();
        }
        self.said.insert(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_says_each_thing_once_within_its_bound() {
        let mut o = Once::new(2);
        assert!(o.first(1));
        assert!(!o.first(1));
        assert!(o.first(2));
        assert!(o.first(3), "past the bound it starts over");
        assert!(o.said.len() <= 2);
    }
}
