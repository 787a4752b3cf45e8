//! What the server's I/O thread hands back to the loop: a journal commit's
//! result, a job's detail with its outputs read back, a chunk of an ADD
//! source. Its own module, so that the loop's parts that send work there
//! (storage, fetch) do not depend on each other.

use mio::Token;
use uuid::Uuid;

use super::persist;
use crate::wire;

/// What the I/O thread hands back.
pub(super) enum IoDone {
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
pub(super) struct ChunkRead {
    pub rid: Vec<u8>,
    pub node: String,
    pub job_id: Uuid,
    pub file: u32,
    pub offset: u64,
    pub data: Result<Vec<u8>, String>,
}
