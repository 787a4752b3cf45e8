//! The enrolment table: which CURVE key owns which node name, and whether an
//! operator accepted it. Sans-io: the loop asks it what to do with a
//! handshake (`admits`), a `Ready` (`claim`) and the `manage` actions, and
//! journals the records it returns (`keys.bin` under `--state-path`).
//!
//! Rules:
//! - a name is owned by the first key that claims it, until an operator
//!   deletes the key; a key owns one name. A key that is only pending owns
//!   it weakly: a client that proves the shared key takes the name over
//!   (the pending key is dropped), and another claimant is told the name
//!   is contested (it waits and retries) rather than taken (it stops);
//! - a new key waits in `Pending` (no jobs) until accepted; with a shared key,
//!   a client that proves it knows the shared key is accepted at once;
//! - a rejected key is refused at the handshake;
//! - at most `MAX_PENDING` keys wait at once, so strangers cannot fill the
//!   table (and the disk).

use crate::support::hash::Map as HashMap;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::curve::PublicKey;
use crate::wire::{Denial, KeyState, KeyView};

/// File name of the key journal in the state directory.
pub const FILE: &str = "keys.bin";
/// Keys that may wait for acceptance at once.
pub const MAX_PENDING: usize = 10_000;

/// One change to the table, as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KeyRecord {
    Set {
        name: String,
        key: [u8; 32],
        state: KeyState,
        first_seen_ms: u64,
        last_seen_ms: u64,
    },
    Delete {
        name: String,
    },
}

impl crate::journal::Layout for KeyRecord {
    const VERSION: u32 = 1;
    /// Layout 0 (no header) is this one.
    fn upgrade(_: u32, body: &[u8]) -> Option<Self> {
        crate::journal::decode(body)
    }
}

/// What a client showed about the shared key in its `Ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// No proof (the client has no shared key, or the server has none).
    None,
    Valid,
    Invalid,
}

/// The answer to a `Ready`.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// The key owns the name and is accepted: it is that node.
    Admitted,
    /// The same, over a pending key that had claimed the name first (and
    /// is dropped): to say so.
    AdmittedOver(PublicKey),
    Denied(Denial),
}

/// Where a key stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Never claimed a name here.
    Unknown,
    Known {
        name: String,
        state: KeyState,
    },
}

#[derive(Clone, Debug)]
struct Entry {
    key: PublicKey,
    state: KeyState,
    first_seen_ms: u64,
    last_seen_ms: u64,
}

/// Every enrolled key, by name and by key.
#[derive(Default)]
pub struct Keys {
    by_name: BTreeMap<String, Entry>,
    by_key: HashMap<PublicKey, String>,
    /// How many entries are `Pending`.
    pending: usize,
}

impl Keys {
    /// Replay the journal.
    pub fn restore(records: Vec<KeyRecord>) -> Keys {
        let mut keys = Keys::default();
        for rec in records {
            match rec {
                KeyRecord::Set {
                    name,
                    key,
                    state,
                    first_seen_ms,
                    last_seen_ms,
                } => {
                    let key = PublicKey::from(key);
                    keys.remove(&name);
                    // A key owns one name: a record that moves it wins.
                    if let Some(old) = keys.by_key.get(&key).cloned() {
                        keys.remove(&old);
                    }
                    keys.insert(
                        name,
                        Entry {
                            key,
                            state,
                            first_seen_ms,
                            last_seen_ms,
                        },
                    );
                }
                KeyRecord::Delete { name } => {
                    keys.remove(&name);
                }
            }
        }
        keys
    }

    /// The whole table as records, for rewriting the journal.
    pub fn snapshot(&self) -> Vec<KeyRecord> {
        self.by_name
            .iter()
            .map(|(name, e)| record(name, e))
            .collect()
    }

    fn insert(&mut self, name: String, entry: Entry) {
        debug_assert!(!self.by_key.contains_key(&entry.key));
        if entry.state == KeyState::Pending {
            self.pending += 1;
        }
        self.by_key.insert(entry.key, name.clone());
        self.by_name.insert(name, entry);
    }

    fn remove(&mut self, name: &str) -> Option<Entry> {
        let e = self.by_name.remove(name)?;
        if e.state == KeyState::Pending {
            self.pending -= 1;
        }
        self.by_key.remove(&e.key);
        Some(e)
    }

