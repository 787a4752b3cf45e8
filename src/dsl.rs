//! The job DSL: a verb and its argument string parsed into a `Task`, with its
//! canonical form and task SHA1. Pure: no I/O.
//!
//! A job string starts with options, then the verb's arguments:
//! `--skip-cache --timeout 30 echo hi`. Options end at the first word that
//! is not one (or at `--`). The rest is kept verbatim, so shell quoting in a
//! command survives. Every verb takes `--skip-cache`, `--run-once` and
//! `--timeout SECONDS`; `RUN` also takes `--stdout-arg NAME`.
//!
//! The task SHA1 covers what would run: the verb, its arguments, the timeout
//! and `--stdout-arg`. It leaves out targets, ids, and the scheduling flags
//! `--skip-cache` and `--run-once`, so the same step always has the same SHA1
//! (for `--restrict` and the node cache) however it is submitted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// Seconds a job may run before its process group is killed.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;

/// A verb of the DSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verb {
    /// Run a command with `/bin/sh -c`.
    #[serde(rename = "RUN")]
    Run,
    /// Store a value in the node's cache, for templates.
    #[serde(rename = "ARG")]
    Arg,
    /// Set an environment variable for later RUNs on the node.
    #[serde(rename = "ENV")]
    Env,
    /// Create a directory and its parents.
    #[serde(rename = "WORKDIR")]
    Workdir,
    /// Send files from the server's machine to the nodes.
    #[serde(rename = "ADD")]
    Add,
    /// The same as ADD.
    #[serde(rename = "COPY")]
    Copy,
    /// Collect an ARG from every target and give each the map.
    #[serde(rename = "QUERY")]
    Query,
    /// Empty the node's cache (`manage --clear-cache`; not a verb of job
    /// strings or files).
    #[serde(rename = "CLEAR-CACHE")]
    ClearCache,
    /// Packages present, latest or absent.
    #[serde(rename = "PACKAGE")]
    Package,
    /// Directord's name for PACKAGE (on any package manager).
    #[serde(rename = "DNF")]
    Dnf,
    /// systemd units started, stopped, restarted, reloaded, enabled...
    #[serde(rename = "SERVICE")]
    Service,
    /// Wait some seconds, for a URL to answer, or for a command to succeed.
    #[serde(rename = "WAIT")]
    Wait,
    /// Print a text (Directord's test verb).
    #[serde(rename = "ECHO")]
    Echo,
    /// Forget a part of the node's cache, or all of it (Directord's).
    #[serde(rename = "CACHEEVICT")]
    CacheEvict,
    /// Load a YAML or JSON file of key: value into the node's ARGs.
    #[serde(rename = "CACHEFILE")]
    CacheFile,
    /// Run `facter --json` and keep its facts as the ARG `facter`.
    #[serde(rename = "FACTER")]
    Facter,
    /// Container images, through podman (Directord's).
    #[serde(rename = "CONTAINER_IMAGE")]
    ContainerImage,
    /// Pods, through podman (Directord's).
    #[serde(rename = "POD")]
    Pod,
    /// Directord's queue sentinel: accepted, and does nothing here.
    #[serde(rename = "QUEUESENTINEL")]
    QueueSentinel,
}

/// A part of a node's cache, as Directord's CACHEEVICT names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CachePart {
    Args,
    Envs,
    Query,
    /// The steps remembered as done.
    Jobs,
}

impl Verb {
    /// Every verb, for messages that list them.
    pub const ALL: &'static [Verb] = &[
        Verb::Run,
        Verb::Arg,
        Verb::Env,
        Verb::Workdir,
        Verb::Add,
        Verb::Copy,
        Verb::Query,
        Verb::Package,
        Verb::Dnf,
        Verb::Service,
        Verb::Wait,
        Verb::Echo,
        Verb::CacheEvict,
        Verb::CacheFile,
        Verb::Facter,
        Verb::ContainerImage,
        Verb::Pod,
        Verb::QueueSentinel,
    ];

    /// The verb as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Run => "RUN",
            Verb::Arg => "ARG",
            Verb::Env => "ENV",
            Verb::Workdir => "WORKDIR",
            Verb::Add => "ADD",
            Verb::Copy => "COPY",
            Verb::Query => "QUERY",
            Verb::ClearCache => "CLEAR-CACHE",
            Verb::Package => "PACKAGE",
            Verb::Dnf => "DNF",
            Verb::Service => "SERVICE",
            Verb::Wait => "WAIT",
            Verb::Echo => "ECHO",
            Verb::CacheEvict => "CACHEEVICT",
            Verb::CacheFile => "CACHEFILE",
            Verb::Facter => "FACTER",
            Verb::ContainerImage => "CONTAINER_IMAGE",
            Verb::Pod => "POD",
            Verb::QueueSentinel => "QUEUESENTINEL",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Verb {
    type Err = String;

    fn from_str(s: &str) -> Result<Verb, String> {
        Verb::ALL
            .iter()
            .copied()
            .find(|v| v.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<&str> = Verb::ALL.iter().map(|v| v.name()).collect();
                format!("unknown verb '{s}' (known verbs: {})", known.join(", "))
            })
    }
}

/// Options every verb takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// Run even if the node cached a success for this step.
    pub skip_cache: bool,
    /// Run on exactly one of the targets.
    pub run_once: bool,
    pub timeout_secs: u64,
    /// RUN: run a failed command again, up to this many more times.
    pub retries: u32,
    /// Milliseconds between a failed attempt and the next (given in
    /// seconds, fractions allowed).
    pub retry_delay_ms: u64,
    /// `--check`: change nothing; say what would change.
    pub check: bool,
    /// `--diff`: show how each text file changes (or would).
    pub diff: bool,
    /// Its name in an orchestration, and whether it is a handler. Boxed:
    /// few jobs have one, and every retained job would pay for its size.
    pub handler: Option<Box<Handler>>,
}

/// A job's `name:` and `onchanges:` in an orchestration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handler {
    /// For handlers and messages.
    pub name: Option<String>,
    /// The names of earlier jobs of its run: it runs on a node only where
    /// one of them changed something.
    #[serde(deserialize_with = "crate::wire::cautious_seq")]
    pub onchanges: Vec<String>,
    /// The ids of those jobs, filled in by the server as it queues the run.
    #[serde(deserialize_with = "crate::wire::cautious_seq")]
    pub triggers: Vec<uuid::Uuid>,
}

