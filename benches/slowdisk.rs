//! The slow-disk benchmark: does a disk whose every fsync takes 200 ms slow
//! down the server's loop? A server and 6 clients (heartbeat every 1 s) run
//! an orchestration whose every result must be synced, while the CLI asks
//! `manage --list-nodes` again and again. Printed, with an ordinary disk and
//! with the slow one (an LD_PRELOAD shim on the server): how long each
//! `--list-nodes` took (the whole CLI run, process start included), and the
//! longest silence the server saw from any node: the largest step of a
//! node's last-heard time between two looks (heartbeats and results both
//! count; it must stay under the 1 s interval).
//!
//! Run: `cargo bench --bench slowdisk` (needs a C compiler for the shim;
//! FSYNC_MS changes the delay, JOBS the orchestration's length).

#[path = "../tests/util/mod.rs"]
mod util;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Figures {
    list_ms: Vec<f64>,
    max_gap_ms: u64,
    run_secs: f64,
}

fn measure(label: &str, shim: Option<&std::path::Path>, jobs: usize) -> Figures {
    let mut c = util::bench_cluster(label, "1");
    match shim {
        Some(lib) => c.start_server_env(&[("LD_PRELOAD", lib.to_str().unwrap())]),
        None => c.start_server(),
    }
    let names: Vec<String> = (1..=6).map(|i| format!("{label}-{i}")).collect();
    for n in &names {
        c.start_client(n);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    c.wait_nodes(&refs);
    let yaml: String = std::iter::once("- jobs:\n".to_owned())
        .chain((0..jobs).map(|_| "  - RUN: --skip-cache true\n".to_owned()))
        .collect();
    let file = c.dir.path.join("run.yml");
    std::fs::write(&file, yaml).unwrap();
    let started = Instant::now();
    let mut run = c.cli_background(
        &["orchestrate", file.to_str().unwrap(), "--wait"],
        "run.log",
    );
    let mut list_ms = Vec::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut max_gap_ms = 0;
    while run.is_running() {
        let t = Instant::now();
        let out = c.cli(&["manage", "--list-nodes", "--format", "json"]);
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(out.code, 0, "{out:?}");
        let nodes: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        for n in nodes.as_array().unwrap() {
            let name = n["name"].as_str().unwrap().to_owned();
            let beat = n["last_heartbeat_ms"].as_u64().unwrap();
            if let Some(prev) = last.insert(name, beat) {
                max_gap_ms = max_gap_ms.max(beat.saturating_sub(prev));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run_secs = started.elapsed().as_secs_f64();
    assert!(run.log_text().contains("recap"), "{}", run.log_text());
    Figures {
        list_ms,
        max_gap_ms,
        run_secs,
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let fsync_ms = util::env_usize("FSYNC_MS", 200) as u32;
    let jobs = util::env_usize("JOBS", 1000);
    let dir = util::TestDir::new("slowdisk-shim");
    let Some(shim) = util::slow_fsync_shim(&dir.path, fsync_ms) else {
        println!("skipped: no C compiler for the LD_PRELOAD shim");
        return;
    };
    println!(
        "director with a slow disk: {jobs} jobs x 6 nodes, heartbeat 1 s, --list-nodes every 100 ms"
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>15} {:>8}",
        "", "list p50", "list p99", "list max", "samples", "max silence", "run"
    );
    for (label, shim) in [("ordinary", None), ("slow", Some(shim.as_path()))] {
        let f = measure(label, shim, jobs);
        let name = match shim {
            None => "ordinary disk".to_owned(),
            Some(_) => format!("fsync takes {fsync_ms} ms"),
        };
        println!(
            "{name:<22} {:>7.1}ms {:>7.1}ms {:>7.1}ms {:>9} {:>12} ms {:>7.1}s",
            pct(&f.list_ms, 0.5),
            pct(&f.list_ms, 0.99),
            pct(&f.list_ms, 1.0),
            f.list_ms.len(),
            f.max_gap_ms,
            f.run_secs
        );
    }
    println!("(the bar: --list-nodes under 50 ms, and no node silent for longer than its 1 s interval, on the slow disk too)");
}
