//! Test-only: the unit-test binary's global allocator, which watches what
//! the code under test allocates, per thread (tests run in parallel and
//! must not count each other):
//! - the heap bytes live, rounded up as glibc's malloc does (a 16-byte
//!   aligned chunk with an 8-byte header, 32 bytes at least), so a test can
//!   measure what a structure costs the server's resident memory;
//! - the largest single allocation made while asked, so the fuzz tests can
//!   check that no decoder allocates far more than the message in front
//!   of it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The counting allocator (wraps `System`).
pub struct Counting;

/// What glibc's malloc takes for a request of `size` bytes.
fn chunk(size: usize) -> isize {
    ((size + 8 + 15) & !15).max(32) as isize
}

// The bookkeeping only touches thread-locals that never allocate; during
// a thread's teardown they may be gone, and there is nothing to count.
fn add(n: isize) {
    let _ = LIVE.try_with(|c| c.set(c.get() + n));
}

fn note(size: usize) {
    let _ = WATCHING.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is passed to `System` unchanged; only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        let p = System.alloc(layout);
        if !p.is_null() {
            add(chunk(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            add(chunk(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        add(-chunk(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            add(chunk(new_size) - chunk(layout.size()));
        }
        p
    }
}

/// Heap bytes this thread has allocated and not freed.
pub fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Run `f`; its result and the largest allocation it made.
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    WATCHING.with(|w| w.set(true));
    let r = f();
    WATCHING.with(|w| w.set(false));
    (r, LARGEST.with(Cell::get))
}
