//! Running one task on this node: what each verb does, and the `Outcome`
//! reported for it. Processes are started here and watched by the client loop.

use mio::Registry;

use crate::dsl::Task;
use crate::reactor::child::{Child, Ended};
use crate::reactor::TokenCounter;
use crate::wire::{Exit, Outcome};

/// A task that has started, or already ended without a process.
pub enum Started {
    Process(Child),
    Done(Outcome),
}

/// Start `task`.
pub fn start(task: &Task, registry: &Registry, tokens: &mut TokenCounter) -> Started {
    match task {
        Task::Run { command } => match Child::spawn(command, registry, tokens) {
            Ok(child) => Started::Process(child),
            Err(e) => Started::Done(failure(format!("cannot start /bin/sh: {e}"))),
        },
    }
}

/// The report for a reaped process.
pub fn outcome(ended: Ended) -> Outcome {
    Outcome {
        exit: ended.exit,
        stdout: ended.out.bytes,
        stderr: ended.err.bytes,
        stdout_dropped: ended.out.dropped,
        stderr_dropped: ended.err.dropped,
        exec_secs: ended.exec_secs,
    }
}

/// A job that failed before or without a process.
pub fn failure(message: String) -> Outcome {
    Outcome {
        exit: Exit::Error(message),
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_dropped: 0,
        stderr_dropped: 0,
        exec_secs: 0.0,
    }
}
