//! The pieces both daemons' event loops are built from: ZeroMQ ports, child
//! processes, the signal pipe, and the deadline heap. Each daemon owns one
//! `mio::Poll` and drives these from its single thread.

pub mod child;
pub mod monitor;
pub mod signals;
pub mod timers;
pub mod worker;
pub mod zmq;

use std::io;
use std::time::Duration;

use mio::{Events, Poll, Token};

/// While an outbox holds sends a peer refused (high-water mark), look again
/// this soon even if no edge comes.
const BACKLOG_RETRY: Duration = Duration::from_millis(50);

/// Why the loop may sleep, and for how long.
pub struct Sleep {
    /// A port hit its receive budget with more waiting: do not sleep.
    pub busy: bool,
    /// A port holds refused sends.
    pub backlog: bool,
    /// Time to the nearest timer.
    pub next_timer: Option<Duration>,
}

/// One poll with the loop's timeout rule; an interrupted poll is a normal,
/// empty wake-up.
pub fn wait(poll: &mut Poll, events: &mut Events, sleep: Sleep) -> io::Result<()> {
    let timeout = if sleep.busy {
        Some(Duration::ZERO)
    } else if sleep.backlog {
        Some(
            sleep
                .next_timer
                .map_or(BACKLOG_RETRY, |t| t.min(BACKLOG_RETRY)),
        )
    } else {
        sleep.next_timer
    };
    match poll.poll(events, timeout) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        r => r,
    }
}

/// Hands out tokens for dynamic sources from a counter that only goes up, so a
/// late event for a closed source can never be mistaken for a new one.
pub struct TokenCounter {
    next: usize,
}

impl TokenCounter {
    /// Dynamic tokens start at `first`, above the daemon's fixed tokens.
    pub fn new(first: usize) -> TokenCounter {
        TokenCounter { next: first }
    }

    /// A token never handed out before.
    pub fn next(&mut self) -> Token {
        let t = Token(self.next);
        self.next += 1;
        t
    }
}
