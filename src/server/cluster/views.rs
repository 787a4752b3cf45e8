//! What the CLI reads: nodes, jobs, runs and parts, as views.

use super::*;

/// What `/metrics` reads of the cluster.
#[derive(Default)]
pub struct Counts {
    pub nodes: BTreeMap<NodeState, u64>,
    pub queued: u64,
    pub in_flight: u64,
    pub jobs_finished: u64,
    pub jobs_going: u64,
    pub parts: BTreeMap<JobState, u64>,
}

impl Cluster {
    /// A job as listed, with who submitted it.
    fn view_of(&self, j: &crate::server::jobs::Job) -> JobView {
        let mut v = j.view();
        v.by = self.jobs.by(j);
        v
    }

    /// File `file` of job `job_id`, if `node` may fetch it now: the job is an
    /// ADD, sent to this node, and not finished there.
    pub fn source_for(&self, node: &str, job_id: &Uuid, file: u32) -> Result<SourceFile, String> {
        let job = self.jobs.get(job_id).ok_or("no such job")?;
        let part = job.parts.get(node).ok_or("the job is not for this node")?;
        if !matches!(part.state(), JobState::Sent | JobState::Running) {
            return Err(format!(
                "the job is {} on this node, not running",
                part.state().name()
            ));
        }
        let Action::Add(add) = &job.task.action else {
            return Err("the job sends no files".into());
        };
        add.files
            .get(file as usize)
            .cloned()
            .ok_or_else(|| format!("the job has no file number {file}"))
    }

    pub fn list_nodes(&self) -> Vec<NodeView> {
        self.nodes.iter().map(Self::node_view).collect()
    }

    /// One node, with its cache: ARG values only with `show_values`.
    pub fn node_info(&self, name: &str, show_values: bool) -> Result<NodeView, String> {
        let Some(n) = self.nodes.get(name) else {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(format!(
                "unknown node '{name}' (known nodes: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ));
        };
        let mut view = Self::node_view(n);
        view.cache = n.cache.as_deref().cloned().map(|mut c| {
            if !show_values {
                c.args.values_mut().for_each(|v| *v = None);
            }
            c
        });
        Ok(view)
    }

    /// A node reported what its cache holds.
    pub fn cache_summary(&mut self, node: &str, summary: crate::wire::CacheSummary) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.cache = Some(Box::new(summary.bounded()));
        }
    }

