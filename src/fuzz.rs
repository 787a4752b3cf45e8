//! Property tests that feed hostile input to everything that parses what
//! comes from outside: the ZeroMQ wire decoder (both directions), the
//! control socket's framing, the ZAP parser, Z85, the job DSL and the
//! orchestration loader. Mutations of valid inputs (bit flips, truncations,
//! huge length prefixes, spliced bytes) and random bytes, from fixed seeds,
//! so a failure is repeatable. `cargo test` runs them; `DIRECTOR_FUZZ=N`
//! multiplies the iterations for a longer hunt.
//!
//! The properties: nothing panics; a decoder never makes an allocation
//! larger than a small multiple of the message in front of it (a global
//! allocator in this test build, `heapcount`, records the largest one); parse errors are
//! one line.

use std::path::Path;

use uuid::Uuid;

use crate::dsl::{Task, Verb};
use crate::wire::{
    self, Block, ClientMsg, Exit, FrameBuf, Outcome, Request, Response, ServerMsg, CHUNK,
    MAX_REQUEST,
};

use crate::heapcount::largest_allocation;

/// What a decoder may allocate for a message of `len` bytes: its limit is
/// at most 32 times the message, and sequences preallocate a few elements.
fn allowed(len: usize) -> usize {
    32 * len + 4096
}

/// xorshift64*: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// Fewer than `max` random bytes.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn iterations(base: usize) -> usize {
    let scale = std::env::var("DIRECTOR_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);
    base * scale
}

/// One hostile edit of `input`.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    // bincode's varint markers (u16, u32, u64, u128), and edges.
    const INTERESTING: [u8; 9] = [0, 1, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xff];
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(v.len() + 1);
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => v.truncate(at),
            3 => {
                let junk = rng.bytes(16);
                v.splice(at..at, junk);
            }
            4 => {
                // A huge length prefix: u64 marker and a big value.
                let mut huge = vec![0xfd];
                huge.extend((u64::MAX >> rng.below(40)).to_le_bytes());
                v.splice(at..at, huge);
            }
            5 if v.len() > 1 => {
                let from = rng.below(v.len());
                let len = rng.below(v.len() - from);
                let piece = v[from..from + len].to_vec();
                v.splice(at..at, piece);
            }
            _ => v = rng.bytes(64),
        }
    }
    v
}

fn outcome() -> Outcome {
    Outcome {
        exit: Exit::Error("could not".into()),
        stdout: b"hello\n".to_vec(),
        stderr: vec![0xff; 40],
        stdout_dropped: 3,
        stderr_dropped: 0,
        exec_secs: 1.5,
        attempts: Vec::new(),
    }
}

fn client_seeds() -> Vec<Vec<u8>> {
    let id = Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
    [
        ClientMsg::Heartbeat {
            interval_ms: 60_000,
        },
        ClientMsg::Ready {
            name: "web-1".into(),
            version: "0.1.0".into(),
            interval_ms: 1000,
            holding: vec![id, id],
            proof: vec![9; 32],
            instance: 0xfeed,
            seen: Some(wire::Dispatch { server: 3, seq: 4 }),
            facts: [("os_id".to_owned(), "debian".to_owned())].into(),
            labels: [("role".to_owned(), "web".to_owned())].into(),
        },
        ClientMsg::Started { job_id: id },
        ClientMsg::Finished {
            job_id: id,
            outcome: outcome(),
        },
        ClientMsg::Fetch {
            job_id: id,
            file: 2,
            offset: 1 << 30,
            len: CHUNK,
        },
    ]
    .iter()
    .map(|m| wire::encode(m).pop().unwrap())
    .collect()
}

fn add_task() -> Task {
    let mut t = Task::parse(
        Verb::Add,
        "--chown app:app /srv/a.conf /srv/b.conf /etc/app/",
    )
    .unwrap();
    if let crate::dsl::Action::Add(add) = &mut t.action {
        add.files.push(crate::dsl::SourceFile {
            path: "/srv/a.conf".into(),
            size: 10,
            mode: 0o644,
            sha1: "0".repeat(40),
        });
    }
    t
}

