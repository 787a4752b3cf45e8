//! The command line: raw arguments to a typed `Invocation`. Global options are
//! accepted before or after the mode; mode options are checked against the
//! mode once it is known (it may come from `--mode`, `DIRECTOR_MODE` or the
//! config file). Parsing is pure apart from reading the config file, so it is
//! tested from a `Vec`.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::{self, Config, Kind, Origin, Raw, RawOptions, RawValue, Scope, OPTIONS};
use crate::dsl::Verb;
use crate::error::{Error, Result};
use crate::orchestrate::Selection;
use crate::targets;

/// What the user asked for.
#[derive(Debug)]
pub enum Command {
    Server,
    Client,
    Exec(ExecArgs),
    Orchestrate(OrchestrateArgs),
    Manage(ManageArgs),
    Help(String),
    Version,
}

/// `director exec`.
#[derive(Debug, PartialEq)]
pub struct ExecArgs {
    pub verb: Verb,
    /// Target patterns (`targets` module); empty: every node.
    pub targets: Vec<String>,
    /// Patterns of nodes left out.
    pub exclude: Vec<String>,
    /// Offline targets: wait for them (up to the job's timeout).
    pub queue_offline: bool,
    pub wait: bool,
    /// With `wait`: show each node's output as it comes.
    pub follow: bool,
    pub args: String,
    /// `--check`: change nothing, say what would change.
    pub check: bool,
    /// `--diff`: show how text files change (or would).
    pub diff: bool,
}

/// `director orchestrate`.
#[derive(Debug, PartialEq)]
pub struct OrchestrateArgs {
    pub files: Vec<PathBuf>,
    pub selection: Selection,
    /// Patterns of nodes left out of every block.
    pub exclude: Vec<String>,
    /// `--batch` and `--max-fail`.
    pub rolling: Option<crate::wire::Rolling>,
    /// Offline targets: wait for them (up to each job's timeout).
    pub queue_offline: bool,
    pub wait: bool,
    /// With `wait`: show each node's output as it comes.
    pub follow: bool,
    /// With `wait`: the recap also shows what succeeded steps printed.
    pub verbose: bool,
    pub dry_run: bool,
}

/// `director manage`.
#[derive(Debug, PartialEq)]
pub struct ManageArgs {
    pub action: ManageAction,
    pub format: Format,
    /// With `--watch`: show the output as it comes, from now on.
    pub follow: bool,
}

/// The one thing a `manage` call does.
#[derive(Debug, PartialEq, Clone)]
pub enum ManageAction {
    ListNodes,
    /// Every job; whether to show ARG and ENV values.
    ListJobs(bool),
    /// A job or run id, or a prefix of one; whether to show ARG and ENV
    /// values.
    JobInfo(String, bool),
    ListRuns,
    /// Follow a job or run already going (an id or a prefix).
    Watch(String),
    /// Empty the caches of the nodes these patterns match.
    ClearCache(String),
    /// One node's facts and labels.
    /// The node's name, and whether to show its ARG values.
    NodeInfo(String, bool),
    PurgeJobs,
    PurgeNodes,
    ShowKey,
    ListKeys,
    AcceptKey(String),
    AcceptAll,
    RejectKey(String),
    DeleteKey(String),
}

/// How `manage` prints.
#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Format {
    Table,
    Json,
}

/// A parsed command line with its validated configuration.
#[derive(Debug)]
pub struct Invocation {
    pub command: Command,
    pub config: Config,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Server,
    Client,
    Exec,
    Orchestrate,
    Manage,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "server" => Some(Mode::Server),
            "client" => Some(Mode::Client),
            "exec" => Some(Mode::Exec),
            "orchestrate" => Some(Mode::Orchestrate),
            "manage" => Some(Mode::Manage),
            _ => None,
        }
    }
}

/// Mode-specific arguments, collected in any order and checked at the end.
#[derive(Default)]
struct ModeArgs {
    verb: Option<String>,
    targets: Vec<String>,
    exclude: Vec<String>,
    batch: Option<crate::wire::Amount>,
    queue_offline: bool,
    max_fail: Option<crate::wire::Amount>,
    wait: bool,
    follow: bool,
    verbose: bool,
    positional: Vec<String>,
    actions: Vec<ManageAction>,
    format: Option<Format>,
    show_values: bool,
    /// Job options given as `exec` switches, put in front of the job
    /// string (`exec --verb RUN --timeout 30 'make'`).
    job_options: Vec<String>,
    /// Each mode option seen and the mode it belongs to, checked once the
    /// mode is known.
    used: Vec<(&'static str, &'static [Mode])>,
    restrict: Vec<String>,
    ignore_cache: bool,
    dry_run: bool,
    check: bool,
    diff: bool,
}

const SUBMIT: &[Mode] = &[Mode::Exec, Mode::Orchestrate];
const FOLLOW: &[Mode] = &[Mode::Exec, Mode::Orchestrate, Mode::Manage];
const EXEC: &[Mode] = &[Mode::Exec];
const ORCHESTRATE: &[Mode] = &[Mode::Orchestrate];
const MANAGE: &[Mode] = &[Mode::Manage];

impl ModeArgs {
    fn saw(&mut self, flag: &'static str, modes: &'static [Mode]) {
        self.used.push((flag, modes));
    }
}

/// Parse the process's arguments and environment.
pub fn parse_env() -> Result<Invocation> {
    parse(std::env::args_os().skip(1).collect(), |k| {
        std::env::var(k).ok()
    })
}

