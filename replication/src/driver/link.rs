//! The broker-to-broker connections of one shard: a listener that reads frames from
//! peers, and one outbound connection per peer that writes this shard's frames to it.
//!
//! Each direction is its own TCP connection: a peer's frames arrive on the connection it
//! opened, and ours leave on the one we opened, so neither side ever waits for the other
//! to read before it can write. An outbound frame is its header (`wire::encode_head`)
//! followed by its record bytes, which go from the segment files to the socket with
//! `sendfile` (or from the tail cache when the bytes are not durable yet).
//!
//! Bounds: at most `LINK_FRAMES_MAX` frames wait per peer; past that a frame is dropped,
//! which replication tolerates (a fetch unanswered is sent again after its timeout). An
//! inbound frame over `wire::FRAME_BYTES_MAX` closes the connection before anything is
//! allocated. A lost connection is dialled again after `RECONNECT_BACKOFF`; frames queued
//! meanwhile wait, and those being written when it broke are lost.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use spate_engine::file::send_file;
use spate_engine::ReadChunk;

use super::Shared;
use crate::replica::ReplicaId;
use crate::wire::FRAME_BYTES_MAX;

/// Frames waiting per peer.
pub const LINK_FRAMES_MAX: usize = 256;
/// A frame not written within this long (the peer stopped reading: it hangs, or the
/// connection leads nowhere) drops the connection, which is then dialled again.
const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before dialling a peer again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// A frame ready to write: prefix and header, then the record chunks.
#[derive(Debug)]
pub struct OutFrame {
    pub head: Vec<u8>,
    pub chunks: Vec<ReadChunk>,
}

/// The outbound queues, one per peer.
#[derive(Debug)]
pub struct Links {
    queues: BTreeMap<ReplicaId, LocalSender<OutFrame>>,
    /// The receiving ends, until `start` hands them to the writer tasks.
    pending: RefCell<Vec<(ReplicaId, SocketAddr, LocalReceiver<OutFrame>)>>,
}

impl Links {
    pub fn new(peers: &BTreeMap<ReplicaId, SocketAddr>) -> Links {
        let mut queues = BTreeMap::new();
        let mut pending = Vec::new();
        for (&peer, &addr) in peers {
            let (tx, rx) = local_channel::new_bounded(LINK_FRAMES_MAX);
            queues.insert(peer, tx);
            pending.push((peer, addr, rx));
        }
        Links {
            queues,
            pending: RefCell::new(pending),
        }
    }

    /// Starts one writer task per peer.
    pub fn start(&self, shared: &Rc<Shared>) {
        for (peer, addr, rx) in self.pending.borrow_mut().drain(..) {
            shared.spawn(write_loop(peer, addr, rx));
        }
    }

    /// Queues a frame for `to`; drops it when the queue is full or the peer unknown.
    pub fn send(&self, to: ReplicaId, frame: OutFrame) {
        match self.queues.get(&to) {
            Some(queue) => {
                if queue.try_send(frame).is_err() {
                    tracing::debug!(
                        peer = to.0,
                        "replication frame dropped: the peer's queue is full"
                    );
                }
            }
            None => tracing::warn!(
                peer = to.0,
                "replication frame for a broker that is not a peer"
            ),
        }
    }
}

async fn write_loop(peer: ReplicaId, addr: SocketAddr, frames: LocalReceiver<OutFrame>) {
    loop {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = peer.0, %addr, error = %e, "cannot reach peer; retrying");
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tracing::debug!(peer = peer.0, %addr, "connected to peer");
        loop {
            let Some(frame) = frames.recv().await else {
                return;
            };
            let written = futures::future::select(
                Box::pin(write_frame(&mut stream, &frame)),
                Box::pin(glommio::timer::sleep(LINK_WRITE_TIMEOUT)),
            )
            .await;
            let outcome = match written {
                futures::future::Either::Left((outcome, _)) => outcome,
                futures::future::Either::Right(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer has not read a frame for too long",
                )),
            };
            if let Err(e) = outcome {
                tracing::info!(peer = peer.0, %addr, error = %e, "lost the connection to a peer");
                break;
            }
        }
        glommio::timer::sleep(RECONNECT_BACKOFF).await;
    }
}

async fn write_frame(stream: &mut TcpStream, frame: &OutFrame) -> std::io::Result<()> {
    stream.write_all(&frame.head).await?;
    for chunk in &frame.chunks {
        match chunk {
            ReadChunk::Cached(bytes) => stream.write_all(bytes).await?,
            ReadChunk::File {
                file,
                position,
                len,
            } => {
                stream.flush().await?;
                send_file(stream.as_raw_fd(), file, *position, *len).await?;
            }
        }
    }
    stream.flush().await
}

/// Accepts peers' connections and hands each frame read to the shard's replicas.
pub async fn accept_loop(listener: TcpListener, shared: Rc<Shared>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                shared.spawn(read_loop(stream, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection failed");
                glommio::timer::sleep(RECONNECT_BACKOFF).await;
            }
        }
        if shared.stopped.get() {
            return;
        }
    }
}

async fn read_loop(mut stream: TcpStream, shared: Rc<Shared>) {
    let peer = stream.peer_addr().ok();
    loop {
        match read_frame(&mut stream).await {
            Ok(Some(frame)) => shared.deliver(frame).await,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(?peer, error = %e, "closing a peer connection after a bad frame");
                return;
            }
        }
        if shared.stopped.get() {
            return;
        }
    }
}

/// One whole frame, prefix included; `None` at a clean end of stream.
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Option<Bytes>> {
    let mut prefix = [0u8; 4];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, above {FRAME_BYTES_MAX}"),
        ));
    }
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&prefix);
    stream.read_exact(&mut frame[4..]).await?;
    Ok(Some(Bytes::from(frame)))
}
