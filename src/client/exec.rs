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
use std::time::Duration;

use uuid::Uuid;

use super::add::AddJob;
use super::cache::Cache;
use super::workdir::DirTask;
use crate::dsl::{hex_sha1, Action, Task};
use crate::reactor::child::Ended;
use crate::template;
use crate::verbs::{package, service};
use crate::wire::{Exit, JobState, Outcome, QUERY_VALUE_CAP};

/// What to record when a started process succeeds.
pub struct OnSuccess {
    /// `None` with `--check`: nothing is recorded.
    pub cache_key: Option<String>,
    pub capture: Capture,
}

/// The ARGs a succeeded command's output is kept as (`--stdout-arg`,
/// `--stderr-arg`).
#[derive(Debug, Default)]
pub struct Capture {
    pub stdout: Option<String>,
    pub stderr: Option<String>,
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

/// What a process run for a job means when it ends.
pub enum ProcKind {
    /// A RUN's command: it ran, so it changed something.
    Run,
    /// A RUN's `--unless` command: exit 0 skips the RUN (`unchanged`);
    /// otherwise `then` starts, or (`--check`) the RUN would run.
    Guard {
        then: Option<Box<(Spawn, OnSuccess)>>,
        command: String,
    },
    /// A verb's script (PACKAGE, SERVICE): its marker says whether it
    /// changed something (`check`: would).
    Script { check: bool },
    /// WAIT `--cmd`: exit 0 is the condition holding.
    WaitCmd,
}

/// A WAIT as it starts.
pub enum WaitStart {
    Sleep(Duration),
    Url {
        url: String,
        retry: u32,
        delay: Duration,
    },
    Cmd {
        spawn: Spawn,
        retry: u32,
        delay: Duration,
    },
}

/// A task that has started, or already ended.
pub enum Started {
    /// A command to start (the loop does), what it means, and what to
    /// record on success.
    Process(Spawn, ProcKind, OnSuccess),
    /// An ADD.
    Transfer(Box<AddJob>),
    Done(Outcome),
    /// An ARG or ENV value to sync (on the I/O thread): the job succeeds
    /// once it is on disk.
    Persist(Persist),
    /// A WORKDIR to bring about (on the I/O thread: a hung mount must not
    /// stop the loop).
    Dir(DirTask),
    /// A QUERY: this node's value to report, then wait for the map.
    Query {
        key: String,
        value: Option<String>,
    },
    Wait(WaitStart),
    /// A CACHEFILE to read on the node (on the I/O thread).
    LoadFile(PathBuf),
}

/// A value staged in the cache (synced on the I/O thread in its turn), and
/// the outcome to report once it is on disk.
pub struct Persist {
    /// What the job reports if the value is kept.
    pub outcome: Outcome,
    /// What to say if it is not: "ARG key" or "--stdout-arg name".
    pub what: String,
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

/// A verb's script (PACKAGE, SERVICE) to run: never cached, its marker
/// says what changed.
fn verb_script(job_id: Uuid, command: String, cache: &Cache, check: bool) -> Started {
    Started::Process(
        Spawn {
            job_id,
            command,
            env: cache.env().clone(),
            live: false,
        },
        ProcKind::Script { check },
        OnSuccess {
            cache_key: None,
            capture: Capture::default(),
        },
    )
}

/// An outcome saying `text`.
pub fn said(exit: Exit, text: String) -> Outcome {
    let mut o = Outcome::ended(exit);
    o.stdout = text.into_bytes();
    o
}

/// Start `task`; `store` is where ADD keeps the sources it computes on.
pub fn start(
    job_id: Uuid,
    task: &Task,
    cache: &mut Cache,
    node: &crate::facts::Node,
    store: &Path,
    now: crate::support::clock::Now,
) -> Started {
    let skip_cache = task.options.skip_cache;
    let check = task.options.check;
    let mark = format!("{} {job_id}", crate::verbs::MARK);
    match &task.action {
        Action::Image(i) => {
            podman_script(job_id, i.command(), &i.conn.stdout_arg, cache, check, &mark)
        }
        Action::Pod(p) => {
            podman_script(job_id, p.command(), &p.conn.stdout_arg, cache, check, &mark)
        }
        Action::QueueSentinel => Started::Done(said(
            Exit::Unchanged,
            "QUEUESENTINEL: nothing to do (director's nodes keep no per-run queues to stop)\n"
                .into(),
        )),
        Action::Facter { .. } if check => Started::Done(said(
            Exit::WouldChange,
            "would run facter --json and keep its facts as the ARG facter\n".into(),
        )),
        Action::Facter {
            custom_dir,
            external_dir,
        } => {
            let mut command = String::from(
                "command -v facter >/dev/null 2>&1 || { echo 'FACTER: facter is not installed on this node (install its facter package, or leave FACTER out)' >&2; exit 127; }; exec facter --json",
            );
            for (flag, dir) in [
                ("--custom-dir", custom_dir),
                ("--external-dir", external_dir),
            ] {
                if let Some(d) = dir {
                    command.push_str(&format!(" {flag} {}", crate::verbs::sh_quote(d)));
                }
            }
            Started::Process(
                Spawn {
                    job_id,
                    command,
                    env: cache.env().clone(),
                    live: false,
                },
                ProcKind::Run,
                OnSuccess {
                    cache_key: None,
                    capture: Capture {
                        stdout: Some("facter".into()),
                        stderr: None,
                    },
                },
            )
        }
        Action::CacheFile(c) if c.here => {
            match load_values(cache, &c.path, c.values.clone(), check) {
                Ok(done) => Started::Done(done),
                Err(p) => Started::Persist(*p),
            }
        }
        Action::CacheFile(c) => match template::render(&c.path, &vars(cache, node)) {
            Ok(path) => Started::LoadFile(PathBuf::from(path)),
            Err(e) => Started::Done(Outcome::ended(Exit::Error(format!("CACHEFILE path: {e}")))),
        },
        Action::ExtendArg { key, value } => {
            let merged = match cache.args().get(key) {
                None => value.clone(),
                Some(old) => match template::extend(old, value) {
                    Ok(m) => m,
                    Err(e) => {
                        return Started::Done(Outcome::ended(Exit::Error(format!(
                            "ARG --extend-args {key}: {e}"
                        ))))
                    }
                },
            };
            if cache.args().get(key) == Some(&merged) {
                return Started::Done(said(
                    Exit::Unchanged,
                    format!("ARG {key} already holds it\n"),
                ));
            }
            if check {
                return Started::Done(said(Exit::WouldChange, format!("would extend ARG {key}\n")));
            }
            cache.stage_arg(key, &merged);
            Started::Persist(Persist {
                outcome: Outcome::ended(Exit::Code(0)),
                what: format!("ARG {key}"),
            })
        }
        Action::Arg { key, value } | Action::Env { key, value } => {
            let is_arg = matches!(task.action, Action::Arg { .. });
            let what = format!("{} {key}", if is_arg { "ARG" } else { "ENV" });
            let current = if is_arg {
                cache.args().get(key)
            } else {
                cache.env().get(key)
            };
            if current == Some(value) {
                return Started::Done(said(Exit::Unchanged, format!("{what} is already set\n")));
            }
            if check {
                return Started::Done(said(Exit::WouldChange, format!("would set {what}\n")));
            }
            if is_arg {
                cache.stage_arg(key, value);
            } else {
                cache.stage_env(key, value);
            }
            Started::Persist(Persist {
                outcome: Outcome::ended(Exit::Code(0)),
                what,
            })
        }
        Action::ClearCache => {
            let summary = cache.summary();
            let mut outcome = Outcome::ended(Exit::Code(0));
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
        Action::Echo { text } => match template::render(text, &vars(cache, node)) {
            Ok(t) => Started::Done(said(Exit::Unchanged, format!("{t}\n"))),
            Err(e) => Started::Done(Outcome::ended(Exit::Error(format!("ECHO text: {e}")))),
        },
        Action::CacheEvict { part } => {
            let (n, what) = match part {
                None => {
                    let s = cache.summary();
                    (
                        s.args.len() + s.env.len() + s.queries.len() + s.steps as usize,
                        "entries (all)",
                    )
                }
                Some(p) => (
                    cache.count(*p),
                    match p {
                        crate::dsl::CachePart::Args => "ARGs",
                        crate::dsl::CachePart::Envs => "ENV values",
                        crate::dsl::CachePart::Query => "QUERY maps",
                        crate::dsl::CachePart::Jobs => "steps remembered",
                    },
                ),
            };
            if n == 0 {
                return Started::Done(said(Exit::Unchanged, format!("no {what} to evict\n")));
            }
            if check {
                return Started::Done(said(Exit::WouldChange, format!("would evict {n} {what}\n")));
            }
            match part {
                None => cache.stage_clear(),
                Some(p) => cache.stage_evict(*p),
            }
            let mut outcome = Outcome::ended(Exit::Code(0));
            outcome.stdout = format!("evicted {n} {what}\n").into_bytes();
            Started::Persist(Persist {
                outcome,
                what: "evicting from the cache".into(),
            })
        }
        Action::Query { key } => {
            let value = cache.args().get(key).cloned();
            match value {
                Some(v) if v.len() > QUERY_VALUE_CAP => Started::Done(Outcome::ended(Exit::Error(format!(
                    "QUERY {key}: the ARG is {} bytes here; a QUERY carries values of at most {QUERY_VALUE_CAP} bytes",
                    v.len()
                )))),
                value => Started::Query {
                    key: key.clone(),
                    value,
                },
            }
        }
        Action::Workdir {
            path,
            chown,
            mode,
            stdout_arg,
        } => {
            let path = match template::render(path, &vars(cache, node)) {
                Ok(p) => p,
                Err(e) => {
                    return Started::Done(Outcome::ended(Exit::Error(format!("WORKDIR path: {e}"))))
                }
            };
            Started::Dir(DirTask {
                path: PathBuf::from(path),
                chown: chown.clone(),
                mode: *mode,
                check,
                stdout_arg: stdout_arg.as_deref().cloned(),
            })
        }
        // Never skipped by the cache: every run checks every file.
        Action::Add(_) => match AddJob::new(job_id, task, &vars(cache, node), store, now.at) {
            Ok(job) => Started::Transfer(Box::new(job)),
            Err(e) => Started::Done(Outcome::ended(Exit::Error(e))),
        },
        Action::Run {
            command,
            stdout_arg,
            stderr_arg,
            guard,
        } => {
            let (creates, unless) = guard
                .as_ref()
                .map_or((None, None), |g| (g.creates.as_ref(), g.unless.as_ref()));
            let v = vars(cache, node);
            let command = match template::render_shell(command, &v) {
                Ok(c) => c,
                Err(e) => {
                    return Started::Done(Outcome::ended(Exit::Error(format!("RUN command: {e}"))))
                }
            };
            if let Some(path) = creates {
                let path = match template::render(path, &v) {
                    Ok(p) => p,
                    Err(e) => {
                        return Started::Done(Outcome::ended(Exit::Error(format!(
                            "RUN --creates: {e}"
                        ))))
                    }
                };
                if Path::new(&path).exists() {
                    return Started::Done(said(
                        Exit::Unchanged,
                        format!("not run: {path} exists (--creates)\n"),
                    ));
                }
            }
            let guard = match unless
                .map(String::as_str)
                .map(|u| template::render_shell(u, &v))
                .transpose()
            {
                Ok(g) => g,
                Err(e) => {
                    return Started::Done(Outcome::ended(Exit::Error(format!("RUN --unless: {e}"))))
                }
            };
            let key = cache_key(task, &command, Some(cache.env()));
            if !skip_cache && cache.is_done(&key, now.ms) {
                return Started::Done(Outcome::ended(Exit::Cached));
            }
            let spawn = |command: String| Spawn {
                job_id,
                command,
                env: cache.env().clone(),
                live: false,
            };
            let on_success = OnSuccess {
                cache_key: (!check).then_some(key),
                capture: Capture {
                    stdout: stdout_arg.clone(),
                    stderr: stderr_arg.as_deref().cloned(),
                },
            };
            let then = (!check).then(|| Box::new((spawn(command.clone()), on_success)));
            match guard {
                Some(g) => Started::Process(
                    spawn(g),
                    ProcKind::Guard {
                        then,
                        command: command.clone(),
                    },
                    OnSuccess {
                        cache_key: None,
                        capture: Capture::default(),
                    },
                ),
                None => match then {
                    Some(t) => {
                        let (spawn, on_success) = *t;
                        Started::Process(spawn, ProcKind::Run, on_success)
                    }
                    None => {
                        Started::Done(said(Exit::WouldChange, format!("would run: {command}\n")))
                    }
                },
            }
        }
        Action::Package(p) => {
            let manager = node
                .facts
                .get("package_manager")
                .and_then(|m| package::Manager::from_name(m));
            let Some(manager) = manager else {
                return Started::Done(Outcome::ended(Exit::Error(
                    "PACKAGE: no package manager on this node (looked for apt-get, dnf, yum, zypper and apk on the client's PATH)".into(),
                )));
            };
            verb_script(
                job_id,
                package::script(p, manager, check, &mark),
                cache,
                check,
            )
        }
        Action::Service(svc) => {
            verb_script(job_id, service::script(svc, check, &mark), cache, check)
        }
        Action::Wait(w) => {
            use crate::verbs::wait::Until;
            let delay = Duration::from_millis(w.retry_wait_ms);
            let v = vars(cache, node);
            let start = match &w.until {
                Until::Seconds(ms) => WaitStart::Sleep(Duration::from_millis(*ms)),
                Until::Url(url) => match template::render(url, &v).and_then(|u| {
                    crate::verbs::wait::parse_url(&u)?;
                    Ok(u)
                }) {
                    Ok(url) => WaitStart::Url {
                        url,
                        retry: w.retry,
                        delay,
                    },
                    Err(e) => {
                        return Started::Done(Outcome::ended(Exit::Error(format!(
                            "WAIT --url: {e}"
                        ))))
                    }
                },
                Until::Cmd(cmd) => match template::render_shell(cmd, &v) {
                    Ok(command) => WaitStart::Cmd {
                        spawn: Spawn {
                            job_id,
                            command,
                            env: cache.env().clone(),
                            live: false,
                        },
                        retry: w.retry,
                        delay,
                    },
                    Err(e) => {
                        return Started::Done(Outcome::ended(Exit::Error(format!(
                            "WAIT --cmd: {e}"
                        ))))
                    }
                },
            };
            if check {
                // Waiting changes nothing: a check does not wait.
                return Started::Done(said(Exit::Unchanged, format!("would wait: {}\n", w.args())));
            }
            Started::Wait(start)
        }
    }
}

/// The report for a reaped process; with `--stdout-arg` or
/// `--stderr-arg` on success, the values to sync first.
pub fn finish(
    ended: Ended,
    capture: &Capture,
    timed_out: Option<u64>,
    cache: &mut Cache,
) -> Result<Outcome, Box<Persist>> {
    let exit = match timed_out {
        Some(secs) => Exit::TimedOut { secs },
        None => ended.exit,
    };
    let mut staged = Vec::new();
    let mut values = Vec::new();
    if exit.state() == JobState::Succeeded {
        for (name, flag, stream) in [
            (&capture.stdout, "--stdout-arg", &ended.out),
            (&capture.stderr, "--stderr-arg", &ended.err),
        ] {
            let Some(name) = name else { continue };
            if stream.dropped > 0 {
                log::warn!(
                    "{flag} {name}: the output was cut at {} bytes",
                    stream.bytes.len()
                );
            }
            let text = String::from_utf8_lossy(&stream.bytes);
            values.push((name.clone(), text.trim_end_matches(['\n', '\r']).to_owned()));
            staged.push(format!("{flag} {name}"));
        }
    }
    match values.len() {
        0 => {}
        1 => {
            let (k, v) = &values[0];
            cache.stage_arg(k, v);
        }
        _ => cache.stage_args(values),
    }
    let outcome = Outcome {
        exit,
        stdout: ended.out.bytes,
        stderr: ended.err.bytes,
        stdout_dropped: ended.out.dropped,
        stderr_dropped: ended.err.dropped,
        exec_secs: ended.exec_secs,
        attempts: Vec::new(),
    };
    if staged.is_empty() {
        return Ok(outcome);
    }
    // A value the next steps cannot count on fails the job: it is
    // reported once it is on disk.
    Err(Box::new(Persist {
        outcome,
        what: format!("the command succeeded, but {}", staged.join(" and ")),
    }))
}

/// A CONTAINER_IMAGE or POD job: its podman command (and whether it only
/// reads), with what it prints kept as an ARG if asked.
fn podman_script(
    job_id: Uuid,
    (command, reads): (String, bool),
    stdout_arg: &Option<String>,
    cache: &Cache,
    check: bool,
    mark: &str,
) -> Started {
    let script = crate::verbs::podman::script(&command, reads, check, mark);
    let mut started = verb_script(job_id, script, cache, check && !reads);
    if let (Started::Process(_, _, on_success), false) = (&mut started, check) {
        on_success.capture.stdout = stdout_arg.clone();
    }
    started
}

/// CACHEFILE's values into the node's ARGs: the outcome at once when
/// nothing changes (or `--check`), else the values staged, to report once
/// on disk.
pub fn load_values(
    cache: &mut Cache,
    path: &str,
    pairs: Vec<(String, String)>,
    check: bool,
) -> Result<Outcome, Box<Persist>> {
    let new: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, v)| cache.args().get(k) != Some(v))
        .collect();
    if new.is_empty() {
        return Ok(said(
            Exit::Unchanged,
            format!("{path}: every ARG already set\n"),
        ));
    }
    let names: Vec<&str> = new.iter().map(|(k, _)| k.as_str()).collect();
    let text = format!(
        "{}{path}: {} ({})\n",
        if check { "would load " } else { "loaded " },
        crate::dsl::count(new.len(), "ARG"),
        names.join(", ")
    );
    if check {
        return Ok(said(Exit::WouldChange, text));
    }
    let mut outcome = Outcome::ended(Exit::Code(0));
    outcome.stdout = text.into_bytes();
    cache.stage_args(new);
    Err(Box::new(Persist {
        outcome,
        what: format!("CACHEFILE {path}"),
    }))
}

fn cache_key(task: &Task, rendered: &str, env: Option<&BTreeMap<String, String>>) -> String {
    let mut material = format!("{}\0{rendered}", task.sha1());
    for (k, v) in env.into_iter().flatten() {
        material.push_str(&format!("\0{k}={v}"));
    }
    hex_sha1(material.as_bytes())
}