/// Parse `args` (without the program name) with `env` as the environment.
pub fn parse(args: Vec<OsString>, env: impl Fn(&str) -> Option<String>) -> Result<Invocation> {
    if args.first().and_then(|a| a.to_str()) == Some("completions") {
        let shell = match &args[1..] {
            [shell] => shell.to_string_lossy().into_owned(),
            _ => {
                return Err(Error::Usage(
                    "completions needs one shell: bash, zsh or fish".into(),
                ))
            }
        };
        let script = crate::completions::script(&shell).map_err(Error::Usage)?;
        return Ok(Invocation {
            command: Command::Help(script),
            config: Config::from_raw(&RawOptions::new(), config::hostname)?,
        });
    }
    let mut parser = lexopt::Parser::from_args(args);
    let mut switches = RawOptions::new();
    let mut positional_mode: Option<Mode> = None;
    let mut m = ModeArgs::default();
    let mut help = false;

    loop {
        // A job string may begin with its own options, as in the original
        // Director: `exec --verb RUN '--skip-cache echo hi'`. A word with
        // whitespace in it is never one of our options, so take it whole.
        if let Some(job) = next_job_string(&mut parser) {
            m.positional.push(string(job)?);
            continue;
        }
        let Some(arg) = parser.next().map_err(usage)? else {
            break;
        };
        match arg {
            Short('h') | Long("help") => help = true,
            Short('V') | Long("version") => {
                return Ok(Invocation {
                    command: Command::Version,
                    config: Config::from_raw(&RawOptions::new(), config::hostname)?,
                })
            }
            // Repeatable: each adds to the labels given so far.
            Long("label") => {
                let item = value(&mut parser)?;
                let joined = match switches.get("labels").map(|r| &r.value) {
                    Some(RawValue::Text(before)) => format!("{before},{item}"),
                    _ => item,
                };
                switches.insert(
                    "labels",
                    Raw {
                        value: RawValue::Text(joined),
                        origin: Origin::Switch,
                    },
                );
            }
            Long(name) if config::find(name).is_some() => {
                let spec = config::find(name).expect("checked above");
                let value = if spec.kind == Kind::Flag {
                    match parser.optional_value() {
                        Some(v) => RawValue::Text(string(v)?),
                        None => RawValue::Bool(true),
                    }
                } else {
                    RawValue::Text(value(&mut parser)?)
                };
                switches.insert(
                    spec.name,
                    Raw {
                        value,
                        origin: Origin::Switch,
                    },
                );
            }
            Long("verb") => {
                m.saw("--verb", EXEC);
                m.verb = Some(value(&mut parser)?);
            }
            // Job options outside the quoted job string mean the same as
            // inside it: the verb checks them with the rest.
            Long(flag @ ("skip-cache" | "run-once" | "blueprint" | "daemon-reload")) => {
                let flag = job_flag(flag);
                m.saw(flag, EXEC);
                m.job_options.push(flag.to_owned());
            }
            Long(
                opt @ ("timeout" | "stdout-arg" | "chown" | "chmod" | "retries" | "retry-delay"
                | "creates" | "unless" | "state"),
            ) => {
                let opt = job_flag(opt);
                m.saw(opt, EXEC);
                let v = value(&mut parser)?;
                m.job_options.push(format!("{opt}={v}"));
            }
            Long("target") => {
                m.saw("--target", SUBMIT);
                m.targets.push(value(&mut parser)?);
            }
            Long("queue-offline") => {
                m.saw("--queue-offline", SUBMIT);
                m.queue_offline = true;
            }
            Long("batch") => {
                m.saw("--batch", ORCHESTRATE);
                let v = value(&mut parser)?;
                m.batch =
                    Some(crate::wire::Amount::parse_batch(&v, "--batch").map_err(Error::Usage)?);
            }
            Long("max-fail") => {
                m.saw("--max-fail", ORCHESTRATE);
                let v = value(&mut parser)?;
                m.max_fail =
                    Some(crate::wire::Amount::parse(&v, "--max-fail").map_err(Error::Usage)?);
            }
            Long("exclude") => {
                m.saw("--exclude", SUBMIT);
                m.exclude.push(value(&mut parser)?);
            }
            Long("wait") => {
                m.saw("--wait", SUBMIT);
                m.wait = true;
            }
            Short('f') | Long("follow") => {
                m.saw("--follow", FOLLOW);
                m.follow = true;
            }
            Short('v') | Long("verbose") => {
                m.saw("--verbose", ORCHESTRATE);
                m.verbose = true;
            }
            Long("restrict") => {
                m.saw("--restrict", ORCHESTRATE);
                m.restrict.push(value(&mut parser)?);
            }
            Long("ignore-cache") => {
                m.saw("--ignore-cache", ORCHESTRATE);
                m.ignore_cache = true;
            }
            Long("dry-run") => {
                m.saw("--dry-run", ORCHESTRATE);
                m.dry_run = true;
            }
            Long("check") => {
                m.saw("--check", SUBMIT);
                m.check = true;
            }
            Long("diff") => {
                m.saw("--diff", SUBMIT);
                m.diff = true;
            }
            Long("list-nodes") => manage(&mut m, "--list-nodes", ManageAction::ListNodes),
            Long("list-jobs") => manage(&mut m, "--list-jobs", ManageAction::ListJobs(false)),
            Long("purge-jobs") => manage(&mut m, "--purge-jobs", ManageAction::PurgeJobs),
            Long("purge-nodes") => manage(&mut m, "--purge-nodes", ManageAction::PurgeNodes),
            Long("show-key") => manage(&mut m, "--show-key", ManageAction::ShowKey),
            Long("list-keys") => manage(&mut m, "--list-keys", ManageAction::ListKeys),
            Long("accept-all") => manage(&mut m, "--accept-all", ManageAction::AcceptAll),
            Long("accept-key") => {
                let name = value(&mut parser)?;
                manage(&mut m, "--accept-key", ManageAction::AcceptKey(name));
            }
            Long("reject-key") => {
                let name = value(&mut parser)?;
                manage(&mut m, "--reject-key", ManageAction::RejectKey(name));
            }
            Long("delete-key") => {
                let name = value(&mut parser)?;
                manage(&mut m, "--delete-key", ManageAction::DeleteKey(name));
            }
            Long("node-info") => {
                let name = value(&mut parser)?;
                manage(&mut m, "--node-info", ManageAction::NodeInfo(name, false));
            }
            Long(flag @ ("job-info" | "watch")) => {
                let flag = if flag == "watch" {
                    "--watch"
                } else {
                    "--job-info"
                };
                let id = value(&mut parser)?;
                let t = id.trim();
                if t.len() < crate::wire::MIN_ID_PREFIX
                    || !t.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                {
                    return Err(Error::Usage(format!(
                        "{flag}: '{}' is not a job or run id (give the id, or its first {} characters or more)",
                        crate::dsl::one_line(&id),
                        crate::wire::MIN_ID_PREFIX
                    )));
                }
                let action = if flag == "--watch" {
                    ManageAction::Watch(t.to_owned())
                } else {
                    ManageAction::JobInfo(t.to_owned(), false)
                };
                manage(&mut m, flag, action);
            }
            Long("list-runs") => manage(&mut m, "--list-runs", ManageAction::ListRuns),
            Long("clear-cache") => {
                let patterns = value(&mut parser)?;
                manage(&mut m, "--clear-cache", ManageAction::ClearCache(patterns));
            }
            Long("show-values") => {
                m.saw("--show-values", MANAGE);
                m.show_values = true;
            }
            Long("format") => {
                m.saw("--format", MANAGE);
                let f = value(&mut parser)?;
                m.format = Some(match f.as_str() {
                    "table" => Format::Table,
                    "json" => Format::Json,
                    _ => {
                        return Err(Error::Usage(format!(
                            "--format: expected table or json, got '{f}'"
                        )))
                    }
                });
            }
            Value(v) => {
                let v = string(v)?;
                match Mode::parse(&v) {
                    // The first word names the mode, unless --mode already did.
                    Some(mode)
                        if positional_mode.is_none()
                            && m.positional.is_empty()
                            && !switches.contains_key("mode") =>
                    {
                        positional_mode = Some(mode)
                    }
                    _ => m.positional.push(v),
                }
            }
            Long(name) => {
                let given = format!("--{name}");
                let all = crate::completions::all_options();
                return Err(Error::Usage(format!(
                    "invalid option '{given}'{}",
                    crate::suggest::hint(&given, all.iter().map(String::as_str))
                )));
            }
            _ => return Err(usage(arg.unexpected())),
        }
    }

    let env_opts = config::from_env(&env);
    let file_path = switches
        .get("config_file")
        .or_else(|| env_opts.get("config_file"))
        .and_then(|r| match &r.value {
            RawValue::Text(s) => Some(PathBuf::from(s)),
            _ => None,
        });
    let file_opts = match &file_path {
        Some(path) => config::from_file(path)?,
        None => RawOptions::new(),
    };
    let merged = config::merge([switches, env_opts, file_opts]);
    let mode = match positional_mode {
        Some(mode) => Some(mode),
        None => match merged.get("mode").map(|r| &r.value) {
            Some(RawValue::Text(s)) => Some(Mode::parse(s).ok_or_else(|| {
                Error::Usage(format!(
                    "unknown mode '{s}': expected server, client, exec, orchestrate or manage"
                ))
            })?),
            Some(_) => {
                return Err(Error::Usage(
                    "mode: expected server, client, exec, orchestrate or manage".into(),
                ))
            }
            None => None,
        },
    };
    if help {
        return Ok(Invocation {
            command: Command::Help(help_text(mode)),
            config: Config::from_raw(&RawOptions::new(), config::hostname)?,
        });
    }
    let config = Config::from_raw(&merged, config::hostname)?;
    let command = match mode {
        None => {
            return Err(Error::Usage(match m.positional.first() {
                Some(word) => format!(
                    "unknown mode '{}': expected server, client, exec, orchestrate or manage",
                    crate::dsl::one_line(word)
                ),
                None => {
                    "no mode given: expected server, client, exec, orchestrate or manage".into()
                }
            }))
        }
        Some(mode) => command(mode, m)?,
    };
    Ok(Invocation { command, config })
}

