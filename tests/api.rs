//! The HTTP API end to end: a real server with `--api-port` and real
//! clients, spoken to over real TCP (and TLS), asserting on the answers,
//! on what the cluster did, and on what it did not do.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{parse_response, wait_until, Cluster};

const DEADLINE: Duration = Duration::from_secs(60);

/// One request on a new connection: status and body.
fn http(c: &Cluster, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let raw = request_text(method, path, token, body);
    let (status, _, body) = send_raw(c, raw.as_bytes());
    (status, body)
}

fn request_text(method: &str, path: &str, token: Option<&str>, body: &str) -> String {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn connect(c: &Cluster) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", c.api_port.unwrap())).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

/// Bytes as they are, then the whole answer: status, head, body.
fn send_raw(c: &Cluster, raw: &[u8]) -> (u16, String, String) {
    let mut s = connect(c);
    s.write_all(raw).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    parse_response(&text)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A one-line JSON error, as every refusal is.
fn error_of(body: &str) -> String {
    assert_eq!(body.trim_end().lines().count(), 1, "one line: {body:?}");
    json(body)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
        .to_owned()
}

fn cluster(test: &str, nodes: &[&str]) -> Cluster {
    let mut c = Cluster::new(test, "0.5");
    c.with_api();
    Cluster::start_in(c, nodes)
}

#[test]
fn every_endpoint_answers_as_the_cli_does() {
    let c = cluster("api-endpoints", &["web1", "web2"]);
    let admin = c.token("admin", "admin", None);
    let t = Some(admin.as_str());

    // Health and the dashboard need no token; the page holds no data.
    let (s, b) = http(&c, "GET", "/api/v1/health", None, "");
    assert_eq!((s, json(&b)["ok"].as_bool()), (200, Some(true)));
    let (s, page) = http(&c, "GET", "/", None, "");
    assert_eq!(s, 200);
    assert!(
        page.contains("<html") && page.contains("director"),
        "{page}"
    );

    let (s, b) = http(&c, "GET", "/api/v1/nodes", t, "");
    assert_eq!(s, 200, "{b}");
    let names: Vec<String> = json(&b)
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["web1", "web2"]);
    let (s, b) = http(&c, "GET", "/api/v1/nodes/web2", t, "");
    assert_eq!((s, json(&b)["name"].as_str()), (200, Some("web2")));
    assert!(json(&b)["facts"]["kernel"].is_string(), "{b}");
    let (s, b) = http(&c, "GET", "/api/v1/nodes/nope", t, "");
    assert_eq!(s, 404, "{b}");
    assert!(error_of(&b).contains("nope"), "{b}");

    // Submit and wait: the job's end, as `exec --wait` reports it.
    let body = r#"{"verb": "RUN", "args": "--skip-cache echo from-api", "targets": ["web*"], "wait": true}"#;
    let (s, b) = http(&c, "POST", "/api/v1/exec", t, body);
    assert_eq!(s, 200, "{b}");
    let job = json(&b);
    assert_eq!(job["states"]["succeeded"], 2, "{b}");
    let id = job["id"].as_str().unwrap().to_owned();
    // What the nodes printed, by a prefix of the id as the CLI takes it.
    let (s, b) = http(&c, "GET", &format!("/api/v1/jobs/{}", &id[..8]), t, "");
    assert_eq!(s, 200, "{b}");
    let detail = json(&b);
    assert_eq!(detail["nodes"].as_array().unwrap().len(), 2, "{b}");
    assert!(
        detail["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["stdout"] == "from-api\n"),
        "{b}"
    );
    // The CLI sees the same job, and who submitted it.
    let info = c.job_info(&id);
    assert_eq!(info["nodes"][0]["stdout"], "from-api\n");
    assert_eq!(info["job"]["by"], "token admin", "{info}");
    let out = c.cli(&["manage", "--job-info", &id]);
    assert!(out.stdout.contains("by token admin"), "{}", out.stdout);
    // What the CLI submits is recorded as its user's.
    let cli_job = c.submit(&[], "true");
    c.wait_job_done(&cli_job);
    let uid = unsafe { libc::geteuid() };
    assert_eq!(c.job_info(&cli_job)["job"]["by"], format!("uid {uid}"));

    // Without waiting: accepted, with the job's id and targets.
    let (s, b) = http(
        &c,
        "POST",
        "/api/v1/exec",
        t,
        r#"{"verb": "ARG", "args": "color blue", "targets": ["web1"]}"#,
    );
    assert_eq!(s, 202, "{b}");
    let sub = json(&b);
    assert_eq!(sub["targets"], serde_json::json!(["web1"]));
    c.wait_job_done(sub["job_id"].as_str().unwrap());

    // An orchestration as the body, waited for.
    let yaml = "- jobs:\n  - RUN: --skip-cache echo one\n  - RUN: --skip-cache echo two\n";
    let (s, b) = http(&c, "POST", "/api/v1/orchestrate?wait=1", t, yaml);
    assert_eq!(s, 200, "{b}");
    let run = json(&b);
    assert_eq!(run["jobs"].as_array().unwrap().len(), 2, "{b}");
    let parent = run["parent_id"].as_str().unwrap().to_owned();
    let (s, b) = http(&c, "GET", "/api/v1/runs", t, "");
    assert_eq!(s, 200);
    assert!(
        json(&b)
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["parent_id"] == parent.as_str()),
        "{b}"
    );
    let (s, b) = http(&c, "GET", &format!("/api/v1/runs/{parent}"), t, "");
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["parts"].as_array().unwrap().len(), 4, "{b}");
    // A dry run plans and queues nothing.
    let before = c.jobs_json().len();
    let (s, b) = http(&c, "POST", "/api/v1/orchestrate?dry_run=1", t, yaml);
    assert_eq!(s, 200, "{b}");
    assert!(json(&b)["parent_id"].is_null(), "{b}");
    assert_eq!(c.jobs_json().len(), before);

    // Lists with filters.
    let (_, b) = http(&c, "GET", "/api/v1/jobs?verb=ARG", t, "");
    let arg_jobs = json(&b);
    assert_eq!(arg_jobs.as_array().unwrap().len(), 1, "{b}");
    assert_eq!(arg_jobs[0]["verb"], "ARG");
    let (_, b) = http(&c, "GET", &format!("/api/v1/jobs?run={parent}"), t, "");
    assert_eq!(json(&b).as_array().unwrap().len(), 2, "{b}");
    let (_, b) = http(&c, "GET", "/api/v1/jobs?state=failed", t, "");
    assert_eq!(json(&b).as_array().unwrap().len(), 0, "{b}");
    let (_, b) = http(&c, "GET", "/api/v1/jobs?limit=1", t, "");
    assert_eq!(json(&b).as_array().unwrap().len(), 1, "{b}");
    // Secret values only with show_values (an admin's).
    let (_, b) = http(&c, "GET", "/api/v1/jobs?verb=ARG&show_values=1", t, "");
    assert!(b.contains("blue"), "{b}");
    let (_, b) = http(&c, "GET", "/api/v1/jobs?verb=ARG", t, "");
    assert!(!b.contains("blue"), "{b}");

    // Keys: the list, the server's, and a change.
    let (s, b) = http(&c, "GET", "/api/v1/cluster", t, "");
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["role"], "alone", "{b}");
    let (s, b) = http(&c, "GET", "/api/v1/keys", t, "");
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b).as_array().unwrap().len(), 2);
    let (s, b) = http(&c, "GET", "/api/v1/keys/server", t, "");
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["public_key"].as_str().unwrap().len(), 40, "{b}");
    let (s, b) = http(&c, "POST", "/api/v1/keys/ghost/accept", t, "");
    assert_eq!(s, 404, "{b}");
    assert!(error_of(&b).contains("ghost"), "{b}");

    // Clear the cache of one node, then purge what is finished.
    let (s, b) = http(
        &c,
        "POST",
        "/api/v1/clear-cache",
        t,
        r#"{"targets": ["web1"]}"#,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["states"]["succeeded"], 1, "{b}");
    let (s, b) = http(&c, "POST", "/api/v1/purge/jobs", t, "");
    assert_eq!(s, 200, "{b}");
    assert!(json(&b)["purged"].as_u64().unwrap() >= 4, "{b}");
    assert_eq!(c.jobs_json().len(), 0);

    // The metrics count what happened.
    let (s, m) = http(&c, "GET", "/metrics", t, "");
    assert_eq!(s, 200);
    assert!(m.contains("director_nodes{state=\"online\"} 2\n"), "{m}");
    let counter = |name: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    assert!(
        counter("director_port_messages_received_total{port=\"job\"}") >= 8.0,
        "{m}"
    );
    assert!(counter("director_journal_sync_seconds_count") >= 1.0, "{m}");
    assert!(
        counter("director_api_requests_total{status=\"200\"}") >= 10.0,
        "{m}"
    );
    assert!(
        counter("director_api_requests_total{status=\"404\"}") >= 2.0,
        "{m}"
    );
}

