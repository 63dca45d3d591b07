//! AlterPartition (key 56), version 2: a broker of the cluster reporting, to the
//! controller, the partitions it leads and their leader epochs (topics by id). The
//! controller records each newer leadership in the metadata log, so brokers without a
//! replica of a partition name its leader in Metadata. The partitions' replicas elect
//! their leaders themselves (this is a report, not a request to change anything), and
//! the ISR sent is not used. NOT_CONTROLLER on any other broker.

use std::rc::Rc;

use kafka_protocol::messages::alter_partition_request::AlterPartitionRequest;
use kafka_protocol::messages::alter_partition_response::{
    AlterPartitionResponse, PartitionData, TopicData,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::ResponseError;

use crate::limits::LEADER_REPORTS_MAX;
use crate::node::Node;

pub async fn handle(node: &Rc<Node>, request: &AlterPartitionRequest) -> AlterPartitionResponse {
    let refused =
        |error: ResponseError| AlterPartitionResponse::default().with_error_code(error.code());
    let Some(cluster) = node.cluster() else {
        return refused(ResponseError::NotController);
    };
    let broker = u32::try_from(request.broker_id.0).ok();
    let Some(broker) = broker.filter(|id| cluster.is_broker(*id)) else {
        return refused(ResponseError::BrokerIdNotRegistered);
    };
    let reports: Vec<_> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (*t.topic_id.as_bytes(), p.partition_index, p.leader_epoch))
        })
        .collect();
    if reports.len() > LEADER_REPORTS_MAX {
        return refused(ResponseError::InvalidRequest);
    }
    let outcomes = match node.record_leaders(broker, reports).await {
        Ok(outcomes) => outcomes,
        Err((error, _)) => return refused(error),
    };
    let mut outcomes = outcomes.into_iter();
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let error = outcomes.next().flatten();
                    let answer = PartitionData::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error.map_or(0, |e| e.code()));
                    if error.is_some() {
                        return answer.with_leader_id(BrokerId(-1)).with_leader_epoch(-1);
                    }
                    answer
                        .with_leader_id(request.broker_id)
                        .with_leader_epoch(p.leader_epoch)
                        .with_isr(p.new_isr.clone())
                })
                .collect();
            TopicData::default()
                .with_topic_id(t.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    AlterPartitionResponse::default().with_topics(topics)
}
