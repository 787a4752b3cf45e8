//! `ZmqPort`: one ZeroMQ socket in a mio loop, with its outbox.
//!
//! The socket's `ZMQ_FD` is edge-triggered and only means "go and look": every
//! service pass reads `get_events()` and keeps receiving and sending until a
//! pass does nothing, because any send or receive can consume the edge
//! (libzmq#3641). The owning loop must call `service` on every port at the top
//! of every iteration, after anything that may have queued a send.
//! All calls use `DONTWAIT`; a send that would block stays in the outbox.

use std::collections::{HashSet, VecDeque};
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::wire::MAX_ZMQ_MSG;

/// ROUTER (server, addresses peers by identity) or DEALER (client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Router,
    Dealer,
}

/// Messages an outbox holds before new ones are dropped (with a log line).
const OUTBOX_CAP: usize = 100_000;
/// ZeroMQ high-water marks: far above one node's normal traffic.
const HWM: i32 = 100_000;

/// What one service call did.
#[derive(Default)]
pub struct Serviced {
    /// Whole messages received (ROUTER: the identity is the first frame).
    pub received: Vec<Vec<Vec<u8>>>,
    /// ROUTER only: identities a message could not be routed to (the peer is
    /// gone); those messages were dropped.
    pub unroutable: Vec<(Vec<u8>, Vec<Vec<u8>>)>,
    /// The receive budget ran out with more waiting: poll again at once.
    pub busy: bool,
}

/// A ZeroMQ socket registered in a loop, with its pending sends.
pub struct ZmqPort {
    /// "job", "transfer" or "heartbeat", for log lines.
    pub name: &'static str,
    sock: zmq::Socket,
    role: Role,
    fd: RawFd,
    outbox: VecDeque<Vec<Vec<u8>>>,
}

impl ZmqPort {
    /// A ROUTER bound to `endpoint` (server side).
    pub fn bind(
        ctx: &zmq::Context,
        name: &'static str,
        endpoint: &str,
        registry: &Registry,
        token: Token,
    ) -> Result<ZmqPort, zmq::Error> {
        let sock = ctx.socket(zmq::ROUTER)?;
        sock.set_router_mandatory(true)?;
        sock.set_router_handover(true)?;
        common_options(&sock)?;
        sock.bind(endpoint)?;
        ZmqPort::register(sock, name, Role::Router, registry, token)
    }

    /// A DEALER with `identity`, connected to `endpoint` (client side).
    pub fn connect(
        ctx: &zmq::Context,
        name: &'static str,
        identity: &str,
        endpoint: &str,
        registry: &Registry,
        token: Token,
    ) -> Result<ZmqPort, zmq::Error> {
        let sock = ctx.socket(zmq::DEALER)?;
        sock.set_identity(identity.as_bytes())?;
        common_options(&sock)?;
        sock.connect(endpoint)?;
        ZmqPort::register(sock, name, Role::Dealer, registry, token)
    }