#[test]
fn refused_requests_say_why_with_their_status_and_change_nothing() {
    let c = cluster("api-auth", &["web1", "db1"]);
    let reader = c.token("dash", "read", None);
    let web = c.token("ci-web", "run", Some("web*"));
    let gone = c.token("old", "admin", None);
    let out = c.cli(&["manage", "--revoke-token", "old"]);
    assert_eq!(out.code, 0, "{out:?}");
    let exec = r#"{"verb": "RUN", "args": "touch /tmp/never"}"#;
    // Token, method, path, body, status, why.
    type Case<'a> = (Option<&'a str>, &'a str, &'a str, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (None, "GET", "/api/v1/nodes", "", 401, "needs a token"),
        (
            Some("dtk_wrong"),
            "GET",
            "/api/v1/nodes",
            "",
            401,
            "unknown or revoked",
        ),
        (
            Some(gone.as_str()),
            "GET",
            "/api/v1/nodes",
            "",
            401,
            "unknown or revoked",
        ),
        (
            Some(reader.as_str()),
            "POST",
            "/api/v1/exec",
            exec,
            403,
            "role read; this needs run",
        ),
        (
            Some(reader.as_str()),
            "GET",
            "/api/v1/jobs?show_values=1",
            "",
            403,
            "needs admin",
        ),
        (
            Some(web.as_str()),
            "POST",
            "/api/v1/purge/jobs",
            "",
            403,
            "needs admin",
        ),
        // Outside its targets: named, or every node.
        (
            Some(web.as_str()),
            "POST",
            "/api/v1/exec",
            r#"{"verb": "RUN", "args": "true", "targets": ["db1"]}"#,
            403,
            "node 'db1' is outside it",
        ),
        (
            Some(web.as_str()),
            "POST",
            "/api/v1/exec",
            exec,
            403,
            "outside it",
        ),
        (
            Some(web.as_str()),
            "POST",
            "/api/v1/orchestrate",
            "- targets: [db1]\n  jobs:\n  - RUN: true\n",
            403,
            "outside it",
        ),
        // Files of the server's machine are the CLI's.
        (
            Some(web.as_str()),
            "POST",
            "/api/v1/exec",
            r#"{"verb": "ADD", "args": "/etc/passwd /tmp/x", "targets": ["web1"]}"#,
            403,
            "reads files on the server's machine",
        ),
    ];
    for (tok, m, path, body, status, why) in cases {
        let (s, b) = http(&c, m, path, tok, body);
        assert_eq!(s, status, "{m} {path}: {b}");
        assert!(error_of(&b).contains(why), "{m} {path}: {b}");
    }
    assert_eq!(c.jobs_json().len(), 0, "a refused request queued something");
    // Within its targets, a run token submits.
    let (s, b) = http(
        &c,
        "POST",
        "/api/v1/exec",
        Some(&web),
        r#"{"verb": "RUN", "args": "true", "targets": ["web1"], "wait": true}"#,
    );
    assert_eq!(s, 200, "{b}");
    // Failed authentications are logged, and not once per request.
    let log = c.server.as_ref().unwrap().log_text();
    let said = log.matches("refused: ").count();
    assert!((1..=2).contains(&said), "{said} lines:\n{log}");
    assert!(
        log.contains("API: token 'ci-web' submits: RUN true on web1"),
        "{log}"
    );
    // Tokens survive a restart, revoked ones stay revoked.
    let mut c = c;
    c.server().signal(libc::SIGTERM);
    c.server().wait_exit(DEADLINE);
    c.start_server();
    c.wait_nodes(&["web1", "db1"]);
    assert_eq!(http(&c, "GET", "/api/v1/nodes", Some(&reader), "").0, 200);
    assert_eq!(http(&c, "GET", "/api/v1/nodes", Some(&gone), "").0, 401);
    // Who submitted is kept across the restart.
    let jobs = c.jobs_json();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["by"], "token ci-web", "{jobs:?}");
    let out = c.cli(&["manage", "--list-tokens", "--format", "json"]);
    let names: Vec<String> = json(&out.stdout)
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["ci-web", "dash"]);
    // The secret is nowhere on the server's disk.
    for f in std::fs::read_dir(c.state_path()).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(
            !util::contains(&bytes, reader.as_bytes()),
            "{}",
            f.path().display()
        );
    }
}

