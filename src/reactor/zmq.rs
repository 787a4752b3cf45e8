//! `ZmqPort`: one ZeroMQ socket in a mio loop, with its outbox.
//!
//! The socket's `ZMQ_FD` is edge-triggered and only means "go and look": every
//! service pass reads `get_events()` and keeps receiving and sending until a
//! pass does nothing, because any send or receive can consume the edge
//! (libzmq#3641). The owning loop must call `service` on every port at the top
//! of every iteration, after anything that may have queued a send.
//! All calls use `DONTWAIT`; a send that would block stays in the outbox.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::curve::{KeyPair, PublicKey, SecretKey};

/// ROUTER (server, addresses peers by routing id) or DEALER (client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Router,
    Dealer,
}

/// Messages an outbox holds before new ones are dropped (with a log line).
const OUTBOX_CAP: usize = 100_000;

/// What one port carries, and so how much it may hold.
#[derive(Clone, Copy, Debug)]
pub struct PortSpec {
    /// "job", "transfer", "heartbeat" or "zap", for log lines.
    pub name: &'static str,
    /// Largest inbound frame (`ZMQ_MAXMSGSIZE`); a peer that sends more is
    /// disconnected by libzmq before the frame is buffered.
    pub max_msg: usize,
    /// Inbound messages libzmq buffers per peer (`ZMQ_RCVHWM`): with
    /// `max_msg`, the bound on what one peer can make us hold.
    pub rcvhwm: i32,
    /// Outbound messages libzmq buffers per peer (`ZMQ_SNDHWM`).
    pub sndhwm: i32,
    /// ROUTER: messages our outbox holds for one peer; past this, sends to
    /// it are refused, so a peer that asks and never reads cannot grow it.
    pub peer_cap: usize,
}

/// How a socket proves who it is.
pub enum Security<'a> {
    /// No encryption or authentication (`--curve off`, and inproc sockets).
    Plain,
    /// A CURVE server: peers are admitted by the ZAP handler of the context.
    CurveServer { secret: &'a SecretKey },
    /// A CURVE client that only talks to the server holding `server`.
    CurveClient {
        server: &'a PublicKey,
        own: &'a KeyPair,
    },
}

/// The ZAP domain the server's sockets announce to its handler.
pub const ZAP_DOMAIN: &str = "director";

/// One whole received message.
pub struct Inbound {
    /// ROUTER: the peer's routing id is the first frame.
    pub frames: Vec<Vec<u8>>,
    /// The user id our ZAP handler gave the peer (CURVE only).
    pub user_id: Option<String>,
    /// The peer's IP address, as libzmq saw it.
    pub peer_address: Option<String>,
}

/// What one service call did.
pub struct Serviced<T = ()> {
    pub received: Vec<Inbound>,
    /// ROUTER only: identities a message could not be routed to (the peer is
    /// gone), with the tag it was queued with; those messages were dropped.
    pub unroutable: Vec<(Vec<u8>, T)>,
    /// The receive budget ran out with more waiting: poll again at once.
    pub busy: bool,
}

/// A ZeroMQ socket registered in a loop, with its pending sends, each with
/// a tag of the owner's (`T`) that comes back if it cannot be routed: the
/// owner knows what it was without decoding it again.
pub struct ZmqPort<T = ()> {
    pub name: &'static str,
    sock: zmq::Socket,
    role: Role,
    fd: RawFd,
    peer_cap: usize,
    outbox: VecDeque<(Vec<Vec<u8>>, T)>,
    /// Something may have changed since the last `service` drained it: its
    /// fd fired, a message was queued, or it stopped with work left. A
    /// port that is not due has nothing new (its edge-triggered fd would
    /// have fired), and is not asked: asking costs libzmq a `poll`.
    due: bool,
    /// ROUTER: messages in the outbox per peer.
    per_peer: HashMap<Vec<u8>, usize>,
}

/// Bytes received in one service call before other sources get a turn: with
/// the message budget, what bounds the batch held in memory at once.
const BYTE_BUDGET: usize = 8 << 20;

impl<T> ZmqPort<T> {
    /// A ROUTER bound to `endpoint` (server side).
    pub fn bind(
        ctx: &zmq::Context,
        spec: PortSpec,
        endpoint: &str,
        security: Security,
        registry: &Registry,
        token: Token,
    ) -> Result<Self, zmq::Error> {
        let sock = ctx.socket(zmq::ROUTER)?;
        sock.set_router_mandatory(true)?;
        sock.set_router_handover(true)?;
        common_options(&sock, &spec)?;
        secure(&sock, &security)?;
        sock.bind(endpoint)?;
        Self::register(sock, spec, Role::Router, registry, token)
    }

