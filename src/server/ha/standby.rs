//! A standby: it follows the log in etcd into its own journals, answers
//! CLIs that the active server is elsewhere, and campaigns when the
//! leader key is free. Winning, it reads the log to its end, clears what
//! a deposed leader left unfinished (and, for a log that is empty or
//! behind its own disk, writes its journals as the log's base), and hands
//! over to the server proper, which starts from its disk as after a
//! restart.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token, Waker};

use super::entries::{Chunk, Entry, Follower, Gap};
use super::reads::{Snapshot, Source};
use super::redirect::Redirect;
use super::replicate::{read_seq, Mark};
use super::takeover::{self, Ask, Log, TakeOver};
use super::Ha;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::etcd;
use crate::journal::{Journal, Lazy};
use crate::reactor::signals::Signals;
use crate::reactor::worker::Worker;
use crate::reactor::{self, Sleep, TokenCounter};
use crate::server::api::{self, host};
use crate::server::control::{ControlConn, Inbound};
use crate::server::election::Change;
use crate::server::persist::{self, CommitResult, Op};
use crate::server::{history, keys, tokens};
use crate::support::dirlock::DirLock;
use crate::wire::{Request, Response};

/// What every server mode shares: the loop's poll, its signals, the lock
/// on the state directory.
pub struct Base {
    pub poll: Poll,
    pub signals: Signals,
    pub lock: DirLock,
    /// The loop's one waker (token `WORKER`), shared by its helpers.
    pub waker: Arc<Waker>,
}

/// How standing by ended.
pub enum Exit {
    /// This server leads: its journals hold the log up to `seq`.
    Lead { fence: i64, seq: u64 },
    /// Told to stop.
    Stop,
}

const CONTROL: Token = super::super::CONTROL;
const SIGNALS: Token = super::super::SIGNALS;
const WORKER: Token = super::super::WORKER;
const API: Token = super::super::API;
const JOB: Token = super::super::JOB;
const FIRST_DYNAMIC: usize = 16;

/// How soon a watch that broke is opened again.
const REWATCH: Duration = Duration::from_millis(500);
/// How long a snapshot of the journals answers reads once they hold later
/// entries.
const SNAPSHOT_TTL: Duration = Duration::from_secs(1);
/// How soon writes that failed are tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The journals a standby writes, by what they hold.
pub(super) struct Journals {
    history: Journal,
    keys: Journal,
    tokens: Journal,
}

impl Journals {
    /// Opened without reading their records (their bulk is not needed).
    pub(super) fn open(dir: &Path) -> io::Result<Journals> {
        fn skip<T: crate::journal::Layout>(dir: &Path, name: &str) -> io::Result<Journal> {
            Journal::open_lazy::<T, ()>(dir, name, |_| Some(()), |_: Lazy<T, ()>, _| {})
        }
        Ok(Journals {
            history: skip::<history::Record>(dir, history::FILE)?,
            keys: skip::<keys::KeyRecord>(dir, keys::FILE)?,
            tokens: skip::<tokens::TokenRecord>(dir, tokens::FILE)?,
        })
    }

    /// The writes that apply `entry` as `seq`, marked after.
    pub(super) fn apply(
        &mut self,
        seq: u64,
        entry: Entry,
        dir: &Path,
    ) -> std::result::Result<Vec<Op>, String> {
        let mut ops = Vec::new();
        let parts = [
            (&mut self.history, entry.history, history::FILE),
            (&mut self.keys, entry.keys, keys::FILE),
            (&mut self.tokens, entry.tokens, tokens::FILE),
        ];
        for (j, bytes, name) in parts {
            if entry.base {
                let rw = j
                    .replace_encoded(bytes)
                    .map_err(|e| format!("entry {seq} for {name}: {e}"))?;
                ops.push(Op::Replace(rw));
            } else if !bytes.is_empty() {
                j.append_encoded(&bytes)
                    .map_err(|e| format!("entry {seq} for {name}: {e}"))?;
                ops.extend(j.take(true).map(Op::Append));
            }
        }
        ops.push(Op::Mark(Mark::new(dir, seq)));
        Ok(ops)
    }

