//! The command line: raw arguments to a typed `Invocation`. Global options are
//! accepted before or after the mode; mode options are checked against the
//! mode once it is known (it may come from `--mode`, `DIRECTOR_MODE` or the
//! config file). Parsing is pure apart from reading the config file, so it is
//! tested from a `Vec`.

use std::ffi::OsString;
use std::path::PathBuf;

pub mod completions;
pub mod follow;
mod help;
pub mod interrupt;
pub mod output;
pub mod progress;
pub mod suggest;
pub mod user;

#[cfg(test)]
pub use help::full_help;
use help::*;

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
    /// `--format json`: one JSON event per line.
    pub json: bool,
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
    /// `--format json`: one JSON event per line.
    pub json: bool,
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
    /// A new API token: its name, role and target patterns.
    CreateToken(String, crate::wire::Role, Option<String>),
    ListTokens,
    RevokeToken(String),
    /// The servers on etcd.
    Cluster,
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
    role: Option<crate::wire::Role>,
    token_targets: Option<String>,
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
const FORMAT: &[Mode] = &[Mode::Exec, Mode::Orchestrate, Mode::Manage];

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
        let script = crate::cli::completions::script(&shell).map_err(Error::Usage)?;
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
            Long("create-token") => {
                let name = value(&mut parser)?;
                // The role and targets are filled in once all flags are read.
                let action = ManageAction::CreateToken(name, crate::wire::Role::Read, None);
                manage(&mut m, "--create-token", action);
            }
            Long("list-tokens") => manage(&mut m, "--list-tokens", ManageAction::ListTokens),
            Long("cluster") => manage(&mut m, "--cluster", ManageAction::Cluster),
            Long("revoke-token") => {
                let name = value(&mut parser)?;
                manage(&mut m, "--revoke-token", ManageAction::RevokeToken(name));
            }
            Long("role") => {
                m.saw("--role", MANAGE);
                let r = value(&mut parser)?;
                m.role = Some(crate::wire::Role::parse(&r).ok_or_else(|| {
                    Error::Usage(format!("--role: expected read, run or admin, got '{r}'"))
                })?);
            }
            Long("targets") => {
                m.saw("--targets", MANAGE);
                m.token_targets = Some(value(&mut parser)?);
            }
            Long("clear-cache") => {
                let patterns = value(&mut parser)?;
                manage(&mut m, "--clear-cache", ManageAction::ClearCache(patterns));
            }
            Long("show-values") => {
                m.saw("--show-values", MANAGE);
                m.show_values = true;
            }
            Long("format") => {
                m.saw("--format", FORMAT);
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
                let all = crate::cli::completions::all_options();
                return Err(Error::Usage(format!(
                    "invalid option '{given}'{}",
                    crate::cli::suggest::hint(&given, all.iter().map(String::as_str))
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
                json: m.format == Some(Format::Json),
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
                json: m.format == Some(Format::Json),
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
            match &mut action {
                ManageAction::CreateToken(_, role, targets) => {
                    *role = m.role.ok_or_else(|| {
                        Error::Usage("--create-token NAME needs --role read, run or admin".into())
                    })?;
                    *targets = m.token_targets.clone();
                }
                _ if m.role.is_some() || m.token_targets.is_some() => {
                    return Err(Error::Usage(
                        "--role and --targets go with --create-token NAME".into(),
                    ))
                }
                _ => {}
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

const MANAGE_ACTIONS: &str = "--list-nodes, --node-info NAME, --list-jobs, --list-runs, --job-info ID, --watch ID, --clear-cache PATTERN, --purge-jobs, --purge-nodes, --show-key, --list-keys, --accept-key NAME, --accept-all, --reject-key NAME, --delete-key NAME, --create-token NAME, --list-tokens, --revoke-token NAME";

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
#[cfg(test)]
mod tests;
