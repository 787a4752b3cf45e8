//! The user CLI (`exec`, `manage`): one blocking connection to the server's
//! control socket, requests out, responses (and, with `--wait`, pushed
//! progress) in, printed for operators or as JSON.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

mod show;

use show::*;

use serde::Serialize;

use crate::cli::follow::Follow;
use crate::cli::progress::{shorten, Progress};
use crate::cli::{ExecArgs, Format, ManageAction, ManageArgs, OrchestrateArgs};
use crate::config::Config;
use crate::dsl::Task;
use crate::error::{Error, Result, EXIT_OK};
use crate::support::clock::{format_secs, format_utc};
use crate::wire::{
    self, FrameBuf, JobDetail, JobState, JobView, KeyView, NodeView, PartView, Plan, PlannedJob,
    Request, Response, RunDetail, RunView,
};
use uuid::Uuid;

/// A connection to the server.
struct Conn {
    stream: UnixStream,
    inbuf: FrameBuf,
}

impl Conn {
    fn open(path: &Path) -> Result<Conn> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => Error::Config(permission_denied(path)),
            _ => Error::Unreachable {
                path: path.to_owned(),
                source: e,
            },
        })?;
        Ok(Conn {
            stream,
            inbuf: FrameBuf::new(wire::MAX_RESPONSE),
        })
    }

    fn send(&mut self, req: &Request) -> Result<()> {
        self.stream
            .write_all(&wire::encode_control(req))
            .map_err(|e| Error::Protocol(format!("cannot send the request to the server: {e}")))
    }

    fn recv(&mut self) -> Result<Response> {
        loop {
            if let Some(resp) = self.recv_tick()? {
                return Ok(resp);
            }
        }
    }

    /// The next response, or `None` when the stream's read timeout passed
    /// first (the caller's chance to redraw a live status).
    fn recv_tick(&mut self) -> Result<Option<Response>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.inbuf.next_message::<Response>() {
                Ok(Some(Response::Replica {
                    this,
                    leader,
                    behind,
                })) => {
                    // Said, not printed with the answer: the answer's
                    // format (JSON) stays what scripts read.
                    eprintln!(
                        "director: answered by {this}, a standby, from its copy of the state ({behind} log entries behind the active server{})",
                        leader.map(|l| format!(", {l}")).unwrap_or_default()
                    );
                    // The answer may be in the buffer already.
                    continue;
                }
                Ok(Some(resp)) => return Ok(Some(resp)),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::Protocol(format!(
                        "bad response from the server: {e}"
                    )))
                }
            }
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(Error::Protocol(
                        "the server closed the connection before answering".into(),
                    ))
                }
                Ok(n) => self.inbuf.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => {
                    return Err(Error::Protocol(format!(
                        "lost the connection to the server: {e}"
                    )))
                }
            }
        }
    }

    /// One request, one answer; a refusal becomes an error.
    fn call(&mut self, req: &Request) -> Result<Response> {
        self.send(req)?;
        match self.recv()? {
            Response::Rejected(why) => Err(Error::Rejected(why)),
            resp => Ok(resp),
        }
    }
}

/// Why we may not use the control socket, in words an operator can act on.
fn permission_denied(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return format!(
            "permission denied on the control socket {}: run as root, or as a member of the server's --socket-group",
            path.display()
        );
    };
    let mode = meta.mode() & 0o777;
    let group =
        crate::support::ids::group_name(meta.gid()).unwrap_or_else(|| meta.gid().to_string());
    if mode & 0o060 == 0o060 {
        format!(
            "permission denied on the control socket {} (mode {mode:04o}, group '{group}'): run as root or as a member of group '{group}'",
            path.display()
        )
    } else {
        format!(
            "permission denied on the control socket {} (mode {mode:04o}): only its owner may use it; run as root, or start the server with --socket-group GROUP to let a group in",
            path.display()
        )
    }
}

