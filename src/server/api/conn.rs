//! One API connection: a nonblocking TCP stream, in the clear (loopback)
//! or through a rustls `ServerConnection` (a sans-io state machine: we
//! move bytes between it and the socket, as rustls's own mio example
//! does). What we queue waits in `out` as plaintext, so the backlog a slow
//! reader leaves is ours to see and bound, TLS or not. Event batches are
//! queued shared (`Rc`), not copied: fifty readers of the stream hold one
//! copy of what they have yet to take.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::http;

/// Plaintext handed to rustls at a time: it seals records of it and
/// holds them until the socket takes them.
const TLS_CHUNK: usize = 16 << 10;
/// What one read pass takes from the socket at most before requests are
/// looked at: a client cannot make us buffer more than a request's worth.
const READ_CAP: usize = http::MAX_HEAD + http::MAX_BODY + (64 << 10);

/// Slices handed to one vectored write.
const WRITEV_MAX: usize = 32;
/// Our own bytes are gathered into one chunk up to this size.
const OWN_CHUNK: usize = 64 << 10;

/// Bytes waiting for the socket.
enum Chunk {
    /// This connection's own: responses, stream heads, comments, a
    /// follower's events.
    Own(Vec<u8>),
    /// A batch of the event stream, shared by every reader of it.
    Shared(Rc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Own(v) => v,
            Chunk::Shared(b) => b,
        }
    }
}

/// What the connection is doing.
#[derive(Debug)]
pub enum State {
    /// Waiting for a request (the deadline bounds a slow one).
    Reading,
    /// A request is with the core: its answer is awaited.
    Waiting(super::routes::Pending),
    /// A server-sent event stream.
    Events(super::events::Follower),
}

pub struct Conn {
    pub stream: TcpStream,
    tls: Option<Box<rustls::ServerConnection>>,
    pub reader: http::Reader,
    /// What waits for the socket, in order; `out_pos` bytes of the first
    /// chunk are written, `queued` bytes in all are not.
    out: VecDeque<Chunk>,
    out_pos: usize,
    queued: usize,
    pub state: State,
    /// Past this, a connection in `Reading` is closed (408 if a request
    /// was begun), one idle between requests silently.
    pub deadline: Instant,
    /// Close once `out` is written.
    pub closing: bool,
    /// The token of a request whose body is arriving was checked.
    pub body_checked: bool,
    /// Where the peer is, for logs.
    pub peer: String,
}