fn server_seeds() -> Vec<Vec<u8>> {
    let id = Uuid::from_u128(7);
    [
        ServerMsg::HeartbeatAck {
            expires_in_ms: 3000,
        },
        ServerMsg::Register,
        ServerMsg::Welcome {
            name: "n".into(),
            interval_ms: 500,
        },
        ServerMsg::Denied(wire::Denial::KeyHasName("other".into())),
        ServerMsg::Job {
            job_id: id,
            parent: Some(id),
            task: add_task(),
            dispatch: wire::Dispatch {
                server: 3,
                seq: 1 << 40,
            },
            live: true,
            instance: u64::MAX,
            lane: Some(wire::Lane {
                parent: id,
                group: u32::MAX,
                block: 7,
            }),
        },
        ServerMsg::ResultAck { job_id: id },
        ServerMsg::Chunk {
            job_id: id,
            file: 0,
            offset: 0,
        },
        ServerMsg::FetchError {
            job_id: id,
            file: 0,
            message: "gone".into(),
        },
    ]
    .iter()
    .map(|m| wire::encode(m).pop().unwrap())
    .collect()
}

fn request_seeds() -> Vec<Vec<u8>> {
    let run = Task::parse(Verb::Run, "--timeout 5 echo {{ x }}").unwrap();
    [
        Request::Submit {
            task: add_task(),
            targets: vec!["a".into(), "b".into()],
            exclude: vec!["c*".into()],
            wait: true,
            queue_offline: true,
            follow: true,
        },
        Request::Orchestrate {
            blocks: vec![Block {
                name: Some("web".into()),
                assign: vec![None, Some(wire::Assigned(vec!["db1".into()]))],
                concurrent: true,
                ..Block::of(vec!["web*".into()], vec![run.clone(), run])
            }],
            exclude: vec!["role=db".into()],
            rolling: Some(wire::Rolling {
                batch: wire::Amount::Percent(25),
                max_fail: Some(wire::Amount::Count(1)),
            }),
            wait: false,
            dry_run: true,
            queue_offline: false,
            follow: false,
        },
        Request::JobInfo {
            id: Uuid::from_u128(3),
            show_values: true,
        },
        Request::AcceptKey { name: "n1".into() },
        Request::ListKeys,
    ]
    .iter()
    .map(wire::encode_control)
    .collect()
}

/// Decode `body` as `T` from a peer; check the allocation bound.
fn decode_checked<T: serde::de::DeserializeOwned>(body: &[u8], header: &[u8]) {
    let frames = vec![header.to_vec(), body.to_vec()];
    let (_, largest) = largest_allocation(|| wire::decode::<T>(&frames).is_ok());
    assert!(
        largest <= allowed(body.len()),
        "decoding {} bytes allocated {largest} at once: {body:?}",
        body.len()
    );
}

#[test]
fn the_wire_decoder_survives_hostile_messages_within_its_memory_bound() {
    let mut rng = Rng(0x5eed_0001);
    let header = wire::encode(&ClientMsg::Heartbeat { interval_ms: 1 })[0].clone();
    let (client, server) = (client_seeds(), server_seeds());
    for seed in client.iter().chain(&server) {
        decode_checked::<ClientMsg>(seed, &header);
        decode_checked::<ServerMsg>(seed, &header);
    }
    for _ in 0..iterations(20_000) {
        let seed = if rng.below(2) == 0 {
            &client[rng.below(client.len())]
        } else {
            &server[rng.below(server.len())]
        };
        let body = mutate(&mut rng, seed);
        decode_checked::<ClientMsg>(&body, &header);
        decode_checked::<ServerMsg>(&body, &header);
        // Frame counts, headers and payload frames of any shape.
        let count = rng.below(5);
        let mut frames: Vec<Vec<u8>> = (0..count).map(|_| rng.bytes(8)).collect();
        if rng.below(2) == 0 {
            frames.insert(0, header.clone());
        }
        let _ = wire::decode::<ClientMsg>(&frames);
        let _ = wire::decode_with_payload::<ServerMsg>(frames);
    }
}

#[test]
fn a_tiny_message_cannot_claim_a_huge_allocation() {
    let header = wire::encode(&ClientMsg::Heartbeat { interval_ms: 1 })[0].clone();
    // Finished { job_id, outcome: { exit: Code(0), stdout: <256 MiB> ... } }
    let mut body = vec![3];
    body.extend([16]);
    body.extend([0u8; 16]);
    body.extend([0, 0, 0xfd]);
    body.extend((1u64 << 28).to_le_bytes());
    let frames = vec![header, body.clone()];
    let (r, largest) = largest_allocation(|| wire::decode::<ClientMsg>(&frames));
    assert!(r.is_err());
    assert!(largest <= allowed(body.len()), "{largest} bytes");
}

