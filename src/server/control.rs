//! One CLI connection on the control socket: a nonblocking UNIX stream with
//! length-prefixed requests in and responses out. Reads stop at `WouldBlock`;
//! responses wait in a write buffer with a cursor until the socket takes them.

use std::io::{self, Read, Write};

use mio::net::UnixStream;
use uuid::Uuid;

use crate::wire::{self, FrameBuf, Request, Response, WireError};

/// Past this much unread, a waiting CLI gets each finished part without its
/// output (its state, exit and times still come, so its progress and exit
/// status hold), and at the end how many it missed and where to look.
pub const SLOW_READER: usize = 4 << 20;

/// Bytes a reader may leave unread before we hang up on it (parts without
/// output are a few hundred bytes: a run of hundreds of thousands).
const MAX_PENDING_OUT: usize = 64 << 20;

/// Jobs named in a `Withheld` note.
const WITHHELD_JOBS: usize = 20;

/// What reading a connection produced.
pub enum Inbound {
    Requests(Vec<Request>),
    /// The peer hung up (possibly after some requests).
    Closed(Vec<Request>),
    /// The peer sent something that is not a request: hang up.
    Corrupt(WireError),
}

/// A control connection.
pub struct ControlConn {
    pub stream: UnixStream,
    inbuf: FrameBuf,
    out: Vec<u8>,
    out_pos: usize,
    /// Parts sent without their output, and their first jobs.
    withheld: u64,
    withheld_jobs: Vec<Uuid>,
}

impl ControlConn {
    pub fn new(stream: UnixStream) -> ControlConn {
        ControlConn {
            stream,
            inbuf: FrameBuf::new(wire::MAX_REQUEST),
            out: Vec::new(),
            out_pos: 0,
            withheld: 0,
            withheld_jobs: Vec::new(),
        }
    }

    /// Read everything available and decode the whole requests in it.
    /// Requests are decoded after every read, so the buffer never holds
    /// more than one request's worth (the limit) plus one read.
    pub fn read(&mut self) -> Inbound {
        let mut requests = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let mut closed = false;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    self.inbuf.push(&buf[..n]);
                    if let Err(e) = self.decode(&mut requests) {
                        return Inbound::Corrupt(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            Inbound::Closed(requests)
        } else {
            Inbound::Requests(requests)
        }
    }

    fn decode(&mut self, requests: &mut Vec<Request>) -> Result<(), WireError> {
        while let Some(r) = self.inbuf.next_message::<Request>()? {
            requests.push(r);
        }
        debug_assert!(self.inbuf.held() <= 4 + wire::MAX_REQUEST);
        Ok(())
    }

    /// Queue a response, written at the next `flush` (the loop flushes
    /// every connection once per pass: one write, and one wake-up of the
    /// CLI, for all a pass said to it). A reader that is far behind gets
    /// parts without their output (see `SLOW_READER`).
    pub fn send(&mut self, resp: &Response) -> io::Result<()> {
        if self.out.len() - self.out_pos > MAX_PENDING_OUT {
            return Err(io::Error::other("client is not reading its responses"));
        }
        match resp {
            Response::NodeDone(part) if self.backlog() > SLOW_READER => {
                let mut brief = part.without_output();
                if !(part.stdout.is_empty() && part.stderr.is_empty() && part.attempts.is_empty()) {
                    self.withheld += 1;
                    if self.withheld_jobs.len() < WITHHELD_JOBS
                        && !self.withheld_jobs.contains(&part.job_id)
                    {
                        self.withheld_jobs.push(part.job_id);
                    }
                    let note = format!(
                        "output not shown here (this CLI read too slowly): `director manage --job-info {}`",
                        part.job_id
                    );
                    brief.message = Some(match brief.message.take() {
                        Some(m) => format!("{m}; {note}"),
                        None => note,
                    });
                }
                self.out
                    .extend_from_slice(&wire::encode_control(&Response::NodeDone(brief)));
            }
            Response::JobDone(_) | Response::ParentDone { .. } if self.withheld > 0 => {
                let note = Response::Withheld {
                    parts: std::mem::take(&mut self.withheld),
                    jobs: std::mem::take(&mut self.withheld_jobs),
                };
                self.out.extend_from_slice(&wire::encode_control(&note));
                self.out.extend_from_slice(&wire::encode_control(resp));
            }
            resp => self.out.extend_from_slice(&wire::encode_control(resp)),
        }
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Is anything queued and not yet written?
    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Write pending bytes until the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        Ok(())
    }
}
