//! The control protocol: the CLI's requests and the server's responses
//! on the local socket, and their framing.

use super::*;

/// A request from the CLI to the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Queue a job on the nodes `targets` match, less those `exclude`
    /// matches (`targets` module); with `wait`, the connection receives
    /// `NodeDone` for each node and then `JobDone`.
    Submit {
        task: Task,
        #[serde(deserialize_with = "cautious_seq")]
        targets: Vec<String>,
        #[serde(deserialize_with = "cautious_seq")]
        exclude: Vec<String>,
        wait: bool,
        /// Parts for offline nodes wait for them, up to the job's timeout,
        /// instead of ending `unreachable` at once.
        queue_offline: bool,
        /// With `wait`: also `Output` as the nodes print.
        follow: bool,
    },
    /// Queue an orchestration: blocks of jobs, in order, under one parent.
    /// With `dry_run`, only check it and return the plan. With `wait`, the
    /// connection receives `NodeDone` for every node of every job, then
    /// `ParentDone`.
    Orchestrate {
        #[serde(deserialize_with = "cautious_seq")]
        blocks: Vec<Block>,
        /// Nodes left out of every block.
        #[serde(deserialize_with = "cautious_seq")]
        exclude: Vec<String>,
        /// Batch by batch instead of every node at once.
        rolling: Option<Rolling>,
        wait: bool,
        dry_run: bool,
        queue_offline: bool,
        /// With `wait`: also `Output` as the nodes print.
        follow: bool,
    },
    ListNodes,
    /// Every job; `show_values`: ARG and ENV values too.
    ListJobs {
        show_values: bool,
    },
    /// The newest `limit` jobs (oldest first) that match: the API's
    /// filtered list, without building a view of every job.
    FindJobs {
        show_values: bool,
        state: Option<JobState>,
        verb: Option<crate::dsl::Verb>,
        run: Option<Uuid>,
        limit: Option<u32>,
    },
    JobInfo {
        /// ARG and ENV values too.
        show_values: bool,
        id: Uuid,
    },
    PurgeJobs,
    PurgeNodes,
    ShowKey,
    ListKeys,
    AcceptKey {
        name: String,
    },
    AcceptAll,
    RejectKey {
        name: String,
    },
    DeleteKey {
        name: String,
    },
    /// One node, with its cache (ARG values only with `show_values`):
    /// answered with `Nodes` of one.
    NodeInfo {
        name: String,
        show_values: bool,
    },
    /// Which job or run `id` names: a whole id, or a prefix of at least
    /// `MIN_ID_PREFIX` characters that only one has. Answered `Resolved`.
    Resolve {
        id: String,
    },
    /// An orchestration run: its jobs and where each node stands.
    RunInfo {
        parent: Uuid,
    },
    /// Every orchestration run.
    ListRuns,
    /// Follow a job (or, `run`, a run) already going, as `--wait` does:
    /// `NodeDone` for each part already finished, then as each finishes,
    /// then `JobDone` (`ParentDone`); with `follow`, `Output` from now on.
    Watch {
        id: Uuid,
        run: bool,
        follow: bool,
    },
    /// A new API token (`manage --create-token`): answered once with its
    /// secret, which the server does not keep (only its hash).
    CreateToken {
        name: String,
        role: Role,
        /// For `run`: the nodes it may submit to (a target pattern).
        targets: Option<String>,
    },
    ListTokens,
    RevokeToken {
        name: String,
    },
    /// The servers on etcd (`manage --cluster`): answered by a standby
    /// too.
    Cluster,
}

/// The servers on etcd, as the one asked sees them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The server that answered, and its role: "active", "standby", or
    /// "alone" (no etcd).
    pub this: String,
    pub role: String,
    /// The active server, as this one last read the leader key.
    pub leader: Option<String>,
    pub etcd_endpoints: Vec<String>,
    /// Why etcd did not answer this server's last call (none: it did).
    pub etcd_error: Option<String>,
    #[serde(deserialize_with = "cautious_seq")]
    pub servers: Vec<ServerView>,
}

/// One server's record in etcd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    pub name: String,
    pub role: String,
    /// Where nodes reach it.
    pub address: String,
    pub job_port: u16,
    /// The last entry of the log its journals hold, and how many the
    /// active server has that it has not.
    pub applied: u64,
    pub behind: u64,
    /// It lost its place in the log and waits for a base.
    pub wants_base: bool,
    /// When it last wrote its record (its clock).
    pub updated_ms: u64,
    pub version: String,
    /// Its server key's fingerprint (empty with --curve off).
    pub key: String,
}

