//! Tasks as layout 8 encoded them (before RUN's `--stderr-arg` and
//! WORKDIR's `--stdout-arg`), read only to upgrade a journal. Only RUN and
//! WORKDIR changed shape; the other actions are as they are now. Variant
//! for variant as they were: bincode is not self-describing.

use serde::Deserialize;
use uuid::Uuid;

use crate::dsl::{Action, Add, Guard, JobOptions, Task};
use crate::verbs::{package::Package, service::Service, wait::Wait};

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub enum OldAction {
    Run {
        command: String,
        stdout_arg: Option<String>,
        guard: Option<Box<Guard>>,
    },
    Arg {
        key: String,
        value: String,
    },
    Env {
        key: String,
        value: String,
    },
    Workdir {
        path: String,
        chown: Option<String>,
        mode: Option<u32>,
    },
    Add(Box<Add>),
    Query {
        key: String,
    },
    ClearCache,
    Package(Box<Package>),
    Service(Box<Service>),
    Wait(Box<Wait>),
}

impl From<OldAction> for Action {
    fn from(a: OldAction) -> Action {
        match a {
            OldAction::Run {
                command,
                stdout_arg,
                guard,
            } => Action::Run {
                command,
                stdout_arg,
                stderr_arg: None,
                guard,
            },
            OldAction::Arg { key, value } => Action::Arg { key, value },
            OldAction::Env { key, value } => Action::Env { key, value },
            OldAction::Workdir { path, chown, mode } => Action::Workdir {
                path,
                chown,
                mode,
                stdout_arg: None,
            },
            OldAction::Add(add) => Action::Add(add),
            OldAction::Query { key } => Action::Query { key },
            OldAction::ClearCache => Action::ClearCache,
            OldAction::Package(p) => Action::Package(p),
            OldAction::Service(s) => Action::Service(s),
            OldAction::Wait(w) => Action::Wait(w),
        }
    }
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct OldTask {
    pub action: OldAction,
    pub options: JobOptions,
}

/// A `Submitted` record as layout 8 wrote it: its variant index, then its
/// fields.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct OldSubmitted {
    pub _variant: u32,
    pub id: Uuid,
    pub parent: Option<Uuid>,
    pub task: OldTask,
    pub targets: Vec<String>,
    pub submitted_ms: u64,
}

impl OldSubmitted {
    pub fn task(self) -> Task {
        Task {
            action: self.task.action.into(),
            options: self.task.options,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Record;
    use super::*;
    use crate::journal::Journal;

    fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
    }

    /// A history of layout 8 (RUN with guards, WORKDIR with an owner, but
    /// neither with the new ARG options) is upgraded with every field
    /// kept; its other records read as they are.
    #[test]
    fn a_history_of_layout_8_is_upgraded_with_every_field_kept() {
        let dir = std::env::temp_dir().join(format!("director-layout8-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let id = Uuid::new_v4();
        let submitted = |action| OldSubmitted {
            _variant: 0,
            id,
            parent: None,
            task: OldTask {
                action,
                options: JobOptions {
                    skip_cache: true,
                    check: true,
                    ..JobOptions::default()
                },
            },
            targets: vec!["n1".into()],
            submitted_ms: 9,
        };
        let run = submitted(OldAction::Run {
            command: "make".into(),
            stdout_arg: Some("out".into()),
            guard: Some(Box::new(Guard {
                creates: Some("/x".into()),
                unless: None,
            })),
        });
        let dir_job = submitted(OldAction::Workdir {
            path: "/srv".into(),
            chown: Some("app".into()),
            mode: Some(0o750),
        });
        let mut bytes = b"DIRJ".to_vec();
        bytes.extend(8u32.to_le_bytes());
        for body in [
            enc(&run),
            enc(&dir_job),
            enc(&Record::NodeOffline { name: "n1".into() }),
        ] {
            bytes.extend((body.len() as u32).to_le_bytes());
            bytes.extend(body);
        }
        std::fs::write(dir.join("history.bin"), &bytes).unwrap();
        let (_, recs) = Journal::open::<Record>(&dir, "history.bin").unwrap();
        let task = |r: &Record| match r {
            Record::Submitted {
                task,
                targets,
                submitted_ms: 9,
                ..
            } if targets == &["n1"] => task.clone(),
            other => panic!("{other:?}"),
        };
        let t = task(&recs[0]);
        assert!(t.options.skip_cache && t.options.check);
        assert_eq!(
            t.action,
            Action::Run {
                command: "make".into(),
                stdout_arg: Some("out".into()),
                stderr_arg: None,
                guard: Some(Box::new(Guard {
                    creates: Some("/x".into()),
                    unless: None,
                })),
            }
        );
        assert_eq!(
            task(&recs[1]).action,
            Action::Workdir {
                path: "/srv".into(),
                chown: Some("app".into()),
                mode: Some(0o750),
                stdout_arg: None,
            }
        );
        assert_eq!(recs[2], Record::NodeOffline { name: "n1".into() });
        std::fs::remove_dir_all(dir).unwrap();
    }
}
