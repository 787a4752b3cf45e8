//! Everything that crosses a socket, in one place: the ZeroMQ messages between
//! server and clients, the control-socket requests and responses between the
//! CLI and the server, and their codecs.
//!
//! ZeroMQ message layout (after the ROUTER's identity frame, if any):
//! `[b"DIR" + version][bincode body]`. A message with the wrong frame count,
//! magic, version or body is rejected with a `WireError` for the caller to log
//! with the peer's identity; nothing here panics on peer input.
//!
//! Control socket: each message is a 4-byte big-endian length and a bincode
//! body. The length is checked against a limit before anything is allocated.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dsl::{Task, Verb};

/// Protocol magic, followed by the version byte.
pub const MAGIC: &[u8; 3] = b"DIR";
/// The one protocol version this build speaks. 2: nodes name themselves in
/// `Ready` (the routing id is no longer the name) and the server answers
/// with `Welcome` or `Denied`. 3: jobs carry their `Dispatch`, and `Ready`
/// says which client instance sends it and the last dispatch it received.
/// 4: `Ready` carries the node's facts and labels. 5: jobs carry
/// `--retries`, and a result the attempts before its last. 6: a node may
/// report a job `Lost` (it will not run a job it already had).
pub const VERSION: u8 = 8;
/// The longest ARG value a QUERY carries: a node with a longer one fails
/// the QUERY, so that the map sent to every target stays bounded.
pub const QUERY_VALUE_CAP: usize = 1 << 10;
/// Captured stdout and stderr are each cut to this many bytes on the node.
pub const OUTPUT_CAP: usize = 1 << 20;
/// A node's message to the server could say why a job could not run in at
/// most this many bytes; longer messages are cut.
pub const MESSAGE_CAP: usize = 4 << 10;

// Largest frame each port takes in each direction (`ZMQ_MAXMSGSIZE`): what
// its messages need, so a peer cannot make the other side buffer more.
/// The outputs of a result's earlier attempts, all together, are cut to
/// about this many bytes (`Outcome::bounded`).
pub const ATTEMPTS_CAP: usize = 512 << 10;
/// Node to server, job port: a result with two capped outputs and its
/// earlier attempts, or a `Ready` listing the jobs the node holds.
pub const MAX_JOB_UP: usize = 2 * OUTPUT_CAP + ATTEMPTS_CAP + (64 << 10);
/// Server to node, job port: a job, which is at most a control request.
pub const MAX_JOB_DOWN: usize = MAX_REQUEST + (64 << 10);
/// Node to server, transfer port: a fetch.
pub const MAX_TRANSFER_UP: usize = 1 << 10;
/// Server to node, transfer port: a chunk of file data.
pub const MAX_TRANSFER_DOWN: usize = CHUNK as usize + (4 << 10);
/// Both ways, heartbeat port: beats, acks, registration and denials.
pub const MAX_HEARTBEAT: usize = 1 << 10;
/// Bytes of file data in one transfer chunk.
pub const CHUNK: u32 = 1 << 20;
/// Chunks a node asks for ahead of what it has written (its credit).
pub const CREDIT: u32 = 4;
/// Largest control request the server reads (a job definition).
pub const MAX_REQUEST: usize = 4 << 20;
/// Largest control response the CLI reads (a listing of many jobs).
pub const MAX_RESPONSE: usize = 512 << 20;

/// Why a message was rejected.
#[derive(Debug, PartialEq)]
pub enum WireError {
    FrameCount(usize),
    BadMagic,
    Version(u8),
    Body(String),
    TooLarge { len: usize, max: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::FrameCount(n) => write!(f, "expected 2 frames, got {n}"),
            WireError::BadMagic => f.write_str("not a director message (bad magic)"),
            WireError::Version(v) => write!(
                f,
                "unknown protocol version {v} (this build speaks {VERSION})"
            ),
            WireError::Body(e) => write!(f, "undecodable body: {e}"),
            WireError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max}")
            }
        }
    }
}

fn encode_body<T: Serialize>(msg: &T) -> Vec<u8> {
    // Our own types always encode; a failure is a bug in this module.
    bincode::serde::encode_to_vec(msg, bincode::config::standard()).expect("wire types encode")
}