#[test]
fn token_commands_check_their_options() {
    let c = cluster("api-tokens", &[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["manage", "--create-token", "x"],
            "needs --role read, run or admin",
        ),
        (
            &["manage", "--create-token", "x", "--role", "boss"],
            "expected read, run or admin, got 'boss'",
        ),
        (
            &["manage", "--list-tokens", "--role", "read"],
            "--role and --targets go with --create-token",
        ),
        (
            &["manage", "--create-token", "a b", "--role", "read"],
            "token name 'a b'",
        ),
        (
            &[
                "manage",
                "--create-token",
                "x",
                "--role",
                "read",
                "--targets",
                "web*",
            ],
            "a read token submits nothing",
        ),
        (
            &[
                "manage",
                "--create-token",
                "x",
                "--role",
                "run",
                "--targets",
                "",
            ],
            "empty",
        ),
        (
            &["manage", "--revoke-token", "nobody"],
            "no token named 'nobody'",
        ),
    ];
    for (args, why) in cases {
        let out = c.cli(args);
        assert_ne!(out.code, 0, "{args:?}: {out:?}");
        assert!(out.stderr.contains(why), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "{args:?}: {}",
            out.stderr
        );
    }
    c.token("x", "run", Some("web*,role=db"));
    let out = c.cli(&["manage", "--create-token", "x", "--role", "read"]);
    assert!(out.stderr.contains("a token named 'x' exists"), "{out:?}");
    let out = c.cli(&["manage", "--list-tokens"]);
    assert!(
        out.stdout.contains("x     run   web*,role=db"),
        "{}",
        out.stdout
    );
}

