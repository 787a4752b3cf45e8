//! The node table: every enrolled node's liveness and its job queues.
//! A node exists from its first `Ready` until it expires (silent for
//! `LIVENESS` intervals) or is purged. Pure data; the cluster core drives it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Missed intervals after which a node is dead.
pub const LIVENESS: u32 = 3;

/// Whether jobs can be routed to a node's job socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The node said `Ready` on its job socket.
    Ready,
    /// A send to it was unroutable; wait for its next `Ready`.
    Stale,
}

/// One enrolled node.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub version: String,
    /// The node's own heartbeat interval, which its expiry follows.
    pub ivl: Duration,
    pub last_seen: Instant,
    pub last_seen_ms: u64,
    pub link: Link,
    /// The client process that last said `Ready` (drawn at random by each
    /// client start); unknown for a node restored from the history.
    pub instance: Option<u64>,
    /// Jobs waiting on the server, in submission order.
    pub queue: VecDeque<Uuid>,
    /// Jobs sent to the node and not yet reported, in order.
    pub in_flight: VecDeque<Uuid>,
    /// Its facts and labels, as its last `Ready` said.
    pub about: crate::facts::Node,
}

impl Node {
    /// When the node is declared dead unless heard from.
    pub fn expires_at(&self) -> Instant {
        self.last_seen + self.ivl * LIVENESS
    }

    /// The same, as wall-clock Unix milliseconds.
    pub fn expires_ms(&self) -> u64 {
        self.last_seen_ms + (self.ivl * LIVENESS).as_millis() as u64
    }

    /// Record that the node was heard from.
    pub fn touch(&mut self, now: Instant, now_ms: u64) {
        self.last_seen = now;
        self.last_seen_ms = now_ms;
    }

    /// Has it no work queued or in flight?
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }
}

/// Every node, by name (sorted, so "all nodes" has a stable order).
#[derive(Default)]
pub struct Nodes {
    map: BTreeMap<String, Node>,
}

impl Nodes {
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.map.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.map.get_mut(name)
    }

    /// The node called `name`, created if new; true if it was created.
    pub fn upsert(
        &mut self,
        name: &str,
        ivl: Duration,
        now: Instant,
        now_ms: u64,
    ) -> (&mut Node, bool) {
        let created = !self.map.contains_key(name);
        let node = self.map.entry(name.to_owned()).or_insert_with(|| Node {
            name: name.to_owned(),
            version: String::new(),
            ivl,
            last_seen: now,
            last_seen_ms: now_ms,
            link: Link::Ready,
            instance: None,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            about: Default::default(),
        });
        node.ivl = ivl;
        node.touch(now, now_ms);
        (node, created)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Node> + Clone {
        self.map.values()
    }

    /// Remove and return every node whose expiry has passed.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Node> {
        let dead: Vec<String> = self
            .map
            .values()
            .filter(|n| n.expires_at() <= now)
            .map(|n| n.name.clone())
            .collect();
        dead.iter()
            .filter_map(|name| self.map.remove(name))
            .collect()
    }

    /// The earliest expiry of any node.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.map.values().map(Node::expires_at).min()
    }

    /// Remove one node.
    pub fn remove(&mut self, name: &str) -> Option<Node> {
        self.map.remove(name)
    }

    /// Forget idle nodes; returns (removed, kept).
    pub fn purge_idle(&mut self) -> (usize, usize) {
        let before = self.map.len();
        self.map.retain(|_, n| !n.is_idle());
        (before - self.map.len(), self.map.len())
    }
}
