//! Carrying out a replica's steps: the actions of each step in order on the engine
//! log, the outbox flush that follows (reading the records fetch answers carry), the
//! delivery of peers' frames to their replicas, and the two loops that step replicas on
//! their own (ticks, and durable reports from group commit). The ordering rules are in
//! the parent module's doc.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spate_engine::batch::{self, BatchHeader};
use spate_engine::{AckPolicy, Offset, ValidBatch};

use super::link::OutFrame;
use super::{store, DriverError, Partition, Shared};
use crate::outbox::{self, ANSWER_BYTES_MAX, FRAME_RECORD_BYTES_MAX};
use crate::replica::{Action, BatchMeta, FetchBody, Message, ReplicaId};
use crate::wire;

impl Shared {
    /// Carries out one step's actions in order, then flushes the outbox. `fetched` holds
    /// the record batches of the fetch answer the step took, if any.
    pub(super) async fn execute(
        &self,
        partition: &Partition,
        actions: Vec<Action>,
        fetched: Option<Vec<ValidBatch>>,
    ) {
        let mut fetched = fetched;
        for action in actions {
            if let Err(error) = self.carry_out(partition, action, &mut fetched).await {
                // The replica now believes something of its log that may not be true;
                // it must not take part any more (as a failed fsync takes a partition
                // offline in the engine).
                tracing::error!(partition = ?partition.key, %error, "replica stopped after a storage failure");
                partition.failed.set(true);
                break;
            }
        }
        self.flush().await;
    }

    async fn carry_out(
        &self,
        partition: &Partition,
        action: Action,
        fetched: &mut Option<Vec<ValidBatch>>,
    ) -> Result<(), DriverError> {
        match action {
            Action::Persist(persisted) => store::save_vote(partition.log.dir(), persisted).await,
            action @ (Action::Send { .. } | Action::SendRecords { .. }) => {
                let rest = self.outbox.borrow_mut().take(&partition.key, vec![action]);
                assert!(rest.is_empty(), "the outbox keeps every send");
                Ok(())
            }
            Action::Append { base, batches } => {
                self.save_epochs_if_changed(partition).await?;
                match fetched.take() {
                    Some(bytes) => {
                        for batch in bytes {
                            partition.log.append_replicated(batch).await?;
                        }
                    }
                    None => self.append_markers(partition, &batches).await?,
                }
                debug_assert_eq!(
                    partition.log.offsets().log_end,
                    base.plus(batches.iter().map(|b| i64::from(b.offsets)).sum())
                );
                Ok(())
            }
            Action::Truncate { to } => {
                partition.log.truncate_to(to).await?;
                self.save_epochs_if_changed(partition).await
            }
            Action::Restart { at } => {
                // The emptied epoch cache is saved first: after a crash before the log
                // restarts, recovery finds a cache that covers none of the log, and
                // rebuilds it from the log; the leader then says to start over again.
                self.save_epochs_if_changed(partition).await?;
                Ok(partition.log.restart_at(at).await?)
            }
            Action::Commit { index } => {
                partition.log.set_commit(index);
                Ok(())
            }
            Action::Resigned => {
                tracing::info!(partition = ?partition.key, "stopped leading");
                Ok(())
            }
            Action::Refused { from, reason } => {
                tracing::warn!(partition = ?partition.key, from = from.0, %reason, "refused a peer's message");
                Ok(())
            }
        }
    }

    /// A new leader's epoch marker(s): control batches of one record.
    async fn append_markers(
        &self,
        partition: &Partition,
        batches: &[BatchMeta],
    ) -> Result<(), DriverError> {
        for meta in batches {
            assert_eq!(
                meta.offsets, 1,
                "a leader's own appends other than writes are markers"
            );
            let now = spate_engine::Timestamp::now().0;
            let marker = BytesMut::from(&batch::encode_leader_marker(now)[..]);
            partition
                .log
                .append(marker, meta.epoch, AckPolicy::Appended)
                .await?;
        }
        Ok(())
    }

    async fn save_epochs_if_changed(&self, partition: &Partition) -> Result<(), DriverError> {
        // Compared in place: epochs change once per leader, appends happen always.
        if *partition.saved_epochs.borrow() == *partition.replica.borrow().epochs() {
            return Ok(());
        }
        let current = partition.replica.borrow().epochs().clone();
        store::save_epochs(partition.log.dir(), &current).await?;
        *partition.saved_epochs.borrow_mut() = current;
        Ok(())
    }