impl JobOptions {
    /// Its name in the orchestration, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.handler.as_ref().and_then(|h| h.name.as_deref())
    }

    /// The jobs whose changes it handles (empty: it is no handler).
    pub fn onchanges(&self) -> &[String] {
        self.handler.as_ref().map_or(&[], |h| &h.onchanges)
    }
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            skip_cache: false,
            run_once: false,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            retries: 0,
            retry_delay_ms: DEFAULT_RETRY_DELAY_MS,
            check: false,
            diff: false,
            handler: None,
        }
    }
}

/// The most `--retries` a job may ask for: each attempt's output is kept.
pub const MAX_RETRIES: u32 = 100;
/// The default `--retry-delay` (5 s, as Ansible's `delay`), in ms.
pub const DEFAULT_RETRY_DELAY_MS: u64 = 5000;

/// Seconds (fractions allowed, to the millisecond) from 0 to `max`, as
/// milliseconds.
pub fn parse_secs_ms(text: &str, max: u64) -> Option<u64> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && (0.0..=max as f64).contains(&secs)).then(|| (secs * 1000.0).round() as u64)
}

/// Milliseconds as the seconds an operator writes: `5`, `0.25`.
pub fn secs_text(ms: u64) -> String {
    match ms % 1000 {
        0 => (ms / 1000).to_string(),
        frac => format!(
            "{}.{}",
            ms / 1000,
            format!("{frac:03}").trim_end_matches('0')
        ),
    }
}

/// What a job does on a node. (Its `Debug`, which debug logs print, hides
/// ARG and ENV values.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// `RUN [--stdout-arg NAME] [--creates PATH] [--unless COMMAND]
    /// COMMAND`: COMMAND is a template; a guard that holds skips it.
    Run {
        command: String,
        stdout_arg: Option<String>,
        /// `--stderr-arg NAME`: its stderr, trimmed, kept as that ARG
        /// (boxed: rare, and every retained job would pay for it).
        #[allow(clippy::box_collection)]
        stderr_arg: Option<Box<String>>,
        /// Boxed: few RUNs have one, and every retained job would pay for
        /// its size.
        guard: Option<Box<Guard>>,
    },
    /// `ARG KEY VALUE`.
    Arg {
        key: String,
        value: String,
    },
    /// `ENV KEY VALUE`.
    Env {
        key: String,
        value: String,
    },
    /// `WORKDIR [--chown USER[:GROUP]] [--chmod MODE] PATH`: PATH is a
    /// template.
    Workdir {
        path: String,
        chown: Option<String>,
        mode: Option<u32>,
        /// `--stdout-arg NAME`: the directory's path kept as that ARG
        /// (boxed: rare, and every retained job would pay for it).
        #[allow(clippy::box_collection)]
        stdout_arg: Option<Box<String>>,
    },
    /// `ADD [--chown USER[:GROUP]] SRC... DEST`. Boxed: the largest
    /// action by far, and every retained job would pay for its size.
    Add(Box<Add>),
    /// `QUERY KEY`: each target reports its ARG KEY, and once every target
    /// has (or ended), each gets the map of them as `query.KEY`.
    Query {
        key: String,
    },
    /// Forget every ARG, ENV, QUERY map and step the node's cache holds;
    /// its files stay as they are.
    ClearCache,
    /// `PACKAGE [--state present|latest|absent] NAME...`.
    Package(Box<crate::verbs::package::Package>),
    /// `SERVICE [--state ...] [--enable|...] [--daemon-reload] UNIT...`.
    Service(Box<crate::verbs::service::Service>),
    /// `WAIT --seconds N | --url URL | --cmd COMMAND`.
    Wait(Box<crate::verbs::wait::Wait>),
    /// `ECHO TEXT`: the text (rendered) is its output.
    Echo {
        text: String,
    },
    /// `CACHEEVICT args|envs|query|jobs|all`; `None`: all.
    CacheEvict {
        part: Option<CachePart>,
    },
    /// `ARG --extend-args KEY VALUE`: a list or map merged into the ARG's.
    ExtendArg {
        key: String,
        value: String,
    },
    /// `CACHEFILE PATH`.
    CacheFile(Box<crate::verbs::cachefile::CacheFile>),
    /// `FACTER [--custom-dir DIR] [--external-dir DIR]`.
    Facter {
        custom_dir: Option<String>,
        external_dir: Option<String>,
    },
    Image(Box<crate::verbs::podman::Image>),
    Pod(Box<crate::verbs::podman::Pod>),
    /// Accepted for Directord's files; does nothing.
    QueueSentinel,
}

impl Action {
    /// Does its job string end in free text (a command, a value, paths),
    /// which needs the `--` that ends options when it starts like one? Not
    /// for verbs whose arguments are their own options and names (which
    /// never start with `-`), nor for verbs without arguments. No wildcard:
    /// a new verb must say which it is.
    fn ends_in_text(&self) -> bool {
        match self {
            Action::Run { .. }
            | Action::Arg { .. }
            | Action::Env { .. }
            | Action::ExtendArg { .. }
            | Action::Workdir { .. }
            | Action::Add(_)
            | Action::Query { .. }
            | Action::Echo { .. }
            | Action::CacheEvict { .. }
            | Action::CacheFile(_) => true,
            Action::ClearCache
            | Action::Package(_)
            | Action::Service(_)
            | Action::Wait(_)
            | Action::Facter { .. }
            | Action::Image(_)
            | Action::Pod(_)
            | Action::QueueSentinel => false,
        }
    }
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Run {
                command,
                stdout_arg,
                stderr_arg,
                guard,
            } => f
                .debug_struct("Run")
                .field("command", command)
                .field("stdout_arg", stdout_arg)
                .field("stderr_arg", stderr_arg)
                .field("guard", guard)
                .finish(),
            Action::Arg { key, .. } | Action::ExtendArg { key, .. } => f
                .debug_struct("Arg")
                .field("key", key)
                .field("value", &HIDDEN)
                .finish(),
            Action::Env { key, .. } => f
                .debug_struct("Env")
                .field("key", key)
                .field("value", &HIDDEN)
                .finish(),
            Action::Workdir {
                path,
                chown,
                mode,
                stdout_arg,
            } => f
                .debug_struct("Workdir")
                .field("path", path)
                .field("chown", chown)
                .field("mode", mode)
                .field("stdout_arg", stdout_arg)
                .finish(),
            Action::Add(add) => f.debug_tuple("Add").field(add).finish(),
            Action::Query { key } => f.debug_struct("Query").field("key", key).finish(),
            Action::ClearCache => f.write_str("ClearCache"),
            Action::Package(p) => f.debug_tuple("Package").field(p).finish(),
            Action::Service(v) => f.debug_tuple("Service").field(v).finish(),
            Action::Wait(w) => f.debug_tuple("Wait").field(w).finish(),
            Action::Echo { text } => f.debug_struct("Echo").field("text", text).finish(),
            Action::CacheEvict { part } => {
                f.debug_struct("CacheEvict").field("part", part).finish()
            }
            Action::Facter {
                custom_dir,
                external_dir,
            } => f
                .debug_struct("Facter")
                .field("custom_dir", custom_dir)
                .field("external_dir", external_dir)
                .finish(),
            Action::Image(i) => f.debug_tuple("Image").field(i).finish(),
            Action::Pod(p) => f.debug_tuple("Pod").field(p).finish(),
            Action::QueueSentinel => f.write_str("QueueSentinel"),
            Action::CacheFile(c) => f
                .debug_struct("CacheFile")
                .field("path", &c.path)
                .field("values", &c.values.len())
                .finish(),
        }
    }
}

