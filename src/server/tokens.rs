//! API tokens: who may use the HTTP API, and for what. Sans-io like the
//! key table: `manage --create-token` makes one and its secret is shown
//! once; the table keeps only each secret's SHA-256 (a stolen state
//! directory gives no token away) in `tokens.bin` under `--state-path`,
//! journaled and synced like the key table before anything is answered.
//!
//! A secret is `dtk_` and 64 hex digits (256 random bits): a hash of it
//! needs no salt or stretching, and a lookup by hash is constant-time in
//! effect (the attacker does not control which entry a guess lands on).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::support::hash::Map as HashMap;
use crate::wire::{Role, TokenView};

/// File name of the token journal in the state directory.
pub const FILE: &str = "tokens.bin";
/// Tokens kept at most.
pub const MAX_TOKENS: usize = 1000;
/// What every secret starts with: a leaked one is easy to find in logs
/// and repositories (secret scanners look for such prefixes).
pub const PREFIX: &str = "dtk_";

/// One change to the table, as journaled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TokenRecord {
    Set {
        name: String,
        role: Role,
        targets: Option<String>,
        hash: [u8; 32],
        created_ms: u64,
    },
    Revoke {
        name: String,
    },
}

impl crate::journal::Layout for TokenRecord {
    const VERSION: u32 = 1;
    fn upgrade(_: u32, body: &[u8]) -> Option<Self> {
        crate::journal::decode(body)
    }
}

/// Who a request comes from, as its token says.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// For `run`: the target pattern its submissions must stay within.
    pub targets: Option<String>,
}

struct Entry {
    role: Role,
    targets: Option<String>,
    hash: [u8; 32],
    created_ms: u64,
    last_used_ms: Option<u64>,
}

/// The table.
#[derive(Default)]
pub struct Tokens {
    by_name: BTreeMap<String, Entry>,
    by_hash: HashMap<[u8; 32], String>,
}

impl Tokens {
    /// The table the journal's records leave.
    pub fn restore(records: Vec<TokenRecord>) -> Tokens {
        let mut t = Tokens::default();
        for rec in records {
            t.apply(rec);
        }
        t
    }

    /// Records another server wrote (a standby following the log).
    pub fn apply_all(&mut self, records: Vec<TokenRecord>) {
        for rec in records {
            self.apply(rec);
        }
    }