/// A lost connection while waiting does not stop the work: say so.
fn still_going(e: Error, what: &str) -> Error {
    match e {
        Error::Protocol(why) => Error::Protocol(format!("{why} ({what} may still be running)")),
        e => e,
    }
}

/// The server said it is stopping while we waited (exit 3, like a lost
/// connection).
fn stopping(what: &str) -> Error {
    Error::Protocol(format!(
        "the server is stopping; {what} is kept and goes on when it is back (look at it with `director manage --job-info`)"
    ))
}

fn out_err(e: io::Error) -> Error {
    Error::io("cannot write to stdout", e)
}

fn unexpected(resp: &Response) -> Error {
    Error::Protocol(format!("unexpected response from the server: {resp:?}"))
}

/// `director exec`: submit one job, optionally waiting for every node.
pub fn exec(cfg: &Config, args: ExecArgs) -> Result<i32> {
    let mut task = Task::parse(args.verb, &args.args).map_err(Error::Rejected)?;
    task.options.check = args.check;
    task.options.diff = args.diff;
    crate::sources::resolve(&mut task).map_err(Error::Rejected)?;
    let req = Request::Submit {
        task,
        targets: args.targets,
        exclude: args.exclude,
        wait: args.wait,
        queue_offline: args.queue_offline,
        follow: args.follow,
    };
    check_size(&req)?;
    let mut conn = Conn::open(&cfg.socket_path)?;
    let submitted = match conn.call(&req)? {
        Response::Submitted(s) => s,
        other => return Err(unexpected(&other)),
    };
    let mut out = io::stdout().lock();
    if args.json {
        return json_events(
            &mut conn,
            &mut out,
            Response::Submitted(submitted),
            args.wait,
        );
    }
    writeln!(out, "job {}", submitted.job_id).map_err(out_err)?;
    writeln!(out, "task sha1 {}", submitted.task_sha1).map_err(out_err)?;
    writeln!(out, "targets {}", submitted.targets.join(", ")).map_err(out_err)?;
    write_offline(&mut out, &submitted.offline)?;
    write_reconnecting(&mut out, &submitted.reconnecting)?;
    out.flush().map_err(out_err)?;
    if !args.wait {
        return Ok(EXIT_OK);
    }
    let live = args
        .follow
        .then(|| Follow::new(&submitted.targets, is_tty()));
    follow_job(&mut conn, &mut out, submitted.job_id, live)
}

/// The parts whose output the server did not send this CLI, which read
/// too slowly.
fn write_withheld(out: &mut impl Write, parts: u64, jobs: &[Uuid]) -> io::Result<()> {
    let ids: Vec<String> = jobs.iter().map(short_id).collect();
    writeln!(
        out,
        "note: the output of {} was not shown here, as this CLI read too slowly (their results were); see `director manage --job-info ID` for {}: {}",
        crate::dsl::count(parts as usize, "part"),
        if jobs.len() == 1 { "job" } else { "jobs" },
        ids.join(", ")
    )
}

/// Known nodes that "every node" left out, being offline: said, so that
/// nobody takes their silence for success.
fn write_offline(out: &mut impl Write, offline: &[String]) -> Result<()> {
    if offline.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "not targeted: {} offline ({}); --target names one to queue for it",
        crate::dsl::count(offline.len(), "known node"),
        crate::targets::known_list(offline.iter().map(String::as_str))
    )
    .map_err(out_err)
}

/// Targets the server expects back after its restart: said at once, with
/// how long their jobs wait for them, so that a `--wait` that seems to
/// hang is explained (they hold it up until they are back, or until that
/// long has passed and their jobs end unreachable).
fn write_reconnecting(out: &mut impl Write, awaited: &[wire::Awaited]) -> Result<()> {
    if awaited.is_empty() {
        return Ok(());
    }
    let longest = awaited.iter().map(|a| a.within_ms).max().unwrap_or(0);
    writeln!(
        out,
        "waiting up to {} s for {} to reconnect after the server restarted ({}): their jobs start when they do, or end unreachable",
        longest.div_ceil(1000),
        crate::dsl::count(awaited.len(), "node"),
        crate::targets::known_list(awaited.iter().map(|a| a.node.as_str()))
    )
    .map_err(out_err)
}

