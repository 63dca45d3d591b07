//! DescribeCluster (key 60), versions 0–1: the brokers, the cluster id, the controller
//! (on a single broker, itself).

use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;

use super::metadata::brokers_and_controller;
use crate::node::Node;

pub fn handle(node: &Node) -> DescribeClusterResponse {
    let (brokers, controller) = brokers_and_controller(node);
    let brokers = brokers
        .into_iter()
        .map(|(id, host, port)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(node.catalog().cluster_id.clone()))
        .with_controller_id(BrokerId(controller))
        .with_brokers(brokers)
}
