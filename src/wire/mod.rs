//! Everything that crosses a socket, in one place: the ZeroMQ messages between
//! server and clients, the control-socket requests and responses between the
//! CLI and the server, and their codecs.
//!
//! ZeroMQ message layout (after the ROUTER's identity frame, if any):
//! `[b"DIR" + version][bincode body]`. A message with the wrong frame count,
//! magic, version or body is rejected with a `WireError` for the caller to log
//! with the peer's identity; nothing here panics on peer input.
//!
//! Control socket: each message is a 4-byte big-endian length and a bincode
//! body. The length is checked against a limit before anything is allocated.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dsl::{Task, Verb};

mod control;
pub mod json;
mod node;
mod outcome;
mod plan;
mod views;

pub use control::*;
pub use node::*;
pub use outcome::*;
pub use plan::*;
pub use views::*;

/// Protocol magic, followed by the version byte.
pub const MAGIC: &[u8; 3] = b"DIR";
/// The one protocol version this build speaks. 2: nodes name themselves in
/// `Ready` (the routing id is no longer the name) and the server answers
/// with `Welcome` or `Denied`. 3: jobs carry their `Dispatch`, and `Ready`
/// says which client instance sends it and the last dispatch it received.
/// 4: `Ready` carries the node's facts and labels. 5: jobs carry
/// `--retries`, and a result the attempts before its last. 6: a node may
/// report a job `Lost` (it will not run a job it already had). 9: a
/// standby answers a node with `Standby` (where the active server is).
pub const VERSION: u8 = 9;
/// The longest ARG value a QUERY carries: a node with a longer one fails
/// the QUERY, so that the map sent to every target stays bounded.
pub const QUERY_VALUE_CAP: usize = 1 << 10;
/// Captured stdout and stderr are each cut to this many bytes on the node.
pub const OUTPUT_CAP: usize = 1 << 20;
/// A node's message to the server could say why a job could not run in at
/// most this many bytes; longer messages are cut.
pub const MESSAGE_CAP: usize = 4 << 10;

// Largest frame each port takes in each direction (`ZMQ_MAXMSGSIZE`): what
// its messages need, so a peer cannot make the other side buffer more.
/// The outputs of a result's earlier attempts, all together, are cut to
/// about this many bytes (`Outcome::bounded`).
pub const ATTEMPTS_CAP: usize = 512 << 10;
/// Node to server, job port: a result with two capped outputs and its
/// earlier attempts, or a `Ready` listing the jobs the node holds.
pub const MAX_JOB_UP: usize = 2 * OUTPUT_CAP + ATTEMPTS_CAP + (64 << 10);
/// Server to node, job port: a job, which is at most a control request.
pub const MAX_JOB_DOWN: usize = MAX_REQUEST + (64 << 10);
/// Node to server, transfer port: a fetch.
pub const MAX_TRANSFER_UP: usize = 1 << 10;
/// Server to node, transfer port: a chunk of file data.
pub const MAX_TRANSFER_DOWN: usize = CHUNK as usize + (4 << 10);
/// Both ways, heartbeat port: beats, acks, registration and denials.
pub const MAX_HEARTBEAT: usize = 1 << 10;
/// Bytes of file data in one transfer chunk.
pub const CHUNK: u32 = 1 << 20;
/// Chunks a node asks for ahead of what it has written (its credit).
pub const CREDIT: u32 = 4;
/// Largest control request the server reads (a job definition).
pub const MAX_REQUEST: usize = 4 << 20;
/// Largest control response the CLI reads (a listing of many jobs).
pub const MAX_RESPONSE: usize = 512 << 20;

/// Why a message was rejected.
#[derive(Debug, PartialEq)]
pub enum WireError {
    FrameCount(usize),
    BadMagic,
    Version(u8),
    Body(String),
    TooLarge { len: usize, max: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::FrameCount(n) => write!(f, "expected 2 frames, got {n}"),
            WireError::BadMagic => f.write_str("not a director message (bad magic)"),
            WireError::Version(v) => write!(
                f,
                "unknown protocol version {v} (this build speaks {VERSION})"
            ),
            WireError::Body(e) => write!(f, "undecodable body: {e}"),
            WireError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max}")
            }
        }
    }
}

fn encode_body<T: Serialize>(msg: &T) -> Vec<u8> {
    // Our own types always encode; a failure is a bug in this module.
    bincode::serde::encode_to_vec(msg, bincode::config::standard()).expect("wire types encode")
}