    /// Of `nodes`, those restored from before a restart and not back
    /// yet, with how long their jobs will wait for them.
    pub fn awaited<'a>(
        &self,
        nodes: impl Iterator<Item = &'a str>,
        now_ms: u64,
    ) -> Vec<crate::wire::Awaited> {
        nodes
            .filter_map(|name| self.nodes.get(name))
            .filter(|n| Self::node_view_state(n) == NodeState::Reconnecting)
            .map(|n| crate::wire::Awaited {
                node: n.name.clone(),
                within_ms: n.expires_ms().saturating_sub(now_ms),
            })
            .collect()
    }

    fn node_view_state(n: &crate::server::nodes::Node) -> NodeState {
        match (n.link, n.instance) {
            (Link::Offline, _) => NodeState::Offline,
            // Restored from the history, not yet back.
            (Link::Stale, None) => NodeState::Reconnecting,
            _ => NodeState::Online,
        }
    }

    pub(super) fn node_view(n: &crate::server::nodes::Node) -> NodeView {
        NodeView {
            name: n.name.clone(),
            state: Self::node_view_state(n),
            version: n.version.clone(),
            last_heartbeat_ms: n.last_seen_ms,
            expires_ms: n.expires_ms(),
            queued: n.queue.len() as u32,
            in_flight: n.in_flight.len() as u32,
            labels: n.about.labels.clone(),
            facts: n.about.facts.clone(),
            cache: None,
        }
    }

    pub fn list_jobs(&self) -> Vec<JobView> {
        self.jobs.iter().map(|j| self.view_of(j)).collect()
    }

    /// The newest `limit` jobs that match, oldest first; only those are
    /// made into views.
    pub fn find_jobs(
        &self,
        state: Option<JobState>,
        verb: Option<crate::dsl::Verb>,
        run: Option<Uuid>,
        limit: Option<u32>,
    ) -> Vec<JobView> {
        let limit = limit.map_or(usize::MAX, |l| l as usize);
        let mut found: Vec<JobView> = self
            .jobs
            .iter_rev()
            .filter(|j| state.is_none_or(|s| j.has_state(s)))
            .filter(|j| verb.is_none_or(|v| j.task.verb() == v))
            .filter(|j| run.is_none_or(|r| j.parent == Some(r)))
            .take(limit)
            .map(|j| self.view_of(j))
            .collect();
        found.reverse();
        found
    }

    /// What `/metrics` counts: nodes by state, parts queued and in
    /// flight, jobs finished and not, parts by state. No views are made.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for n in self.nodes.iter() {
            *c.nodes.entry(Self::node_view_state(n)).or_insert(0) += 1;
            c.queued += n.queue.len() as u64;
            c.in_flight += n.in_flight.len() as u64;
        }
        for j in self.jobs.iter() {
            let mut done = true;
            for (_, p) in j.parts.iter() {
                let s = p.state();
                done &= s.is_done();
                *c.parts.entry(s).or_insert(0) += 1;
            }
            if done {
                c.jobs_finished += 1;
            } else {
                c.jobs_going += 1;
            }
        }
        c
    }

    /// Put the values the views hide back (`--show-values`).
    pub fn show_values(&self, view: &mut JobView) {
        if let Some(j) = self.jobs.get(&view.id) {
            view.args = j.task.args();
        }
    }

    /// Everything about a job, and which outputs to read from the journal.
    pub fn job_info(&self, id: &Uuid) -> Option<(JobDetail, Vec<(usize, Span)>)> {
        self.jobs.get(id).map(|j| {
            let (mut detail, reads) = j.detail();
            detail.job.by = self.jobs.by(j);
            (detail, reads)
        })
    }

    pub fn job_view(&self, id: &Uuid) -> Option<JobView> {
        self.jobs.get(id).map(|j| self.view_of(j))
    }

    /// The jobs of an orchestration run, in order.
    pub fn parent_views(&self, parent: &Uuid) -> Vec<JobView> {
        self.jobs
            .children(parent)
            .map(|j| self.view_of(j))
            .collect()
    }

    /// The job or run (true) that `text` names: a whole id, or a prefix
    /// of at least `MIN_ID_PREFIX` characters only one of them has.
    pub fn resolve_id(&self, text: &str) -> Result<(Uuid, bool), String> {
        let want = text.trim().to_ascii_lowercase();
        let shown = crate::dsl::one_line(text.trim());
        if let Ok(id) = Uuid::parse_str(&want) {
            if self.jobs.get(&id).is_some() {
                return Ok((id, false));
            }
            if self.jobs.children(&id).next().is_some() {
                return Ok((id, true));
            }
            return Err(format!("no job or run with id {id}"));
        }
        if want.len() < crate::wire::MIN_ID_PREFIX
            || !want.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err(format!(
                "'{shown}' is not an id: give a job or run id, or its first {} characters or more",
                crate::wire::MIN_ID_PREFIX
            ));
        }
        let mut found: Vec<(Uuid, bool)> = Vec::new();
        for j in self.jobs.iter() {
            if j.id.to_string().starts_with(&want) {
                found.push((j.id, false));
            }
            if let Some(p) = j.parent.filter(|p| p.to_string().starts_with(&want)) {
                if !found.contains(&(p, true)) {
                    found.push((p, true));
                }
            }
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no job or run id starts with {shown}")),
            many => Err(format!(
                "{shown} starts {}: {} (give more of it)",
                crate::dsl::count(many.len(), "id"),
                many.iter()
                    .take(5)
                    .map(|(id, run)| format!("{id}{}", if *run { " (run)" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// An orchestration run: its jobs, and each part's state.
    pub fn run_detail(&self, parent: &Uuid) -> Option<RunDetail> {
        let jobs: Vec<&crate::server::jobs::Job> = self.jobs.children(parent).collect();
        if jobs.is_empty() {
            return None;
        }
        Some(RunDetail {
            parent_id: *parent,
            jobs: jobs.iter().map(|j| self.view_of(j)).collect(),
            parts: jobs
                .iter()
                .flat_map(|j| j.parts.keys().filter_map(|n| j.part_view(n)))
                .collect(),
        })
    }

    /// A job and its parts, states only.
    pub fn job_parts(&self, id: &Uuid) -> Option<(JobView, Vec<PartView>)> {
        let j = self.jobs.get(id)?;
        let parts = j.parts.keys().filter_map(|n| j.part_view(n)).collect();
        Some((self.view_of(j), parts))
    }

    /// Every run, oldest first.
    pub fn list_runs(&self) -> Vec<RunView> {
        let mut runs: Vec<RunView> = Vec::new();
        let mut at: HashMap<Uuid, usize> = HashMap::default();
        let mut nodes: Vec<HashSet<&str>> = Vec::new();
        for j in self.jobs.iter() {
            let Some(parent) = j.parent else { continue };
            let i = *at.entry(parent).or_insert_with(|| {
                runs.push(RunView {
                    parent_id: parent,
                    jobs: 0,
                    nodes: 0,
                    submitted_ms: j.submitted_ms,
                    finished_ms: Some(0),
                    states: BTreeMap::new(),
                    changed: 0,
                });
                nodes.push(HashSet::default());
                runs.len() - 1
            });
            let v = self.view_of(j);
            let r = &mut runs[i];
            r.jobs += 1;
            r.changed += v.changed;
            for (s, n) in v.states {
                *r.states.entry(s).or_insert(0) += n;
            }
            r.finished_ms = match (r.finished_ms, v.finished_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            nodes[i].extend(j.parts.keys().map(|n| &**n));
        }
        for (r, n) in runs.iter_mut().zip(nodes) {
            r.nodes = n.len() as u32;
        }
        runs
    }

    /// Was the job sent to `node`, and has it not finished there?
    pub fn runs_on(&self, job_id: &Uuid, node: &str) -> bool {
        self.jobs
            .get(job_id)
            .and_then(|j| j.parts.get(node))
            .is_some_and(|p| !p.state().is_done())
    }

    /// The run a job belongs to.
    pub fn parent_of(&self, job_id: &Uuid) -> Option<Uuid> {
        self.jobs.get(job_id).and_then(|j| j.parent)
    }

    pub fn part_view(&self, id: &Uuid, node: &str) -> Option<PartView> {
        self.jobs.get(id).and_then(|j| j.part_view(node))
    }
}