/// A RUN's guards: it is not run (`unchanged`) when `creates` exists or
/// `unless` exits 0. Both are templates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub creates: Option<String>,
    pub unless: Option<String>,
}

/// An ADD's arguments. DEST is a template. `files` are the sources as
/// resolved by the CLI (globs expanded, contents hashed); empty until then.
/// (Encoded as the struct variant it was, field for field.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Add {
    pub chown: Option<String>,
    #[serde(deserialize_with = "crate::wire::cautious_seq")]
    pub sources: Vec<String>,
    pub dest: String,
    #[serde(deserialize_with = "crate::wire::cautious_seq")]
    pub files: Vec<SourceFile>,
    /// `--blueprint`: each file is a template, rendered on the node.
    pub blueprint: bool,
    /// `--chmod MODE`: the files' mode, instead of the sources'.
    pub mode: Option<u32>,
}

/// One file an ADD sends, as found on the server's machine at submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Absolute path on the server's machine.
    pub path: String,
    pub size: u64,
    /// Permission bits, applied on the node.
    pub mode: u32,
    /// SHA1 of the content, lower-case hex.
    pub sha1: String,
}

/// Is an ADD destination a directory (files keep their names under it) or
/// the path of the one file sent?
pub fn dest_is_dir(dest: &str, files: &[SourceFile]) -> bool {
    dest.ends_with('/') || files.len() > 1
}

impl SourceFile {
    /// The file's name, used under a destination directory.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// A parsed job definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub action: Action,
    pub options: JobOptions,
}

/// What an ARG or ENV value is shown as, unless asked for
/// (`--show-values`).
pub const HIDDEN: &str = "<hidden>";

impl Task {
    /// Parse the job string of `verb`. Errors are one line: a newline or
    /// other control character from the job string is shown escaped.
    pub fn parse(verb: Verb, args: &str) -> Result<Task, String> {
        Task::parse_raw(verb, args).map_err(|e| one_line(&e))
    }

