//! Servers on etcd: what a failover costs, and what etcd costs a run.
//!
//! 1. The 1000-job orchestration (`RUN: --skip-cache echo hello world` on 6
//!    nodes, `--wait`) on a single server and on two servers sharing a
//!    3-member etcd, alternated in the same run (medians of ROUNDS each).
//! 2. KILLS times: `kill -9` of the active server; how long until the
//!    standby leads (its log says so), and until a job submitted to it has
//!    run on every node (the first job after the kill, from the CLI's
//!    first try). The killed server comes back as a standby before the
//!    next kill. Heartbeat 1 s, `--etcd-lease 2`.
//!
//! Run: `cargo bench --bench failover` (needs `etcd`, Debian's
//! etcd-server). JOBS, NODES, ROUNDS and KILLS may be set.

#[path = "../tests/util/mod.rs"]
mod util;

use std::time::{Duration, Instant};

use util::ha::HaCluster;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(out: util::Out, what: &str) {
    assert_eq!(out.code, 0, "{what} failed: {}", out.stderr);
}

fn main() {
    let jobs = util::env_usize("JOBS", 1000);
    let nodes = util::env_usize("NODES", 6);
    let rounds = util::env_usize("ROUNDS", 3);
    let kills = util::env_usize("KILLS", 10);
    let names: Vec<String> = (1..=nodes).map(|i| format!("fo-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();

    let single = util::Cluster::start_in(util::bench_cluster("fo-single", "5"), &refs);
    let Some(ha) = HaCluster::start_with("fo-ha", 2, &refs, "5", "5") else {
        println!("etcd is not installed (apt-get install etcd-server): nothing measured");
        return;
    };
    let file_single = single.echo_run_file(jobs);
    let file_ha = ha.c.echo_run_file(jobs);
    println!("orchestrate --wait: {jobs} jobs x {nodes} nodes, CURVE on, single server and two servers on a 3-member etcd, alternated");
    let (mut s, mut h) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let t = Instant::now();
        run(
            single.cli(&["orchestrate", file_single.to_str().unwrap(), "--wait"]),
            "single",
        );
        let ts = t.elapsed().as_secs_f64();
        let etcd_cpu = || -> f64 { ha.etcd.pids().iter().map(util::cpu_secs).sum() };
        let seq = || {
            std::fs::read_to_string(ha.state(0).join("replica.seq"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (e0, q0) = (etcd_cpu(), seq());
        let leader_cpu = || util::cpu_secs(ha.servers[0].as_ref().unwrap().pid());
        let hc0 = leader_cpu();
        let t = Instant::now();
        run(
            ha.cli(0, &["orchestrate", file_ha.to_str().unwrap(), "--wait"]),
            "on etcd",
        );
        let th = t.elapsed().as_secs_f64();
        let hc1 = leader_cpu();
        println!(
            "  round {round}: single {ts:.3}s, on etcd {th:.3}s ({:.2}x); the active server's CPU {:.2}s, etcd's CPU {:.2}s, {} entries written to etcd",
            th / ts,
            hc1 - hc0,
            etcd_cpu() - e0,
            seq() - q0
        );
        s.push(ts);
        h.push(th);
    }
    let (ms, mh) = (median(s), median(h));
    println!("single server (median of {rounds}):  {ms:.3}s");
    println!("on etcd (median of {rounds}):        {mh:.3}s");
    println!("ratio on etcd / single:          {:.2}", mh / ms);
    drop(single);
    drop(ha);

    let Some(mut ha) = HaCluster::start_with("fo-kill", 2, &refs[..3.min(nodes)], "1", "2") else {
        return;
    };
    let three = &refs[..3.min(nodes)];
    println!("failover: kill -9 of the active server, {kills} times; heartbeat 1 s, --etcd-lease 2, {} nodes", three.len());
    let mut leader = 0;
    let (mut lead_t, mut job_t) = (Vec::new(), Vec::new());
    for kill in 1..=kills {
        let standby = 1 - leader;
        let before = ha.log(standby).matches("won the lead in etcd").count();
        let t = Instant::now();
        ha.server(leader).signal(libc::SIGKILL);
        ha.server(leader).wait_exit(util::DEADLINE);
        let mut led = None;
        let mut done = None;
        let mut k = 0;
        while done.is_none() {
            assert!(t.elapsed() < util::DEADLINE, "no failover within a minute");
            if led.is_none() && ha.log(standby).matches("won the lead in etcd").count() > before {
                led = Some(t.elapsed());
            }
            k += 1;
            let out = ha.cli(
                standby,
                &[
                    "exec",
                    "--verb",
                    "RUN",
                    "--wait",
                    &format!("echo {kill}-{k}"),
                ],
            );
            if out.code == 0 && out.stdout.matches("succeeded").count() >= 1 {
                done = Some(t.elapsed());
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let led = led.unwrap_or_else(|| t.elapsed());
        let done = done.unwrap_or_default();
        println!(
            "  kill {kill}: s{standby} leads after {:.2}s, a job ran on every node after {:.2}s",
            led.as_secs_f64(),
            done.as_secs_f64()
        );
        lead_t.push(led.as_secs_f64());
        job_t.push(done.as_secs_f64());
        // The killed server comes back as a standby and catches up.
        ha.start_server(leader);
        ha.wait_log(
            leader,
            &format!("standing by: the active server is s{standby}"),
        );
        leader = standby;
    }
    let max = |v: &Vec<f64>| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "standby leads after a kill: median {:.2}s, worst {:.2}s",
        median(lead_t.clone()),
        max(&lead_t)
    );
    println!(
        "first job run on every node: median {:.2}s, worst {:.2}s (goal: under 5 s)",
        median(job_t.clone()),
        max(&job_t)
    );
}