/// The next raw argument if it is a job string starting with `-`.
fn next_job_string(parser: &mut lexopt::Parser) -> Option<OsString> {
    let mut raw = parser.raw_args().ok()?;
    let next = raw.peek()?.to_str()?;
    (next.starts_with('-') && next.contains(char::is_whitespace))
        .then(|| raw.next())
        .flatten()
}

/// Keep the first of each repeated name, in order.
fn dedup(names: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

fn manage(m: &mut ModeArgs, flag: &'static str, action: ManageAction) {
    m.saw(flag, MANAGE);
    m.actions.push(action);
}

fn command(mode: Mode, m: ModeArgs) -> Result<Command> {
    if let Some((flag, want)) = m.used.iter().find(|(_, want)| !want.contains(&mode)) {
        return Err(Error::Usage(format!(
            "{flag} only applies to {}",
            want.iter()
                .map(|m| format!("`director {}`", mode_name(*m)))
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    match mode {
        Mode::Server | Mode::Client => {
            if let Some(p) = m.positional.first() {
                return Err(Error::Usage(format!("unexpected argument '{p}'")));
            }
            Ok(if mode == Mode::Server {
                Command::Server
            } else {
                Command::Client
            })
        }
        Mode::Exec => {
            let verb = m
                .verb
                .ok_or_else(|| Error::Usage("exec needs --verb (RUN)".into()))?;
            let verb = verb.parse::<Verb>().map_err(Error::Usage)?;
            if m.positional.is_empty() {
                return Err(Error::Usage(format!(
                    "exec --verb {verb} needs the job's arguments, e.g. 'echo hello'"
                )));
            }
            if m.follow && !m.wait {
                return Err(Error::Usage(
                    "--follow needs --wait: it shows output while the CLI waits".into(),
                ));
            }
            let mut args = m.job_options;
            args.extend(m.positional);
            Ok(Command::Exec(ExecArgs {
                verb,
                targets: dedup(targets::split(&m.targets, "--target").map_err(Error::Usage)?),
                exclude: dedup(targets::split(&m.exclude, "--exclude").map_err(Error::Usage)?),
                queue_offline: m.queue_offline,
                wait: m.wait,
                follow: m.follow,
                args: args.join(" "),
                check: m.check,
                diff: m.diff,
            }))
        }
        Mode::Orchestrate => {
            if m.positional.is_empty() {
                return Err(Error::Usage(
                    "orchestrate needs at least one orchestration FILE".into(),
                ));
            }
            let rolling = match (m.batch, m.max_fail) {
                (Some(batch), max_fail) => Some(crate::wire::Rolling { batch, max_fail }),
                (None, Some(_)) => {
                    return Err(Error::Usage(
                        "--max-fail needs --batch: without batches every node starts at once"
                            .into(),
                    ))
                }
                (None, None) => None,
            };
            if (m.follow || m.verbose) && !m.wait {
                let flag = if m.follow { "--follow" } else { "--verbose" };
                return Err(Error::Usage(format!(
                    "{flag} needs --wait: it shows output while the CLI waits"
                )));
            }
            Ok(Command::Orchestrate(OrchestrateArgs {
                files: m.positional.iter().map(PathBuf::from).collect(),
                selection: Selection {
                    targets: dedup(targets::split(&m.targets, "--target").map_err(Error::Usage)?),
                    restrict: m.restrict,
                    ignore_cache: m.ignore_cache,
                    check: m.check,
                    diff: m.diff,
                },
                exclude: dedup(targets::split(&m.exclude, "--exclude").map_err(Error::Usage)?),
                rolling,
                queue_offline: m.queue_offline,
                wait: m.wait,
                follow: m.follow,
                verbose: m.verbose,
                dry_run: m.dry_run,
            }))
        }
        Mode::Manage => {
            if let Some(p) = m.positional.first() {
                return Err(Error::Usage(format!("unexpected argument '{p}'")));
            }
            let mut actions = m.actions;
            let mut action = match actions.len() {
                1 => actions.remove(0),
                0 => {
                    return Err(Error::Usage(format!(
                        "manage needs one of {MANAGE_ACTIONS}"
                    )))
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "manage takes only one of {MANAGE_ACTIONS}"
                    )))
                }
            };
            if m.show_values {
                let (ManageAction::NodeInfo(_, show)
                | ManageAction::JobInfo(_, show)
                | ManageAction::ListJobs(show)) = &mut action
                else {
                    return Err(Error::Usage(
                        "--show-values goes with --node-info NAME, --list-jobs or --job-info ID (it shows ARG and ENV values, which may be secrets)"
                            .into(),
                    ));
                };
                *show = true;
            }
            if m.follow && !matches!(action, ManageAction::Watch(_)) {
                return Err(Error::Usage(
                    "--follow goes with --watch ID in manage (or with exec/orchestrate --wait)"
                        .into(),
                ));
            }
            Ok(Command::Manage(ManageArgs {
                action,
                format: m.format.unwrap_or(Format::Table),
                follow: m.follow,
            }))
        }
    }
}

const MANAGE_ACTIONS: &str = "--list-nodes, --node-info NAME, --list-jobs, --list-runs, --job-info ID, --watch ID, --clear-cache PATTERN, --purge-jobs, --purge-nodes, --show-key, --list-keys, --accept-key NAME, --accept-all, --reject-key NAME, --delete-key NAME";

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Server => "server",
        Mode::Client => "client",
        Mode::Exec => "exec",
        Mode::Orchestrate => "orchestrate",
        Mode::Manage => "manage",
    }
}