    /// Change an entry's state, keeping the pending count; its record.
    fn change(&mut self, name: &str, state: KeyState) -> Option<KeyRecord> {
        let e = self.by_name.get_mut(name)?;
        match (e.state == KeyState::Pending, state == KeyState::Pending) {
            (true, false) => self.pending -= 1,
            (false, true) => self.pending += 1,
            _ => {}
        }
        e.state = state;
        Some(record(name, e))
    }

    /// May this key complete a handshake? Only rejected keys may not;
    /// unknown keys come in to claim a name, and wait as `Pending`.
    pub fn admits(&self, key: &PublicKey) -> bool {
        !matches!(
            self.standing(key),
            Standing::Known {
                state: KeyState::Rejected,
                ..
            }
        )
    }

    pub fn standing(&self, key: &PublicKey) -> Standing {
        match self.by_key.get(key) {
            None => Standing::Unknown,
            Some(name) => Standing::Known {
                name: name.clone(),
                state: self.by_name[name].state,
            },
        }
    }

    /// The accepted node this key is, if any.
    #[cfg(test)]
    fn node_of(&self, key: &PublicKey) -> Option<&str> {
        match self.standing(key) {
            Standing::Known {
                state: KeyState::Accepted,
                ..
            } => self.by_key.get(key).map(String::as_str),
            _ => None,
        }
    }

    /// The key that owns `name`.
    pub fn key_of(&self, name: &str) -> Option<PublicKey> {
        self.by_name.get(name).map(|e| e.key)
    }

    /// `key` says `Ready` as `name`. Returns the answer and the record to
    /// journal, if the table changed.
    pub fn claim(
        &mut self,
        key: &PublicKey,
        name: &str,
        proof: Proof,
        now_ms: u64,
    ) -> (Claim, Option<KeyRecord>) {
        if let Some(owned) = self.by_key.get(key).cloned() {
            if owned != name {
                return (Claim::Denied(Denial::KeyHasName(owned)), None);
            }
            let Some(e) = self.by_name.get_mut(name) else {
                debug_assert!(false, "key and name indexes disagree");
                return (Claim::Denied(Denial::NameTaken), None);
            };
            e.last_seen_ms = now_ms;
            return match (e.state, proof) {
                (KeyState::Accepted, _) => (Claim::Admitted, None),
                (KeyState::Rejected, _) => (Claim::Denied(Denial::Rejected), None),
                (KeyState::Pending, Proof::Valid) => {
                    (Claim::Admitted, self.change(name, KeyState::Accepted))
                }
                (KeyState::Pending, Proof::Invalid) => {
                    (Claim::Denied(Denial::WrongSharedKey), None)
                }
                (KeyState::Pending, Proof::None) => (Claim::Denied(Denial::Pending), None),
            };
        }
        let mut over = None;
        if let Some(owner) = self.by_name.get(name) {
            match (owner.state, proof) {
                // Only the shared key proves a node: a stranger with the
                // server's public key may claim any name first, but its
                // pending claim never stands against the real node.
                (KeyState::Pending, Proof::Valid) => {
                    over = Some(owner.key);
                    self.remove(name);
                }
                (_, Proof::Invalid) => return (Claim::Denied(Denial::WrongSharedKey), None),
                (KeyState::Pending, Proof::None) => {
                    return (Claim::Denied(Denial::NameContested), None)
                }
                _ => return (Claim::Denied(Denial::NameTaken), None),
            }
        }
        let state = match proof {
            Proof::Valid => KeyState::Accepted,
            Proof::Invalid => return (Claim::Denied(Denial::WrongSharedKey), None),
            Proof::None if self.pending >= MAX_PENDING => {
                return (Claim::Denied(Denial::TooManyPending), None)
            }
            Proof::None => KeyState::Pending,
        };
        let entry = Entry {
            key: *key,
            state,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
        };
        let rec = record(name, &entry);
        self.insert(name.to_owned(), entry);
        let claim = match (state, over) {
            (KeyState::Accepted, Some(squatter)) => Claim::AdmittedOver(squatter),
            (KeyState::Accepted, None) => Claim::Admitted,
            _ => Claim::Denied(Denial::Pending),
        };
        (claim, Some(rec))
    }

