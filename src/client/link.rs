//! The client's link to the server, as rules without sockets: when to
//! announce itself (`Ready`), beat, call the server dead, back off and
//! reopen, and what each answer of the server means for where the node
//! stands. The loop performs what it returns (`Act`) and feeds it what
//! happened, with the time; nothing here reads a clock or touches a socket,
//! so the rules are tested to the millisecond.
//!
//! Liveness: when nothing was heard from the server for `LIVENESS`
//! intervals, the link is closed and reopened after a backoff (see
//! `backoff`). A `Register` is answered with one `Ready` per reconnection:
//! a heartbeat can reach a restarted server first and be answered
//! `Register` while our `Ready` is on its way.

use std::time::{Duration, Instant};

use super::backoff::Backoff;
use crate::reactor::monitor::{self, LinkEvent};
use crate::wire::Denial;

/// Intervals of silence after which the server is taken for gone.
pub const LIVENESS: u32 = 3;

/// What the loop must do for the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    /// Open the three sockets, then call `opened` (or `open_failed`).
    Open,
    /// Close the sockets.
    Close,
    /// Send `Ready` with what the node holds, then resend unacknowledged
    /// results.
    Announce,
    /// Send a heartbeat (and the cache summary, if it changed).
    Beat,
    /// Report the cache now: the server just welcomed us.
    ReportCache,
    /// Call `timer` with this at that time.
    Timer(Instant, LinkTimer),
    /// Find out, off the loop, why the server cannot be reached; call
    /// `probed` with the answer.
    Probe,
    /// Stop for good: the server will not have us, and why.
    Refuse(String),
}

/// The link's timers. The generation tells a chain set under an interval
/// that changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkTimer {
    Heartbeat(u64),
    Liveness(u64),
    Reopen,
}

/// Where the server stands with us, for saying each change once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// No answer yet on this link.
    Unknown,
    /// A handshake failed; the text is what was said.
    HandshakeFailed(String),
    /// No connection could be made; the text is why, as a probe found.
    Unreachable(String),
    /// Our key waits for an operator.
    Pending,
    /// Another pending key claimed our name first.
    Contested,
    /// Welcomed as our node.
    Admitted,
}

/// The sockets, as the link sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Open. `announced`: when this link's `Ready` went out, until the
    /// server answers it.
    Up {
        last_heard: Instant,
        announced: Option<Instant>,
    },
    /// Closed; reopened at the `Reopen` timer.
    Down,
    /// Refused for good.
    Refused,
}

/// How the node names itself and its server, for what the log says.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub identity: String,
    /// The server's address; several for servers on etcd, of which one
    /// is active (the link finds it).
    pub servers: Vec<String>,
    pub job_port: u16,
    /// This node's key fingerprint (empty without CURVE).
    pub fingerprint: String,
    pub trust: Trust,
}

/// How the client knows the server's key, for the handshake's hints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    SharedKey,
    ServerKey,
    #[default]
    Off,
}

/// The link's rules and state.
pub struct Link {
    names: Names,
    /// Our own interval, as configured.
    own_ivl: Duration,
    /// The interval in force: ours, or the server's longest if shorter.
    ivl: Duration,
    gen: u64,
    backoff: Backoff,
    phase: Phase,
    standing: Standing,
    probing: bool,
    /// Draws for the backoff: xorshift, seeded by the caller.
    rng: u64,
    /// The address in `names.servers` this link goes to, and how many
    /// were tried in turn without an answer.
    at: usize,
    tried: usize,
    /// Moving on from an address was said in this stretch without an
    /// answer (said once).
    moving_said: bool,
    /// Moves made because a standby answered, since a server last took
    /// us: past one per address, the backoff applies (standbys that each
    /// name another, as views catch up, do not make us spin).
    hops: usize,
    /// What a standby said last, said again only when it changes.
    standby_said: Option<String>,
}

impl Link {
    /// A link that beats every `ivl`; `seed` spreads its backoff (a random
    /// number in the daemon, a fixed one in tests and the simulator).
    pub fn new(names: Names, ivl: Duration, seed: u64) -> Link {
        Link {
            names,
            own_ivl: ivl,
            ivl,
            gen: 0,
            backoff: Backoff::new(ivl),
            phase: Phase::Down,
            standing: Standing::Unknown,
            probing: false,
            rng: seed | 1,
            at: 0,
            tried: 0,
            moving_said: false,
            hops: 0,
            standby_said: None,
        }
    }

