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
use std::rc::Rc;

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
    /// Events published since the last `seal`: the next batch for every
    /// reader of the whole stream.
    batch: Vec<u8>,
    /// The id of the last event before `batch`.
    sealed: u64,
}

pub use crate::wire::json::event as encode;

impl Bus {
    /// Number and keep an event, and add it to the next batch; false if
    /// `resp` is not an event.
    pub fn publish(&mut self, resp: &Response) -> bool {
        let Some((name, data)) = encode(resp) else {
            return false;
        };
        self.next_id += 1;
        let bytes = http::event(self.next_id, name, &data);
        self.batch.extend_from_slice(&bytes);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.next_id, bytes));
        true
    }

    /// The events published since the last call, as one batch that every
    /// reader shares (a copy per event, not per event and reader), with
    /// the id of the last event before it (what a reader that misses the
    /// batch has seen).
    pub fn seal(&mut self) -> Option<(Rc<[u8]>, u64)> {
        if self.batch.is_empty() {
            return None;
        }
        let batch: Rc<[u8]> = Rc::from(std::mem::take(&mut self.batch));
        let before = std::mem::replace(&mut self.sealed, self.next_id);
        Some((batch, before))
    }

    /// Bytes waiting for the next batch.
    pub fn unsealed(&self) -> usize {
        self.batch.len()
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
        assert!(bus.publish(&node("a")));
        let (batch, before) = bus.seal().unwrap();
        let first = String::from_utf8(batch.to_vec()).unwrap();
        assert!(first.starts_with("id: 1\nevent: node\ndata: {"), "{first}");
        assert_eq!(before, 0);
        assert!(bus.seal().is_none(), "nothing new");
        bus.publish(&node("b"));
        bus.publish(&node("c"));
        let (batch, before) = bus.seal().unwrap();
        let two = String::from_utf8(batch.to_vec()).unwrap();
        assert!(
            two.starts_with("id: 2\n") && two.contains("\n\nid: 3\n") && two.ends_with("\n\n"),
            "{two}"
        );
        assert_eq!(before, 1, "a reader that misses it saw event 1");
        let missed = String::from_utf8(bus.since(1).unwrap()).unwrap();
        assert!(
            missed.starts_with("id: 2\n") && missed.contains("id: 3\n"),
            "{missed}"
        );
        assert_eq!(bus.since(3).unwrap(), Vec::<u8>::new());
        assert!(bus.since(7).is_none(), "an id from before a restart");
        for i in 0..RECENT {
            bus.publish(&node(&format!("n{i}")));
        }
        assert!(bus.since(1).is_none(), "past the window");
        assert!(bus.since(bus.last_id() - 1).is_some());
        assert!(!bus.publish(&Response::Stopping), "not an event");
    }
}