    /// Any message from `key` shows it alive.
    pub fn touch(&mut self, key: &PublicKey, now_ms: u64) {
        if let Some(name) = self.by_key.get(key) {
            if let Some(e) = self.by_name.get_mut(name) {
                e.last_seen_ms = now_ms;
            }
        }
    }

    /// Change the state of the key that owns `name`.
    pub fn set_state(&mut self, name: &str, state: KeyState) -> Result<KeyRecord, String> {
        self.change(name, state)
            .ok_or_else(|| unknown(name, self.by_name.keys()))
    }

    /// Accept every pending key; returns their records.
    pub fn accept_all(&mut self) -> Vec<KeyRecord> {
        let names: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, e)| e.state == KeyState::Pending)
            .map(|(name, _)| name.clone())
            .collect();
        names
            .iter()
            .filter_map(|name| self.change(name, KeyState::Accepted))
            .collect()
    }

    /// Names of the keys waiting for acceptance.
    pub fn pending_names(&self) -> Vec<String> {
        self.by_name
            .iter()
            .filter(|(_, e)| e.state == KeyState::Pending)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Forget the key that owns `name`: the name is free again.
    pub fn delete(&mut self, name: &str) -> Result<KeyRecord, String> {
        if self.remove(name).is_none() {
            return Err(unknown(name, self.by_name.keys()));
        }
        Ok(KeyRecord::Delete {
            name: name.to_owned(),
        })
    }

    /// The key owning `name`, for operators.
    pub fn view(&self, name: &str) -> Option<KeyView> {
        self.by_name.get(name).map(|e| view(name, e))
    }

    pub fn list(&self) -> Vec<KeyView> {
        self.by_name.iter().map(|(n, e)| view(n, e)).collect()
    }
}

fn record(name: &str, e: &Entry) -> KeyRecord {
    KeyRecord::Set {
        name: name.to_owned(),
        key: *e.key.as_bytes(),
        state: e.state,
        first_seen_ms: e.first_seen_ms,
        last_seen_ms: e.last_seen_ms,
    }
}

fn view(name: &str, e: &Entry) -> KeyView {
    KeyView {
        name: name.to_owned(),
        public_key: e.key.z85(),
        fingerprint: e.key.fingerprint(),
        state: e.state,
        first_seen_ms: e.first_seen_ms,
        last_seen_ms: e.last_seen_ms,
    }
}