    pub(super) fn encoded(&self) -> io::Result<Entry> {
        Ok(Entry {
            base: true,
            history: self.history.encoded()?,
            keys: self.keys.encoded()?,
            tokens: self.tokens.encoded()?,
        })
    }
}

/// What the watch thread hands over.
enum Watched {
    Chunks(Vec<Chunk>),
    /// After the log as it was read whole: how far it had been trimmed
    /// (read before it).
    Trimmed(u64),
    Trouble(String),
}

/// Follow the log from `seq` on, on a thread of its own: the log as it is
/// (a range), then its changes (a watch), again from where it was after a
/// break. It exits once the loop stops taking what it sends.
fn start_watch(ha: &Ha, waker: Arc<Waker>) -> io::Result<Receiver<Watched>> {
    let (tx, rx) = mpsc::channel();
    let mut client = etcd::Client::new(&ha.cfg.endpoints, Duration::from_secs(2));
    let prefix = ha.keys.log();
    let keys = ha.keys.clone();
    std::thread::Builder::new()
        .name("director-watch".into())
        .spawn(move || {
            let send = |w: Watched| {
                let ok = tx.send(w).is_ok();
                let _ = waker.wake();
                ok
            };
            let decode = |kv: &etcd::Kv| Chunk::decode(&kv.value);
            let mut from: Option<i64> = None;
            loop {
                let start = match from {
                    Some(rev) => rev,
                    // How far it was trimmed first: entries trimmed
                    // after this read show as a gap in the range.
                    None => match super::read_trimmed(&mut client, &keys)
                        .and_then(|t| Ok((t, client.range(&prefix, true)?)))
                    {
                        Ok((trimmed, (kvs, rev))) => {
                            if !send(Watched::Chunks(kvs.iter().filter_map(decode).collect())) {
                                return;
                            }
                            if !send(Watched::Trimmed(trimmed)) {
                                return;
                            }
                            rev + 1
                        }
                        Err(e) => {
                            if !send(Watched::Trouble(e.to_string())) {
                                return;
                            }
                            std::thread::sleep(REWATCH);
                            continue;
                        }
                    },
                };
                from = Some(start);
                let mut watch = match client.watch(&prefix, true, start) {
                    Ok(w) => w,
                    Err(e) => {
                        if !send(Watched::Trouble(e.to_string())) {
                            return;
                        }
                        std::thread::sleep(REWATCH);
                        continue;
                    }
                };
                loop {
                    match watch.changes() {
                        Ok(changes) => {
                            let mut chunks = Vec::new();
                            for c in changes {
                                if let etcd::Change::Put(kv) = c {
                                    from = Some(kv.mod_revision + 1);
                                    chunks.extend(decode(&kv));
                                }
                            }
                            if !send(Watched::Chunks(chunks)) {
                                return;
                            }
                        }
                        Err(e) => {
                            // Compacted away: read the log as it is again.
                            if matches!(e, etcd::EtcdError::Refused(_)) {
                                from = None;
                            }
                            if !send(Watched::Trouble(e.to_string())) {
                                return;
                            }
                            std::thread::sleep(REWATCH);
                            break;
                        }
                    }
                }
            }
        })?;
    Ok(rx)
}

/// What the I/O thread is doing for the standby: one task at a time, so
/// a snapshot never reads the journals half written.
enum Busy {
    /// Writing entry `seq` (a base or not).
    Write { seq: u64, base: bool },
    /// Answering reads from the snapshot (read first if stale).
    Read,
    /// Taking the lead: the journals are the I/O thread's meanwhile.
    TakeOver { fence: i64 },
}

/// What the I/O thread hands back.
enum Done {
    Written(CommitResult),
    /// The answers to reads, each connection's together and in order, and
    /// the snapshot they came from (none if it could not be read).
    Answered(Option<(Snapshot, Instant)>, Vec<Answers>),
    TookOver(Box<Log>, std::result::Result<u64, TakeOver>),
}

/// Who asked a read waiting for a snapshot.
#[derive(Clone, Copy, PartialEq)]
enum Asker {
    Cli,
    /// An API connection: its answer renders as the route expects.
    Api,
}

/// A connection's answers.
type Answers = (Token, Asker, Vec<Response>);

