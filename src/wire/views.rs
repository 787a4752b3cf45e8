//! What the server shows of its state: jobs, parts, nodes and keys.

use super::*;

/// Where one job stands on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting on the server for its turn on the node.
    Queued,
    /// Sent to the node, not yet started.
    Sent,
    Running,
    Succeeded,
    /// Not run: the node had a cached success for this step.
    Cached,
    Failed,
    /// Killed at its `--timeout`.
    TimedOut,
    /// Not run: an earlier job of the same orchestration failed on the node.
    Skipped,
    /// The node vanished (expired or restarted) before reporting.
    Lost,
    /// Not run: the node was offline (known, but not connected) when the
    /// job was for it to start.
    Unreachable,
    /// Done, and nothing needed changing. (`Succeeded` changed something.)
    Unchanged,
    /// `--check`: something would change; nothing did.
    WouldChange,
    /// Not run: a handler whose `onchanges` jobs changed nothing here.
    NotTriggered,
}

impl JobState {
    /// Is this a final state?
    pub fn is_done(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Sent | JobState::Running)
    }

    /// Did the step hold on this node (ran fine, or was already done)?
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Cached
                | JobState::Unchanged
                | JobState::WouldChange
                | JobState::NotTriggered
        )
    }

    /// Did the step change something on the node (or, checking, would
    /// it)? A RUN that ran changed; a file, package or unit that was
    /// already as asked did not.
    pub fn changed(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::WouldChange)
    }

    /// As shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Sent => "sent",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Cached => "skipped (cached)",
            JobState::Failed => "failed",
            JobState::TimedOut => "timed out",
            JobState::Skipped => "skipped (earlier failure)",
            JobState::Lost => "lost",
            JobState::Unreachable => "unreachable (node offline)",
            JobState::Unchanged => "unchanged",
            JobState::WouldChange => "would change",
            JobState::NotTriggered => "skipped (no change)",
        }
    }
}

/// Whether a known node is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Online,
    /// Silent past its expiry, or not back since a server restart: jobs
    /// for it end `unreachable`.
    Offline,
    /// Online when the server stopped, and not yet back since it started:
    /// jobs for it wait (until it expires, 3 intervals).
    Reconnecting,
}

impl NodeState {
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Online => "online",
            NodeState::Offline => "offline",
            NodeState::Reconnecting => "reconnecting",
        }
    }
}

/// A node, as listed by `manage --list-nodes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub state: NodeState,
    /// The director version the node's client runs.
    pub version: String,
    pub last_heartbeat_ms: u64,
    pub expires_ms: u64,
    /// Jobs waiting on the server for this node.
    pub queued: u32,
    /// Jobs sent to the node and not yet finished.
    pub in_flight: u32,
    /// What its operator labelled it with.
    pub labels: crate::facts::Map,
    /// What it says of itself (OS, kernel, addresses, ...).
    pub facts: crate::facts::Map,
    /// Its cache, as last reported since the server started: only in
    /// `--node-info`.
    pub cache: Option<CacheSummary>,
}

/// Where an enrolled key stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Waiting for an operator; its node gets no jobs.
    Pending,
    Accepted,
    /// Refused at every handshake.
    Rejected,
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Accepted => "accepted",
            KeyState::Rejected => "rejected",
        }
    }
}

/// An enrolled key, as listed by `manage --list-keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    /// The node name the key owns.
    pub name: String,
    /// Z85.
    pub public_key: String,
    pub fingerprint: String,
    pub state: KeyState,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
}

/// The server's public key, for `manage --show-key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerKeyView {
    /// Z85, for clients' `--server-key`.
    pub public_key: String,
    pub fingerprint: String,
    /// Where it comes from: the key file, or the shared key.
    pub source: String,
}

/// A job, as listed by `manage --list-jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: Uuid,
    /// The orchestration run it belongs to.
    pub parent: Option<Uuid>,
    /// Its `name:` in the orchestration.
    pub name: Option<String>,
    pub verb: Verb,
    pub args: String,
    pub task_sha1: String,
    pub submitted_ms: u64,
    /// When the last node finished, once all have.
    pub finished_ms: Option<u64>,
    /// How many nodes are in each state.
    pub states: BTreeMap<JobState, u32>,
    /// How many nodes it changed something on (or, `--check`, would).
    pub changed: u32,
    /// Who submitted it: `token NAME` (the API) or `uid N` (the CLI),
    /// when known.
    #[serde(default)]
    pub by: Option<String>,
}

/// One node's part of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartView {
    pub job_id: Uuid,
    pub node: String,
    pub state: JobState,
    /// It changed something on the node (or, `--check`, would).
    pub changed: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the job could not run, or why it was lost.
    pub message: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    /// Execution time measured on the node.
    pub exec_secs: Option<f64>,
    /// From the server sending the job to the result coming back.
    pub rtt_secs: Option<f64>,
    pub sent_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// With `--retries`: the attempts that failed before the last, oldest
    /// first.
    #[serde(deserialize_with = "cautious_seq")]
    pub attempts: Vec<AttemptView>,
}

impl PartView {
    /// The same without its outputs and earlier attempts (never copied).
    pub fn without_output(&self) -> PartView {
        PartView {
            job_id: self.job_id,
            node: self.node.clone(),
            state: self.state,
            changed: self.changed,
            exit_code: self.exit_code,
            signal: self.signal,
            message: self.message.clone(),
            stdout: String::new(),
            stderr: String::new(),
            stdout_dropped: self.stdout_dropped,
            stderr_dropped: self.stderr_dropped,
            exec_secs: self.exec_secs,
            rtt_secs: self.rtt_secs,
            sent_ms: self.sent_ms,
            finished_ms: self.finished_ms,
            attempts: Vec::new(),
        }
    }
}

/// An earlier attempt, as the CLI sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    pub exec_secs: f64,
}

/// Everything about one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    pub job: JobView,
    pub nodes: Vec<PartView>,
}
