//! The listener and connections of one shard.
//!
//! Every shard binds the same address with SO_REUSEPORT, so the kernel spreads
//! connections over the shards; a connection lives on the shard that accepted it.
//! A connection has a reader and a writer task. The reader reads frames, decodes them,
//! and spawns each request's handler at once, so requests are pipelined; the writer
//! awaits the handlers in request order and writes their responses, so responses go out
//! in order. Between them is a bounded queue (`CONNECTION_INFLIGHT_REQUESTS_MAX`), and
//! every frame holds permits for its bytes (`CONNECTION_INFLIGHT_BYTES_MAX`) until its
//! response is written: a client that sends faster than it reads is slowed by TCP.
//!
//! Any error on a connection (oversized or malformed frame, unknown API, I/O) is logged
//! with the peer's address and closes that connection only.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::FutureExt;
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};
use kafka_protocol::messages::{ApiKey, ResponseKind};

use crate::codec::{self, Decoded};
use crate::error::{NetError, Result};
use crate::handlers::fetch::Part;
use crate::handlers::{self, Reply};
use crate::limits::{
    CONNECTION_INFLIGHT_BYTES_MAX, CONNECTION_INFLIGHT_REQUESTS_MAX, REQUEST_FRAME_BYTES_MAX,
    SHARD_CONNECTIONS_MAX, SHUTDOWN_DRAIN,
};
use crate::node::Node;

/// How often a waiting accept or read checks the stop flag. Only shutdown latency
/// depends on it.
const STOP_POLL: Duration = Duration::from_millis(100);

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected | UnexpectedEof
    )
}

/// Resolves once `stop` is set.
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(STOP_POLL).await;
    }
}

/// Serves connections on this shard until `stop` is set, then lets every connection
/// finish the requests it has read, for up to `SHUTDOWN_DRAIN`, and returns. Calls
/// `listening` once the shard listens.
pub async fn serve(node: Rc<Node>, stop: Arc<AtomicBool>, listening: impl FnOnce()) -> Result<()> {
    let listener = spate_engine::shard::listen::listen(node.config.listen)?;
    listening();
    // One permit per live connection; shutdown takes them all back to wait for every
    // connection to finish.
    let live = Rc::new(Semaphore::new(SHARD_CONNECTIONS_MAX as u64));
    loop {
        let accepted = futures::select! {
            accepted = listener.accept().fuse() => accepted,
            () = stopped(&stop).fuse() => break,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                // E.g. out of descriptors: back off instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = live.try_acquire_static_permit(1) else {
            tracing::warn!(
                "connection limit reached (SHARD_CONNECTIONS_MAX); closing a new connection"
            );
            continue;
        };
        let queue = node.shard.latency_queue();
        let (node, stop) = (node.clone(), stop.clone());
        glommio::spawn_local_into(
            async move {
                let peer = stream
                    .peer_addr()
                    .map_or_else(|_| "?".to_string(), |a| a.to_string());
                match connection(stream, &node, &stop).await {
                    Ok(()) => {}
                    // A client going away mid-response is ordinary.
                    Err(NetError::Io(e)) if is_disconnect(&e) => {
                        tracing::debug!(%peer, error = %e, "client went away")
                    }
                    Err(e) => tracing::info!(%peer, error = %e, "closing connection"),
                }
                drop(slot);
            },
            queue,
        )
        .expect("latency queue exists")
        .detach();
    }
    drop(listener);
    // Joins and syncs waiting for a rebalance would hold their connections open.
    node.groups.close();
    let drained = futures::select! {
        all = live.acquire_permit(SHARD_CONNECTIONS_MAX as u64).fuse() => all.is_ok(),
        () = glommio::timer::sleep(SHUTDOWN_DRAIN).fuse() => false,
    };
    if !drained {
        // Their tasks are dropped with the shard's executor.
        tracing::warn!(
            shard = node.shard.id().0,
            busy = SHARD_CONNECTIONS_MAX as u64 - live.available(),
            "connections still answering {SHUTDOWN_DRAIN:?} after the stop; stopping without them"
        );
    }
    let (zero_copy, copied) = node.fetch_bytes();
    tracing::info!(
        shard = node.shard.id().0,
        zero_copy_bytes = zero_copy,
        copied_bytes = copied,
        "fetch records sent"
    );
    Ok(())
}