/// Live output for a run: every node of its plan, aligned.
fn follow_plan(plan: &Plan) -> Follow {
    let mut nodes: Vec<String> = plan.jobs.iter().flat_map(|j| j.targets.clone()).collect();
    nodes.sort();
    nodes.dedup();
    Follow::new(&nodes, is_tty())
}

fn is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

/// Print each node's result as it comes, then the job's summary: the
/// exit status of `--wait`.
fn follow_job(
    conn: &mut Conn,
    out: &mut impl Write,
    job_id: Uuid,
    mut live: Option<Follow>,
) -> Result<i32> {
    crate::cli::interrupt::on_ctrl_c_say_the_work_goes_on("job", &job_id.to_string());
    loop {
        let resp = conn
            .recv()
            .map_err(|e| still_going(e, &format!("job {job_id}")))?;
        match resp {
            Response::Output {
                node,
                stream,
                data,
                dropped,
                ..
            } => {
                if let Some(f) = &mut live {
                    out.write_all(f.output(&node, stream, &data, dropped).as_bytes())
                        .map_err(out_err)?;
                    out.flush().map_err(out_err)?;
                }
            }
            Response::NodeDone(mut part) => {
                if let Some(f) = &mut live {
                    out.write_all(f.finish(&part.node).as_bytes())
                        .map_err(out_err)?;
                    // Shown as it came.
                    part.stdout.clear();
                    part.stderr.clear();
                    part.stdout_dropped = 0;
                    part.stderr_dropped = 0;
                }
                write_part(out, &part).map_err(out_err)?;
                out.flush().map_err(out_err)?;
            }
            Response::Withheld { parts, jobs } => {
                write_withheld(out, parts, &jobs).map_err(out_err)?;
            }
            Response::JobDone(job) => {
                writeln!(out, "job {}: {}", job.id, states_summary(&job)).map_err(out_err)?;
                return Ok(crate::error::exit_for(job.states.keys().copied()));
            }
            Response::Stopping => return Err(stopping(&format!("job {job_id}"))),
            other => return Err(unexpected(&other)),
        }
    }
}

/// `--format json`: the submission's answer, then (`wait`) every event
/// as it comes, a JSON object a line (`{"event": ..., "data": ...}`, as
/// the API's event stream names them), ending with the job's or the run's
/// end; the exit status is `--wait`'s.
fn json_events(conn: &mut Conn, out: &mut impl Write, first: Response, wait: bool) -> Result<i32> {
    let say = |out: &mut dyn Write, resp: &Response| -> Result<()> {
        if let Some(line) = wire::json::line(resp) {
            out.write_all(line.as_bytes()).map_err(out_err)?;
            out.flush().map_err(out_err)?;
        }
        Ok(())
    };
    say(out, &first)?;
    if !wait {
        return Ok(EXIT_OK);
    }
    let what = match &first {
        Response::Submitted(s) => format!("job {}", s.job_id),
        Response::Orchestrated(p) => format!("run {}", p.parent_id.unwrap_or_default()),
        _ => "the work".to_owned(),
    };
    loop {
        let resp = conn.recv().map_err(|e| still_going(e, &what))?;
        say(out, &resp)?;
        match resp {
            Response::JobDone(job) => {
                return Ok(crate::error::exit_for(job.states.keys().copied()))
            }
            Response::ParentDone { jobs, .. } => {
                return Ok(crate::error::exit_for(
                    jobs.iter().flat_map(|j| j.states.keys().copied()),
                ))
            }
            Response::Stopping => return Err(stopping(&what)),
            Response::Rejected(why) => return Err(Error::Rejected(why)),
            _ => {}
        }
    }
}