#[test]
fn control_framing_survives_hostile_streams() {
    let mut rng = Rng(0x5eed_0002);
    let seeds = request_seeds();
    let responses: Vec<Vec<u8>> = [
        Response::Rejected("no".into()),
        Response::Purged { purged: 1, kept: 2 },
    ]
    .iter()
    .map(wire::encode_control)
    .collect();
    for _ in 0..iterations(5_000) {
        let mut stream = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let seed = &seeds[rng.below(seeds.len())];
            if rng.below(3) == 0 {
                stream.extend(mutate(&mut rng, seed));
            } else {
                stream.extend(seed);
            }
        }
        let mut fb = FrameBuf::new(MAX_REQUEST);
        let mut rest = stream.as_slice();
        'feed: while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(4096));
            fb.push(&rest[..n]);
            rest = &rest[n..];
            loop {
                let before = fb.held();
                let (r, largest) = largest_allocation(|| fb.next_message::<Request>());
                // One frame's body at most, plus what the buffer holds.
                assert!(
                    largest <= allowed(before) + before,
                    "{largest} for {before}"
                );
                match r {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed, // the server hangs up
                }
            }
            assert!(fb.held() <= 4 + MAX_REQUEST + 4096);
        }
        // The CLI's side: responses, mutated.
        let pick = rng.below(responses.len());
        let resp = mutate(&mut rng, &responses[pick]);
        let mut fb = FrameBuf::new(wire::MAX_RESPONSE);
        fb.push(&resp);
        let _ = fb.next_message::<Response>();
    }
}

#[test]
fn zap_and_z85_parsers_survive_garbage() {
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..iterations(5_000) {
        let count = rng.below(12);
        let frames: Vec<Vec<u8>> = (0..count).map(|_| rng.bytes(40)).collect();
        let _ = crate::server::zap::parse(&frames);
        let text: String = rng
            .bytes(60)
            .into_iter()
            .map(|b| (b % 128) as char)
            .collect();
        let _ = crate::curve::z85_decode(&text);
        let _ = crate::curve::PublicKey::from_z85(&text);
    }
}

/// Words the DSL gives meaning to, to build job strings from.
const DSL_WORDS: &[&str] = &[
    "--skip-cache",
    "--run-once",
    "--timeout",
    "--timeout=",
    "--stdout-arg",
    "--chown",
    "--chown=",
    "--",
    "-",
    "=",
    "0",
    "99999999999999999999",
    "-1",
    "echo",
    "hi",
    "'",
    "\"",
    "\\",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "x",
    "/srv/*.conf",
    "/etc/",
    "a:b",
    ":",
    "\n",
    "\t",
    " ",
    "é",
    "\u{0}",
    "🦀",
];

#[test]
fn the_dsl_parser_survives_any_job_string_and_its_sha1_is_canonical() {
    let mut rng = Rng(0x5eed_0004);
    for _ in 0..iterations(20_000) {
        let mut s = String::new();
        for _ in 0..rng.below(10) {
            s.push_str(DSL_WORDS[rng.below(DSL_WORDS.len())]);
            if rng.below(2) == 0 {
                s.push(' ');
            }
        }
        if rng.below(4) == 0 {
            s = String::from_utf8_lossy(&mutate(&mut rng, s.as_bytes())).into_owned();
        }
        for verb in Verb::ALL {
            match Task::parse(*verb, &s) {
                Ok(task) => {
                    // The printed form means the same task.
                    let again = Task::parse(*verb, &task.args()).unwrap_or_else(|e| {
                        panic!("{verb} {s:?} printed as {:?}: {e}", task.args())
                    });
                    assert_eq!(again.sha1(), task.sha1(), "{verb} {s:?}");
                }
                Err(e) => assert!(!e.contains('\n'), "two-line error for {s:?}: {e}"),
            }
        }
    }
}

const YAML_SEED: &str = "---
- targets: [web1, 'db*']
  jobs:
  - ARG: app demo
  - RUN: --timeout 5 echo {{ app }}
  - WORKDIR: /srv/app
- jobs:
  - ENV: K v
  - ADD: --chown=a:b /srv/x /etc/x
";

#[test]
fn the_orchestration_loader_survives_hostile_yaml() {
    let mut rng = Rng(0x5eed_0005);
    let path = Path::new("fuzz.yaml");
    assert!(crate::orchestrate::parse(path, YAML_SEED).is_ok());
    let bombs = [
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
        &"[".repeat(100_000),
        "- jobs: [{RUN: }]",
        "- jobs: [{RUN: [1, 2]}]",
        "- {jobs: [], targets: 3}",
    ];
    for text in bombs {
        let r = crate::orchestrate::parse(path, text);
        assert!(r.is_err(), "{text:.40}");
    }
    for _ in 0..iterations(3_000) {
        let bytes = mutate(&mut rng, YAML_SEED.as_bytes());
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = crate::orchestrate::parse(path, &text) {
            assert!(e.starts_with("orchestration file fuzz.yaml: "), "{e}");
        }
    }
}