    /// Sends what the outbox gathered, reading the records fetch answers carry.
    async fn flush(&self) {
        let frames = self.outbox.borrow_mut().flush();
        for mut frame in frames {
            let mut chunks = Vec::new();
            let mut frame_bytes = 0usize;
            let mut unreadable = Vec::new();
            let reads = std::mem::take(&mut frame.reads);
            for read in &reads {
                let log = self
                    .partitions
                    .borrow()
                    .get(&read.key)
                    .map(|p| p.log.clone());
                let got = match log {
                    Some(log) => {
                        log.read_replicated(read.from, read.until, ANSWER_BYTES_MAX)
                            .await
                    }
                    None => Ok(Default::default()),
                };
                match got {
                    // A read holds at least one whole batch, which may be larger than an
                    // answer's share (up to the engine's batch limit): it goes only if
                    // the frame has room. Answers of at most `ANSWER_BYTES_MAX` always
                    // fit, so only a batch over 48 MiB is ever left out.
                    Ok(got) if frame_bytes + got.bytes() as usize <= FRAME_RECORD_BYTES_MAX => {
                        let bytes = got.bytes();
                        frame_bytes += bytes as usize;
                        frame.fill(read.part, got.batches, bytes as u32);
                        chunks.extend(got.chunks);
                    }
                    // No answer in both cases below: an empty one would have the
                    // follower ask again at once, in a loop; without one it asks after
                    // its fetch timeout.
                    Ok(got) => {
                        tracing::warn!(partition = ?read.key, bytes = got.bytes(), "a batch too large for a replication frame; the follower asks again");
                        unreadable.push(read.part);
                    }
                    Err(error) => {
                        tracing::warn!(partition = ?read.key, %error, "cannot read records for a follower");
                        unreadable.push(read.part);
                    }
                }
            }
            frame.reads = reads;
            if !unreadable.is_empty() {
                frame.drop_parts(&unreadable);
            }
            self.stamp_log_starts(&mut frame.header.body);
            match wire::encode_head(&frame.header) {
                Ok(head) => self.links.send(frame.to, OutFrame { head, chunks }),
                Err(error) => tracing::error!(%error, "cannot encode a replication frame"),
            }
        }
    }

    /// Gives every fetch answer its partition's log start as it is now. It may have moved
    /// past the records just read (a DeleteRecords in between); that is harmless, since a
    /// follower never moves its own past its high watermark.
    fn stamp_log_starts(&self, body: &mut wire::Body) {
        let wire::Body::FetchAnswer(answers) = body else {
            return;
        };
        let partitions = self.partitions.borrow();
        for answer in answers {
            if let Some(partition) = partitions.get(&answer.key) {
                answer.log_start = partition.log.offsets().log_start.0;
            }
        }
    }

    /// A frame from a peer: each partition's message steps its replica.
    pub(crate) async fn deliver(self: &Rc<Self>, frame: Bytes) {
        let (header, records) = match wire::decode(&frame) {
            Ok((header, records, _)) => (header, frame.slice_ref(records)),
            Err(error) => {
                tracing::warn!(%error, "dropped an invalid replication frame");
                return;
            }
        };
        if let wire::Body::Hello { listen } = &header.body {
            return self.hello(ReplicaId(header.from), listen);
        }
        let (from, parts) = match outbox::inbound(&header) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::warn!(%error, "dropped an invalid replication frame");
                return;
            }
        };
        for part in parts {
            let Ok(partition) = self.partition(&part.key) else {
                tracing::debug!(partition = ?part.key, from = from.0, "a message for a partition this shard does not host");
                continue;
            };
            let fetched = match part.records {
                Some(range) => match split_batches(&records.slice(range), &part.message) {
                    Ok(batches) => Some(batches),
                    Err(reason) => {
                        tracing::warn!(partition = ?part.key, from = from.0, %reason, "dropped a fetch answer");
                        continue;
                    }
                },
                None => None,
            };
            let Ok(_step) = partition.step.acquire_permit(1).await else {
                continue;
            };
            if partition.failed.get() || self.stopped.get() {
                continue;
            }
            // Retention, DeleteRecords or the leader's log start may have moved it.
            let start = log_start_batch(&partition).await;
            let actions = {
                let mut replica = partition.replica.borrow_mut();
                replica.set_log_start(start);
                replica.receive(self.now(), from, part.message)
            };
            self.execute(&partition, actions, fetched).await;
            follow_log_start(&partition, part.log_start).await;
        }
    }

    /// A peer's `Hello`: answer it at the address it names (unless it is a configured
    /// peer, whose address is pinned).
    fn hello(self: &Rc<Self>, from: ReplicaId, listen: &str) {
        if from == self.config.broker {
            return tracing::warn!(%listen, "a peer says it is this broker: ignored");
        }
        let addr = (listen.len() <= wire::HELLO_ADDRESS_BYTES_MAX)
            .then(|| listen.parse::<std::net::SocketAddr>().ok())
            .flatten();
        match addr {
            Some(addr) => {
                self.links.connect(self, from, addr, false);
            }
            None => tracing::warn!(peer = from.0, "a peer's hello names no address: ignored"),
        }
    }
}

