//! Running one task on this node: what each verb does, the cache check, and
//! the `Outcome` reported. A command to run is an effect (`Spawn`): the
//! client loop starts and watches the process, and hands what it printed
//! back to `finish` once reaped.
//!
//! The cache key of a step is the task SHA1 with what would really run: the
//! rendered command or path and, for RUN, the ENV values. A new ARG value
//! that changes a rendered command therefore makes that step run again.
//! ARG and ENV themselves always apply: they are cheap and idempotent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::add::{self, AddJob};
use super::cache::Cache;
use crate::dsl::{hex_sha1, Action, Task};
use crate::reactor::child::Ended;
use crate::template;
use crate::wire::{Exit, JobState, Outcome, QUERY_VALUE_CAP};

/// What to record when a started process succeeds.
pub struct OnSuccess {
    pub cache_key: String,
    pub stdout_arg: Option<String>,
}

/// A command for the client loop to start: `/bin/sh -c COMMAND` with `env`.
#[derive(Clone, Debug, PartialEq)]
pub struct Spawn {
    pub job_id: Uuid,
    pub command: String,
    pub env: BTreeMap<String, String>,
    /// Send its output as it comes (someone follows the job).
    pub live: bool,
}

/// A task that has started, or already ended.
pub enum Started {
    /// A command to start (the loop does), and what to record on success.
    Process(Spawn, OnSuccess),
    /// An ADD, with the cache key to record on success.
    Transfer(Box<AddJob>, Option<String>),
    Done(Outcome),
    /// An ARG or ENV value to sync (on the I/O thread): the job succeeds
    /// once it is on disk.
    Persist(Persist),
    /// A WORKDIR to create (on the I/O thread: a hung mount must not stop
    /// the loop), with the cache key to record on success.
    Mkdir(PathBuf, String),
    /// A QUERY: this node's value to report, then wait for the map.
    Query {
        key: String,
        value: Option<String>,
    },
}

/// A value staged in the cache (synced on the I/O thread in its turn), and
/// the outcome to report once it is on disk.
pub struct Persist {
    /// What the job reports if the value is kept.
    pub outcome: Outcome,
    /// What to say if it is not: "ARG key" or "--stdout-arg name".
    pub what: String,
}

/// Create a WORKDIR and its parents (on the I/O thread); the error names it.
pub fn make_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path)
        .map_err(|e| format!("cannot create directory {}: {e}", path.display()))
}

/// What templates on this node read.
fn vars<'a>(cache: &'a Cache, node: &'a crate::facts::Node) -> template::Vars<'a> {
    template::Vars {
        args: cache.args(),
        facts: &node.facts,
        labels: &node.labels,
        query: cache.queries(),
    }
}

