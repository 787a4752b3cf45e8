//! What `orchestrate --wait` shows: a live status while a run goes on, a
//! line per finished job, then a recap per node and the output of each
//! failure. Pure: it is fed the plan and each node's result, and returns
//! text for the CLI to print.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::support::clock::format_secs;
use crate::wire::{JobState, PartView, Plan, PlannedJob};

/// Per-node counts for the recap.
#[derive(Default, Debug, PartialEq)]
struct Tally {
    ok: u32,
    /// Of `ok`: those that changed something (or, checking, would).
    changed: u32,
    cached: u32,
    skipped: u32,
    failed: u32,
    unreachable: u32,
}

/// Progress of one orchestration run.
pub struct Progress {
    jobs: Vec<PlannedJob>,
    index: HashMap<Uuid, usize>,
    states: Vec<BTreeMap<JobState, u32>>,
    nodes: BTreeMap<String, Tally>,
    failures: Vec<(usize, PartView)>,
    /// Nodes of a rolling run that never started, and why.
    never_started: BTreeMap<String, String>,
    /// A rolling run's batches (empty otherwise).
    batches: Vec<Vec<String>>,
    /// `-v`: the recap also shows what succeeded steps printed.
    pub verbose: bool,
    /// With `verbose`: succeeded steps that printed something.
    printed: Vec<(usize, PartView)>,
    /// `--diff`: the recap shows what each changed step printed (its
    /// diffs); what a `--check` would change is always shown.
    pub show_changes: bool,
    /// Parts that would change (`--check`).
    would_change: u32,
    /// Nodes the server expects back after its restart, until when; each
    /// leaves once a result of it comes (it is back, or unreachable).
    awaited: BTreeMap<String, Instant>,
}

impl Progress {
    pub fn new(plan: &Plan) -> Progress {
        let mut nodes = BTreeMap::new();
        for j in &plan.jobs {
            for t in &j.targets {
                nodes.entry(t.clone()).or_insert_with(Tally::default);
            }
        }
        Progress {
            index: plan
                .jobs
                .iter()
                .enumerate()
                .filter_map(|(i, j)| j.job_id.map(|id| (id, i)))
                .collect(),
            states: vec![BTreeMap::new(); plan.jobs.len()],
            jobs: plan.jobs.clone(),
            nodes,
            never_started: BTreeMap::new(),
            batches: plan.batches.clone(),
            failures: Vec::new(),
            verbose: false,
            printed: Vec::new(),
            show_changes: false,
            would_change: 0,
            awaited: plan
                .reconnecting
                .iter()
                .map(|a| {
                    let until = Instant::now() + Duration::from_millis(a.within_ms);
                    (a.node.clone(), until)
                })
                .collect(),
        }
    }

    fn done_count(&self, i: usize) -> u32 {
        self.states[i].values().sum()
    }

    /// Record one node's result. Returns the job's index when that result
    /// completed the job.
    pub fn record(&mut self, part: PartView) -> Option<usize> {
        let i = *self.index.get(&part.job_id)?;
        self.awaited.remove(&part.node);
        *self.states[i].entry(part.state).or_insert(0) += 1;
        let tally = self.nodes.entry(part.node.clone()).or_default();
        match part.state {
            JobState::Succeeded | JobState::WouldChange => {
                tally.ok += 1;
                tally.changed += 1;
            }
            JobState::Unchanged | JobState::NotTriggered => tally.ok += 1,
            JobState::Cached => tally.cached += 1,
            JobState::Skipped => tally.skipped += 1,
            JobState::Unreachable => tally.unreachable += 1,
            _ => tally.failed += 1,
        }
        if let (JobState::Skipped, Some(m)) = (part.state, &part.message) {
            if m.starts_with("not started:") {
                self.never_started.insert(part.node.clone(), m.clone());
            }
        }
        if part.state == JobState::WouldChange {
            self.would_change += 1;
        }
        let shown = part.state == JobState::WouldChange
            || (self.show_changes && part.state.changed())
            || (self.verbose && matches!(part.state, JobState::Succeeded | JobState::Unchanged));
        if !part.state.is_ok() && !matches!(part.state, JobState::Skipped | JobState::Unreachable) {
            self.failures.push((i, part));
        } else if shown && !(part.stdout.is_empty() && part.stderr.is_empty()) {
            self.printed.push((i, part));
        }
        (self.done_count(i) as usize == self.jobs[i].targets.len()).then_some(i)
    }

    /// `[batch 2/3] ` while a rolling run's batch goes: the first with a
    /// node not done.
    fn batch_status(&self) -> String {
        let jobs_of = |node: &str| {
            self.jobs
                .iter()
                .filter(|j| j.targets.iter().any(|t| t == node))
                .count()
        };
        let done = |node: &String| {
            self.nodes
                .get(node)
                .is_some_and(|t| (t.ok + t.cached + t.skipped + t.failed) as usize >= jobs_of(node))
        };
        let n = self.batches.len();
        match self.batches.iter().position(|b| !b.iter().all(done)) {
            Some(i) => format!("[batch {}/{n}] ", i + 1),
            None => String::new(),
        }
    }

