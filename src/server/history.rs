//! The server's job history as records, written to a journal under
//! `--state-path` so that a restart loses nothing acknowledged: a submission
//! is durable before the CLI hears "queued" and before any of its jobs goes
//! out, a result before the node hears "recorded" and before any waiting CLI
//! sees it (see `persist`: one sync covers every record of a few
//! milliseconds, on the I/O thread). Dispatches do not wait: should a
//! dispatch record be lost, the node's `Ready` after the restart says it
//! holds the job, and it is not resent.
//!
//! On start the records are replayed one at a time into the cluster:
//! finished parts keep a summary and where their record is, parts sent to a
//! node are in flight again (the node says whether it still has them when it
//! re-registers), queued parts are queued again, forgotten jobs are gone,
//! and nodes with work are expected back within their expiry.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dsl::Task;
use crate::wire::{Dispatch, JobState, Outcome};

/// File name of the journal in the state directory.
pub const FILE: &str = "history.bin";

/// One change to the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Submitted {
        id: Uuid,
        parent: Option<Uuid>,
        task: Task,
        targets: Vec<String>,
        submitted_ms: u64,
    },
    Sent {
        id: Uuid,
        node: String,
        sent_ms: u64,
    },
    /// A job sent to a node: which client process it went to, in which
    /// dispatch. (`Sent`, without them, is what older servers wrote.)
    Dispatched {
        id: Uuid,
        node: String,
        sent_ms: u64,
        to: SentTo,
    },
    /// A send that could not be routed, or that the node's process provably
    /// never received: the part is queued again.
    Unsent { id: Uuid, node: String },
    /// A part reached a final state.
    Done {
        id: Uuid,
        node: String,
        part: PartRecord,
    },
    /// The job is gone: retention forgot it, or its submission could not be
    /// made durable and was refused (should its `Submitted` record be on
    /// disk after all, the job is not there).
    Forgotten { id: Uuid },
    /// A node as it registered: known from then on, across restarts, until
    /// purged.
    Node {
        name: String,
        version: String,
        last_seen_ms: u64,
        facts: crate::facts::Map,
        labels: crate::facts::Map,
    },
    /// `--purge-nodes` forgot the node, or its key was rejected or deleted.
    NodeForgotten { name: String },
    /// The node went offline (silent past its expiry).
    NodeOffline { name: String },
    /// A rolling run: its nodes batch by batch, and how many may fail
    /// before no new batch starts. Written before the run's jobs.
    Rollout {
        parent: Uuid,
        batches: Vec<Vec<String>>,
        max_fail: Option<u32>,
    },
    /// The job was submitted with `--queue-offline`: its parts for offline
    /// nodes wait for them, up to its timeout, across restarts too.
    QueueOffline { id: Uuid },
    /// A run that rolls from its job `from` on (a block's `batch:`), as
    /// `Rollout` otherwise.
    RolloutFrom {
        parent: Uuid,
        batches: Vec<Vec<String>>,
        max_fail: Option<u32>,
        from: u32,
    },
}

mod layout1;

/// Layout 2: job options with `--retries`, results with their earlier
/// attempts (layouts 0, with no header, and 1 had neither). Layout 3 added
/// `QueueOffline` and `RolloutFrom`, after the others, and layout 4 the
/// `CLEAR-CACHE` action, after the others, and layout 5 the `Lost` ending
/// (a node's own word that a job was lost), after the others: layout 2 to
/// 4 records encode as they did. Layout 6 keeps `--retry-delay` in
/// milliseconds (fractions of a second), where 5 and before kept whole
/// seconds in the same field.
impl crate::journal::Layout for Record {
    const VERSION: u32 = 6;
    fn upgrade(version: u32, body: &[u8]) -> Option<Self> {
        match version {
            0 | 1 => crate::journal::decode::<layout1::OldRecord>(body).map(Record::from),
            // The same encoding, where `--retry-delay` was whole seconds.
            2..=5 => {
                let mut rec: Record = crate::journal::decode(body)?;
                if let Record::Submitted { task, .. } = &mut rec {
                    let o = &mut task.options;
                    o.retry_delay_ms = o.retry_delay_ms.saturating_mul(1000);
                }
                Some(rec)
            }
            _ => None,
        }
    }
}

/// A finished part, as kept on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    pub state: JobState,
    pub outcome: Option<Outcome>,
    pub message: Option<String>,
    pub sent_ms: Option<u64>,
    pub rtt_secs: Option<f64>,
    pub finished_ms: Option<u64>,
}

/// Where a job went: the client process (its `Ready` instance) and the
/// dispatch it was sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTo {
    pub client: u64,
    pub dispatch: Dispatch,
}
