//! Fixes the simulator must be able to undo, to show it finds the bugs
//! they fixed: each is a switch, off unless a test of this thread turns
//! it on, read only in test builds.

use std::cell::Cell;

/// A fix undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Before "a job id starts at most once per node" (2026-12-04): the
    /// node's ledger forgets jobs that ended, a result does not take its
    /// job out of the node's queue on the server, and dispatch sends what
    /// is queued whatever its state; so a job whose dispatch record a
    /// server crash lost, reported before the node's Ready, is sent and
    /// run again.
    BeforeExactlyOnce,
}

thread_local! {
    static ACTIVE: Cell<Option<Mutation>> = const { Cell::new(None) };
}

/// Is `m` on for this thread?
pub fn active(m: Mutation) -> bool {
    ACTIVE.with(|a| a.get() == Some(m))
}

/// Turn `m` on for this thread until the guard is dropped.
pub fn undo(m: Mutation) -> impl Drop {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(None));
        }
    }
    ACTIVE.with(|a| a.set(Some(m)));
    Guard
}
