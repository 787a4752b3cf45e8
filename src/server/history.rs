//! The server's job history as records, written to a journal under
//! `--state-path` so that a restart loses nothing acknowledged: a submission
//! is durable before the CLI hears "queued" and before any of its jobs goes
//! out, a result before the node hears "recorded" and before any waiting CLI
//! sees it (see `persist`: one sync covers every record of a few
//! milliseconds, on the I/O thread). Dispatches do not wait: should a
//! dispatch record be lost, the node's `Ready` after the restart says it
//! holds the job, and it is not resent.
//!
//! On start the records are replayed one at a time into the cluster, a
//! finished part from its record's head only (`head`): its outcome, the
//! bulk of the file, is written last in the record and skipped, read back
//! only by `--job-info`, so a restart costs what the parts are, not what
//! they printed. The rest of the replay:
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
    /// Who submitted the job (written after its `Submitted`).
    SubmittedBy { id: Uuid, by: String },
}

mod layout1;
mod layout7;
mod layout8;

/// Layout 2: job options with `--retries`, results with their earlier
/// attempts (layouts 0, with no header, and 1 had neither). Layout 3 added
/// `QueueOffline` and `RolloutFrom`, after the others, and layout 4 the
/// `CLEAR-CACHE` action, after the others, and layout 5 the `Lost` ending
/// (a node's own word that a job was lost), after the others: layout 2 to
/// 4 records encode as they did. Layout 6 keeps `--retry-delay` in
/// milliseconds (fractions of a second), where 5 and before kept whole
/// seconds in the same field. Layout 7 writes a finished part's outcome
/// last (after its state and times), so that a restart reads its head and
/// skips its output. Layout 8 has tasks with PACKAGE, SERVICE and WAIT,
/// RUN's guards, ADD's and WORKDIR's modes, `--check`, `--diff` and
/// handlers; a task of layout 7 and before is read with `layout7`. Its
/// `Done` records are as they were in 7 (their new endings and states
/// come after the old ones). Layout 9 has RUN's `--stderr-arg` and
/// WORKDIR's `--stdout-arg`; a task of layout 8 is read with `layout8`,
/// and its other records are as they are.
impl crate::journal::Layout for Record {
    /// 10 added `SubmittedBy`, after the others: layout 9 records encode
    /// as they did.
    const VERSION: u32 = 10;
    fn upgrade(version: u32, body: &[u8]) -> Option<Self> {
        if version <= 1 {
            return crate::journal::decode::<layout1::OldRecord>(body).map(Record::from);
        }
        if version == 9 {
            return crate::journal::decode(body);
        }
        if version == 8 {
            if body.first() == Some(&SUBMITTED) {
                let s: layout8::OldSubmitted = crate::journal::decode(body)?;
                return Some(Record::Submitted {
                    id: s.id,
                    parent: s.parent,
                    targets: s.targets.clone(),
                    submitted_ms: s.submitted_ms,
                    task: s.task(),
                });
            }
            return crate::journal::decode(body);
        }
        if version > 8 {
            return None;
        }
        if body.first() == Some(&SUBMITTED) {
            let s: layout7::OldSubmitted = crate::journal::decode(body)?;
            let mut task = Task::from(s.task);
            // Before 6, `--retry-delay` was whole seconds in the same field.
            if version <= 5 {
                let o = &mut task.options;
                o.retry_delay_ms = o.retry_delay_ms.saturating_mul(1000);
            }
            return Some(Record::Submitted {
                id: s.id,
                parent: s.parent,
                task,
                targets: s.targets,
                submitted_ms: s.submitted_ms,
            });
        }
        if version == 7 {
            return crate::journal::decode(body);
        }
        // Before 7 a part's outcome came second; every other record is as
        // it was.
        let rec: Record = match body.first() {
            Some(&DONE) => {
                let (_, id, node, p): (u32, Uuid, String, PartRecord6) =
                    crate::journal::decode(body)?;
                Record::Done {
                    id,
                    node,
                    part: PartRecord {
                        state: p.state,
                        message: p.message,
                        sent_ms: p.sent_ms,
                        rtt_secs: p.rtt_secs,
                        finished_ms: p.finished_ms,
                        outcome: p.outcome,
                    },
                }
            }
            _ => crate::journal::decode(body)?,
        };
        Some(rec)
    }
}

/// The first byte of a `Done` record: its variant index, as bincode writes
/// a small one.
const DONE: u8 = 4;
/// The first byte of a `Submitted` record.
const SUBMITTED: u8 = 0;

/// A finished part as layouts 2 to 6 wrote it: the outcome second.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct PartRecord6 {
    state: JobState,
    outcome: Option<Outcome>,
    message: Option<String>,
    sent_ms: Option<u64>,
    rtt_secs: Option<f64>,
    finished_ms: Option<u64>,
}

