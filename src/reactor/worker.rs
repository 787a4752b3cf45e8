//! The loop's one helper thread, for system calls that may block: fsync,
//! journal rewrites, file reads, user and group lookups. It holds no
//! protocol state: the loop hands it a closure, it runs closures one at a
//! time in the order given, and each result comes back through a channel
//! with a `mio::Waker` poke, as Redis does with its background I/O threads.
//! FIFO order is a promise the journals rely on (a sync handed over before
//! a rewrite is done before it).

use std::io;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Registry, Token, Waker};

type Task<R> = Box<dyn FnOnce() -> R + Send>;

/// A helper thread returning `R`s to the loop.
pub struct Worker<R: Send + 'static> {
    tasks: Option<Sender<Task<R>>>,
    results: Receiver<R>,
    thread: Option<JoinHandle<()>>,
    /// Tasks handed over whose results the loop has not taken yet.
    pending: usize,
}

impl<R: Send + 'static> Worker<R> {
    /// Start the thread; its results wake `registry`'s poll with `token`.
    pub fn start(name: &str, registry: &Registry, token: Token) -> io::Result<Worker<R>> {
        Worker::with_waker(name, Arc::new(Waker::new(registry, token)?))
    }

    /// Start the thread; its results poke `waker` (mio allows one waker
    /// per poll: helpers of one loop share it).
    pub fn with_waker(name: &str, waker: Arc<Waker>) -> io::Result<Worker<R>> {
        let (task_tx, task_rx) = mpsc::channel::<Task<R>>();
        let (result_tx, result_rx) = mpsc::channel::<R>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for task in task_rx {
                    if result_tx.send(task()).is_err() {
                        return; // the loop is gone
                    }
                    // A failed wake only delays the result to the next pass.
                    let _ = waker.wake();
                }
            })?;
        Ok(Worker {
            tasks: Some(task_tx),
            results: result_rx,
            thread: Some(thread),
            pending: 0,
        })
    }

    /// Run `task` on the thread, after every task handed over before.
    pub fn submit(&mut self, task: impl FnOnce() -> R + Send + 'static) {
        let Some(tx) = &self.tasks else {
            return;
        };
        if tx.send(Box::new(task)).is_ok() {
            self.pending += 1;
        } else {
            // Only if the thread panicked: a bug in a task, not input.
            log::error!("the I/O worker thread is gone; a task was dropped");
        }
    }

    /// The results ready now, in the order their tasks were given.
    pub fn drain(&mut self) -> Vec<R> {
        let mut out = Vec::new();
        loop {
            match self.results.try_recv() {
                Ok(r) => {
                    self.pending -= 1;
                    out.push(r);
                }
                Err(TryRecvError::Empty) => return out,
                Err(TryRecvError::Disconnected) => {
                    if self.pending > 0 {
                        log::error!("the I/O worker thread is gone");
                        self.pending = 0;
                    }
                    return out;
                }
            }
        }
    }

    /// Block until every task handed over has run: for shutdown only.
    pub fn finish(&mut self) -> Vec<R> {
        let mut out = Vec::new();
        while self.pending > 0 {
            match self.results.recv() {
                Ok(r) => {
                    self.pending -= 1;
                    out.push(r);
                }
                Err(_) => {
                    self.pending = 0;
                }
            }
        }
        out
    }
}

impl<R: Send + 'static> Drop for Worker<R> {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current task.
        self.tasks = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::Duration;

    #[test]
    fn results_come_back_in_order_and_wake_the_loop() {
        let mut poll = Poll::new().unwrap();
        let mut w: Worker<u32> = Worker::start("test-io", poll.registry(), Token(7)).unwrap();
        for i in 0..100 {
            w.submit(move || {
                if i == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                i
            });
        }
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        while got.len() < 100 {
            poll.poll(&mut events, Some(Duration::from_secs(10)))
                .unwrap();
            assert!(events.iter().any(|e| e.token() == Token(7)));
            got.extend(w.drain());
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(w.pending, 0);
        w.submit(|| 5);
        assert_eq!(w.finish(), vec![5]);
    }
}
