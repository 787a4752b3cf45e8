//! A running command: `/bin/sh -c` in its own process group, its stdout and
//! stderr pipes and its pidfd registered in the loop.
//!
//! Exit is learnt from the pidfd (Linux >= 5.3) becoming readable, then
//! `try_wait`; where pidfds are missing the owner sweeps `try_reap` on a short
//! timer. EOF on the pipes is not exit: a background grandchild may hold them
//! open, so after reaping we drain what is buffered and stop reading.
//! Nothing here blocks, except `Drop` of a child that was never reaped, which
//! SIGKILLs the group first so the wait is immediate.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::Instant;

use mio::unix::pipe::Receiver;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::TokenCounter;
use crate::wire::{Exit, OUTPUT_CAP};

/// What one final drain after exit reads at most per pipe: a grandchild
/// still writing must not keep us here.
const FINAL_DRAIN_CAP: usize = 4 * OUTPUT_CAP;

/// Bytes kept from one output stream, up to `OUTPUT_CAP`; the rest is counted.
#[derive(Default)]
pub struct Capture {
    pub bytes: Vec<u8>,
    pub dropped: u64,
    /// For a live job: what was read and not yet sent on, up to
    /// `LIVE_BUFFER` (the rest is counted in `live_dropped`).
    live: Option<Vec<u8>>,
    live_dropped: u64,
}

/// What a live stream holds for the next sends at most: output faster than
/// the sends' rate is dropped from the live view, oldest first (never from
/// the capture).
const LIVE_BUFFER: usize = 64 << 10;

impl Capture {
    fn take(&mut self, data: &[u8]) {
        let room = OUTPUT_CAP.saturating_sub(self.bytes.len());
        let keep = room.min(data.len());
        self.bytes.extend_from_slice(&data[..keep]);
        self.dropped += (data.len() - keep) as u64;
        // A live view keeps the newest output: the oldest goes first.
        if let Some(live) = &mut self.live {
            let skip = data.len().saturating_sub(LIVE_BUFFER);
            live.extend_from_slice(&data[skip..]);
            let excess = live.len().saturating_sub(LIVE_BUFFER);
            live.drain(..excess);
            self.live_dropped += (skip + excess) as u64;
        }
    }

    /// Up to `max` bytes of live output not yet sent, and how many bytes
    /// before them were dropped; `None` if nothing is waiting.
    fn take_live(&mut self, max: usize) -> Option<(Vec<u8>, u64)> {
        let live = self.live.as_mut()?;
        if live.is_empty() && self.live_dropped == 0 {
            return None;
        }
        let n = live.len().min(max);
        let data: Vec<u8> = live.drain(..n).collect();
        Some((data, std::mem::take(&mut self.live_dropped)))
    }
}

/// Which of a child's sources an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Stdout,
    Stderr,
    Exit,
}

/// How a reaped child ended, with everything it printed.
pub struct Ended {
    pub exit: Exit,
    pub out: Capture,
    pub err: Capture,
    pub exec_secs: f64,
}

/// A spawned command.
pub struct Child {
    proc: std::process::Child,
    stdout: Option<(Receiver, Token)>,
    stderr: Option<(Receiver, Token)>,
    pidfd: Option<(OwnedFd, Token)>,
    out: Capture,
    err: Capture,
    started: Instant,
    /// Set once reaped.
    ended: Option<(Exit, f64)>,
}

