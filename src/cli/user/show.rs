//! How the CLI shows what the server answers: tables, a job's and a
//! run's text, JSON.

use super::*;

#[derive(Serialize)]
pub(super) struct Purged {
    pub purged: usize,
    pub kept: usize,
}

pub(super) fn json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let mut s = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Protocol(format!("cannot encode JSON: {e}")))?;
    s.push('\n');
    Ok(s)
}

/// Columns padded to their widest cell.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(cell);
            l.extend(std::iter::repeat_n(
                ' ',
                widths[i].saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `manage --node-info`: a node's state, labels and facts, a line each.
pub(super) fn node_text(n: &NodeView) -> String {
    let mut out = format!(
        "node {} ({})\n  version: {}\n  last heartbeat: {}\n  queued: {}, in flight: {}\nlabels:\n",
        n.name,
        n.state.name(),
        n.version,
        match n.last_heartbeat_ms {
            0 => "not known here".to_owned(),
            ms => format!("{} UTC", format_utc(ms)),
        },
        n.queued,
        n.in_flight
    );
    let pairs = |out: &mut String, m: &crate::facts::Map| {
        if m.is_empty() {
            out.push_str("  (none)\n");
        }
        for (k, v) in m {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    };
    pairs(&mut out, &n.labels);
    out.push_str("facts:\n");
    pairs(&mut out, &n.facts);
    out.push_str("cache:\n");
    let Some(c) = &n.cache else {
        out.push_str("  (not reported since the server started)\n");
        return out;
    };
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_owned()
        } else {
            v.join(", ")
        }
    };
    out.push_str(&format!("  steps remembered: {}\n", c.steps));
    out.push_str(&format!("  ENV keys: {}\n", list(&c.env)));
    out.push_str(&format!("  QUERY maps: {}\n", list(&c.queries)));
    let shown = c.args.values().any(Option::is_some);
    out.push_str(if shown || c.args.is_empty() {
        "  ARGs:\n"
    } else {
        "  ARGs (values with --show-values):\n"
    });
    if c.args.is_empty() {
        out.push_str("    (none)\n");
    }
    for (k, v) in &c.args {
        match v {
            Some(v) => out.push_str(&format!("    {k}: {}\n", crate::dsl::one_line(v))),
            None => out.push_str(&format!("    {k}\n")),
        }
    }
    if c.args_more > 0 {
        out.push_str(&format!("    ... and {} more\n", c.args_more));
    }
    out
}

/// `k=v,k=v`, or `-` for none.
pub(super) fn labels_text(labels: &crate::facts::Map) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn nodes_table(nodes: &[NodeView]) -> String {
    if nodes.is_empty() {
        return "no nodes connected\n".into();
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.state.name().into(),
                n.version.clone(),
                time_or_dash(n.last_heartbeat_ms),
                time_or_dash(n.expires_ms),
                n.queued.to_string(),
                n.in_flight.to_string(),
                labels_text(&n.labels),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "VERSION",
            "LAST HEARTBEAT (UTC)",
            "EXPIRES (UTC)",
            "QUEUED",
            "IN FLIGHT",
            "LABELS",
        ],
        &rows,
    )
}

pub(super) fn tokens_table(tokens: &[crate::wire::TokenView]) -> String {
    if tokens.is_empty() {
        return "no API tokens (`director manage --create-token NAME --role read|run|admin`)\n"
            .into();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.name().to_owned(),
                t.targets.clone().unwrap_or_else(|| "-".into()),
                format_utc(t.created_ms),
                t.last_used_ms.map_or_else(|| "-".into(), format_utc),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ROLE",
            "TARGETS",
            "CREATED (UTC)",
            "LAST USED (UTC)",
        ],
        &rows,
    )
}

pub(super) fn keys_table(keys: &[KeyView]) -> String {
    if keys.is_empty() {
        return "no node keys\n".into();
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                k.state.name().to_owned(),
                k.fingerprint.clone(),
                format_utc(k.first_seen_ms),
                format_utc(k.last_seen_ms),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "FINGERPRINT",
            "FIRST SEEN (UTC)",
            "LAST SEEN (UTC)",
        ],
        &rows,
    )
}