    fn parse_raw(verb: Verb, args: &str) -> Result<Task, String> {
        let mut options = JobOptions::default();
        let mut retry_delay = false;
        let mut flags: Vec<Flag> = Vec::new();
        let own = verb_options(verb);
        let mut rest = args.trim();
        while let Some(after) = rest.strip_prefix("--") {
            if after.is_empty() || after.starts_with(char::is_whitespace) {
                rest = after.trim_start(); // `--` ends the options
                break;
            }
            let (word, tail) = split_word(after);
            rest = tail;
            let (name, inline) = match word.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (word, None),
            };
            let mut value = |what: &str| -> Result<String, String> {
                if let Some(v) = inline {
                    return Ok(v.to_owned());
                }
                let (v, tail) = take_value(rest)?;
                if v.is_empty() && tail.len() == rest.len() {
                    return Err(format!("{verb} option --{name} needs {what}"));
                }
                rest = tail;
                Ok(v)
            };
            match name {
                "skip-cache" if inline.is_none() => options.skip_cache = true,
                "run-once" if inline.is_none() => options.run_once = true,
                "timeout" => {
                    let v = value("a number of seconds")?;
                    options.timeout_secs = v
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=31_536_000).contains(s))
                        .ok_or_else(|| format!("{verb} option --timeout: '{v}' is not a whole number of seconds (1 or more)"))?;
                }
                "retries" if verb == Verb::Run => {
                    let v = value("a number of retries")?;
                    options.retries = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n <= MAX_RETRIES)
                        .ok_or_else(|| format!("{verb} option --retries: '{v}' is not a whole number from 0 to {MAX_RETRIES}"))?;
                }
                "retry-delay" if verb == Verb::Run => {
                    let v = value("a number of seconds")?;
                    options.retry_delay_ms = parse_secs_ms(&v, 86_400).ok_or_else(|| {
                        format!("{verb} option --retry-delay: '{v}' is not a number of seconds from 0 to 86400 (fractions allowed: 0.5)")
                    })?;
                    retry_delay = true;
                }
                "retries" | "retry-delay" => {
                    return Err(format!(
                        "option --{name} does not apply to {verb} (only to RUN)"
                    ))
                }
                _ => match own.iter().find(|(n, _)| *n == name) {
                    Some(&(n, true)) => flags.push((n, Some(value("a value")?))),
                    Some(&(n, false)) if inline.is_none() => flags.push((n, None)),
                    Some(_) => return Err(format!("{verb} option --{name} takes no value")),
                    None => return Err(unknown_option(verb, name)),
                },
            }
        }
        if retry_delay && options.retries == 0 {
            return Err(format!(
                "{verb} option --retry-delay needs --retries N (how many times to retry)"
            ));
        }
        let flag = |flags: &[Flag], n: &str| -> Option<String> {
            flags
                .iter()
                .rev()
                .find(|(f, _)| *f == n)
                .and_then(|(_, v)| v.clone())
        };
        let has = |flags: &[Flag], n: &str| flags.iter().any(|(f, _)| *f == n);
        let chown = flag(&flags, "chown")
            .map(|v| {
                let (user, group) = v.split_once(':').unwrap_or((&v, ""));
                if user.is_empty() || v.ends_with(':') || group.contains(':') {
                    return Err(format!("{verb} option --chown: '{v}' is not USER[:GROUP]"));
                }
                Ok(v)
            })
            .transpose()?;
        let mode = flag(&flags, "chmod")
            .map(|v| parse_mode(&v).map_err(|e| format!("{verb} option --chmod: {e}")))
            .transpose()?;
        let action = match verb {
            Verb::Run => {
                if rest.is_empty() {
                    return Err("RUN needs a command to run".into());
                }
                crate::template::check(rest).map_err(|e| format!("RUN command: {e}"))?;
                let stdout_arg = flag(&flags, "stdout-arg");
                if let Some(v) = &stdout_arg {
                    check_name(v, "--stdout-arg name")?;
                }
                let stderr_arg = flag(&flags, "stderr-arg");
                if let Some(v) = &stderr_arg {
                    check_name(v, "--stderr-arg name")?;
                }
                let creates = flag(&flags, "creates");
                if let Some(c) = &creates {
                    if c.trim().is_empty() {
                        return Err("RUN option --creates needs a path".into());
                    }
                    crate::template::check(c).map_err(|e| format!("RUN --creates: {e}"))?;
                }
                let unless = flag(&flags, "unless");
                if let Some(u) = &unless {
                    if u.trim().is_empty() {
                        return Err("RUN option --unless needs a command".into());
                    }
                    crate::template::check(u).map_err(|e| format!("RUN --unless: {e}"))?;
                }
                Action::Run {
                    command: rest.to_owned(),
                    stdout_arg,
                    stderr_arg: stderr_arg.map(Box::new),
                    guard: (creates.is_some() || unless.is_some())
                        .then(|| Box::new(Guard { creates, unless })),
                }
            }
            Verb::Echo => {
                crate::template::check(rest).map_err(|e| format!("ECHO text: {e}"))?;
                Action::Echo {
                    text: rest.to_owned(),
                }
            }
            Verb::CacheEvict => {
                let part = match rest.to_ascii_lowercase().as_str() {
                    "all" => None,
                    "args" => Some(CachePart::Args),
                    "envs" => Some(CachePart::Envs),
                    "query" => Some(CachePart::Query),
                    "jobs" => Some(CachePart::Jobs),
                    _ => {
                        return Err(format!(
                            "CACHEEVICT needs one of args, envs, query, jobs or all, not '{rest}'"
                        ))
                    }
                };
                Action::CacheEvict { part }
            }
            Verb::CacheFile => {
                Action::CacheFile(Box::new(crate::verbs::cachefile::CacheFile::parse(rest)?))
            }
            Verb::ContainerImage => {
                Action::Image(Box::new(crate::verbs::podman::parse_image(flags, rest)?))
            }
            Verb::Pod => Action::Pod(Box::new(crate::verbs::podman::parse_pod(flags, rest)?)),
            Verb::QueueSentinel => Action::QueueSentinel,
            Verb::Facter => {
                if !rest.is_empty() {
                    return Err(format!(
                        "FACTER takes only --custom-dir DIR and --external-dir DIR, not '{rest}'"
                    ));
                }
                Action::Facter {
                    custom_dir: flag(&flags, "custom-dir"),
                    external_dir: flag(&flags, "external-dir"),
                }
            }
            Verb::Arg | Verb::Env => {
                let (key, value) = split_word(rest);
                if key.is_empty() || value.is_empty() {
                    return Err(format!("{verb} needs KEY VALUE"));
                }
                check_name(key, &format!("{verb} key"))?;
                let (key, value) = (key.to_owned(), value.to_owned());
                if has(&flags, "extend-args") {
                    if crate::template::structured(&value).is_none() {
                        return Err(format!(
                            "ARG --extend-args {key}: the value is not a list or a map (['a'], {{\"k\": \"v\"}})"
                        ));
                    }
                    Action::ExtendArg { key, value }
                } else if verb == Verb::Arg {
                    Action::Arg { key, value }
                } else {
                    Action::Env { key, value }
                }
            }
            Verb::Query => {
                let (key, more) = split_word(rest);
                if key.is_empty() || !more.is_empty() {
                    return Err("QUERY needs one ARG name".into());
                }
                check_name(key, "QUERY key")?;
                if options.run_once {
                    return Err(
                        "option --run-once does not apply to QUERY (it asks every target)".into(),
                    );
                }
                Action::Query {
                    key: key.to_owned(),
                }
            }
            Verb::ClearCache => {
                if !rest.is_empty() {
                    return Err("CLEAR-CACHE takes no arguments".into());
                }
                Action::ClearCache
            }
            Verb::Workdir => {
                if rest.is_empty() {
                    return Err("WORKDIR needs a path".into());
                }
                crate::template::check(rest).map_err(|e| format!("WORKDIR path: {e}"))?;
                let stdout_arg = flag(&flags, "stdout-arg");
                if let Some(v) = &stdout_arg {
                    check_name(v, "--stdout-arg name")?;
                }
                Action::Workdir {
                    path: rest.to_owned(),
                    chown,
                    mode,
                    stdout_arg: stdout_arg.map(Box::new),
                }
            }
            Verb::Add | Verb::Copy => {
                let mut words = split_paths(rest)?;
                if words.len() < 2 {
                    return Err(format!("{verb} needs at least one SRC and a DEST"));
                }
                let dest = words.pop().unwrap_or_default();
                crate::template::check(&dest).map_err(|e| format!("{verb} DEST: {e}"))?;
                Action::Add(Box::new(Add {
                    chown,
                    sources: words,
                    dest,
                    files: Vec::new(),
                    blueprint: has(&flags, "blueprint"),
                    mode,
                }))
            }
            Verb::Package | Verb::Dnf => {
                Action::Package(Box::new(crate::verbs::package::parse(flags, rest)?))
            }
            Verb::Service => Action::Service(Box::new(crate::verbs::service::parse(flags, rest)?)),
            Verb::Wait => {
                let w = crate::verbs::wait::parse(flags, rest)?;
                if let crate::verbs::wait::Until::Cmd(c) = &w.until {
                    crate::template::check(c).map_err(|e| format!("WAIT command: {e}"))?;
                }
                Action::Wait(Box::new(w))
            }
        };
        Ok(Task { action, options })
    }

    /// The task's verb.
    pub fn verb(&self) -> Verb {
        match self.action {
            Action::Run { .. } => Verb::Run,
            Action::Arg { .. } | Action::ExtendArg { .. } => Verb::Arg,
            Action::Env { .. } => Verb::Env,
            Action::Workdir { .. } => Verb::Workdir,
            Action::Add(_) => Verb::Add,
            Action::Query { .. } => Verb::Query,
            Action::ClearCache => Verb::ClearCache,
            Action::Package(_) => Verb::Package,
            Action::Service(_) => Verb::Service,
            Action::Wait(_) => Verb::Wait,
            Action::Echo { .. } => Verb::Echo,
            Action::CacheEvict { .. } => Verb::CacheEvict,
            Action::CacheFile(_) => Verb::CacheFile,
            Action::Facter { .. } => Verb::Facter,
            Action::Image(_) => Verb::ContainerImage,
            Action::Pod(_) => Verb::Pod,
            Action::QueueSentinel => Verb::QueueSentinel,
        }
    }

    /// The job string, normalized: options (those not at their default),
    /// then the arguments. Parsing it gives the same task back.
    pub fn args(&self) -> String {
        self.job_string(false)
    }

    /// The job string to show and log: ARG and ENV values (often
    /// passwords) replaced by `HIDDEN`.
    pub fn args_masked(&self) -> String {
        self.job_string(true)
    }

    fn job_string(&self, mask: bool) -> String {
        let mut out = Vec::new();
        if self.options.skip_cache {
            out.push("--skip-cache".to_owned());
        }
        if self.options.run_once {
            out.push("--run-once".to_owned());
        }
        if self.options.timeout_secs != DEFAULT_TIMEOUT_SECS {
            out.push(format!("--timeout {}", self.options.timeout_secs));
        }
        if self.options.retries > 0 {
            out.push(format!("--retries {}", self.options.retries));
            if self.options.retry_delay_ms != DEFAULT_RETRY_DELAY_MS {
                out.push(format!(
                    "--retry-delay {}",
                    secs_text(self.options.retry_delay_ms)
                ));
            }
        }
        match &self.action {
            Action::Run {
                command,
                stdout_arg,
                stderr_arg,
                guard,
            } => {
                let (creates, unless) = guard
                    .as_ref()
                    .map_or((None, None), |g| (g.creates.as_ref(), g.unless.as_ref()));
                if let Some(name) = stdout_arg {
                    out.push(format!("--stdout-arg {name}"));
                }
                if let Some(name) = stderr_arg {
                    out.push(format!("--stderr-arg {name}"));
                }
                if let Some(c) = creates {
                    out.push(format!("--creates {}", quote_value(c)));
                }
                if let Some(u) = unless {
                    out.push(format!("--unless {}", quote_value(u)));
                }
                out.push(command.clone());
            }
            Action::ExtendArg { key, .. } if mask => {
                out.push("--extend-args".into());
                out.push(format!("{key} {HIDDEN}"))
            }
            Action::ExtendArg { key, value } => {
                out.push("--extend-args".into());
                out.push(format!("{key} {value}"))
            }
            Action::Arg { key, .. } | Action::Env { key, .. } if mask => {
                out.push(format!("{key} {HIDDEN}"))
            }
            Action::Arg { key, value } | Action::Env { key, value } => {
                out.push(format!("{key} {value}"))
            }
            Action::Workdir {
                path,
                chown,
                mode,
                stdout_arg,
            } => {
                if let Some(c) = chown {
                    out.push(format!("--chown {}", quote_value(c)));
                }
                if let Some(name) = stdout_arg {
                    out.push(format!("--stdout-arg {name}"));
                }
                if let Some(m) = mode {
                    out.push(format!("--chmod {m:04o}"));
                }
                out.push(path.clone())
            }
            Action::Query { key } => out.push(key.clone()),
            Action::ClearCache => {}
            Action::Package(p) => out.push(p.args()),
            Action::Service(v) => out.push(v.args()),
            Action::Wait(w) => out.push(w.args()),
            Action::Echo { text } => out.push(text.clone()),
            Action::CacheEvict { part } => out.push(cache_part_name(*part).into()),
            Action::CacheFile(c) => out.push(c.path.clone()),
            Action::Image(i) => out.push(i.args()),
            Action::Pod(p) => out.push(p.args()),
            Action::QueueSentinel => {}
            Action::Facter {
                custom_dir,
                external_dir,
            } => {
                if let Some(d) = custom_dir {
                    out.push(format!("--custom-dir {}", quote_value(d)));
                }
                if let Some(d) = external_dir {
                    out.push(format!("--external-dir {}", quote_value(d)));
                }
            }
            Action::Add(add) => {
                let Add {
                    chown,
                    sources,
                    dest,
                    blueprint,
                    mode,
                    ..
                } = &**add;
                if let Some(c) = chown {
                    out.push(format!("--chown {}", quote_value(c)));
                }
                if let Some(m) = mode {
                    out.push(format!("--chmod {m:04o}"));
                }
                if *blueprint {
                    out.push("--blueprint".into());
                }
                out.push(
                    sources
                        .iter()
                        .chain([dest])
                        .map(|w| quote_path(w))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        if let Some(body) = out.last_mut().filter(|_| self.action.ends_in_text()) {
            if body.starts_with("--") {
                *body = format!("-- {body}");
            }
        }
        out.join(" ")
    }

    /// The canonical definition the task SHA1 is computed over.
    pub fn canonical(&self) -> String {
        let body = match &self.action {
            Action::Run {
                command,
                stdout_arg,
                stderr_arg,
                guard,
            } => {
                let (creates, unless) = guard
                    .as_ref()
                    .map_or((None, None), |g| (g.creates.as_ref(), g.unless.as_ref()));
                // Guards and --stderr-arg joined later: a RUN without them
                // keeps its SHA1.
                let mut guards = String::new();
                if let Some(e) = stderr_arg {
                    guards.push_str(&format!("stderr_arg={e}\0"));
                }
                if let Some(c) = creates {
                    guards.push_str(&format!("creates={c}\0"));
                }
                if let Some(u) = unless {
                    guards.push_str(&format!("unless={u}\0"));
                }
                format!(
                    "stdout_arg={}\0{guards}{command}",
                    stdout_arg.as_deref().unwrap_or("")
                )
            }
            Action::Arg { key, value } | Action::Env { key, value } => format!("{key}\0{value}"),
            Action::ExtendArg { key, value } => format!("extend\0{key}\0{value}"),
            Action::Workdir {
                path,
                chown,
                mode,
                stdout_arg,
            } => {
                let mut s = path.clone();
                if let Some(c) = chown {
                    s.push_str(&format!("\0chown={c}"));
                }
                if let Some(a) = stdout_arg {
                    s.push_str(&format!("\0stdout_arg={a}"));
                }
                if let Some(m) = mode {
                    s.push_str(&format!("\0mode={m:o}"));
                }
                s
            }
            Action::Query { key } => key.clone(),
            Action::ClearCache => String::new(),
            Action::Package(p) => p.args(),
            Action::Service(v) => v.args(),
            Action::Wait(w) => w.args(),
            Action::Echo { text } => text.clone(),
            Action::CacheEvict { part } => cache_part_name(*part).into(),
            Action::CacheFile(c) => c.path.clone(),
            Action::Image(i) => i.args(),
            Action::Pod(p) => p.args(),
            Action::QueueSentinel => String::new(),
            Action::Facter {
                custom_dir,
                external_dir,
            } => format!(
                "{}\0{}",
                custom_dir.as_deref().unwrap_or(""),
                external_dir.as_deref().unwrap_or("")
            ),
            // What lands on the node: names, contents and modes, not where
            // the sources sat on the server's machine.
            Action::Add(add) => {
                let Add {
                    chown,
                    dest,
                    files,
                    blueprint,
                    mode,
                    ..
                } = &**add;
                let mut s = format!("chown={}\0{dest}", chown.as_deref().unwrap_or(""));
                if *blueprint {
                    s.push_str("\0blueprint");
                }
                if let Some(m) = mode {
                    s.push_str(&format!("\0mode={m:o}"));
                }
                for f in files {
                    s.push_str(&format!(
                        "\0{}:{}:{:o}:{}",
                        f.name(),
                        f.size,
                        f.mode,
                        f.sha1
                    ));
                }
                s
            }
        };
        // Retries joined the definition later: a task without them keeps
        // the SHA1 it always had (node caches, --restrict lists).
        let retries = match self.options.retries {
            0 => String::new(),
            n => format!(
                "retries={n}\0retry_delay={}\0",
                secs_text(self.options.retry_delay_ms)
            ),
        };
        format!(
            "{}\0timeout={}\0{retries}{body}",
            self.verb().name(),
            self.options.timeout_secs
        )
    }

    /// The task SHA1, lower-case hex.
    pub fn sha1(&self) -> String {
        hex_sha1(self.canonical().as_bytes())
    }

    /// The task SHA1, raw.
    pub fn sha1_bytes(&self) -> [u8; 20] {
        Sha1::digest(self.canonical().as_bytes()).into()
    }
}

use crate::verbs::Flag;

/// CACHEEVICT's word for a part of the cache.
fn cache_part_name(part: Option<CachePart>) -> &'static str {
    match part {
        None => "all",
        Some(CachePart::Args) => "args",
        Some(CachePart::Envs) => "envs",
        Some(CachePart::Query) => "query",
        Some(CachePart::Jobs) => "jobs",
    }
}

/// The options only `verb` takes: name, and whether a value follows.
fn verb_options(verb: Verb) -> &'static [(&'static str, bool)] {
    match verb {
        Verb::Run => &[
            ("stdout-arg", true),
            ("stderr-arg", true),
            ("creates", true),
            ("unless", true),
        ],
        Verb::Add | Verb::Copy => &[("chown", true), ("chmod", true), ("blueprint", false)],
        Verb::Workdir => &[("chown", true), ("chmod", true), ("stdout-arg", true)],
        Verb::Package | Verb::Dnf => crate::verbs::package::OPTIONS,
        Verb::Service => crate::verbs::service::OPTIONS,
        Verb::Wait => crate::verbs::wait::OPTIONS,
        Verb::Arg => &[("extend-args", false)],
        Verb::Env
        | Verb::Query
        | Verb::ClearCache
        | Verb::Echo
        | Verb::CacheEvict
        | Verb::CacheFile => &[],
        Verb::Facter => &[("custom-dir", true), ("external-dir", true)],
        Verb::ContainerImage => crate::verbs::podman::IMAGE_OPTIONS,
        Verb::Pod => crate::verbs::podman::POD_OPTIONS,
        Verb::QueueSentinel => &[],
    }
}