impl Child {
    /// Start `/bin/sh -c command` in a new process group and register its
    /// pipes and pidfd. A `live` child also keeps what it reads for
    /// `take_live`.
    pub fn spawn(
        command: &str,
        env: &BTreeMap<String, String>,
        live: bool,
        registry: &Registry,
        tokens: &mut TokenCounter,
    ) -> io::Result<Child> {
        // No pre_exec: it would cost std's posix_spawn fast path.
        let mut proc = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let (stdout, stderr) = (proc.stdout.take(), proc.stderr.take());
        let mut child = Child {
            proc,
            stdout: None,
            stderr: None,
            pidfd: None,
            out: Capture::default(),
            err: Capture::default(),
            started: Instant::now(),
            ended: None,
        };
        if live {
            child.out.live = Some(Vec::new());
            child.err.live = Some(Vec::new());
        }
        // From here an error drops `child`, which kills and reaps it.
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return Err(io::Error::other("child has no output pipes"));
        };
        child.stdout = Some(register_pipe(pipe_from(stdout)?, registry, tokens)?);
        child.stderr = Some(register_pipe(pipe_from(stderr)?, registry, tokens)?);
        if let Some(fd) = open_pidfd(child.proc.id()) {
            let token = tokens.next();
            match registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE) {
                Ok(()) => child.pidfd = Some((fd, token)),
                Err(e) => log::warn!(
                    "cannot watch pid {} by pidfd ({e}); polling for its exit",
                    child.pid()
                ),
            }
        }
        Ok(child)
    }

    /// The process id, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Whether exit will be signalled by a pidfd; if not, sweep `try_reap`.
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// Which source `token` belongs to, if it is this child's.
    pub fn source(&self, token: Token) -> Option<Source> {
        if self.stdout.as_ref().is_some_and(|(_, t)| *t == token) {
            Some(Source::Stdout)
        } else if self.stderr.as_ref().is_some_and(|(_, t)| *t == token) {
            Some(Source::Stderr)
        } else if self.pidfd.as_ref().is_some_and(|(_, t)| *t == token) {
            Some(Source::Exit)
        } else {
            None
        }
    }

    /// Read a pipe until it would block; at EOF or error, stop watching it.
    pub fn read(&mut self, source: Source, registry: &Registry) {
        let (slot, capture) = match source {
            Source::Stdout => (&mut self.stdout, &mut self.out),
            Source::Stderr => (&mut self.stderr, &mut self.err),
            Source::Exit => return,
        };
        if drain(slot, capture, usize::MAX) {
            close_pipe(slot, registry);
        }
    }

    /// Reap the child if it has exited: take the output still buffered and
    /// stop watching its sources. Returns true once it is reaped.
    pub fn try_reap(&mut self, registry: &Registry) -> io::Result<bool> {
        if self.ended.is_some() {
            return Ok(true);
        }
        let Some(status) = self.proc.try_wait()? else {
            return Ok(false);
        };
        let exec_secs = self.started.elapsed().as_secs_f64();
        let exit = match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Error(format!("unknown exit status {status}")),
        };
        drain(&mut self.stdout, &mut self.out, FINAL_DRAIN_CAP);
        drain(&mut self.stderr, &mut self.err, FINAL_DRAIN_CAP);
        close_pipe(&mut self.stdout, registry);
        close_pipe(&mut self.stderr, registry);
        if let Some((fd, _)) = self.pidfd.take() {
            let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        self.ended = Some((exit, exec_secs));
        Ok(true)
    }

    /// Signal the whole process group, while the child is not yet reaped (its
    /// group id cannot have been reused then).
    pub fn signal_group(&self, sig: i32) {
        if self.ended.is_none() {
            // SAFETY: plain syscall; a negative pid addresses the group.
            unsafe { libc::kill(-(self.pid() as i32), sig) };
        }
    }

    /// From now on, keep what is read for `take_live` too (someone follows
    /// the job since it started).
    pub fn go_live(&mut self) {
        for c in [&mut self.out, &mut self.err] {
            c.live.get_or_insert_with(Vec::new);
        }
    }

    /// Live output waiting to be sent: up to `max` bytes of `stream`, with
    /// the count of bytes dropped before it.
    pub fn take_live(&mut self, stream: crate::wire::Stream, max: usize) -> Option<(Vec<u8>, u64)> {
        match stream {
            crate::wire::Stream::Stdout => self.out.take_live(max),
            crate::wire::Stream::Stderr => self.err.take_live(max),
        }
    }

    /// Is live output waiting to be sent?
    pub fn has_live(&self) -> bool {
        [&self.out, &self.err]
            .iter()
            .any(|c| c.live.as_ref().is_some_and(|l| !l.is_empty()) || c.live_dropped > 0)
    }

    /// The result of a reaped child; `None` if it has not been reaped.
    pub fn into_ended(mut self) -> Option<Ended> {
        // Cloned, not taken: `ended` stays set, so Drop knows it was reaped.
        let (exit, exec_secs) = self.ended.clone()?;
        Some(Ended {
            exit,
            out: std::mem::take(&mut self.out),
            err: std::mem::take(&mut self.err),
            exec_secs,
        })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.ended.is_none() {
            // Only on error and shutdown paths. SIGKILL usually ends it at
            // once, but a process in uninterruptible sleep (a hung NFS
            // read) does not die until its I/O returns: never wait for it
            // here; `reap_orphans` collects it later. (Dropping a
            // `std::process::Child` neither waits nor kills.)
            self.signal_group(libc::SIGKILL);
            if !matches!(self.proc.try_wait(), Ok(Some(_))) {
                orphans().push(self.proc.id() as libc::pid_t);
            }
        }
    }
}

/// Killed children not reaped yet, like tokio's orphan queue.
fn orphans() -> std::sync::MutexGuard<'static, Vec<libc::pid_t>> {
    static ORPHANS: std::sync::Mutex<Vec<libc::pid_t>> = std::sync::Mutex::new(Vec::new());
    ORPHANS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reap the killed children that have exited since; how many are left.
pub fn reap_orphans() -> usize {
    let mut list = orphans();
    list.retain(|pid| {
        let mut status = 0;
        // SAFETY: waitpid on our own child with WNOHANG never blocks.
        let r = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
        r == 0 // still running; -1 (already gone) or the pid: done
    });
    list.len()
}

