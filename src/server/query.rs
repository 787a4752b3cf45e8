//! QUERY jobs while they collect: each target reports its ARG (or that it
//! has none) and waits; once every target has answered or ended (failed,
//! lost, unreachable, skipped), each one that answered and still waits gets
//! the map of the values. The barrier is on the nodes (the QUERY holds each
//! node's queue until its map comes), so nothing here is journaled: after
//! a server restart the waiting nodes report their values again when they
//! re-register.

use crate::support::hash::Map as HashMap;
use std::collections::BTreeMap;

use uuid::Uuid;

/// The answers of one QUERY job so far.
#[derive(Default)]
struct Answers {
    /// By node: its value, `None` if it has no such ARG.
    values: BTreeMap<String, Option<String>>,
    /// The map went out: a node that answers now gets it at once.
    complete: bool,
}

/// Every QUERY job still collecting, by job.
#[derive(Default)]
pub struct Queries {
    by_job: HashMap<Uuid, Answers>,
}

/// Who gets the map, and the map.
pub struct Delivery {
    pub nodes: Vec<String>,
    pub values: Vec<(String, String)>,
}

impl Queries {
    /// `node` answered job `job_id`. If the map went out already, it is
    /// this node's now.
    pub fn answer(&mut self, job_id: Uuid, node: &str, value: Option<String>) -> Option<Delivery> {
        let a = self.by_job.entry(job_id).or_default();
        a.values.insert(node.to_owned(), value);
        a.complete.then(|| Delivery {
            nodes: vec![node.to_owned()],
            values: map(a),
        })
    }

    /// Is the job collecting (has any node answered)?
    pub fn collecting(&self, job_id: &Uuid) -> bool {
        self.by_job.contains_key(job_id)
    }

    /// Every part not yet final (`unsettled`) has answered: the map, for
    /// them. Once.
    pub fn complete<'a>(
        &mut self,
        job_id: &Uuid,
        unsettled: impl IntoIterator<Item = &'a str>,
    ) -> Option<Delivery> {
        let a = self.by_job.get_mut(job_id).filter(|a| !a.complete)?;
        let mut nodes = Vec::new();
        for node in unsettled {
            if !a.values.contains_key(node) {
                return None;
            }
            nodes.push(node.to_owned());
        }
        a.complete = true;
        Some(Delivery {
            nodes,
            values: map(a),
        })
    }

    /// The job is final everywhere (or forgotten): nothing more to collect.
    pub fn end(&mut self, job_id: &Uuid) {
        self.by_job.remove(job_id);
    }
}

/// The values nodes had, in node order, up to what one message to a node
/// carries (thousands of nodes at the longest values).
fn map(a: &Answers) -> Vec<(String, String)> {
    let mut size = 0;
    let mut out = Vec::new();
    for (n, v) in &a.values {
        let Some(v) = v else { continue };
        size += n.len() + v.len() + 8;
        if size > MAP_CAP {
            log::error!(
                "a QUERY's map is over {} MiB: the values of the nodes after {} were left out",
                MAP_CAP >> 20,
                out.last()
                    .map_or("none", |(n, _): &(String, String)| n.as_str())
            );
            break;
        }
        out.push((n.clone(), v.clone()));
    }
    out
}

/// What the values of one map may take: it goes to every target (and
/// stays well inside `MAX_JOB_DOWN`).
pub const MAP_CAP: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_goes_once_every_unsettled_part_answered_and_late_ones_get_it_alone() {
        let mut q = Queries::default();
        let id = Uuid::new_v4();
        assert!(q.answer(id, "a", Some("1".into())).is_none());
        assert!(q.complete(&id, ["a", "b"]).is_none(), "b has not answered");
        assert!(q.answer(id, "b", None).is_none());
        // c ended (lost, skipped): not among the unsettled.
        let d = q.complete(&id, ["a", "b"]).expect("complete");
        assert_eq!(d.nodes, ["a", "b"]);
        assert_eq!(d.values, [("a".to_string(), "1".to_string())]);
        assert!(q.complete(&id, ["a", "b"]).is_none(), "once");
        let late = q
            .answer(id, "c", Some("3".into()))
            .expect("the map, at once");
        assert_eq!(late.nodes, ["c"]);
        assert_eq!(late.values.len(), 2);
        q.end(&id);
        assert!(!q.collecting(&id));
    }
}
