//! The `async` benchmark: an orchestration of 4 blocks of 50 `sleep 0.05`
//! jobs on 3 nodes on loopback, run once with every block `async: true`
//! (the blocks' lanes side by side on each node) and once without (one job
//! at a time), in the same run on the same cluster. The serial run is the
//! baseline: async should take about a quarter of it, since each node runs
//! the 4 lanes at once and each lane's 50 jobs in order.
//!
//! Run: `cargo bench --bench async` (BLOCKS, JOBS, NODES and SLEEP may be
//! set in the environment).

#[path = "../tests/util/mod.rs"]
mod util;

use std::fmt::Write;
use std::time::{Duration, Instant};

fn main() {
    let blocks = util::env_usize("BLOCKS", 4);
    let jobs = util::env_usize("JOBS", 50);
    let nodes = util::env_usize("NODES", 3);
    let sleep = std::env::var("SLEEP").unwrap_or_else(|_| "0.05".into());
    let names: Vec<String> = (1..=nodes).map(|i| format!("async-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let c = util::Cluster::start_in(util::bench_cluster("async-bench", "5"), &refs);
    let file = |concurrent: bool| {
        let mut y = String::new();
        for b in 0..blocks {
            if concurrent {
                y.push_str("- async: true\n  jobs:\n");
            } else {
                y.push_str("- jobs:\n");
            }
            for j in 0..jobs {
                let _ = writeln!(y, "  - RUN: --skip-cache sleep {sleep} # {b}-{j}");
            }
        }
        let path = c.dir.path.join(if concurrent {
            "async.yaml"
        } else {
            "serial.yaml"
        });
        std::fs::write(&path, y).unwrap();
        path
    };
    let run = |path: &std::path::Path| -> Duration {
        let start = Instant::now();
        let out = c.cli(&["orchestrate", "--wait", path.to_str().unwrap()]);
        let took = start.elapsed();
        assert_eq!(out.code, 0, "{out:?}");
        took
    };
    let (serial, concurrent) = (file(false), file(true));
    println!(
        "{blocks} blocks x {jobs} `sleep {sleep}` jobs on {nodes} nodes ({} jobs per node)",
        blocks * jobs
    );
    let mut best = (Duration::MAX, Duration::MAX);
    for round in 1..=2 {
        let s = run(&serial);
        let a = run(&concurrent);
        println!(
            "  round {round}: one at a time {:.3}s, async {:.3}s",
            s.as_secs_f64(),
            a.as_secs_f64()
        );
        best = (best.0.min(s), best.1.min(a));
    }
    println!("one at a time (best of 2):  {:.3}s", best.0.as_secs_f64());
    println!("async (best of 2):          {:.3}s", best.1.as_secs_f64());
    println!(
        "async / one at a time:      {:.2} (the lanes' bound: {:.2})",
        best.1.as_secs_f64() / best.0.as_secs_f64(),
        1.0 / blocks.min(LANES) as f64
    );
}

/// How many lanes a node runs at once (`wire::LANES`).
const LANES: usize = 8;
