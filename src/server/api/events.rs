//! The event stream (`GET /api/v1/events`, server-sent events): what the
//! core publishes once it is durable (jobs submitted, parts and jobs and
//! runs ending, nodes coming and going), numbered, the last `RECENT` kept
//! so that a reader that reconnects with `Last-Event-ID` misses nothing
//! within that window. With `?follow=JOB` a stream is one job's: its parts
//! as they end and its nodes' output lines as `--follow` shows them, then
//! the job's end, and the stream closes.
//!
//! A reader that falls `SLOW` bytes behind is sent a last `dropped` event
//! and closed: the server never buffers without bound for it.

use std::collections::VecDeque;

use uuid::Uuid;

use super::http;
use crate::wire::Response;

/// Events kept for readers that reconnect.
pub const RECENT: usize = 4096;
/// What a reader may leave unread before it is dropped.
pub const SLOW: usize = 4 << 20;

/// One stream's reader.
#[derive(Debug)]
pub struct Follower {
    /// Following one job (its own numbering), or everything (the bus's).
    pub job: Option<Uuid>,
    /// The next id of a job's stream.
    pub next: u64,
}

/// The published events, numbered.
#[derive(Default)]
pub struct Bus {
    next_id: u64,
    recent: VecDeque<(u64, Vec<u8>)>,
}

pub use crate::wire::json::event as encode;

impl Bus {
    /// Number and keep an event; its bytes for every reader of the
    /// whole stream.
    pub fn publish(&mut self, resp: &Response) -> Option<Vec<u8>> {
        let (name, data) = encode(resp)?;
        self.next_id += 1;
        let bytes = http::event(self.next_id, name, &data);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.next_id, bytes.clone()));
        Some(bytes)
    }

    /// What a reader that last saw `last` missed; `None` if some of it is
    /// no longer kept (it must reload what it shows).
    pub fn since(&self, last: u64) -> Option<Vec<u8>> {
        if last > self.next_id {
            return None; // from before a restart
        }
        let oldest = self.recent.front().map_or(self.next_id + 1, |(id, _)| *id);
        if last + 1 < oldest {
            return None;
        }
        Some(
            self.recent
                .iter()
                .filter(|(id, _)| *id > last)
                .flat_map(|(_, b)| b.iter().copied())
                .collect(),
        )
    }

    /// The id of the newest event.
    pub fn last_id(&self) -> u64 {
        self.next_id
    }
}

/// The event a reader gets when `Last-Event-ID` is past the window.
pub fn reset(id: u64) -> Vec<u8> {
    http::event(
        id,
        "reset",
        r#"{"why":"events since your Last-Event-ID are no longer kept: reload what you show"}"#,
    )
}

/// The last event of a reader that fell too far behind.
pub fn dropped(id: u64) -> Vec<u8> {
    http::event(
        id,
        "dropped",
        &format!(
            r#"{{"why":"this reader fell {SLOW} bytes behind; reconnect with Last-Event-ID"}}"#
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> Response {
        Response::NodeChanged {
            node: n.into(),
            state: "online".into(),
        }
    }

    #[test]
    fn a_reader_that_reconnects_gets_what_it_missed_or_a_reset_past_the_window() {
        let mut bus = Bus::default();
        let first = String::from_utf8(bus.publish(&node("a")).unwrap()).unwrap();
        assert!(first.starts_with("id: 1\nevent: node\ndata: {"), "{first}");
        bus.publish(&node("b"));
        let missed = String::from_utf8(bus.since(1).unwrap()).unwrap();
        assert!(
            missed.contains("id: 2\n") && !missed.contains("id: 1\n"),
            "{missed}"
        );
        assert_eq!(bus.since(2).unwrap(), Vec::<u8>::new());
        assert!(bus.since(7).is_none(), "an id from before a restart");
        for i in 0..RECENT {
            bus.publish(&node(&format!("n{i}")));
        }
        assert!(bus.since(1).is_none(), "past the window");
        assert!(bus.since(bus.last_id() - 1).is_some());
        assert!(bus.publish(&Response::Stopping).is_none(), "not an event");
    }
}