/// Decode a bincode body. The limit bounds what decoding may claim before
/// it allocates: every primitive claims its size in memory, strings and byte
/// strings their length. In memory a message is at most 8 times its
/// encoding (a `u64` may take one byte), so the limit is the smallest power
/// of four at or above 8 times the body: every valid body decodes, and a
/// 20-byte body can no longer ask for 512 MiB. Sequences other than bytes go
/// through `cautious_seq`, which preallocates only a little.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let need = body.len().saturating_mul(8);
    macro_rules! tiers {
        ($($shift:literal),*) => {
            $(
                if need <= 1usize << $shift {
                    return decode_limited::<T, { 1usize << $shift }>(body);
                }
            )*
        };
    }
    tiers!(8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32);
    Err(WireError::TooLarge {
        len: body.len(),
        max: 1 << 29,
    })
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(body: &[u8]) -> Result<T, WireError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (msg, used) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| WireError::Body(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Body(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// `Vec<u8>` as one byte string. It encodes as a sequence of bytes does, but
/// decodes through bincode's own byte-buffer path, which checks the length
/// against the limit before allocating (serde's sequence path would
/// preallocate up to 1 MiB on a length it cannot check).
pub mod bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

/// A sequence that preallocates at most a few elements, whatever length the
/// input claims: it grows only as elements are really decoded.
pub fn cautious_seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Seq<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Seq<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
            while let Some(x) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Seq(std::marker::PhantomData))
}

/// Encode a ZeroMQ message (without identity frame).
pub fn encode<T: Serialize>(msg: &T) -> Vec<Vec<u8>> {
    let mut head = MAGIC.to_vec();
    head.push(VERSION);
    vec![head, encode_body(msg)]
}

/// Encode a ZeroMQ message with a raw payload frame (file data), which is
/// never copied into the bincode body.
pub fn encode_with_payload<T: Serialize>(msg: &T, payload: Vec<u8>) -> Vec<Vec<u8>> {
    let mut frames = encode(msg);
    frames.push(payload);
    frames
}

/// Decode a ZeroMQ message that may carry a payload frame: the message and
/// the payload, if any. The caller checks that its kind expects one.
pub fn decode_with_payload<T: DeserializeOwned>(
    mut frames: Vec<Vec<u8>>,
) -> Result<(T, Option<Vec<u8>>), WireError> {
    let payload = if frames.len() == 3 {
        frames.pop()
    } else {
        None
    };
    Ok((decode(&frames)?, payload))
}