/// Why `--name` is refused for `verb`: which verbs take it, or which
/// options `verb` has.
fn unknown_option(verb: Verb, name: &str) -> String {
    let takers: Vec<&str> = Verb::ALL
        .iter()
        .filter(|v| verb_options(**v).iter().any(|(n, _)| *n == name))
        .map(|v| v.name())
        .collect();
    if !takers.is_empty() {
        let list = match takers.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, init)) => format!("{} and {last}", init.join(", ")),
            None => String::new(),
        };
        return format!("option --{name} does not apply to {verb} (only to {list})");
    }
    let mut known = vec!["--skip-cache", "--run-once", "--timeout SECONDS"];
    if verb == Verb::Run {
        known.extend(["--retries N", "--retry-delay SECONDS"]);
    }
    let own: Vec<String> = verb_options(verb)
        .iter()
        .map(|(n, v)| {
            if *v {
                format!("--{n} VALUE")
            } else {
                format!("--{n}")
            }
        })
        .collect();
    let mut all: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    all.extend(own);
    format!(
        "unknown option --{name} for {verb} (options: {})",
        all.join(", ")
    )
}

/// An option's value: one word, or a quoted string (`'test -f /x'`).
fn take_value(s: &str) -> Result<(String, &str), String> {
    let s = s.trim_start();
    match s.chars().next() {
        Some(q @ ('\'' | '"')) => match s[1..].find(q) {
            Some(i) => Ok((s[1..1 + i].to_owned(), s[i + 2..].trim_start())),
            None => Err(format!("unclosed quote in '{s}'")),
        },
        _ => {
            let (w, rest) = split_word(s);
            Ok((w.to_owned(), rest))
        }
    }
}

