//! Rolling runs, offline waits, restarts, retention and purges.

use super::*;

/// The nodes each job was sent to in `out`.
fn sent_nodes(out: &[Effect]) -> Vec<String> {
    let mut nodes: Vec<String> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                node,
                msg: ServerMsg::Job { .. },
            } => Some(node.clone()),
            _ => None,
        })
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

#[test]
fn a_rolling_run_goes_batch_by_batch_and_stops_past_max_fail_even_after_a_restart() {
    use crate::wire::{Amount, Rolling};
    let t0 = Instant::now();
    let names = ["e", "d", "c", "b", "a"];
    let mut c = cluster(&names, t0);
    let mut out = Vec::new();
    let tasks = (0..2).map(|i| run(&i.to_string())).collect();
    let rolling = Rolling {
        batch: Amount::Count(2),
        max_fail: Some(Amount::Count(1)),
    };
    let blocks = vec![block(&[], tasks)];
    let plan = c
        .orchestrate(blocks, &[], Some(rolling), false, at(t0), &mut out)
        .unwrap();
    assert_eq!(plan.batches, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    assert!(matches!(&out[0], Effect::Journal(Record::Rollout { .. })));
    let parent = plan.parent_id.unwrap();
    let ids: Vec<Uuid> = plan.jobs.iter().map(|j| j.job_id.unwrap()).collect();
    out.clear();
    c.release(&ids, at(t0), &mut out);
    // Only the first batch gets work.
    assert_eq!(sent_nodes(&out), ["a", "b"]);
    assert_eq!(state(&c, &ids[0], "c"), JobState::Queued);
    // a fails (1 node: within --max-fail 1), b succeeds: batch 2 starts.
    out.clear();
    c.finished("a", ids[0], outcome(Exit::Code(1)), at(t0), &mut out);
    c.finished(
        "a",
        ids[1],
        outcome(Exit::SkippedAfterFailure),
        at(t0),
        &mut out,
    );
    c.finished("b", ids[0], ok(), at(t0), &mut out);
    // b has both jobs already (two in flight); nothing else moves.
    assert!(sent_nodes(&out).is_empty());
    c.finished("b", ids[1], ok(), at(t0), &mut out);
    assert_eq!(sent_nodes(&out), ["c", "d"]);

    // The server restarts here: batch 2 goes on, batch 3 still waits.
    let mut r = Cluster::restore(records(&c), IVL, at(t0));
    assert_eq!(r.rollouts[&parent].current, 1);
    // c and d still have the jobs sent to them.
    for n in names {
        let holding = if n == "c" || n == "d" { &ids[..] } else { &[] };
        r.ready(n, greet(1, None, holding), at(t0), &mut Vec::new());
    }
    assert_eq!(state(&r, &ids[0], "d"), JobState::Sent);
    assert_eq!(state(&r, &ids[0], "e"), JobState::Queued);
    assert!(r.nodes.get("e").unwrap().queue.is_empty());
    // c fails too: 2 nodes failed, more than 1. e never starts.
    let mut out = Vec::new();
    r.finished("c", ids[0], outcome(Exit::Code(2)), at(t0), &mut out);
    r.finished(
        "c",
        ids[1],
        outcome(Exit::SkippedAfterFailure),
        at(t0),
        &mut out,
    );
    for id in &ids {
        r.finished("d", *id, ok(), at(t0), &mut out);
    }
    assert!(!sent_nodes(&out).contains(&"e".to_string()));
    for id in &ids {
        let e = r.part_view(id, "e").unwrap();
        assert_eq!(e.state, JobState::Skipped);
        assert_eq!(
            e.message.as_deref(),
            Some("not started: 2 nodes failed, more than --max-fail 1 allows")
        );
    }
    assert!(out.contains(&Effect::ParentDone { parent_id: parent }));
}

#[test]
fn a_blocks_batch_rolls_it_and_the_rest_while_earlier_blocks_go_at_once() {
    use crate::wire::{Amount, Rolling};
    let t0 = Instant::now();
    let names = ["a", "b"];
    let mut c = cluster(&names, t0);
    let mut out = Vec::new();
    let block = |tasks, rolling| Block {
        rolling,
        ..block(&[], tasks)
    };
    let one = Some(Rolling {
        batch: Amount::Count(1),
        max_fail: None,
    });
    let blocks = vec![
        block(vec![run("setup")], None),
        block(vec![run("deploy")], one),
        block(vec![run("check")], None),
    ];
    let plan = c
        .orchestrate(blocks.clone(), &[], None, false, at(t0), &mut out)
        .unwrap();
    assert_eq!(plan.batches, [vec!["a"], vec!["b"]]);
    assert!(matches!(
        &out[0],
        Effect::Journal(Record::RolloutFrom { from: 1, .. })
    ));
    let ids: Vec<Uuid> = plan.jobs.iter().map(|j| j.job_id.unwrap()).collect();
    out.clear();
    c.release(&ids, at(t0), &mut out);
    // setup everywhere; deploy only on a (b's waits, and so does its
    // check, which must follow it there).
    assert_eq!(sent_jobs(&out), [ids[0], ids[1], ids[0]]);
    assert_eq!(sent_nodes(&out), ["a", "b"]);
    assert!(c.nodes.get("b").unwrap().queue.is_empty());
    // A restart keeps it so.
    let mut r = Cluster::restore(records(&c), IVL, at(t0));
    for n in names {
        let holding: &[Uuid] = if n == "a" { &ids[..2] } else { &ids[..1] };
        r.ready(n, greet(1, None, holding), at(t0), &mut Vec::new());
    }
    assert!(r.nodes.get("b").unwrap().queue.is_empty());
    // b's setup ending does not move the batch; a's run ending does.
    let mut out = Vec::new();
    r.finished("b", ids[0], ok(), at(t0), &mut out);
    assert!(sent_nodes(&out).is_empty());
    for id in &ids {
        r.finished("a", *id, ok(), at(t0), &mut out);
    }
    assert_eq!(sent_jobs(&out), [ids[2], ids[1], ids[2]]);
    // One rolling block per run, and not with --batch.
    let mut twice = blocks.clone();
    twice[2].rolling = one;
    let e = c
        .orchestrate(twice, &[], None, false, at(t0), &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("block 3: only one block of a run may have batch"),
        "{e}"
    );
    let e = c
        .orchestrate(blocks, &[], one, false, at(t0), &mut out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch cannot be combined with --batch"), "{e}");
}

#[test]
fn a_silent_node_goes_offline_stays_known_across_a_restart_and_gets_nothing() {
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b"], t0);
    let mut out = Vec::new();
    let [queued, behind, third] = ["1", "2", "3"].map(|cmd| {
        c.submit_now(run(cmd), &["b".into()], at(t0), &mut out)
            .unwrap()
            .job_id
    });
    // a beats, b falls silent: after 3 intervals b is offline.
    let later = Now {
        at: t0 + IVL * 4,
        ms: 4000,
    };
    c.heartbeat("a", IVL, later);
    out.clear();
    assert_eq!(c.expire(later, &mut out), ["b"]);
    assert!(out.contains(&Effect::Journal(Record::NodeOffline { name: "b".into() })));
    // What was sent is lost; what waited never reached it.
    assert_eq!(state(&c, &queued, "b"), JobState::Lost);
    assert_eq!(state(&c, &third, "b"), JobState::Unreachable);
    assert!(matches!(state(&c, &behind, "b"), JobState::Lost));
    // A new job for every node goes to those online, and says which
    // known ones it left out; named, b's part ends at once.
    let s = c.submit_now(run("x"), &[], later, &mut out).unwrap();
    assert_eq!((s.targets, s.offline), (vec!["a".into()], vec!["b".into()]));
    assert_eq!(state(&c, &s.job_id, "a"), JobState::Sent);
    let id = c
        .submit_now(run("x"), &["*".into()], later, &mut out)
        .unwrap()
        .job_id;
    assert_eq!(state(&c, &id, "b"), JobState::Unreachable);
    // After a restart b is known and offline; a is expected back, and
    // says so until it is.
    let mut r = Cluster::restore(records(&c), IVL, later);
    let states = |r: &Cluster| -> Vec<(String, NodeState)> {
        r.list_nodes()
            .into_iter()
            .map(|n| (n.name, n.state))
            .collect()
    };
    assert_eq!(
        states(&r),
        [
            ("a".into(), NodeState::Reconnecting),
            ("b".into(), NodeState::Offline)
        ]
    );
    r.ready("a", greet(9, None, &[]), later, &mut out);
    assert_eq!(states(&r)[0], ("a".into(), NodeState::Online));
}

#[test]
fn queue_offline_waits_for_the_node_up_to_the_timeout() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    c.nodes.get_mut("a").unwrap().link = Link::Offline;
    let wait = |c: &mut Cluster, cmd: &str, out: &mut Vec<Effect>| {
        let s = c.submit(run(cmd), &["a".into()], &[], at(t0), out).unwrap();
        c.queue_offline(&[s.job_id], out);
        c.release(&[s.job_id], at(t0), out);
        s.job_id
    };
    let first = wait(&mut c, "--timeout 5 one", &mut out);
    let second = wait(&mut c, "--timeout 50 two", &mut out);
    assert_eq!(state(&c, &first, "a"), JobState::Queued);
    assert_eq!(c.next_expiry(), Some(t0 + Duration::from_secs(5)));
    // The first gives up at its timeout; the second is still waiting.
    let later = Now {
        at: t0 + Duration::from_secs(6),
        ms: 6000,
    };
    out.clear();
    c.expire(later, &mut out);
    assert_eq!(state(&c, &first, "a"), JobState::Unreachable);
    let msg = c.part_view(&first, "a").unwrap().message.unwrap();
    assert!(msg.contains("whole --timeout (5s)"), "{msg}");
    assert_eq!(state(&c, &second, "a"), JobState::Queued);
    // A restart keeps the wait, and its deadline.
    let mut r = Cluster::restore(records(&c), IVL, later);
    assert_eq!(state(&r, &second, "a"), JobState::Queued);
    assert_eq!(r.list_nodes()[0].state, NodeState::Offline);
    assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(50)));
    let mut rout = Vec::new();
    r.ready("a", greet(3, None, &[]), later, &mut rout);
    assert_eq!(sent_jobs(&rout), vec![second]);
    // The node is back: the second goes.
    c.ready("a", greet(2, None, &[]), later, &mut out);
    assert_eq!(sent_jobs(&out), vec![second]);
    // Without --queue-offline, an offline node's part ends at once.
    c.nodes.get_mut("a").unwrap().link = Link::Offline;
    let s = c
        .submit_now(run("three"), &["a".into()], later, &mut out)
        .unwrap();
    assert_eq!(state(&c, &s.job_id, "a"), JobState::Unreachable);
}