    fn register(
        sock: zmq::Socket,
        name: &'static str,
        role: Role,
        registry: &Registry,
        token: Token,
    ) -> Result<ZmqPort, zmq::Error> {
        let fd = sock.get_fd()?;
        // Only ever READABLE: the fd signals both directions, and it is
        // zmq's, so we never read, write or close it.
        registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
            .map_err(|e| zmq::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
        Ok(ZmqPort {
            name,
            sock,
            role,
            fd,
            outbox: VecDeque::new(),
        })
    }

    /// Queue a message (ROUTER: identity first). Sent by the next `service`.
    pub fn queue(&mut self, frames: Vec<Vec<u8>>) {
        debug_assert!(self.outbox.len() <= OUTBOX_CAP);
        if self.outbox.len() >= OUTBOX_CAP {
            log::error!(
                "{} port: outbox full ({OUTBOX_CAP} messages); dropping a message",
                self.name
            );
            return;
        }
        self.outbox.push_back(frames);
    }

    /// Does the outbox still hold messages the socket refused for now?
    pub fn has_backlog(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Receive (up to `budget` messages) and send until neither can make
    /// progress. Errors other than `EAGAIN`/`EINTR` are returned; they mean
    /// the socket itself is broken.
    pub fn service(&mut self, budget: usize) -> Result<Serviced, zmq::Error> {
        let mut done = Serviced::default();
        loop {
            let events = self.sock.get_events()?;
            let mut progressed = false;
            if events.contains(zmq::POLLIN) {
                if done.received.len() >= budget {
                    done.busy = true;
                    break;
                }
                match self.sock.recv_multipart(zmq::DONTWAIT) {
                    Ok(msg) => {
                        done.received.push(msg);
                        progressed = true;
                    }
                    Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => {}
                    Err(e) => return Err(e),
                }
            }
            if !self.outbox.is_empty() {
                progressed |= self.flush(&mut done.unroutable)?;
            }
            if !progressed {
                break;
            }
        }
        Ok(done)
    }

    /// Send what the socket takes now. Returns whether anything left the
    /// outbox.
    fn flush(&mut self, unroutable: &mut Vec<(Vec<u8>, Vec<Vec<u8>>)>) -> Result<bool, zmq::Error> {
        let before = self.outbox.len();
        match self.role {
            Role::Dealer => {
                while let Some(msg) = self.outbox.front() {
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
                while let Some(msg) = self.outbox.pop_front() {
                    let Some(identity) = msg.first() else {
                        continue;
                    };
                    if blocked.contains(identity) {
                        kept.push_back(msg);
                        continue;
                    }
                    match self
                        .sock
                        .send_multipart(msg.iter().map(Vec::as_slice), zmq::DONTWAIT)
                    {
                        Ok(()) => {}
                        Err(zmq::Error::EHOSTUNREACH) => unroutable.push((identity.clone(), msg)),
                        Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => {
                            blocked.insert(identity.clone());
                            kept.push_back(msg);
                        }
                        Err(e) => {
                            kept.push_back(msg);
                            kept.extend(self.outbox.drain(..));
                            self.outbox = kept;
                            return Err(e);
                        }
                    }
                }
                self.outbox = kept;
            }
        }
        Ok(self.outbox.len() < before)
    }

    /// Give unsent messages up to `ms` to leave when the socket is dropped.
    pub fn set_linger(&self, ms: i32) {
        let _ = self.sock.set_linger(ms);
    }

    /// Flush what can go now, deregister, and drop the socket.
    pub fn close(mut self, registry: &Registry) {
        let _ = self.flush(&mut Vec::new());
        let _ = registry.deregister(&mut SourceFd(&self.fd));
    }
}

fn common_options(sock: &zmq::Socket) -> Result<(), zmq::Error> {
    sock.set_linger(0)?;
    sock.set_sndhwm(HWM)?;
    sock.set_rcvhwm(HWM)?;
    sock.set_maxmsgsize(MAX_ZMQ_MSG as i64)?;
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
        let router =
            ZmqPort::bind(&ctx, "t", "tcp://127.0.0.1:*", poll.registry(), Token(0)).unwrap();
        let addr = router.sock.get_last_endpoint().unwrap().unwrap();
        let mut router = router;
        let mut dealer =
            ZmqPort::connect(&ctx, "t", "peer", &addr, poll.registry(), Token(1)).unwrap();
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
        }
        assert_eq!(got.len(), 500);
        assert!(got.iter().all(|m| m[0] == b"peer"));
        // A send to an identity that never connected is reported, not kept.
        router.queue(vec![b"nobody".to_vec(), b"x".to_vec()]);
        let r = router.service(16).unwrap();
        assert_eq!(r.unroutable.len(), 1);
        assert!(!router.has_backlog());
    }
}

#[cfg(test)]
mod curve_probe {
    #[test]
    fn libzmq_has_curve() {
        assert_eq!(zmq::has("curve"), Some(true));
    }
}