/// Decode a ZeroMQ message (without identity frame).
pub fn decode<T: DeserializeOwned>(frames: &[Vec<u8>]) -> Result<T, WireError> {
    let [head, body] = frames else {
        return Err(WireError::FrameCount(frames.len()));
    };
    match head.as_slice() {
        [m0, m1, m2, v] if [*m0, *m1, *m2] == *MAGIC => {
            if *v != VERSION {
                return Err(WireError::Version(*v));
            }
        }
        _ => return Err(WireError::BadMagic),
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> ClientMsg {
        ClientMsg::Finished {
            job_id: Uuid::new_v4(),
            outcome: Outcome {
                exit: Exit::Code(3),
                stdout: b"out".to_vec(),
                stderr: vec![0xff, 0],
                stdout_dropped: 0,
                stderr_dropped: 7,
                exec_secs: 0.25,
                attempts: vec![Attempt {
                    exit: Exit::TimedOut { secs: 1 },
                    stdout: b"first".to_vec(),
                    stderr: vec![],
                    stdout_dropped: 0,
                    stderr_dropped: 0,
                    exec_secs: 1.0,
                }],
            },
        }
    }

    #[test]
    fn a_cache_summary_is_bounded_whatever_a_node_sends() {
        let mut s = CacheSummary::default();
        for i in 0..100 {
            s.args.insert(format!("k{i:03}"), Some("v".repeat(1000)));
        }
        s.args.insert("x".repeat(10_000), None);
        s.env = vec!["y".repeat(10_000), "PATH".into()];
        let s = s.bounded();
        assert_eq!(s.args.len(), SUMMARY_ENTRIES);
        assert_eq!(s.args_more, 37, "36 past the first 64, and the long name");
        assert!(s.args.values().flatten().all(|v| v.len() == SUMMARY_VALUE));
        assert_eq!(s.env, ["PATH"]);
    }

    #[test]
    fn zmq_round_trip() {
        let msg = finished();
        assert_eq!(decode::<ClientMsg>(&encode(&msg)), Ok(msg));
        let task = Task::parse(crate::dsl::Verb::Run, "--timeout 3 true").unwrap();
        let job = ServerMsg::Job {
            job_id: Uuid::new_v4(),
            parent: Some(Uuid::new_v4()),
            task,
            dispatch: Dispatch { server: 7, seq: 9 },
            live: false,
            instance: 11,
            lane: None,
        };
        assert_eq!(decode::<ServerMsg>(&encode(&job)), Ok(job));
    }

    #[test]
    fn payload_frames_travel_beside_the_body() {
        let msg = ServerMsg::Chunk {
            job_id: Uuid::new_v4(),
            file: 1,
            offset: 1 << 20,
        };
        let frames = encode_with_payload(&msg, vec![7; 10]);
        assert_eq!(frames.len(), 3);
        assert_eq!(
            decode_with_payload::<ServerMsg>(frames),
            Ok((msg.clone(), Some(vec![7; 10])))
        );
        assert_eq!(
            decode_with_payload::<ServerMsg>(encode(&msg)),
            Ok((msg, None))
        );
        assert!(decode_with_payload::<ServerMsg>(vec![vec![]; 4]).is_err());
    }

    #[test]
    fn zmq_rejects_bad_frames() {
        let good = encode(&finished());
        assert_eq!(
            decode::<ClientMsg>(&good[..1]),
            Err(WireError::FrameCount(1))
        );
        let mut three = good.clone();
        three.push(vec![]);
        assert_eq!(decode::<ClientMsg>(&three), Err(WireError::FrameCount(3)));
        assert_eq!(
            decode::<ClientMsg>(&[b"XYZ\x01".to_vec(), good[1].clone()]),
            Err(WireError::BadMagic)
        );
        assert_eq!(
            decode::<ClientMsg>(&[b"DIR\x63".to_vec(), good[1].clone()]),
            Err(WireError::Version(99))
        );
        let truncated = good[1][..good[1].len() - 2].to_vec();
        assert!(matches!(
            decode::<ClientMsg>(&[good[0].clone(), truncated]),
            Err(WireError::Body(_))
        ));
        let mut trailing = good[1].clone();
        trailing.push(0);
        assert!(matches!(
            decode::<ClientMsg>(&[good[0].clone(), trailing]),
            Err(WireError::Body(_))
        ));
        assert!(matches!(
            decode::<ClientMsg>(&[good[0].clone(), vec![200, 1, 2]]),
            Err(WireError::Body(_))
        ));
        // A server message arriving where a client message is expected.
        let wrong = encode(&ServerMsg::ResultAck {
            job_id: Uuid::nil(),
        });
        assert!(decode::<ClientMsg>(&wrong).is_err());
    }

    #[test]
    fn control_frames_reassemble_and_reject_oversize() {
        let task = Task::parse(crate::dsl::Verb::Run, "x").unwrap();
        let req = Request::Submit {
            task,
            targets: vec!["a".into()],
            exclude: vec![],
            wait: true,
            queue_offline: false,
            follow: false,
        };
        let bytes = [
            encode_control(&req),
            encode_control(&Request::ListJobs { show_values: false }),
        ]
        .concat();
        let mut fb = FrameBuf::new(MAX_REQUEST);
        for chunk in bytes.chunks(3) {
            fb.push(chunk);
        }
        assert_eq!(fb.next_message::<Request>(), Ok(Some(req)));
        assert_eq!(
            fb.next_message::<Request>(),
            Ok(Some(Request::ListJobs { show_values: false }))
        );
        assert_eq!(fb.next_message::<Request>(), Ok(None));
        assert_eq!(fb.held(), 0);

        let mut fb = FrameBuf::new(16);
        fb.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            fb.next_message::<Request>(),
            Err(WireError::TooLarge { .. })
        ));
        let mut fb = FrameBuf::new(16);
        fb.push(&[0, 0, 0, 2, 0xff, 0xff]);
        assert!(matches!(
            fb.next_message::<Request>(),
            Err(WireError::Body(_))
        ));
    }

    #[test]
    fn job_state_map_serializes_to_json_keys() {
        let mut states = BTreeMap::new();
        states.insert(JobState::Succeeded, 2);
        let json = serde_json::to_string(&states).unwrap();
        assert_eq!(json, r#"{"succeeded":2}"#);
    }
}

#[cfg(test)]
mod golden;