    /// The server address the link goes to now.
    pub fn server(&self) -> &str {
        self.names
            .servers
            .get(self.at)
            .or(self.names.servers.first())
            .map_or("", String::as_str)
    }

    /// Of several servers, go to the next: at once while some are left
    /// untried, after the backoff once all were.
    fn next_server(&mut self, now: Instant, out: &mut Vec<Act>) {
        let n = self.names.servers.len();
        let from = self.server().to_owned();
        self.at = (self.at + 1) % n.max(1);
        self.tried += 1;
        self.standing = Standing::Unknown;
        if self.tried < n {
            if !self.moving_said {
                log::info!(
                    "no server answers at {from}; trying {} (said once until one answers)",
                    self.server()
                );
                self.moving_said = true;
            }
            if matches!(self.phase, Phase::Up { .. }) {
                out.push(Act::Close);
            }
            self.phase = Phase::Down;
            out.push(Act::Open);
            return;
        }
        self.tried = 0;
        log::debug!(
            "no server answers at any of {}; retrying with backoff",
            self.names.servers.join(", ")
        );
        self.reconnect(now, out);
    }

    /// The server reached stands by: go to the active one, `leader` at
    /// `address`, at once when that is one of ours; else try the next
    /// (or, alone, wait for it to lead).
    pub fn standby(
        &mut self,
        leader: Option<&str>,
        address: Option<&str>,
        now: Instant,
        out: &mut Vec<Act>,
    ) {
        if !matches!(self.phase, Phase::Up { .. }) {
            return;
        }
        let here = self.server().to_owned();
        let n = self.names.servers.len();
        let to = address.and_then(|a| self.names.servers.iter().position(|s| s == a));
        let (said, act) = match (leader, to) {
            (Some(l), Some(i)) if i != self.at => (
                format!("the server at {here} stands by; moving to the active server {l} at {}", self.names.servers[i]),
                Some(i),
            ),
            // It is taking the lead: it will serve here shortly.
            (Some(l), Some(_)) => (format!("the server at {here} ({l}) is taking the lead; waiting for it"), None),
            (Some(l), None) => (
                match address {
                    Some(a) => format!(
                        "the server at {here} stands by; the active server {l} is at {a}, which is not in --server-address ({}): add it",
                        self.names.servers.join(",")
                    ),
                    None => format!(
                        "the server at {here} stands by; the active server is {l} (where, it does not know yet); trying the next"
                    ),
                },
                (n > 1).then(|| (self.at + 1) % n),
            ),
            (None, _) => (
                format!("the server at {here} stands by and no server is active yet"),
                (n > 1).then(|| (self.at + 1) % n),
            ),
        };
        if self.standby_said.as_ref() != Some(&said) {
            log::warn!("{said}");
            self.standby_said = Some(said);
        }
        self.standing = Standing::Unknown;
        match act {
            Some(i) if self.hops < n => {
                self.hops += 1;
                self.at = i;
                out.push(Act::Close);
                self.phase = Phase::Down;
                out.push(Act::Open);
            }
            Some(i) => {
                self.hops = 0;
                self.at = i;
                self.reconnect(now, out);
            }
            None => self.reconnect(now, out),
        }
    }

    /// The first opening, and the timers that run for the life of the
    /// client.
    pub fn start(&mut self, now: Instant, out: &mut Vec<Act>) {
        out.push(Act::Open);
        out.push(Act::Timer(now + self.ivl, LinkTimer::Heartbeat(0)));
        out.push(Act::Timer(now + self.ivl, LinkTimer::Liveness(0)));
    }

    /// The interval in force.
    pub fn ivl(&self) -> Duration {
        self.ivl
    }

    /// Our own interval (what `Ready` asks for).
    pub fn own_ivl(&self) -> Duration {
        self.own_ivl
    }

    #[cfg(test)]
    pub fn standing(&self) -> &Standing {
        &self.standing
    }

    /// The sockets are open: announce, beat.
    pub fn opened(&mut self, now: Instant, out: &mut Vec<Act>) {
        self.phase = Phase::Up {
            last_heard: now,
            announced: Some(now),
        };
        out.push(Act::Announce);
        out.push(Act::Beat);
    }

    /// The sockets could not be opened (or one failed): try again after
    /// the backoff.
    pub fn open_failed(&mut self, why: &str, now: Instant, out: &mut Vec<Act>) {
        log::error!(
            "{why}; retrying in up to {:.2}s",
            self.backoff.upto().as_secs_f64()
        );
        self.reconnect(now, out);
    }