/// Refuse locally what the server would refuse for its size.
fn check_size(req: &Request) -> Result<()> {
    let size = wire::encode_control(req).len();
    if size > wire::MAX_REQUEST {
        return Err(Error::Rejected(format!(
            "the submission is {size} bytes; the server accepts at most {} bytes",
            wire::MAX_REQUEST
        )));
    }
    Ok(())
}

/// `director orchestrate`: check every file, then submit them as one run.
pub fn orchestrate(cfg: &Config, args: OrchestrateArgs) -> Result<i32> {
    let blocks = crate::orchestrate::load(&args.files, &args.selection).map_err(Error::Rejected)?;
    let req = Request::Orchestrate {
        blocks: blocks.clone(),
        exclude: args.exclude.clone(),
        rolling: args.rolling,
        queue_offline: args.queue_offline,
        wait: args.wait,
        dry_run: args.dry_run,
        follow: args.follow,
    };
    check_size(&req)?;
    let mut out = io::stdout().lock();
    if args.json {
        let mut conn = Conn::open(&cfg.socket_path)?;
        let plan = match conn.call(&req)? {
            resp @ Response::Orchestrated(_) => resp,
            other => return Err(unexpected(&other)),
        };
        return json_events(&mut conn, &mut out, plan, args.wait && !args.dry_run);
    }
    if args.dry_run {
        // The server resolves and checks the targets; without it, the files
        // are still checked and the plan shown as written.
        let plan = match Conn::open(&cfg.socket_path) {
            Ok(mut conn) => match conn.call(&req)? {
                Response::Orchestrated(plan) => plan,
                other => return Err(unexpected(&other)),
            },
            Err(e @ Error::Unreachable { .. }) => {
                let _ = writeln!(io::stderr(), "director: note: targets not checked: {e}");
                local_plan(&blocks)
            }
            Err(e) => return Err(e),
        };
        out.write_all(plan_table(&plan, &blocks).as_bytes())
            .map_err(out_err)?;
        out.write_all(batches_text(&plan).as_bytes())
            .map_err(out_err)?;
        write_offline(&mut out, &plan.offline)?;
        write_reconnecting(&mut out, &plan.reconnecting)?;
        return Ok(EXIT_OK);
    }
    let mut conn = Conn::open(&cfg.socket_path)?;
    let plan = match conn.call(&req)? {
        Response::Orchestrated(plan) => plan,
        other => return Err(unexpected(&other)),
    };
    let parent = plan
        .parent_id
        .ok_or_else(|| Error::Protocol("the server returned no parent id".into()))?;
    writeln!(
        out,
        "parent {parent}: {} queued",
        crate::dsl::count(plan.jobs.len(), "job")
    )
    .map_err(out_err)?;
    out.write_all(plan_table(&plan, &blocks).as_bytes())
        .map_err(out_err)?;
    out.write_all(batches_text(&plan).as_bytes())
        .map_err(out_err)?;
    write_offline(&mut out, &plan.offline)?;
    write_reconnecting(&mut out, &plan.reconnecting)?;
    out.flush().map_err(out_err)?;
    if !args.wait {
        return Ok(EXIT_OK);
    }
    let live = args.follow.then(|| follow_plan(&plan));
    let shown = Shown {
        verbose: args.verbose,
        changes: args.selection.diff,
    };
    follow_run(&mut conn, &mut out, &plan, parent, live, shown)
}

/// What the recap shows besides failures.
#[derive(Clone, Copy, Default)]
struct Shown {
    /// `-v`: what the steps that succeeded printed.
    verbose: bool,
    /// `--diff`: what the steps that changed something printed.
    changes: bool,
}

