//! PID 1 in a container. The kernel hands every orphaned process in a PID
//! namespace to its PID 1, and only PID 1 can reap them: a job that leaves
//! a background process behind would leave a zombie per run in a client
//! started as a container's command. A daemon that finds itself PID 1
//! forks before anything else (no thread exists yet): the child goes on as
//! the daemon, and this process stays a minimal init, as tini and
//! catatonit are: it passes on the signals an engine or an operator sends
//! (TERM, INT, HUP, QUIT, USR1, USR2), reaps every process that ends, and
//! exits as the daemon did (128 + N when signal N ended it).

/// Signals passed on to the daemon.
const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// What `supervise_if_pid1` did, for the daemon's log.
#[derive(Debug, PartialEq, Eq)]
pub enum Init {
    /// Not PID 1: nothing to do.
    NotPid1,
    /// This process is the daemon; its parent (PID 1) forwards and reaps.
    Supervised,
    /// PID 1, but the fork failed: the daemon runs as PID 1 and orphans
    /// it does not know stay zombies.
    Alone(String),
}

impl Init {
    /// Say what happened, once the log is set up.
    pub fn log(&self) {
        match self {
            Init::NotPid1 => {}
            Init::Supervised => log::info!(
                "started as PID 1 (a container's command): PID 1 stays a minimal init that \
                 passes signals on and reaps orphaned processes; this daemon is its child"
            ),
            Init::Alone(e) => log::warn!(
                "started as PID 1 and cannot fork an init ({e}): processes that jobs leave \
                 behind stay zombies; run the container with --init"
            ),
        }
    }
}

/// If this process is PID 1, become the init described above; returns
/// only in the daemon. Call before any thread is started.
pub fn supervise_if_pid1() -> Init {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        return Init::NotPid1;
    }
    // SAFETY: the sigset is initialised by sigemptyset before use; the
    // masks are this thread's (the only one); fork in a process without
    // other threads leaves the child free to do anything.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *sig);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        match libc::fork() {
            -1 => {
                let e = std::io::Error::last_os_error();
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                Init::Alone(e.to_string())
            }
            0 => {
                libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                Init::Supervised
            }
            daemon => std::process::exit(supervise(daemon, &set)),
        }
    }
}

/// PID 1's loop: pass signals on to `daemon`, reap whatever ends; the
/// daemon's exit status once it ends.
fn supervise(daemon: libc::pid_t, set: &libc::sigset_t) -> i32 {
    loop {
        // SAFETY: siginfo_t is plain data, filled by sigwaitinfo.
        let sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(set, &mut info)
        };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: kill with a pid we forked and a valid signal.
            unsafe { libc::kill(daemon, sig) };
            continue;
        }
        // SIGCHLD (several may have merged into one), or an interruption:
        // reap everything that has ended.
        loop {
            let mut status = 0;
            // SAFETY: waitpid with WNOHANG never blocks.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == daemon {
                return if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
            }
        }
    }
}