    fn apply(&mut self, rec: TokenRecord) {
        match rec {
            TokenRecord::Set {
                name,
                role,
                targets,
                hash,
                created_ms,
            } => {
                self.remove(&name);
                self.by_hash.insert(hash, name.clone());
                self.by_name.insert(
                    name,
                    Entry {
                        role,
                        targets,
                        hash,
                        created_ms,
                        last_used_ms: None,
                    },
                );
            }
            TokenRecord::Revoke { name } => self.remove(&name),
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(e) = self.by_name.remove(name) {
            self.by_hash.remove(&e.hash);
        }
    }

    /// Records that rebuild the table as it is (for a compaction).
    pub fn snapshot(&self) -> Vec<TokenRecord> {
        self.by_name
            .iter()
            .map(|(name, e)| TokenRecord::Set {
                name: name.clone(),
                role: e.role,
                targets: e.targets.clone(),
                hash: e.hash,
                created_ms: e.created_ms,
            })
            .collect()
    }

    /// Make a token: its secret (to show once) and the record to journal.
    /// `targets` is checked by the caller (a target pattern).
    pub fn create(
        &mut self,
        name: &str,
        role: Role,
        targets: Option<String>,
        now_ms: u64,
    ) -> Result<(String, TokenRecord, TokenView), String> {
        check_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(format!(
                "a token named '{name}' exists: revoke it first (`director manage --revoke-token {name}`) or pick another name"
            ));
        }
        if self.by_name.len() >= MAX_TOKENS {
            return Err(format!(
                "there are {MAX_TOKENS} tokens already: revoke some first"
            ));
        }
        if targets.is_some() && role != Role::Run {
            return Err(format!(
                "--targets limits where a run token may submit; a {} token submits nothing",
                role.name()
            ));
        }
        let secret = format!(
            "{PREFIX}{}",
            crate::curve::random_bytes::<32>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let rec = TokenRecord::Set {
            name: name.to_owned(),
            role,
            targets: targets.clone(),
            hash: crate::curve::sha256(secret.as_bytes()),
            created_ms: now_ms,
        };
        self.apply(rec.clone());
        let view = TokenView {
            name: name.to_owned(),
            role,
            targets,
            created_ms: now_ms,
            last_used_ms: None,
        };
        Ok((secret, rec, view))
    }

    /// Revoke a token: its view as it was, and the record to journal.
    pub fn revoke(&mut self, name: &str) -> Result<(TokenView, TokenRecord), String> {
        let Some(view) = self.view(name) else {
            return Err(format!(
                "no token named '{name}' (`director manage --list-tokens` lists them)"
            ));
        };
        let rec = TokenRecord::Revoke {
            name: name.to_owned(),
        };
        self.apply(rec.clone());
        Ok((view, rec))
    }

    fn view(&self, name: &str) -> Option<TokenView> {
        let e = self.by_name.get(name)?;
        Some(TokenView {
            name: name.to_owned(),
            role: e.role,
            targets: e.targets.clone(),
            created_ms: e.created_ms,
            last_used_ms: e.last_used_ms,
        })
    }

    pub fn list(&self) -> Vec<TokenView> {
        self.by_name.keys().filter_map(|n| self.view(n)).collect()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Who `secret` belongs to, if it is a token of ours.
    pub fn authenticate(&mut self, secret: &str, now_ms: u64) -> Option<Caller> {
        if !secret.starts_with(PREFIX) || secret.len() > 128 {
            return None;
        }
        let name = self.by_hash.get(&crate::curve::sha256(secret.as_bytes()))?;
        let e = self.by_name.get_mut(name)?;
        e.last_used_ms = Some(now_ms);
        Some(Caller {
            name: name.clone(),
            role: e.role,
            targets: e.targets.clone(),
        })
    }
}

/// A token's name: what logs and `--job-info` show of who submitted.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "token name '{name}': use 1 to 64 letters, digits, '-', '_', '.' or '@'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_authenticates_by_its_secret_until_revoked_and_survives_a_restore() {
        let mut t = Tokens::default();
        let (secret, rec, view) = t.create("ci", Role::Run, Some("web*".into()), 5).unwrap();
        assert!(secret.starts_with(PREFIX) && secret.len() == PREFIX.len() + 64);
        assert_eq!(view.role, Role::Run);
        let caller = t.authenticate(&secret, 9).unwrap();
        assert_eq!(
            (caller.name.as_str(), caller.targets.as_deref()),
            ("ci", Some("web*"))
        );
        assert_eq!(t.list()[0].last_used_ms, Some(9));
        assert!(t.authenticate("dtk_0000", 9).is_none());
        assert!(t.authenticate(&secret[1..], 9).is_none());
        // The journal holds the hash only.
        let TokenRecord::Set { hash, .. } = &rec else {
            panic!()
        };
        assert!(!format!("{rec:?}").contains(&secret[PREFIX.len()..]));
        assert_eq!(*hash, crate::curve::sha256(secret.as_bytes()));
        let mut again = Tokens::restore(vec![rec.clone()]);
        assert!(again.authenticate(&secret, 10).is_some());
        let (_, revoke) = again.revoke("ci").unwrap();
        assert!(again.authenticate(&secret, 11).is_none());
        let gone = Tokens::restore(vec![rec, revoke]);
        assert!(gone.is_empty());
    }

    #[test]
    fn bad_names_duplicates_and_targets_on_other_roles_are_refused() {
        let mut t = Tokens::default();
        assert!(t
            .create("", Role::Read, None, 0)
            .unwrap_err()
            .contains("token name ''"));
        assert!(t.create("a b", Role::Read, None, 0).is_err());
        t.create("a", Role::Read, None, 0).unwrap();
        assert!(t
            .create("a", Role::Admin, None, 0)
            .unwrap_err()
            .contains("exists"));
        assert!(t
            .create("b", Role::Read, Some("web*".into()), 0)
            .unwrap_err()
            .contains("a read token submits nothing"));
        assert!(t.revoke("zz").unwrap_err().contains("no token named 'zz'"));
        assert_eq!(t.list().len(), 1);
    }
}
