//! Reporting this broker's leaderships to the controller, which records them in the
//! metadata log (`PartitionLeader`), so that every broker names a partition's leader
//! and epoch in Metadata and FindCoordinator, the brokers without a replica of it too.
//! (The replicas elect their leaders among themselves; the record only tells the rest.)
//!
//! On shard 0, every `REPORT_INTERVAL`: the partitions this broker leads (from every
//! shard's leadership views) whose leader or epoch the image does not record yet go to
//! the controller in one AlterPartition of at most `LEADER_REPORTS_MAX`, or straight to
//! the metadata quorum where this broker is the controller. A report that fails goes
//! again next round; one recorded, or refused (an older epoch than the one recorded: a
//! newer leader reported first), is not sent again for that epoch. The memory of what
//! was sent holds only partitions led here, so it stays bounded by them.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use spate_engine::TopicPartition;

use super::admin::LeaderReport;
use crate::limits::LEADER_REPORTS_MAX;
use crate::node::Node;

/// How often shard 0 looks for leaderships to report.
const REPORT_INTERVAL: Duration = Duration::from_millis(200);

/// On shard 0: reports this broker's leaderships as they change.
pub async fn report_loop(node: Rc<Node>) {
    let Some(cluster) = node.cluster().cloned() else {
        return;
    };
    // Partition → the epoch last reported and answered (recorded or refused).
    let mut answered: BTreeMap<TopicPartition, i32> = BTreeMap::new();
    while !cluster.replicator.is_stopped() {
        glommio::timer::sleep(REPORT_INTERVAL).await;
        let led = cluster.led_here();
        answered.retain(|tp, epoch| led.get(tp) == Some(epoch));
        let image = cluster.image();
        let due: Vec<(TopicPartition, LeaderReport)> = led
            .into_iter()
            .filter(|(tp, epoch)| answered.get(tp) != Some(epoch))
            .filter(|(tp, epoch)| {
                image.recorded_leader(&tp.topic, tp.partition.0) != Some((cluster.me(), *epoch))
            })
            .filter_map(|(tp, epoch)| {
                let id = image.topics.get(&*tp.topic)?.id;
                let report = (id, tp.partition.0, epoch);
                Some((tp, report))
            })
            .take(LEADER_REPORTS_MAX)
            .collect();
        if due.is_empty() {
            continue;
        }
        match report(&node, &due).await {
            Ok(outcomes) => {
                for ((tp, (_, _, epoch)), code) in due.into_iter().zip(outcomes) {
                    match code {
                        None => continue,
                        Some(0) => {}
                        Some(code) => {
                            tracing::debug!(partition = %tp, epoch, code, "leadership not recorded")
                        }
                    }
                    answered.insert(tp, epoch);
                }
            }
            Err(reason) => tracing::debug!(%reason, "could not report leaderships yet"),
        }
    }
}

/// Sends `due` to the controller; the error code each got, in order (`None`: not
/// answered).
async fn report(
    node: &Node,
    due: &[(TopicPartition, LeaderReport)],
) -> Result<Vec<Option<i16>>, String> {
    let Some(cluster) = node.cluster() else {
        return Err("not in cluster mode".into());
    };
    let reports: Vec<LeaderReport> = due.iter().map(|(_, r)| *r).collect();
    if cluster.quorum.as_ref().is_some_and(|q| q.is_leader()) {
        let outcomes = super::admin::record_leaders(node, cluster.me(), reports)
            .await
            .map_err(|(_, message)| message)?;
        return Ok(outcomes
            .iter()
            .map(|e| Some(e.map_or(0, |e| e.code())))
            .collect());
    }
    let codes = super::register::remote_record_leaders(node, reports).await?;
    Ok(due.iter().map(|(_, r)| codes.get(r).copied()).collect())
}