    /// The live one-line status for a terminal.
    pub fn status(&self, elapsed: Duration) -> String {
        let batch = self.batch_status();
        let total = self.jobs.len();
        let current =
            (0..total).find(|i| (self.done_count(*i) as usize) < self.jobs[*i].targets.len());
        match current {
            Some(i) => format!(
                "{batch}[job {}/{total}] {}: {}/{} nodes done, {} elapsed{}",
                i + 1,
                label(&self.jobs[i], 40),
                self.done_count(i),
                self.jobs[i].targets.len(),
                format_secs(elapsed.as_secs_f64()),
                self.awaited_status(i, Instant::now())
            ),
            None => format!(
                "[{total}/{total} jobs done] {} elapsed",
                format_secs(elapsed.as_secs_f64())
            ),
        }
    }

    /// `; waiting on web3, db1 to reconnect (up to 170 s)` while job `i`
    /// waits on nodes the server expects back after its restart.
    fn awaited_status(&self, i: usize, now: Instant) -> String {
        let held: Vec<&str> = self.jobs[i]
            .targets
            .iter()
            .filter(|t| self.awaited.get(*t).is_some_and(|until| *until > now))
            .map(String::as_str)
            .collect();
        let Some(until) = held.iter().filter_map(|t| self.awaited.get(*t)).max() else {
            return String::new();
        };
        format!(
            "; waiting on {} to reconnect (up to {} s)",
            crate::targets::known_list(held.iter().copied()),
            until.saturating_duration_since(now).as_secs() + 1
        )
    }

    /// A plain line for a job that just finished.
    pub fn job_line(&self, i: usize) -> String {
        let j = &self.jobs[i];
        let states: Vec<String> = self.states[i]
            .iter()
            .map(|(s, n)| format!("{n} {}", s.name()))
            .collect();
        format!(
            "job {}/{} {}: {}",
            i + 1,
            self.jobs.len(),
            label(j, 60),
            states.join(", ")
        )
    }

    /// `--wait`'s exit status: 1 if a step failed or was skipped anywhere,
    /// else 4 if some nodes were offline, else 0.
    pub fn exit_code(&self) -> i32 {
        use crate::error::{EXIT_FAILED, EXIT_NODES_OFFLINE, EXIT_OK, EXIT_WOULD_CHANGE};
        let t = self.nodes.values();
        if t.clone().any(|t| t.failed > 0 || t.skipped > 0) {
            EXIT_FAILED
        } else if t.clone().any(|t| t.unreachable > 0) {
            EXIT_NODES_OFFLINE
        } else if self.would_change > 0 {
            EXIT_WOULD_CHANGE
        } else {
            EXIT_OK
        }
    }

    /// The recap per node, then each failure with its output.
    pub fn recap(&self, elapsed: Duration) -> String {
        let mut s = format!("recap after {}:\n", format_secs(elapsed.as_secs_f64()));
        let width = self.nodes.keys().map(|n| n.len()).max().unwrap_or(4).max(4);
        s.push_str(&format!(
            "  {:<width$}  {:>5}  {:>7}  {:>6}  {:>7}  {:>6}  {:>11}\n",
            "NODE", "OK", "CHANGED", "CACHED", "SKIPPED", "FAILED", "UNREACHABLE"
        ));
        for (node, t) in &self.nodes {
            s.push_str(&format!(
                "  {node:<width$}  {:>5}  {:>7}  {:>6}  {:>7}  {:>6}  {:>11}\n",
                t.ok, t.changed, t.cached, t.skipped, t.failed, t.unreachable
            ));
        }
        if self.would_change > 0 {
            s.push_str(&format!(
                "--check: nothing was changed; {} would change something (below)\n",
                crate::dsl::count(self.would_change as usize, "step")
            ));
        }
        if let Some(why) = self.never_started.values().next() {
            let nodes: Vec<&str> = self.never_started.keys().map(String::as_str).collect();
            s.push_str(&format!(
                "never started ({}): {}\n",
                why.trim_start_matches("not started: "),
                nodes.join(", ")
            ));
        }
        if !self.printed.is_empty() {
            s.push_str("\nwhat the steps did (or would do):\n");
        }
        for (i, p) in &self.printed {
            let j = &self.jobs[*i];
            s.push_str(&format!(
                "{}: job {}/{} {}\n",
                p.node,
                i + 1,
                self.jobs.len(),
                label(j, 60)
            ));
            let mut body = Vec::new();
            // Writing to a Vec cannot fail.
            let _ = crate::cli::output::write_output(&mut body, p);
            s.push_str(&String::from_utf8_lossy(&body));
        }
        for (i, p) in &self.failures {
            let j = &self.jobs[*i];
            s.push_str(&format!(
                "\n{}: job {}/{} {}: {}",
                p.node,
                i + 1,
                self.jobs.len(),
                label(j, usize::MAX),
                p.state.name()
            ));
            match (p.exit_code, p.signal) {
                (Some(c), _) => s.push_str(&format!(", exit {c}")),
                (None, Some(sig)) => s.push_str(&format!(", killed by signal {sig}")),
                _ => {}
            }
            s.push('\n');
            let mut body = Vec::new();
            // Writing to a Vec cannot fail.
            let _ = crate::cli::output::write_output(&mut body, p);
            s.push_str(&String::from_utf8_lossy(&body));
        }
        s
    }
}