#[test]
fn bad_huge_and_slow_requests_get_one_line_errors_and_the_cluster_goes_on() {
    let c = cluster("api-hostile", &["n1"]);
    let t = c.token("t", "admin", None);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"\x16\x03\x01garbage\r\n\r\n".to_vec(), 400),
        (
            b"GET /api/v1/nodes HTTP/1.1\r\nContent-Length: nine\r\n\r\n".to_vec(),
            400,
        ),
        (
            format!(
                "POST /api/v1/exec HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                64 << 20
            )
            .into_bytes(),
            413,
        ),
        (
            format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            431,
        ),
        (
            b"POST /api/v1/exec HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            411,
        ),
        (
            b"GET /api/v1/nothing HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            404,
        ),
        (
            b"PUT /api/v1/nodes HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            405,
        ),
        (
            request_text("POST", "/api/v1/exec", Some(&t), "{\"verb\": ").into_bytes(),
            400,
        ),
        (
            request_text(
                "POST",
                "/api/v1/orchestrate",
                Some(&t),
                "- jobs:\n  - NOPE: x\n",
            )
            .into_bytes(),
            400,
        ),
    ];
    for (raw, status) in cases {
        let (s, _, body) = send_raw(&c, &raw);
        assert_eq!(
            s,
            status,
            "{:?}: {body}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        );
        error_of(&body);
    }
    // A stranger's body is not waited for: refused at its head.
    let mut s = connect(&c);
    s.write_all(b"POST /api/v1/exec HTTP/1.1\r\nContent-Length: 4000000\r\n\r\n{\"verb\"")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert_eq!(parse_response(&text).0, 401, "{text}");
    // Pipelined requests are answered in order, one at a time.
    let mut s = connect(&c);
    let one = format!("GET /api/v1/health HTTP/1.1\r\nAuthorization: Bearer {t}\r\n\r\n");
    let mut many = one.repeat(49);
    many.push_str(&request_text("GET", "/api/v1/whoami", Some(&t), ""));
    s.write_all(many.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 50, "{text}");
    assert!(
        text.trim_end()
            .ends_with(r#""role":"admin","targets":null}"#),
        "{text}"
    );
    // A request whose head never ends is answered 408 and closed, within
    // the head timeout (10 s) and not before it, also on a connection kept
    // alive after an answer (whose idle timeout, 120 s, is longer).
    let mut slow = connect(&c);
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while !first.ends_with(b"}\n") {
        slow.read_exact(&mut byte).unwrap();
        first.push(byte[0]);
    }
    assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
    let started = Instant::now();
    slow.write_all(b"GET /api/v1/nodes HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    let mut text = String::new();
    slow.read_to_string(&mut text).unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "closed after {took:?}");
    assert!(
        took < Duration::from_secs(100),
        "the idle timeout applied: {took:?}"
    );
    assert_eq!(parse_response(&text).0, 408, "{text}");

    // A thousand idle connections: served alongside, memory bounded.
    util::raise_open_files(4096);
    let rss = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", c.server.as_ref().unwrap().pid()))
                .unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    let idle: Vec<TcpStream> = (0..1000).map(|_| connect(&c)).collect();
    let (s, m) = http(&c, "GET", "/metrics", Some(&t), "");
    assert_eq!(s, 200);
    wait_until("the server to take the idle connections", DEADLINE, || {
        let (_, m) = http(&c, "GET", "/metrics", Some(&t), "");
        m.contains("director_api_connections{kind=\"all\"} 100")
            || m.lines().any(|l| {
                l.strip_prefix("director_api_connections{kind=\"all\"} ")
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|n| n >= 1000)
            })
    });
    drop(m);
    let (s, b) = http(
        &c,
        "POST",
        "/api/v1/exec",
        Some(&t),
        r#"{"verb": "RUN", "args": "--skip-cache echo still", "wait": true}"#,
    );
    assert_eq!(s, 200, "{b}");
    let grew = rss().saturating_sub(before);
    assert!(
        grew < 64 << 10,
        "the server grew by {grew} KiB for 1000 idle connections"
    );
    drop(idle);
    // And the nodes never noticed.
    let log = c.clients["n1"].log_text();
    assert!(!log.contains("server silent"), "{log}");
}

