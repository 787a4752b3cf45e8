//! The 1000-job benchmark: a server and 6 clients on loopback run an
//! orchestration of 1000 `RUN: --skip-cache echo hello world` jobs on all 6
//! nodes to completion. In the same run it times the floor: 6 parallel loops
//! of 1000 `sh -c 'echo hello world'` with their output captured, which is the
//! process-starting work the nodes cannot avoid. It prints both and their
//! ratio; near 1 means director's own overhead vanishes next to that floor.
//!
//! Run: `cargo bench --bench orchestrate` (JOBS and NODES may be set in the
//! environment to change the size).
//! The cluster runs with CURVE, as by default; `CURVE=off` measures it
//! without, to see what encryption costs. `FOLLOW=1` runs it with
//! `--follow`: every line of every node streamed to the CLI as it comes.

#[path = "../tests/util/mod.rs"]
mod util;

use std::time::{Duration, Instant};

fn director(c: &util::Cluster, file: &std::path::Path, follow: bool) -> Duration {
    let mut args = vec!["orchestrate", file.to_str().unwrap(), "--wait"];
    if follow {
        args.push("--follow");
    }
    let start = Instant::now();
    let out = c.cli(&args);
    let elapsed = start.elapsed();
    assert_eq!(out.code, 0, "orchestration failed: {}", out.stderr);
    if follow {
        let lines = out.stdout.matches("| hello world").count();
        assert!(lines > 0, "nothing was followed: {}", out.stdout);
        println!("    lines shown live: {lines}");
    }
    elapsed
}

/// Context switches of all of `pid`'s threads so far (voluntary and not).
fn switches(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The server's and the clients' context switches so far.
fn daemon_switches(c: &mut util::Cluster) -> (u64, u64) {
    let server = switches(c.server().pid());
    let clients = c.clients.values().map(|p| switches(p.pid())).sum();
    (server, clients)
}

/// The server's and the clients' CPU seconds so far.
fn daemon_cpu(c: &mut util::Cluster) -> (f64, f64) {
    let server = util::cpu_secs(c.server().pid());
    let clients = c.clients.values().map(|p| util::cpu_secs(p.pid())).sum();
    (server, clients)
}

fn main() {
    // `cargo bench` passes `--bench`; this benchmark takes no filter.
    let jobs = util::env_usize("JOBS", 1000);
    let follow = util::env_usize("FOLLOW", 0) == 1;
    let nodes = util::env_usize("NODES", 6);
    let names: Vec<String> = (1..=nodes).map(|i| format!("bench-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut c = util::Cluster::start_in(util::bench_cluster("bench", "5"), &refs);
    let file = c.echo_run_file(jobs);

    println!(
        "director orchestrate{}: {jobs} jobs x {nodes} nodes on loopback ({} processes)",
        if follow { " --follow" } else { "" },
        jobs * nodes
    );
    // Alternate the two so that machine noise hits both alike.
    let mut d = Vec::new();
    let mut f = Vec::new();
    let me = std::process::id() as i32;
    for round in 1..=3 {
        let own = util::cpu_secs(me);
        let fl = util::shell_floor(nodes, jobs);
        let own = util::cpu_secs(me) - own;
        let (s0, c0) = daemon_cpu(&mut c);
        let (w0, x0) = daemon_switches(&mut c);
        let di = director(&c, &file, follow);
        let (s1, c1) = daemon_cpu(&mut c);
        let (w1, x1) = daemon_switches(&mut c);
        let parts = (jobs * nodes) as f64;
        println!(
            "  round {round}: floor {:.3}s (its own CPU per process started: {:.0} us), director {:.3}s (per job part: daemon CPU server {:.0} us, clients {:.0} us; thread switches server {:.1}, clients {:.1})",
            fl.as_secs_f64(),
            own * 1e6 / parts,
            di.as_secs_f64(),
            (s1 - s0) * 1e6 / parts,
            (c1 - c0) * 1e6 / parts,
            (w1 - w0) as f64 / parts,
            (x1 - x0) as f64 / parts,
        );
        f.push(fl);
        d.push(di);
    }
    let best_f = f.iter().min().unwrap().as_secs_f64();
    let best_d = d.iter().min().unwrap().as_secs_f64();
    println!("floor (6 parallel loops of sh -c, best of 3):   {best_f:.3}s");
    println!("director (orchestrate --wait, best of 3):       {best_d:.3}s");
    println!(
        "ratio director / floor:                         {:.2}",
        best_d / best_f
    );
    println!(
        "wall time per job (all nodes in parallel): director {:.0} us, floor {:.0} us",
        best_d * 1e6 / jobs as f64,
        best_f * 1e6 / jobs as f64
    );
}
