//! The history's records as layouts 0 and 1 encoded them (before
//! `--retries`: job options without retries, results without earlier
//! attempts), read only to upgrade a journal. Field for field as they were:
//! bincode is not self-describing, so an old record decodes only into its
//! old shape.

use serde::Deserialize;
use uuid::Uuid;

use super::layout7::OldAction;
use super::{PartRecord, Record, SentTo};
use crate::dsl::{JobOptions, Task};
use crate::wire::{Exit, JobState, Outcome};

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub enum OldRecord {
    Submitted {
        id: Uuid,
        parent: Option<Uuid>,
        task: OldTask,
        targets: Vec<String>,
        submitted_ms: u64,
    },
    Sent {
        id: Uuid,
        node: String,
        sent_ms: u64,
    },
    Dispatched {
        id: Uuid,
        node: String,
        sent_ms: u64,
        to: SentTo,
    },
    Unsent {
        id: Uuid,
        node: String,
    },
    Done {
        id: Uuid,
        node: String,
        part: OldPart,
    },
    Forgotten {
        id: Uuid,
    },
    Node {
        name: String,
        version: String,
        last_seen_ms: u64,
        facts: crate::facts::Map,
        labels: crate::facts::Map,
    },
    NodeForgotten {
        name: String,
    },
    NodeOffline {
        name: String,
    },
    Rollout {
        parent: Uuid,
        batches: Vec<Vec<String>>,
        max_fail: Option<u32>,
    },
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct OldTask {
    action: OldAction,
    options: OldOptions,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct OldOptions {
    skip_cache: bool,
    run_once: bool,
    timeout_secs: u64,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct OldPart {
    state: JobState,
    outcome: Option<OldOutcome>,
    message: Option<String>,
    sent_ms: Option<u64>,
    rtt_secs: Option<f64>,
    finished_ms: Option<u64>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct OldOutcome {
    exit: Exit,
    #[serde(deserialize_with = "crate::wire::bytes::deserialize")]
    #[cfg_attr(test, serde(serialize_with = "crate::wire::bytes::serialize"))]
    stdout: Vec<u8>,
    #[serde(deserialize_with = "crate::wire::bytes::deserialize")]
    #[cfg_attr(test, serde(serialize_with = "crate::wire::bytes::serialize"))]
    stderr: Vec<u8>,
    stdout_dropped: u64,
    stderr_dropped: u64,
    exec_secs: f64,
}

impl From<OldTask> for Task {
    fn from(t: OldTask) -> Task {
        let OldOptions {
            skip_cache,
            run_once,
            timeout_secs,
        } = t.options;
        Task {
            action: t.action.into(),
            options: JobOptions {
                skip_cache,
                run_once,
                timeout_secs,
                ..JobOptions::default()
            },
        }
    }
}

impl From<OldPart> for PartRecord {
    fn from(p: OldPart) -> PartRecord {
        PartRecord {
            state: p.state,
            outcome: p.outcome.map(|o| Outcome {
                exit: o.exit,
                stdout: o.stdout,
                stderr: o.stderr,
                stdout_dropped: o.stdout_dropped,
                stderr_dropped: o.stderr_dropped,
                exec_secs: o.exec_secs,
                attempts: Vec::new(),
            }),
            message: p.message,
            sent_ms: p.sent_ms,
            rtt_secs: p.rtt_secs,
            finished_ms: p.finished_ms,
        }
    }
}

impl From<OldRecord> for Record {
    fn from(r: OldRecord) -> Record {
        match r {
            OldRecord::Submitted {
                id,
                parent,
                task,
                targets,
                submitted_ms,
            } => Record::Submitted {
                id,
                parent,
                task: task.into(),
                targets,
                submitted_ms,
            },
            OldRecord::Sent { id, node, sent_ms } => Record::Sent { id, node, sent_ms },
            OldRecord::Dispatched {
                id,
                node,
                sent_ms,
                to,
            } => Record::Dispatched {
                id,
                node,
                sent_ms,
                to,
            },
            OldRecord::Unsent { id, node } => Record::Unsent { id, node },
            OldRecord::Done { id, node, part } => Record::Done {
                id,
                node,
                part: part.into(),
            },
            OldRecord::Forgotten { id } => Record::Forgotten { id },
            OldRecord::Node {
                name,
                version,
                last_seen_ms,
                facts,
                labels,
            } => Record::Node {
                name,
                version,
                last_seen_ms,
                facts,
                labels,
            },
            OldRecord::NodeForgotten { name } => Record::NodeForgotten { name },
            OldRecord::NodeOffline { name } => Record::NodeOffline { name },
            OldRecord::Rollout {
                parent,
                batches,
                max_fail,
            } => Record::Rollout {
                parent,
                batches,
                max_fail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;

    #[test]
    fn a_history_from_before_retries_is_upgraded_with_every_field_kept() {
        let dir = std::env::temp_dir().join(format!("director-layout1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let id = Uuid::new_v4();
        let old = [
            OldRecord::Submitted {
                id,
                parent: None,
                task: OldTask {
                    action: OldAction::Run {
                        command: "echo hi".into(),
                        stdout_arg: None,
                    },
                    options: OldOptions {
                        skip_cache: true,
                        run_once: false,
                        timeout_secs: 30,
                    },
                },
                targets: vec!["n1".into()],
                submitted_ms: 7,
            },
            OldRecord::Done {
                id,
                node: "n1".into(),
                part: OldPart {
                    state: JobState::Succeeded,
                    outcome: Some(OldOutcome {
                        exit: Exit::Code(0),
                        stdout: b"hi\n".to_vec(),
                        stderr: vec![],
                        stdout_dropped: 0,
                        stderr_dropped: 2,
                        exec_secs: 0.5,
                    }),
                    message: None,
                    sent_ms: Some(8),
                    rtt_secs: Some(0.25),
                    finished_ms: Some(9),
                },
            },
            OldRecord::NodeOffline { name: "n1".into() },
        ];
        // As layout 0 wrote them: frames with no header.
        let mut bytes = Vec::new();
        for r in &old {
            let body = bincode::serde::encode_to_vec(r, bincode::config::standard()).unwrap();
            bytes.extend((body.len() as u32).to_le_bytes());
            bytes.extend(body);
        }
        std::fs::write(dir.join("history.bin"), &bytes).unwrap();
        let (_, recs) = Journal::open::<Record>(&dir, "history.bin").unwrap();
        let Record::Submitted { task, targets, .. } = &recs[0] else {
            panic!("{:?}", recs[0]);
        };
        assert_eq!(task.options.timeout_secs, 30);
        assert!(task.options.skip_cache);
        assert_eq!(task.options.retries, 0);
        assert_eq!(task.args(), "--skip-cache --timeout 30 echo hi");
        assert_eq!(targets, &["n1"]);
        let Record::Done { part, .. } = &recs[1] else {
            panic!("{:?}", recs[1]);
        };
        let o = part.outcome.as_ref().unwrap();
        assert_eq!((o.stdout.as_slice(), o.stderr_dropped), (&b"hi\n"[..], 2));
        assert!(o.attempts.is_empty());
        assert_eq!(part.rtt_secs, Some(0.25));
        assert_eq!(recs[2], Record::NodeOffline { name: "n1".into() });
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[cfg(test)]
mod later_layouts {
    use super::*;
    use crate::journal::Journal;

    /// Layouts 2 to 5 kept `--retry-delay` in whole seconds in the field
    /// that now holds milliseconds: upgraded, 7 s stays 7 s.
    #[test]
    fn a_retry_delay_in_seconds_is_upgraded_to_milliseconds() {
        let dir = std::env::temp_dir().join(format!("director-layout5-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use super::super::layout7::{OldOptions, OldSubmitted, OldTask};
        let rec = OldSubmitted {
            _variant: 0,
            id: Uuid::new_v4(),
            parent: None,
            task: OldTask {
                action: OldAction::Run {
                    command: "make".into(),
                    stdout_arg: None,
                },
                // As layout 5 wrote 7 seconds.
                options: OldOptions {
                    skip_cache: false,
                    run_once: false,
                    timeout_secs: 600,
                    retries: 2,
                    retry_delay_ms: 7,
                },
            },
            targets: vec!["n1".into()],
            submitted_ms: 1,
        };
        let mut bytes = b"DIRJ".to_vec();
        bytes.extend(5u32.to_le_bytes());
        let body = bincode::serde::encode_to_vec(&rec, bincode::config::standard()).unwrap();
        bytes.extend((body.len() as u32).to_le_bytes());
        bytes.extend(body);
        std::fs::write(dir.join("history.bin"), &bytes).unwrap();
        let (_, recs) = Journal::open::<Record>(&dir, "history.bin").unwrap();
        let Record::Submitted { task, .. } = &recs[0] else {
            panic!("{:?}", recs[0]);
        };
        assert_eq!(task.options.retry_delay_ms, 7000);
        assert_eq!(task.args(), "--retries 2 --retry-delay 7 make");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
