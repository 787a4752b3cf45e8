//! The node protocol's bytes, pinned. Clients and servers of one version
//! must understand each other whatever build they come from, so a change
//! in how any message encodes must be a deliberate change of `VERSION`:
//! these tests compare every message kind (and every verb inside a job)
//! with `golden.txt`, and regenerating that file
//! (`DIRECTOR_BLESS=1 cargo test --lib wire::golden`) is refused while
//! `VERSION` is the one the file was made for.

use super::*;
use crate::dsl::SourceFile;

const GOLDEN: &str = include_str!("golden.txt");
const GOLDEN_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/wire/golden.txt");

fn id(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn outcome() -> Outcome {
    Outcome {
        exit: Exit::Code(2),
        stdout: b"out\n".to_vec(),
        stderr: vec![0xff, 0],
        stdout_dropped: 1,
        stderr_dropped: 2,
        exec_secs: 0.5,
        attempts: vec![Attempt {
            exit: Exit::TimedOut { secs: 3 },
            stdout: b"a".to_vec(),
            stderr: Vec::new(),
            stdout_dropped: 0,
            stderr_dropped: 0,
            exec_secs: 3.0,
        }],
    }
}

/// A task of each verb, with options, as the server sends it.
fn tasks() -> Vec<(&'static str, Task)> {
    let parse = |verb, args: &str| Task::parse(verb, args).expect("a golden job string parses");
    let mut add = parse(
        Verb::Add,
        "--chown 1:2 --chmod 0640 --blueprint a.j2 /etc/a",
    );
    if let crate::dsl::Action::Add(a) = &mut add.action {
        a.files = vec![SourceFile {
            path: "/srv/a.j2".into(),
            size: 12,
            mode: 0o644,
            sha1: "0".repeat(40),
        }];
    }
    vec![
        (
            "run",
            parse(
                Verb::Run,
                "--timeout 5 --retries 2 --stdout-arg out --creates /x echo {{ a }}",
            ),
        ),
        ("arg", parse(Verb::Arg, "key value")),
        ("arg_extend", parse(Verb::Arg, "--extend-args key [1]")),
        ("env", parse(Verb::Env, "PATH /bin")),
        ("workdir", parse(Verb::Workdir, "--chmod 0700 /srv/x")),
        ("add", add),
        ("query", parse(Verb::Query, "key")),
        ("package", parse(Verb::Package, "--state latest curl jq")),
        ("dnf", parse(Verb::Dnf, "--absent vim")),
        (
            "service",
            parse(Verb::Service, "--restarted --enable nginx.service"),
        ),
        ("wait", parse(Verb::Wait, "--seconds 3")),
        ("echo", parse(Verb::Echo, "hello")),
        ("cacheevict", parse(Verb::CacheEvict, "args")),
        ("cachefile", parse(Verb::CacheFile, "/etc/vars.yaml")),
        ("facter", parse(Verb::Facter, "")),
        (
            "container_image",
            parse(Verb::ContainerImage, "--pull image:1"),
        ),
        ("queuesentinel", parse(Verb::QueueSentinel, "")),
    ]
}

/// Every message kind, named.
fn messages() -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut labels = crate::facts::Map::new();
    labels.insert("role".into(), "web".into());
    let client = [
        ("heartbeat", ClientMsg::Heartbeat { interval_ms: 1000 }),
        (
            "ready",
            ClientMsg::Ready {
                name: "web1".into(),
                version: "0.1.0".into(),
                interval_ms: 60_000,
                holding: vec![id(1), id(2)],
                proof: vec![7; 4],
                instance: 42,
                seen: Some(Dispatch { server: 9, seq: 10 }),
                facts: labels.clone(),
                labels,
            },
        ),
        ("started", ClientMsg::Started { job_id: id(3) }),
        (
            "finished",
            ClientMsg::Finished {
                job_id: id(3),
                outcome: outcome(),
            },
        ),
        (
            "fetch",
            ClientMsg::Fetch {
                job_id: id(3),
                file: 1,
                offset: 1 << 20,
                len: 1 << 20,
            },
        ),
        (
            "query_value",
            ClientMsg::QueryValue {
                job_id: id(3),
                value: Some("v".into()),
            },
        ),
        (
            "cache",
            ClientMsg::Cache(CacheSummary {
                args: [("a".to_owned(), Some("1".to_owned()))].into(),
                args_more: 1,
                env: vec!["PATH".into()],
                queries: vec!["q".into()],
                steps: 4,
            }),
        ),
        (
            "output",
            ClientMsg::Output {
                job_id: id(3),
                stream: Stream::Stderr,
                data: b"line\n".to_vec(),
                dropped: 5,
            },
        ),
    ];
    for (name, msg) in client {
        out.push((format!("client {name}"), encode(&msg)));
    }
    let mut server = vec![
        (
            "heartbeat_ack".to_owned(),
            ServerMsg::HeartbeatAck {
                expires_in_ms: 3000,
            },
        ),
        ("register".into(), ServerMsg::Register),
        (
            "welcome".into(),
            ServerMsg::Welcome {
                name: "web1".into(),
                interval_ms: 1000,
            },
        ),
        ("result_ack".into(), ServerMsg::ResultAck { job_id: id(3) }),
        (
            "chunk".into(),
            ServerMsg::Chunk {
                job_id: id(3),
                file: 0,
                offset: 4,
            },
        ),
        (
            "fetch_error".into(),
            ServerMsg::FetchError {
                job_id: id(3),
                file: 0,
                message: "gone".into(),
            },
        ),
        (
            "query_result".into(),
            ServerMsg::QueryResult {
                job_id: id(3),
                values: vec![("web1".into(), "v".into())],
            },
        ),
        ("follow".into(), ServerMsg::Follow { job_id: id(3) }),
        (
            "standby".into(),
            ServerMsg::Standby {
                leader: Some("s1".into()),
                address: Some("10.0.0.12".into()),
            },
        ),
    ];
    for why in [
        Denial::Pending,
        Denial::Rejected,
        Denial::NameTaken,
        Denial::KeyHasName("db1".into()),
        Denial::WrongSharedKey,
        Denial::TooManyPending,
        Denial::NameContested,
    ] {
        server.push((format!("denied {why:?}"), ServerMsg::Denied(why)));
    }
    for (verb, task) in tasks() {
        server.push((
            format!("job {verb}"),
            ServerMsg::Job {
                job_id: id(4),
                parent: Some(id(5)),
                task,
                dispatch: Dispatch { server: 9, seq: 11 },
                live: true,
                instance: 42,
                lane: Some(Lane {
                    parent: id(5),
                    group: 1,
                    block: 2,
                }),
            },
        ));
    }
    for (name, msg) in server {
        out.push((format!("server {name}"), encode(&msg)));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's text for these messages: the version, then one line per
/// message, `name: header body` in hex.
fn render() -> String {
    let mut text = format!("version {VERSION}\n");
    for (name, frames) in messages() {
        let frames: Vec<String> = frames.iter().map(|f| hex(f)).collect();
        text.push_str(&format!("{name}: {}\n", frames.join(" ")));
    }
    text
}

fn golden_version() -> Option<u8> {
    GOLDEN
        .lines()
        .next()?
        .strip_prefix("version ")?
        .parse()
        .ok()
}

#[test]
fn every_message_encodes_as_the_version_pinned_it() {
    let now = render();
    if now == GOLDEN {
        return;
    }
    if std::env::var_os("DIRECTOR_BLESS").is_some() {
        assert_ne!(
            golden_version(),
            Some(VERSION),
            "the wire format changed but wire::VERSION is still {VERSION}: bump it (clients of the old format must be told, not misread), then bless again"
        );
        std::fs::write(GOLDEN_PATH, &now).expect("write golden.txt");
        return;
    }
    let changed: Vec<&str> = now
        .lines()
        .zip(GOLDEN.lines().chain(std::iter::repeat("")))
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.split(':').next().unwrap_or(a))
        .collect();
    panic!(
        "the node protocol's bytes changed ({changed:?}): a deliberate change bumps wire::VERSION and runs DIRECTOR_BLESS=1 cargo test --lib wire::golden"
    );
}

#[test]
fn every_golden_message_decodes_to_what_was_encoded() {
    for (name, frames) in messages() {
        if name.starts_with("client ") {
            let msg: ClientMsg = decode(&frames).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(encode(&msg), frames, "{name}");
        } else {
            let msg: ServerMsg = decode(&frames).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(encode(&msg), frames, "{name}");
        }
    }
}

#[test]
fn every_verb_has_a_golden_job() {
    let named: Vec<Verb> = tasks().iter().map(|(_, t)| t.verb()).collect();
    for verb in Verb::ALL {
        let covered = named.contains(verb)
            || matches!(verb, Verb::Copy | Verb::Pod | Verb::ClearCache)
            || (*verb == Verb::Dnf && named.contains(&Verb::Package));
        assert!(covered, "{verb:?} has no job in the golden file");
    }
}