/// Live progress on a terminal (a line per finished job otherwise), then
/// the recap: the exit status of `orchestrate --wait`.
fn follow_run(
    conn: &mut Conn,
    out: &mut impl Write,
    plan: &Plan,
    parent: Uuid,
    mut live: Option<Follow>,
    shown: Shown,
) -> Result<i32> {
    crate::cli::interrupt::on_ctrl_c_say_the_work_goes_on("run", &parent.to_string());
    let started = std::time::Instant::now();
    let tty = is_tty();
    let mut progress = Progress::new(plan);
    progress.verbose = shown.verbose;
    progress.show_changes = shown.changes;
    if tty {
        // Wake up every second to keep the elapsed time moving.
        let _ = conn
            .stream
            .set_read_timeout(Some(std::time::Duration::from_secs(1)));
    }
    loop {
        let resp = conn
            .recv_tick()
            .map_err(|e| still_going(e, &format!("run {parent}")))?;
        let Some(resp) = resp else {
            write!(out, "\r\x1b[K{}", progress.status(started.elapsed())).map_err(out_err)?;
            out.flush().map_err(out_err)?;
            continue;
        };
        match resp {
            Response::Output {
                node,
                stream,
                data,
                dropped,
                ..
            } => {
                let Some(f) = &mut live else { continue };
                let lines = f.output(&node, stream, &data, dropped);
                if lines.is_empty() {
                    continue;
                }
                if tty {
                    // Above the status line, which comes back under them.
                    write!(out, "\r\x1b[K{lines}{}", progress.status(started.elapsed()))
                        .map_err(out_err)?;
                } else {
                    out.write_all(lines.as_bytes()).map_err(out_err)?;
                }
                out.flush().map_err(out_err)?;
            }
            Response::NodeDone(part) => {
                if let Some(f) = &mut live {
                    let rest = f.finish(&part.node);
                    if !rest.is_empty() {
                        let clear = if tty { "\r\x1b[K" } else { "" };
                        write!(out, "{clear}{rest}").map_err(out_err)?;
                    }
                }
                let finished = progress.record(part);
                if tty {
                    write!(out, "\r\x1b[K{}", progress.status(started.elapsed()))
                        .map_err(out_err)?;
                } else if let Some(i) = finished {
                    writeln!(out, "{}", progress.job_line(i)).map_err(out_err)?;
                }
                out.flush().map_err(out_err)?;
            }
            Response::Withheld { parts, jobs } => {
                if tty {
                    writeln!(out, "\r\x1b[K").map_err(out_err)?;
                }
                write_withheld(out, parts, &jobs).map_err(out_err)?;
            }
            Response::ParentDone { .. } => {
                if tty {
                    writeln!(out, "\r\x1b[K{}", progress.status(started.elapsed()))
                        .map_err(out_err)?;
                }
                out.write_all(progress.recap(started.elapsed()).as_bytes())
                    .map_err(out_err)?;
                return Ok(progress.exit_code());
            }
            Response::Stopping => {
                if tty {
                    writeln!(out).map_err(out_err)?;
                }
                return Err(stopping(&format!("run {parent}")));
            }
            other => return Err(unexpected(&other)),
        }
    }
}

/// `manage --clear-cache PATTERN`: a job that empties the nodes' caches,
/// waited for like `exec --wait`.
fn clear_cache(conn: &mut Conn, patterns: &str) -> Result<i32> {
    let task = Task::parse(crate::dsl::Verb::ClearCache, "").map_err(Error::Rejected)?;
    let req = Request::Submit {
        task,
        targets: crate::targets::split(&[patterns.to_owned()], "--clear-cache")
            .map_err(Error::Usage)?,
        exclude: Vec::new(),
        wait: true,
        queue_offline: false,
        follow: false,
    };
    let submitted = match conn.call(&req)? {
        Response::Submitted(s) => s,
        other => return Err(unexpected(&other)),
    };
    let mut out = io::stdout().lock();
    writeln!(out, "job {}", submitted.job_id).map_err(out_err)?;
    writeln!(out, "targets {}", submitted.targets.join(", ")).map_err(out_err)?;
    follow_job(conn, &mut out, submitted.job_id, None)
}