/// On the I/O thread: the reads' answers, from `fresh` or from the
/// journals read now (up to entry `seq`); each connection's answers
/// together, in order (one that closed its side is let go once it has
/// them all).
fn answer(
    fresh: Option<(Snapshot, Instant)>,
    src: &Source,
    seq: u64,
    parked: Vec<(Token, Asker, Request)>,
) -> Done {
    let snapshot = match fresh {
        Some(s) => Ok(s),
        None => Snapshot::read(src, seq).map(|s| (s, Instant::now())),
    };
    let mut by_conn: Vec<Answers> = Vec::new();
    let mut snapshot = match snapshot {
        Ok(s) => Some(s),
        Err(why) => {
            log::warn!("{why}");
            for (token, asker, _) in parked {
                if !by_conn.iter().any(|(t, ..)| *t == token) {
                    by_conn.push((token, asker, vec![Response::Rejected(why.clone())]));
                }
            }
            return Done::Answered(None, by_conn);
        }
    };
    for (token, asker, req) in parked {
        let answers = snapshot
            .as_mut()
            .map_or_else(Vec::new, |(s, _)| s.answer(req));
        match by_conn.iter_mut().find(|(t, ..)| *t == token) {
            Some((.., all)) => all.extend(answers),
            None => by_conn.push((token, asker, answers)),
        }
    }
    Done::Answered(snapshot, by_conn)
}

pub(super) struct Standby<'a> {
    cfg: &'a Config,
    base: &'a mut Base,
    pub(super) ha: &'a mut Ha,
    listener: UnixListener,
    conns: HashMap<Token, ControlConn>,
    tokens: TokenCounter,
    /// The journals and how far they follow; `None` while the I/O thread
    /// has them (taking over).
    log: Option<Log>,
    watch: Receiver<Watched>,
    io: Worker<Done>,
    busy: Option<Busy>,
    /// Writes not yet handed to the I/O thread, in order, with the entry
    /// each applies (and whether it is a base).
    writes: VecDeque<(u64, bool, Vec<Op>)>,
    retry_at: Option<Instant>,
    /// What reads are answered from, and reads waiting for a newer one.
    snapshot: Option<(Snapshot, Instant)>,
    parked: Vec<(Token, Asker, Request)>,
    /// Connections whose reads the I/O thread is answering.
    answering: Vec<(Token, Asker)>,
    /// CLIs that closed their side with answers still to come.
    half_closed: Vec<Token>,
    source: Source,
    /// The API tokens, as the log's entries leave them.
    pub(super) api_tokens: tokens::Tokens,
    pub(super) api: Option<api::Api>,
    /// The job port, telling nodes where the active server is.
    redirect: Option<Redirect>,
    /// Won the election with this fence: take over (from `takeover_at`,
    /// after a try etcd did not answer).
    taking_over: Option<i64>,
    takeover_at: Option<Instant>,
    exit: Option<Result<Exit>>,
    /// What was last said about the watch, said again only when it
    /// changes.
    trouble: Option<String>,
    gap: Option<Gap>,
}

