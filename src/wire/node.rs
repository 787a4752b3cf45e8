//! The node protocol: what server and clients say to each other on ZeroMQ.

use super::*;

/// Client to server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Heartbeat port: "still here", every interval.
    Heartbeat { interval_ms: u64 },
    /// Job port: sent on every (re)connect and when the server asks. `name`
    /// is the node name this client claims for its key. `holding` lists the
    /// jobs this client still has (queued, running, or with an
    /// unacknowledged result); the server declares the rest of what it sent
    /// this node lost. `proof` shows that the client knows the shared key
    /// (see `curve::SharedKey::proof`), for automatic acceptance; empty
    /// without one. `instance` is drawn at random when the client process
    /// starts, and `seen` is the last `Dispatch` it received: the server
    /// judges against `holding` only jobs the client must have received by
    /// then, so a `Ready` that crossed jobs on the wire loses nothing.
    /// `facts` (read from the machine) and `labels` (given by its operator)
    /// are what targets match.
    Ready {
        name: String,
        version: String,
        interval_ms: u64,
        #[serde(deserialize_with = "cautious_seq")]
        holding: Vec<Uuid>,
        #[serde(with = "bytes")]
        proof: Vec<u8>,
        instance: u64,
        seen: Option<Dispatch>,
        facts: crate::facts::Map,
        labels: crate::facts::Map,
    },
    /// Job port: the job's process started.
    Started { job_id: Uuid },
    /// Job port: the job ended; resent until acknowledged.
    Finished { job_id: Uuid, outcome: Outcome },
    /// Transfer port: send `len` bytes at `offset` of file `file` (an index
    /// into the ADD job's files). Only the job's own files, only while the
    /// job runs on this node.
    Fetch {
        job_id: Uuid,
        file: u32,
        offset: u64,
        len: u32,
    },
    /// Job port: the running QUERY job's ARG on this node (`None`: not
    /// set). Resent on every registration until the map comes.
    QueryValue { job_id: Uuid, value: Option<String> },
    /// Job port: what the node's cache holds, once welcomed, then after a
    /// change (when its jobs are done, or at the next heartbeat): for
    /// `manage --node-info`.
    Cache(CacheSummary),
    /// Job port: output of a running job sent `live`, as it comes: at most
    /// `LIVE_CHUNK` bytes, one per stream every `LIVE_EVERY`; `dropped`
    /// counts bytes before `data` that were not sent (too fast).
    Output {
        job_id: Uuid,
        stream: Stream,
        #[serde(with = "bytes")]
        data: Vec<u8>,
        dropped: u64,
    },
}

/// One of a command's output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The most a node sends of one stream's live output at once...
pub const LIVE_CHUNK: usize = 16 << 10;
/// ...and how often, at most.
pub const LIVE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// What a node's cache holds, bounded (`CacheSummary::bounded`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheSummary {
    /// ARG values by key (cut to `SUMMARY_VALUE` bytes); `None` where the
    /// CLI did not ask for values (`--show-values`).
    pub args: BTreeMap<String, Option<String>>,
    /// ARGs past the first `SUMMARY_ENTRIES`, counted but not listed.
    pub args_more: u32,
    /// ENV keys (values stay on the node).
    #[serde(deserialize_with = "cautious_seq")]
    pub env: Vec<String>,
    /// QUERY maps kept, by key.
    #[serde(deserialize_with = "cautious_seq")]
    pub queries: Vec<String>,
    /// Steps remembered as succeeded.
    pub steps: u32,
}

/// A summary lists this many entries of each kind.
pub const SUMMARY_ENTRIES: usize = 64;
/// ... and this many bytes of each ARG value.
pub const SUMMARY_VALUE: usize = 256;
/// A name (ARG, ENV or QUERY key) longer than this is not kept.
const SUMMARY_NAME: usize = 256;

