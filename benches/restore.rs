//! The restore benchmark: a server restarted over a long history. It runs
//! JOBS jobs printing BYTES each on NODES nodes (default 500 x 1 MiB x 2:
//! a history of about 1 GiB), then kills the server with SIGKILL and
//! restarts it three times, printing how long each restart took until its
//! control socket answered, beside the history's size. A restart reads
//! each finished part's head and skips its output, so the time follows the
//! number of parts, not what they printed.
//!
//! Run: `cargo bench --bench restore` (JOBS, BYTES, NODES in the
//! environment).

#[path = "../tests/util/mod.rs"]
mod util;

use std::time::{Duration, Instant};

fn main() {
    let jobs = util::env_usize("JOBS", 500);
    let bytes = util::env_usize("BYTES", 1 << 20);
    let nodes = util::env_usize("NODES", 2);
    let names: Vec<String> = (1..=nodes).map(|i| format!("restore-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut c = util::Cluster::start_in(util::bench_cluster("restore", "5"), &refs);
    let job = format!("RUN: --skip-cache head -c {bytes} /dev/zero | tr '\\0' x");
    let file = c.run_file("restore.yml", std::iter::repeat_n(job, jobs));
    let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--wait"]);
    assert_eq!(out.code, 0, "the run failed: {}", out.stderr);
    let history = c.state_path().join("history.bin");
    let size = std::fs::metadata(&history).map_or(0, |m| m.len());
    println!(
        "director restore: {jobs} jobs x {nodes} nodes x {bytes} bytes of output; history.bin {:.0} MiB",
        size as f64 / (1 << 20) as f64
    );
    for round in 1..=3 {
        c.server().signal(libc::SIGKILL);
        c.server().wait_exit(util::DEADLINE);
        let start = Instant::now();
        c.start_server();
        let took = start.elapsed();
        let log = c.server().log_text();
        let restored = log
            .lines()
            .rev()
            .find(|l| l.contains("restored"))
            .unwrap_or("");
        println!(
            "  restart {round}: control socket up after {:.3}s ({})",
            took.as_secs_f64(),
            restored.split("INFO  ").nth(1).unwrap_or(restored)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