    /// A DEALER connected to `endpoint` (client side). With `identity`, the
    /// server's ROUTER addresses it by that name; without, it picks an id.
    #[cfg(test)]
    pub fn connect(
        ctx: &zmq::Context,
        spec: PortSpec,
        identity: Option<&str>,
        endpoint: &str,
        security: Security,
        registry: &Registry,
        token: Token,
    ) -> Result<Self, zmq::Error> {
        let port = Self::dealer(ctx, spec, identity, security, registry, token)?;
        port.connect_to(endpoint)?;
        Ok(port)
    }

    /// A DEALER set up as `connect` does, not yet connected: a monitor
    /// started on it now sees every event of its first connection.
    pub fn dealer(
        ctx: &zmq::Context,
        spec: PortSpec,
        identity: Option<&str>,
        security: Security,
        registry: &Registry,
        token: Token,
    ) -> Result<Self, zmq::Error> {
        let sock = ctx.socket(zmq::DEALER)?;
        if let Some(id) = identity {
            sock.set_identity(id.as_bytes())?;
        }
        common_options(&sock, &spec)?;
        secure(&sock, &security)?;
        Self::register(sock, spec, Role::Dealer, registry, token)
    }

    /// Connect a `dealer` to `endpoint`.
    pub fn connect_to(&self, endpoint: &str) -> Result<(), zmq::Error> {
        self.sock.connect(endpoint)
    }

    /// Retry a failed connection this often (libzmq's default is 100 ms):
    /// for tests that need many retries.
    #[cfg(test)]
    pub fn set_reconnect_ivl(&self, ms: i32) -> Result<(), zmq::Error> {
        self.sock.set_reconnect_ivl(ms)
    }

