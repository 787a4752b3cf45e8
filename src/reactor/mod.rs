//! The pieces both daemons' event loops are built from: ZeroMQ ports, child
//! processes, the signal pipe, and the deadline heap. Each daemon owns one
//! `mio::Poll` and drives these from its single thread.

pub mod child;
pub mod signals;
pub mod timers;
pub mod zmq;

use mio::Token;

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
