//! `spate topic`: create, list, describe, delete, alter configs and add partitions, as
//! `kafka-topics.sh` and `kafka-configs.sh` do.
//!
//! JSON output (`--format json`):
//! - `list`: `[{"topic", "partitions", "internal"}]`
//! - `describe`: `{"topic", "internal", "partitions": [{"partition", "leader", "leader_epoch",
//!   "replicas", "isr", "log_start", "log_end"}], "configs": [{"name", "value",
//!   "source"}]}` (`source` is `topic`, `broker` or `default`)
//! - `create`, `delete`, `alter-config`, `add-partitions`: `[{"topic", "error"}]`
//!   (`error` null on success)

use std::collections::{BTreeMap, BTreeSet};

use clap::Subcommand;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;
use serde_json::json;
use spate_net::client::Client;

use crate::client_args::{
    failure, key_value, print_json, print_table, report, say, ClientArgs, Format,
};
use spate_net::client::lookup::{offsets_at, topic_name, EARLIEST, LATEST};

/// Kafka's resource type for topics in the config APIs.
const RESOURCE_TOPIC: i8 = 2;

/// How long the broker may take to create or delete topics.
const ADMIN_TIMEOUT_MS: i32 = 30_000;

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Replication factor [default: the broker's; a single broker takes 1].
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        replicas: i16,
        /// A topic config, `key=value` (repeatable).
        #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List topics.
    List(ClientArgs),
    /// Partitions (leader, replicas, ISR, log start and end) and configs with their source.
    Describe {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set or remove topic configs.
    AlterConfig {
        name: String,
        /// `key=value` to set (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A key to return to its default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Grow a topic to a total number of partitions.
    AddPartitions {
        name: String,
        #[arg(long)]
        total: i32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub fn run(command: TopicCommand) -> Result<(), String> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replicas,
            configs,
            client,
        } => create(&client, &name, partitions, replicas, &configs),
        TopicCommand::List(client) => list(&client),
        TopicCommand::Describe { name, client } => describe(&client, &name),
        TopicCommand::Delete { names, client } => delete(&client, &names),
        TopicCommand::AlterConfig {
            name,
            set,
            delete,
            client,
        } => alter(&client, &name, &set, &delete),
        TopicCommand::AddPartitions {
            name,
            total,
            client,
        } => add_partitions(&client, &name, total),
    }
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn outcome(
    topic: &str,
    what: &str,
    code: i16,
    message: Option<&StrBytes>,
) -> (String, Option<String>) {
    let error = (code != 0).then(|| {
        let detail = message
            .map(|m| format!(": {}", m.as_str()))
            .unwrap_or_default();
        failure(&format!("could not {what} topic \"{topic}\"{detail}"), code)
    });
    (topic.to_string(), error)
}

fn create(
    args: &ClientArgs,
    name: &str,
    partitions: i32,
    replicas: i16,
    configs: &[String],
) -> Result<(), String> {
    let configs = configs
        .iter()
        .map(|c| key_value(c, "config"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = args.connect_controller()?;
    let version = client
        .version(ApiKey::CreateTopics, (2, 7))
        .map_err(|e| e.to_string())?;
    let topic = CreatableTopic::default()
        .with_name(topic_name(name))
        .with_num_partitions(partitions)
        .with_replication_factor(replicas)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(s(k))
                        .with_value(Some(s(v)))
                })
                .collect(),
        );
    let answered = client
        .send(
            version,
            &CreateTopicsRequest::default()
                .with_topics(vec![topic])
                .with_timeout_ms(ADMIN_TIMEOUT_MS),
        )
        .map_err(|e| e.to_string())?;
    let outcomes: Vec<_> = answered
        .topics
        .iter()
        .map(|t| {
            outcome(
                t.name.as_str(),
                "create",
                t.error_code,
                t.error_message.as_ref(),
            )
        })
        .collect();
    report(args.format, "created topic", "topic", &outcomes)
}

/// Metadata for `topics` (all of them for `None`), never creating one.
fn metadata(
    client: &mut Client,
    topics: Option<&[&str]>,
) -> Result<Vec<MetadataResponseTopic>, String> {
    let version = client
        .version(ApiKey::Metadata, (4, 12))
        .map_err(|e| e.to_string())?;
    let request = MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                .collect()
        }));
    Ok(client
        .send(version, &request)
        .map_err(|e| e.to_string())?
        .topics)
}