/// A job option's switch, for messages.
fn job_flag(name: &str) -> &'static str {
    match name {
        "skip-cache" => "--skip-cache",
        "run-once" => "--run-once",
        "timeout" => "--timeout",
        "stdout-arg" => "--stdout-arg",
        "chown" => "--chown",
        "retries" => "--retries",
        "chmod" => "--chmod",
        "creates" => "--creates",
        "unless" => "--unless",
        "state" => "--state",
        "blueprint" => "--blueprint",
        "daemon-reload" => "--daemon-reload",
        _ => "--retry-delay",
    }
}

/// The value of the option just parsed, as UTF-8.
fn value(parser: &mut lexopt::Parser) -> Result<String> {
    string(parser.value().map_err(usage)?)
}

fn usage(e: lexopt::Error) -> Error {
    Error::Usage(e.to_string())
}

fn string(v: OsString) -> Result<String> {
    v.into_string().map_err(|v| {
        Error::Usage(format!(
            "argument {} is not valid UTF-8",
            v.to_string_lossy()
        ))
    })
}

fn option_lines(scopes: &[Scope]) -> String {
    let mut out = String::new();
    for o in OPTIONS.iter().filter(|o| scopes.contains(&o.scope)) {
        let flag = o.name.replace('_', "-");
        let value = match o.kind {
            Kind::Flag => String::new(),
            Kind::Port => " PORT".into(),
            Kind::Seconds => " SECONDS".into(),
            Kind::Count => " N".into(),
            Kind::Labels => " KEY=VALUE,...".into(),
            Kind::Text if o.name == "curve" => " on|off".into(),
            Kind::Text => format!(
                " {}",
                o.name
                    .rsplit('_')
                    .next()
                    .unwrap_or(o.name)
                    .to_ascii_uppercase()
            ),
        };
        let default = o
            .default
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  --{flag}{value}\n      {}{default}\n      env {}\n",
            o.help,
            config::env_name(o.name)
        ));
    }
    out
}