/// Start `task`.
pub fn start(
    job_id: Uuid,
    task: &Task,
    cache: &mut Cache,
    node: &crate::facts::Node,
    now_ms: u64,
) -> Started {
    let skip_cache = task.options.skip_cache;
    match &task.action {
        Action::Arg { key, value } => {
            cache.stage_arg(key, value);
            Started::Persist(Persist {
                outcome: ended(Exit::Code(0)),
                what: format!("ARG {key}"),
            })
        }
        Action::Env { key, value } => {
            cache.stage_env(key, value);
            Started::Persist(Persist {
                outcome: ended(Exit::Code(0)),
                what: format!("ENV {key}"),
            })
        }
        Action::ClearCache => {
            let summary = cache.summary();
            let mut outcome = ended(Exit::Code(0));
            outcome.stdout = format!(
                "forgot {}, {}, {} and {}\n",
                crate::dsl::count(summary.args.len() + summary.args_more as usize, "ARG"),
                crate::dsl::count(summary.env.len(), "ENV value"),
                crate::dsl::count(summary.queries.len(), "QUERY map"),
                crate::dsl::count(summary.steps as usize, "step")
            )
            .into_bytes();
            cache.stage_clear();
            Started::Persist(Persist {
                outcome,
                what: "clearing the cache".into(),
            })
        }
        Action::Query { key } => {
            let value = cache.args().get(key).cloned();
            match value {
                Some(v) if v.len() > QUERY_VALUE_CAP => Started::Done(ended(Exit::Error(format!(
                    "QUERY {key}: the ARG is {} bytes here; a QUERY carries values of at most {QUERY_VALUE_CAP} bytes",
                    v.len()
                )))),
                value => Started::Query {
                    key: key.clone(),
                    value,
                },
            }
        }
        Action::Workdir { path } => {
            let path = match template::render(path, &vars(cache, node)) {
                Ok(p) => p,
                Err(e) => return Started::Done(ended(Exit::Error(format!("WORKDIR path: {e}")))),
            };
            let key = cache_key(task, &path, None);
            if !skip_cache && cache.is_done(&key, now_ms) {
                return Started::Done(ended(Exit::Cached));
            }
            Started::Mkdir(PathBuf::from(path), key)
        }
        Action::Add(_) => {
            let key = add::cache_key(task, &vars(cache, node));
            if let (Some(k), false) = (&key, skip_cache) {
                if cache.is_done(k, now_ms) {
                    return Started::Done(ended(Exit::Cached));
                }
            }
            match AddJob::new(job_id, task, &vars(cache, node)) {
                Ok(job) => Started::Transfer(Box::new(job), key),
                Err(e) => Started::Done(ended(Exit::Error(e))),
            }
        }
        Action::Run {
            command,
            stdout_arg,
        } => {
            let command = match template::render_shell(command, &vars(cache, node)) {
                Ok(c) => c,
                Err(e) => return Started::Done(ended(Exit::Error(format!("RUN command: {e}")))),
            };
            let key = cache_key(task, &command, Some(cache.env()));
            if !skip_cache && cache.is_done(&key, now_ms) {
                return Started::Done(ended(Exit::Cached));
            }
            Started::Process(
                Spawn {
                    job_id,
                    command,
                    env: cache.env().clone(),
                    live: false,
                },
                OnSuccess {
                    cache_key: key,
                    stdout_arg: stdout_arg.clone(),
                },
            )
        }
    }
}

/// The report for a reaped process; with `--stdout-arg` on success, the
/// value to sync first.
pub fn finish(
    ended: Ended,
    stdout_arg: Option<&str>,
    timed_out: Option<u64>,
    cache: &mut Cache,
) -> Result<Outcome, Box<Persist>> {
    let exit = match timed_out {
        Some(secs) => Exit::TimedOut { secs },
        None => ended.exit,
    };
    let staged = match (exit.state(), stdout_arg) {
        (JobState::Succeeded, Some(name)) => {
            if ended.out.dropped > 0 {
                log::warn!(
                    "--stdout-arg {name}: the output was cut at {} bytes",
                    ended.out.bytes.len()
                );
            }
            let text = String::from_utf8_lossy(&ended.out.bytes);
            cache.stage_arg(name, text.trim_end_matches(['\n', '\r']));
            Some(name)
        }
        _ => None,
    };
    let outcome = Outcome {
        exit,
        stdout: ended.out.bytes,
        stderr: ended.err.bytes,
        stdout_dropped: ended.out.dropped,
        stderr_dropped: ended.err.dropped,
        exec_secs: ended.exec_secs,
        attempts: Vec::new(),
    };
    match staged {
        // A value the next steps cannot count on fails the job: it is
        // reported once it is on disk.
        Some(name) => Err(Box::new(Persist {
            outcome,
            what: format!("the command succeeded, but --stdout-arg {name}"),
        })),
        None => Ok(outcome),
    }
}

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

fn cache_key(task: &Task, rendered: &str, env: Option<&BTreeMap<String, String>>) -> String {
    let mut material = format!("{}\0{rendered}", task.sha1());
    for (k, v) in env.into_iter().flatten() {
        material.push_str(&format!("\0{k}={v}"));
    }
    hex_sha1(material.as_bytes())
}