    /// Anything came from the server.
    pub fn heard(&mut self, now: Instant) {
        if let Phase::Up { last_heard, .. } = &mut self.phase {
            *last_heard = now;
            self.backoff.reset();
            self.tried = 0;
            self.moving_said = false;
        }
    }

    /// The server asks who we are (it restarted, expired us, or accepted
    /// our key).
    pub fn register(&mut self, now: Instant, out: &mut Vec<Act>) {
        let Phase::Up { announced, .. } = &mut self.phase else {
            return;
        };
        if !answers_register(*announced, now, self.ivl) {
            log::debug!("server asked us to register; our Ready is on its way");
            return;
        }
        if self.standing == Standing::Admitted {
            log::info!("server asked us to register (it restarted or expired us); sending Ready");
        }
        *announced = Some(now);
        out.push(Act::Announce);
    }

    /// The server took us as our node, beating at most every `interval_ms`.
    pub fn welcomed(&mut self, name: &str, interval_ms: u64, now: Instant, out: &mut Vec<Act>) {
        if let Phase::Up { announced, .. } = &mut self.phase {
            *announced = None;
        }
        let granted = Duration::from_millis(interval_ms.max(10));
        let ivl = self.own_ivl.min(granted);
        if ivl != self.ivl {
            log::info!(
                "the server allows at most {:.1}s between heartbeats; beating every {:.1}s",
                granted.as_secs_f64(),
                ivl.as_secs_f64()
            );
            self.ivl = ivl;
            self.backoff.set_ivl(ivl);
            // Beat at the new pace from now on, not after the old interval.
            self.gen += 1;
            out.push(Act::Timer(now + ivl, LinkTimer::Heartbeat(self.gen)));
            out.push(Act::Timer(now + ivl, LinkTimer::Liveness(self.gen)));
        }
        if self.standing == Standing::Pending {
            log::info!("the server accepted this node's key");
        }
        if self.standing != Standing::Admitted {
            log::info!("connected to {} as {name}", self.server());
            self.standing = Standing::Admitted;
        }
        self.hops = 0;
        self.standby_said = None;
        out.push(Act::ReportCache);
    }

    /// The server will not have us as our node (now, or at all).
    pub fn denied(&mut self, why: Denial, now: Instant, out: &mut Vec<Act>) {
        if let Phase::Up { announced, .. } = &mut self.phase {
            *announced = None;
        }
        let name = self.names.identity.clone();
        let fp = self.names.fingerprint.clone();
        match why {
            Denial::Pending => {
                if self.standing != Standing::Pending {
                    log::warn!(
                        "this node's key ({fp}) waits for acceptance: on the server, run `director manage --accept-key {name}`; no jobs until then"
                    );
                    self.standing = Standing::Pending;
                }
            }
            Denial::TooManyPending => {
                log::warn!(
                    "the server holds too many keys waiting for acceptance to take ours; retrying in up to {:.2}s",
                    self.backoff.upto().as_secs_f64()
                );
                self.standing = Standing::Unknown;
                self.reconnect(now, out);
            }
            Denial::NameContested => {
                if self.standing != Standing::Contested {
                    log::warn!(
                        "the name '{name}' was claimed on the server by another key that waits for acceptance (this node's key is {fp}): if that key is not this node's, run `director manage --delete-key {name}` on the server, then accept this one; retrying"
                    );
                    self.standing = Standing::Contested;
                }
                self.reconnect(now, out);
            }
            Denial::Rejected => self.refuse(format!(
                "the server rejected this node's key ({fp}); to let this node enroll again, run `director manage --delete-key {name}` on the server, then restart this client"
            ), out),
            Denial::NameTaken => self.refuse(format!(
                "the name '{name}' belongs to another key on the server (this node's key is {fp}); if this node was reinstalled, run `director manage --delete-key {name}` on the server, otherwise give this node another --identity"
            ), out),
            Denial::KeyHasName(other) => self.refuse(format!(
                "this node's key ({fp}) is enrolled on the server as '{other}', not '{name}': run the client with --identity {other}, or `director manage --delete-key {other}` on the server"
            ), out),
            Denial::WrongSharedKey => self.refuse(
                "the server does not accept this client's shared key: --shared-key differs between this node and the server, or the server has none".into(),
                out,
            ),
        }
    }

