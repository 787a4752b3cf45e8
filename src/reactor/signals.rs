//! SIGTERM and SIGINT through a self-pipe: the handler writes the signal
//! number into a nonblocking pipe whose read end is a source in the loop, so
//! shutdown is an ordinary event. A handler (not `SIG_IGN`) is used so that
//! children, after exec, start with default dispositions.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use mio::unix::pipe::{self, Receiver, Sender};
use mio::{Interest, Registry, Token};

static PIPE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) and errno access are async-signal-safe; errno is
        // restored so the interrupted code sees its own.
        unsafe {
            let saved = *libc::__errno_location();
            let byte = sig as u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *libc::__errno_location() = saved;
        }
    }
}

/// The read end of the signal pipe, registered in a loop.
pub struct Signals {
    rx: Receiver,
    // Kept open for the handler; never written from Rust.
    _tx: Sender,
}

impl Signals {
    /// Install handlers for SIGTERM and SIGINT and register the pipe.
    pub fn install(registry: &Registry, token: Token) -> io::Result<Signals> {
        let (tx, mut rx) = pipe::new()?;
        registry.register(&mut rx, token, Interest::READABLE)?;
        PIPE_FD.store(tx.as_raw_fd(), Ordering::Relaxed);
        for sig in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: the handler only does async-signal-safe work.
            let rc = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Signals { rx, _tx: tx })
    }

    /// The signals received since the last call.
    pub fn drain(&mut self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match self.rx.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend(buf[..n].iter().map(|b| i32::from(*b))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// A signal's name for log lines.
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}
