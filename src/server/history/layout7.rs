//! Tasks as layouts 1 to 7 encoded them (before PACKAGE, SERVICE, WAIT,
//! RUN's guards, ADD's `--blueprint` and `--chmod`, WORKDIR's owner and
//! mode, `--check`, `--diff` and handlers), read only to upgrade a
//! journal. Field for field as they were: bincode is not self-describing.

use serde::Deserialize;
use uuid::Uuid;

use crate::dsl::{Action, Add, JobOptions, SourceFile, Task};

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub enum OldAction {
    Run {
        command: String,
        stdout_arg: Option<String>,
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
    },
    Add {
        chown: Option<String>,
        sources: Vec<String>,
        dest: String,
        files: Vec<SourceFile>,
    },
    Query {
        key: String,
    },
    ClearCache,
}

impl From<OldAction> for Action {
    fn from(a: OldAction) -> Action {
        match a {
            OldAction::Run {
                command,
                stdout_arg,
            } => Action::Run {
                command,
                stdout_arg,
                stderr_arg: None,
                guard: None,
            },
            OldAction::Arg { key, value } => Action::Arg { key, value },
            OldAction::Env { key, value } => Action::Env { key, value },
            OldAction::Workdir { path } => Action::Workdir {
                path,
                chown: None,
                mode: None,
                stdout_arg: None,
            },
            OldAction::Add {
                chown,
                sources,
                dest,
                files,
            } => Action::Add(Box::new(Add {
                chown,
                sources,
                dest,
                files,
                blueprint: false,
                mode: None,
            })),
            OldAction::Query { key } => Action::Query { key },
            OldAction::ClearCache => Action::ClearCache,
        }
    }
}

/// Job options as layouts 2 to 7 wrote them.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct OldOptions {
    pub skip_cache: bool,
    pub run_once: bool,
    pub timeout_secs: u64,
    pub retries: u32,
    pub retry_delay_ms: u64,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub struct OldTask {
    pub action: OldAction,
    pub options: OldOptions,
}

impl From<OldTask> for Task {
    fn from(t: OldTask) -> Task {
        let o = t.options;
        Task {
            action: t.action.into(),
            options: JobOptions {
                skip_cache: o.skip_cache,
                run_once: o.run_once,
                timeout_secs: o.timeout_secs,
                retries: o.retries,
                retry_delay_ms: o.retry_delay_ms,
                ..JobOptions::default()
            },
        }
    }
}

/// A `Submitted` record as layouts 2 to 7 wrote it: its variant index,
/// then its fields.
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

#[cfg(test)]
mod tests {
    use super::super::Record;
    use super::*;
    use crate::journal::Journal;

    /// A history of layout 7 (tasks without the new options) is upgraded
    /// with every field kept, and its other records read as they are.
    #[test]
    fn a_history_of_layout_7_is_upgraded_with_every_field_kept() {
        let dir = std::env::temp_dir().join(format!("director-layout7-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let id = Uuid::new_v4();
        let file = SourceFile {
            path: "/srv/a.conf".into(),
            size: 3,
            mode: 0o640,
            sha1: "0".repeat(40),
        };
        let old = OldSubmitted {
            _variant: 0,
            id,
            parent: Some(id),
            task: OldTask {
                action: OldAction::Add {
                    chown: Some("app".into()),
                    sources: vec!["/srv/a.conf".into()],
                    dest: "/etc/a.conf".into(),
                    files: vec![file.clone()],
                },
                options: OldOptions {
                    skip_cache: true,
                    run_once: false,
                    timeout_secs: 30,
                    retries: 0,
                    retry_delay_ms: 5000,
                },
            },
            targets: vec!["n1".into()],
            submitted_ms: 9,
        };
        let enc = |v: &dyn erased::Enc| v.enc();
        let mut bytes = b"DIRJ".to_vec();
        bytes.extend(7u32.to_le_bytes());
        for body in [enc(&old), enc(&Record::NodeOffline { name: "n1".into() })] {
            bytes.extend((body.len() as u32).to_le_bytes());
            bytes.extend(body);
        }
        std::fs::write(dir.join("history.bin"), &bytes).unwrap();
        let (_, recs) = Journal::open::<Record>(&dir, "history.bin").unwrap();
        let Record::Submitted {
            id: got,
            parent,
            task,
            targets,
            submitted_ms,
        } = &recs[0]
        else {
            panic!("{:?}", recs[0]);
        };
        assert_eq!(
            (*got, *parent, targets.clone(), *submitted_ms),
            (id, Some(id), vec!["n1".to_string()], 9)
        );
        assert_eq!(
            task.action,
            Action::Add(Box::new(Add {
                chown: Some("app".into()),
                sources: vec!["/srv/a.conf".into()],
                dest: "/etc/a.conf".into(),
                files: vec![file],
                blueprint: false,
                mode: None,
            }))
        );
        assert!(task.options.skip_cache && task.options.timeout_secs == 30);
        assert_eq!(recs[1], Record::NodeOffline { name: "n1".into() });
        std::fs::remove_dir_all(dir).unwrap();
    }

    mod erased {
        pub trait Enc {
            fn enc(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Enc for T {
            fn enc(&self) -> Vec<u8> {
                bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap()
            }
        }
    }
}
