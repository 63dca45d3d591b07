//! Full meshes of bounded channels between shards, one channel per ordered pair.
//!
//! glommio's own `MeshBuilder` is not used: it is `Send` and `Clone` but counts its
//! clones with an `Rc`, so clones made or dropped on different shard threads race on a
//! non-atomic count. We hit that as heap corruption when brokers stopped (defect 5 in
//! `docs/GLOMMIO.md`). Here the thread that builds the mesh creates every
//! channel up front; each shard takes the ends it owns, once, and connects them on its
//! own executor. Nothing else is shared between threads but the channels, which glommio
//! builds to cross threads, and the table of unclaimed ends behind a `Mutex` that is
//! touched only at start.

use std::sync::Mutex;

use futures::future::join_all;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

/// The ends of every channel of a mesh, waiting to be claimed by their shards.
#[derive(Debug)]
pub struct Mesh<T: Send + 'static> {
    unclaimed: Mutex<Vec<Option<MeshEnds<T>>>>,
}

/// One shard's ends of a mesh: a sender to every peer and a receiver from every peer.
#[derive(Debug)]
pub struct MeshEnds<T: Send + 'static> {
    shard: usize,
    senders: Vec<Option<SharedSender<T>>>,
    receivers: Vec<Option<SharedReceiver<T>>>,
}

/// A shard's connected senders, indexed by peer shard.
#[derive(Debug)]
pub struct Senders<T: Send + 'static> {
    shard: usize,
    senders: Vec<Option<ConnectedSender<T>>>,
}

impl<T: Send + 'static> Mesh<T> {
    /// A full mesh among `shards` shards; every channel holds up to `capacity` messages.
    pub fn full(shards: usize, capacity: usize) -> Mesh<T> {
        let mut ends: Vec<MeshEnds<T>> = (0..shards)
            .map(|shard| MeshEnds {
                shard,
                senders: (0..shards).map(|_| None).collect(),
                receivers: (0..shards).map(|_| None).collect(),
            })
            .collect();
        for from in 0..shards {
            for to in (0..shards).filter(|&to| to != from) {
                let (sender, receiver) = shared_channel::new_bounded(capacity);
                ends[from].senders[to] = Some(sender);
                ends[to].receivers[from] = Some(receiver);
            }
        }
        Mesh {
            unclaimed: Mutex::new(ends.into_iter().map(Some).collect()),
        }
    }

    /// Shard `shard`'s ends; `None` if already claimed or out of range. Ends never
    /// claimed are dropped with the mesh, which disconnects their peers.
    pub fn claim(&self, shard: usize) -> Option<MeshEnds<T>> {
        // A panic while holding this lock cannot leave the table inconsistent.
        let mut unclaimed = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
        unclaimed.get_mut(shard).and_then(Option::take)
    }
}

impl<T: Send + 'static> MeshEnds<T> {
    /// Connects every end on the calling shard's executor. Returns once every peer has
    /// connected its side too, or dropped it.
    pub async fn connect(self) -> (Senders<T>, Vec<(usize, ConnectedReceiver<T>)>) {
        // Concurrently: connecting one end waits for the peer's side, and peers connect
        // their ends in their own order.
        let senders = join_all(self.senders.into_iter().map(|sender| async move {
            match sender {
                Some(sender) => Some(sender.connect().await),
                None => None,
            }
        }));
        let receivers = join_all(
            self.receivers
                .into_iter()
                .enumerate()
                .filter_map(|(peer, receiver)| receiver.map(|r| (peer, r)))
                .map(|(peer, receiver)| async move { (peer, receiver.connect().await) }),
        );
        let (senders, receivers) = futures::future::join(senders, receivers).await;
        (
            Senders {
                shard: self.shard,
                senders,
            },
            receivers,
        )
    }
}

impl<T: Send + 'static> Senders<T> {
    /// Sends `message` to shard `peer`, waiting while its channel is full. Gives the
    /// message back if `peer` is this shard, does not exist, or has gone away.
    pub async fn send_to(&self, peer: usize, message: T) -> Result<(), T> {
        match self.senders.get(peer) {
            Some(Some(sender)) => sender.send(message).await.map_err(|e| match e {
                glommio::GlommioError::Closed(glommio::ResourceType::Channel(m))
                | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m)) => m,
                other => unreachable!("shared channel send failed with {other}"),
            }),
            _ => Err(message),
        }
    }

    /// The shard these senders belong to.
    pub fn shard(&self) -> usize {
        self.shard
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Every shard sends its index to every peer and receives one message from each.
    #[test]
    fn every_pair_is_connected_once() {
        let shards = 3;
        let mesh = Arc::new(Mesh::<usize>::full(shards, 4));
        let threads: Vec<_> = (0..shards)
            .map(|shard| {
                let mesh = mesh.clone();
                glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                    .spawn(move || async move {
                        let ends = mesh.claim(shard).expect("unclaimed");
                        assert!(mesh.claim(shard).is_none());
                        drop(mesh);
                        let (senders, receivers) = ends.connect().await;
                        assert_eq!(senders.shard(), shard);
                        assert_eq!(senders.send_to(shard, 7).await, Err(7));
                        assert_eq!(senders.send_to(shards, 7).await, Err(7));
                        for peer in (0..shards).filter(|&p| p != shard) {
                            senders
                                .send_to(peer, shard)
                                .await
                                .expect("peer is connected");
                        }
                        let mut got = Vec::new();
                        for (peer, receiver) in receivers {
                            let value = receiver.recv().await.expect("peer sent");
                            assert_eq!(value, peer);
                            got.push(peer);
                        }
                        got.sort_unstable();
                        got
                    })
                    .unwrap()
            })
            .collect();
        for (shard, thread) in threads.into_iter().enumerate() {
            let got = thread.join().unwrap();
            let want: Vec<usize> = (0..shards).filter(|&p| p != shard).collect();
            assert_eq!(got, want);
        }
    }

    /// Ends nobody claims are disconnected when the mesh is dropped: a shard that did
    /// claim its ends is not left waiting forever, and its sends fail.
    #[test]
    fn unclaimed_ends_disconnect_their_peers() {
        let mesh = Mesh::<u8>::full(2, 4);
        let ends = mesh.claim(0).unwrap();
        drop(mesh);
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let (senders, _receivers) = ends.connect().await;
                assert_eq!(senders.send_to(1, 5).await, Err(5));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