/// What an API token may do. Each role may do what the ones before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// See everything but secret values (ARG and ENV).
    Read,
    /// Also submit jobs and orchestrations (to its targets, if it has them).
    Run,
    /// Also change keys, purge, and see secret values.
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Run => "run",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "run" => Some(Role::Run),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An API token as `manage --list-tokens` shows it (never its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    pub targets: Option<String>,
    pub created_ms: u64,
    /// When it was last used, since the server started.
    pub last_used_ms: Option<u64>,
}

/// The fewest characters of an id that `Resolve` takes.
pub const MIN_ID_PREFIX: usize = 6;

/// An orchestration run as `manage --job-info RUN` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    pub parent_id: Uuid,
    /// Its jobs, in order.
    #[serde(deserialize_with = "cautious_seq")]
    pub jobs: Vec<JobView>,
    /// Each job's part on each node, states only (outputs: `--job-info JOB`).
    #[serde(deserialize_with = "cautious_seq")]
    pub parts: Vec<PartView>,
}

/// A run, a line of `manage --list-runs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub parent_id: Uuid,
    pub jobs: u32,
    pub nodes: u32,
    pub submitted_ms: u64,
    /// When its last part finished, once all have.
    pub finished_ms: Option<u64>,
    /// How many parts (a job on a node) are in each state.
    pub states: BTreeMap<JobState, u32>,
    /// How many parts changed something (or, `--check`, would).
    pub changed: u32,
}

/// A response or pushed event from the server to the CLI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Submitted(Submitted),
    NodeDone(PartView),
    JobDone(JobView),
    Orchestrated(Plan),
    ParentDone {
        parent_id: Uuid,
        jobs: Vec<JobView>,
    },
    Nodes(Vec<NodeView>),
    Jobs(Vec<JobView>),
    Job(JobDetail),
    Purged {
        purged: usize,
        kept: usize,
    },
    ServerKey(ServerKeyView),
    Keys(Vec<KeyView>),
    /// The keys an accept, reject or delete changed (as they are now; a
    /// deleted key as it was).
    KeysChanged(Vec<KeyView>),
    /// A token made: its secret, shown once.
    TokenCreated {
        token: TokenView,
        secret: String,
    },
    Tokens(Vec<TokenView>),
    /// For the API's event stream: a node came online, went offline, or
    /// its key waits for acceptance.
    NodeChanged {
        node: String,
        state: String,
    },
    Rejected(String),
    /// To a CLI waiting on work: the server is stopping (SIGTERM); the
    /// work goes on when it is back.
    Stopping,
    /// What `Resolve` found: a job, or (`run`) an orchestration run.
    Resolved {
        id: Uuid,
        run: bool,
    },
    Run(RunDetail),
    Runs(Vec<RunView>),
    /// To a CLI that follows (`--follow`): what a node's command printed.
    /// `dropped` bytes before `data` were not shown (too fast).
    Output {
        job_id: Uuid,
        node: String,
        stream: Stream,
        data: Vec<u8>,
        dropped: u64,
    },
    /// Before the last answer to a waiting CLI: the parts whose output it
    /// was not sent (it read too slowly; their states came all the same),
    /// and the jobs to look them up in (the first `WITHHELD_JOBS`).
    Withheld {
        parts: u64,
        #[serde(deserialize_with = "cautious_seq")]
        jobs: Vec<Uuid>,
    },
    Cluster(ClusterView),
    /// Before an answer from a standby's copy of the state: who answers,
    /// who leads, and how many log entries it is behind.
    Replica {
        this: String,
        leader: Option<String>,
        behind: u64,
    },
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub job_id: Uuid,
    pub task_sha1: String,
    pub targets: Vec<String>,
    /// Known nodes left out because they are offline (no `--target`).
    pub offline: Vec<String>,
    /// Targets known from before the server's restart that have not come
    /// back yet: the job waits for them, at most as long as each says.
    #[serde(deserialize_with = "cautious_seq")]
    pub reconnecting: Vec<Awaited>,
}

/// A target the server expects back (it was online before the server
/// restarted): its jobs start when it reconnects, or end unreachable once
/// `within_ms` has passed without it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaited {
    pub node: String,
    pub within_ms: u64,
}

/// Frame a control message: length prefix and body.
pub fn encode_control<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = encode_body(msg);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reassembles length-prefixed control messages from a byte stream.
pub struct FrameBuf {
    buf: Vec<u8>,
    max: usize,
}

impl FrameBuf {
    /// A buffer that refuses messages longer than `max` bytes.
    pub fn new(max: usize) -> FrameBuf {
        FrameBuf {
            buf: Vec::new(),
            max,
        }
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole message.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, if one is buffered. An error means the stream
    /// is corrupt and must be closed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let Some(len) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        msg.map(Some)
    }
}
