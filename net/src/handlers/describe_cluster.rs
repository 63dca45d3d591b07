//! DescribeCluster (key 60), versions 0–1: this broker, the cluster id, the controller.

use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;

use crate::node::Node;

pub fn handle(node: &Node) -> DescribeClusterResponse {
    let advertise = node.config.advertise;
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(node.catalog().cluster_id.clone()))
        .with_controller_id(BrokerId(node.config.node_id))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(node.config.node_id))
            .with_host(StrBytes::from_string(advertise.ip().to_string()))
            .with_port(i32::from(advertise.port()))])
}