    /// What the job socket's monitor saw of a connection or handshake.
    pub fn monitor(&mut self, event: LinkEvent, now: Instant, out: &mut Vec<Act>) {
        if !matches!(self.phase, Phase::Up { .. }) {
            return;
        }
        let server = self.server().to_owned();
        match event {
            LinkEvent::HandshakeOk | LinkEvent::Disconnected => {}
            // Of several servers, one that refuses is a standby, or gone:
            // the active one is another.
            LinkEvent::ConnectFailed if self.names.servers.len() > 1 => {
                self.next_server(now, out);
            }
            // Once per failing stretch: find out why, off the loop.
            LinkEvent::ConnectFailed => {
                if !self.probing && !matches!(self.standing, Standing::Unreachable(_)) {
                    self.probing = true;
                    out.push(Act::Probe);
                }
            }
            LinkEvent::HandshakeRefused(400) => self.denied(Denial::Rejected, now, out),
            LinkEvent::HandshakeRefused(code) => self.handshake_failed(
                format!("the server refused the handshake (status {code})"),
                now,
                out,
            ),
            LinkEvent::HandshakeProtocol(monitor::MECHANISM_MISMATCH) => {
                let why = match self.names.trust {
                    Trust::SharedKey | Trust::ServerKey => format!(
                        "the server at {server} does not speak CURVE (is it running with --curve off?)"
                    ),
                    Trust::Off => format!(
                        "the server at {server} uses CURVE and this client runs with --curve off: give it --shared-key or --server-key instead"
                    ),
                };
                self.handshake_failed(why, now, out);
            }
            // The server closed the connection without a word. A CURVE
            // server does that when it cannot open our hello: it does
            // not hold the key we were given. A server without CURVE
            // may too, when its close overtakes its greeting.
            LinkEvent::HandshakeDropped | LinkEvent::HandshakeProtocol(_) => {
                let hint = match self.names.trust {
                    Trust::SharedKey => "the server does not hold the key derived from this --shared-key (is the shared key the same on both sides? does the server run with --curve off?)",
                    Trust::ServerKey => "the server does not hold the key given with --server-key (compare it with `director manage --show-key` on the server; does the server run with --curve off?)",
                    Trust::Off => "the server uses CURVE, or is not a director server, and this client runs with --curve off",
                };
                self.handshake_failed(
                    format!("the CURVE handshake with {server} failed: {hint}"),
                    now,
                    out,
                );
            }
        }
    }

    /// Why the server cannot be reached, as the probe found: said once
    /// (and again if it changes); ZeroMQ keeps retrying meanwhile.
    pub fn probed(&mut self, why: String) {
        self.probing = false;
        if self.standing == Standing::Admitted {
            return; // connected in the meantime
        }
        let said = Standing::Unreachable(why.clone());
        if self.standing != said {
            log::error!(
                "cannot connect to {}:{}: {why}; retrying",
                self.server(),
                self.names.job_port
            );
            self.standing = said;
        }
    }

    /// A handshake failed in a way retrying may mend: say it once, then try
    /// again after the backoff.
    fn handshake_failed(&mut self, why: String, now: Instant, out: &mut Vec<Act>) {
        if self.phase == Phase::Refused {
            return;
        }
        if self.standing != Standing::HandshakeFailed(why.clone()) {
            log::error!("{why}; retrying with backoff");
            self.standing = Standing::HandshakeFailed(why);
        } else {
            log::debug!(
                "handshake failed again; retrying in up to {:.2}s",
                self.backoff.upto().as_secs_f64()
            );
        }
        self.reconnect(now, out);
    }

    /// One of the link's timers.
    pub fn timer(&mut self, timer: LinkTimer, now: Instant, out: &mut Vec<Act>) {
        match timer {
            LinkTimer::Heartbeat(gen) | LinkTimer::Liveness(gen) if gen != self.gen => {}
            LinkTimer::Heartbeat(gen) => {
                if matches!(self.phase, Phase::Up { .. }) {
                    out.push(Act::Beat);
                }
                out.push(Act::Timer(now + self.ivl, LinkTimer::Heartbeat(gen)));
            }
            LinkTimer::Liveness(gen) => {
                if let Phase::Up { last_heard, .. } = self.phase {
                    let silent = now.saturating_duration_since(last_heard);
                    if silent >= self.ivl * LIVENESS {
                        if matches!(self.standing, Standing::HandshakeFailed(_)) {
                            // The same failure, told by silence: libzmq
                            // does not always report a handshake the
                            // server dropped again. Said once already.
                            log::debug!(
                                "handshake failed again (no answer); retrying in up to {:.2}s",
                                self.backoff.upto().as_secs_f64()
                            );
                        } else {
                            log::warn!(
                                "server silent for {:.1}s; reconnecting in up to {:.2}s",
                                silent.as_secs_f64(),
                                self.backoff.upto().as_secs_f64()
                            );
                        }
                        // Not connected any more: say so again when it is,
                        // and why not while it is not.
                        if self.standing == Standing::Admitted {
                            self.standing = Standing::Unknown;
                        }
                        if self.names.servers.len() > 1 {
                            // Perhaps not the active server any more.
                            self.at = (self.at + 1) % self.names.servers.len();
                        }
                        self.reconnect(now, out);
                    }
                }
                out.push(Act::Timer(now + self.ivl, LinkTimer::Liveness(gen)));
            }
            LinkTimer::Reopen => {
                if self.phase == Phase::Down {
                    out.push(Act::Open);
                }
            }
        }
    }