#[test]
fn run_once_picks_one_target_and_dry_runs_queue_nothing() {
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b", "c"], t0);
    let mut out = Vec::new();
    c.submit_now(run("busy"), &["a".into()], at(t0), &mut out)
        .unwrap();
    let s = c
        .submit_now(run("--run-once once"), &[], at(t0), &mut out)
        .unwrap();
    assert_eq!(s.targets, vec!["b".to_string()], "the least busy node");
    out.clear();
    let plan = c
        .orchestrate_now(vec![block(&["c"], vec![run("x")])], true, at(t0), &mut out)
        .unwrap();
    assert_eq!(plan.parent_id, None);
    assert_eq!(plan.jobs[0].targets, vec!["c".to_string()]);
    assert_eq!(plan.jobs[0].task_sha1, run("x").sha1());
    assert!(out.is_empty());
    assert_eq!(c.list_jobs().len(), 2);
}

#[test]
fn a_restart_restores_history_queues_and_in_flight_work() {
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b"], t0);
    let mut out = Vec::new();
    let done = c
        .submit_now(run("1"), &["a".into()], at(t0), &mut out)
        .unwrap()
        .job_id;
    c.finished("a", done, ok(), at(t0), &mut out);
    let sent = c
        .submit_now(run("2"), &["a".into()], at(t0), &mut out)
        .unwrap()
        .job_id;
    let _also_sent = c
        .submit_now(run("3"), &["a".into()], at(t0), &mut out)
        .unwrap()
        .job_id;
    let queued = c
        .submit_now(run("4"), &["a".into()], at(t0), &mut out)
        .unwrap()
        .job_id;
    let on_b = c
        .submit_now(run("5"), &["b".into()], at(t0), &mut out)
        .unwrap()
        .job_id;

    let t1 = t0 + Duration::from_secs(10);
    let mut r = Cluster::restore(records(&c), IVL, at(t1));
    assert_eq!(r.list_jobs().len(), 5);
    assert_eq!(state(&r, &done, "a"), JobState::Succeeded);
    assert_eq!(state(&r, &sent, "a"), JobState::Sent);
    assert_eq!(state(&r, &queued, "a"), JobState::Queued);
    // Nothing is sent before the node says Ready; then what it no
    // longer holds is lost, and the queue moves on.
    assert_eq!(r.heartbeat("a", IVL, at(t1)), ServerMsg::Register);
    let mut out = Vec::new();
    // A new client process: what it does not hold may have run.
    r.ready("a", greet(2, None, &[sent]), at(t1), &mut out);
    assert_eq!(state(&r, &_also_sent, "a"), JobState::Lost);
    assert_eq!(sent_jobs(&out), vec![queued]);
    // b never comes back: its work is lost at its expiry.
    r.expire(at(t1 + Duration::from_secs(3)), &mut out);
    assert_eq!(state(&r, &on_b, "b"), JobState::Lost);
}

