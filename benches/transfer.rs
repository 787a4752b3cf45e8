//! The transfer benchmark: one 1 GiB file sent with ADD to 6 clients on
//! loopback, against the floor measured in the same run: 6 parallel `cp` of
//! the same file on the same disk. Prints wall time, throughput, and the peak
//! RSS of the server and of one client, which must not grow with the file.
//!
//! Run: `cargo bench --bench transfer` (SIZE_MB and NODES may be set in the
//! environment; it needs about (NODES × 2 + 1) × SIZE_MB of free disk). The
//! cluster runs with CURVE, as by default; `CURVE=off` measures it without.

#[path = "../tests/util/mod.rs"]
mod util;

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

/// Peak resident set of a process, in MiB.
fn peak_rss_mib(pid: i32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() {
    let size_mb = util::env_usize("SIZE_MB", 1024);
    let nodes = util::env_usize("NODES", 6);
    let names: Vec<String> = (1..=nodes).map(|i| format!("xfer-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut c = util::Cluster::start_in(util::bench_cluster("xfer-bench", "5"), &refs);

    // The source: distinct 1 MiB blocks, written once.
    let src = c.dir.path.join("payload.bin");
    {
        let mut f = fs::File::create(&src).unwrap();
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for i in 0..size_mb {
            block[..8].copy_from_slice(&(i as u64).to_le_bytes());
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
    }
    let total = (size_mb * nodes) as f64;
    println!("ADD of one {size_mb} MiB file to {nodes} clients on loopback ({total} MiB in all)");

    // Floor: parallel cp of the same file on the same disk.
    let floor_dir = c.dir.path.join("floor");
    fs::create_dir_all(&floor_dir).unwrap();
    let start = Instant::now();
    let cps: Vec<_> = (0..nodes)
        .map(|i| {
            Command::new("cp")
                .arg(&src)
                .arg(floor_dir.join(format!("copy-{i}")))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut cp in cps {
        assert!(cp.wait().unwrap().success());
    }
    // cp leaves its data in the page cache; so does the client until its
    // final sync. Count the floor's writeback too, for the same durability.
    Command::new("sync").status().unwrap();
    let floor = start.elapsed();
    fs::remove_dir_all(&floor_dir).unwrap();

    let start = Instant::now();
    let out = c.cli(&[
        "exec",
        "--verb",
        "ADD",
        "--wait",
        &format!("{} received/", src.display()),
    ]);
    let director = start.elapsed();
    assert_eq!(out.code, 0, "ADD failed: {}{}", out.stdout, out.stderr);

    let server_rss = peak_rss_mib(c.server().pid());
    let client_rss = peak_rss_mib(c.client(&names[0]).pid());
    let mbps = |d: Duration| total / d.as_secs_f64();
    println!(
        "floor: {nodes} parallel cp + sync:  {:.3}s  {:.0} MiB/s",
        floor.as_secs_f64(),
        mbps(floor)
    );
    println!(
        "director: exec --verb ADD --wait:  {:.3}s  {:.0} MiB/s",
        director.as_secs_f64(),
        mbps(director)
    );
    println!(
        "ratio director / floor:            {:.2}",
        director.as_secs_f64() / floor.as_secs_f64()
    );
    println!("peak RSS: server {server_rss:.1} MiB, one client {client_rss:.1} MiB (file: {size_mb} MiB)");
}
