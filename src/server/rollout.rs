//! A rolling run (`orchestrate --batch`): its nodes go batch by batch, in
//! a stable order; the next batch starts once every node of the current
//! one has finished its part of the run, unless more nodes than
//! `--max-fail` allows have failed by then.

use crate::support::hash::{Map as HashMap, Set as HashSet};
use std::collections::BTreeSet;

use uuid::Uuid;

use crate::wire::{JobState, Rolling};

pub struct Rollout {
    pub batches: Vec<Vec<String>>,
    /// Each node's batch: looked up for every part of the run, which may
    /// go to thousands of nodes.
    batch_of: HashMap<String, usize>,
    /// The batch going now; `batches.len()` once none is left.
    pub current: usize,
    /// Most nodes that may fail before no new batch starts.
    pub max_fail: Option<usize>,
    /// Nodes where a job of the run failed, timed out, was lost or could
    /// not reach them (as Ansible counts unreachable hosts).
    pub failed: BTreeSet<String>,
    /// Parts of the run on the current batch's nodes not yet finished.
    pub left: usize,
    /// The run's first job that rolls: 0 with `--batch`, the first job of
    /// the block with `batch:` otherwise.
    pub from: usize,
    /// With `from` past 0: the jobs that roll (the run's jobs from `from`
    /// on); the others go at once.
    covers: Option<HashSet<Uuid>>,
}

impl Rollout {
    /// `nodes` (sorted, distinct) cut into batches as `rolling` says.
    pub fn plan(nodes: &[String], rolling: Rolling) -> (Vec<Vec<String>>, Option<usize>) {
        let size = rolling.batch.of(nodes.len()).max(1);
        let batches = nodes.chunks(size).map(<[String]>::to_vec).collect();
        let max_fail = rolling.max_fail.map(|m| m.of(nodes.len()));
        (batches, max_fail)
    }

    pub fn new(batches: Vec<Vec<String>>, max_fail: Option<usize>) -> Rollout {
        let batch_of = batches
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.iter().map(move |n| (n.clone(), i)))
            .collect();
        Rollout {
            batches,
            batch_of,
            current: 0,
            max_fail,
            failed: BTreeSet::new(),
            left: 0,
            from: 0,
            covers: None,
        }
    }

    /// The run's jobs in order: those from `from` on roll.
    pub fn cover(&mut self, jobs: impl Iterator<Item = Uuid>) {
        if self.from > 0 {
            self.covers = Some(jobs.skip(self.from).collect());
        }
    }

    /// Does job `id` of the run roll?
    pub fn applies(&self, id: &Uuid) -> bool {
        self.covers.as_ref().is_none_or(|c| c.contains(id))
    }

    /// Is this part of the run (job `id` on `node`) waiting for its batch?
    pub fn holds_part(&self, id: &Uuid, node: &str) -> bool {
        self.applies(id) && self.holds(node)
    }

    /// The batch `node` is in.
    pub fn batch_of(&self, node: &str) -> Option<usize> {
        self.batch_of.get(node).copied()
    }

    /// Is `node`'s part of the run waiting for its batch?
    pub fn holds(&self, node: &str) -> bool {
        self.batch_of(node).is_some_and(|b| b > self.current)
    }

    /// Count `node` as failed if `state` is a failure there.
    pub fn count_failure(&mut self, node: &str, state: JobState) {
        if matches!(
            state,
            JobState::Failed | JobState::TimedOut | JobState::Lost | JobState::Unreachable
        ) {
            self.failed.insert(node.to_owned());
        }
    }

    /// A part on `node` reached `state`. True when that ends the current
    /// batch: time to start the next.
    pub fn part_done(&mut self, node: &str, state: JobState) -> bool {
        self.count_failure(node, state);
        if self.batch_of(node) != Some(self.current) || self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.left == 0
    }

    /// Have more nodes failed than `--max-fail` allows?
    pub fn too_many_failed(&self) -> bool {
        self.max_fail.is_some_and(|m| self.failed.len() > m)
    }

    /// What a node that never started is told.
    pub fn never_started(&self) -> String {
        let n = self.failed.len();
        format!(
            "not started: {n} {} failed, more than --max-fail {} allows",
            if n == 1 { "node" } else { "nodes" },
            self.max_fail.unwrap_or(0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Amount;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn batches_are_counts_or_percentages_rounded_up() {
        let rolling = |batch, max_fail| Rolling { batch, max_fail };
        let (b, m) = Rollout::plan(&names(5), rolling(Amount::Count(2), Some(Amount::Count(1))));
        assert_eq!(b, [vec!["n1", "n2"], vec!["n3", "n4"], vec!["n5"]]);
        assert_eq!(m, Some(1));
        let (b, m) = Rollout::plan(
            &names(5),
            rolling(Amount::Percent(30), Some(Amount::Percent(50))),
        );
        assert_eq!(b.len(), 3, "30% of 5 is 2 per batch");
        assert_eq!(m, Some(3));
        let (b, _) = Rollout::plan(&names(3), rolling(Amount::Count(0), None));
        assert_eq!(b.len(), 3, "at least one node per batch");
    }

    #[test]
    fn a_batch_ends_when_its_parts_do_and_failures_count_per_node() {
        let (b, m) = Rollout::plan(
            &names(4),
            Rolling {
                batch: Amount::Count(2),
                max_fail: Some(Amount::Count(0)),
            },
        );
        let mut r = Rollout::new(b, m);
        r.left = 2;
        assert!(r.holds("n3") && !r.holds("n1"));
        // A later batch's part (ended early) does not count here.
        assert!(!r.part_done("n4", JobState::Skipped));
        assert!(!r.part_done("n1", JobState::Failed));
        assert!(!r.too_many_failed() || r.failed.len() == 1);
        assert!(r.part_done("n2", JobState::Succeeded));
        assert!(r.too_many_failed());
        assert!(r.never_started().contains("1 node failed"));
    }
}