fn pipe_from<T: Into<Receiver>>(p: T) -> io::Result<Receiver> {
    let rx: Receiver = p.into();
    // mio does not make a std pipe nonblocking for us.
    rx.set_nonblocking(true)?;
    Ok(rx)
}

fn register_pipe(
    mut rx: Receiver,
    registry: &Registry,
    tokens: &mut TokenCounter,
) -> io::Result<(Receiver, Token)> {
    let token = tokens.next();
    registry.register(&mut rx, token, Interest::READABLE)?;
    Ok((rx, token))
}

fn close_pipe(slot: &mut Option<(Receiver, Token)>, registry: &Registry) {
    if let Some((mut rx, _)) = slot.take() {
        let _ = registry.deregister(&mut rx);
    }
}

/// Read until `WouldBlock` or `limit` bytes. Returns true at EOF or on error.
fn drain(slot: &mut Option<(Receiver, Token)>, capture: &mut Capture, limit: usize) -> bool {
    let Some((rx, _)) = slot.as_mut() else {
        return false;
    };
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0usize;
    while total < limit {
        match rx.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                capture.take(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
    false
}

/// `pidfd_open(pid, 0)`; `None` where the kernel lacks it (before 5.3).
fn open_pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success the fd is ours to own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(cmd: &str) -> Ended {
        let mut poll = mio::Poll::new().unwrap();
        let mut tokens = TokenCounter::new(10);
        let mut child =
            Child::spawn(cmd, &BTreeMap::new(), false, poll.registry(), &mut tokens).unwrap();
        let mut events = mio::Events::with_capacity(8);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !child.try_reap(poll.registry()).unwrap() {
            assert!(Instant::now() < deadline, "child did not exit");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for ev in events.iter() {
                if let Some(src) = child.source(ev.token()) {
                    child.read(src, poll.registry());
                }
            }
        }
        child.into_ended().unwrap()
    }

    #[test]
    fn a_dropped_running_child_is_killed_and_reaped_later() {
        let poll = mio::Poll::new().unwrap();
        let mut tokens = TokenCounter::new(10);
        let child = Child::spawn(
            "exec sleep 60",
            &BTreeMap::new(),
            false,
            poll.registry(),
            &mut tokens,
        )
        .unwrap();
        let pid = child.pid() as libc::pid_t;
        drop(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = reap_orphans();
            // SAFETY: signal 0 only asks whether the pid exists.
            let exists = unsafe { libc::kill(pid, 0) } == 0;
            if left == 0 && !exists {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the killed child was never reaped"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_live_stream_keeps_its_newest_output_and_counts_the_rest() {
        let mut c = Capture {
            live: Some(Vec::new()),
            ..Capture::default()
        };
        for _ in 0..10 {
            c.take(&[b'a'; 16 << 10]);
        }
        c.take(b"end\n");
        let (data, dropped) = c.take_live(usize::MAX).unwrap();
        assert_eq!(data.len(), LIVE_BUFFER);
        assert!(data.ends_with(b"aaaend\n"));
        assert_eq!(dropped as usize, 10 * (16 << 10) + 4 - LIVE_BUFFER);
        assert_eq!(
            c.bytes.len(),
            10 * (16 << 10) + 4,
            "the capture keeps it all"
        );
        assert!(c.take_live(usize::MAX).is_none());
    }

    #[test]
    fn captures_output_and_exit() {
        let e = run("echo out; echo err >&2; exit 3");
        assert_eq!(e.exit, Exit::Code(3));
        assert_eq!(e.out.bytes, b"out\n");
        assert_eq!(e.err.bytes, b"err\n");
    }

    #[test]
    fn output_is_capped() {
        let e = run("head -c 3000000 /dev/zero");
        assert_eq!(e.out.bytes.len(), OUTPUT_CAP);
        assert_eq!(e.out.dropped, 3_000_000 - OUTPUT_CAP as u64);
    }

    /// A background grandchild holding stdout open does not hide the exit:
    /// the exit is seen while the grandchild still runs (and holds the
    /// pipe), not when it ends.
    #[test]
    fn exit_is_seen_while_a_grandchild_holds_the_pipe() {
        let e = run("sleep 120 & echo $!");
        assert_eq!(e.exit, Exit::Code(0));
        let pid: i32 = String::from_utf8_lossy(&e.out.bytes)
            .trim()
            .parse()
            .expect("the grandchild's pid");
        // SAFETY: kill with signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        // SAFETY: ends the grandchild this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(alive, "the exit was seen only once the grandchild was gone");
    }

    #[test]
    fn signal_exit() {
        let e = run("kill -9 $$");
        assert_eq!(e.exit, Exit::Signal(9));
    }
}
