//! A ZeroMQ socket monitor as a loop source: libzmq reports a socket's
//! connection events (handshake succeeded, failed and why) on an inproc PAIR
//! socket, whose `ZMQ_FD` is registered like any port's and drained on every
//! loop pass (the same edge-triggered rules). The client uses it to say at
//! the first failed handshake or connection what went wrong, instead of
//! waiting for three silent heartbeat intervals; the server, to say which
//! address failed its handshake (a client with a wrong shared key is
//! otherwise dropped by libzmq without a word).
//!
//! libzmq sends each event from its I/O thread with a *blocking* send. Two
//! ways to wedge that thread for good, and with it every connection and
//! every socket's close (found with 1000 clients through a server outage:
//! some never reconnected, and leaked descriptors at every retry): our
//! reading end gone while the socket still reports (a reconnect timer
//! fires between the two closes), or a full pipe. So the pipe has no
//! high-water mark (we drain it on every loop pass), and `close` stops the
//! monitor on the socket before our end goes away.

use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::zmq::ZmqPort;

/// What happened to the monitored socket's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The security handshake completed: the peer holds the key we expect.
    HandshakeOk,
    /// The peer closed the connection during the handshake, without saying
    /// why: for a CURVE client, the server could not open our hello, so it
    /// does not hold the secret of the key we were given.
    HandshakeDropped,
    /// The handshake broke the protocol (for example, one side does not
    /// speak CURVE); the value is libzmq's `ZMQ_PROTOCOL_ERROR_*` code.
    HandshakeProtocol(u32),
    /// The server's ZAP handler refused us; the value is its status code.
    HandshakeRefused(u32),
    /// The connection closed after the handshake.
    Disconnected,
    /// A connection attempt failed (refused, unreachable, or the name did
    /// not resolve: libzmq does not say which); it retries.
    ConnectFailed,
}

use zmq::SocketEvent as E;

const WATCHED: [E; 6] = [
    E::HANDSHAKE_SUCCEEDED,
    E::HANDSHAKE_FAILED_NO_DETAIL,
    E::HANDSHAKE_FAILED_PROTOCOL,
    E::HANDSHAKE_FAILED_AUTH,
    E::DISCONNECTED,
    E::CONNECT_RETRIED,
];

/// libzmq's protocol error when the two sides use different mechanisms.
pub const MECHANISM_MISMATCH: u32 = 0x1100_0002;
/// libzmq's protocol error when a CURVE box does not open: the peer does
/// not hold the key its hello was sealed to.
pub const CRYPTOGRAPHIC: u32 = 0x1100_0001;

/// Which events to watch: a connecting socket's, or a bound one's (only its
/// failed handshakes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    Connecting,
    Bound,
}

const BOUND: [E; 2] = [E::HANDSHAKE_FAILED_PROTOCOL, E::HANDSHAKE_FAILED_AUTH];

/// The reading end of one socket's monitor.
pub struct Monitor {
    sock: zmq::Socket,
    fd: RawFd,
}

impl Monitor {
    /// Monitor `port` through `endpoint` (an inproc address unique in the
    /// context), registered under `token`.
    pub fn start<T>(
        ctx: &zmq::Context,
        port: &ZmqPort<T>,
        endpoint: &str,
        registry: &Registry,
        token: Token,
        watch: Watch,
    ) -> Result<Monitor, zmq::Error> {
        let watched: &[E] = match watch {
            Watch::Connecting => &WATCHED,
            Watch::Bound => &BOUND,
        };
        let events = watched.iter().fold(0, |acc, e| acc | i32::from(e.to_raw()));
        port.monitor(endpoint, events)?;
        let sock = ctx.socket(zmq::PAIR)?;
        sock.set_linger(0)?;
        // Unbounded: libzmq's I/O thread blocks on a full monitor pipe.
        sock.set_rcvhwm(0)?;
        sock.connect(endpoint)?;
        let fd = sock.get_fd()?;
        registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
            .map_err(|e| zmq::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
        Ok(Monitor { sock, fd })
    }

    /// Every event waiting, oldest first. Reads until nothing is left, as the
    /// edge-triggered fd requires.
    pub fn drain(&self) -> Vec<LinkEvent> {
        self.drain_from().into_iter().map(|(e, _)| e).collect()
    }

    /// The same, each with the address libzmq names: on a bound socket, the
    /// peer's (`tcp://ADDRESS:PORT`).
    pub fn drain_from(&self) -> Vec<(LinkEvent, String)> {
        let mut out = Vec::new();
        loop {
            match self.sock.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => {
                    let address = frames
                        .get(1)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .unwrap_or_default();
                    out.extend(frames.first().and_then(|f| parse(f)).map(|e| (e, address)));
                }
                Err(zmq::Error::EINTR) => {}
                Err(_) => return out,
            }
        }
    }