    fn register(
        sock: zmq::Socket,
        spec: PortSpec,
        role: Role,
        registry: &Registry,
        token: Token,
    ) -> Result<Self, zmq::Error> {
        let fd = sock.get_fd()?;
        // Only ever READABLE: the fd signals both directions, and it is
        // zmq's, so we never read, write or close it.
        registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
            .map_err(|e| zmq::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
        Ok(ZmqPort {
            name: spec.name,
            sock,
            role,
            fd,
            peer_cap: spec.peer_cap,
            outbox: VecDeque::new(),
            per_peer: HashMap::new(),
            due: true,
        })
    }

    /// Start a socket monitor for `events` on `endpoint` (an inproc
    /// address); see `reactor::monitor`.
    pub fn monitor(&self, endpoint: &str, events: i32) -> Result<(), zmq::Error> {
        self.sock.monitor(endpoint, events)
    }

    /// Queue a message (ROUTER: routing id first). Sent by the next
    /// `service`. False when it was dropped: the outbox, or the peer's share
    /// of it, is full.
    pub fn queue(&mut self, frames: Vec<Vec<u8>>) -> bool
    where
        T: Default,
    {
        self.queue_tagged(frames, T::default())
    }

    /// Its fd fired: service it at the next pass.
    pub fn mark_ready(&mut self) {
        self.due = true;
    }

    /// `queue`, with the tag to give back should it be unroutable.
    pub fn queue_tagged(&mut self, frames: Vec<Vec<u8>>, tag: T) -> bool {
        self.due = true;
        debug_assert!(self.outbox.len() <= OUTBOX_CAP);
        if self.outbox.len() >= OUTBOX_CAP {
            log::error!(
                "{} port: outbox full ({OUTBOX_CAP} messages); dropping a message",
                self.name
            );
            return false;
        }
        if self.role == Role::Router {
            let Some(peer) = frames.first() else {
                return false;
            };
            let n = self.per_peer.entry(peer.clone()).or_insert(0);
            if *n >= self.peer_cap {
                return false;
            }
            *n += 1;
        }
        self.outbox.push_back((frames, tag));
        true
    }

    /// Would a message to `peer` be taken now (ROUTER)?
    pub fn has_room(&self, peer: &[u8]) -> bool {
        self.outbox.len() < OUTBOX_CAP
            && self.per_peer.get(peer).copied().unwrap_or(0) < self.peer_cap
    }

    /// Does the outbox still hold messages the socket refused for now?
    pub fn has_backlog(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Receive (up to `budget` messages) and send until neither can make
    /// progress. Errors other than `EAGAIN`/`EINTR` are returned; they mean
    /// the socket itself is broken.
    pub fn service(&mut self, budget: usize) -> Result<Serviced<T>, zmq::Error> {
        let mut done = Serviced {
            received: Vec::new(),
            unroutable: Vec::new(),
            busy: false,
        };
        if !self.due {
            return Ok(done);
        }
        let mut bytes = 0;
        loop {
            let events = self.sock.get_events()?;
            let mut progressed = false;
            if events.contains(zmq::POLLIN) {
                if done.received.len() >= budget || bytes >= BYTE_BUDGET {
                    done.busy = true;
                    break;
                }
                if let Some(msg) = self.recv_one()? {
                    bytes += msg.frames.iter().map(Vec::len).sum::<usize>();
                    done.received.push(msg);
                    progressed = true;
                }
            }
            if !self.outbox.is_empty() {
                progressed |= self.flush(&mut done.unroutable)?;
            }
            if !progressed {
                break;
            }
        }
        // Drained, and nothing waits to go: the fd says when that changes.
        self.due = done.busy || !self.outbox.is_empty();
        Ok(done)
    }

    /// One whole message, with the metadata libzmq attached to its body.
    fn recv_one(&mut self) -> Result<Option<Inbound>, zmq::Error> {
        let mut msg = Inbound {
            frames: Vec::new(),
            user_id: None,
            peer_address: None,
        };
        loop {
            let mut part = zmq::Message::new();
            match self.sock.recv(&mut part, zmq::DONTWAIT) {
                Ok(()) => {}
                // The parts of a message arrive together, so only the first
                // can be missing.
                Err(zmq::Error::EAGAIN | zmq::Error::EINTR) if msg.frames.is_empty() => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
            // A ROUTER makes the routing-id frame itself, without metadata.
            if self.role == Role::Router && msg.user_id.is_none() && !msg.frames.is_empty() {
                msg.user_id = part.gets("User-Id").map(str::to_owned);
                msg.peer_address = part.gets("Peer-Address").map(str::to_owned);
            }
            let more = part.get_more();
            msg.frames.push(part.to_vec());
            if !more {
                return Ok(Some(msg));
            }
        }
    }

    fn sent(&mut self, peer: &[u8]) {
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
    }

    /// Send what the socket takes now. Returns whether anything left the
    /// outbox.
    fn flush(&mut self, unroutable: &mut Vec<(Vec<u8>, T)>) -> Result<bool, zmq::Error> {
        let before = self.outbox.len();
        match self.role {
            Role::Dealer => {
                while let Some((msg, _)) = self.outbox.front() {
                    match self
                        .sock
                        .send_multipart(msg.iter().map(Vec::as_slice), zmq::DONTWAIT)
                    {
                        Ok(()) => {
                            self.outbox.pop_front();
                        }
                        Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            Role::Router => {
                // One peer at its high-water mark must not hold up the others,
                // but each peer's messages keep their order: once a peer
                // blocks, the rest of its messages wait for the next pass.
                let mut blocked: HashSet<Vec<u8>> = HashSet::new();
                let mut kept = VecDeque::new();
                while let Some((msg, tag)) = self.outbox.pop_front() {
                    let Some(identity) = msg.first().cloned() else {
                        continue;
                    };
                    if blocked.contains(&identity) {
                        kept.push_back((msg, tag));
                        continue;
                    }
                    match self
                        .sock
                        .send_multipart(msg.iter().map(Vec::as_slice), zmq::DONTWAIT)
                    {
                        Ok(()) => self.sent(&identity),
                        Err(zmq::Error::EHOSTUNREACH) => {
                            self.sent(&identity);
                            unroutable.push((identity, tag));
                        }
                        Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => {
                            blocked.insert(identity);
                            kept.push_back((msg, tag));
                        }
                        Err(e) => {
                            kept.push_back((msg, tag));
                            kept.extend(self.outbox.drain(..));
                            self.outbox = kept;
                            return Err(e);
                        }
                    }
                }
                self.outbox = kept;
            }
        }
        debug_assert!(self.per_peer.values().sum::<usize>() <= self.outbox.len());
        Ok(self.outbox.len() < before)
    }

    /// Give unsent messages up to `ms` to leave when the socket is dropped.
    pub fn set_linger(&self, ms: i32) {
        let _ = self.sock.set_linger(ms);
    }

    /// Stop the monitor `monitor` started (libzmq's `zmq_socket_monitor`
    /// with no endpoint), so that no event is sent to a reader about to
    /// go.
    pub fn stop_monitor(&mut self) {
        // SAFETY: the socket is ours and open; a null endpoint is libzmq's
        // documented way to stop monitoring.
        let rc =
            unsafe { zmq_sys::zmq_socket_monitor(self.sock.as_mut_ptr(), std::ptr::null(), 0) };
        if rc != 0 {
            log::debug!("{} port: stopping its monitor failed", self.name);
        }
    }

    /// Flush what can go now, deregister, and drop the socket.
    pub fn close(mut self, registry: &Registry) {
        let _ = self.flush(&mut Vec::new());
        let _ = registry.deregister(&mut SourceFd(&self.fd));
    }
}

fn common_options(sock: &zmq::Socket, spec: &PortSpec) -> Result<(), zmq::Error> {
    sock.set_linger(0)?;
    sock.set_sndhwm(spec.sndhwm)?;
    sock.set_rcvhwm(spec.rcvhwm)?;
    sock.set_maxmsgsize(spec.max_msg as i64)?;
    Ok(())
}

fn secure(sock: &zmq::Socket, security: &Security) -> Result<(), zmq::Error> {
    match security {
        Security::Plain => {}
        Security::CurveServer { secret } => {
            sock.set_curve_server(true)?;
            sock.set_curve_secretkey(secret.as_bytes())?;
            sock.set_zap_domain(ZAP_DOMAIN)?;
        }
        Security::CurveClient { server, own } => {
            sock.set_curve_serverkey(server.as_bytes())?;
            sock.set_curve_publickey(own.public.as_bytes())?;
            sock.set_curve_secretkey(own.secret.as_bytes())?;
        }
    }
    Ok(())
}

/// `tcp://host:port`, bracketing IPv6 literals.
pub fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const TEST: PortSpec = PortSpec {
        name: "t",
        max_msg: 1 << 20,
        rcvhwm: 1000,
        sndhwm: 1000,
        peer_cap: 1000,
    };

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("*", 5555), "tcp://*:5555");
        assert_eq!(endpoint("::1", 1), "tcp://[::1]:1");
        assert_eq!(endpoint("node.example", 2), "tcp://node.example:2");
    }

    /// A burst sent in one go is received whole by repeated service passes,
    /// with nothing but the edge-triggered fd to wake us.
    #[test]
    fn burst_is_drained_without_more_traffic() {
        let ctx = zmq::Context::new();
        let mut poll = mio::Poll::new().unwrap();
        let router = ZmqPort::<()>::bind(
            &ctx,
            TEST,
            "tcp://127.0.0.1:*",
            Security::Plain,
            poll.registry(),
            Token(0),
        )
        .unwrap();
        let addr = router.sock.get_last_endpoint().unwrap().unwrap();
        let mut router = router;
        let mut dealer = ZmqPort::<()>::connect(
            &ctx,
            TEST,
            Some("peer"),
            &addr,
            Security::Plain,
            poll.registry(),
            Token(1),
        )
        .unwrap();
        for i in 0..500u32 {
            dealer.queue(vec![i.to_be_bytes().to_vec()]);
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut events = mio::Events::with_capacity(8);
        loop {
            let busy_d = dealer.service(16).unwrap().busy || dealer.has_backlog();
            let r = router.service(16).unwrap();
            got.extend(r.received);
            if got.len() >= 500 || Instant::now() > deadline {
                break;
            }
            // Nothing else will wake us: only the fd's edge, or a busy port.
            let timeout = if busy_d || r.busy {
                Duration::ZERO
            } else {
                Duration::from_secs(30)
            };
            poll.poll(&mut events, Some(timeout)).unwrap();
            // As the loops do: a port is asked again when its fd fired.
            for ev in events.iter() {
                match ev.token() {
                    Token(0) => router.mark_ready(),
                    _ => dealer.mark_ready(),
                }
            }
        }
        assert_eq!(got.len(), 500);
        assert!(got.iter().all(|m| m.frames[0] == b"peer"));
        // A send to an identity that never connected is reported, not kept.
        assert!(router.queue(vec![b"nobody".to_vec(), b"x".to_vec()]));
        let r = router.service(16).unwrap();
        assert_eq!(r.unroutable.len(), 1);
        assert!(!router.has_backlog());
    }
}