const USAGE: &str = "\
Usage:
  director [OPTIONS] server                        run the server daemon
  director [OPTIONS] client                        run the client daemon on a node
  director [OPTIONS] exec --verb VERB [--target PATTERN]... [--exclude PATTERN]... [--check] [--diff] [--wait [--follow]] 'ARGS'
  director [OPTIONS] orchestrate FILE... [--target PATTERN]... [--exclude PATTERN]... [--batch N|N%] [--max-fail N|N%] [--restrict SHA1]... [--ignore-cache] [--check] [--diff] [--wait] [--dry-run]
  director [OPTIONS] manage (--list-nodes | --node-info NAME [--show-values] | --list-jobs [--show-values] | --list-runs | --job-info ID [--show-values] | --watch ID | --clear-cache PATTERN | --purge-jobs | --purge-nodes) [--format table|json]
  director [OPTIONS] manage (--show-key | --list-keys | --accept-key NAME | --accept-all | --reject-key NAME | --delete-key NAME)
  director completions bash|zsh|fish               print a shell completion script
";

const JOB_STRING: &str = "\
The job string starts with options, then the verb's arguments (with exec, the options
may also be given as switches: exec --verb RUN --timeout 30 'make'):
  --skip-cache         run even if the node cached a success for this step
  --run-once           run on exactly one of the targets
  --timeout SECONDS    kill the command's process group after this long (default 600)
  --retries N          RUN only: run a failed command again, up to N more times (0-100)
  --retry-delay SECS   RUN only: wait this long before each new attempt (default 5)
  --stdout-arg NAME    RUN only: store the command's stdout as the ARG NAME
  --creates PATH       RUN only: not run (unchanged) when PATH exists on the node
  --unless COMMAND     RUN only: not run (unchanged) when COMMAND exits 0 (quote it)
  --chown USER[:GROUP] ADD/COPY/WORKDIR: owner on the node (names or ids)
  --chmod MODE         ADD/COPY/WORKDIR: mode on the node, in octal (0644)
  --blueprint          ADD/COPY only: each file is a Jinja template rendered on the node
