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

mod parse;
mod text;

use parse::{cache_part_name, split_paths};

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
mod tests;
