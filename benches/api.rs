//! The API under load beside real work: the 1000 x 6 orchestration of
//! `benches/orchestrate.rs`, run once quietly and once with 50 readers of
//! the event stream (every submission, part and job of it reaches each)
//! and 200 API requests a second (a new connection each: nodes, the last
//! jobs, metrics, the failed jobs, in turn). Prints both orchestration times against the
//! fork/exec floor measured in the same run, the API's latency (p50, p99,
//! max), and what each event reader received. Idle and loaded runs
//! alternate for ROUNDS rounds and medians are compared: on a 2-core box
//! one run's time moves by 10 % from one run to the next.
//!
//! Run: `cargo bench --bench api` (JOBS, NODES, READERS, RATE and ROUNDS
//! may be set in the environment).

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

/// How many `\nevent: ` are in `bytes`: only at line starts, found by
/// their newline (a byte search the compiler makes fast), so that 50
/// readers cost this process little beside the cluster it measures.
fn event_lines(bytes: &[u8]) -> u64 {
    let mut n = 0;
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|b| *b == b'\n') {
        rest = &rest[i + 1..];
        if rest.starts_with(b"event: ") {
            n += 1;
        }
    }
    n
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What one loaded run measured.
struct Loaded {
    took: Duration,
    server_cpu: f64,
    own_cpu: f64,
    latencies: Vec<Duration>,
    failures: u64,
    events_per_reader: f64,
    bytes_per_reader: f64,
}

/// The orchestration with `readers` readers of the event stream and
/// `rate` API requests a second beside it.
fn loaded_run(
    c: &util::Cluster,
    file: &std::path::Path,
    token: &str,
    readers: usize,
    rate: usize,
) -> Loaded {
    let port = c.api_port.unwrap();
    let server = c.server.as_ref().unwrap().pid().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
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
        let (stop, events, bytes) = (stop.clone(), events.clone(), bytes.clone());
        streams.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            let mut carry: Vec<u8> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                        carry.extend_from_slice(&buf[..n]);
                        events.fetch_add(event_lines(&carry), Ordering::Relaxed);
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
    let per_sender = Duration::from_secs_f64(senders as f64 / rate.max(1) as f64);
    let mut load = Vec::new();
    for k in 0..senders.min(rate) {
        let (stop, latencies, failures, token) = (
            stop.clone(),
            latencies.clone(),
            failures.clone(),
            token.to_owned(),
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
    let took = orchestrate(c, file);
    let server_cpu = util::cpu_secs(&server) - s0;
    let own_cpu = util::cpu_secs("self") - own_before;
    stop.store(true, Ordering::Relaxed);
    for t in load.into_iter().chain(streams) {
        t.join().unwrap();
    }
    let latencies = latencies.lock().unwrap().clone();
    Loaded {
        took,
        server_cpu,
        own_cpu,
        latencies,
        failures: failures.load(Ordering::Relaxed),
        events_per_reader: events.load(Ordering::Relaxed) as f64 / readers.max(1) as f64,
        bytes_per_reader: bytes.load(Ordering::Relaxed) as f64 / readers.max(1) as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let jobs = util::env_usize("JOBS", 1000);
    let nodes = util::env_usize("NODES", 6);
    let readers = util::env_usize("READERS", 50);
    let rate = util::env_usize("RATE", 200);
    let rounds = util::env_usize("ROUNDS", 3).max(1);
    let names: Vec<String> = (1..=nodes).map(|i| format!("api-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut c = util::bench_cluster("api-bench", "5");
    c.with_api();
    let c = util::Cluster::start_in(c, &refs);
    let token = c.token("bench", "read", None);
    let file = c.echo_run_file(jobs);
    println!(
        "{jobs} jobs x {nodes} nodes; {readers} event readers and {rate} API requests/s during \
         the loaded runs; {rounds} rounds of an idle run then a loaded one (ROUNDS)"
    );

    let server = c.server.as_ref().unwrap().pid().to_string();
    let fl = util::shell_floor(nodes, jobs).as_secs_f64();
    println!("floor (6 parallel loops of sh -c):  {fl:.3}s");
    let (mut idle, mut busy, mut idle_cpu, mut busy_cpu) = (vec![], vec![], vec![], vec![]);
    let mut lat = Vec::new();
    let (mut failures, mut own, mut per_reader, mut bytes) = (0, 0.0, 0.0, 0.0);
    for round in 1..=rounds {
        let s0 = util::cpu_secs(&server);
        let quiet = orchestrate(&c, &file).as_secs_f64();
        let quiet_cpu = util::cpu_secs(&server) - s0;
        let l = loaded_run(&c, &file, &token, readers, rate);
        let took = l.took.as_secs_f64();
        println!(
            "round {round}: API idle {quiet:.3}s ({:.2}x), under load {took:.3}s ({:.2}x); \
             the server's CPU {quiet_cpu:.2}s idle, {:.2}s loaded",
            quiet / fl,
            took / fl,
            l.server_cpu
        );
        idle.push(quiet);
        busy.push(took);
        idle_cpu.push(quiet_cpu);
        busy_cpu.push(l.server_cpu);
        lat.extend(l.latencies);
        failures += l.failures;
        own += l.own_cpu / 2.0 / took;
        per_reader += l.events_per_reader;
        bytes += l.bytes_per_reader;
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (idle, busy) = (median(idle), median(busy));
    println!(
        "orchestrate, API idle (median):     {idle:.3}s  ({:.2}x the floor)",
        idle / fl
    );
    println!(
        "orchestrate, API under load:        {busy:.3}s  ({:.2}x the floor; {:+.1}% against idle)",
        busy / fl,
        (busy / idle - 1.0) * 100.0
    );
    println!(
        "API requests: {}, failed {failures}; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    println!(
        "the server's CPU (median): {:.2}s for an idle run, {:.2}s for a loaded one",
        median(idle_cpu),
        median(busy_cpu)
    );
    println!(
        "the load generator's own CPU during loaded runs: about {:.0}% of the 2 cores",
        own / rounds as f64 * 100.0
    );
    println!(
        "events received per reader and run: {:.0} (a run has {} parts and {} jobs), {:.0} bytes each",
        per_reader / rounds as f64,
        jobs * nodes,
        jobs,
        bytes / per_reader.max(1.0)
    );
}
