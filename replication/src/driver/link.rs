//! The broker-to-broker connections of one shard: a listener that reads frames from
//! peers, and one outbound connection per peer that writes this shard's frames to it.
//! Every outbound connection starts with a `Hello` frame naming this shard's address,
//! so a broker learns where to answer a peer it was not configured with (one that is
//! not a voter); the voters' addresses come from the configuration and are pinned.
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

use std::cell::{Cell, RefCell};
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
use crate::limits::{
    INBOUND_FRAMES_MAX, LINK_FRAMES_MAX, PEERS_MAX, PEER_CONNECTIONS_MAX, READ_STEP_BYTES,
};
use crate::replica::ReplicaId;
use crate::wire::{self, Body, Header, FRAME_BYTES_MAX};

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

/// One peer's outbound queue and where its writer dials.
#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    queue: LocalSender<OutFrame>,
    /// A configured voter's address: never replaced by what a peer announces.
    pinned: bool,
    /// Set when the link is replaced: its writer stops dialling.
    retired: Rc<Cell<bool>>,
}

/// The outbound queues, one per peer: the configured peers, and those learned since —
/// from the metadata image (`Replicator::set_peer`) or from a peer's `Hello` — at most
/// `PEERS_MAX` in all.
#[derive(Debug)]
pub struct Links {
    links: RefCell<BTreeMap<ReplicaId, Link>>,
    /// This shard's `Hello` frame, written first on every connection.
    hello: Vec<u8>,
}

impl Links {
    pub fn new(me: ReplicaId, listen: SocketAddr) -> Links {
        let header = Header {
            from: me.0,
            body: Body::Hello {
                listen: listen.to_string(),
            },
        };
        let hello = wire::encode(&header, &[]).expect("a hello frame is small");
        Links {
            links: RefCell::new(BTreeMap::new()),
            hello,
        }
    }

    /// Starts a writer to `peer` at `addr`, replacing one to another address unless
    /// that one is pinned. Returns whether the link is now to `addr`.
    pub fn connect(
        &self,
        shared: &Rc<Shared>,
        peer: ReplicaId,
        addr: SocketAddr,
        pin: bool,
    ) -> bool {
        let mut links = self.links.borrow_mut();
        match links.get(&peer) {
            Some(link) if link.addr == addr => return true,
            Some(link) if link.pinned && !pin => return false,
            Some(link) => {
                tracing::info!(peer = peer.0, old = %link.addr, new = %addr, "a peer's replication address changed");
                link.retired.set(true);
            }
            None if links.len() >= PEERS_MAX => {
                tracing::warn!(peer = peer.0, %addr, max = PEERS_MAX, "not connecting to another peer: too many");
                return false;
            }
            None => {}
        }
        let (queue, frames) = local_channel::new_bounded(LINK_FRAMES_MAX);
        let retired = Rc::new(Cell::new(false));
        let writer = Writer {
            peer,
            addr,
            hello: self.hello.clone(),
            retired: retired.clone(),
        };
        links.insert(
            peer,
            Link {
                addr,
                queue,
                pinned: pin,
                retired,
            },
        );
        drop(links);
        shared.spawn(writer.run(frames));
        true
    }

    /// Queues a frame for `to`; drops it when the queue is full or the peer unknown.
    pub fn send(&self, to: ReplicaId, frame: OutFrame) {
        match self.links.borrow().get(&to) {
            Some(link) => {
                if link.queue.try_send(frame).is_err() {
                    tracing::debug!(
                        peer = to.0,
                        "replication frame dropped: the peer's queue is full"
                    );
                }
            }
            None => tracing::debug!(
                peer = to.0,
                "replication frame for a broker whose address is not known yet"
            ),
        }
    }
}

/// The task that dials one peer and writes its frames, `Hello` first on each
/// connection.
struct Writer {
    peer: ReplicaId,
    addr: SocketAddr,
    hello: Vec<u8>,
    retired: Rc<Cell<bool>>,
}

impl Writer {
    async fn run(self, frames: LocalReceiver<OutFrame>) {
        let (peer, addr) = (self.peer, self.addr);
        while !self.retired.get() {
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
            let hello = OutFrame {
                head: self.hello.clone(),
                chunks: Vec::new(),
            };
            let mut outcome = write_timed(&mut stream, &hello).await;
            while outcome.is_ok() {
                // Ends once the link is replaced (its sender dropped).
                let Some(frame) = frames.recv().await else {
                    return;
                };
                outcome = write_timed(&mut stream, &frame).await;
            }
            if let Err(e) = outcome {
                tracing::info!(peer = peer.0, %addr, error = %e, "lost the connection to a peer");
            }
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
        }
    }
}

/// Writes `frame`, or fails once it has waited `LINK_WRITE_TIMEOUT`.
async fn write_timed(stream: &mut TcpStream, frame: &OutFrame) -> std::io::Result<()> {
    let written = futures::future::select(
        Box::pin(write_frame(stream, frame)),
        Box::pin(glommio::timer::sleep(LINK_WRITE_TIMEOUT)),
    )
    .await;
    match written {
        futures::future::Either::Left((outcome, _)) => outcome,
        futures::future::Either::Right(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the peer has not read a frame for too long",
        )),
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
