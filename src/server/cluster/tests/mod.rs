//! The cluster's rules, with a made-up clock.

use super::*;
use crate::dsl::Verb;
use crate::wire::Exit;

mod runs;

const IVL: Duration = Duration::from_secs(1);

fn outcome(exit: Exit) -> Outcome {
    Outcome::ended(exit)
}

fn ok() -> Outcome {
    outcome(Exit::Code(0))
}

fn run(cmd: &str) -> Task {
    Task::parse(Verb::Run, cmd).unwrap()
}

fn at(t: Instant) -> Now {
    Now { at: t, ms: 0 }
}

fn sent_jobs(out: &[Effect]) -> Vec<Uuid> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Send {
                msg: ServerMsg::Job { job_id, .. },
                ..
            } => Some(*job_id),
            _ => None,
        })
        .collect()
}

fn greet(instance: u64, seen: Option<Dispatch>, holding: &[Uuid]) -> Greeting<'_> {
    const NOTHING: &crate::facts::Node = &crate::facts::Node {
        facts: crate::facts::Map::new(),
        labels: crate::facts::Map::new(),
    };
    Greeting {
        version: "v",
        ivl: IVL,
        instance,
        seen,
        holding,
        new_link: false,
        about: NOTHING,
    }
}

/// The dispatch of `c`'s job `id` to `node`.
fn dispatch_of(c: &Cluster, id: &Uuid, node: &str) -> Dispatch {
    c.jobs.get(id).unwrap().parts[node]
        .sent_to()
        .unwrap()
        .dispatch
}

/// Two jobs for every node, submitted (and sent) at `t0`.
fn submit_two(c: &mut Cluster, t0: Instant, out: &mut Vec<Effect>) -> [Uuid; 2] {
    [run("1"), run("2")].map(|t| c.submit_now(t, &[], at(t0), out).unwrap().job_id)
}

#[test]
fn a_ready_that_crosses_jobs_on_the_wire_loses_none_of_them() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let [id1, id2] = submit_two(&mut c, t0, &mut out);
    assert_eq!(sent_jobs(&out), vec![id1, id2]);
    // The same process said Ready twice before either job reached it:
    // the second Ready holds nothing, and loses nothing.
    out.clear();
    c.ready("a", greet(1, None, &[]), at(t0), &mut out);
    assert!(fx(&out).is_empty(), "{out:?}");
    assert_eq!(state(&c, &id1, "a"), JobState::Sent);
    assert_eq!(state(&c, &id2, "a"), JobState::Sent);
    // A dispatch seen from another server counts for nothing here.
    let other = Dispatch {
        server: c.instance ^ 1,
        seq: 99,
    };
    c.ready("a", greet(1, Some(other), &[]), at(t0), &mut out);
    assert!(fx(&out).is_empty(), "{out:?}");
    // It saw job 2 and holds it, and never got job 1, sent before it
    // (on a connection since lost): job 1 goes again, nothing is lost.
    let seen2 = dispatch_of(&c, &id2, "a");
    c.ready("a", greet(1, Some(seen2), &[id2]), at(t0), &mut out);
    assert_eq!(sent_jobs(&out), vec![id1]);
    assert!(!out.iter().any(|e| matches!(e, Effect::PartDone { .. })));
    assert!(out.contains(&Effect::Journal(Record::Unsent {
        id: id1,
        node: "a".into()
    })));
    assert_eq!(state(&c, &id1, "a"), JobState::Sent);
    assert!(dispatch_of(&c, &id1, "a").seq > seen2.seq);
    // Another process (the client restarted) may have run them: lost.
    out.clear();
    c.ready("a", greet(2, None, &[id2]), at(t0), &mut out);
    assert_eq!(
        fx(&out),
        vec![
            Effect::PartDone {
                job_id: id1,
                node: "a".into()
            },
            Effect::JobDone { job_id: id1 }
        ]
    );
    assert_eq!(state(&c, &id2, "a"), JobState::Sent);
}