    /// Stop for good (the client drains, then exits with `why`).
    fn refuse(&mut self, why: String, out: &mut Vec<Act>) {
        if self.phase == Phase::Refused {
            return;
        }
        log::error!("{why}");
        self.phase = Phase::Refused;
        out.push(Act::Refuse(why));
    }

    /// Drop the sockets and reopen them after the current backoff.
    fn reconnect(&mut self, now: Instant, out: &mut Vec<Act>) {
        if self.phase == Phase::Refused {
            return;
        }
        if matches!(self.phase, Phase::Up { .. }) {
            out.push(Act::Close);
        }
        self.phase = Phase::Down;
        let draw = self.draw();
        let wait = self.backoff.next_wait(draw);
        out.push(Act::Timer(now + wait, LinkTimer::Reopen));
    }

    fn draw(&mut self) -> u64 {
        // xorshift64: spread enough for backoffs, and reproducible.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// Is a `Register` answered with a `Ready`? Not while the `Ready` sent on
/// this link at `announced` may still be on its way (less than an
/// interval ago): one `Ready` per reconnection, since a heartbeat can
/// reach a restarted server first and be answered `Register`. Should that
/// `Ready` have been lost (the server restarted as it came), the next
/// beat's `Register` comes after the interval and is answered.
fn answers_register(announced: Option<Instant>, now: Instant, ivl: Duration) -> bool {
    announced.is_none_or(|at| now.saturating_duration_since(at) >= ivl)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IVL: Duration = Duration::from_secs(1);

    fn link(ivl: Duration) -> (Link, Instant) {
        let names = Names {
            identity: "n1".into(),
            servers: vec!["127.0.0.1".into()],
            job_port: 5555,
            fingerprint: "fp".into(),
            trust: Trust::SharedKey,
        };
        (Link::new(names, ivl, 7), Instant::now())
    }

    fn timers(out: &[Act]) -> Vec<(Instant, LinkTimer)> {
        out.iter()
            .filter_map(|a| match a {
                Act::Timer(at, t) => Some((*at, *t)),
                _ => None,
            })
            .collect()
    }

    /// Drive the link's own timers from `from` to `until`, as the loop
    /// would; what it did, with when.
    fn run(
        l: &mut Link,
        pending: &mut Vec<(Instant, LinkTimer)>,
        until: Instant,
    ) -> Vec<(Instant, Act)> {
        let mut done = Vec::new();
        loop {
            pending.sort();
            let Some(&(at, t)) = pending.first() else {
                break;
            };
            if at > until {
                break;
            }
            pending.remove(0);
            let mut out = Vec::new();
            l.timer(t, at, &mut out);
            if out.contains(&Act::Open) {
                l.opened(at, &mut out);
            }
            pending.extend(timers(&out));
            done.extend(out.into_iter().map(|a| (at, a)));
        }
        done
    }

    #[test]
    fn the_server_is_called_gone_at_the_third_silent_interval_not_before() {
        let (mut l, t0) = link(IVL);
        let mut out = Vec::new();
        l.start(t0, &mut out);
        l.opened(t0, &mut out);
        let mut pending = timers(&out);
        // Heard at 0.5 s: silent from then on.
        l.heard(t0 + IVL / 2);
        let done = run(&mut l, &mut pending, t0 + IVL * 3);
        assert!(
            !done.iter().any(|(_, a)| *a == Act::Close),
            "2.5 s of silence is not yet 3 intervals: {done:?}"
        );
        let done = run(&mut l, &mut pending, t0 + IVL * 4);
        let closes: Vec<Instant> = done
            .iter()
            .filter(|(_, a)| *a == Act::Close)
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(
            closes,
            vec![t0 + IVL * 4],
            "the liveness check at 4 s, 3.5 s after the last word"
        );
        assert_eq!(*l.standing(), Standing::Unknown);
    }

    #[test]
    fn reopening_backs_off_doubling_up_to_32_seconds_and_a_word_resets_it() {
        let (mut l, t0) = link(Duration::from_secs(60));
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            let mut out = Vec::new();
            l.opened(now, &mut out);
            out.clear();
            l.denied(Denial::NameContested, now, &mut out);
            assert_eq!(out[0], Act::Close, "{out:?}");
            let (at, t) = timers(&out)[0];
            assert_eq!(t, LinkTimer::Reopen);
            waits.push(at - now);
            now = at;
        }
        // Each wait is drawn between half and all of 1, 2, 4 ... 32 s.
        let tops = [1u64, 2, 4, 8, 16, 32, 32, 32];
        for (wait, top) in waits.iter().zip(tops) {
            let top = Duration::from_secs(top);
            assert!(*wait >= top / 2 && *wait <= top, "{waits:?}");
        }
        // A word from the server: the next wait starts from 1 s again.
        let mut out = Vec::new();
        l.opened(now, &mut out);
        l.heard(now);
        out.clear();
        l.denied(Denial::TooManyPending, now, &mut out);
        let (at, _) = timers(&out)[0];
        assert!(at - now <= Duration::from_secs(1), "{:?}", at - now);
    }

    #[test]
    fn a_short_interval_bounds_the_backoff_by_itself() {
        let ivl = Duration::from_millis(300);
        let (mut l, t0) = link(ivl);
        for _ in 0..10 {
            let mut out = Vec::new();
            l.opened(t0, &mut out);
            out.clear();
            l.denied(Denial::TooManyPending, t0, &mut out);
            let (at, _) = timers(&out)[0];
            assert!(at - t0 <= ivl && at - t0 >= Duration::from_millis(10));
        }
    }

    #[test]
    fn one_ready_per_reconnection_unless_the_server_asks_an_interval_later() {
        let (mut l, t0) = link(IVL);
        let mut out = Vec::new();
        l.opened(t0, &mut out);
        assert_eq!(out, vec![Act::Announce, Act::Beat]);
        // A heartbeat's Register overtook our Ready: not answered.
        out.clear();
        l.register(t0 + Duration::from_millis(999), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Lost on the way: asked again an interval later, it goes again.
        l.register(t0 + IVL, &mut out);
        assert_eq!(out, vec![Act::Announce]);
        // Welcomed: any Register after is news (the server restarted).
        out.clear();
        l.welcomed("n1", 1000, t0 + IVL, &mut out);
        assert_eq!(out, vec![Act::ReportCache]);
        out.clear();
        l.register(t0 + IVL + Duration::from_millis(1), &mut out);
        assert_eq!(out, vec![Act::Announce]);
        // Closed: nothing to answer on.
        let (mut l, t0) = link(IVL);
        l.register(t0, &mut out);
        assert_eq!(out, vec![Act::Announce], "nothing added while down");
    }

    #[test]
    fn a_server_granting_a_shorter_interval_sets_the_pace_at_once() {
        let (mut l, t0) = link(Duration::from_secs(60));
        let mut out = Vec::new();
        l.start(t0, &mut out);
        l.opened(t0, &mut out);
        let mut pending = timers(&out);
        let mut out = Vec::new();
        l.welcomed("n1", 2000, t0 + IVL, &mut out);
        assert_eq!(l.ivl(), Duration::from_secs(2));
        pending.extend(timers(&out));
        let beats: Vec<Instant> = run(&mut l, &mut pending, t0 + Duration::from_secs(7))
            .into_iter()
            .filter(|(_, a)| *a == Act::Beat)
            .map(|(at, _)| at)
            .collect();
        let secs = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            beats,
            vec![secs(3), secs(5), secs(7)],
            "the old 60 s chain is ignored"
        );
        // A longer grant than ours changes nothing.
        let (mut l, t0) = link(IVL);
        let mut out = Vec::new();
        l.opened(t0, &mut out);
        out.clear();
        l.welcomed("n1", 60_000, t0, &mut out);
        assert_eq!(l.ivl(), IVL);
        assert_eq!(out, vec![Act::ReportCache]);
    }

    #[test]
    fn denials_that_cannot_mend_refuse_once_and_others_retry() {
        for why in [
            Denial::Rejected,
            Denial::NameTaken,
            Denial::KeyHasName("n2".into()),
            Denial::WrongSharedKey,
        ] {
            let (mut l, t0) = link(IVL);
            let mut out = Vec::new();
            l.opened(t0, &mut out);
            out.clear();
            l.denied(why.clone(), t0, &mut out);
            assert!(
                matches!(out.as_slice(), [Act::Refuse(_)]),
                "{why:?}: {out:?}"
            );
            out.clear();
            l.denied(why.clone(), t0, &mut out);
            l.monitor(LinkEvent::HandshakeDropped, t0, &mut out);
            assert!(
                out.is_empty(),
                "{why:?}: refused once, and no reconnect: {out:?}"
            );
        }
        let (mut l, t0) = link(IVL);
        let mut out = Vec::new();
        l.opened(t0, &mut out);
        out.clear();
        l.denied(Denial::Pending, t0, &mut out);
        assert!(out.is_empty(), "pending waits, connected: {out:?}");
        assert_eq!(*l.standing(), Standing::Pending);
        // A wrong key told by the monitor: said once, retried each time.
        let mut out = Vec::new();
        l.monitor(LinkEvent::HandshakeDropped, t0, &mut out);
        assert_eq!(out[0], Act::Close);
        assert!(matches!(l.standing(), Standing::HandshakeFailed(w) if w.contains("--shared-key")));
    }

    #[test]
    fn a_connect_failure_is_probed_once_per_failing_stretch() {
        let (mut l, t0) = link(IVL);
        let mut out = Vec::new();
        l.opened(t0, &mut out);
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, t0, &mut out);
        l.monitor(LinkEvent::ConnectFailed, t0, &mut out);
        assert_eq!(out, vec![Act::Probe], "one probe out at a time");
        l.probed("connection refused".into());
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, t0, &mut out);
        assert!(out.is_empty(), "said already: {out:?}");
        l.welcomed("n1", 1000, t0, &mut out);
        out.clear();
        l.probed("late".into());
        assert_eq!(*l.standing(), Standing::Admitted);
    }
}

