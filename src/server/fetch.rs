//! Serving ADD sources to nodes: a fetch is checked on the loop (only the
//! files of the node's own running ADD job), read on the I/O thread, and
//! the chunk sent when it is back, within the node's room on the transfer
//! port.

use std::time::Instant;

use uuid::Uuid;

use super::files;
use super::io::{ChunkRead, IoDone};
use super::routes::Port;
use super::{Server, TRANSFER_PORT};
use crate::wire::{self, ServerMsg};

impl Server {
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
        // Room first: a node that asks faster than it reads gets nothing,
        // and costs no disk read.
        if !self.ports[Port::Transfer as usize].has_room(rid) {
            self.peer_log.warn(
                node,
                Instant::now(),
                format_args!("asks for chunks faster than it reads them; dropped a fetch"),
            );
            return;
        }
        // Reads in flight count against the same per-node room.
        let reading = self.reads.get(rid).copied().unwrap_or(0);
        if reading >= TRANSFER_PORT.peer_cap {
            self.peer_log.warn(
                node,
                Instant::now(),
                format_args!("asks for chunks faster than they can be read; dropped a fetch"),
            );
            return;
        }
        let mut read = ChunkRead {
            rid: rid.to_vec(),
            node: node.to_owned(),
            job_id,
            file,
            offset,
            data: Ok(Vec::new()),
        };
        let src = match self.cluster.source_for(node, &job_id, file) {
            Ok(src) => src,
            Err(message) => {
                read.data = Err(message);
                self.chunk_read(read);
                return;
            }
        };
        *self.reads.entry(read.rid.clone()).or_insert(0) += 1;
        let len = len.min(wire::CHUNK);
        // The disk read happens on the I/O thread; the chunk goes out when
        // it is back.
        self.worker.submit(move || {
            read.data = files::read_chunk(&src, offset, len);
            IoDone::Chunk(read)
        });
    }

    /// Send a chunk read for a node, or why it cannot be had.
    pub(super) fn chunk_read(&mut self, read: ChunkRead) {
        let ChunkRead {
            rid,
            node,
            job_id,
            file,
            offset,
            data,
        } = read;
        let mut frames = vec![rid];
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
                let msg = format_args!("refused a fetch of file {file} of job {job_id}: {message}");
                self.peer_log.warn(&node, Instant::now(), msg);
                frames.extend(wire::encode(&ServerMsg::FetchError {
                    job_id,
                    file,
                    message,
                }));
            }
        }
        if !self.ports[Port::Transfer as usize].queue(frames) {
            self.peer_log.warn(
                &node,
                Instant::now(),
                format_args!("asks for chunks faster than it reads them; dropped one"),
            );
        }
    }
}