/// `manage --watch ID`: follow a job or run already going, as `--wait`
/// would have; its exit status too.
fn watch(conn: &mut Conn, id: Uuid, run: bool, follow: bool) -> Result<i32> {
    let mut out = io::stdout().lock();
    if !run {
        writeln!(out, "job {id}").map_err(out_err)?;
        let live = match follow {
            true => match conn.call(&Request::JobInfo {
                id,
                show_values: false,
            })? {
                Response::Job(d) => {
                    let nodes: Vec<String> = d.nodes.into_iter().map(|p| p.node).collect();
                    Some(Follow::new(&nodes, is_tty()))
                }
                other => return Err(unexpected(&other)),
            },
            false => None,
        };
        conn.send(&Request::Watch { id, run, follow })?;
        return follow_job(conn, &mut out, id, live);
    }
    let detail = match conn.call(&Request::RunInfo { parent: id })? {
        Response::Run(run) => run,
        other => return Err(unexpected(&other)),
    };
    let plan = run_plan(&detail);
    writeln!(
        out,
        "run {id}: {}",
        crate::dsl::count(plan.jobs.len(), "job")
    )
    .map_err(out_err)?;
    out.flush().map_err(out_err)?;
    let live = follow.then(|| follow_plan(&plan));
    conn.send(&Request::Watch { id, run, follow })?;
    follow_run(conn, &mut out, &plan, id, live, Shown::default())
}

/// The plan as the files say, for a dry run without a server.
fn local_plan(blocks: &[wire::Block]) -> Plan {
    let jobs = blocks
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            b.tasks.iter().enumerate().map(move |(j, t)| PlannedJob {
                job_id: None,
                block: i,
                targets: match b.job_targets(j) {
                    [] => vec!["(every node)".into()],
                    t => t.to_vec(),
                },
                verb: t.verb(),
                args: t.args_masked(),
                task_sha1: t.sha1(),
                name: t.options.name().map(str::to_owned),
                block_name: b.name.clone(),
            })
        })
        .collect();
    Plan {
        parent_id: None,
        jobs,
        batches: Vec::new(),
        offline: Vec::new(),
        reconnecting: Vec::new(),
    }
}

/// A rolling run's batches, a line each.
fn batches_text(plan: &Plan) -> String {
    let n = plan.batches.len();
    plan.batches
        .iter()
        .enumerate()
        .map(|(i, b)| format!("batch {}/{n}: {}\n", i + 1, b.join(", ")))
        .collect()
}

/// The plan's jobs, a row each; `blocks` (as the files say, in the plan's
/// order) give the block and job names.
fn plan_table(plan: &Plan, blocks: &[wire::Block]) -> String {
    let job_names: Vec<Option<&str>> = blocks
        .iter()
        .flat_map(|b| b.tasks.iter().map(|t| t.options.name()))
        .collect();
    let named = job_names.len() == plan.jobs.len() && job_names.iter().any(Option::is_some);
    let rows: Vec<Vec<String>> = plan
        .jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let block = match blocks.get(j.block).and_then(|b| b.name.as_deref()) {
                Some(name) => format!("{} {}", j.block + 1, shorten(name, 24)),
                None => (j.block + 1).to_string(),
            };
            let mut row = vec![block];
            if named {
                row.push(shorten(job_names[i].unwrap_or("-"), 24));
            }
            row.extend([
                j.targets.join(","),
                j.verb.to_string(),
                shorten(&j.args, 48),
                j.task_sha1.clone(),
            ]);
            row.extend(j.job_id.map(|id| id.to_string()));
            row
        })
        .collect();
    let mut headers = vec!["BLOCK"];
    if named {
        headers.push("NAME");
    }
    headers.extend(["TARGETS", "VERB", "ARGS", "TASK SHA1"]);
    if plan.parent_id.is_some() {
        headers.push("JOB ID");
    }
    table(&headers, &rows)
}

