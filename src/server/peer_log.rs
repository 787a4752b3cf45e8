//! Warnings about what peers send, limited per peer: a peer that floods the
//! server with garbage gets a few log lines and a note that the rest are
//! suppressed, instead of a log that drowns everything else. The table of
//! peers is bounded too, since a garbage sender can pick a new identity for
//! every message.

use std::collections::HashMap;
use std::fmt;
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