/// Decode a bincode body. The limit bounds what decoding may claim before
/// it allocates: every primitive claims its size in memory, strings and byte
/// strings their length. In memory a message is at most 8 times its
/// encoding (a `u64` may take one byte), so the limit is the smallest power
/// of four at or above 8 times the body: every valid body decodes, and a
/// 20-byte body can no longer ask for 512 MiB. Sequences other than bytes go
/// through `cautious_seq`, which preallocates only a little.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let need = body.len().saturating_mul(8);
    macro_rules! tiers {
        ($($shift:literal),*) => {
            $(
                if need <= 1usize << $shift {
                    return decode_limited::<T, { 1usize << $shift }>(body);
                }
            )*
        };
    }
    tiers!(8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32);
    Err(WireError::TooLarge {
        len: body.len(),
        max: 1 << 29,
    })
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(body: &[u8]) -> Result<T, WireError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (msg, used) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| WireError::Body(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Body(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// `Vec<u8>` as one byte string. It encodes as a sequence of bytes does, but
/// decodes through bincode's own byte-buffer path, which checks the length
/// against the limit before allocating (serde's sequence path would
/// preallocate up to 1 MiB on a length it cannot check).
pub mod bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

/// A sequence that preallocates at most a few elements, whatever length the
/// input claims: it grows only as elements are really decoded.
pub fn cautious_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Seq<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Seq<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
            while let Some(x) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Seq(std::marker::PhantomData))
}

/// Encode a ZeroMQ message (without identity frame).
pub fn encode<T: Serialize>(msg: &T) -> Vec<Vec<u8>> {
    let mut head = MAGIC.to_vec();
    head.push(VERSION);
    vec![head, encode_body(msg)]
}

/// Encode a ZeroMQ message with a raw payload frame (file data), which is
/// never copied into the bincode body.
pub fn encode_with_payload<T: Serialize>(msg: &T, payload: Vec<u8>) -> Vec<Vec<u8>> {
    let mut frames = encode(msg);
    frames.push(payload);
    frames
}

/// Decode a ZeroMQ message that may carry a payload frame: the message and
/// the payload, if any. The caller checks that its kind expects one.
pub fn decode_with_payload<T: DeserializeOwned>(
    mut frames: Vec<Vec<u8>>,
) -> Result<(T, Option<Vec<u8>>), WireError> {
    let payload = if frames.len() == 3 {
        frames.pop()
    } else {
        None
    };
    Ok((decode(&frames)?, payload))
}

/// Decode a ZeroMQ message (without identity frame).
pub fn decode<T: DeserializeOwned>(frames: &[Vec<u8>]) -> Result<T, WireError> {
    let [head, body] = frames else {
        return Err(WireError::FrameCount(frames.len()));
    };
    match head.as_slice() {
        [m0, m1, m2, v] if [*m0, *m1, *m2] == *MAGIC => {
            if *v != VERSION {
                return Err(WireError::Version(*v));
            }
        }
        _ => return Err(WireError::BadMagic),
    }
    decode_body(body)
}

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
            ServerMsg::QueryResult { job_id, values } => {
                format!("QueryResult job={job_id} values={}", values.len())
            }
        }
    }
}

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
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub job_id: Uuid,
    pub task_sha1: String,
    pub targets: Vec<String>,
    /// Known nodes left out because they are offline (no `--target`).
    pub offline: Vec<String>,
}

/// One block of an orchestration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// Empty: every connected node.
    #[serde(deserialize_with = "cautious_seq")]
    pub targets: Vec<String>,
    #[serde(deserialize_with = "cautious_seq")]
    pub tasks: Vec<Task>,
    /// `batch:` (and `max_fail:`): this block and those after it go over
    /// the block's nodes batch by batch.
    pub rolling: Option<Rolling>,
    /// Where it was written (`site.yml, block 2`), for messages; empty if
    /// nowhere.
    pub origin: String,
    /// `name:`, shown with its jobs.
    pub name: Option<String>,
    /// A job's own `assign:` targets, replacing the block's: one entry per
    /// task, or none at all when no job has any.
    #[serde(deserialize_with = "cautious_seq")]
    pub assign: Vec<Option<Assigned>>,
    /// `async:` this block's jobs go on each node alongside those of the
    /// run's other async blocks (each block's own jobs still in order).
    pub concurrent: bool,
}

/// Where an `async` block's job runs on a node: beside the jobs of the
/// other blocks (`block`) of the same run of consecutive async blocks
/// (`group`), after everything before that run and before everything
/// after it.
/// How many of an `async` group's lanes a node runs at once.
pub const LANES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lane {
    pub parent: Uuid,
    pub group: u32,
    pub block: u32,
}

/// A job's `assign:` targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assigned(#[serde(deserialize_with = "cautious_seq")] pub Vec<String>);