/// Stand by until this server leads, or is told to stop.
pub fn run(cfg: &Config, base: &mut Base, ha: &mut Ha) -> Result<Exit> {
    let dir = &cfg.state_path;
    let journals = Journals::open(dir)
        .map_err(|e| Error::io(format!("cannot open the journals in {}", dir.display()), e))?;
    let (_, token_records) =
        Journal::open::<tokens::TokenRecord>(dir, tokens::FILE).map_err(|e| {
            Error::io(
                format!("cannot open the API tokens in {}", dir.display()),
                e,
            )
        })?;
    let seq = read_seq(dir)
        .map_err(|e| Error::io("cannot read how far this server follows the log", e))?;
    let mut listener =
        crate::server::requests::bind_control(&cfg.socket_path, cfg.socket_group.as_deref())?;
    base.poll
        .registry()
        .register(&mut listener, CONTROL, Interest::READABLE)
        .map_err(|e| Error::io("cannot watch the control socket", e))?;
    let api = match &cfg.api {
        Some(a) => {
            let mut api = api::Api::bind(a, Instant::now())?;
            api.headers = "X-Director-Role: standby\r\n".into();
            base.poll
                .registry()
                .register(&mut api.listener, API, Interest::READABLE)
                .map_err(|e| Error::io("cannot watch the API's listener", e))?;
            Some(api)
        }
        None => None,
    };
    // Without it, nodes still find the active server by trying their
    // addresses in turn.
    let redirect = Redirect::bind(cfg, base.poll.registry(), JOB)
        .map_err(|e| {
            log::warn!("{e}; nodes that reach this standby are not told where the active server is")
        })
        .ok();
    let watch = start_watch(ha, Arc::clone(&base.waker))
        .map_err(|e| Error::io("cannot start the thread that follows etcd", e))?;
    let io = Worker::with_waker("director-io", Arc::clone(&base.waker))
        .map_err(|e| Error::io("cannot start the I/O thread", e))?;
    log::info!(
        "standing by on etcd {} (prefix {}): following the log from entry {}; control socket {}{}",
        ha.cfg.endpoints.join(","),
        ha.cfg.prefix,
        seq + 1,
        cfg.socket_path.display(),
        match &cfg.api {
            Some(a) => format!("; API (reads from this replica) on port {}", a.port),
            None => String::new(),
        }
    );
    ha.record.applied = seq;
    let mut s = Standby {
        cfg,
        base,
        ha,
        listener,
        conns: HashMap::new(),
        tokens: TokenCounter::new(FIRST_DYNAMIC),
        log: Some(Log {
            journals,
            follower: Follower::new(seq),
        }),
        watch,
        io,
        busy: None,
        writes: VecDeque::new(),
        retry_at: None,
        snapshot: None,
        parked: Vec::new(),
        answering: Vec::new(),
        half_closed: Vec::new(),
        source: Source::new(cfg),
        api_tokens: tokens::Tokens::restore(token_records),
        api,
        redirect,
        taking_over: None,
        takeover_at: None,
        exit: None,
        trouble: None,
        gap: None,
    };
    let exit = s.run();
    s.farewell(&exit);
    let _ = s.base.poll.registry().deregister(&mut s.listener);
    if let Some(mut api) = s.api.take() {
        let _ = s.base.poll.registry().deregister(&mut api.listener);
    }
    let _ = std::fs::remove_file(&cfg.socket_path);
    exit
}