/// A node that reopened its sockets lost what was on its way to the old
/// ones: its first Ready on the new connection has all of it sent again,
/// whatever it saw before. (After a failover, a client that left a server
/// just as that server sent it jobs waited for them forever.)
#[test]
fn a_ready_on_a_new_connection_has_everything_not_held_sent_again() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let [id1, id2] = submit_two(&mut c, t0, &mut out);
    assert_eq!(sent_jobs(&out), vec![id1, id2]);
    out.clear();
    let mut hello = greet(1, None, &[]);
    hello.new_link = true;
    c.ready("a", hello, at(t0), &mut out);
    assert_eq!(sent_jobs(&out), vec![id1, id2]);
    for id in [id1, id2] {
        assert!(out.contains(&Effect::Journal(Record::Unsent {
            id,
            node: "a".into()
        })));
    }
    assert!(!out.iter().any(|e| matches!(e, Effect::PartDone { .. })));
}

/// Jobs that could not be routed go back in the order they were sent, so
/// a node runs them in order once it is back. (Each to the front in turn,
/// two came back reversed: seen after a failover, a run's jobs 102 and
/// 103 ran as 103, 102.)
#[test]
fn jobs_that_cannot_be_routed_go_back_in_their_order() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let ids: Vec<Uuid> = (0..3)
        .map(|i| {
            c.submit_now(run(&i.to_string()), &[], at(t0), &mut out)
                .unwrap()
                .job_id
        })
        .collect();
    assert_eq!(sent_jobs(&out), ids[..2].to_vec());
    c.unroutable("a", ids[0]);
    c.unroutable("a", ids[1]);
    for id in &ids {
        assert_eq!(state(&c, id, "a"), JobState::Queued);
    }
    out.clear();
    c.ready("a", greet(1, None, &[]), at(t0), &mut out);
    assert_eq!(sent_jobs(&out), ids[..2].to_vec());
}

#[test]
fn a_job_names_the_client_process_it_is_for() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    c.ready("a", greet(7, None, &[]), at(t0), &mut out);
    out.clear();
    c.submit_now(run("1"), &[], at(t0), &mut out).unwrap();
    let instances: Vec<u64> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                msg: ServerMsg::Job { instance, .. },
                ..
            } => Some(*instance),
            _ => None,
        })
        .collect();
    assert_eq!(instances, vec![7]);
}

#[test]
fn after_a_server_restart_jobs_that_never_reached_the_same_process_go_again() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let [id1, id2] = submit_two(&mut c, t0, &mut out);
    let seen1 = dispatch_of(&c, &id1, "a");
    let mut r = Cluster::restore(records(&c), IVL, at(t0));
    assert_eq!(state(&r, &id2, "a"), JobState::Sent);
    // The process that got job 1 and not job 2 comes back.
    out.clear();
    r.ready("a", greet(1, Some(seen1), &[id1]), at(t0), &mut out);
    assert_eq!(sent_jobs(&out), vec![id2]);
    assert_eq!(dispatch_of(&r, &id2, "a").server, r.instance);
    assert!(!out.iter().any(|e| matches!(e, Effect::PartDone { .. })));
}

/// The snapshot's records (nothing is spilled without a loop).
fn records(c: &Cluster) -> Vec<Record> {
    c.snapshot()
        .map(|item| match item {
            Item::New(r) => r,
            Item::Copy(_) => unreachable!("nothing is spilled in these tests"),
        })
        .collect()
}

/// What the loop sees of `out`, without the records to journal.
fn fx(out: &[Effect]) -> Vec<Effect> {
    out.iter()
        .filter(|e| !matches!(e, Effect::Journal(_)))
        .cloned()
        .collect()
}

