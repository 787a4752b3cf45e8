//! Where each peer is: for every authenticated peer and port, the ROUTER
//! routing id its latest message came from. With CURVE the routing ids are
//! libzmq's own, so no client can pick one that belongs to another; a
//! reconnecting client gets a new one, learned from its first message.
//!
//! Only peers the key table knows (pending or accepted) are kept, so the
//! table is bounded by it.

use crate::support::hash::Map as HashMap;

use crate::curve::PublicKey;

/// The server's ZeroMQ ports, as indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Job = 0,
    Transfer = 1,
    Heartbeat = 2,
}

impl Port {
    /// For log lines.
    pub fn name(self) -> &'static str {
        match self {
            Port::Job => "job",
            Port::Transfer => "transfer",
            Port::Heartbeat => "heartbeat",
        }
    }
}

pub const PORTS: [Port; 3] = [Port::Job, Port::Transfer, Port::Heartbeat];

/// Who sent a message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The CURVE key our ZAP handler admitted.
    Key(PublicKey),
    /// With `--curve off`: the routing id the client set, its node name.
    Name(String),
}

impl Principal {
    /// For log lines.
    pub fn describe(&self) -> String {
        match self {
            Principal::Key(k) => format!("key {}", k.fingerprint()),
            Principal::Name(n) => n.clone(),
        }
    }
}

/// Routing ids by peer and port, both ways.
#[derive(Default)]
pub struct Routes {
    to: HashMap<Principal, [Option<Vec<u8>>; 3]>,
    from: [HashMap<Vec<u8>, Principal>; 3],
}

impl Routes {
    /// `who` was heard on `port` from `routing_id`.
    pub fn learn(&mut self, who: &Principal, port: Port, routing_id: &[u8]) {
        let slots = self.to.entry(who.clone()).or_default();
        let slot = &mut slots[port as usize];
        if slot.as_deref() == Some(routing_id) {
            return;
        }
        if let Some(old) = slot.replace(routing_id.to_vec()) {
            self.from[port as usize].remove(&old);
        }
        // A routing id is one connection: whoever had it before is gone.
        if let Some(prev) = self.from[port as usize].insert(routing_id.to_vec(), who.clone()) {
            if prev != *who {
                if let Some(s) = self.to.get_mut(&prev) {
                    s[port as usize] = None;
                }
            }
        }
    }

    /// The routing id to reach `who` on `port`.
    pub fn to(&self, who: &Principal, port: Port) -> Option<&[u8]> {
        self.to.get(who)?[port as usize].as_deref()
    }

    /// Who `routing_id` on `port` is.
    pub fn from(&self, port: Port, routing_id: &[u8]) -> Option<&Principal> {
        self.from[port as usize].get(routing_id)
    }

    /// Forget `who` on every port.
    pub fn forget(&mut self, who: &Principal) {
        if let Some(slots) = self.to.remove(who) {
            for (i, rid) in slots.into_iter().enumerate() {
                if let Some(rid) = rid {
                    self.from[i].remove(&rid);
                }
            }
        }
    }

    /// Peers known.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.to.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_replaces_the_route_and_forgetting_clears_both_ways() {
        let mut r = Routes::default();
        let a = Principal::Name("a".into());
        let b = Principal::Name("b".into());
        r.learn(&a, Port::Job, b"1");
        r.learn(&a, Port::Heartbeat, b"2");
        r.learn(&a, Port::Job, b"3");
        assert_eq!(r.to(&a, Port::Job), Some(&b"3"[..]));
        assert_eq!(r.from(Port::Job, b"1"), None);
        assert_eq!(r.from(Port::Job, b"3"), Some(&a));
        // A routing id reused by libzmq for another peer moves with it.
        r.learn(&b, Port::Job, b"3");
        assert_eq!(r.to(&a, Port::Job), None);
        assert_eq!(r.from(Port::Job, b"3"), Some(&b));
        r.forget(&a);
        assert_eq!(r.from(Port::Heartbeat, b"2"), None);
        assert_eq!(r.len(), 1);
    }
}