fn unknown<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    let known = if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    };
    format!("no key is enrolled as '{name}' (keys: {known})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curve::KeyPair;

    fn key() -> PublicKey {
        KeyPair::generate().public
    }

    #[test]
    fn a_new_key_waits_until_accepted_and_owns_its_name() {
        let mut t = Keys::default();
        let (a, b) = (key(), key());
        let (claim, rec) = t.claim(&a, "web1", Proof::None, 5);
        assert_eq!(claim, Claim::Denied(Denial::Pending));
        assert!(rec.is_some(), "a pending key is journaled");
        assert!(t.admits(&a), "pending keys may connect to learn they wait");
        assert_eq!(t.node_of(&a), None);
        // Pending, the name is contested for another key without proof
        // (it waits); the owner is not disturbed.
        assert_eq!(
            t.claim(&b, "web1", Proof::None, 6),
            (Claim::Denied(Denial::NameContested), None)
        );
        assert_eq!(t.key_of("web1"), Some(a));
        assert_eq!(
            t.claim(&a, "web2", Proof::None, 7).0,
            Claim::Denied(Denial::KeyHasName("web1".into()))
        );
        t.set_state("web1", KeyState::Accepted).unwrap();
        assert_eq!(t.claim(&a, "web1", Proof::None, 8), (Claim::Admitted, None));
        // Accepted, it is taken, proof or not.
        assert_eq!(
            t.claim(&b, "web1", Proof::Valid, 9),
            (Claim::Denied(Denial::NameTaken), None)
        );
        assert_eq!(t.node_of(&a), Some("web1"));
        assert_eq!(t.view("web1").unwrap().last_seen_ms, 8);
    }

    #[test]
    fn rejected_keys_are_refused_at_the_handshake_until_deleted() {
        let mut t = Keys::default();
        let a = key();
        t.claim(&a, "n", Proof::None, 0);
        t.set_state("n", KeyState::Rejected).unwrap();
        assert!(!t.admits(&a));
        assert_eq!(
            t.claim(&a, "n", Proof::Valid, 1).0,
            Claim::Denied(Denial::Rejected)
        );
        assert_eq!(
            t.delete("n").unwrap(),
            KeyRecord::Delete { name: "n".into() }
        );
        assert!(t.admits(&a));
        assert_eq!(t.standing(&a), Standing::Unknown);
        assert!(t
            .delete("n")
            .unwrap_err()
            .contains("no key is enrolled as 'n'"));
    }

    #[test]
    fn a_valid_proof_accepts_at_once_but_never_takes_a_name() {
        let mut t = Keys::default();
        let (a, b, c) = (key(), key(), key());
        assert_eq!(t.claim(&a, "n1", Proof::Valid, 0).0, Claim::Admitted);
        assert_eq!(t.node_of(&a), Some("n1"));
        assert_eq!(
            t.claim(&b, "n1", Proof::Valid, 0).0,
            Claim::Denied(Denial::NameTaken)
        );
        assert_eq!(
            t.claim(&c, "n3", Proof::Invalid, 0),
            (Claim::Denied(Denial::WrongSharedKey), None)
        );
        // A pending key that later shows a proof is accepted.
        t.claim(&b, "n2", Proof::None, 0);
        assert_eq!(t.claim(&b, "n2", Proof::Valid, 1).0, Claim::Admitted);
    }

    #[test]
    fn pending_keys_are_capped_and_the_journal_replays() {
        let mut t = Keys::default();
        for i in 0..MAX_PENDING {
            t.claim(&key(), &format!("p{i}"), Proof::None, 0);
        }
        assert_eq!(
            t.claim(&key(), "one-more", Proof::None, 0),
            (Claim::Denied(Denial::TooManyPending), None)
        );
        assert_eq!(t.accept_all().len(), MAX_PENDING);
        let a = key();
        let (_, rec) = t.claim(&a, "late", Proof::None, 0);
        assert!(rec.is_some());
        let mut records = t.snapshot();
        records.push(t.set_state("late", KeyState::Rejected).unwrap());
        records.push(t.delete("p0").unwrap());
        let r = Keys::restore(records);
        assert_eq!(r.list().len(), MAX_PENDING);
        assert_eq!(r.pending, 0);
        assert!(!r.admits(&a));
        assert!(r.view("p0").is_none());
        assert_eq!(r.view("p1").unwrap().state, KeyState::Accepted);
    }

    /// A stranger with only the server's public key claimed `n4` first:
    /// the real `n4`, proving the shared key, takes the name, and the
    /// journal says so; the stranger is back to a claim of a taken name.
    #[test]
    fn a_pending_key_never_holds_a_name_against_the_shared_key() {
        let mut t = Keys::default();
        let (stranger, real) = (key(), key());
        assert_eq!(
            t.claim(&stranger, "n4", Proof::None, 0).0,
            Claim::Denied(Denial::Pending)
        );
        let (claim, rec) = t.claim(&real, "n4", Proof::Valid, 1);
        assert_eq!(claim, Claim::AdmittedOver(stranger));
        assert_eq!(t.key_of("n4"), Some(real));
        assert_eq!(t.standing(&stranger), Standing::Unknown);
        assert_eq!(t.pending, 0);
        assert_eq!(
            t.claim(&stranger, "n4", Proof::None, 2),
            (Claim::Denied(Denial::NameTaken), None)
        );
        // Replayed, the last record wins.
        let mut records = vec![record(
            "n4",
            &Entry {
                key: stranger,
                state: KeyState::Pending,
                first_seen_ms: 0,
                last_seen_ms: 0,
            },
        )];
        records.extend(rec);
        let r = Keys::restore(records);
        assert_eq!(r.key_of("n4"), Some(real));
        assert_eq!(r.view("n4").unwrap().state, KeyState::Accepted);
        assert_eq!(r.pending, 0);
    }
}