/// An event stream's reader: events as (id, name, data).
struct Events {
    reader: BufReader<TcpStream>,
    /// Keep-alive comments come every 15 s: a read alone would wait on.
    deadline: Instant,
}

impl Events {
    fn open(c: &Cluster, path: &str, token: &str, last: Option<&str>) -> Events {
        let mut s = connect(c);
        let last = last.map_or_else(String::new, |l| format!("Last-Event-ID: {l}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n{last}\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        Events {
            reader,
            deadline: Instant::now() + DEADLINE,
        }
    }

    /// The next event; `None` when the stream ends.
    fn next(&mut self) -> Option<(u64, String, Value)> {
        let (mut id, mut name, mut data) = (0, String::new(), String::new());
        let mut line = String::new();
        loop {
            if Instant::now() >= self.deadline {
                return None;
            }
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end_matches('\n');
            if l.is_empty() {
                if !name.is_empty() {
                    return Some((id, name, json(&data)));
                }
                continue; // after a comment
            }
            if let Some(v) = l.strip_prefix("id: ") {
                id = v.parse().unwrap();
            } else if let Some(v) = l.strip_prefix("event: ") {
                name = v.to_owned();
            } else if let Some(v) = l.strip_prefix("data: ") {
                data = v.to_owned();
            }
        }
    }

    /// Events until one named `name` for which `pick` holds.
    fn until(&mut self, name: &str, pick: impl Fn(&Value) -> bool) -> Vec<(u64, String, Value)> {
        let mut seen = Vec::new();
        loop {
            let ev = self
                .next()
                .unwrap_or_else(|| panic!("stream ended before {name}: {seen:?}"));
            let done = ev.1 == name && pick(&ev.2);
            seen.push(ev);
            if done {
                return seen;
            }
        }
    }
}

#[test]
fn the_event_stream_carries_jobs_parts_and_nodes_and_resumes_where_a_reader_left() {
    let mut c = cluster("api-events", &["e1", "e2"]);
    let t = c.token("watch", "read", None);
    let run = c.token("run", "run", None);
    let mut ev = Events::open(&c, "/api/v1/events", &t, None);
    let (s, b) = http(
        &c,
        "POST",
        "/api/v1/exec",
        Some(&run),
        r#"{"verb": "RUN", "args": "--skip-cache echo evented"}"#,
    );
    assert_eq!(s, 202, "{b}");
    let id = json(&b)["job_id"].as_str().unwrap().to_owned();
    let seen = ev.until("job", |d| d["id"] == id.as_str());
    let names: Vec<&str> = seen.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, ["submitted", "part", "part", "job"], "{seen:?}");
    // States on the whole stream; the outputs are the job's detail's.
    assert!(
        seen.iter()
            .filter(|(_, n, _)| n == "part")
            .all(|(_, _, d)| d["stdout"] == "" && d["state"] == "succeeded" && d["exit_code"] == 0),
        "{seen:?}"
    );
    let ids: Vec<u64> = seen.iter().map(|(i, _, _)| *i).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let last_job = ids[3];