#[cfg(test)]
mod servers_tests {
    use super::*;

    fn link(servers: &[&str]) -> (Link, Instant) {
        let names = Names {
            identity: "n1".into(),
            servers: servers.iter().map(|s| s.to_string()).collect(),
            job_port: 5555,
            fingerprint: "fp".into(),
            trust: Trust::SharedKey,
        };
        (Link::new(names, Duration::from_secs(1), 7), Instant::now())
    }

    #[test]
    fn of_several_servers_one_that_refuses_is_left_at_once_for_the_next() {
        let (mut l, now) = link(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let mut out = Vec::new();
        l.start(now, &mut out);
        l.opened(now, &mut out);
        assert_eq!(l.server(), "10.0.0.1");
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, now, &mut out);
        assert_eq!(out, vec![Act::Close, Act::Open]);
        assert_eq!(l.server(), "10.0.0.2");
        l.opened(now, &mut out);
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, now, &mut out);
        assert_eq!(out, vec![Act::Close, Act::Open]);
        assert_eq!(l.server(), "10.0.0.3");
        // All three refused in turn: the next try waits for the backoff,
        // never a tight loop.
        l.opened(now, &mut out);
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, now, &mut out);
        assert_eq!(l.server(), "10.0.0.1");
        assert!(
            matches!(out.as_slice(), [Act::Close, Act::Timer(at, LinkTimer::Reopen)] if *at > now),
            "{out:?}"
        );
        // An answer starts a new stretch: the next refusal moves at once.
        l.timer(LinkTimer::Reopen, now, &mut out);
        l.opened(now, &mut out);
        l.heard(now);
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, now, &mut out);
        assert_eq!(out, vec![Act::Close, Act::Open]);
        assert_eq!(l.server(), "10.0.0.2");
    }

    #[test]
    fn a_silent_server_is_left_for_the_next_after_the_backoff() {
        let (mut l, now) = link(&["10.0.0.1", "10.0.0.2"]);
        let mut out = Vec::new();
        l.start(now, &mut out);
        l.opened(now, &mut out);
        out.clear();
        let later = now + Duration::from_secs(4);
        l.timer(LinkTimer::Liveness(0), later, &mut out);
        assert_eq!(l.server(), "10.0.0.2");
        assert!(out
            .iter()
            .any(|a| matches!(a, Act::Timer(_, LinkTimer::Reopen))));
    }

    #[test]
    fn a_standby_sends_the_client_straight_to_the_active_server() {
        let (mut l, now) = link(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let mut out = Vec::new();
        l.start(now, &mut out);
        l.opened(now, &mut out);
        out.clear();
        // Past 10.0.0.2, to the one it names.
        l.standby(Some("s3"), Some("10.0.0.3"), now, &mut out);
        assert_eq!(out, vec![Act::Close, Act::Open]);
        assert_eq!(l.server(), "10.0.0.3");
        // Welcomed there: a later standby's answer moves at once again.
        l.opened(now, &mut out);
        l.welcomed("n1", 1000, now, &mut out);
        assert_eq!(l.hops, 0);
    }

    #[test]
    fn standbys_naming_each_other_make_the_client_wait_not_spin() {
        let (mut l, now) = link(&["10.0.0.1", "10.0.0.2"]);
        let mut out = Vec::new();
        l.start(now, &mut out);
        l.opened(now, &mut out);
        // Each says the other leads (their views lag): two moves at once,
        // then the backoff, however often they answer.
        let mut moves = 0;
        for i in 0..10 {
            out.clear();
            let other = if l.server() == "10.0.0.1" {
                "10.0.0.2"
            } else {
                "10.0.0.1"
            };
            l.standby(Some("sx"), Some(other), now, &mut out);
            if out == vec![Act::Close, Act::Open] {
                moves += 1;
                l.opened(now, &mut out);
                continue;
            }
            assert!(
                matches!(out.as_slice(), [Act::Close, Act::Timer(at, LinkTimer::Reopen)] if *at > now),
                "answer {i}: {out:?}"
            );
            assert_eq!(moves, 2, "moves at once before the backoff");
            return;
        }
        panic!("never waited: {moves} moves at once");
    }

    #[test]
    fn a_leader_that_refuses_while_a_standby_names_it_costs_the_backoff_not_a_spin() {
        // The active server's port refuses (it is overloaded, or just
        // gone); the standby still names it. A standby's answer is not
        // hearing the server: it does not start a new stretch.
        let (mut l, now) = link(&["10.0.0.1", "10.0.0.2"]);
        let mut out = Vec::new();
        l.start(now, &mut out);
        l.opened(now, &mut out);
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, now, &mut out);
        assert_eq!(
            (out.as_slice(), l.server()),
            (&[Act::Close, Act::Open][..], "10.0.0.2")
        );
        l.opened(now, &mut out);
        out.clear();
        l.standby(Some("s0"), Some("10.0.0.1"), now, &mut out);
        assert_eq!(
            (out.as_slice(), l.server()),
            (&[Act::Close, Act::Open][..], "10.0.0.1")
        );
        l.opened(now, &mut out);
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, now, &mut out);
        assert!(
            matches!(out.as_slice(), [Act::Close, Act::Timer(at, LinkTimer::Reopen)] if *at > now),
            "{out:?}"
        );
    }

    #[test]
    fn a_standby_without_a_leader_or_naming_an_unknown_address_is_passed_for_the_next() {
        let (mut l, now) = link(&["10.0.0.1", "10.0.0.2"]);
        let mut out = Vec::new();
        l.start(now, &mut out);
        l.opened(now, &mut out);
        out.clear();
        l.standby(None, None, now, &mut out);
        assert_eq!(out, vec![Act::Close, Act::Open]);
        assert_eq!(l.server(), "10.0.0.2");
        l.opened(now, &mut out);
        out.clear();
        l.standby(Some("s9"), Some("10.9.9.9"), now, &mut out);
        assert_eq!(out, vec![Act::Close, Act::Open]);
        assert_eq!(l.server(), "10.0.0.1");
        // Alone, a standby that is taking the lead is waited for.
        let (mut l, now) = link(&["10.0.0.1"]);
        l.start(now, &mut out);
        l.opened(now, &mut out);
        out.clear();
        l.standby(Some("s1"), Some("10.0.0.1"), now, &mut out);
        assert!(
            matches!(out.as_slice(), [Act::Close, Act::Timer(at, LinkTimer::Reopen)] if *at > now),
            "{out:?}"
        );
        assert_eq!(l.server(), "10.0.0.1");
    }

    #[test]
    fn one_server_keeps_the_old_rules() {
        let (mut l, now) = link(&["10.0.0.1"]);
        let mut out = Vec::new();
        l.start(now, &mut out);
        l.opened(now, &mut out);
        out.clear();
        l.monitor(LinkEvent::ConnectFailed, now, &mut out);
        assert_eq!(out, vec![Act::Probe]);
        assert_eq!(l.server(), "10.0.0.1");
    }
}
