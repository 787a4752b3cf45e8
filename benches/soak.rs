//! The year-of-uptime benchmark: a server and 6 clients on loopback run
//! 100,000 jobs (each printing about 3 KiB on every node), in orchestrations
//! of 1000, with the default retention (10,000 finished jobs). It prints the
//! server's resident memory and its journal's size after 100 and 1000 jobs
//! and every tenth of the run: memory and disk must stay flat in the
//! history's length, bounded by what retention keeps, not by what ran.
//!
//! Run: `cargo bench --bench soak` (JOBS, NODES and BYTES may be set in the
//! environment; the full run takes several minutes on 2 cores).

#[path = "../tests/util/mod.rs"]
mod util;

use std::time::Instant;

/// The server's resident set size, in KiB.
fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A size from the server's `/proc/PID/status`, in KiB. `RssAnon` is the
/// part that is the server's own heap and stacks (the rest is the binary
/// and its libraries, mapped from disk).
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let jobs = util::env_usize("JOBS", 100_000);
    let nodes = util::env_usize("NODES", 6);
    let bytes = util::env_usize("BYTES", 3000);
    let names: Vec<String> = (1..=nodes).map(|i| format!("soak-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut c = util::Cluster::start_in(util::bench_cluster("soak", "5"), &refs);
    let chunk = 1000.min(jobs);
    let yaml = |n: usize| -> String {
        std::iter::once("- jobs:\n".to_owned())
            .chain((0..n).map(|_| format!("  - RUN: --skip-cache printf '%0{bytes}d' 0\n")))
            .collect()
    };
    let file = c.dir.path.join("soak.yml");
    let journal = c.state_path().join("history.bin");
    println!(
        "director soak: {jobs} jobs x {nodes} nodes, {bytes} bytes of output each, default retention"
    );
    println!(
        "{:>9}  {:>12}  {:>12}  {:>14}  {:>8}",
        "jobs", "server RSS", "of it anon", "history.bin", "elapsed"
    );
    let start = Instant::now();
    let mut done = 0;
    let mut first_rss = 0;
    let mut checkpoints: Vec<usize> = [100, 1000]
        .into_iter()
        .chain((1..=10).map(|i| i * jobs / 10))
        .collect();
    checkpoints.sort_unstable();
    checkpoints.retain(|&n| n <= jobs);
    checkpoints.dedup();
    for target in checkpoints {
        while done < target {
            let n = chunk.min(target - done);
            std::fs::write(&file, yaml(n)).unwrap();
            let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--wait"]);
            assert_eq!(out.code, 0, "orchestration failed: {}", out.stderr);
            done += n;
        }
        let rss = rss_kib(c.server().pid());
        let anon = status_kib(c.server().pid(), "RssAnon:");
        if first_rss == 0 {
            first_rss = rss;
        }
        let size = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
        println!(
            "{done:>9}  {:>9.1} MiB  {:>9.1} MiB  {:>10.1} MiB  {:>7.0}s",
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            size as f64 / (1 << 20) as f64,
            start.elapsed().as_secs_f64()
        );
    }
    let last = rss_kib(c.server().pid());
    println!(
        "server RSS after {done} jobs / after 100: {:.2} (the bar: within 2x)",
        last as f64 / first_rss.max(1) as f64
    );
}