    // A node that goes away and comes back.
    c.client("e2").signal(libc::SIGKILL);
    ev.until("node", |d| d["node"] == "e2" && d["state"] == "offline");
    c.start_client("e2");
    let seen = ev.until("node", |d| d["node"] == "e2" && d["state"] == "online");
    let last_seen = seen.last().unwrap().0;

    // A reader that reconnects with Last-Event-ID gets what it missed, in
    // order; one from beyond the window is told to reload.
    let mut again = Events::open(&c, "/api/v1/events", &t, Some(&last_job.to_string()));
    let missed = again.until("node", |d| d["state"] == "online");
    assert_eq!(missed.first().unwrap().0, last_job + 1, "{missed:?}");
    assert_eq!(missed.last().unwrap().0, last_seen, "{missed:?}");
    let mut stale = Events::open(&c, "/api/v1/events", &t, Some("999999"));
    assert_eq!(stale.next().unwrap().1, "reset");

    // Following one job: its output lines as they come, then its end, and
    // the stream closes.
    let (s, b) = http(
        &c,
        "POST",
        "/api/v1/exec",
        Some(&run),
        r#"{"verb": "RUN", "args": "--skip-cache for i in 1 2 3; do echo line-$i; sleep 0.4; done", "targets": ["e1"]}"#,
    );
    assert_eq!(s, 202, "{b}");
    let id = json(&b)["job_id"].as_str().unwrap().to_owned();
    let mut follow = Events::open(&c, &format!("/api/v1/events?follow={id}"), &t, None);
    let seen = follow.until("job", |_| true);
    let text: String = seen
        .iter()
        .filter(|(_, n, _)| n == "output")
        .map(|(_, _, d)| d["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(text.contains("line-3\n"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|(_, n, d)| n == "part" && d["node"] == "e1"),
        "{seen:?}"
    );
    assert!(
        follow.next().is_none(),
        "the stream goes on after the job's end"
    );
    // The whole stream saw that job's part run, then end.
    let seen = ev.until("job", |d| d["id"] == id.as_str());
    let states: Vec<&str> = seen
        .iter()
        .filter(|(_, n, d)| n == "part" && d["job_id"] == id.as_str())
        .map(|(_, _, d)| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["running", "succeeded"], "{seen:?}");
    // Following a job that does not exist: an error event, then the end.
    let mut none = Events::open(
        &c,
        &format!("/api/v1/events?follow={}", uuid_zero()),
        &t,
        None,
    );
    let (_, name, data) = none.next().unwrap();
    assert_eq!(name, "error", "{data}");
    assert!(none.next().is_none());
}

fn uuid_zero() -> &'static str {
    "00000000-0000-4000-8000-000000000000"
}