#[test]
fn a_job_the_node_holds_is_never_sent_twice_even_without_its_dispatch_record() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let id = c
        .submit_now(run("1"), &["a".into()], at(t0), &mut out)
        .unwrap()
        .job_id;
    let lost_record: Vec<Record> = records(&c)
        .into_iter()
        .filter(|r| !matches!(r, Record::Sent { .. } | Record::Dispatched { .. }))
        .collect();
    let mut r = Cluster::restore(lost_record, IVL, at(t0));
    assert_eq!(state(&r, &id, "a"), JobState::Queued);
    let mut out = Vec::new();
    r.ready("a", greet(1, None, &[id]), at(t0), &mut out);
    assert!(sent_jobs(&out).is_empty(), "resent a job the node holds");
    assert_eq!(state(&r, &id, "a"), JobState::Sent);
    r.finished("a", id, ok(), at(t0), &mut out);
    assert_eq!(state(&r, &id, "a"), JobState::Succeeded);
}

/// The sequence a crash loop found: the server died before its
/// dispatch record was durable (the job is restored as queued); the
/// node's resent result arrived before its `Ready`, was recorded and
/// acked (so the node forgot the job); then the node's `Ready` came
/// (twice), holding nothing. The job ran there and has its result: it
/// is never sent again.
#[test]
fn a_result_that_beats_the_ready_after_a_restart_is_never_followed_by_a_resend() {
    // Its Ready, computed after the ack (holding nothing) or before
    // (holding it), in either order.
    for readies in [[false, true], [true, false]] {
        let t0 = Instant::now();
        let mut c = cluster(&["a"], t0);
        let mut out = Vec::new();
        let id = c
            .submit_now(run("echo once >> f"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        let next = c
            .submit_now(run("echo next"), &["a".into()], at(t0), &mut out)
            .unwrap()
            .job_id;
        let lost_dispatch: Vec<Record> = records(&c)
            .into_iter()
            .filter(|r| !matches!(r, Record::Sent { .. } | Record::Dispatched { .. }))
            .collect();
        let mut r = Cluster::restore(lost_dispatch, IVL, at(t0));
        assert_eq!(state(&r, &id, "a"), JobState::Queued);
        let mut out = Vec::new();
        r.finished("a", id, ok(), at(t0), &mut out);
        assert_eq!(state(&r, &id, "a"), JobState::Succeeded);
        assert!(out.contains(&Effect::Send {
            node: "a".into(),
            msg: ServerMsg::ResultAck { job_id: id }
        }));
        let mut sent = Vec::new();
        for holds in readies {
            let holding: &[Uuid] = if holds { &[id] } else { &[] };
            out.clear();
            r.ready("a", greet(1, None, holding), at(t0), &mut out);
            sent.extend(sent_jobs(&out));
            assert_eq!(state(&r, &id, "a"), JobState::Succeeded);
        }
        // The queue goes on with the job after it, once.
        assert_eq!(sent, vec![next], "Readies holding {readies:?}");
        assert_eq!(state(&r, &next, "a"), JobState::Sent);
        // No finished job keeps a place in the node's window.
        let n = r.nodes.get("a").unwrap();
        assert_eq!(n.in_flight, [next]);
        assert!(n.queue.is_empty());
    }
}

#[test]
fn retention_forgets_the_oldest_and_the_old_but_never_unfinished_work() {
    let t0 = Instant::now();
    let mut c = cluster(&["a"], t0);
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let id = c
            .submit_now(run("x"), &[], at(t0), &mut out)
            .unwrap()
            .job_id;
        let now = Now {
            at: t0,
            ms: 1000 * i,
        };
        c.finished("a", id, ok(), now, &mut out);
        ids.push(id);
    }
    // A run with one job still going is kept whole.
    let blocks = vec![block(&[], vec![run("r1"), run("r2")])];
    let plan = c.orchestrate_now(blocks, false, at(t0), &mut out).unwrap();
    let r1 = plan.jobs[0].job_id.unwrap();
    c.finished("a", r1, ok(), Now { at: t0, ms: 0 }, &mut out);
    // At most 3 finished: the two oldest go (r1 waits for its run).
    out.clear();
    assert_eq!(
        c.retain_recent(5000, Duration::from_secs(3600), 3, &mut out),
        2
    );
    assert_eq!(out.len(), 2, "one Forgotten record each");
    assert!(c.job_info(&ids[1]).is_none());
    assert!(c.job_info(&ids[2]).is_some());
    assert!(c.job_info(&r1).is_some());
    // Older than 2 s at 5 s: finished at 0-2 s.
    assert_eq!(
        c.retain_recent(5000, Duration::from_secs(2), 100, &mut out),
        1
    );
    assert!(c.job_info(&ids[2]).is_none());
    assert!(c.job_info(&ids[3]).is_some());
    assert!(c.job_info(&r1).is_some());
}

#[test]
fn purges_keep_active_work() {
    let t0 = Instant::now();
    let mut c = cluster(&["a", "b"], t0);
    let mut out = Vec::new();
    let id = c
        .submit_now(run("1"), &["a".into()], at(t0), &mut out)
        .unwrap()
        .job_id;
    assert_eq!(c.purge_jobs(), (0, 1));
    // Online nodes stay; an offline one with nothing queued goes.
    assert_eq!(c.purge_nodes(&mut out), (0, 2));
    c.nodes.get_mut("b").unwrap().link = Link::Offline;
    out.clear();
    assert_eq!(c.purge_nodes(&mut out), (1, 1));
    assert!(matches!(&out[..], [Effect::Journal(Record::NodeForgotten { name })] if name == "b"));
    c.finished("a", id, ok(), at(t0), &mut out);
    assert_eq!(c.purge_jobs(), (1, 0));
}