impl CacheSummary {
    /// Cut to `SUMMARY_ENTRIES` of each list and `SUMMARY_VALUE` bytes of
    /// each value (the server keeps one per node).
    pub fn bounded(mut self) -> CacheSummary {
        // Names longer than any a node sets are a peer's lie: not kept.
        let named = |k: &String| k.len() <= SUMMARY_NAME;
        let before = self.args.len();
        self.args.retain(|k, _| named(k));
        let mut cut = (before - self.args.len()) as u32;
        if self.args.len() > SUMMARY_ENTRIES {
            let past: Vec<String> = self.args.keys().skip(SUMMARY_ENTRIES).cloned().collect();
            cut = cut.saturating_add(past.len() as u32);
            for k in past {
                self.args.remove(&k);
            }
        }
        self.args_more = self.args_more.saturating_add(cut);
        for v in self.args.values_mut().flatten() {
            if v.len() > SUMMARY_VALUE {
                let mut end = SUMMARY_VALUE - 3;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v.truncate(end);
                v.push_str("...");
            }
        }
        for list in [&mut self.env, &mut self.queries] {
            list.retain(named);
            list.truncate(SUMMARY_ENTRIES);
        }
        self
    }
}

/// Server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Heartbeat port: the answer to a heartbeat.
    HeartbeatAck { expires_in_ms: u64 },
    /// Heartbeat or job port: the server does not know this node (it
    /// restarted, expired the node, or just accepted its key): send `Ready`
    /// again.
    Register,
    /// Job port: the answer to an admitted `Ready`: jobs follow. The node
    /// beats every `interval_ms` (its own interval, or the server's longest
    /// if that is shorter).
    Welcome { name: String, interval_ms: u64 },
    /// Any port: this key may not act as a node, and why.
    Denied(Denial),
    /// Job port: run this. Jobs of one orchestration share a `parent`: after
    /// one fails on this node, the node skips the rest.
    Job {
        job_id: Uuid,
        parent: Option<Uuid>,
        task: Task,
        dispatch: Dispatch,
        /// Someone follows it (`--follow`): send its output as it comes.
        live: bool,
        /// The client process it is for (the `instance` of the Ready the
        /// server last took from the node). Another process of the node
        /// that gets it (a restart the server has not heard of yet, on the
        /// routing id of the old one) does not run it: the server reports
        /// it lost, since the old process may have.
        instance: u64,
        /// An `async` block's job: it may run beside the jobs of the other
        /// lanes of its group (each lane's jobs still in order).
        lane: Option<Lane>,
    },
    /// Job port: the result of this job was recorded.
    ResultAck { job_id: Uuid },
    /// Transfer port: file data at `offset`, in the message's payload frame.
    Chunk {
        job_id: Uuid,
        file: u32,
        offset: u64,
    },
    /// Transfer port: a `Fetch` that cannot be served, and why.
    FetchError {
        job_id: Uuid,
        file: u32,
        message: String,
    },
    /// Job port: every target of this QUERY job has answered or ended:
    /// the values, by node name.
    QueryResult {
        job_id: Uuid,
        #[serde(deserialize_with = "cautious_seq")]
        values: Vec<(String, String)>,
    },
    /// Job port: someone follows this job now (`manage --watch --follow`):
    /// send its output as it comes, from here on.
    Follow { job_id: Uuid },
    /// Job port: this server stands by (servers on etcd); the active one
    /// is `leader`, which nodes reach at `address` (`None`: no server is
    /// active yet).
    Standby {
        leader: Option<String>,
        address: Option<String>,
    },
}

/// Where a job stands in the server's sends: `server` is drawn at random
/// when the server starts, `seq` grows with every job it sends. Messages on
/// one connection arrive in order, so a client that received dispatch `seq`
/// received (or will never receive) every job sent before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub server: u64,
    pub seq: u64,
}

/// Why the server does not take a client as a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Denial {
    /// The key waits for an operator's `director manage --accept-key`.
    Pending,
    /// An operator rejected the key.
    Rejected,
    /// Another key owns the name this client claims.
    NameTaken,
    /// This key is enrolled under another name.
    KeyHasName(String),
    /// The client's enrolment proof does not match the server's shared key.
    WrongSharedKey,
    /// The server holds as many pending keys as it takes; try later.
    TooManyPending,
    /// Another key that is only pending claimed the name first: an
    /// operator decides (or a shared key proves this node); try later.
    NameContested,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Pending => f.write_str("the key is pending acceptance"),
            Denial::Rejected => f.write_str("the key was rejected"),
            Denial::NameTaken => f.write_str("the name belongs to another key"),
            Denial::KeyHasName(n) => write!(f, "the key is enrolled as '{n}'"),
            Denial::WrongSharedKey => f.write_str("the shared key does not match the server's"),
            Denial::TooManyPending => f.write_str("too many keys are pending acceptance"),
            Denial::NameContested => {
                f.write_str("another key waiting for acceptance claimed the name first")
            }
        }
    }
}