impl Block {
    /// A block of `tasks` for `targets`, nothing else set.
    #[cfg(test)]
    pub fn of(targets: Vec<String>, tasks: Vec<Task>) -> Block {
        Block {
            targets,
            tasks,
            rolling: None,
            origin: String::new(),
            name: None,
            assign: Vec::new(),
            concurrent: false,
        }
    }

    /// The targets of its job `j`: its own `assign`, or the block's.
    pub fn job_targets(&self, j: usize) -> &[String] {
        self.assign
            .get(j)
            .and_then(|a| a.as_ref())
            .map_or(&self.targets, |a| &a.0)
    }

    /// The block in messages: where it was written, or its place in the
    /// run (`i` from 0).
    pub fn label(&self, i: usize) -> String {
        if self.origin.is_empty() {
            format!("block {}", i + 1)
        } else {
            self.origin.clone()
        }
    }
}

/// What an orchestration queued (or, for a dry run, would queue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// `None` for a dry run.
    pub parent_id: Option<Uuid>,
    pub jobs: Vec<PlannedJob>,
    /// A rolling run's nodes, batch by batch, in the order they go; empty
    /// when every node starts at once.
    pub batches: Vec<Vec<String>>,
    /// Known nodes left out because they are offline (blocks without
    /// targets).
    pub offline: Vec<String>,
}

/// How many nodes: a number, or a percentage of the run's nodes (rounded
/// up, at least one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// Parse `N` or `N%` (1-100%), for `option`'s error.
    pub fn parse(text: &str, option: &str) -> Result<Amount, String> {
        let bad = || {
            format!("{option}: expected a number of nodes or a percentage (3, 25%), got '{text}'")
        };
        match text.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Amount::Percent(p)),
                _ => Err(bad()),
            },
            None => text
                .trim()
                .parse::<u32>()
                .map(Amount::Count)
                .map_err(|_| bad()),
        }
    }

    /// Parse a batch size: as `parse`, and never 0 (a batch of no node
    /// would never end).
    pub fn parse_batch(text: &str, option: &str) -> Result<Amount, String> {
        match Amount::parse(text, option)? {
            Amount::Count(0) => Err(format!(
                "{option}: a batch needs at least one node (got 0): give a number of nodes or a percentage (1, 25%)"
            )),
            a => Ok(a),
        }
    }

    /// How many of `of` nodes.
    pub fn of(self, of: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => (of * p as usize).div_ceil(100),
        }
    }
}

/// `orchestrate --batch`: the run goes `batch` nodes at a time; with
/// `max_fail`, no new batch starts once more nodes than that have failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolling {
    pub batch: Amount,
    pub max_fail: Option<Amount>,
}

