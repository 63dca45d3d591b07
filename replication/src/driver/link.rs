//! The broker-to-broker connections of one shard: a listener that reads frames from
//! peers, and one outbound connection per peer that writes this shard's frames to it.
//!
//! Each direction is its own TCP connection: a peer's frames arrive on the connection it
//! opened, and ours leave on the one we opened, so neither side ever waits for the other
//! to read before it can write. An outbound frame is its header (`wire::encode_head`)
//! followed by its record bytes, which go from the segment files to the socket with
//! `sendfile` (or from the tail cache when the bytes are not durable yet).
//!
//! Bounds: at most `PEER_CONNECTIONS_MAX` inbound connections per shard, each holding at
//! most one frame; at most `LINK_FRAMES_MAX` frames wait per peer; past that a frame is dropped,
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
use crate::limits::{INBOUND_FRAMES_MAX, LINK_FRAMES_MAX, PEER_CONNECTIONS_MAX, READ_STEP_BYTES};
use crate::replica::ReplicaId;
use crate::wire::FRAME_BYTES_MAX;

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

/// Accepts peers' connections and hands each frame read to the shard's replicas. At
/// most `PEER_CONNECTIONS_MAX` are read at once: each may hold a frame of up to
/// `FRAME_BYTES_MAX` in memory, and anyone can connect to the port.
pub async fn accept_loop(listener: TcpListener, shared: Rc<Shared>) {
    let open = Rc::new(glommio::sync::Semaphore::new(PEER_CONNECTIONS_MAX as u64));
    loop {
        match listener.accept().await {
            Ok(stream) => match open.clone().try_acquire_static_permit(1) {
                Ok(permit) => {
                    let shared2 = shared.clone();
                    shared.spawn(async move {
                        read_loop(stream, shared2).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::warn!(
                        max = PEER_CONNECTIONS_MAX,
                        "refused a peer connection: too many open"
                    );
                    drop(stream);
                }
            },
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

/// Reads frames from one peer connection (a socket task, cancelled by `stop`) and
/// hands them to a delivery task that steps the replicas, which is never cancelled: it
/// ends after the frame under way once the reader is gone.
async fn read_loop(mut stream: TcpStream, shared: Rc<Shared>) {
    let peer = stream.peer_addr().ok();
    let (frames, inbox) = local_channel::new_bounded::<Bytes>(INBOUND_FRAMES_MAX);
    let delivering = shared.clone();
    glommio::spawn_local(async move {
        while let Some(frame) = inbox.recv().await {
            if delivering.stopped.get() {
                return;
            }
            delivering.deliver(frame).await;
        }
    })
    .detach();
    loop {
        match read_frame(&mut stream).await {
            Ok(Some(frame)) => {
                if frames.send(frame).await.is_err() {
                    return;
                }
            }
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
    // The buffer grows as bytes arrive, so a peer announcing a large frame and
    // sending little holds little memory.
    let mut frame = Vec::with_capacity(4 + len.min(READ_STEP_BYTES));
    frame.extend_from_slice(&prefix);
    while frame.len() < 4 + len {
        let at = frame.len();
        let step = (4 + len - at).min(READ_STEP_BYTES);
        frame.resize(at + step, 0);
        stream.read_exact(&mut frame[at..]).await?;
    }
    Ok(Some(Bytes::from(frame)))
}