impl ClientMsg {
    /// One line for `--debug` logs (outputs summarized by size).
    pub fn describe(&self) -> String {
        match self {
            ClientMsg::Heartbeat { interval_ms } => format!("Heartbeat interval={interval_ms}ms"),
            ClientMsg::Ready {
                name,
                version,
                interval_ms,
                holding,
                proof,
                instance,
                seen,
                facts,
                labels,
            } => {
                format!(
                    "Ready name={name} version={version} interval={interval_ms}ms holding={} proof={} instance={instance:x} seen={} facts={} labels={}",
                    holding.len(),
                    if proof.is_empty() { "no" } else { "yes" },
                    seen.map_or("none".into(), |d| format!("{:x}/{}", d.server, d.seq)),
                    facts.len(),
                    labels.len()
                )
            }
            ClientMsg::Started { job_id } => format!("Started job={job_id}"),
            ClientMsg::Fetch {
                job_id,
                file,
                offset,
                len,
            } => {
                format!("Fetch job={job_id} file={file} offset={offset} len={len}")
            }
            ClientMsg::Output {
                job_id,
                stream,
                data,
                dropped,
            } => format!(
                "Output job={job_id} {stream:?} {}B dropped={dropped}",
                data.len()
            ),
            ClientMsg::Cache(c) => format!(
                "Cache args={} env={} queries={} steps={}",
                c.args.len() as u64 + u64::from(c.args_more),
                c.env.len(),
                c.queries.len(),
                c.steps
            ),
            ClientMsg::QueryValue { job_id, value } => format!(
                "QueryValue job={job_id} value={}",
                value
                    .as_ref()
                    .map_or("none".into(), |v| format!("{}B", v.len()))
            ),
            ClientMsg::Finished { job_id, outcome } => format!(
                "Finished job={job_id} exit={:?} stdout={}B stderr={}B exec={:.3}s",
                outcome.exit,
                outcome.stdout.len(),
                outcome.stderr.len(),
                outcome.exec_secs
            ),
        }
    }
}

impl ServerMsg {
    /// One line for `--debug` logs.
    pub fn describe(&self) -> String {
        match self {
            ServerMsg::HeartbeatAck { expires_in_ms } => {
                format!("HeartbeatAck expires_in={expires_in_ms}ms")
            }
            ServerMsg::Register => "Register".into(),
            ServerMsg::Welcome { name, interval_ms } => {
                format!("Welcome name={name} interval={interval_ms}ms")
            }
            ServerMsg::Denied(why) => format!("Denied: {why}"),
            ServerMsg::Job {
                job_id,
                parent,
                task,
                dispatch,
                ..
            } => {
                let parent = parent.map(|p| format!(" parent={p}")).unwrap_or_default();
                format!(
                    "Job job={job_id}{parent} seq={} {} {:?}",
                    dispatch.seq,
                    task.verb(),
                    task.args_masked()
                )
            }
            ServerMsg::ResultAck { job_id } => format!("ResultAck job={job_id}"),
            ServerMsg::Chunk {
                job_id,
                file,
                offset,
            } => format!("Chunk job={job_id} file={file} offset={offset}"),
            ServerMsg::FetchError {
                job_id,
                file,
                message,
            } => {
                format!("FetchError job={job_id} file={file}: {message}")
            }
            ServerMsg::Follow { job_id } => format!("Follow job={job_id}"),
            ServerMsg::Standby { leader, address } => format!(
                "Standby leader={} address={}",
                leader.as_deref().unwrap_or("-"),
                address.as_deref().unwrap_or("-")
            ),
            ServerMsg::QueryResult { job_id, values } => {
                format!("QueryResult job={job_id} values={}", values.len())
            }
        }
    }
}
