//! The client's rules, without sockets or processes: the link (`Link`:
//! announce, beat, liveness, backoff), the session with the server (which
//! client process this is, the last dispatch it saw, what the cache
//! summary last said) and the jobs (`Runner`). The loop in `mod.rs` feeds
//! it what happened, with the time read once per pass (`at`), and performs
//! what it asks (`Out`); the simulator (`crate::sim`) does the same over a
//! simulated network and simulated processes.

use std::time::Instant;

use uuid::Uuid;

use super::exec::Spawn;
use super::link::{Act, Link, LinkTimer};
use super::runner::{Effects, IoDone, IoTask, Runner, RunnerTimer};
use crate::reactor::child::Ended;
use crate::reactor::monitor::LinkEvent;
use crate::support::clock::Now;
use crate::wire::{ClientMsg, Dispatch, ServerMsg};

/// The client's three connections to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Job,
    Transfer,
    Heartbeat,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Job => "job",
            Channel::Transfer => "transfer",
            Channel::Heartbeat => "heartbeat",
        }
    }
}

/// The core's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    Link(LinkTimer),
    Runner(RunnerTimer),
}

/// What the core asks its loop to do, in order.
pub enum Out {
    /// Send on a connection (dropped while the link is closed).
    Send(Channel, ClientMsg),
    /// Open the connections, then call `opened` (or `open_failed`).
    Open,
    /// Close them.
    Close,
    /// Find out off the loop why the server cannot be reached; `probed`.
    Probe,
    Timer(Instant, Timer),
    /// Blocking work; its result comes back through `io_done`.
    Io(IoTask),
    /// Start a command; its end comes back through `exited`.
    Spawn(Spawn),
    /// A signal for a running command's process group.
    Signal(Uuid, i32),
    /// Someone follows this running job now: send its output as it comes.
    GoLive(Uuid),
    /// The server will not have us: stop (`stop`), then exit with this.
    Refuse(String),
}

/// Who this client is to the server.
pub struct Identity {
    pub name: String,
    /// Shows the server we know the shared key; empty without one.
    pub proof: Vec<u8>,
    /// This process among the node's past and future ones, in `Ready`.
    pub instance: u64,
}

/// The client's state and rules.
pub struct Core {
    link: Link,
    runner: Runner,
    me: Identity,
    /// The last job dispatch received, in `Ready`: the server judges only
    /// jobs sent before it against what we hold.
    seen: Option<Dispatch>,
    /// The cache generation the server last heard of, since it welcomed
    /// us (`None`: not welcomed on this link).
    cache_reported: Option<u64>,
    now: Now,
    out: Vec<Out>,
}

impl Core {
    pub fn new(link: Link, runner: Runner, me: Identity, now: Now) -> Core {
        Core {
            link,
            runner,
            me,
            seen: None,
            cache_reported: None,
            now,
            out: Vec::new(),
        }
    }

    /// The time of what is handled next.
    pub fn at(&mut self, now: Now) {
        self.now = now;
        self.runner.at(now);
    }