/// The replica's log start: the base of the batch holding the log's start (DeleteRecords
/// may put it inside a batch, which followers need whole).
async fn log_start_batch(partition: &Partition) -> Offset {
    let start = partition.log.offsets().log_start;
    match partition.start_batch.get() {
        Some((known, base)) if known == start => base,
        _ => match partition.log.log_start_batch().await {
            Ok(base) => {
                partition.start_batch.set(Some((start, base)));
                base
            }
            // A failed log (the replica stops on its next action), or a log start moved
            // meanwhile: the next message looks again.
            Err(_) => partition.replica.borrow().log_start(),
        },
    }
}

/// Moves a replica's log start up to the highest one a leader answered it with, but
/// never past its own high watermark: below that every record is committed, so the
/// leader held the same records and has deleted them (retention or DeleteRecords).
/// Retention then drops the segments below on this replica too, and a failover does not
/// bring them back. What the high watermark holds back is applied on a later message,
/// also once this replica leads.
async fn follow_log_start(partition: &Partition, answered: Option<Offset>) {
    if let Some(start) = answered {
        if !partition.replica.borrow().is_leader() {
            let highest = partition.leader_log_start.get().max(start);
            partition.leader_log_start.set(highest);
        }
    }
    let offsets = partition.log.offsets();
    let target = partition.leader_log_start.get().min(offsets.high_watermark);
    if target <= offsets.log_start {
        return;
    }
    if let Err(error) = partition.log.delete_records(target).await {
        // A truncation in progress, or a failed log (which the driver notices itself):
        // the next answer carries the leader's log start again.
        tracing::debug!(%error, to = target.0, "could not follow the leader's log start");
    }
}

/// Splits a fetch answer's record bytes into batches, each validated (CRC, counts) and
/// matching the leader's description: offsets from the answer's base, its epochs and
/// the offsets each spans (compaction may have left fewer records than that). A peer's bytes are checked here so the log never refuses them.
fn split_batches(bytes: &Bytes, message: &Message) -> Result<Vec<ValidBatch>, String> {
    let Message::FetchAnswer {
        body: FetchBody::Records { base, batches },
        ..
    } = message
    else {
        return Err("record bytes on a message that carries none".into());
    };
    let mut out = Vec::with_capacity(batches.len());
    let mut at = 0usize;
    let mut offset = *base;
    for meta in batches {
        let header = BatchHeader::parse(&bytes[at..]).map_err(|e| e.to_string())?;
        if header.size > bytes.len() - at {
            return Err(format!(
                "a batch of {} bytes runs past the answer",
                header.size
            ));
        }
        let batch = bytes.slice(at..at + header.size);
        let batch = ValidBatch::check(batch).map_err(|e| e.to_string())?;
        if header.base_offset != offset
            || header.leader_epoch != meta.epoch
            || header.offsets() != meta.offsets
        {
            return Err(format!(
                "batch at offset {} (epoch {}, {} offsets) is not the described {:?} at {}",
                header.base_offset.0,
                header.leader_epoch.0,
                header.offsets(),
                meta,
                offset.0
            ));
        }
        offset = header.last_offset().next();
        at += header.size;
        out.push(batch);
    }
    if at != bytes.len() {
        return Err(format!(
            "{} record bytes after the described batches",
            bytes.len() - at
        ));
    }
    Ok(out)
}

/// Ticks every replica of the shard.
pub(super) async fn tick_loop(shared: Rc<Shared>) {
    let every = Duration::from_millis(shared.config.timing.tick_ms.max(1));
    while !shared.stopped.get() {
        glommio::timer::sleep(every).await;
        let partitions: Vec<Rc<Partition>> = shared.partitions.borrow().values().cloned().collect();
        for partition in partitions {
            // A partition busy with a step is ticked next time.
            let Ok(_step) = partition.step.try_acquire_permit(1) else {
                continue;
            };
            if partition.failed.get() {
                continue;
            }
            let actions = partition.replica.borrow_mut().tick(shared.now());
            if !actions.is_empty() {
                shared.execute(&partition, actions, None).await;
            }
        }
    }
}

/// Reports the log's durable end to its replica as flush cycles complete.
pub(super) async fn durable_loop(shared: Rc<Shared>, partition: Rc<Partition>) {
    while !shared.stopped.get() && !partition.failed.get() {
        if partition.log.failure().is_some() {
            partition.failed.set(true);
            return;
        }
        if partition.log.is_closing() {
            // Progress waits end at once on a closing log; nothing more will be durable.
            return;
        }
        let durable = partition.log.offsets().durable_end;
        if durable > partition.replica.borrow().durable_end() {
            let Ok(_step) = partition.step.acquire_permit(1).await else {
                return;
            };
            let durable = partition.log.offsets().durable_end;
            let actions = partition
                .replica
                .borrow_mut()
                .durable(shared.now(), durable);
            shared.execute(&partition, actions, None).await;
            continue;
        }
        // Wakes after the next flush cycle; the timeout covers a cycle that completed
        // between the check above and this wait.
        futures::future::select(
            Box::pin(partition.log.wait_for_progress()),
            Box::pin(glommio::timer::sleep(Duration::from_millis(
                shared.config.timing.tick_ms.max(1),
            ))),
        )
        .await;
    }
}