#[test]
fn tls_serves_https_and_cleartext_stays_on_loopback() {
    let c = Cluster::new("api-tls", "0.5");
    let dir = &c.dir.path;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    if !made.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no openssl to make a certificate ({made:?})");
        return;
    }
    // Clear text off loopback is refused at start, with the way out.
    let port = util::free_ports()[0].to_string();
    let out = c.cli_daemon_check(&["server", "--api-port", &port, "--api-address", "0.0.0.0"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("without TLS the API serves loopback only"),
        "{}",
        out.stderr
    );
    let out = c.cli_daemon_check(&[
        "server",
        "--api-port",
        &port,
        "--api-tls-cert",
        cert.to_str().unwrap(),
    ]);
    assert!(
        out.stderr.contains("--api-tls-cert needs --api-tls-key"),
        "{}",
        out.stderr
    );
    let bogus = dir.join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let out = c.cli_daemon_check(&[
        "server",
        "--api-port",
        &port,
        "--api-tls-cert",
        bogus.to_str().unwrap(),
        "--api-tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.stderr.contains("bogus.pem"), "{}", out.stderr);

    let mut c = c;
    c.with_api();
    let args = [
        "--api-tls-cert",
        cert.to_str().unwrap(),
        "--api-tls-key",
        key.to_str().unwrap(),
    ];
    c.start_server_with(&args);
    c.start_client("t1");
    c.wait_nodes(&["t1"]);
    let t = c.token("t", "read", None);
    let Ok(curl) = std::process::Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {t}"),
        ])
        .arg(format!(
            "https://localhost:{}/api/v1/nodes",
            c.api_port.unwrap()
        ))
        .output()
    else {
        eprintln!("skipped the HTTPS request: no curl");
        return;
    };
    assert!(curl.status.success(), "{curl:?}");
    let body = String::from_utf8_lossy(&curl.stdout);
    assert_eq!(json(&body)[0]["name"], "t1", "{body}");
    // The event stream through TLS: its batches go through rustls too.
    let mut stream = std::process::Command::new("curl")
        .args([
            "-sSN",
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {t}"),
        ])
        .arg(format!(
            "https://localhost:{}/api/v1/events",
            c.api_port.unwrap()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = stream.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Opened once its first comment arrives; then a job, seen whole.
    let first = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(first, ": director events");
    let done = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--skip-cache",
        "echo over-tls",
    ]);
    assert_eq!(done.code, 0, "{}", done.stderr);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l == "event: job") {
        match rx.recv_timeout(DEADLINE) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("no job event over TLS ({e}): {seen:?}"),
        }
    }
    assert!(seen.iter().any(|l| l == "event: part"), "{seen:?}");
    let _ = stream.kill();
    let _ = stream.wait();
    // Clear text to a TLS port is not an answer: the connection closes.
    let mut s = connect(&c);
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\n\r\n").unwrap();
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    assert!(
        !String::from_utf8_lossy(&text).contains("\"ok\""),
        "{text:?}"
    );
}

