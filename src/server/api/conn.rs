//! One API connection: a nonblocking TCP stream, in the clear (loopback)
//! or through a rustls `ServerConnection` (a sans-io state machine: we
//! move bytes between it and the socket, as rustls's own mio example
//! does). What we queue waits in `out` as plaintext, so the backlog a slow
//! reader leaves is ours to see and bound, TLS or not.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::http;

/// Plaintext handed to rustls at a time: it seals records of it and
/// holds them until the socket takes them.
const TLS_CHUNK: usize = 16 << 10;
/// What one read pass takes from the socket at most before requests are
/// looked at: a client cannot make us buffer more than a request's worth.
const READ_CAP: usize = http::MAX_HEAD + http::MAX_BODY + (64 << 10);

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
    out: Vec<u8>,
    out_pos: usize,
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
            out: Vec::new(),
            out_pos: 0,
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
        self.out.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet handed to the socket (or to TLS).
    pub fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
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
                    if self.out_pos >= self.out.len() {
                        break;
                    }
                    match self.stream.write(&self.out[self.out_pos..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => self.out_pos += n,
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
                    if self.out_pos >= self.out.len() || tls.is_handshaking() {
                        break;
                    }
                    let end = (self.out_pos + TLS_CHUNK).min(self.out.len());
                    let n = tls.writer().write(&self.out[self.out_pos..end])?;
                    self.out_pos += n;
                }
            }
        }
        if self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Queue an event for a stream's reader, unless it is `SLOW` bytes
    /// behind: then it gets a last `dropped` event (numbered `id`) and is
    /// closing, given `grace` to take it before it is cut. Returns false
    /// when it was dropped.
    pub fn push_event(&mut self, bytes: &[u8], id: u64, now: Instant, grace: Duration) -> bool {
        if self.closing {
            return false;
        }
        if self.backlog() > super::events::SLOW {
            self.queue(&super::events::dropped(id));
            self.closing = true;
            self.deadline = now + grace;
            return false;
        }
        self.queue(bytes);
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
        assert!(
            conn.out.ends_with(b"\n\n")
                && String::from_utf8_lossy(&conn.out).contains("event: dropped")
        );
        // Nothing more is taken for it.
        let before = conn.backlog();
        assert!(!conn.push_event(&event, 2, now, grace));
        assert_eq!(conn.backlog(), before);
    }
}
