//! Serving ADD sources to nodes: a fetch is checked by the core (only the
//! files of the node's own running ADD job), read on the I/O thread, and
//! the chunk sent by the loop when it is back, within the node's room on
//! the transfer port.

use uuid::Uuid;

use super::core::{Core, Out};
use super::io::{ChunkRead, IoTask};
use super::routes::Port;
use crate::wire::{self, ServerMsg};

impl Core {
    /// Serve one chunk of a job's file, or say why not. A node gets only the
    /// files of its own running ADD job, whatever it asks.
    pub(super) fn serve_fetch(
        &mut self,
        node: &str,
        rid: &[u8],
        job_id: Uuid,
        file: u32,
        offset: u64,
        len: u32,
    ) {
        let mut read = ChunkRead {
            rid: rid.to_vec(),
            node: node.to_owned(),
            job_id,
            file,
            offset,
            data: Ok(Vec::new()),
        };
        match self.cluster.source_for(node, &job_id, file) {
            Ok(src) => {
                let len = len.min(wire::CHUNK);
                self.out.push(Out::Io(IoTask::Chunk { read, src, len }));
            }
            Err(message) => {
                // Answered at once, as a failed read would be.
                read.data = Err(message);
                let (_, frames, warn) = chunk_frames(read);
                if let Some(why) = warn {
                    self.warn_node(node, &why);
                }
                self.out.push(Out::Zmq {
                    port: Port::Transfer,
                    frames,
                    about: super::core::About::Quiet,
                });
            }
        }
    }
}

/// The frames that answer a chunk read (the data, or why it cannot be
/// had), the node's name, and what to warn about it.
pub(super) fn chunk_frames(read: ChunkRead) -> (String, Vec<Vec<u8>>, Option<String>) {
    let ChunkRead {
        rid,
        node,
        job_id,
        file,
        offset,
        data,
    } = read;
    let mut frames = vec![rid];
    let mut warn = None;
    match data {
        Ok(data) => {
            log::debug!(
                "node={node} transfer -> Chunk job={job_id} file={file} offset={offset} len={}",
                data.len()
            );
            frames.extend(wire::encode_with_payload(
                &ServerMsg::Chunk {
                    job_id,
                    file,
                    offset,
                },
                data,
            ));
        }
        Err(message) => {
            warn = Some(format!(
                "refused a fetch of file {file} of job {job_id}: {message}"
            ));
            frames.extend(wire::encode(&ServerMsg::FetchError {
                job_id,
                file,
                message,
            }));
        }
    }
    (node, frames, warn)
}