fn list(args: &ClientArgs) -> Result<(), String> {
    let mut client = args.connect()?;
    let mut topics: Vec<(String, usize, bool)> = metadata(&mut client, None)?
        .iter()
        .map(|t| {
            let name = t.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
            (name, t.partitions.len(), t.is_internal)
        })
        .collect();
    topics.sort();
    match args.format {
        Format::Json => print_json(&json!(topics
            .iter()
            .map(|(t, n, i)| json!({"topic": t, "partitions": n, "internal": i}))
            .collect::<Vec<_>>())),
        Format::Text => print_table(
            &["TOPIC", "PARTITIONS", "INTERNAL"],
            &topics
                .into_iter()
                .map(|(t, n, i)| {
                    vec![
                        t,
                        n.to_string(),
                        if i { "yes".into() } else { String::new() },
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

/// Kafka's config sources, as `describe` names them.
fn source_name(source: i8) -> &'static str {
    match source {
        1 => "topic",
        2..=4 => "broker",
        _ => "default",
    }
}

fn describe(args: &ClientArgs, name: &str) -> Result<(), String> {
    let mut client = args.connect()?;
    let topic = metadata(&mut client, Some(&[name]))?
        .into_iter()
        .next()
        .ok_or("the broker described no topic")?;
    if topic.error_code != 0 {
        return Err(failure(
            &format!("topic \"{name}\" is not available"),
            topic.error_code,
        ));
    }
    let partitions: BTreeSet<(String, i32)> = topic
        .partitions
        .iter()
        .map(|p| (name.to_string(), p.partition_index))
        .collect();
    let starts = offsets_at(&mut client, &partitions, EARLIEST)?;
    let ends = offsets_at(&mut client, &partitions, LATEST)?;
    let version = client
        .version(ApiKey::DescribeConfigs, (1, 4))
        .map_err(|e| e.to_string())?;
    let described = client
        .send(
            version,
            &DescribeConfigsRequest::default().with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(s(name))
                    .with_configuration_keys(None),
            ]),
        )
        .map_err(|e| e.to_string())?;
    let result = described
        .results
        .first()
        .ok_or("the broker described no configs")?;
    if result.error_code != 0 {
        return Err(failure(
            &format!("could not read the configs of topic \"{name}\""),
            result.error_code,
        ));
    }
    let configs: BTreeMap<String, (String, &'static str)> = result
        .configs
        .iter()
        .map(|c| {
            let value = c.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
            (c.name.to_string(), (value, source_name(c.config_source)))
        })
        .collect();
    let mut rows: Vec<&kafka_protocol::messages::metadata_response::MetadataResponsePartition> =
        topic.partitions.iter().collect();
    rows.sort_by_key(|p| p.partition_index);
    let ids = |v: &[kafka_protocol::messages::BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    let key = |p: i32| (name.to_string(), p);
    match args.format {
        Format::Json => print_json(&json!({
            "topic": name,
            "internal": topic.is_internal,
            "partitions": rows.iter().map(|p| json!({
                "partition": p.partition_index, "leader": p.leader_id.0, "leader_epoch": p.leader_epoch,
                "replicas": ids(&p.replica_nodes), "isr": ids(&p.isr_nodes),
                "log_start": starts.get(&key(p.partition_index)), "log_end": ends.get(&key(p.partition_index)),
            })).collect::<Vec<_>>(),
            "configs": configs.iter().map(|(k, (v, src))| json!({"name": k, "value": v, "source": src})).collect::<Vec<_>>(),
        })),
        Format::Text => {
            say(format!(
                "topic {name}: {} partition(s){}",
                rows.len(),
                if topic.is_internal { ", internal" } else { "" }
            ));
            let join = |v: Vec<i32>| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
            let offset = |m: &BTreeMap<(String, i32), i64>, p: i32| {
                m.get(&key(p)).map_or("-".to_string(), i64::to_string)
            };
            print_table(
                &[
                    "PARTITION",
                    "LEADER",
                    "REPLICAS",
                    "ISR",
                    "LOG-START",
                    "LOG-END",
                ],
                &rows
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition_index.to_string(),
                            p.leader_id.0.to_string(),
                            join(ids(&p.replica_nodes)),
                            join(ids(&p.isr_nodes)),
                            offset(&starts, p.partition_index),
                            offset(&ends, p.partition_index),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            say("");
            print_table(
                &["CONFIG", "VALUE", "SOURCE"],
                &configs
                    .iter()
                    .map(|(k, (v, src))| vec![k.clone(), v.clone(), src.to_string()])
                    .collect::<Vec<_>>(),
            );
        }
    }
    Ok(())
}

fn delete(args: &ClientArgs, names: &[String]) -> Result<(), String> {
    let mut client = args.connect_controller()?;
    let version = client
        .version(ApiKey::DeleteTopics, (1, 5))
        .map_err(|e| e.to_string())?;
    let answered = client
        .send(
            version,
            &DeleteTopicsRequest::default()
                .with_topic_names(names.iter().map(|n| topic_name(n)).collect())
                .with_timeout_ms(ADMIN_TIMEOUT_MS),
        )
        .map_err(|e| e.to_string())?;
    let outcomes: Vec<_> = answered
        .responses
        .iter()
        .map(|r| {
            let topic = r.name.as_ref().map(|n| n.to_string()).unwrap_or_default();
            outcome(&topic, "delete", r.error_code, r.error_message.as_ref())
        })
        .collect();
    report(args.format, "deleted topic", "topic", &outcomes)
}

fn alter(args: &ClientArgs, name: &str, set: &[String], delete: &[String]) -> Result<(), String> {
    if set.is_empty() && delete.is_empty() {
        return Err("nothing to change: give --set key=value or --delete key".into());
    }
    // IncrementalAlterConfigs operations.
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let mut configs = Vec::new();
    for (k, v) in set
        .iter()
        .map(|c| key_value(c, "config"))
        .collect::<Result<Vec<_>, _>>()?
    {
        configs.push(
            AlterableConfig::default()
                .with_name(s(&k))
                .with_config_operation(SET)
                .with_value(Some(s(&v))),
        );
    }
    for k in delete {
        configs.push(
            AlterableConfig::default()
                .with_name(s(k))
                .with_config_operation(DELETE)
                .with_value(None),
        );
    }
    let mut client = args.connect_controller()?;
    let version = client
        .version(ApiKey::IncrementalAlterConfigs, (0, 1))
        .map_err(|e| e.to_string())?;
    let answered = client
        .send(
            version,
            &IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(s(name))
                    .with_configs(configs),
            ]),
        )
        .map_err(|e| e.to_string())?;
    let outcomes: Vec<_> = answered
        .responses
        .iter()
        .map(|r| {
            outcome(
                r.resource_name.as_str(),
                "alter the configs of",
                r.error_code,
                r.error_message.as_ref(),
            )
        })
        .collect();
    report(args.format, "altered topic", "topic", &outcomes)
}

fn add_partitions(args: &ClientArgs, name: &str, total: i32) -> Result<(), String> {
    let mut client = args.connect_controller()?;
    let version = client
        .version(ApiKey::CreatePartitions, (0, 3))
        .map_err(|e| e.to_string())?;
    let answered = client
        .send(
            version,
            &CreatePartitionsRequest::default()
                .with_topics(vec![CreatePartitionsTopic::default()
                    .with_name(topic_name(name))
                    .with_count(total)
                    .with_assignments(None)])
                .with_timeout_ms(ADMIN_TIMEOUT_MS),
        )
        .map_err(|e| e.to_string())?;
    let outcomes: Vec<_> = answered
        .results
        .iter()
        .map(|r| {
            outcome(
                r.name.as_str(),
                "add partitions to",
                r.error_code,
                r.error_message.as_ref(),
            )
        })
        .collect();
    report(args.format, "grew topic", "topic", &outcomes)
}