/// `s` on one line, cut to `max` characters.
pub fn shorten(s: &str, max: usize) -> String {
    let one_line = crate::dsl::one_line(s);
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

/// A job as progress lines name it: `[block: job] VERB args` with the
/// names it has, the arguments cut to `width` characters.
fn label(j: &PlannedJob, width: usize) -> String {
    let args = if width == usize::MAX {
        j.args.clone()
    } else {
        shorten(&j.args, width)
    };
    match (&j.block_name, &j.name) {
        (Some(b), Some(n)) => format!("[{b}: {n}] {} {args}", j.verb),
        (Some(n), None) | (None, Some(n)) => format!("[{n}] {} {args}", j.verb),
        (None, None) => format!("{} {args}", j.verb),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsl::Verb;

    fn part(job_id: Uuid, node: &str, state: JobState) -> PartView {
        PartView {
            job_id,
            node: node.into(),
            state,
            changed: state.changed(),
            exit_code: (state == JobState::Failed).then_some(2),
            signal: None,
            message: None,
            stdout: String::new(),
            stderr: if state == JobState::Failed {
                "boom\n".into()
            } else {
                String::new()
            },
            stdout_dropped: 0,
            stderr_dropped: 0,
            exec_secs: None,
            rtt_secs: None,
            sent_ms: None,
            finished_ms: None,
            attempts: Vec::new(),
        }
    }

    #[test]
    fn the_status_names_the_nodes_a_job_waits_on_after_a_server_restart() {
        let id = Uuid::new_v4();
        let mut p = Progress::new(&Plan {
            parent_id: Some(Uuid::new_v4()),
            jobs: vec![PlannedJob {
                job_id: Some(id),
                block: 0,
                targets: vec!["a".into(), "b".into(), "c".into()],
                verb: Verb::Run,
                args: "uptime".into(),
                task_sha1: String::new(),
                name: None,
                block_name: None,
            }],
            batches: vec![],
            offline: vec![],
            reconnecting: ["b", "c"]
                .map(|n| crate::wire::Awaited {
                    node: n.into(),
                    within_ms: 170_000,
                })
                .into(),
        });
        p.record(part(id, "a", JobState::Succeeded));
        let status = p.status(Duration::from_secs(2));
        assert!(
            status.ends_with("; waiting on b, c to reconnect (up to 170 s)"),
            "{status}"
        );
        // b is back (or was given up on): only c holds the job now.
        p.record(part(id, "b", JobState::Succeeded));
        let status = p.status(Duration::from_secs(3));
        assert!(
            status.ends_with("; waiting on c to reconnect (up to 170 s)"),
            "{status}"
        );
        // Past its time nothing is said of it (its result is on the way).
        assert_eq!(
            p.awaited_status(0, Instant::now() + Duration::from_secs(171)),
            ""
        );
    }

    #[test]
    fn tracks_jobs_nodes_and_failures() {
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
        let job = |i: usize| PlannedJob {
            job_id: Some(ids[i]),
            block: 0,
            targets: vec!["a".into(), "b".into()],
            verb: Verb::Run,
            args: format!("step {i}"),
            task_sha1: String::new(),
            name: None,
            block_name: None,
        };
        let mut p = Progress::new(&Plan {
            parent_id: Some(Uuid::new_v4()),
            jobs: vec![job(0), job(1)],
            batches: vec![],
            offline: vec![],
            reconnecting: vec![],
        });
        assert_eq!(p.record(part(ids[0], "a", JobState::Succeeded)), None);
        assert!(p
            .status(Duration::from_secs(2))
            .starts_with("[job 1/2] RUN step 0: 1/2 nodes done"));
        assert_eq!(p.record(part(ids[0], "b", JobState::Failed)), Some(0));
        assert_eq!(p.job_line(0), "job 1/2 RUN step 0: 1 succeeded, 1 failed");
        p.record(part(ids[1], "a", JobState::Cached));
        assert_eq!(p.record(part(ids[1], "b", JobState::Skipped)), Some(1));
        assert_eq!(p.exit_code(), crate::error::EXIT_FAILED);
        let recap = p.recap(Duration::from_secs(3));
        assert!(
            recap.contains("  a         1        1       1        0       0"),
            "{recap}"
        );
        assert!(
            recap.contains("  b         0        0       0        1       1"),
            "{recap}"
        );
        assert!(
            recap.contains("b: job 1/2 RUN step 0: failed, exit 2"),
            "{recap}"
        );
        assert!(recap.contains("stderr | boom"), "{recap}");
        // Results for jobs of another run are ignored.
        assert_eq!(p.record(part(Uuid::new_v4(), "a", JobState::Failed)), None);
    }
}