    /// What to perform, in order.
    pub fn take_out(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// Open the link; its timers run for the life of the client.
    pub fn start(&mut self) {
        let mut acts = Vec::new();
        self.link.start(self.now.at, &mut acts);
        self.act(acts);
    }

    /// The connections are open.
    /// The server address the link goes to now.
    pub fn server(&self) -> &str {
        self.link.server()
    }

    pub fn opened(&mut self) {
        let mut acts = Vec::new();
        self.link.opened(self.now.at, &mut acts);
        self.act(acts);
    }

    /// They could not be opened, or one failed.
    pub fn open_failed(&mut self, why: &str) {
        let mut acts = Vec::new();
        self.link.open_failed(why, self.now.at, &mut acts);
        self.act(acts);
    }

    /// What the job socket's monitor saw.
    pub fn monitor(&mut self, event: LinkEvent) {
        let mut acts = Vec::new();
        self.link.monitor(event, self.now.at, &mut acts);
        self.act(acts);
    }

    /// A message from the server on `channel`.
    pub fn message(&mut self, channel: Channel, msg: ServerMsg, payload: Option<Vec<u8>>) {
        let mut fx = Effects::default();
        let mut acts = Vec::new();
        let now = self.now.at;
        // Anything from the server is hearing it; a standby's answer says
        // where to go, not that the server is there (moves it causes
        // count toward the backoff).
        if !matches!(msg, ServerMsg::Standby { .. }) {
            self.link.heard(now);
        }
        use Channel::{Heartbeat, Job, Transfer};
        match (channel, msg, payload) {
            (Heartbeat, ServerMsg::HeartbeatAck { .. }, None) => {}
            (Heartbeat | Job, ServerMsg::Register, None) => self.link.register(now, &mut acts),
            (Job, ServerMsg::Welcome { name, interval_ms }, None) => {
                self.link.welcomed(&name, interval_ms, now, &mut acts)
            }
            (Heartbeat | Job, ServerMsg::Denied(why), None) => {
                self.link.denied(why, now, &mut acts)
            }
            (Job, ServerMsg::Standby { leader, address }, None) => {
                self.link
                    .standby(leader.as_deref(), address.as_deref(), now, &mut acts)
            }
            (
                Job,
                ServerMsg::Job {
                    job_id,
                    parent,
                    task,
                    dispatch,
                    live,
                    instance,
                    lane,
                },
                None,
            ) if instance == 0 || instance == self.me.instance => {
                self.seen = Some(dispatch);
                self.runner
                    .enqueue_in(job_id, parent, task, live, lane, &mut fx);
            }
            (Job, ServerMsg::Job { job_id, .. }, None) => log::warn!(
                "job {job_id} was sent to this node's previous client process, before the server took this one's Ready: not run here (the server reports it lost)"
            ),
            (Job, ServerMsg::ResultAck { job_id }, None) => self.runner.acked(&job_id, &mut fx),
            (Job, ServerMsg::Follow { job_id }, None) => {
                self.runner.follow(&job_id);
                self.out.push(Out::GoLive(job_id));
            }
            (Job, ServerMsg::QueryResult { job_id, values }, None) => {
                self.runner.on_query_result(job_id, values, &mut fx)
            }
            (Transfer, msg @ (ServerMsg::Chunk { .. } | ServerMsg::FetchError { .. }), payload) => {
                self.runner.on_transfer(msg, payload, &mut fx);
            }
            (_, msg, _) => log::warn!(
                "server: dropped an unexpected {} on the {} port",
                msg.describe(),
                channel.name()
            ),
        }
        self.act(acts);
        self.apply(fx);
    }

    /// One of the core's timers is due.
    pub fn timer(&mut self, timer: Timer) {
        match timer {
            Timer::Link(t) => {
                let mut acts = Vec::new();
                self.link.timer(t, self.now.at, &mut acts);
                self.act(acts);
            }
            Timer::Runner(t) => {
                let mut fx = Effects::default();
                self.runner.on_timer(t, self.now.at, &mut fx);
                self.apply(fx);
            }
        }
    }

    /// Blocking work came back.
    pub fn io_done(&mut self, done: IoDone) {
        if let IoDone::Probe(why) = done {
            self.link.probed(why);
            return;
        }
        let mut fx = Effects::default();
        self.runner.on_io(done, &mut fx);
        self.apply(fx);
    }

    /// A command ended (or could not be watched: why).
    pub fn exited(&mut self, job_id: Uuid, ended: Result<Ended, String>) {
        let mut fx = Effects::default();
        self.runner.on_exited(job_id, ended, &mut fx);
        self.apply(fx);
    }

    /// Work that is ready without waiting for anything.
    pub fn wants_tick(&self) -> bool {
        self.runner.wants_tick()
    }

    pub fn tick(&mut self) {
        let mut fx = Effects::default();
        self.runner.tick(&mut fx);
        self.apply(fx);
    }

    /// Drop expired cache entries.
    pub fn sweep_cache(&mut self) {
        let mut fx = Effects::default();
        self.runner.sweep_cache(&mut fx);
        self.apply(fx);
    }

    /// Start nothing new; true while a command still runs.
    pub fn stop(&mut self) -> bool {
        let mut fx = Effects::default();
        let busy = self.runner.stop(&mut fx);
        self.apply(fx);
        busy
    }

    pub fn is_idle(&self) -> bool {
        self.runner.is_idle()
    }

    /// Carry out what the link's rules ask.
    fn act(&mut self, acts: Vec<Act>) {
        for act in acts {
            match act {
                Act::Open => self.out.push(Out::Open),
                Act::Close => {
                    self.cache_reported = None;
                    self.out.push(Out::Close);
                }
                Act::Announce => self.announce(),
                Act::Beat => self.beat(),
                Act::ReportCache => {
                    self.cache_reported = None;
                    self.report_cache();
                }
                Act::Timer(at, t) => self.out.push(Out::Timer(at, Timer::Link(t))),
                Act::Probe => self.out.push(Out::Probe),
                Act::Refuse(why) => self.out.push(Out::Refuse(why)),
            }
        }
    }

    /// Carry out what the runner asked for.
    fn apply(&mut self, fx: Effects) {
        let Effects {
            job,
            transfer,
            timers,
            io,
            spawn,
            signal,
        } = fx;
        self.out
            .extend(job.into_iter().map(|m| Out::Send(Channel::Job, m)));
        self.out.extend(
            transfer
                .into_iter()
                .map(|m| Out::Send(Channel::Transfer, m)),
        );
        self.out.extend(
            timers
                .into_iter()
                .map(|(at, t)| Out::Timer(at, Timer::Runner(t))),
        );
        self.out.extend(io.into_iter().map(Out::Io));
        self.out
            .extend(signal.into_iter().map(|(id, sig)| Out::Signal(id, sig)));
        self.out.extend(spawn.into_iter().map(Out::Spawn));
        // The jobs are done for now: the server's view of the cache catches
        // up at once, not at the next heartbeat (once per burst of jobs).
        if self.cache_reported.is_some() && self.runner.is_idle() {
            self.report_cache();
        }
    }

    fn beat(&mut self) {
        if self.cache_reported.is_some() {
            self.report_cache();
        }
        let interval_ms = self.link.ivl().as_millis() as u64;
        self.out.push(Out::Send(
            Channel::Heartbeat,
            ClientMsg::Heartbeat { interval_ms },
        ));
    }

    /// Say `Ready` with what we hold, then resend unacknowledged results.
    fn announce(&mut self) {
        let mut fx = Effects::default();
        self.runner.link_reset(&mut fx);
        self.apply(fx);
        let ready = ClientMsg::Ready {
            name: self.me.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            // Ours, not what a server granted before: a new server may allow
            // more.
            interval_ms: self.link.own_ivl().as_millis() as u64,
            holding: self.runner.holding(),
            proof: self.me.proof.clone(),
            instance: self.me.instance,
            seen: self.seen,
            facts: self.runner.node().facts.clone(),
            labels: self.runner.node().labels.clone(),
        };
        self.out.push(Out::Send(Channel::Job, ready));
        let resend: Vec<ClientMsg> = self.runner.unacked().collect();
        self.out
            .extend(resend.into_iter().map(|m| Out::Send(Channel::Job, m)));
    }

    /// Tell the server what the cache holds, if that changed since it last
    /// heard (at most once a heartbeat, however many steps ran).
    fn report_cache(&mut self) {
        let generation = self.runner.cache_generation();
        if self.cache_reported == Some(generation) {
            return;
        }
        let summary = ClientMsg::Cache(self.runner.cache_summary());
        self.out.push(Out::Send(Channel::Job, summary));
        self.cache_reported = Some(generation);
    }
}
