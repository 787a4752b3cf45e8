//! The API under load beside real work: the 1000 x 6 orchestration of
//! `benches/orchestrate.rs`, run once quietly and once with 50 readers of
//! the event stream (every submission, part and job of it reaches each)
//! and 200 API requests a second (a new connection each: nodes, the last
//! jobs, metrics, the failed jobs, in turn). Prints both orchestration times against the
//! fork/exec floor measured in the same run, the API's latency (p50, p99,
//! max), and what each event reader received.
//!
//! Run: `cargo bench --bench api` (JOBS, NODES, READERS and RATE may be
//! set in the environment).

#[path = "../tests/util/mod.rs"]
mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn orchestrate(c: &util::Cluster, file: &std::path::Path) -> Duration {
    let start = Instant::now();
    let out = c.cli(&["orchestrate", file.to_str().unwrap(), "--wait"]);
    assert_eq!(out.code, 0, "orchestration failed: {}", out.stderr);
    start.elapsed()
}

/// One GET on a new connection; its status.
fn get(port: u16, path: &str, token: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let jobs = util::env_usize("JOBS", 1000);
    let nodes = util::env_usize("NODES", 6);
    let readers = util::env_usize("READERS", 50);
    let rate = util::env_usize("RATE", 200);
    let names: Vec<String> = (1..=nodes).map(|i| format!("api-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut c = util::bench_cluster("api-bench", "5");
    c.with_api();
    let c = util::Cluster::start_in(c, &refs);
    let out = c.cli(&["manage", "--create-token", "bench", "--role", "read"]);
    assert_eq!(out.code, 0, "{out:?}");
    let token = out.stdout.lines().last().unwrap().to_owned();
    let port = c.api_port.unwrap();
    let yaml: String = std::iter::once("- jobs:\n".to_owned())
        .chain((0..jobs).map(|_| "  - RUN: --skip-cache echo hello world\n".to_owned()))
        .collect();
    let file = c.dir.path.join("bench.yml");
    std::fs::write(&file, yaml).unwrap();
    println!("{jobs} jobs x {nodes} nodes; {readers} event readers and {rate} API requests/s during the loaded run");

    let server = c.server.as_ref().unwrap().pid().to_string();
    let fl = util::shell_floor(nodes, jobs);
    let s0 = util::cpu_secs(&server);
    let quiet = orchestrate(&c, &file);
    let server_quiet = util::cpu_secs(&server) - s0;

    // The load: readers of the whole event stream, and a steady rate of
    // requests from a few threads.
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..readers {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET /api/v1/events HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let (stop, events) = (stop.clone(), events.clone());
        streams.push(std::thread::spawn(move || {
            // Read in large chunks and count event lines: the load must
            // cost this process little, since it shares the machine.
            let mut buf = vec![0u8; 256 << 10];
            let mut carry: Vec<u8> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        carry.extend_from_slice(&buf[..n]);
                        let found = carry.windows(8).filter(|w| w == b"\nevent: ").count();
                        events.fetch_add(found as u64, Ordering::Relaxed);
                        // Keep what could start a match cut by this read.
                        let keep = carry.len().min(7);
                        carry.drain(..carry.len() - keep);
                    }
                    Err(_) => {}
                }
            }
        }));
    }
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let senders = 4;
    let per_sender = Duration::from_secs_f64(senders as f64 / rate as f64);
    let mut load = Vec::new();
    for k in 0..senders {
        let (stop, latencies, failures, token) = (
            stop.clone(),
            latencies.clone(),
            failures.clone(),
            token.clone(),
        );
        load.push(std::thread::spawn(move || {
            let paths = [
                "/api/v1/nodes",
                "/api/v1/jobs?limit=20",
                "/metrics",
                "/api/v1/jobs?state=failed&limit=20",
            ];
            let mut next = Instant::now() + per_sender.mul_f64(k as f64 / senders as f64);
            let mut i = k;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep(next - now);
                }
                next += per_sender;
                let started = Instant::now();
                let status = get(port, paths[i % paths.len()], &token);
                let took = started.elapsed();
                i += 1;
                if status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().unwrap().push(took);
            }
        }));
    }
    let own_before = util::cpu_secs("self");
    let s0 = util::cpu_secs(&server);
    let loaded = orchestrate(&c, &file);
    let server_loaded = util::cpu_secs(&server) - s0;
    let own = util::cpu_secs("self") - own_before;
    stop.store(true, Ordering::Relaxed);
    for t in load.into_iter().chain(streams) {
        t.join().unwrap();
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "floor (6 parallel loops of sh -c):       {:.3}s",
        fl.as_secs_f64()
    );
    println!(
        "orchestrate, API idle:                   {:.3}s  ({:.2}x the floor)",
        quiet.as_secs_f64(),
        quiet.as_secs_f64() / fl.as_secs_f64()
    );
    println!(
        "orchestrate, API under load:             {:.3}s  ({:.2}x the floor)",
        loaded.as_secs_f64(),
        loaded.as_secs_f64() / fl.as_secs_f64()
    );
    println!(
        "API requests: {} ({:.0}/s), failed {}; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        lat.len() as f64 / loaded.as_secs_f64(),
        failures.load(Ordering::Relaxed),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    println!(
        "the server's CPU: {server_quiet:.2}s for the idle run, {server_loaded:.2}s for the loaded one"
    );
    println!(
        "the load generator's own CPU during the loaded run: {own:.2}s (on 2 cores, about {:.0}% of its wall time)",
        own / 2.0 / loaded.as_secs_f64() * 100.0
    );
    println!(
        "events received per reader: {:.0} (the run has {} parts and {} jobs)",
        events.load(Ordering::Relaxed) as f64 / readers.max(1) as f64,
        jobs * nodes,
        jobs
    );
}
