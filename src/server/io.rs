//! The server's I/O thread's work: what the core hands it (`IoTask`) and
//! what comes back to the loop (`IoDone`): a journal commit's result, a
//! job's detail with its outputs read back, a chunk of an ADD source. Its
//! own module, so that the parts that send work there (storage, fetch) do
//! not depend on each other.

use mio::Token;
use uuid::Uuid;

use super::persist;
use crate::dsl::SourceFile;
use crate::journal::{Reader, Span};
use crate::wire;

/// Blocking work the core asks for.
pub enum IoTask {
    /// Write and sync the journals.
    Commit(Vec<persist::Op>),
    /// Read a job's outputs from the journal, for a control connection.
    JobInfo {
        token: Token,
        reader: Reader,
        detail: Box<wire::JobDetail>,
        reads: Vec<(usize, Span)>,
    },
    /// Read a chunk of an ADD source for a node, within its room on the
    /// transfer port (the loop checks it).
    Chunk {
        read: ChunkRead,
        src: SourceFile,
        len: u32,
    },
}

impl IoTask {
    /// Do it, on the I/O thread.
    pub fn run(self) -> IoDone {
        match self {
            IoTask::Commit(ops) => IoDone::Commit(persist::run_ops(ops)),
            IoTask::JobInfo {
                token,
                reader,
                detail,
                reads,
            } => IoDone::JobInfo {
                token,
                detail: super::storage::read_outputs(&reader, detail, &reads),
            },
            IoTask::Chunk { mut read, src, len } => {
                read.data = super::files::read_chunk(&src, read.offset, len);
                IoDone::Chunk(read)
            }
        }
    }
}

/// What the I/O thread hands back.
pub enum IoDone {
    Commit(persist::CommitResult),
    /// A job's detail with the outputs read from the journal.
    JobInfo {
        token: Token,
        detail: Box<wire::JobDetail>,
    },
    /// A chunk of an ADD source read for a node.
    Chunk(ChunkRead),
}

/// A chunk of an ADD source read for a node (on its transfer routing id),
/// or why it cannot be had.
pub struct ChunkRead {
    pub rid: Vec<u8>,
    pub node: String,
    pub job_id: Uuid,
    pub file: u32,
    pub offset: u64,
    pub data: Result<Vec<u8>, String>,
}