/// A value as `take_value` reads it back.
pub fn quote_value(v: &str) -> String {
    let plain = !v.is_empty() && !v.contains(char::is_whitespace) && !v.starts_with(['\'', '"']);
    if plain {
        v.to_owned()
    } else if !v.contains('\'') {
        format!("'{v}'")
    } else {
        format!("\"{v}\"")
    }
}

/// A file mode in octal: `644`, `0644`, `0o2755`.
pub fn parse_mode(v: &str) -> Result<u32, String> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() && !digits.starts_with('+') => Ok(m),
        _ => Err(format!("'{v}' is not an octal mode (0644, 755, 2775)")),
    }
}

/// A path as `split_paths` reads it back: as it is if it can be, else in
/// quotes, else (it holds both quotes, or an unclosed `{{`) one quoted
/// character at a time, which always reads back.
fn quote_path(w: &str) -> String {
    let reads_back = |s: &str| split_paths(s).is_ok_and(|v| v == [w]);
    for candidate in [w.to_owned(), format!("'{w}'"), format!("\"{w}\"")] {
        if reads_back(&candidate) {
            return candidate;
        }
    }
    let mut out = String::new();
    for c in w.chars() {
        match c {
            '\'' => out.push_str("\"'\""),
            c if c == '"' || c == '{' || c.is_whitespace() => {
                out.push('\'');
                out.push(c);
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        out.push_str("''");
    }
    debug_assert!(reads_back(&out), "{w:?} printed as {out:?}");
    out
}

/// `n` of `noun`, its plural with an `s`: "1 job", "2 jobs".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `s` with control characters escaped (`\n`), so it prints as one line.
pub fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// SHA1 of `bytes` as lower-case hex.
pub fn hex_sha1(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first whitespace-separated word and the rest, both trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// ADD's SRC... DEST words: split at whitespace, except inside quotes
/// (which are removed) and inside `{{ }}` or `{% %}` template tags.
fn split_paths(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut tag: Option<&str> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(close) = tag {
            word.push(c);
            if word.ends_with(close) {
                tag = None;
            }
            continue;
        }
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, '{') if matches!(chars.peek(), Some('{') | Some('%')) => {
                let open = chars.next().unwrap_or('{');
                word.push('{');
                word.push(open);
                tag = Some(if open == '{' { "}}" } else { "%}" });
                in_word = true;
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() || tag.is_some() {
        return Err(format!("unclosed quote or template tag in '{s}'"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// ARG, ENV and --stdout-arg names are identifiers, usable in templates
/// and as environment variable names.
pub fn check_name(name: &str, what: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} '{name}' is not a valid name (letters, digits and _, not starting with a digit)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> Result<Task, String> {
        Task::parse(Verb::Run, s)
    }

    #[test]
    fn verbs_with_their_own_options_print_a_job_string_that_parses_back() {
        for (verb, args) in [
            (
                Verb::Service,
                "--daemon-reload --enable --state restarted podman.socket",
            ),
            (Verb::Package, "--state latest nginx"),
            (Verb::Wait, "--seconds 5"),
            (Verb::Facter, "--skip-cache --custom-dir /x"),
        ] {
            let t = Task::parse(verb, args).unwrap();
            assert!(
                !t.args().starts_with("--  ") && !t.args().contains("-- --"),
                "{}",
                t.args()
            );
            assert_eq!(
                Task::parse(verb, &t.args()).unwrap(),
                t,
                "{verb} {}",
                t.args()
            );
        }
    }

    #[test]
    fn arg_extend_args_takes_a_list_or_a_map_only() {
        let t = Task::parse(Verb::Arg, "--extend-args items ['b']").unwrap();
        assert_eq!(
            t.action,
            Action::ExtendArg {
                key: "items".into(),
                value: "['b']".into()
            }
        );
        assert_eq!(t.args(), "--extend-args items ['b']");
        assert_ne!(
            t.sha1(),
            Task::parse(Verb::Arg, "items ['b']").unwrap().sha1()
        );
        let e = Task::parse(Verb::Arg, "--extend-args items b").unwrap_err();
        assert!(e.contains("not a list or a map"), "{e}");
        assert!(Task::parse(Verb::Env, "--extend-args E ['b']").is_err());
    }

    #[test]
    fn verbs_parse_case_insensitively() {
        assert_eq!("run".parse::<Verb>(), Ok(Verb::Run));
        assert_eq!("Workdir".parse::<Verb>(), Ok(Verb::Workdir));
        assert_eq!(
            "FLY".parse::<Verb>().unwrap_err(),
            "unknown verb 'FLY' (known verbs: RUN, ARG, ENV, WORKDIR, ADD, COPY, QUERY, PACKAGE, DNF, SERVICE, WAIT, ECHO, CACHEEVICT, CACHEFILE, FACTER, CONTAINER_IMAGE, POD, QUEUESENTINEL)"
        );
    }

    #[test]
    fn retries_are_run_options_that_join_the_sha1_only_when_asked() {
        let plain = run("make").unwrap();
        let t = run("--retries 2 --retry-delay 0 make").unwrap();
        assert_eq!((t.options.retries, t.options.retry_delay_ms), (2, 0));
        assert_eq!(t.args(), "--retries 2 --retry-delay 0 make");
        assert_eq!(run(&t.args()).unwrap(), t);
        // Fractions of a second, as --heartbeat-interval takes them; the
        // SHA1 of a whole number of seconds is the one it always was.
        let f = run("--retries 2 --retry-delay 0.25 make").unwrap();
        assert_eq!(f.options.retry_delay_ms, 250);
        assert_eq!(f.args(), "--retries 2 --retry-delay 0.25 make");
        assert_eq!(run(&f.args()).unwrap(), f);
        let whole = run("--retries 1 --retry-delay 3 make").unwrap();
        assert_eq!(
            whole.canonical(),
            "RUN\0timeout=600\0retries=1\0retry_delay=3\0stdout_arg=\0make"
        );
        for bad in ["-1", "nan", "inf", "86401", "1e9", "abc"] {
            let e = run(&format!("--retries 1 --retry-delay {bad} make")).unwrap_err();
            assert!(
                e.contains("is not a number of seconds from 0 to 86400"),
                "{bad}: {e}"
            );
        }
        assert_ne!(t.sha1(), plain.sha1());
        assert_ne!(t.sha1(), run("--retries 2 make").unwrap().sha1());
        // A task without retries keeps the SHA1 it had before they existed.
        assert_eq!(plain.canonical(), "RUN\0timeout=600\0stdout_arg=\0make");
        assert_eq!(
            run("--retries 101 make").unwrap_err(),
            "RUN option --retries: '101' is not a whole number from 0 to 100"
        );
        assert_eq!(
            run("--retry-delay 3 make").unwrap_err(),
            "RUN option --retry-delay needs --retries N (how many times to retry)"
        );
        assert_eq!(
            Task::parse(Verb::Arg, "--retries 2 k v").unwrap_err(),
            "option --retries does not apply to ARG (only to RUN)"
        );
    }

    #[test]
    fn options_come_first_and_the_command_stays_verbatim() {
        let t =
            run("--skip-cache --timeout=5 --run-once --stdout-arg out  echo  'a  b' --x").unwrap();
        assert_eq!(
            t.options,
            JobOptions {
                skip_cache: true,
                run_once: true,
                timeout_secs: 5,
                ..JobOptions::default()
            }
        );
        assert_eq!(
            t.action,
            Action::Run {
                stderr_arg: None,
                command: "echo  'a  b' --x".into(),
                stdout_arg: Some("out".into()),
                guard: None,
            }
        );
        let t = run("--timeout 7 -- --not-an-option").unwrap();
        assert_eq!(t.options.timeout_secs, 7);
        assert_eq!(
            t.action,
            Action::Run {
                stderr_arg: None,
                command: "--not-an-option".into(),
                stdout_arg: None,
                guard: None,
            }
        );
        // Round trip through the normalized form.
        assert_eq!(run(&t.args()).unwrap().sha1(), t.sha1());
    }

    #[test]
    fn bad_jobs_are_refused() {
        assert_eq!(run("   ").unwrap_err(), "RUN needs a command to run");
        assert!(run("--timeout").unwrap_err().contains("needs a number"));
        assert!(run("--timeout soon x").unwrap_err().contains("'soon'"));
        assert!(run("--timeout 0 x").is_err());
        assert!(run("--frobnicate x")
            .unwrap_err()
            .contains("unknown option --frobnicate for RUN"));
        assert!(run("--stdout-arg 9x echo")
            .unwrap_err()
            .contains("not a valid name"));
        let e = Task::parse(Verb::Arg, "--stdout-arg x k v").unwrap_err();
        assert_eq!(
            e,
            "option --stdout-arg does not apply to ARG (only to RUN, WORKDIR, CONTAINER_IMAGE and POD)"
        );
        assert_eq!(
            Task::parse(Verb::Arg, "onlykey").unwrap_err(),
            "ARG needs KEY VALUE"
        );
        assert!(Task::parse(Verb::Env, "BAD-NAME v")
            .unwrap_err()
            .contains("not a valid name"));
        assert_eq!(
            Task::parse(Verb::Workdir, "--skip-cache").unwrap_err(),
            "WORKDIR needs a path"
        );
    }

    #[test]
    fn add_sources_and_destination() {
        let t = Task::parse(
            Verb::Copy,
            "--chown=centos:centos /home/c/.ssh/* '/srv/my dir/{{ app }}/' ",
        )
        .unwrap();
        let Action::Add(add) = &t.action else {
            panic!("not ADD")
        };
        let Add {
            chown,
            sources,
            dest,
            files,
            ..
        } = &**add;
        assert_eq!(chown.as_deref(), Some("centos:centos"));
        assert_eq!(sources, &vec!["/home/c/.ssh/*".to_string()]);
        assert_eq!(dest, "/srv/my dir/{{ app }}/");
        assert!(files.is_empty());
        assert_eq!(t.verb(), Verb::Add);
        let t = Task::parse(Verb::Add, "a b dest/{{ x | default('d') }}/").unwrap();
        let Action::Add(add) = &t.action else {
            panic!("not ADD")
        };
        let (sources, dest) = (&add.sources, &add.dest);
        assert_eq!(sources.len(), 2);
        assert_eq!(dest, "dest/{{ x | default('d') }}/");
        assert_eq!(
            Task::parse(Verb::Add, "only").unwrap_err(),
            "ADD needs at least one SRC and a DEST"
        );
        assert!(Task::parse(Verb::Add, "--chown a:b:c x y")
            .unwrap_err()
            .contains("USER[:GROUP]"));
        assert!(Task::parse(Verb::Add, "x 'y")
            .unwrap_err()
            .contains("unclosed"));
        assert!(Task::parse(Verb::Run, "--chown a x")
            .unwrap_err()
            .contains("only to WORKDIR, ADD and COPY"));
    }

    #[test]
    fn arg_env_and_workdir() {
        let t = Task::parse(Verb::Arg, "db_password  s3cret with spaces").unwrap();
        assert_eq!(
            t.action,
            Action::Arg {
                key: "db_password".into(),
                value: "s3cret with spaces".into()
            }
        );
        let t = Task::parse(Verb::Env, "--skip-cache LANG C.UTF-8").unwrap();
        assert_eq!(
            t.action,
            Action::Env {
                key: "LANG".into(),
                value: "C.UTF-8".into()
            }
        );
        let t = Task::parse(Verb::Workdir, "/srv/{{ app }}/data").unwrap();
        assert_eq!(
            t.action,
            Action::Workdir {
                stdout_arg: None,
                path: "/srv/{{ app }}/data".into(),
                chown: None,
                mode: None,
            }
        );
    }

    #[test]
    fn sha1_covers_what_runs_not_how_it_is_scheduled() {
        let a = run("echo hi").unwrap();
        assert_eq!(
            a.sha1(),
            run("--skip-cache --run-once echo hi ").unwrap().sha1()
        );
        assert_ne!(a.sha1(), run("echo ho").unwrap().sha1());
        assert_ne!(a.sha1(), run("--timeout 5 echo hi").unwrap().sha1());
        assert_ne!(a.sha1(), run("--stdout-arg x echo hi").unwrap().sha1());
        assert_ne!(
            a.sha1(),
            Task::parse(Verb::Workdir, "echo hi").unwrap().sha1()
        );
        assert_eq!(
            a.sha1(),
            hex_sha1(b"RUN\0timeout=600\0stdout_arg=\0echo hi")
        );
        assert_eq!(a.sha1().len(), 40);
    }
}
