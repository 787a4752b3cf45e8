//! Who the servers of a cluster are: each keeps a record of itself in
//! etcd (`members/NAME`: its role, where nodes reach it, how far it
//! follows the log), renewed every third of the lease. The active server
//! reads them to trim the log (an entry every live standby has applied is
//! gone from etcd: job outputs do not stay there) and to hear a standby
//! that lost its place ask for a base; `manage --cluster` shows them.

use serde::{Deserialize, Serialize};

/// A server's record in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// "active" or "standby".
    pub role: String,
    /// Where nodes reach it (its --bind-address, or its host name).
    pub address: String,
    pub job_port: u16,
    /// The last entry of the log its journals hold.
    pub applied: u64,
    /// It cannot follow the log from where it is (the entries it needs
    /// were trimmed): the active server writes a base.
    #[serde(default)]
    pub wants_base: bool,
    /// Its clock when it wrote this.
    pub updated_ms: u64,
    pub version: String,
    /// Its CURVE public key's fingerprint (empty with --curve off): every
    /// server must hold the same key pair, or clients that trust one
    /// refuse the others.
    #[serde(default)]
    pub key: String,
}

impl Member {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Member> {
        serde_json::from_slice(bytes).ok()
    }

    /// Heard from within `fresh_ms` of `now_ms`?
    pub fn is_fresh(&self, now_ms: u64, fresh_ms: u64) -> bool {
        now_ms.saturating_sub(self.updated_ms) <= fresh_ms
    }
}

/// What the active server (`me`, at entry `seq`) does with the records:
/// the entries up to which the log may go (every fresh standby has them),
/// and whether a fresh standby asks for a base (it holds the log where
/// it is until it has it).
pub fn plan(members: &[Member], me: &str, seq: u64, now_ms: u64, fresh_ms: u64) -> (u64, bool) {
    let standbys = members
        .iter()
        .filter(|m| m.name != me && m.is_fresh(now_ms, fresh_ms));
    let mut upto = seq;
    let mut wants_base = false;
    for m in standbys {
        // One that waits for a base holds the log where it is too: the
        // base may not go before it has it.
        wants_base |= m.wants_base;
        upto = upto.min(m.applied);
    }
    (upto, wants_base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, applied: u64, updated_ms: u64, wants_base: bool) -> Member {
        Member {
            name: name.into(),
            role: "standby".into(),
            address: "10.0.0.1".into(),
            job_port: 5555,
            applied,
            wants_base,
            updated_ms,
            version: "0".into(),
            key: String::new(),
        }
    }

    #[test]
    fn the_log_goes_up_to_what_every_live_standby_applied() {
        let now = 100_000;
        let ms = [
            m("s0", 50, now, false),         // the active server itself
            m("s1", 40, now - 1000, false),  // live
            m("s2", 30, now - 1000, false),  // live, behind
            m("s3", 5, now - 60_000, false), // gone: not waited for
            m("s4", 0, now - 500, true),     // lost its place: a base
        ];
        assert_eq!(plan(&ms, "s0", 50, now, 10_000), (0, true));
        assert_eq!(plan(&ms[..4], "s0", 50, now, 10_000), (30, false));
        assert_eq!(plan(&ms[..1], "s0", 50, now, 10_000), (50, false));
        // A record that does not decode is no member.
        assert_eq!(Member::decode(br#"{"name": 1}"#), None);
        assert_eq!(Member::decode(&ms[1].encode()), Some(ms[1].clone()));
    }
}
