//! One-shot replies between shards that never hand a task's waker to another thread.
//!
//! Why: glommio 0.9 wakes a task from a foreign thread by reference-counting its waker
//! across threads, and that path has a race. When a foreign thread drops the last foreign
//! waker of a task that completes on its own shard at the same moment, the task is freed
//! twice. We hit it as `double free or corruption` aborts under cross-shard produce and
//! long-poll traffic; the abort was in `process_foreign_wakes`. `futures::channel::oneshot`
//! across shards takes exactly that path: the sender wakes (and drops) the receiver's
//! waker on the sender's thread.
//!
//! Here a reply travels as a value over the doorbell mesh, a glommio channel mesh of
//! its own. Its receivers register wakers only with their own reactor, and senders only
//! ring it. On the receiving shard the value lands in a local table and the waiting task
//! is woken locally. So no waker ever leaves its thread.
//!
//! Invariants:
//! - `channel` is called, and the receiver polled and dropped, on one shard thread.
//! - `ReplySender::send` or its drop runs on a shard thread of the same set, where
//!   `install` has run (a sender dropped while its thread tears down rings no one).
//! - Each id is used once per receiving shard.
//!
//! Bounds: a reply in transit waits in its sender shard's outbox, then in the doorbell
//! channel (`SHARD_CHANNEL_CAPACITY`). Every reply answers exactly one request, and
//! requests are bounded (`SHARD_PEER_REQUESTS_INFLIGHT_MAX`, `SHARD_PEER_WAITS_INFLIGHT_MAX`
//! per peer, `CONTROL_CHANNEL_CAPACITY` in the broker), so replies are bounded by the
//! same sums.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::channels::local_channel::{self, LocalSender};
use glommio::TaskQueueHandle;

use super::channels::{MeshEnds, Senders};

/// A reply on its way: the receiving shard, the receiver's id there, and the value (or
/// `None`: the sender was dropped without replying).
pub(crate) struct Doorbell {
    id: u64,
    value: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell")
            .field("id", &self.id)
            .field("value", &self.value.is_some())
            .finish()
    }
}

/// What a waiting receiver has: its waker, and the reply once it arrives.
#[derive(Default)]
struct Waiting {
    waker: Option<Waker>,
    arrived: Option<Option<Box<dyn Any + Send>>>,
}

/// This shard's end of the doorbell mesh.
struct Local {
    shard: usize,
    next_id: Cell<u64>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    outbox: LocalSender<(usize, Doorbell)>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn local() -> Rc<Local> {
    LOCAL.with(|l| {
        l.borrow()
            .clone()
            .expect("shard replies are used on shard threads only, after install")
    })
}

/// The reply was never sent: the sender was dropped (its shard stopped, or the work was
/// abandoned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canceled;

/// Connects this shard's ends of the doorbell mesh and starts delivering replies.
/// Returns once this shard can send and receive them.
pub(crate) async fn install(shard: usize, mesh: MeshEnds<Doorbell>, queue: TaskQueueHandle) {
    let (senders, receivers) = mesh.connect().await;
    let (outbox, pending) = local_channel::new_unbounded();
    let local = Rc::new(Local {
        shard,
        next_id: Cell::new(0),
        waiting: RefCell::new(HashMap::new()),
        outbox,
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(local.clone()));
    // Outgoing: replies to other shards wait for room in the peer's channel here, never
    // in the task that sent them.
    glommio::spawn_local_into(
        async move {
            while let Some((to, doorbell)) = pending.recv().await {
                forward(&senders, to, doorbell).await;
            }
        },
        queue,
    )
    .expect("queue exists")
    .detach();
    // Incoming: store each reply and wake its receiver, on this thread.
    for (_, receiver) in receivers {
        let local = local.clone();
        glommio::spawn_local_into(
            async move {
                while let Some(doorbell) = receiver.recv().await {
                    deliver(&local, doorbell);
                }
            },
            queue,
        )
        .expect("queue exists")
        .detach();
    }
}

async fn forward(senders: &Senders<Doorbell>, to: usize, doorbell: Doorbell) {
    // A failed send means the peer shard is gone; its receivers are gone with it.
    let _ = senders.send_to(to, doorbell).await;
}

fn deliver(local: &Local, doorbell: Doorbell) {
    let waker = {
        let mut waiting = local.waiting.borrow_mut();
        // No entry: the receiver was dropped (its requester gave up); the reply is too.
        let Some(entry) = waiting.get_mut(&doorbell.id) else {
            return;
        };
        assert!(entry.arrived.is_none(), "one reply per receiver");
        entry.arrived = Some(doorbell.value);
        entry.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A new reply channel whose receiver lives on this shard.
pub fn channel<T: Send + 'static>() -> (ReplySender<T>, ReplyReceiver<T>) {
    let local = local();
    let id = local.next_id.get();
    local.next_id.set(id + 1);
    local.waiting.borrow_mut().insert(id, Waiting::default());
    let sender = ReplySender {
        to: local.shard,
        id,
        sent: false,
        _value: std::marker::PhantomData,
    };
    let receiver = ReplyReceiver {
        local,
        id,
        _value: std::marker::PhantomData,
    };
    (sender, receiver)
}

/// Sends one reply, from any shard thread.
#[derive(Debug)]
pub struct ReplySender<T> {
    to: usize,
    id: u64,
    sent: bool,
    _value: std::marker::PhantomData<fn(T)>,
}

impl<T: Send + 'static> ReplySender<T> {
    /// Sends the reply. Delivery is asynchronous; if the receiver is gone by then, the
    /// value is dropped on its shard.
    pub fn send(mut self, value: T) {
        self.sent = true;
        ring(self.to, self.id, Some(Box::new(value)));
    }
}

impl<T> Drop for ReplySender<T> {
    fn drop(&mut self) {
        if !self.sent {
            ring(self.to, self.id, None);
        }
    }
}

fn ring(to: usize, id: u64, value: Option<Box<dyn Any + Send>>) {
    // Only while a shard thread is tearing down (its tasks dropped with their requests)
    // can there be no doorbell end here; the receivers are gone with their shards too.
    let Some(local) = LOCAL.try_with(|l| l.borrow().clone()).ok().flatten() else {
        return;
    };
    let doorbell = Doorbell { id, value };
    if to == local.shard {
        deliver(&local, doorbell);
        return;
    }
    // The outbox is unbounded, and its task never stops before the shard, so this cannot
    // fail while the shard runs; at shutdown the reply is moot.
    let _ = local.outbox.try_send((to, doorbell));
}

/// Awaits the reply, on the shard that made the channel.
#[derive(Debug)]
pub struct ReplyReceiver<T> {
    local: Rc<Local>,
    id: u64,
    _value: std::marker::PhantomData<fn() -> T>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("shard", &self.shard).finish()
    }
}

impl<T: 'static> Future for ReplyReceiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut waiting = self.local.waiting.borrow_mut();
        let entry = waiting
            .get_mut(&self.id)
            .expect("a receiver's entry lives until it completes or drops");
        match entry.arrived.take() {
            None => {
                entry.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Some(value) => {
                waiting.remove(&self.id);
                Poll::Ready(match value {
                    None => Err(Canceled),
                    Some(value) => Ok(*value
                        .downcast::<T>()
                        .expect("a reply has its channel's type")),
                })
            }
        }
    }
}

impl<T> Drop for ReplyReceiver<T> {
    fn drop(&mut self) {
        self.local.waiting.borrow_mut().remove(&self.id);
    }
}