/// One job of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedJob {
    /// `None` for a dry run.
    pub job_id: Option<Uuid>,
    /// Index of its block in the orchestration (from 0).
    pub block: usize,
    pub targets: Vec<String>,
    pub verb: Verb,
    pub args: String,
    pub task_sha1: String,
    /// Its `name:` in the orchestration.
    pub name: Option<String>,
    /// Its block's `name:` (known when the run is submitted).
    pub block_name: Option<String>,
}

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, if one is buffered. An error means the stream
    /// is corrupt and must be closed.
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> ClientMsg {
        ClientMsg::Finished {
            job_id: Uuid::new_v4(),
            outcome: Outcome {
                exit: Exit::Code(3),
                stdout: b"out".to_vec(),
                stderr: vec![0xff, 0],
                stdout_dropped: 0,
                stderr_dropped: 7,
                exec_secs: 0.25,
                attempts: vec![Attempt {
                    exit: Exit::TimedOut { secs: 1 },
                    stdout: b"first".to_vec(),
                    stderr: vec![],
                    stdout_dropped: 0,
                    stderr_dropped: 0,
                    exec_secs: 1.0,
                }],
            },
        }
    }

    #[test]
    fn a_cache_summary_is_bounded_whatever_a_node_sends() {
        let mut s = CacheSummary::default();
        for i in 0..100 {
            s.args.insert(format!("k{i:03}"), Some("v".repeat(1000)));
        }
        s.args.insert("x".repeat(10_000), None);
        s.env = vec!["y".repeat(10_000), "PATH".into()];
        let s = s.bounded();
        assert_eq!(s.args.len(), SUMMARY_ENTRIES);
        assert_eq!(s.args_more, 37, "36 past the first 64, and the long name");
        assert!(s.args.values().flatten().all(|v| v.len() == SUMMARY_VALUE));
        assert_eq!(s.env, ["PATH"]);
    }

    #[test]
    fn zmq_round_trip() {
        let msg = finished();
        assert_eq!(decode::<ClientMsg>(&encode(&msg)), Ok(msg));
        let task = Task::parse(crate::dsl::Verb::Run, "--timeout 3 true").unwrap();
        let job = ServerMsg::Job {
            job_id: Uuid::new_v4(),
            parent: Some(Uuid::new_v4()),
            task,
            dispatch: Dispatch { server: 7, seq: 9 },
            live: false,
            instance: 11,
            lane: None,
        };
        assert_eq!(decode::<ServerMsg>(&encode(&job)), Ok(job));
    }

    #[test]
    fn payload_frames_travel_beside_the_body() {
        let msg = ServerMsg::Chunk {
            job_id: Uuid::new_v4(),
            file: 1,
            offset: 1 << 20,
        };
        let frames = encode_with_payload(&msg, vec![7; 10]);
        assert_eq!(frames.len(), 3);
        assert_eq!(
            decode_with_payload::<ServerMsg>(frames),
            Ok((msg.clone(), Some(vec![7; 10])))
        );
        assert_eq!(
            decode_with_payload::<ServerMsg>(encode(&msg)),
            Ok((msg, None))
        );
        assert!(decode_with_payload::<ServerMsg>(vec![vec![]; 4]).is_err());
    }

    #[test]
    fn zmq_rejects_bad_frames() {
        let good = encode(&finished());
        assert_eq!(
            decode::<ClientMsg>(&good[..1]),
            Err(WireError::FrameCount(1))
        );
        let mut three = good.clone();
        three.push(vec![]);
        assert_eq!(decode::<ClientMsg>(&three), Err(WireError::FrameCount(3)));
        assert_eq!(
            decode::<ClientMsg>(&[b"XYZ\x01".to_vec(), good[1].clone()]),
            Err(WireError::BadMagic)
        );
        assert_eq!(
            decode::<ClientMsg>(&[b"DIR\x09".to_vec(), good[1].clone()]),
            Err(WireError::Version(9))
        );
        let truncated = good[1][..good[1].len() - 2].to_vec();
        assert!(matches!(
            decode::<ClientMsg>(&[good[0].clone(), truncated]),
            Err(WireError::Body(_))
        ));
        let mut trailing = good[1].clone();
        trailing.push(0);
        assert!(matches!(
            decode::<ClientMsg>(&[good[0].clone(), trailing]),
            Err(WireError::Body(_))
        ));
        assert!(matches!(
            decode::<ClientMsg>(&[good[0].clone(), vec![200, 1, 2]]),
            Err(WireError::Body(_))
        ));
        // A server message arriving where a client message is expected.
        let wrong = encode(&ServerMsg::ResultAck {
            job_id: Uuid::nil(),
        });
        assert!(decode::<ClientMsg>(&wrong).is_err());
    }

    #[test]
    fn control_frames_reassemble_and_reject_oversize() {
        let task = Task::parse(crate::dsl::Verb::Run, "x").unwrap();
        let req = Request::Submit {
            task,
            targets: vec!["a".into()],
            exclude: vec![],
            wait: true,
            queue_offline: false,
            follow: false,
        };
        let bytes = [
            encode_control(&req),
            encode_control(&Request::ListJobs { show_values: false }),
        ]
        .concat();
        let mut fb = FrameBuf::new(MAX_REQUEST);
        for chunk in bytes.chunks(3) {
            fb.push(chunk);
        }
        assert_eq!(fb.next::<Request>(), Ok(Some(req)));
        assert_eq!(
            fb.next::<Request>(),
            Ok(Some(Request::ListJobs { show_values: false }))
        );
        assert_eq!(fb.next::<Request>(), Ok(None));
        assert!(fb.buf.is_empty());

        let mut fb = FrameBuf::new(16);
        fb.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            fb.next::<Request>(),
            Err(WireError::TooLarge { .. })
        ));
        let mut fb = FrameBuf::new(16);
        fb.push(&[0, 0, 0, 2, 0xff, 0xff]);
        assert!(matches!(fb.next::<Request>(), Err(WireError::Body(_))));
    }

    #[test]
    fn job_state_map_serializes_to_json_keys() {
        let mut states = BTreeMap::new();
        states.insert(JobState::Succeeded, 2);
        let json = serde_json::to_string(&states).unwrap();
        assert_eq!(json, r#"{"succeeded":2}"#);
    }
}
