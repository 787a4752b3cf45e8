//! The node table: every known node's liveness and its job queues. A node
//! is known from its first `Ready` until it is purged; it is offline while
//! it is silent past its expiry (`LIVENESS` intervals). Pure data; the
//! cluster core drives it.

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
    /// Silent past its expiry: known, not connected.
    Offline,
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
    /// Its cache, as it last reported (not kept across server restarts:
    /// nodes report it when they register).
    pub cache: Option<Box<crate::wire::CacheSummary>>,
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

    pub fn is_online(&self) -> bool {
        self.link != Link::Offline
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
            cache: None,
        });
        node.ivl = ivl;
        node.touch(now, now_ms);
        (node, created)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Node> + Clone {
        self.map.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Node> {
        self.map.values_mut()
    }

    /// Mark offline every online node whose expiry has passed; their
    /// names.
    pub fn expire_due(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        for n in self.map.values_mut() {
            if n.is_online() && n.expires_at() <= now {
                n.link = Link::Offline;
                gone.push(n.name.clone());
            }
        }
        gone
    }

    /// The earliest expiry of any online node.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.map
            .values()
            .filter(|n| n.is_online())
            .map(Node::expires_at)
            .min()
    }

    /// Remove one node.
    pub fn remove(&mut self, name: &str) -> Option<Node> {
        self.map.remove(name)
    }

    /// Forget offline nodes with no work; returns their names, and how
    /// many nodes are kept.
    pub fn purge_offline(&mut self) -> (Vec<String>, usize) {
        let gone: Vec<String> = self
            .map
            .values()
            .filter(|n| !n.is_online() && n.is_idle())
            .map(|n| n.name.clone())
            .collect();
        for name in &gone {
            self.map.remove(name);
        }
        (gone, self.map.len())
    }
}