Verbs (each reports changed or unchanged; files, packages and units are checked on
every run, whatever the node's cache says):
  RUN COMMAND          run COMMAND with /bin/sh -c (a Jinja template over the ARGs)
  ARG KEY VALUE        store a template variable in the node's cache
  ENV KEY VALUE        set an environment variable for later RUNs on the node
  WORKDIR PATH         create PATH and its parents (a template)
  ADD SRC... DEST      send files or globs from this machine; DEST is a directory if it
                       ends in / or several files go, else the file's path (a template)
  COPY SRC... DEST     the same as ADD
  QUERY KEY            collect the ARG KEY from every target; each gets the map as
                       {{ query.KEY[\"NODE\"] }} once every target has answered
  PACKAGE NAME...      packages present (default), --state latest or --state absent, with
                       the node's apt, dnf, yum, zypper or apk; NAME may be a package
                       file's absolute path on the node. DNF is the same (--latest, --absent)
  SERVICE UNIT...      systemd units --state started (default), stopped, restarted or
                       reloaded (or --restarted, --stopped, --reloaded), with --enable,
                       --disable, --mask or --unmask, after --daemon-reload if given
  WAIT --seconds N | --url http://... | --cmd COMMAND
                       wait, or until the URL answers 2xx/3xx or COMMAND exits 0, tried
                       --retry N more times (default 30) --retry-wait SECS apart (default 1)
  ECHO TEXT            print TEXT (a template): it is the job's output
  CACHEEVICT PART      forget the node's args, envs, query, jobs (steps remembered) or all
  CACHEFILE PATH       load a YAML or JSON file of key: value into the node's ARGs: an
                       absolute (or templated) PATH is read on the node, a relative one here (beside the
                       orchestration file that names it)
  FACTER               run facter --json (--custom-dir DIR, --external-dir DIR) and keep its
                       facts as the ARG facter ({{ facter.kernel }}); fails where facter is
                       not installed
  CONTAINER_IMAGE      podman images on --socket-path (default /var/run/podman/podman.sock):
                       --pull|--push|--inspect IMAGE..., --tag IMAGE NEW, --list;
                       --no-tlsverify; --stdout-arg NAME keeps what --inspect/--list print
  POD                  podman pods: --start|--stop|--rm [--force]|--kill [--kill-signal S]|
                       --inspect NAME, --play FILE, --exec-run CONTAINER --command 'CMD'
                       [--env K=V,...] [--privileged]
  QUEUESENTINEL        accepted for Directord's files; does nothing
";

const EXEC_HELP: &str = "\
director exec — submit one job

Usage: director [OPTIONS] exec --verb VERB [--target PATTERN]... [--exclude PATTERN]...
                                [--wait [--follow]] 'ARGS'

  --verb VERB      RUN, ARG, ENV, WORKDIR, ADD, COPY, QUERY, PACKAGE (DNF), SERVICE, WAIT,
                   ECHO, CACHEEVICT, CACHEFILE, FACTER, CONTAINER_IMAGE, POD or
                   QUEUESENTINEL
  --target PATTERN the nodes to run on (default: every connected node): a node name, a
                   glob on names (web*, db-[12]), or KEY=VALUE on a label or fact
                   (role=web, os_id=debian; VALUE may be a glob); repeat, or separate
                   with commas, for a union. A pattern that matches no node is an error
  --exclude PATTERN  leave out the nodes it matches; repeatable
  --queue-offline  a target that is offline gets the job when it is back, up to the job's
                   --timeout, instead of it ending unreachable at once
  --check          change nothing on any node: each says what would change, or that
                   it is as asked (a RUN would run; its guards are evaluated)
  --diff           show a unified diff of each text file that changes (or would)
  --wait           stay connected, print each node's result as it arrives, and exit
                   0 only if every node succeeded (with --check: 5 if something would
                   change)
  -f, --follow     with --wait: show each node's output lines as they are printed

Prints the job id and its task SHA1. Options the CLI uses: --socket-path, --config-file.
";

const ORCHESTRATE_HELP: &str = "\
director orchestrate — submit orchestration files

Usage: director [OPTIONS] orchestrate FILE... [--target PATTERN]... [--exclude PATTERN]...
                                     [--batch N|N%] [--max-fail N|N%] [--restrict SHA1]...
                                     [--ignore-cache] [--wait [--follow] [-v]] [--dry-run]

A file is a YAML list of blocks: {targets: [PATTERN...] (optional: every node), jobs: [{VERB: ARGS}...]},
and one block may have batch: N|N% (and max_fail: N|N%) to roll from there on, as --batch does.
A job may have a name (name: NAME) and be a handler (onchanges: [NAME...]): it runs on a node
only where one of the named earlier jobs changed something, and is skipped (no change) elsewhere.
Directord's fields work too: a block's name, assign (replaces targets) and async (true: the
consecutive async blocks run side by side on each node, each in order); a job's assign (its
own targets) and vars (a map of options: stdout_arg: x is --stdout-arg x). --target wins over
both assigns. Relative ADD, --blueprint and CACHEFILE paths are found beside the file.
A pattern is a node name, a glob on names (web*), or KEY=VALUE on a label or fact (role=web).
Every file is checked before anything is submitted. On each node the jobs run one at a
time in file order (but async blocks); after a failure there, the rest of the run is skipped
on that node.

  --target PATTERN replace every block's targets; repeat for several
  --exclude PATTERN  leave the nodes it matches out of every block; repeatable
  --queue-offline  offline targets get their jobs when they are back, up to each job's
                   --timeout, instead of them ending unreachable at once
  --batch N|N%     run on N nodes (or N% of the run's nodes) at a time, in name order;
                   the next batch starts once every node of the last has finished
  --max-fail N|N%  with --batch: start no new batch once more than N nodes have failed;
                   the nodes never started are reported skipped
  --restrict SHA1  submit only the jobs with this task SHA1 (or prefix); repeatable
  --ignore-cache   run every job even where the node cached a success
  --check          change nothing on any node: each job says what would change
  --diff           show a unified diff of each text file that changes (or would)
  --wait           show progress, then a recap per node and the output of each failure
  -f, --follow     with --wait: show each node's output lines as they are printed
  -v, --verbose    with --wait: the recap also shows what the steps that succeeded printed
  --dry-run        check everything and print the jobs that would be submitted
";

const EXIT_CODES: &str = "\
Exit status: 0 success; 1 remote work failed (a node failed or was lost);
2 bad usage, bad input or a local error; 3 the server cannot be reached;
4 (--wait) some targets were offline and nothing failed; 5 (--check --wait) something
would change (drift), nothing failed and every target answered.
";

/// Every mode's help, for checks that the others cover the same switches.
#[cfg(test)]
pub fn full_help() -> String {
    [
        None,
        Some(Mode::Server),
        Some(Mode::Client),
        Some(Mode::Exec),
        Some(Mode::Orchestrate),
        Some(Mode::Manage),
    ]
    .into_iter()
    .map(help_text)
    .collect()
}

fn help_text(mode: Option<Mode>) -> String {
    let precedence = "Every option is also read from DIRECTOR_<NAME> and from the config file;\nprecedence: switch > environment > config file > default.\n";
    match mode {
        None => format!(
            "director {} — deployment and operations for the data-center life cycle\n\n{USAGE}\nGlobal options (before or after the mode):\n{}\nServer options:\n{}\nClient options:\n{}\n  -h, --help      this help (director MODE --help for one mode)\n  -V, --version   print the version\n\n{JOB_STRING}\n{precedence}{EXIT_CODES}",
            env!("CARGO_PKG_VERSION"),
            option_lines(&[Scope::Global]),
            option_lines(&[Scope::Server]),
            option_lines(&[Scope::Client]),
        ),
        Some(Mode::Server) => format!(
            "director server — the server daemon: holds the cluster's state, hands out jobs\n\nUsage: director [OPTIONS] server\n\nOptions:\n{}\n{precedence}SIGTERM or SIGINT stops it cleanly and removes its socket file.\n",
            option_lines(&[Scope::Global, Scope::Server])
        ),
        Some(Mode::Client) => format!(
            "director client — the node agent: runs the jobs the server sends\n\nUsage: director [OPTIONS] client\n\nOptions:\n{}\n{precedence}SIGTERM or SIGINT stops it cleanly, killing a running command's process group.\n",
            option_lines(&[Scope::Global, Scope::Client])
        ),
        Some(Mode::Exec) => format!("{EXEC_HELP}\n{JOB_STRING}\n{EXIT_CODES}"),
        Some(Mode::Orchestrate) => format!("{ORCHESTRATE_HELP}\n{JOB_STRING}\n{EXIT_CODES}"),
        Some(Mode::Manage) => format!(
            "director manage — inspect and change the cluster's state\n\nUsage: director [OPTIONS] manage ACTION [--format table|json]\n\n  --list-nodes     nodes with their last heartbeat, expiry and labels\n  --node-info NAME one node: its labels, facts (OS, kernel, CPUs, memory, addresses) and\n                   cache (ARG keys, ENV keys, QUERY maps, steps remembered)\n  --show-values    with --node-info, --list-jobs or --job-info: ARG and ENV values too\n                   (they may be secrets: shown as <hidden> otherwise)\n  --list-jobs      jobs with their run, verb, arguments, node counts per state and time\n  --list-runs      orchestration runs: jobs, nodes, parts per state, times\n  --job-info ID    everything about one job, per node: state, exit code, output, times;\n                   or a run: its jobs, the recap per node, each failure's output.\n                   ID may be any unique prefix of 6 characters or more\n  --watch ID       follow a job or run already going, as --wait does (same exit status);\n                   with -f/--follow, also the nodes' output from now on\n  --purge-jobs     forget every finished job\n  --purge-nodes    forget every offline node with no work queued\n  --clear-cache PATTERN  empty the cache (ARGs, ENVs, QUERY maps, steps) of the nodes\n                   PATTERN matches (a name, glob or KEY=VALUE; commas for several);\n                   their files stay as they are. Waits for each node's answer\n\nNode keys (CURVE):\n  --show-key          print the server's public key (Z85), for clients' --server-key\n  --list-keys         every node key: name, state (pending, accepted, rejected), fingerprint, first and last seen\n  --accept-key NAME   let the node with this name in (pending or rejected key)\n  --accept-all        accept every pending key\n  --reject-key NAME   refuse this node's key at every handshake; its unfinished jobs are lost\n  --delete-key NAME   forget the key: the name is free, and a node that comes back enrolls anew\n\n  --format FORMAT  table (aligned columns, the default) or json (a list of objects)\n\n{EXIT_CODES}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_options_outside_the_job_string_join_it_and_a_mistyped_mode_is_named() {
        let inv = parse_v(&[
            "exec",
            "--verb",
            "RUN",
            "--skip-cache",
            "--timeout",
            "30",
            "echo hi",
        ])
        .unwrap();
        let Command::Exec(e) = inv.command else {
            panic!("not exec")
        };
        assert_eq!(e.args, "--skip-cache --timeout=30 echo hi");
        let t = crate::dsl::Task::parse(e.verb, &e.args).unwrap();
        assert_eq!(t.args(), "--skip-cache --timeout 30 echo hi");
        let err = parse_v(&["orchestrate", "f.yml", "--retries", "2"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("--retries only applies to `director exec`"),
            "{err}"
        );
        let err = parse_v(&["servr"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown mode 'servr': expected server"),
            "{err}"
        );
    }

    fn parse_v(args: &[&str]) -> Result<Invocation> {
        parse_with_env(args, &[])
    }

    fn parse_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut all = vec!["--identity", "test-node"];
        all.extend_from_slice(args);
        parse(all.iter().map(OsString::from).collect(), move |k| {
            env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn modes_by_word_switch_and_env() {
        assert!(matches!(
            parse_v(&["server"]).unwrap().command,
            Command::Server
        ));
        assert!(matches!(
            parse_v(&["--mode", "client"]).unwrap().command,
            Command::Client
        ));
        assert!(matches!(
            parse_with_env(&[], &[("DIRECTOR_MODE", "server")])
                .unwrap()
                .command,
            Command::Server
        ));
        // The word beats the environment, as a switch does.
        assert!(matches!(
            parse_with_env(&["client"], &[("DIRECTOR_MODE", "server")])
                .unwrap()
                .command,
            Command::Client
        ));
        assert!(parse_v(&[]).unwrap_err().to_string().contains("no mode"));
        assert!(parse_v(&["--mode", "bogus"])
            .unwrap_err()
            .to_string()
            .contains("unknown mode 'bogus'"));
    }

    #[test]
    fn global_options_before_or_after_mode() {
        let a = parse_v(&["--job-port", "7000", "server", "--heartbeat-interval", "2"]).unwrap();
        assert_eq!(a.config.job_port, 7000);
        assert_eq!(a.config.heartbeat_ivl.as_secs(), 2);
        let b = parse_v(&["client", "--debug", "--server-address", "10.0.0.1"]).unwrap();
        assert!(b.config.debug);
        assert_eq!(b.config.server_address, "10.0.0.1");
        assert_eq!(b.config.identity, "test-node");
    }

    #[test]
    fn exec_args() {
        let inv = parse_v(&[
            "exec",
            "--verb",
            "run",
            "--target",
            "a",
            "--target",
            "b,c",
            "--target",
            "a",
            "--wait",
            "--exclude",
            "role=db",
            "--label",
            "x=1",
            "echo hi",
        ])
        .unwrap();
        // `--label` is repeatable and adds up.
        assert_eq!(inv.config.labels.get("x").map(String::as_str), Some("1"));
        let Command::Exec(e) = inv.command else {
            panic!("not exec")
        };
        assert_eq!(
            e,
            ExecArgs {
                verb: Verb::Run,
                targets: vec!["a".into(), "b".into(), "c".into()],
                exclude: vec!["role=db".into()],
                queue_offline: false,
                wait: true,
                follow: false,
                args: "echo hi".into(),
                check: false,
                diff: false,
            }
        );
        assert!(parse_v(&["exec", "echo"])
            .unwrap_err()
            .to_string()
            .contains("--verb"));
        assert!(parse_v(&["exec", "--verb", "RUN"])
            .unwrap_err()
            .to_string()
            .contains("needs the job's arguments"));
        assert!(parse_v(&["exec", "--verb", "FLY", "x"])
            .unwrap_err()
            .to_string()
            .contains("unknown verb 'FLY'"));
        // A job string may start with its own options.
        let inv = parse_v(&[
            "exec",
            "--verb",
            "RUN",
            "--skip-cache --timeout=5 echo hi",
            "--wait",
        ])
        .unwrap();
        let Command::Exec(e) = inv.command else {
            panic!("not exec")
        };
        assert_eq!(e.args, "--skip-cache --timeout=5 echo hi");
        assert!(e.wait);
        // With --mode given, a mode word is just an argument.
        let inv = parse_v(&["--mode", "exec", "--verb", "RUN", "client"]).unwrap();
        let Command::Exec(e) = inv.command else {
            panic!("not exec")
        };
        assert_eq!(e.args, "client");
    }

    #[test]
    fn manage_args() {
        let inv = parse_v(&["manage", "--list-nodes", "--format", "json"]).unwrap();
        let Command::Manage(m) = inv.command else {
            panic!("not manage")
        };
        assert_eq!(
            m,
            ManageArgs {
                action: ManageAction::ListNodes,
                format: Format::Json,
                follow: false,
            }
        );
        assert!(parse_v(&["manage"]).is_err());
        assert!(parse_v(&["manage", "--list-nodes", "--list-jobs"]).is_err());
        assert!(parse_v(&["manage", "--job-info", "nope"])
            .unwrap_err()
            .to_string()
            .contains("'nope' is not a job or run id"));
        assert!(parse_v(&["manage", "--list-nodes", "--format", "xml"]).is_err());
        let inv = parse_v(&["manage", "--accept-key", "web1"]).unwrap();
        let Command::Manage(m) = inv.command else {
            panic!("not manage")
        };
        assert_eq!(m.action, ManageAction::AcceptKey("web1".into()));
        for (flag, action) in [
            ("--show-key", ManageAction::ShowKey),
            ("--list-keys", ManageAction::ListKeys),
            ("--accept-all", ManageAction::AcceptAll),
        ] {
            let Command::Manage(m) = parse_v(&["manage", flag]).unwrap().command else {
                panic!("not manage")
            };
            assert_eq!(m.action, action);
        }
        assert!(parse_v(&["manage", "--reject-key"]).is_err());
        assert!(parse_v(&["manage", "--delete-key", "a", "--accept-all"])
            .unwrap_err()
            .to_string()
            .contains("only one of"));
        assert!(parse_v(&["exec", "--verb", "RUN", "--accept-all", "x"])
            .unwrap_err()
            .to_string()
            .contains("--accept-all only applies to `director manage`"));
    }

    #[test]
    fn mode_options_must_fit_the_mode() {
        let e = parse_v(&["server", "--wait"]).unwrap_err().to_string();
        assert!(
            e.contains("--wait only applies to `director exec` or `director orchestrate`"),
            "{e}"
        );
        let e = parse_v(&["exec", "--verb", "RUN", "--list-jobs", "x"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--list-jobs only applies to `director manage`"),
            "{e}"
        );
        assert!(parse_v(&["server", "--bogus"])
            .unwrap_err()
            .to_string()
            .contains("--bogus"));
    }

    #[test]
    fn help_mentions_every_option() {
        let Command::Help(text) = parse_v(&["--help"]).unwrap().command else {
            panic!("not help")
        };
        for o in OPTIONS {
            assert!(
                text.contains(&format!("--{}", o.name.replace('_', "-"))),
                "{}",
                o.name
            );
        }
        let Command::Help(text) = parse_v(&["exec", "--help"]).unwrap().command else {
            panic!("not help")
        };
        assert!(text.contains("--target"));
    }
}
