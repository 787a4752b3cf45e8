//! How a job ended on a node, as the node reports it and the server keeps it.

use super::*;

/// How a job ended on its node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Exit {
    /// The process exited with this status.
    Code(i32),
    /// The process was killed by this signal.
    Signal(i32),
    /// The job could not run (bad template, cannot start, ...).
    Error(String),
    /// Its `--timeout` passed; the process group was killed.
    TimedOut { secs: u64 },
    /// The node had a cached success for this step: not run.
    Cached,
    /// An earlier job of the same orchestration failed here: not run.
    SkippedAfterFailure,
    /// The node cannot say how it ended (its client stopped while it was
    /// there), or it was sent again after it ran: why. Never run (again).
    Lost(String),
    /// Done, and nothing needed changing: files, packages, units were
    /// already as asked, a RUN's guard held. (`Code(0)` is a change.)
    Unchanged,
    /// `--check`: something would change (the output says what); nothing
    /// did.
    WouldChange,
    /// A handler (`onchanges`) whose jobs changed nothing on the node:
    /// not run.
    NoChange,
}

impl Exit {
    /// The job state this ending means.
    pub fn state(&self) -> JobState {
        match self {
            Exit::Code(0) => JobState::Succeeded,
            Exit::Cached => JobState::Cached,
            Exit::TimedOut { .. } => JobState::TimedOut,
            Exit::SkippedAfterFailure => JobState::Skipped,
            Exit::Lost(_) => JobState::Lost,
            Exit::Unchanged => JobState::Unchanged,
            Exit::WouldChange => JobState::WouldChange,
            Exit::NoChange => JobState::NotTriggered,
            Exit::Code(_) | Exit::Signal(_) | Exit::Error(_) => JobState::Failed,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::Error(e) => f.write_str(e),
            Exit::TimedOut { secs } => write!(f, "timed out after {secs}s; process group killed"),
            Exit::Cached => f.write_str("skipped (cached)"),
            Exit::SkippedAfterFailure => f.write_str("skipped (earlier failure)"),
            Exit::Lost(why) => write!(f, "lost: {why}"),
            Exit::Unchanged => f.write_str("unchanged"),
            Exit::WouldChange => f.write_str("would change"),
            Exit::NoChange => f.write_str("skipped (no change)"),
        }
    }
}

/// What a node reports about one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub exit: Exit,
    #[serde(with = "bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "bytes")]
    pub stderr: Vec<u8>,
    /// Bytes cut from the end of stdout and stderr past `OUTPUT_CAP`.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    /// Execution time measured on the node.
    pub exec_secs: f64,
    /// With `--retries`: the attempts that failed before this one, oldest
    /// first.
    #[serde(deserialize_with = "cautious_seq")]
    pub attempts: Vec<Attempt>,
}

/// One failed attempt of a job run with `--retries`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub exit: Exit,
    #[serde(with = "bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "bytes")]
    pub stderr: Vec<u8>,
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    pub exec_secs: f64,
}

impl Attempt {
    /// What each output of `attempts` earlier attempts keeps.
    pub fn cap(attempts: usize) -> usize {
        ATTEMPTS_CAP / (2 * attempts.max(1))
    }

    /// A finished run of the command, kept as an earlier attempt with its
    /// outputs cut to `cap`.
    pub fn of(o: Outcome, cap: usize) -> Attempt {
        let mut a = Attempt {
            exit: o.exit,
            stdout: o.stdout,
            stderr: o.stderr,
            stdout_dropped: o.stdout_dropped,
            stderr_dropped: o.stderr_dropped,
            exec_secs: o.exec_secs,
        };
        cap_output(&mut a.stdout, &mut a.stdout_dropped, cap);
        cap_output(&mut a.stderr, &mut a.stderr_dropped, cap);
        cap_message(&mut a.exit);
        a
    }
}

/// Cut `out` to `cap` bytes, counting what was cut in `dropped`.
fn cap_output(out: &mut Vec<u8>, dropped: &mut u64, cap: usize) {
    if out.len() > cap {
        *dropped += (out.len() - cap) as u64;
        out.truncate(cap);
    }
}

/// Cut an error message to `MESSAGE_CAP`, on a character boundary.
fn cap_message(exit: &mut Exit) {
    if let Exit::Error(msg) | Exit::Lost(msg) = exit {
        if msg.len() > MESSAGE_CAP {
            let mut end = MESSAGE_CAP - 3;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg.truncate(end);
            msg.push_str("...");
        }
    }
}

impl Outcome {
    /// An outcome without a process (or output).
    pub fn ended(exit: Exit) -> Outcome {
        Outcome {
            exit,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_dropped: 0,
            stderr_dropped: 0,
            exec_secs: 0.0,
            attempts: Vec::new(),
        }
    }

    /// The same with each output (and each earlier attempt's) cut to
    /// `cap` bytes, the cut counted.
    pub fn cut(&self, cap: usize) -> Outcome {
        let mut o = self.clone();
        cap_output(&mut o.stdout, &mut o.stdout_dropped, cap);
        cap_output(&mut o.stderr, &mut o.stderr_dropped, cap);
        for a in &mut o.attempts {
            cap_output(&mut a.stdout, &mut a.stdout_dropped, cap);
            cap_output(&mut a.stderr, &mut a.stderr_dropped, cap);
        }
        o
    }

    /// Cut to what the job port carries: outputs to `OUTPUT_CAP` (the cut
    /// counted), an error message to `MESSAGE_CAP`. A node sends only
    /// bounded outcomes, so the server's frame limit never refuses a result
    /// (which the node would resend forever).
    pub fn bounded(mut self) -> Outcome {
        cap_output(&mut self.stdout, &mut self.stdout_dropped, OUTPUT_CAP);
        cap_output(&mut self.stderr, &mut self.stderr_dropped, OUTPUT_CAP);
        cap_message(&mut self.exit);
        // Earlier attempts share `ATTEMPTS_CAP`; the oldest go first past
        // `MAX_RETRIES`.
        let extra = self
            .attempts
            .len()
            .saturating_sub(crate::dsl::MAX_RETRIES as usize);
        self.attempts.drain(..extra);
        let cap = Attempt::cap(self.attempts.len());
        for a in &mut self.attempts {
            cap_output(&mut a.stdout, &mut a.stdout_dropped, cap);
            cap_output(&mut a.stderr, &mut a.stderr_dropped, cap);
            cap_message(&mut a.exit);
        }
        self
    }
}