    /// Stop watching `port`: events already sent are read (so a send in
    /// progress finishes), the monitor is stopped on the socket, and only
    /// then does our end go.
    pub fn close<T>(self, port: &mut ZmqPort<T>, registry: &Registry) {
        let _ = self.drain();
        port.stop_monitor();
        let _ = registry.deregister(&mut SourceFd(&self.fd));
    }
}

/// The first frame of a monitor message: a 16-bit event and a 32-bit value,
/// in host byte order.
fn parse(frame: &[u8]) -> Option<LinkEvent> {
    let event = u16::from_ne_bytes(frame.get(..2)?.try_into().ok()?);
    let value = u32::from_ne_bytes(frame.get(2..6)?.try_into().ok()?);
    Some(match event {
        e if e == E::HANDSHAKE_SUCCEEDED.to_raw() => LinkEvent::HandshakeOk,
        e if e == E::HANDSHAKE_FAILED_NO_DETAIL.to_raw() => LinkEvent::HandshakeDropped,
        e if e == E::HANDSHAKE_FAILED_PROTOCOL.to_raw() => LinkEvent::HandshakeProtocol(value),
        e if e == E::HANDSHAKE_FAILED_AUTH.to_raw() => LinkEvent::HandshakeRefused(value),
        e if e == E::DISCONNECTED.to_raw() => LinkEvent::Disconnected,
        e if e == E::CONNECT_RETRIED.to_raw() => LinkEvent::ConnectFailed,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_in_host_order() {
        let mut f = E::HANDSHAKE_FAILED_AUTH.to_raw().to_ne_bytes().to_vec();
        f.extend(400u32.to_ne_bytes());
        assert_eq!(parse(&f), Some(LinkEvent::HandshakeRefused(400)));
        assert_eq!(parse(&f[..5]), None);
        assert_eq!(parse(&[0xff, 0xff, 0, 0, 0, 0]), None);
    }

    /// The client's reconnect cycle, a thousand times, on a socket whose
    /// connection attempts fail every millisecond (each one an event from
    /// libzmq's I/O thread): afterwards the context still connects and
    /// closes sockets. Before `close` stopped the monitor first, an event
    /// sent to a reader already gone blocked the I/O thread for good, and
    /// the client never connected again (1000 clients through a server
    /// outage: dozens stuck, their descriptors growing at every retry).
    #[test]
    fn closing_a_monitored_socket_never_wedges_the_context() {
        use super::super::zmq::{PortSpec, Security};
        let ctx = zmq::Context::new();
        let poll = mio::Poll::new().unwrap();
        // A port nothing listens on: every attempt fails at once.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_ep = format!("tcp://{}", dead.local_addr().unwrap());
        drop(dead);
        let spec = PortSpec {
            name: "test",
            max_msg: 1 << 16,
            rcvhwm: 100,
            sndhwm: 100,
            peer_cap: 0,
        };
        for i in 0..1000 {
            let mut port =
                ZmqPort::<()>::dealer(&ctx, spec, None, Security::Plain, poll.registry(), Token(1))
                    .unwrap();
            port.set_reconnect_ivl(1).unwrap();
            let m = Monitor::start(
                &ctx,
                &port,
                &format!("inproc://wedge-{i}"),
                poll.registry(),
                Token(2),
                Watch::Connecting,
            )
            .unwrap();
            port.connect_to(&dead_ep).unwrap();
            // Close once it has retried a few times: its reconnect timer
            // fires every millisecond, around the close too.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut retries = 0;
            while retries < 5 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no connection attempt"
                );
                retries += m
                    .drain()
                    .iter()
                    .filter(|e| **e == LinkEvent::ConnectFailed)
                    .count();
            }
            m.close(&mut port, poll.registry());
            port.close(poll.registry());
        }
        // The I/O thread still works: a fresh pair exchanges a message.
        let server = ctx.socket(zmq::ROUTER).unwrap();
        server.set_linger(0).unwrap();
        server.bind("tcp://127.0.0.1:*").unwrap();
        let ep = server.get_last_endpoint().unwrap().unwrap();
        let client = ctx.socket(zmq::DEALER).unwrap();
        client.set_linger(0).unwrap();
        client.connect(&ep).unwrap();
        client.send("alive", 0).unwrap();
        server.set_rcvtimeo(20_000).unwrap();
        let got = server
            .recv_multipart(0)
            .expect("the context connects again");
        assert_eq!(got.last().map(Vec::as_slice), Some(&b"alive"[..]));
    }
}