/// One request in flight: its response frame, once computed, and its frame's permits
/// in the connection's and the shard's byte budgets.
type InFlight = (glommio::Task<Result<Vec<Part>>>, [StaticPermit; 2]);

/// Pause after a failed accept.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

async fn connection(stream: TcpStream, node: &Rc<Node>, stop: &AtomicBool) -> Result<()> {
    stream.set_nodelay(true)?;
    let peer: Rc<str> = stream
        .peer_addr()
        .map_or_else(|_| "unknown".into(), |a| a.ip().to_string().into());
    let socket = stream.as_raw_fd();
    let (mut reader, mut writer) = stream.split();
    let budget = Rc::new(Semaphore::new(CONNECTION_INFLIGHT_BYTES_MAX as u64));
    let (queue, responses) =
        local_channel::new_bounded::<InFlight>(CONNECTION_INFLIGHT_REQUESTS_MAX);
    let write = async move {
        while let Some((task, permit)) = responses.recv().await {
            for part in task.await? {
                match part {
                    Part::Bytes(bytes) => writer.write_all(&bytes).await?,
                    Part::File {
                        file,
                        position,
                        len,
                    } => {
                        writer.flush().await?;
                        spate_engine::file::send_file(socket, &file, position, len).await?;
                    }
                }
            }
            writer.flush().await?;
            drop(permit);
        }
        writer.close().await?;
        Ok::<(), NetError>(())
    };
    let read = async {
        // However reading ends (end of stream, stop, or a bad frame), the queue is
        // closed so the writer answers what was read and then closes the socket.
        let outcome = async {
            loop {
                let frame = futures::select! {
                    frame = codec::read_frame(&mut reader, REQUEST_FRAME_BYTES_MAX).fuse() => frame?,
                    () = stopped(stop).fuse() => None,
                };
                let Some(frame) = frame else { return Ok(()) };
                let closing = |_| NetError::Malformed("connection closing".into());
                let permit = [
                    budget.acquire_static_permit(frame.len() as u64).await.map_err(closing)?,
                    node.inflight_bytes.acquire_static_permit(frame.len() as u64).await.map_err(closing)?,
                ];
                let task = glommio::spawn_local_into(respond(node.clone(), frame, peer.clone()), node.shard.latency_queue())
                    .expect("latency queue exists");
                if queue.send((task, permit)).await.is_err() {
                    return Ok(());
                }
            }
        }
        .await;
        drop(queue);
        outcome
    };
    // A writer error (a request that failed to decode or be handled) ends the connection
    // at once, dropping the reader; the reader ending lets the writer finish first.
    let read = async { Ok::<_, NetError>(read.await) };
    let (read_outcome, ()) = futures::future::try_join(read, write).await?;
    read_outcome
}

/// Decodes and handles one request, returning its response frame (empty for none).
async fn respond(node: Rc<Node>, frame: Bytes, peer: Rc<str>) -> Result<Vec<Part>> {
    let encoded = match codec::decode(frame)? {
        Decoded::ApiVersionsTooNew { correlation_id } => {
            let body = ResponseKind::ApiVersions(handlers::api_versions::too_new());
            codec::encode(ApiKey::ApiVersions, 0, correlation_id, &body)?
        }
        Decoded::Request(request) => match handlers::handle(&node, &request, &peer).await? {
            Reply::Message(body) => codec::encode(
                request.api_key,
                request.version,
                request.header.correlation_id,
                &body,
            )?,
            Reply::Frame(parts) => {
                node.note_fetch_parts(&parts);
                return Ok(parts);
            }
            Reply::Nothing => return Ok(Vec::new()),
        },
    };
    Ok(vec![Part::Bytes(encoded)])
}
