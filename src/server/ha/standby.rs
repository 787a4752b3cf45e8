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
use super::replicate::{read_seq, Mark, Replica};
use super::{lock, Ha};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::etcd::{self, Compare, Op as EtcdOp};
use crate::journal::{Journal, Lazy};
use crate::reactor::signals::Signals;
use crate::reactor::worker::Worker;
use crate::reactor::{self, Sleep, TokenCounter};
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
const FIRST_DYNAMIC: usize = 16;

/// How soon a watch that broke is opened again.
const REWATCH: Duration = Duration::from_millis(500);
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

    fn encoded(&self) -> io::Result<Entry> {
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

struct Standby<'a> {
    cfg: &'a Config,
    base: &'a mut Base,
    ha: &'a mut Ha,
    listener: UnixListener,
    conns: HashMap<Token, ControlConn>,
    tokens: TokenCounter,
    journals: Journals,
    follower: Follower,
    watch: Receiver<Watched>,
    io: Worker<CommitResult>,
    /// Writes not yet handed to the I/O thread, in order, with the entry
    /// each applies (and whether it is a base).
    writes: VecDeque<(u64, bool, Vec<Op>)>,
    /// The entry the write in flight applies.
    writing: Option<(u64, bool)>,
    /// Control connections to serve once the write in flight is done.
    waiting: Vec<Token>,
    in_flight: bool,
    retry_at: Option<Instant>,
    /// Won the election with this fence: read the log to its end, then
    /// lead (from `takeover_at`, after a try etcd did not answer).
    taking_over: Option<i64>,
    takeover_at: Option<Instant>,
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
    let seq = read_seq(dir)
        .map_err(|e| Error::io("cannot read how far this server follows the log", e))?;
    let mut listener =
        crate::server::requests::bind_control(&cfg.socket_path, cfg.socket_group.as_deref())?;
    base.poll
        .registry()
        .register(&mut listener, CONTROL, Interest::READABLE)
        .map_err(|e| Error::io("cannot watch the control socket", e))?;
    let watch = start_watch(ha, Arc::clone(&base.waker))
        .map_err(|e| Error::io("cannot start the thread that follows etcd", e))?;
    let io = Worker::with_waker("director-io", Arc::clone(&base.waker))
        .map_err(|e| Error::io("cannot start the I/O thread", e))?;
    log::info!(
        "standing by on etcd {} (prefix {}): following the log from entry {}; control socket {}",
        ha.cfg.endpoints.join(","),
        ha.cfg.prefix,
        seq + 1,
        cfg.socket_path.display()
    );
    ha.record.applied = seq;
    let mut s = Standby {
        cfg,
        base,
        ha,
        listener,
        conns: HashMap::new(),
        tokens: TokenCounter::new(FIRST_DYNAMIC),
        journals,
        follower: Follower::new(seq),
        watch,
        io,
        writes: VecDeque::new(),
        writing: None,
        waiting: Vec::new(),
        in_flight: false,
        retry_at: None,
        taking_over: None,
        takeover_at: None,
        trouble: None,
        gap: None,
    };
    let exit = s.run();
    s.farewell(&exit);
    let _ = s.base.poll.registry().deregister(&mut s.listener);
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
            self.write(now);
            if let Some(fence) = self.taking_over {
                let due = self.takeover_at.is_none_or(|t| t <= now);
                if due && self.writes.is_empty() && !self.in_flight {
                    match self.take_over(fence) {
                        Ok(seq) => return Ok(Exit::Lead { fence, seq }),
                        // Still holding the lead: try again shortly (the
                        // election steps down if its lease may lapse).
                        Err(TakeOver::Again(why)) => {
                            log::warn!("cannot take over yet: {why}; trying again");
                            self.takeover_at = Some(now + REWATCH);
                        }
                        Err(TakeOver::Missing(gap)) => {
                            // Leading without part of the log would lose
                            // what was acknowledged: let another lead.
                            log::error!(
                                "won the lead but cannot take it: {gap}; gave it up for a server that has the log"
                            );
                            self.taking_over = None;
                            self.ha.resign();
                            self.gap_found(gap);
                        }
                        Err(TakeOver::Fatal(e)) => return Err(e),
                    }
                }
            }
            let next = [
                Some(self.ha.next_deadline()),
                self.retry_at,
                self.takeover_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = Sleep {
                busy: false,
                backlog: false,
                next_timer: next.map(|t| t.saturating_duration_since(Instant::now())),
            };
            reactor::wait(&mut self.base.poll, &mut events, sleep)
                .map_err(|e| Error::io("event loop failed", e))?;
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    CONTROL => self.accept(),
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
                        for r in self.io.drain() {
                            self.written(r, now);
                        }
                    }
                    token => self.control(token),
                }
            }
        }
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

    /// What the watch thread found.
    fn watched(&mut self) {
        loop {
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
                    let applied = self.follower.applied();
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
        match self.follower.offer(c) {
            Ok(Some((seq, entry))) => {
                let base = entry.base;
                match self.journals.apply(seq, entry, &self.cfg.state_path) {
                    Ok(ops) => self.writes.push_back((seq, base, ops)),
                    Err(why) => self.gap_found(Gap::Corrupt { seq, why }),
                }
            }
            Ok(None) => {}
            Err(gap) => self.gap_found(gap),
        }
    }

    /// The journals cannot follow the log from here: ask the active
    /// server for a base, and do not campaign until it came.
    fn gap_found(&mut self, gap: Gap) {
        if self.gap.as_ref() != Some(&gap) {
            log::warn!(
                "cannot follow the log: {gap}; asked the active server for a base (this server does not campaign until it has it)"
            );
            self.gap = Some(gap);
        }
        self.ha.set_missing(true);
    }

    /// Hand the next writes to the I/O thread, one batch at a time.
    fn write(&mut self, now: Instant) {
        if self.in_flight || self.retry_at.is_some_and(|t| t > now) {
            return;
        }
        self.retry_at = None;
        if let Some((seq, base, ops)) = self.writes.pop_front() {
            self.in_flight = true;
            self.writing = Some((seq, base));
            self.io.submit(move || persist::run_ops(ops));
        }
    }

    fn written(&mut self, r: CommitResult, now: Instant) {
        self.in_flight = false;
        self.note_written(r, now);
        for token in std::mem::take(&mut self.waiting) {
            self.control(token);
        }
    }

    fn note_written(&mut self, r: CommitResult, now: Instant) {
        let Some((seq, base)) = self.writing.take() else {
            return;
        };
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

    /// Read the log to its end, clear a deposed leader's unfinished entry,
    /// write a base if the log has none this server can follow: the last
    /// entry the journals hold.
    fn take_over(&mut self, fence: i64) -> std::result::Result<u64, TakeOver> {
        let keys = self.ha.keys.clone();
        let client = Arc::clone(&self.ha.log_client);
        let trimmed = super::read_trimmed(&mut lock(&client), &keys)
            .map_err(|e| TakeOver::Again(e.to_string()))?;
        let (kvs, _) = lock(&client)
            .range(&keys.log(), true)
            .map_err(|e| TakeOver::Again(e.to_string()))?;
        let mut last_in_log = 0;
        for kv in &kvs {
            let Some(c) = Chunk::decode(&kv.value) else {
                continue;
            };
            if c.index + 1 == c.count {
                last_in_log = last_in_log.max(c.seq);
            }
            match self.follower.offer(c) {
                Ok(Some((seq, entry))) => {
                    let ops = self
                        .journals
                        .apply(seq, entry, &self.cfg.state_path)
                        .map_err(|why| fatal(Gap::Corrupt { seq, why }))?;
                    persist::run_ops(ops).map_err(|(_, e)| {
                        TakeOver::Fatal(Error::io(
                            format!(
                                "cannot write the log's entries to {}",
                                self.cfg.state_path.display()
                            ),
                            e,
                        ))
                    })?;
                }
                Ok(None) => {}
                Err(gap) => return Err(TakeOver::Missing(gap)),
            }
        }
        let seq = self.follower.applied();
        self.ha.record.applied = seq;
        if trimmed > seq {
            return Err(TakeOver::Missing(Gap::Missing {
                have: seq,
                next: trimmed + 1,
            }));
        }
        // Chunks past what is whole: a deposed leader's unfinished entry.
        let leftovers: Vec<EtcdOp> = kvs
            .iter()
            .filter(|kv| Chunk::decode(&kv.value).is_none_or(|c| c.seq > seq))
            .map(|kv| EtcdOp::Delete {
                key: kv.key.clone(),
                prefix: false,
            })
            .collect();
        if !leftovers.is_empty() {
            let fenced = [Compare::CreateRevision(keys.leader(), fence)];
            match lock(&client).txn(&fenced, &leftovers, &[]) {
                Ok(t) if t.succeeded => log::info!(
                    "cleared {} chunks of an entry the previous leader left unfinished",
                    leftovers.len()
                ),
                Ok(_) => return Err(TakeOver::Again("another server leads now".into())),
                Err(e) => return Err(TakeOver::Again(e.to_string())),
            }
        }
        // The log goes on from here: entries up to ours are in it, or were
        // trimmed once every live standby had them (then nothing follows
        // them yet).
        if seq > 0 && (last_in_log >= seq || trimmed == seq) {
            return Ok(seq);
        }
        // Nothing in etcd to follow (a new cluster, or a log behind this
        // disk, as after etcd was wiped): this server's journals become
        // the log's base.
        let entry = self.journals.encoded().map_err(|e| {
            TakeOver::Fatal(Error::io("cannot read the journals for the log's base", e))
        })?;
        let mut replica = Replica::new(client, keys, fence, seq, &self.cfg.state_path);
        let (write, mark) = replica.next(&entry);
        write
            .run()
            .map_err(|(_, e)| TakeOver::Again(e.to_string()))?;
        mark.run().map_err(|(_, e)| {
            TakeOver::Fatal(Error::io(
                "cannot note how far the journals follow the log",
                e,
            ))
        })?;
        log::info!(
            "wrote this server's journals to etcd as the log's base (entry {}, {} bytes of history)",
            replica.seq(),
            entry.history.len()
        );
        Ok(replica.seq())
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

    /// Reads answer from the journals here, `Cluster` from what this
    /// server knows; anything else is refused with the active server's
    /// name. Not while an entry is being written: the journal would look
    /// torn.
    fn control(&mut self, token: Token) {
        if self.in_flight {
            if !self.waiting.contains(&token) {
                self.waiting.push(token);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let (requests, closed) = match conn.read() {
            Inbound::Requests(r) => (r, false),
            Inbound::Closed(r) => (r, true),
            Inbound::Corrupt(_) => (Vec::new(), true),
        };
        let why = match self.ha.leader() {
            Some(l) => format!(
                "this server ({}) stands by; the active server is {l}: run the command there",
                self.ha.me
            ),
            None => format!(
                "this server ({}) stands by and no server is active yet (etcd: {}); try again in a few seconds",
                self.ha.me,
                self.ha.cfg.endpoints.join(",")
            ),
        };
        let mut answers = Vec::new();
        for req in requests {
            match req {
                // What a standby knows first hand.
                Request::Cluster => answers.push(Response::Cluster(self.ha.view())),
                req if crate::server::requests::history_reads(&req) => {
                    answers.push(self.replica_note());
                    answers.extend(self.read_replica(req));
                }
                _ => answers.push(Response::Rejected(why.clone())),
            }
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        for resp in &answers {
            let _ = conn.send(resp);
        }
        let failed = conn.flush().is_err();
        if closed || failed {
            if let Some(mut c) = self.conns.remove(&token) {
                let _ = self.base.poll.registry().deregister(&mut c.stream);
            }
        }
    }
}

impl Standby<'_> {
    /// Before an answer from the replica: whose it is, how far behind.
    fn replica_note(&self) -> Response {
        let view = self.ha.view();
        let top = view.servers.iter().map(|s| s.applied).max().unwrap_or(0);
        Response::Replica {
            this: self.ha.me.clone(),
            leader: self.ha.leader().map(str::to_owned),
            behind: top.saturating_sub(self.ha.record.applied),
        }
    }

    /// A read answered from the journals on this disk, as a restart would
    /// see them (nodes as last recorded, none of them connected here).
    fn read_replica(&mut self, req: Request) -> Vec<Response> {
        let cfg = self.cfg;
        let now = crate::server::cluster::Now::real();
        let (cluster, history) = match crate::server::restore(
            &cfg.state_path,
            cfg.heartbeat_ivl,
            (cfg.job_retention, cfg.job_retention_count),
            now,
        ) {
            Ok(r) => r,
            Err(e) => {
                return vec![Response::Rejected(format!(
                    "cannot read this standby's replica: {e}"
                ))]
            }
        };
        let mut core = crate::server::core::Core::new(
            cluster,
            crate::server::persist::Persist::new(history, None),
            crate::server::core::Auth::Off,
            cfg.heartbeat_ivl,
            (cfg.job_retention, cfg.job_retention_count),
            now,
        );
        let token = Token(usize::MAX);
        core.requests(token, vec![req]);
        let mut answers = Vec::new();
        loop {
            core.carry_out_now();
            let outs = core.take_out();
            if outs.is_empty() {
                return answers;
            }
            for o in outs {
                match o {
                    crate::server::core::Out::Note { resp, .. } => answers.push(resp),
                    crate::server::core::Out::Io(task) => {
                        if let crate::server::io::IoDone::JobInfo { detail, .. } = task.run() {
                            answers.push(Response::Job(*detail));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

enum TakeOver {
    /// etcd could not be asked, or another server won meanwhile.
    Again(String),
    /// The log misses entries this server needs: it cannot lead.
    Missing(Gap),
    Fatal(Error),
}

fn fatal(gap: Gap) -> TakeOver {
    TakeOver::Fatal(Error::Config(format!(
        "cannot take over: {gap}; restart this server with an empty --state-path (it then starts from the log's base)"
    )))
}