/// `2 succeeded, 1 failed`: every state, in the order of a job's life.
pub(super) fn states_summary(job: &JobView) -> String {
    job.states
        .iter()
        .map(|(s, n)| format!("{n} {}", s.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1 failed, 2 succeeded` for a table: what went wrong first (a failure
/// is never cut away), in short words (`cached`, `skipped`,
/// `unreachable`), nothing cut.
pub(super) fn states_brief(states: &std::collections::BTreeMap<JobState, u32>) -> String {
    let bad = |s: &JobState| s.is_done() && !s.is_ok();
    let word = |s: &JobState| match s {
        JobState::Cached => "cached",
        JobState::Skipped => "skipped",
        JobState::Unreachable => "unreachable",
        JobState::NotTriggered => "no change",
        s => s.name(),
    };
    let (mut first, rest): (Vec<_>, Vec<_>) = states.iter().partition(|(s, _)| bad(s));
    first.extend(rest);
    first
        .iter()
        .map(|(s, n)| format!("{n} {}", word(s)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An id as tables show it: enough of it to be given back (`MIN_ID_PREFIX`
/// or more characters are taken wherever an id is).
pub(super) fn short_id(id: &Uuid) -> String {
    id.to_string()[..8].to_owned()
}

/// Fits 100 columns: short ids, arguments cut with `...`.
pub(super) fn jobs_table(jobs: &[JobView]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                short_id(&j.id),
                j.parent.as_ref().map_or_else(|| "-".into(), short_id),
                j.verb.to_string(),
                shorten(&j.args, 28),
                states_brief(&j.states),
                j.changed.to_string(),
                format_utc(j.submitted_ms),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "RUN",
            "VERB",
            "ARGS",
            "NODES",
            "CHANGED",
            "SUBMITTED (UTC)",
        ],
        &rows,
    )
}

pub(super) fn runs_table(runs: &[RunView]) -> String {
    if runs.is_empty() {
        return "no runs\n".into();
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                short_id(&r.parent_id),
                r.jobs.to_string(),
                r.nodes.to_string(),
                states_brief(&r.states),
                r.changed.to_string(),
                format_utc(r.submitted_ms),
                // How long, not when: it fits beside CHANGED within 100
                // columns, and the JSON has the finishing time.
                r.finished_ms.map_or_else(
                    || "going".into(),
                    |f| took(f.saturating_sub(r.submitted_ms)),
                ),
            ]
        })
        .collect();
    table(
        &[
            "RUN",
            "JOBS",
            "NODES",
            "PARTS",
            "CHANGED",
            "SUBMITTED (UTC)",
            "TOOK",
        ],
        &rows,
    )
}

/// A run's length as people read it: `0.8s`, `42s`, `12m05s`, `3h20m`.
pub(super) fn took(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=9 => format!("{:.1}s", ms as f64 / 1000.0),
        10..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// A run, with the whole parts (outputs included) of those that failed.
pub(super) fn run_with_failures(conn: &mut Conn, parent: Uuid) -> Result<RunDetail> {
    let mut run = match conn.call(&Request::RunInfo { parent })? {
        Response::Run(run) => run,
        other => return Err(unexpected(&other)),
    };
    let failed = |p: &PartView| {
        p.state.is_done()
            && !p.state.is_ok()
            && !matches!(p.state, JobState::Skipped | JobState::Unreachable)
    };
    let mut jobs: Vec<Uuid> = run
        .parts
        .iter()
        .filter(|p| failed(p))
        .map(|p| p.job_id)
        .collect();
    jobs.dedup();
    for id in jobs {
        let Response::Job(detail) = conn.call(&Request::JobInfo {
            id,
            show_values: false,
        })?
        else {
            continue; // forgotten in between: its states are still shown
        };
        for whole in detail.nodes.into_iter().filter(|p| failed(p)) {
            if let Some(p) = run
                .parts
                .iter_mut()
                .find(|p| p.job_id == whole.job_id && p.node == whole.node)
            {
                *p = whole;
            }
        }
    }
    Ok(run)
}

/// `--job-info RUN`: its jobs, a line each, then the recap per node and
/// each failure with its output, as `orchestrate --wait` ends.
/// The plan of a run already queued: its jobs and their nodes.
pub(super) fn run_plan(run: &RunDetail) -> Plan {
    Plan {
        parent_id: Some(run.parent_id),
        jobs: run
            .jobs
            .iter()
            .map(|j| PlannedJob {
                job_id: Some(j.id),
                block: 0,
                targets: run
                    .parts
                    .iter()
                    .filter(|p| p.job_id == j.id)
                    .map(|p| p.node.clone())
                    .collect(),
                verb: j.verb,
                args: j.args.clone(),
                task_sha1: j.task_sha1.clone(),
                name: j.name.clone(),
                block_name: None,
            })
            .collect(),
        batches: Vec::new(),
        offline: Vec::new(),
        reconnecting: Vec::new(),
    }
}

pub(super) fn run_text(run: &RunDetail) -> String {
    let plan = run_plan(run);
    let mut progress = Progress::new(&plan);
    for p in run.parts.iter().filter(|p| p.state.is_done()) {
        progress.record(p.clone());
    }
    let submitted = run.jobs.iter().map(|j| j.submitted_ms).min().unwrap_or(0);
    let finished = run
        .jobs
        .iter()
        .map(|j| j.finished_ms)
        .collect::<Option<Vec<u64>>>()
        .and_then(|f| f.into_iter().max());
    let mut s = format!(
        "run {}: {}, submitted {} UTC, {}\n",
        run.parent_id,
        crate::dsl::count(run.jobs.len(), "job"),
        format_utc(submitted),
        match finished {
            Some(f) => format!("finished {} UTC", format_utc(f)),
            None => "still going".into(),
        }
    );
    for (i, j) in run.jobs.iter().enumerate() {
        s.push_str(&format!("  {} {}\n", short_id(&j.id), progress.job_line(i)));
    }
    let elapsed = std::time::Duration::from_millis(
        finished
            .unwrap_or_else(crate::support::clock::now_ms)
            .saturating_sub(submitted),
    );
    s.push_str(&progress.recap(elapsed));
    s
}

pub(super) fn job_text(d: &JobDetail) -> String {
    let j = &d.job;
    let mut s = String::new();
    let field = |s: &mut String, k: &str, v: &str| s.push_str(&format!("{k:<11}{v}\n"));
    field(&mut s, "job", &j.id.to_string());
    if let Some(n) = &j.name {
        field(&mut s, "name", n);
    }
    field(&mut s, "verb", j.verb.name());
    field(&mut s, "args", &crate::dsl::one_line(&j.args));
    field(&mut s, "task sha1", &j.task_sha1);
    field(
        &mut s,
        "submitted",
        &format!(
            "{} UTC{}",
            format_utc(j.submitted_ms),
            j.by.as_deref()
                .map(|by| format!(" by {by}"))
                .unwrap_or_default()
        ),
    );
    field(
        &mut s,
        "finished",
        &j.finished_ms
            .map_or_else(|| "-".into(), |t| format!("{} UTC", format_utc(t))),
    );
    field(&mut s, "nodes", &states_summary(j));
    field(
        &mut s,
        "changed",
        &crate::dsl::count(j.changed as usize, "node"),
    );
    s.push('\n');
    let rows: Vec<Vec<String>> = d
        .nodes
        .iter()
        .map(|p| {
            vec![
                p.node.clone(),
                p.state.name().to_owned(),
                if p.state.is_done() && p.state.is_ok() {
                    if p.changed { "yes" } else { "no" }.to_owned()
                } else {
                    "-".to_owned()
                },
                exit_text(p),
                p.exec_secs.map_or_else(|| "-".into(), format_secs),
                p.rtt_secs.map_or_else(|| "-".into(), format_secs),
            ]
        })
        .collect();
    s.push_str(&table(
        &[
            "NODE",
            "STATE",
            "CHANGED",
            "EXIT",
            "EXEC TIME",
            "ROUND TRIP",
        ],
        &rows,
    ));
    for p in &d.nodes {
        let mut body = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = crate::cli::output::write_output(&mut body, p);
        if !body.is_empty() {
            s.push_str(&format!("\n{}:\n", p.node));
            s.push_str(&String::from_utf8_lossy(&body));
        }
    }
    s
}

pub(super) fn exit_text(p: &PartView) -> String {
    match (p.exit_code, p.signal) {
        (Some(c), _) => c.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "-".into(),
    }
}

/// One node's result as `exec --wait` prints it.
pub(super) fn write_part(out: &mut impl Write, p: &PartView) -> io::Result<()> {
    let mut line = format!("{}: {}", p.node, p.state.name());
    match (p.exit_code, p.signal) {
        (Some(c), _) => line.push_str(&format!(", exit {c}")),
        (None, Some(sig)) => line.push_str(&format!(", killed by signal {sig}")),
        _ => {}
    }
    if let Some(t) = p.exec_secs {
        line.push_str(&format!(", {} on the node", format_secs(t)));
    }
    if let Some(t) = p.rtt_secs {
        line.push_str(&format!(", {} round trip", format_secs(t)));
    }
    if !p.attempts.is_empty() {
        line.push_str(&format!(", attempt {}", p.attempts.len() + 1));
    }
    writeln!(out, "{line}")?;
    crate::cli::output::write_output(out, p)
}

/// `manage --cluster`: the servers on etcd, then who answered and etcd.
pub(super) fn cluster_text(v: &crate::wire::ClusterView) -> String {
    if v.role == "alone" {
        return "this server runs alone (no --etcd-endpoints): there is no cluster of servers\n"
            .into();
    }
    let now = crate::support::clock::now_ms();
    let rows: Vec<Vec<String>> = v
        .servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.role.clone(),
                format!("{}:{}", s.address, s.job_port),
                s.applied.to_string(),
                if s.wants_base {
                    "needs a base".into()
                } else {
                    s.behind.to_string()
                },
                format!(
                    "{} ago",
                    crate::support::clock::format_secs(
                        now.saturating_sub(s.updated_ms) as f64 / 1000.0
                    )
                ),
                s.version.clone(),
                if s.key.is_empty() {
                    "-".into()
                } else {
                    s.key.clone()
                },
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SERVER",
            "ROLE",
            "ADDRESS",
            "APPLIED",
            "BEHIND",
            "LAST SEEN",
            "VERSION",
            "SERVER KEY",
        ],
        &rows,
    );
    out.push_str(&format!(
        "answered by {} ({}); active: {}; etcd {}: {}\n",
        v.this,
        v.role,
        v.leader.as_deref().unwrap_or("none yet"),
        v.etcd_endpoints.join(","),
        match &v.etcd_error {
            None => "answering".to_string(),
            Some(e) => format!("NOT answering ({e})"),
        }
    ));
    out
}

/// A time, or "-" where the answering server does not know it (a
/// standby does not hear heartbeats).
fn time_or_dash(ms: u64) -> String {
    match ms {
        0 => "-".to_owned(),
        ms => format_utc(ms),
    }
}