impl Standby<'_> {
    fn run(&mut self) -> Result<Exit> {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            for c in self.ha.tick(now) {
                self.changed(c);
            }
            if let Some(exit) = self.exit.take() {
                return exit;
            }
            self.schedule(now);
            host::sweep(self, now);
            host::flush(self);
            let busy = self.redirect();
            let next = [
                Some(self.ha.next_deadline()),
                self.retry_at,
                self.takeover_at,
                self.api.as_ref().map(api::Api::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = Sleep {
                busy,
                backlog: false,
                next_timer: next.map(|t| t.saturating_duration_since(Instant::now())),
            };
            reactor::wait(&mut self.base.poll, &mut events, sleep)
                .map_err(|e| Error::io("event loop failed", e))?;
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    CONTROL => self.accept(),
                    API => host::accept(self),
                    JOB => {
                        if let Some(r) = &mut self.redirect {
                            r.mark_ready();
                        }
                    }
                    SIGNALS => {
                        if !self.base.signals.drain().is_empty() {
                            log::info!("standby stopping");
                            return Ok(Exit::Stop);
                        }
                    }
                    // Every helper pokes the one waker.
                    WORKER => {
                        for c in self.ha.answers(now) {
                            self.changed(c);
                        }
                        self.watched();
                        for done in self.io.drain() {
                            self.done(done, now);
                        }
                    }
                    token if self.is_api(token) => host::handle(self, token),
                    token => self.control(token),
                }
            }
        }
    }

    /// Nodes that reached this standby hear where the active server is.
    fn redirect(&mut self) -> bool {
        let Some(r) = &mut self.redirect else {
            return false;
        };
        let leader = self.ha.leader();
        r.serve(leader, leader.and_then(|l| self.ha.address_of(l)))
    }

    fn is_api(&self, token: Token) -> bool {
        self.api
            .as_ref()
            .is_some_and(|a| a.conns.contains_key(&token))
    }

    fn changed(&mut self, c: Change) {
        match c {
            Change::Lead { fence } => {
                log::info!("won the lead in etcd (fence {fence}); reading the log to its end");
                self.taking_over = Some(fence);
                self.takeover_at = None;
            }
            Change::LeaderIs(Some(name)) => {
                self.taking_over = None;
                log::info!("standing by: the active server is {name}");
            }
            Change::LeaderIs(None) => self.taking_over = None,
            Change::StepDown { why } => {
                self.taking_over = None;
                log::warn!("{why}");
            }
        }
    }

    /// What the watch thread found. Left in its channel while the I/O
    /// thread has the journals.
    fn watched(&mut self) {
        while self.log.is_some() {
            match self.watch.try_recv() {
                Ok(Watched::Chunks(chunks)) => {
                    if self.trouble.take().is_some() {
                        log::info!("following the log in etcd again");
                    }
                    for c in chunks {
                        self.offer(c);
                    }
                }
                Ok(Watched::Trimmed(upto)) => {
                    // Nothing in the log follows on from these journals.
                    let applied = self.log.as_ref().map_or(0, |l| l.follower.applied());
                    if upto > applied {
                        self.gap_found(Gap::Missing {
                            have: applied,
                            next: upto + 1,
                        });
                    }
                }
                Ok(Watched::Trouble(why)) => {
                    if self.trouble.as_ref() != Some(&why) {
                        log::warn!("cannot follow the log in etcd: {why}; trying again");
                        self.trouble = Some(why);
                    }
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    log::error!("the thread following etcd is gone");
                    return;
                }
            }
        }
    }

    fn offer(&mut self, c: Chunk) {
        let Some(log) = &mut self.log else { return };
        match log.follower.offer(c) {
            Ok(Some((seq, entry))) => {
                let base = entry.base;
                let tokens = (!entry.tokens.is_empty() || base).then(|| entry.tokens.clone());
                match log.journals.apply(seq, entry, &self.cfg.state_path) {
                    Ok(ops) => {
                        self.writes.push_back((seq, base, ops));
                        if let Some(bytes) = tokens {
                            self.tokens_changed(seq, base, &bytes);
                        }
                    }
                    Err(why) => self.gap_found(Gap::Corrupt { seq, why }),
                }
            }
            Ok(None) => {}
            Err(gap) => self.gap_found(gap),
        }
    }

    /// The API tokens an entry sets or revokes, so that the API here
    /// knows them as the active server does.
    fn tokens_changed(&mut self, seq: u64, base: bool, bytes: &[u8]) {
        match crate::journal::decode_encoded::<tokens::TokenRecord>(bytes) {
            Ok(records) if base => self.api_tokens = tokens::Tokens::restore(records),
            Ok(records) => self.api_tokens.apply_all(records),
            Err(why) => log::warn!(
                "entry {seq}: its API tokens do not decode ({why}); the API here may not know them"
            ),
        }
    }

    /// The journals cannot follow the log from here: ask the active
    /// server for a base, and do not campaign until it came.
    fn gap_found(&mut self, gap: Gap) {
        // Said once until the base comes: each entry that follows shows
        // the same gap, a little longer.
        match &self.gap {
            None => log::warn!(
                "cannot follow the log: {gap}; asked the active server for a base (this server does not campaign until it has it)"
            ),
            Some(_) => log::debug!("still cannot follow the log: {gap}"),
        }
        self.gap = Some(gap);
        self.ha.set_missing(true);
    }

    /// Give the I/O thread its next task: taking over once every entry
    /// is written, a snapshot for reads that wait for one, else the next
    /// write.
    fn schedule(&mut self, now: Instant) {
        if self.busy.is_some() {
            return;
        }
        if let Some(fence) = self.taking_over {
            let due = self.takeover_at.is_none_or(|t| t <= now);
            if due && self.writes.is_empty() {
                if let Some(mut log) = self.log.take() {
                    let ask = Ask {
                        client: Arc::clone(&self.ha.log_client),
                        keys: self.ha.keys.clone(),
                        fence,
                        dir: self.cfg.state_path.clone(),
                    };
                    self.busy = Some(Busy::TakeOver { fence });
                    self.io.submit(move || {
                        let r = takeover::take_over(&mut log, &ask);
                        Done::TookOver(Box::new(log), r)
                    });
                    return;
                }
            }
        }
        if !self.parked.is_empty() {
            let fresh = if self.fresh() {
                self.snapshot.take()
            } else {
                None
            };
            let (src, seq) = (self.source.clone(), self.ha.record.applied);
            let parked = std::mem::take(&mut self.parked);
            self.answering = parked.iter().map(|(t, a, _)| (*t, *a)).collect();
            self.busy = Some(Busy::Read);
            self.io.submit(move || answer(fresh, &src, seq, parked));
            return;
        }
        if self.retry_at.is_some_and(|t| t > now) {
            return;
        }
        self.retry_at = None;
        if let Some((seq, base, ops)) = self.writes.pop_front() {
            self.busy = Some(Busy::Write { seq, base });
            self.io.submit(move || Done::Written(persist::run_ops(ops)));
        }
    }

    /// The snapshot holds every entry the journals do, or was read
    /// within `SNAPSHOT_TTL`: under a steady stream of entries, reads (a
    /// dashboard polling) cost a whole read of the history at most that
    /// often, and say how far behind they are.
    fn fresh(&self) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(|(s, at)| s.seq == self.ha.record.applied || at.elapsed() < SNAPSHOT_TTL)
    }

    fn done(&mut self, done: Done, now: Instant) {
        let busy = self.busy.take();
        match (done, busy) {
            (Done::Written(r), Some(Busy::Write { seq, base })) => self.written(seq, base, r, now),
            (Done::Answered(snapshot, answers), _) => {
                self.snapshot = snapshot;
                self.answering.clear();
                let note = self.replica_note();
                for (token, asker, mut answers) in answers {
                    answers.insert(0, note.clone());
                    self.reply(token, asker, answers);
                }
            }
            (Done::TookOver(log, r), Some(Busy::TakeOver { fence })) => {
                self.ha.record.applied = log.follower.applied();
                self.log = Some(*log);
                self.took_over(fence, r, now);
                // What the watch found meanwhile.
                self.watched();
            }
            // The task and the answer are paired by construction.
            (_, _) => log::error!("the I/O thread answered a task it was not given"),
        }
    }

    fn written(&mut self, seq: u64, base: bool, r: CommitResult, now: Instant) {
        match r {
            Ok(()) => {
                self.ha.record.applied = seq;
                if base && self.gap.take().is_some() {
                    log::info!("following the log again from the base at entry {seq}");
                    self.ha.set_missing(false);
                }
            }
            Err((undone, e)) => {
                log::error!(
                    "cannot write the log's entries to {}: {e}; trying again every {}s",
                    self.cfg.state_path.display(),
                    RETRY.as_secs()
                );
                self.writes.push_front((seq, base, undone));
                self.retry_at = Some(now + RETRY);
            }
        }
    }

    fn took_over(&mut self, fence: i64, r: std::result::Result<u64, TakeOver>, now: Instant) {
        match r {
            // The election may have moved on while etcd was read.
            Ok(seq) if self.taking_over == Some(fence) => {
                self.exit = Some(Ok(Exit::Lead { fence, seq }));
            }
            Ok(_) => log::warn!("lost the lead while reading the log; standing by"),
            // Still holding the lead: try again shortly (the election
            // steps down if its lease may lapse).
            Err(TakeOver::Again(why)) => {
                log::warn!("cannot take over yet: {why}; trying again");
                self.takeover_at = Some(now + REWATCH);
            }
            Err(TakeOver::Missing(gap)) => {
                // Leading without part of the log would lose what was
                // acknowledged: let another lead.
                log::error!(
                    "won the lead but cannot take it: {gap}; gave it up for a server that has the log"
                );
                self.taking_over = None;
                self.ha.resign_later();
                self.gap_found(gap);
            }
            Err(TakeOver::Fatal(e)) => self.exit = Some(Err(e)),
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let token = self.tokens.next();
                    let mut conn = ControlConn::new(stream);
                    if self
                        .base
                        .poll
                        .registry()
                        .register(
                            &mut conn.stream,
                            token,
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.conns.insert(token, conn);
                    self.control(token);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Leaving standby: CLIs connected meanwhile hear why, rather than
    /// have their connection reset.
    fn farewell(&mut self, exit: &Result<Exit>) {
        let why = match exit {
            Ok(Exit::Lead { .. }) => {
                "this server is becoming the active server; try again in a moment"
            }
            _ => "this standby is stopping",
        };
        let waiting = std::mem::take(&mut self.parked)
            .into_iter()
            .map(|(t, a, _)| (t, a))
            .chain(std::mem::take(&mut self.answering));
        let mut told = Vec::new();
        for (token, asker) in waiting {
            if told.contains(&token) {
                continue;
            }
            told.push(token);
            match asker {
                Asker::Cli => self.send(token, &[Response::Rejected(why.into())], false),
                Asker::Api => {
                    let body = api::http::error_body(why);
                    host::respond(self, token, 503, &body, true);
                }
            }
        }
        host::flush(self);
        self.accept_pending();
        for (_, mut conn) in self.conns.drain() {
            let n = match conn.read() {
                Inbound::Requests(r) | Inbound::Closed(r) => r.len(),
                Inbound::Corrupt(_) => 0,
            };
            for _ in 0..n {
                let _ = conn.send(&Response::Rejected(why.into()));
            }
            let _ = conn.flush();
            let _ = self.base.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn accept_pending(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            let token = self.tokens.next();
            self.conns.insert(token, ControlConn::new(stream));
        }
    }

    /// Why this server does not do what only the active one does.
    pub(super) fn not_here(&self) -> String {
        match self.ha.leader() {
            Some(l) => format!(
                "this server ({}) stands by; the active server is {l}: run the command there",
                self.ha.me
            ),
            None => format!(
                "this server ({}) stands by and no server is active yet (etcd: {}); try again in a few seconds",
                self.ha.me,
                self.ha.cfg.endpoints.join(",")
            ),
        }
    }

    /// Reads answer from the snapshot of the journals, on the I/O thread
    /// (`schedule`), `Cluster` from what this server knows; anything else
    /// is refused with the active server's name.
    fn control(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let (requests, closed) = match conn.read() {
            Inbound::Requests(r) => (r, false),
            Inbound::Closed(r) => (r, true),
            Inbound::Corrupt(_) => (Vec::new(), true),
        };
        let mut answers = Vec::new();
        for req in requests {
            match req {
                // What a standby knows first hand.
                Request::Cluster => answers.push(Response::Cluster(self.ha.view())),
                req if crate::server::requests::history_reads(&req) => {
                    self.parked.push((token, Asker::Cli, req));
                }
                _ => answers.push(Response::Rejected(self.not_here())),
            }
        }
        self.send(token, &answers, closed);
    }

    /// Answers to a CLI; the connection goes once it closed its side, or
    /// cannot take them.
    fn send(&mut self, token: Token, answers: &[Response], closed: bool) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        for resp in answers {
            let _ = conn.send(resp);
        }
        let failed = conn.flush().is_err();
        let waiting = self.parked.iter().any(|(t, ..)| *t == token)
            || self.answering.iter().any(|(t, _)| *t == token);
        let closed = closed || self.half_closed.contains(&token);
        if closed && waiting {
            if !self.half_closed.contains(&token) {
                self.half_closed.push(token);
            }
        } else if closed || failed {
            self.half_closed.retain(|t| *t != token);
            if let Some(mut c) = self.conns.remove(&token) {
                let _ = self.base.poll.registry().deregister(&mut c.stream);
            }
        }
    }

    /// A read waits for the next snapshot.
    pub(super) fn park(&mut self, token: Token, req: Request) {
        self.parked.push((token, Asker::Api, req));
    }

    fn reply(&mut self, token: Token, asker: Asker, answers: Vec<Response>) {
        match asker {
            Asker::Cli => self.send(token, &answers, false),
            Asker::Api => self.api_answers(token, answers),
        }
    }

    /// Before an answer from the replica: whose it is, how far behind.
    fn replica_note(&self) -> Response {
        let view = self.ha.view();
        let top = view.servers.iter().map(|s| s.applied).max().unwrap_or(0);
        Response::Replica {
            this: self.ha.me.clone(),
            leader: self.ha.leader().map(str::to_owned),
            behind: top.saturating_sub(self.snapshot.as_ref().map_or(0, |(s, _)| s.seq)),
        }
    }

    pub(super) fn registry(&self) -> &mio::Registry {
        self.base.poll.registry()
    }

    pub(super) fn next_token(&mut self) -> Token {
        self.tokens.next()
    }
}
