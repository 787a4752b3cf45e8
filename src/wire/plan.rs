//! What an orchestration becomes on the wire: blocks, lanes, plans.

use super::*;

/// One block of an orchestration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Block {
    /// Empty: every connected node.
    #[serde(deserialize_with = "cautious_seq")]
    pub targets: Vec<String>,
    #[serde(deserialize_with = "cautious_seq")]
    pub tasks: Vec<Task>,
    /// `batch:` (and `max_fail:`): this block and those after it go over
    /// the block's nodes batch by batch.
    pub rolling: Option<Rolling>,
    /// Where it was written (`site.yml, block 2`), for messages; empty if
    /// nowhere.
    pub origin: String,
    /// `name:`, shown with its jobs.
    pub name: Option<String>,
    /// A job's own `assign:` targets, replacing the block's: one entry per
    /// task, or none at all when no job has any.
    #[serde(deserialize_with = "cautious_seq")]
    pub assign: Vec<Option<Assigned>>,
    /// `async:` this block's jobs go on each node alongside those of the
    /// run's other async blocks (each block's own jobs still in order).
    pub concurrent: bool,
}

/// Where an `async` block's job runs on a node: beside the jobs of the
/// other blocks (`block`) of the same run of consecutive async blocks
/// (`group`), after everything before that run and before everything
/// after it.
/// How many of an `async` group's lanes a node runs at once.
pub const LANES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lane {
    pub parent: Uuid,
    pub group: u32,
    pub block: u32,
}

/// A job's `assign:` targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assigned(#[serde(deserialize_with = "cautious_seq")] pub Vec<String>);

impl Block {
    /// A block of `tasks` for `targets`, nothing else set.
    #[cfg(test)]
    pub fn of(targets: Vec<String>, tasks: Vec<Task>) -> Block {
        Block {
            targets,
            tasks,
            rolling: None,
            origin: String::new(),
            name: None,
            assign: Vec::new(),
            concurrent: false,
        }
    }

    /// The targets of its job `j`: its own `assign`, or the block's.
    pub fn job_targets(&self, j: usize) -> &[String] {
        self.assign
            .get(j)
            .and_then(|a| a.as_ref())
            .map_or(&self.targets, |a| &a.0)
    }

    /// The block in messages: where it was written, or its place in the
    /// run (`i` from 0).
    pub fn label(&self, i: usize) -> String {
        if self.origin.is_empty() {
            format!("block {}", i + 1)
        } else {
            self.origin.clone()
        }
    }
}

/// What an orchestration queued (or, for a dry run, would queue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// `None` for a dry run.
    pub parent_id: Option<Uuid>,
    pub jobs: Vec<PlannedJob>,
    /// A rolling run's nodes, batch by batch, in the order they go; empty
    /// when every node starts at once.
    pub batches: Vec<Vec<String>>,
    /// Known nodes left out because they are offline (blocks without
    /// targets).
    pub offline: Vec<String>,
    /// Its nodes the server still expects back after a restart.
    #[serde(deserialize_with = "cautious_seq")]
    pub reconnecting: Vec<super::Awaited>,
}

/// How many nodes: a number, or a percentage of the run's nodes (rounded
/// up, at least one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// Parse `N` or `N%` (1-100%), for `option`'s error.
    pub fn parse(text: &str, option: &str) -> Result<Amount, String> {
        let bad = || {
            format!("{option}: expected a number of nodes or a percentage (3, 25%), got '{text}'")
        };
        match text.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Amount::Percent(p)),
                _ => Err(bad()),
            },
            None => text
                .trim()
                .parse::<u32>()
                .map(Amount::Count)
                .map_err(|_| bad()),
        }
    }

    /// Parse a batch size: as `parse`, and never 0 (a batch of no node
    /// would never end).
    pub fn parse_batch(text: &str, option: &str) -> Result<Amount, String> {
        match Amount::parse(text, option)? {
            Amount::Count(0) => Err(format!(
                "{option}: a batch needs at least one node (got 0): give a number of nodes or a percentage (1, 25%)"
            )),
            a => Ok(a),
        }
    }

    /// How many of `of` nodes.
    pub fn of(self, of: usize) -> usize {
        match self {
            Amount::Count(n) => n as usize,
            Amount::Percent(p) => (of * p as usize).div_ceil(100),
        }
    }
}

/// `orchestrate --batch`: the run goes `batch` nodes at a time; with
/// `max_fail`, no new batch starts once more nodes than that have failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rolling {
    pub batch: Amount,
    pub max_fail: Option<Amount>,
}

/// One job of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedJob {
    /// `None` for a dry run.
    pub job_id: Option<Uuid>,
    /// Index of its block in the orchestration (from 0).
    pub block: usize,
    pub targets: Vec<String>,
    pub verb: Verb,
    pub args: String,
    pub task_sha1: String,
    /// Its `name:` in the orchestration.
    pub name: Option<String>,
    /// Its block's `name:` (known when the run is submitted).
    pub block_name: Option<String>,
}