/// What a restart needs of a finished part: all but its outcome.
#[derive(Debug, PartialEq)]
pub struct DoneHead {
    pub id: Uuid,
    pub node: String,
    pub state: JobState,
    pub sent_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

/// A `Done` record's fields up to its outcome, as layout 7 writes them:
/// the variant, the job, the node, then the part's fields before its
/// outcome.
#[derive(Deserialize)]
struct HeadFields {
    _variant: u32,
    id: Uuid,
    node: String,
    state: JobState,
    _message: Option<String>,
    sent_ms: Option<u64>,
    _rtt_secs: Option<f64>,
    finished_ms: Option<u64>,
}

/// The head of a `Done` record from its first bytes, if they are one (and
/// long enough); `None` for any other record, read whole.
pub fn head(prefix: &[u8]) -> Option<DoneHead> {
    if prefix.first() != Some(&DONE) {
        return None;
    }
    let config = bincode::config::standard().with_limit::<{ crate::journal::PEEK }>();
    let (h, _): (HeadFields, usize) = bincode::serde::decode_from_slice(prefix, config).ok()?;
    Some(DoneHead {
        id: h.id,
        node: h.node,
        state: h.state,
        sent_ms: h.sent_ms,
        finished_ms: h.finished_ms,
    })
}

/// A finished part, as kept on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    pub state: JobState,
    pub message: Option<String>,
    pub sent_ms: Option<u64>,
    pub rtt_secs: Option<f64>,
    pub finished_ms: Option<u64>,
    /// Last: a restart reads the fields before it and skips it.
    pub outcome: Option<Outcome>,
}

/// Where a job went: the client process (its `Ready` instance) and the
/// dispatch it was sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTo {
    pub client: u64,
    pub dispatch: Dispatch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, Lazy};
    use crate::wire::Exit;

    fn dir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("director-history-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn done(id: Uuid, node: &str, output: usize) -> Record {
        Record::Done {
            id,
            node: node.into(),
            part: PartRecord {
                state: JobState::Succeeded,
                message: None,
                sent_ms: Some(5),
                rtt_secs: Some(0.5),
                finished_ms: Some(9),
                outcome: Some(Outcome {
                    exit: Exit::Code(0),
                    stdout: vec![b'x'; output],
                    stderr: vec![],
                    stdout_dropped: 0,
                    stderr_dropped: 0,
                    exec_secs: 0.1,
                    attempts: vec![],
                }),
            },
        }
    }

    /// A restart reads a finished part's head and skips its output: a
    /// history whose outputs are damaged (here, on purpose) restores all
    /// the same, as it would without reading them; only that part's
    /// `--job-info` finds the damage.
    #[test]
    fn a_restart_reads_parts_heads_and_never_their_outputs() {
        let d = dir("lazy");
        let (mut j, _) = Journal::open::<Record>(&d, FILE).unwrap();
        let ids: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        let mut spans = Vec::new();
        for id in &ids {
            spans.push(j.append(&done(*id, "n1", 1 << 20)));
        }
        j.sync_now().unwrap();
        let reader = j.reader();
        drop(j);
        // Damage the 4th part's outcome, past its megabyte of output.
        let path = d.join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let end = (spans[3].at + u64::from(spans[3].len)) as usize;
        bytes[end - 2..end].fill(0xff);
        std::fs::write(&path, &bytes).unwrap();
        let mut heads = Vec::new();
        Journal::open_lazy::<Record, _>(&d, FILE, head, |rec, _| match rec {
            Lazy::Head(h) => heads.push(h),
            Lazy::Whole(r) => panic!("read whole: {r:?}"),
        })
        .unwrap();
        assert_eq!(heads.len(), 8);
        assert_eq!(
            heads[3],
            DoneHead {
                id: ids[3],
                node: "n1".into(),
                state: JobState::Succeeded,
                sent_ms: Some(5),
                finished_ms: Some(9)
            }
        );
        assert!(reader.read::<Record>(spans[2]).is_ok());
        assert!(reader.read::<Record>(spans[3]).is_err());
        // Read whole, the damage is there.
        assert!(Journal::open::<Record>(&d, FILE).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }

    /// Layouts 2 to 6 wrote a part's outcome second: upgraded to 7, with
    /// every field kept; other records as they were.
    #[test]
    fn a_history_of_layout_6_is_upgraded_with_the_outcome_last() {
        let d = dir("layout6");
        let id = Uuid::new_v4();
        let Record::Done { part, .. } = done(id, "n2", 3) else {
            unreachable!()
        };
        let old = (
            4u32,
            id,
            "n2".to_string(),
            PartRecord6 {
                state: part.state,
                outcome: part.outcome.clone(),
                message: Some("why".into()),
                sent_ms: part.sent_ms,
                rtt_secs: part.rtt_secs,
                finished_ms: part.finished_ms,
            },
        );
        let mut bytes = b"DIRJ".to_vec();
        bytes.extend(6u32.to_le_bytes());
        for body in [
            bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap(),
            bincode::serde::encode_to_vec(
                &Record::NodeOffline { name: "n2".into() },
                bincode::config::standard(),
            )
            .unwrap(),
        ] {
            bytes.extend((body.len() as u32).to_le_bytes());
            bytes.extend(body);
        }
        std::fs::write(d.join(FILE), &bytes).unwrap();
        let (_, recs) = Journal::open::<Record>(&d, FILE).unwrap();
        let Record::Done { part: p, node, .. } = &recs[0] else {
            panic!("{:?}", recs[0]);
        };
        assert_eq!(node, "n2");
        assert_eq!(p.message.as_deref(), Some("why"));
        assert_eq!(p.outcome, part.outcome);
        assert_eq!((p.sent_ms, p.finished_ms), (Some(5), Some(9)));
        assert_eq!(recs[1], Record::NodeOffline { name: "n2".into() });
        std::fs::remove_dir_all(d).unwrap();
    }
}
