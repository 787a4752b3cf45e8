//! What a waiting CLI says when the operator presses Ctrl-C: the work it
//! waited for goes on on the server, and how to follow it again. The
//! message is made before the wait; the SIGINT handler only writes it and
//! exits (both async-signal-safe), so the notice cannot itself hang.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

static MESSAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static LEN: AtomicUsize = AtomicUsize::new(0);

/// The exit status after SIGINT, as shells report it.
const INTERRUPTED: i32 = 130;

/// From now on, Ctrl-C says that `what` (`job ID`, `run ID`) goes on and
/// how to watch it, and exits 130.
pub fn on_ctrl_c_say_the_work_goes_on(what: &str, id: &str) {
    let text = format!(
        "\ndirector: stopped waiting; the {what} goes on on the server: follow it with `director manage --watch {id}`, see it with `director manage --job-info {id}`\n"
    );
    // Kept for the life of the process: the handler may read it any time.
    let text: &'static mut [u8] = Box::leak(text.into_bytes().into_boxed_slice());
    LEN.store(text.len(), Ordering::SeqCst);
    MESSAGE.store(text.as_mut_ptr(), Ordering::SeqCst);
    // SAFETY: a plain C handler that only calls async-signal-safe
    // functions; the sigaction struct is fully initialized.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

extern "C" fn handler(_: libc::c_int) {
    let ptr = MESSAGE.load(Ordering::SeqCst);
    let len = LEN.load(Ordering::SeqCst);
    if !ptr.is_null() {
        // SAFETY: ptr/len describe the leaked message, never freed.
        unsafe {
            libc::write(libc::STDERR_FILENO, ptr as *const libc::c_void, len);
        }
    }
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(INTERRUPTED) };
}
