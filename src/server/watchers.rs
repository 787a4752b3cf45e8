//! Who waits on what: the control connections waiting on each job or run
//! (`--wait`, `manage --watch`) and, among them, those that follow its
//! output (`--follow`). One owner for both, so a connection that goes
//! away leaves no trace in either.

use crate::support::hash::{Map as HashMap, Set as HashSet};
use std::collections::BTreeSet;

use mio::Token;
use uuid::Uuid;

#[derive(Default)]
pub struct Watchers {
    by_id: HashMap<Uuid, Vec<Token>>,
    following: HashSet<Token>,
}

impl Watchers {
    /// `token` waits on job or run `id`; with `follow`, for its output too.
    pub fn watch(&mut self, id: Uuid, token: Token, follow: bool) {
        self.by_id.entry(id).or_default().push(token);
        if follow {
            self.following.insert(token);
        }
    }

    /// Who waits on `id`.
    pub fn of(&self, id: &Uuid) -> &[Token] {
        self.by_id.get(id).map_or(&[], Vec::as_slice)
    }

    /// Who follows the output of job `id` or of its run, once each.
    pub fn following(&self, id: Uuid, parent: Option<Uuid>) -> Vec<Token> {
        let mut tokens: Vec<Token> = [Some(id), parent]
            .into_iter()
            .flatten()
            .flat_map(|id| self.of(&id).iter().copied())
            .filter(|t| self.following.contains(t))
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens
    }

    /// `id` is over: nobody waits on it any more.
    pub fn done(&mut self, id: &Uuid) {
        self.by_id.remove(id);
    }

    /// A connection went away.
    pub fn closed(&mut self, token: Token) {
        for tokens in self.by_id.values_mut() {
            tokens.retain(|t| *t != token);
        }
        self.by_id.retain(|_, tokens| !tokens.is_empty());
        self.following.remove(&token);
    }

    /// Every waiting connection, once each.
    pub fn all(&self) -> BTreeSet<Token> {
        self.by_id.values().flatten().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_leaves_no_trace_and_followers_are_told_once() {
        let (job, run) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut w = Watchers::default();
        w.watch(job, Token(1), true);
        w.watch(run, Token(1), true);
        w.watch(job, Token(2), false);
        assert_eq!(w.following(job, Some(run)), vec![Token(1)]);
        assert_eq!(w.all().len(), 2);
        w.closed(Token(1));
        assert_eq!(w.of(&job), &[Token(2)]);
        assert!(w.of(&run).is_empty());
        assert!(w.following(job, Some(run)).is_empty());
        w.done(&job);
        assert!(w.all().is_empty());
    }
}