/// `director manage`.
pub fn manage(cfg: &Config, args: ManageArgs) -> Result<i32> {
    let mut conn = Conn::open(&cfg.socket_path)?;
    let req = match &args.action {
        ManageAction::ListNodes => Request::ListNodes,
        ManageAction::NodeInfo(name, show_values) => Request::NodeInfo {
            name: name.clone(),
            show_values: *show_values,
        },
        ManageAction::ListJobs(show_values) => Request::ListJobs {
            show_values: *show_values,
        },
        ManageAction::ListRuns => Request::ListRuns,
        ManageAction::JobInfo(id, _) | ManageAction::Watch(id) => {
            Request::Resolve { id: id.clone() }
        }
        ManageAction::ClearCache(patterns) => return clear_cache(&mut conn, patterns),
        ManageAction::PurgeJobs => Request::PurgeJobs,
        ManageAction::PurgeNodes => Request::PurgeNodes,
        ManageAction::ShowKey => Request::ShowKey,
        ManageAction::ListKeys => Request::ListKeys,
        ManageAction::AcceptKey(name) => Request::AcceptKey { name: name.clone() },
        ManageAction::AcceptAll => Request::AcceptAll,
        ManageAction::RejectKey(name) => Request::RejectKey { name: name.clone() },
        ManageAction::DeleteKey(name) => Request::DeleteKey { name: name.clone() },
        ManageAction::CreateToken(name, role, targets) => Request::CreateToken {
            name: name.clone(),
            role: *role,
            targets: targets.clone(),
        },
        ManageAction::ListTokens => Request::ListTokens,
        ManageAction::Cluster => Request::Cluster,
        ManageAction::RevokeToken(name) => Request::RevokeToken { name: name.clone() },
    };
    let resp = conn.call(&req)?;
    let mut out = io::stdout().lock();
    let resp = match (&args.action, resp) {
        (ManageAction::Watch(_), Response::Resolved { id, run }) => {
            drop(out);
            return watch(&mut conn, id, run, args.follow);
        }
        (ManageAction::JobInfo(_, show_values), Response::Resolved { id, run: false }) => conn
            .call(&Request::JobInfo {
                id,
                show_values: *show_values,
            })?,
        (ManageAction::JobInfo(..), Response::Resolved { id, run: true }) => {
            let run = run_with_failures(&mut conn, id)?;
            let text = match args.format {
                Format::Json => json(&[&run])?,
                Format::Table => run_text(&run),
            };
            out.write_all(text.as_bytes()).map_err(out_err)?;
            return Ok(EXIT_OK);
        }
        (ManageAction::NodeInfo(..), Response::Nodes(nodes)) => {
            let Some(node) = nodes.first() else {
                return Err(Error::Rejected("the server sent no node".into()));
            };
            let text = match args.format {
                Format::Json => json(&[node])?,
                Format::Table => node_text(node),
            };
            out.write_all(text.as_bytes()).map_err(out_err)?;
            return Ok(0);
        }
        (_, resp) => resp,
    };
    let text = match (resp, args.format) {
        (Response::Nodes(nodes), Format::Json) => json(&nodes)?,
        (Response::Nodes(nodes), Format::Table) => nodes_table(&nodes),
        (Response::Jobs(jobs), Format::Json) => json(&jobs)?,
        (Response::Jobs(jobs), Format::Table) => jobs_table(&jobs),
        (Response::Runs(runs), Format::Json) => json(&runs)?,
        (Response::Runs(runs), Format::Table) => runs_table(&runs),
        (Response::Job(detail), Format::Json) => json(&[detail])?,
        (Response::Job(detail), Format::Table) => job_text(&detail),
        (Response::Purged { purged, kept }, Format::Json) => json(&[Purged { purged, kept }])?,
        (Response::Purged { purged, kept }, Format::Table) => {
            let jobs = args.action == ManageAction::PurgeJobs;
            let what = match (jobs, purged == 1) {
                (true, true) => "job",
                (true, false) => "jobs",
                (false, true) => "node",
                (false, false) => "nodes",
            };
            let why = if jobs {
                "still running"
            } else {
                "(online, or with work queued)"
            };
            format!("purged {purged} {what}; kept {kept} {why}\n")
        }
        (Response::ServerKey(key), Format::Json) => json(&[key])?,
        // Just the key, so `--server-key "$(director manage --show-key)"`
        // works; the rest goes to stderr.
        (Response::ServerKey(key), Format::Table) => {
            let _ = writeln!(
                io::stderr(),
                "fingerprint {} ({})",
                key.fingerprint,
                key.source
            );
            format!("{}\n", key.public_key)
        }
        (Response::Keys(keys), Format::Json) => json(&keys)?,
        (Response::Keys(keys), Format::Table) => keys_table(&keys),
        (Response::KeysChanged(keys), Format::Json) => json(&keys)?,
        (Response::KeysChanged(keys), Format::Table) => {
            let verb = match args.action {
                ManageAction::RejectKey(_) => "rejected",
                ManageAction::DeleteKey(_) => "deleted",
                _ => "accepted",
            };
            if keys.is_empty() {
                "no keys are pending\n".to_owned()
            } else {
                keys.iter()
                    .map(|k| format!("{verb} {} (key {})\n", k.name, k.fingerprint))
                    .collect()
            }
        }
        (Response::TokenCreated { token, secret }, Format::Json) => {
            json(&[serde_json::json!({ "token": token, "secret": secret })])?
        }
        // The secret alone on the last line, so `| tail -1` takes it.
        (Response::TokenCreated { token, secret }, Format::Table) => format!(
            "created API token '{}' (role {}{}); it is shown this once, the server keeps only its hash:\n{secret}\n",
            token.name,
            token.role.name(),
            token
                .targets
                .as_deref()
                .map(|t| format!(", targets {t}"))
                .unwrap_or_default()
        ),
        (Response::Tokens(tokens), Format::Json) => json(&tokens)?,
        (Response::Tokens(tokens), Format::Table) => match args.action {
            ManageAction::RevokeToken(_) => tokens
                .iter()
                .map(|t| format!("revoked API token '{}'\n", t.name))
                .collect(),
            _ => tokens_table(&tokens),
        },
        (Response::Cluster(view), Format::Json) => json(&[&view])?,
        (Response::Cluster(view), Format::Table) => cluster_text(&view),
        (other, _) => return Err(unexpected(&other)),
    };
    out.write_all(text.as_bytes()).map_err(out_err)?;
    Ok(EXIT_OK)
}
#[cfg(test)]
mod tests {
    #[test]
    fn a_runs_length_reads_as_people_say_it() {
        let t = super::took;
        assert_eq!(
            [t(840), t(9_960), t(42_000), t(725_000), t(12_000_000)],
            ["0.8s", "10.0s", "42s", "12m05s", "3h20m"]
        );
    }

    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONG"],
            &[
                vec!["xxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONG\nxxx  1\ny    22\n");
    }

    /// A run with many kinds of parts: whatever is cut, never a failure.
    #[test]
    fn a_failure_always_shows_in_a_states_column() {
        let states: std::collections::BTreeMap<JobState, u32> = [
            (JobState::Queued, 40),
            (JobState::Running, 6),
            (JobState::Succeeded, 1200),
            (JobState::Cached, 300),
            (JobState::Failed, 1),
            (JobState::Lost, 2),
            (JobState::Skipped, 9),
        ]
        .into();
        assert_eq!(
            states_brief(&states),
            "1 failed, 9 skipped, 2 lost, 40 queued, 6 running, 1200 succeeded, 300 cached"
        );
        let ok: std::collections::BTreeMap<JobState, u32> = [(JobState::Succeeded, 3)].into();
        assert_eq!(states_brief(&ok), "3 succeeded");
    }
}