/// `exec`/`orchestrate --format json`: one JSON event a line, for scripts
/// and CI, ending with the job's or run's end and `--wait`'s exit status.
#[test]
fn the_cli_prints_one_json_event_a_line_for_scripts() {
    let c = cluster("api-cli-json", &["j1", "j2"]);
    let lines = |out: &util::Out| -> Vec<Value> { out.stdout.lines().map(json).collect() };
    let out = c.cli(&[
        "exec",
        "--verb",
        "RUN",
        "--wait",
        "--format",
        "json",
        "--skip-cache echo js",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let ev = lines(&out);
    let names: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["submitted", "part", "part", "job"],
        "{}",
        out.stdout
    );
    assert_eq!(ev[1]["data"]["stdout"], "js\n");
    assert_eq!(ev[3]["data"]["states"]["succeeded"], 2);
    // Without --wait: the submission alone.
    let out = c.cli(&["exec", "--verb", "RUN", "--format", "json", "true"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(lines(&out).len(), 1);
    // A run with a failure: every event, the run's end, and a failing status.
    let file = c.dir.path.join("fails.yml");
    std::fs::write(
        &file,
        "- jobs:\n  - RUN: --skip-cache echo first\n  - RUN: --skip-cache false\n",
    )
    .unwrap();
    let out = c.cli(&[
        "orchestrate",
        "--wait",
        "--format",
        "json",
        file.to_str().unwrap(),
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    let ev = lines(&out);
    assert_eq!(
        ev.first().unwrap()["event"],
        "orchestrated",
        "{}",
        out.stdout
    );
    assert_eq!(ev.last().unwrap()["event"], "run", "{}", out.stdout);
    let failed = ev
        .iter()
        .filter(|e| e["event"] == "part" && e["data"]["state"] == "failed")
        .count();
    assert_eq!(failed, 2, "{}", out.stdout);
    // A dry run: the plan alone.
    let out = c.cli(&[
        "orchestrate",
        "--dry-run",
        "--format",
        "json",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let ev = lines(&out);
    assert_eq!(ev.len(), 1);
    assert!(ev[0]["data"]["parent_id"].is_null());
}

/// A new key waiting for an operator is an event, and its acceptance
/// through the API (admin) brings the node online.
#[test]
fn a_pending_key_is_an_event_and_an_admin_accepts_it_through_the_api() {
    let mut c = Cluster::new("api-pending", "0.5");
    c.shared_key = None;
    c.with_api();
    c.start_server();
    let admin = c.token("admin", "admin", None);
    let mut ev = Events::open(&c, "/api/v1/events", &admin, None);
    let out = c.cli(&["manage", "--show-key"]);
    assert_eq!(out.code, 0, "{out:?}");
    let key = out.stdout.trim().to_owned();
    c.start_client_bare("newcomer", &["--server-key", &key]);
    ev.until("node", |d| {
        d["node"] == "newcomer" && d["state"] == "pending"
    });
    let (s, b) = http(&c, "POST", "/api/v1/keys/newcomer/accept", Some(&admin), "");
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)[0]["state"], "accepted", "{b}");
    ev.until("node", |d| {
        d["node"] == "newcomer" && d["state"] == "online"
    });
}
