//! The fleet benchmark: one server and N real clients on this machine (a
//! shared key, CURVE on, 5 s heartbeats). It times how long the fleet takes
//! to enroll from nothing, then kills the server with SIGKILL, restarts it
//! at once and times how long until every node is back; it prints the
//! server's CPU time and memory for each phase, and the clients' open
//! descriptors before and after (they must not grow).
//!
//! Run: `cargo bench --bench fleet` (NODES sets the fleet's size, default
//! 1000; IVL the heartbeat interval in seconds, default 5; DOWN how many
//! seconds the server stays down before its restart, default 0). A
//! thousand clients take about 7 GiB of memory and 4,000 threads.

#[path = "../tests/util/mod.rs"]
mod util;

use std::time::{Duration, Instant};

fn rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// How many nodes are online, as the CLI sees them.
fn online(c: &util::Cluster) -> usize {
    let out = c.cli(&["manage", "--list-nodes", "--format", "json"]);
    if out.code != 0 {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v.as_array()
        .map_or(0, |a| a.iter().filter(|n| n["state"] == "online").count())
}

/// Wait until all `n` nodes are online; the time it took, and the counts
/// seen along the way (every 5 s).
fn until_online(c: &util::Cluster, n: usize, since: Instant, limit: Duration) -> Option<Duration> {
    let mut last_said = Instant::now();
    loop {
        let have = online(c);
        if have >= n {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            println!(
                "    gave up after {:.0}s: {have} of {n} online",
                limit.as_secs_f64()
            );
            return None;
        }
        if last_said.elapsed() > Duration::from_secs(5) {
            println!(
                "    {:>6.1}s: {have} of {n} online",
                since.elapsed().as_secs_f64()
            );
            last_said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn client_fds(c: &util::Cluster) -> (usize, usize) {
    let counts: Vec<usize> = c.clients.values().map(|p| fds(p.pid())).collect();
    (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    )
}

fn main() {
    let n = util::env_usize("NODES", 1000);
    let ivl = std::env::var("IVL").unwrap_or_else(|_| "5".into());
    let limit = Duration::from_secs(600);
    let mut c = util::Cluster::new("fleet", &ivl);
    c.start_server();
    println!("director fleet: {n} clients on this machine, CURVE on, heartbeat {ivl}s");
    let server = c.server().pid();
    let cpu0 = util::cpu_secs(server);
    let started = Instant::now();
    for i in 0..n {
        c.start_client(&format!("node-{i:04}"));
    }
    let spawned = started.elapsed();
    let enrolled = until_online(&c, n, started, limit);
    println!(
        "enrolment: {n} clients started in {:.1}s; all online after {}",
        spawned.as_secs_f64(),
        enrolled.map_or("never (see above)".into(), |d| format!(
            "{:.1}s",
            d.as_secs_f64()
        ))
    );
    println!(
        "  server: {:.1} CPU-seconds, {:.0} MiB resident",
        util::cpu_secs(server) - cpu0,
        rss_mib(server)
    );
    let (lo, hi) = client_fds(&c);
    println!("  client descriptors: {lo} to {hi}");

    let down = Duration::from_secs(util::env_usize("DOWN", 0) as u64);
    c.server().signal(libc::SIGKILL);
    c.server().wait_exit(util::DEADLINE);
    // The outage (a measured scenario, not a wait for a condition).
    std::thread::sleep(down);
    let killed = Instant::now();
    c.start_server();
    let server = c.server().pid();
    let cpu0 = util::cpu_secs(server);
    let back = until_online(&c, n, killed, limit);
    println!(
        "recovery after the server's kill -9 and a restart {}: all {n} back after {} (from the restart)",
        if down.is_zero() { "at once".to_owned() } else { format!("{}s later", down.as_secs()) },
        back.map_or("never (see above)".into(), |d| format!("{:.1}s", d.as_secs_f64()))
    );
    println!(
        "  server: {:.1} CPU-seconds, {:.0} MiB resident",
        util::cpu_secs(server) - cpu0,
        rss_mib(server)
    );
    // Steady state: a few intervals later nothing has grown.
    let settle = Duration::from_secs_f64(ivl.parse::<f64>().unwrap_or(5.0) * 6.0);
    std::thread::sleep(settle);
    let (lo2, hi2) = client_fds(&c);
    println!(
        "  client descriptors: {lo2} to {hi2} ({:.0}s later; before the kill: {lo} to {hi})",
        settle.as_secs_f64()
    );
    println!(
        "  server after {:.0}s more: {:.1} CPU-seconds since the restart, {:.0} MiB resident, {} online",
        settle.as_secs_f64(),
        util::cpu_secs(server) - cpu0,
        rss_mib(server),
        online(&c)
    );
}