impl Cluster {
    /// Submit and release at once, as the loop does once the records
    /// are durable.
    fn submit_now(
        &mut self,
        task: Task,
        targets: &[String],
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Result<Submitted, String> {
        let s = self
            .submit(task, targets, &[], now, out)
            .map_err(|e| e.to_string())?;
        self.release(&[s.job_id], now, out);
        Ok(s)
    }

    fn orchestrate_now(
        &mut self,
        blocks: Vec<Block>,
        dry_run: bool,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> Result<Plan, String> {
        let plan = self
            .orchestrate(blocks, &[], None, dry_run, now, out)
            .map_err(|e| e.to_string())?;
        let ids: Vec<Uuid> = plan.jobs.iter().filter_map(|j| j.job_id).collect();
        self.release(&ids, now, out);
        Ok(plan)
    }
}

/// A block of `tasks` for `targets` (empty: every node), not rolling.
fn block(targets: &[&str], tasks: Vec<Task>) -> Block {
    Block::of(targets.iter().map(|t| t.to_string()).collect(), tasks)
}

fn cluster(nodes: &[&str], t0: Instant) -> Cluster {
    let mut c = Cluster::default();
    for n in nodes {
        c.ready(n, greet(1, None, &[]), at(t0), &mut Vec::new());
    }
    c
}

fn state(c: &Cluster, id: &Uuid, node: &str) -> JobState {
    c.part_view(id, node).unwrap().state
}

/// Run `runs` orchestrations of `per_run` jobs on `nodes`, each part
/// printing 3 KB, its record "journaled" as the loop does (spilled at
/// a made-up span) once its effects are carried out.
fn run_history(c: &mut Cluster, nodes: &[String], runs: usize, per_run: usize, t0: Instant) {
    let mut at_byte = 0;
    for _ in 0..runs {
        let mut out = Vec::new();
        let tasks = (0..per_run)
            .map(|_| run("--skip-cache printf '%03000d' 0"))
            .collect();
        let blocks = vec![block(&[], tasks)];
        let plan = c.orchestrate_now(blocks, false, at(t0), &mut out).unwrap();
        for id in plan.jobs.iter().filter_map(|j| j.job_id) {
            // As every submission is now: recorded with who made it.
            assert!(c.set_by(&id, "token ci-deploy"));
            for n in nodes {
                let mut o = ok();
                o.stdout = vec![b'0'; 3000];
                c.finished(n, id, o, at(t0), &mut out);
            }
            for e in out.drain(..) {
                if let Effect::Journal(Record::Done { id, node, .. }) = e {
                    c.spilled(
                        &id,
                        &node,
                        Span {
                            at: at_byte,
                            len: 3100,
                        },
                    );
                    at_byte += 3100;
                }
            }
        }
    }
}

#[test]
fn a_retained_job_costs_the_server_a_bounded_few_hundred_bytes() {
    // The soak benchmark's history (jobs of 3 KB of output on 6 nodes,
    // in runs of 1000), measured on the heap: what memory keeps of a
    // finished job must not depend on its output, and stays small
    // enough that the default 10,000 retained jobs cost a few MiB.
    let t0 = Instant::now();
    let nodes: Vec<String> = (1..=6).map(|i| format!("soak-{i}")).collect();
    let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let mut c = cluster(&names, t0);
    run_history(&mut c, &nodes, 1, 1000, t0);
    let before = crate::heapcount::live();
    run_history(&mut c, &nodes, 10, 1000, t0);
    let per_job = (crate::heapcount::live() - before) / 10_000;
    eprintln!("a retained job costs {per_job} bytes of heap");
    assert!(per_job <= 512, "a retained job costs {per_job} bytes");
}

#[test]
fn a_compacted_journal_is_copied_in_a_few_pieces_and_every_output_reads_back() {
    use crate::journal::Journal;
    let dir = std::env::temp_dir().join(format!("director-compact-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut j, _) = Journal::open::<Record>(&dir, "history.bin").unwrap();
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b"], t0);
    // Records written as the loop writes them, places told back.
    let write = |c: &mut Cluster, j: &mut Journal, out: &mut Vec<Effect>| {
        for e in out.drain(..) {
            if let Effect::Journal(rec) = e {
                let span = j.append(&rec);
                match rec {
                    Record::Submitted { id, .. } => c.submission_at(&id, span),
                    Record::Done { id, node, .. } => c.spilled(&id, &node, span),
                    _ => {}
                }
            }
        }
    };
    let mut out = Vec::new();
    let tasks = (0..20).map(|i| run(&format!("echo {i}"))).collect();
    let blocks = vec![block(&[], tasks)];
    // As the loop does: the submission is journaled, then released.
    let plan = c
        .orchestrate(blocks, &[], None, false, at(t0), &mut out)
        .unwrap();
    write(&mut c, &mut j, &mut out);
    let ids: Vec<Uuid> = plan.jobs.iter().filter_map(|p| p.job_id).collect();
    c.release(&ids, at(t0), &mut out);
    write(&mut c, &mut j, &mut out);
    for (i, id) in ids.iter().enumerate() {
        for n in ["a", "b"] {
            let mut o = ok();
            o.stdout = format!("{n}-{i}").into_bytes();
            c.finished(n, *id, o, at(t0), &mut out);
        }
        write(&mut c, &mut j, &mut out);
    }
    j.sync_now().unwrap();
    let outputs = |c: &Cluster, j: &Journal| -> Vec<String> {
        let r = j.reader();
        c.jobs
            .iter()
            .flat_map(|job| job.parts.values().map(|p| p.span().unwrap()))
            .map(|span| match r.read::<Record>(span).unwrap() {
                Record::Done { part, .. } => {
                    String::from_utf8(part.outcome.unwrap().stdout).unwrap()
                }
                other => panic!("not a part's record: {other:?}"),
            })
            .collect()
    };
    let want: Vec<String> = (0..20)
        .flat_map(|i| [format!("a-{i}"), format!("b-{i}")])
        .collect();
    assert_eq!(outputs(&c, &j), want);
    // The first compaction gathers each job's records, which the
    // journal holds apart (dispatches in between).
    let (rw, _) = super::super::storage::compact(&mut c, &mut j);
    assert!(rw.pieces() > 2, "{} pieces", rw.pieces());
    rw.run().map_err(|(_, e)| e).unwrap();
    assert_eq!(outputs(&c, &j), want);
    // After it, the jobs are one copy, encoding nothing again; only the
    // two nodes' records are new bytes.
    let (rw, _) = super::super::storage::compact(&mut c, &mut j);
    assert_eq!(rw.pieces(), 2);
    rw.run().map_err(|(_, e)| e).unwrap();
    assert_eq!(outputs(&c, &j), want);
    drop(j);
    let (_, recs) = Journal::open::<Record>(&dir, "history.bin").unwrap();
    assert_eq!(recs.len(), 2 + 20 * 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_targets_are_refused_and_nothing_is_queued() {
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b"], t0);
    let mut out = Vec::new();
    let e = c
        .submit_now(run("x"), &["a".into(), "zz".into()], at(t0), &mut out)
        .unwrap_err();
    assert_eq!(e, "unknown target node 'zz' (known nodes: a, b)");
    assert!(out.is_empty());
    assert!(c.list_jobs().is_empty());
    assert!(Cluster::default()
        .submit_now(run("x"), &[], at(t0), &mut out)
        .unwrap_err()
        .contains("no node is online"));
    // One bad block refuses the whole orchestration.
    let blocks = vec![block(&[], vec![run("1")]), block(&["nope"], vec![run("2")])];
    let e = c
        .orchestrate_now(blocks, false, at(t0), &mut out)
        .unwrap_err();
    assert_eq!(e, "block 2: unknown target node 'nope' (known nodes: a, b)");
    assert!(out.is_empty() && c.list_jobs().is_empty());
}

#[test]
fn jobs_flow_in_order_within_the_window() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let ids: Vec<Uuid> = (0..5)
        .map(|i| {
            c.submit_now(run(&i.to_string()), &[], at(t0), &mut out)
                .unwrap()
                .job_id
        })
        .collect();
    assert_eq!(sent_jobs(&out), ids[..WINDOW].to_vec());
    out.clear();
    c.finished("a", ids[0], ok(), at(t0), &mut out);
    // The result is recorded first; its ack comes last, held by the
    // loop until that record is durable.
    assert!(matches!(out[0], Effect::Journal(Record::Done { .. })));
    assert_eq!(
        out.last(),
        Some(&Effect::Send {
            node: "a".into(),
            msg: ServerMsg::ResultAck { job_id: ids[0] }
        })
    );
    assert!(out.contains(&Effect::JobDone { job_id: ids[0] }));
    assert_eq!(sent_jobs(&out), vec![ids[2]]);
    // A resent result is acknowledged and changes nothing.
    out.clear();
    c.finished("a", ids[0], ok(), at(t0), &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn a_query_answers_once_every_target_answered_or_ended_and_lies_are_dropped() {
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b", "c"], t0);
    let mut out = Vec::new();
    let task = Task::parse(crate::dsl::Verb::Query, "addr").unwrap();
    let id = c.submit_now(task, &[], at(t0), &mut out).unwrap().job_id;
    let plain = c
        .submit_now(run("x"), &["a".into()], at(t0), &mut out)
        .unwrap()
        .job_id;
    // Who got a map, and the map.
    type Sent = (Vec<String>, Vec<(String, String)>);
    let maps = |out: &[Effect]| -> Vec<Sent> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Broadcast {
                    nodes,
                    msg: ServerMsg::QueryResult { values, .. },
                } => Some((nodes.clone(), values.clone())),
                _ => None,
            })
            .collect()
    };
    out.clear();
    assert!(c
        .query_value("a", id, Some("10.0.0.1".into()), &mut out)
        .is_none());
    assert!(c.query_value("b", id, None, &mut out).is_none());
    assert!(maps(&out).is_empty(), "c has not answered");
    // Lies: a job that is not a QUERY, a node it was not sent to, a
    // value past the cap.
    assert!(c
        .query_value("a", plain, Some("x".into()), &mut out)
        .is_some());
    assert!(c
        .query_value("zz", id, Some("x".into()), &mut out)
        .is_some());
    let long = "x".repeat(QUERY_VALUE_CAP + 1);
    assert!(c.query_value("a", id, Some(long), &mut out).is_some());
    // c goes silent and is lost: the map goes to a and b, without c.
    c.heartbeat("a", IVL, at(t0 + Duration::from_secs(2)));
    c.heartbeat("b", IVL, at(t0 + Duration::from_secs(2)));
    out.clear();
    assert_eq!(c.expire(at(t0 + Duration::from_secs(3)), &mut out), ["c"]);
    assert_eq!(
        maps(&out),
        [(
            vec!["a".to_string(), "b".to_string()],
            vec![("a".to_string(), "10.0.0.1".to_string())]
        )]
    );
    // Once only, even if a answers again (a resend after a reconnect).
    out.clear();
    c.query_value("a", id, Some("10.0.0.1".into()), &mut out);
    assert_eq!(maps(&out).len(), 1, "a late answer gets the map at once");
    assert_eq!(maps(&out)[0].0, ["a"]);
}

#[test]
fn expiry_loses_unfinished_parts_only_on_the_dead_node() {
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b"], t0);
    let mut out = Vec::new();
    let id = c
        .submit_now(run("x"), &[], at(t0), &mut out)
        .unwrap()
        .job_id;
    out.clear();
    let t1 = t0 + Duration::from_millis(2500);
    c.finished("b", id, ok(), at(t1), &mut out);
    assert_eq!(
        c.heartbeat("b", IVL, at(t1)),
        ServerMsg::HeartbeatAck {
            expires_in_ms: 3000
        }
    );
    assert!(c
        .expire(at(t0 + Duration::from_millis(2999)), &mut out)
        .is_empty());
    out.clear();
    assert_eq!(
        c.expire(at(t0 + Duration::from_secs(3)), &mut out),
        vec!["a".to_string()]
    );
    assert_eq!(
        fx(&out),
        vec![
            Effect::PartDone {
                job_id: id,
                node: "a".into()
            },
            Effect::JobDone { job_id: id }
        ]
    );
    let detail = c.job_info(&id).unwrap().0;
    assert_eq!(detail.nodes[0].state, JobState::Lost);
    assert!(detail.nodes[0]
        .message
        .as_deref()
        .unwrap()
        .contains("expired"));
    assert_eq!(detail.nodes[1].state, JobState::Succeeded);
    assert_eq!(c.heartbeat("a", IVL, at(t1)), ServerMsg::Register);
}

#[test]
fn a_restarted_client_loses_what_it_no_longer_holds() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let [id1, id2] = submit_two(&mut c, t0, &mut out);
    out.clear();
    // A new client process (instance 2) holds only the second.
    c.ready("a", greet(2, None, &[id2]), at(t0), &mut out);
    assert_eq!(
        fx(&out),
        vec![
            Effect::PartDone {
                job_id: id1,
                node: "a".into()
            },
            Effect::JobDone { job_id: id1 }
        ]
    );
    assert_eq!(state(&c, &id2, "a"), JobState::Sent);
}

#[test]
fn unroutable_jobs_wait_for_the_next_ready() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let id = c
        .submit_now(run("1"), &[], at(t0), &mut out)
        .unwrap()
        .job_id;
    c.unroutable("a", id);
    assert_eq!(c.heartbeat("a", IVL, at(t0)), ServerMsg::Register);
    assert_eq!(state(&c, &id, "a"), JobState::Queued);
    out.clear();
    c.ready("a", greet(1, None, &[]), at(t0), &mut out);
    assert_eq!(sent_jobs(&out), vec![id]);
}

#[test]
fn a_failure_skips_the_rest_of_the_run_on_that_node_only() {
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b"], t0);
    let mut out = Vec::new();
    let tasks = (0..4).map(|i| run(&i.to_string())).collect();
    let plan = c
        .orchestrate_now(vec![block(&[], tasks)], false, at(t0), &mut out)
        .unwrap();
    let parent = plan.parent_id.unwrap();
    let ids: Vec<Uuid> = plan.jobs.iter().map(|j| j.job_id.unwrap()).collect();
    out.clear();
    // Job 0 fails on a: job 1 is already on the node (it skips it
    // itself); jobs 2 and 3 are skipped here.
    c.finished("a", ids[0], outcome(Exit::Code(1)), at(t0), &mut out);
    assert_eq!(state(&c, &ids[2], "a"), JobState::Skipped);
    assert_eq!(state(&c, &ids[3], "a"), JobState::Skipped);
    assert_eq!(state(&c, &ids[1], "a"), JobState::Sent);
    assert!(sent_jobs(&out).is_empty());
    c.finished(
        "a",
        ids[1],
        outcome(Exit::SkippedAfterFailure),
        at(t0),
        &mut out,
    );
    assert_eq!(state(&c, &ids[1], "a"), JobState::Skipped);
    // b carries on; the run ends when b is done.
    out.clear();
    for id in &ids {
        assert!(!out.contains(&Effect::ParentDone { parent_id: parent }));
        c.finished("b", *id, ok(), at(t0), &mut out);
    }
    assert!(out.contains(&Effect::ParentDone { parent_id: parent }));
    let views = c.parent_views(&parent);
    assert_eq!(views.len(), 4);
    assert!(views.iter().all(|v| v.states[&JobState::Succeeded] == 1));
}