/// What a read pass found.
pub enum Inbound {
    /// Bytes may have arrived; the peer is still there.
    Open,
    /// The peer closed its side (or the connection broke).
    Closed,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        tls: Option<rustls::ServerConnection>,
        deadline: Instant,
        peer: String,
    ) -> Conn {
        Conn {
            stream,
            tls: tls.map(Box::new),
            reader: http::Reader::default(),
            out: VecDeque::new(),
            out_pos: 0,
            queued: 0,
            state: State::Reading,
            deadline,
            closing: false,
            body_checked: false,
            peer,
        }
    }

    /// Read what the socket has (through TLS if any) into `reader`.
    pub fn read(&mut self) -> Inbound {
        let mut buf = [0u8; 16 << 10];
        loop {
            if self.reader.held() > READ_CAP {
                return Inbound::Open;
            }
            match &mut self.tls {
                None => match self.stream.read(&mut buf) {
                    Ok(0) => return Inbound::Closed,
                    Ok(n) => self.reader.push(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Inbound::Open,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return Inbound::Closed,
                },
                Some(tls) => {
                    match tls.read_tls(&mut self.stream) {
                        Ok(0) => return Inbound::Closed,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Inbound::Open,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return Inbound::Closed,
                    }
                    if let Err(e) = tls.process_new_packets() {
                        log::debug!("API connection from {}: TLS: {e}", self.peer);
                        // rustls queued an alert for the peer: send it.
                        let _ = tls.write_tls(&mut self.stream);
                        return Inbound::Closed;
                    }
                    loop {
                        match tls.reader().read(&mut buf) {
                            Ok(0) => return Inbound::Closed,
                            Ok(n) => self.reader.push(&buf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => return Inbound::Closed,
                        }
                    }
                }
            }
        }
    }

    /// Queue bytes for the peer (written by `flush`).
    pub fn queue(&mut self, bytes: &[u8]) {
        // An empty chunk would make a write of nothing, which reads as a
        // dead socket.
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        if let Some(Chunk::Own(last)) = self.out.back_mut() {
            if last.len() + bytes.len() <= OWN_CHUNK {
                last.extend_from_slice(bytes);
                return;
            }
        }
        self.out.push_back(Chunk::Own(bytes.to_vec()));
    }

    fn queue_shared(&mut self, batch: Rc<[u8]>) {
        if batch.is_empty() {
            return;
        }
        self.queued += batch.len();
        self.out.push_back(Chunk::Shared(batch));
    }

    /// Bytes queued and not yet handed to the socket (or to TLS).
    pub fn backlog(&self) -> usize {
        self.queued
    }

    /// `n` more bytes were handed over.
    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.out.front() else { break };
            let left = front.bytes().len() - self.out_pos;
            if n < left {
                self.out_pos += n;
                return;
            }
            n -= left;
            self.out.pop_front();
            self.out_pos = 0;
        }
    }

    /// Is anything still to be written, by us or by TLS?
    pub fn has_output(&self) -> bool {
        self.backlog() > 0 || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Write until the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        loop {
            match &mut self.tls {
                None => {
                    if self.out.is_empty() {
                        break;
                    }
                    let mut slices = [IoSlice::new(&[]); WRITEV_MAX];
                    let mut k = 0;
                    for (i, c) in self.out.iter().take(WRITEV_MAX).enumerate() {
                        let skip = if i == 0 { self.out_pos } else { 0 };
                        slices[i] = IoSlice::new(&c.bytes()[skip..]);
                        k = i + 1;
                    }
                    match self.stream.write_vectored(&slices[..k]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => self.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                Some(tls) => {
                    if tls.wants_write() {
                        match tls.write_tls(&mut self.stream) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(_) => continue,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    let Some(front) = self.out.front() else { break };
                    if tls.is_handshaking() {
                        break;
                    }
                    let bytes = &front.bytes()[self.out_pos..];
                    let n = tls.writer().write(&bytes[..bytes.len().min(TLS_CHUNK)])?;
                    self.advance(n);
                }
            }
        }
        Ok(())
    }

    /// Queue event `id` for a stream's reader, unless it is `SLOW` bytes
    /// behind: then it gets a last `dropped` event (numbered as the last
    /// one it got, what it sends back in `Last-Event-ID`) and is closing,
    /// given `grace` to take it before it is cut. Returns false when it
    /// was dropped.
    pub fn push_event(&mut self, bytes: &[u8], id: u64, now: Instant, grace: Duration) -> bool {
        let taken = self.may_take(id.saturating_sub(1), now, grace);
        if taken {
            self.queue(bytes);
        }
        taken
    }

    /// `push_event` for a batch of the whole stream (whole events, after
    /// the one numbered `before`), shared with its other readers.
    pub fn push_batch(
        &mut self,
        batch: &Rc<[u8]>,
        before: u64,
        now: Instant,
        grace: Duration,
    ) -> bool {
        let taken = self.may_take(before, now, grace);
        if taken {
            self.queue_shared(batch.clone());
        }
        taken
    }

    fn may_take(&mut self, seen: u64, now: Instant, grace: Duration) -> bool {
        if self.closing {
            return false;
        }
        if self.backlog() > super::events::SLOW {
            // Chunks are whole events, written in order: this one cannot
            // land inside another.
            self.queue(&super::events::dropped(seen));
            self.closing = true;
            self.deadline = now + grace;
            return false;
        }
        true
    }

    /// Say goodbye: a TLS close_notify, then nothing more.
    pub fn close_notify(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = tls.write_tls(&mut self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real loopback connection whose peer never reads.
    fn pair() -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let conn = Conn::new(
            TcpStream::from_std(ours),
            None,
            Instant::now(),
            "test".into(),
        );
        (conn, peer)
    }

    #[test]
    fn a_reader_that_stops_reading_is_dropped_past_the_bound_with_a_last_event() {
        let (mut conn, _peer) = pair();
        let event =
            super::super::http::event(1, "part", &format!("{{\"pad\":\"{}\"}}", "x".repeat(1000)));
        let now = Instant::now();
        let grace = Duration::from_secs(5);
        let mut queued = 0usize;
        // The socket takes what the kernel buffers; the rest waits with us,
        // up to the bound.
        while conn.push_event(&event, 1, now, grace) {
            queued += event.len();
            conn.flush().unwrap();
            assert!(queued < 64 << 20, "never dropped after {queued} bytes");
        }
        assert!(conn.backlog() > super::super::events::SLOW);
        assert!(conn.backlog() < super::super::events::SLOW + 2 * event.len() + 512);
        assert!(conn.closing);
        assert_eq!(conn.deadline, now + grace);
        let last = conn.out.back().unwrap().bytes();
        assert!(
            last.ends_with(b"\n\n") && String::from_utf8_lossy(last).contains("event: dropped")
        );
        // Nothing more is taken for it.
        let before = conn.backlog();
        assert!(!conn.push_event(&event, 2, now, grace));
        assert_eq!(conn.backlog(), before);
    }

    #[test]
    fn stream_readers_share_each_batch_and_one_dropped_can_resume_from_its_last_id() {
        use super::super::events::Bus;
        use crate::wire::Response;
        let (mut stuck, _peer) = pair();
        let (mut reading, mut peer) = pair();
        peer.set_nonblocking(true).unwrap();
        let mut bus = Bus::default();
        let now = Instant::now();
        let grace = Duration::from_secs(5);
        let mut got = Vec::new();
        let mut drop_id = None;
        let mut n = 0;
        while drop_id.is_none() {
            // A batch of events, as 25 ms of a busy cluster make.
            for _ in 0..200 {
                n += 1;
                bus.publish(&Response::NodeChanged {
                    node: format!("node-{n}-{}", "x".repeat(200)),
                    state: "online".into(),
                });
            }
            let (batch, before) = bus.seal().unwrap();
            assert!(reading.push_batch(&batch, before, now, grace));
            if stuck.push_batch(&batch, before, now, grace) {
                // One buffer for both readers, not a copy each.
                assert!(Rc::strong_count(&batch) >= 3);
            } else {
                drop_id = Some(before);
            }
            stuck.flush().unwrap();
            reading.flush().unwrap();
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(k) = peer.read(&mut buf) {
                got.extend_from_slice(&buf[..k]);
            }
            assert!(n < 200_000, "never dropped");
        }
        let seen = drop_id.unwrap();
        let last = stuck.out.back().unwrap().bytes();
        let last = String::from_utf8_lossy(last);
        assert!(
            last.starts_with(&format!("id: {seen}\nevent: dropped\n")),
            "the dropped event names the last event it got: {last}"
        );
        // Reconnecting with that id replays the batch it missed.
        let missed = String::from_utf8(bus.since(seen).unwrap()).unwrap();
        assert!(
            missed.starts_with(&format!("id: {}\n", seen + 1)),
            "{missed}"
        );
        // The reader that reads got every event, whole and in order.
        while reading.has_output() {
            reading.flush().unwrap();
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(k) = peer.read(&mut buf) {
                got.extend_from_slice(&buf[..k]);
            }
        }
        let text = String::from_utf8(got).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: ")?.parse().ok())
            .collect();
        assert_eq!(ids, (1..=n).collect::<Vec<u64>>());
    }
}
