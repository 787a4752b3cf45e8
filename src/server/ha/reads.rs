//! What a standby answers reads from: a core restored from its journals
//! as a restart would see them (nodes as last recorded, none connected
//! here), read on the I/O thread between two writes, and kept while the
//! journals hold no later entry.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::server::cluster::Now;
use crate::server::core::{Auth, Core, Out};
use crate::server::io::IoDone;
use crate::server::persist::Persist;
use crate::wire::{Request, Response};

/// Where and how the journals are read.
#[derive(Clone)]
pub struct Source {
    dir: PathBuf,
    ivl: Duration,
    retention: (Duration, usize),
}

impl Source {
    pub fn new(cfg: &Config) -> Source {
        Source {
            dir: cfg.state_path.clone(),
            ivl: cfg.heartbeat_ivl,
            retention: (cfg.job_retention, cfg.job_retention_count),
        }
    }
}

pub struct Snapshot {
    /// The last entry of the log the journals held when read.
    pub seq: u64,
    core: Box<Core>,
}

impl Snapshot {
    /// Blocking: the whole history is read. Never beside a write to the
    /// journals (the I/O thread runs one task at a time).
    pub fn read(src: &Source, seq: u64) -> Result<Snapshot, String> {
        let now = Now::real();
        let (cluster, history) = crate::server::restore(&src.dir, src.ivl, src.retention, now)
            .map_err(|e| format!("cannot read this standby's replica: {e}"))?;
        let core = Core::new(
            cluster,
            Persist::new(history, None),
            Auth::Off,
            src.ivl,
            src.retention,
            now,
        );
        Ok(Snapshot {
            seq,
            core: Box::new(core),
        })
    }

    /// The answers to a read, as the active server would give them from
    /// the same history.
    pub fn answer(&mut self, req: Request) -> Vec<Response> {
        self.core.at(Now::real());
        let token = mio::Token(usize::MAX);
        self.core.requests(token, vec![req]);
        let mut answers = Vec::new();
        loop {
            self.core.carry_out_now();
            let outs = self.core.take_out();
            if outs.is_empty() {
                return answers;
            }
            for o in outs {
                match o {
                    Out::Note {
                        resp: Response::Nodes(mut nodes),
                        ..
                    } => {
                        // Heartbeats are not in the log: when each node
                        // was last heard of, and when it would expire, only
                        // the active server knows.
                        for n in &mut nodes {
                            n.last_heartbeat_ms = 0;
                            n.expires_ms = 0;
                        }
                        answers.push(Response::Nodes(nodes));
                    }
                    Out::Note { resp, .. } => answers.push(resp),
                    // A job's detail reads its outputs from the journal.
                    Out::Io(task) => {
                        if let IoDone::JobInfo { detail, .. } = task.run() {
                            answers.push(Response::Job(*detail));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
