//! DescribeConfigs (key 32), versions 1–4. Topics: every topic config (or the keys
//! asked for) with its value and source, an override (TOPIC_CONFIG) or the broker
//! default (DEFAULT_CONFIG), with synonyms and documentation when asked. The broker:
//! its settings, read-only (they come from `spate serve`'s flags and file).

use std::rc::Rc;

use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::node::Node;
use crate::topic_config::{self, ConfigType, TOPIC_CONFIGS};

/// Kafka's resource types.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// One config as described.
struct Described {
    name: String,
    value: String,
    source: i8,
    kind: ConfigType,
    read_only: bool,
    doc: &'static str,
    /// (name, value, source), most specific first.
    synonyms: Vec<(String, String, i8)>,
}

pub fn handle(
    node: &Rc<Node>,
    request: &DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match describe(node, resource) {
                Ok(configs) => result.with_configs(
                    configs
                        .into_iter()
                        .map(|c| encode(c, request, version))
                        .collect(),
                ),
                Err((error, message)) => result
                    .with_error_code(error.code())
                    .with_error_message(Some(StrBytes::from_string(message))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn describe(
    node: &Node,
    resource: &DescribeConfigsResource,
) -> Result<Vec<Described>, (ResponseError, String)> {
    let name = resource.resource_name.as_str();
    let configs = match resource.resource_type {
        RESOURCE_TOPIC => topic(node, name)?,
        RESOURCE_BROKER => {
            if !name.is_empty() && name != node.config.node_id.to_string() {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("this is broker {}, not broker {name}", node.config.node_id),
                ));
            }
            broker(node)
        }
        other => {
            return Err((
                ResponseError::InvalidRequest,
                format!("resource type {other} has no configs here (topics: 2, brokers: 4)"),
            ))
        }
    };
    // Keys asked for that do not exist are left out, as Kafka does.
    Ok(match &resource.configuration_keys {
        Some(keys) => configs
            .into_iter()
            .filter(|c| keys.iter().any(|k| k.as_str() == c.name))
            .collect(),
        None => configs,
    })
}

fn topic(node: &Node, name: &str) -> Result<Vec<Described>, (ResponseError, String)> {
    let catalog = node.catalog();
    let record = catalog.topics.get(name).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("no topic '{name}'"),
        )
    })?;
    Ok(TOPIC_CONFIGS
        .iter()
        .map(|def| {
            let default = topic_config::default_value(def.name).unwrap_or_default();
            let default_synonym = (def.broker_name.to_string(), default.clone(), SOURCE_DEFAULT);
            let set = record.configs.iter().find(|(k, _)| k == def.name);
            let (value, source, synonyms) = match set {
                Some((_, value)) => (
                    value.clone(),
                    SOURCE_TOPIC,
                    vec![
                        (def.name.to_string(), value.clone(), SOURCE_TOPIC),
                        default_synonym,
                    ],
                ),
                None => (default, SOURCE_DEFAULT, vec![default_synonym]),
            };
            Described {
                name: def.name.to_string(),
                value,
                source,
                kind: def.kind,
                read_only: false,
                doc: def.doc,
                synonyms,
            }
        })
        .collect())
}

fn broker(node: &Node) -> Vec<Described> {
    let config = &node.config;
    let fixed = |name: &str, value: String, kind: ConfigType, doc: &'static str| Described {
        name: name.to_string(),
        synonyms: vec![(name.to_string(), value.clone(), SOURCE_STATIC_BROKER)],
        value,
        source: SOURCE_STATIC_BROKER,
        kind,
        read_only: true,
        doc,
    };
    let mut configs = vec![
        fixed(
            "node.id",
            config.node_id.to_string(),
            ConfigType::Int,
            "This broker's id.",
        ),
        fixed(
            "broker.id",
            config.node_id.to_string(),
            ConfigType::Int,
            "This broker's id.",
        ),
        fixed(
            "listeners",
            format!("PLAINTEXT://{}", config.listen),
            ConfigType::List,
            "Where the broker listens.",
        ),
        fixed(
            "advertised.listeners",
            format!("PLAINTEXT://{}", config.advertise),
            ConfigType::List,
            "What Metadata tells clients to connect to.",
        ),
        fixed(
            "log.dirs",
            config.data_dir.display().to_string(),
            ConfigType::String,
            "The data directory.",
        ),
        fixed(
            "num.partitions",
            config.default_partitions.to_string(),
            ConfigType::Int,
            "Partitions of a topic created without a count.",
        ),
        fixed(
            "auto.create.topics.enable",
            config.auto_create_topics.to_string(),
            ConfigType::Boolean,
            "Whether Metadata creates topics it is asked about.",
        ),
        fixed(
            "socket.request.max.bytes",
            crate::limits::REQUEST_FRAME_BYTES_MAX.to_string(),
            ConfigType::Int,
            "The largest request accepted.",
        ),
    ];
    // The broker-wide defaults of topic configs.
    configs.extend(TOPIC_CONFIGS.iter().map(|def| {
        let value = topic_config::default_value(def.name).unwrap_or_default();
        Described {
            name: def.broker_name.to_string(),
            synonyms: vec![(def.broker_name.to_string(), value.clone(), SOURCE_DEFAULT)],
            value,
            source: SOURCE_DEFAULT,
            kind: def.kind,
            read_only: true,
            doc: def.doc,
        }
    }));
    configs.sort_by(|a, b| a.name.cmp(&b.name));
    configs.dedup_by(|a, b| a.name == b.name);
    configs
}

/// Fields are set only where `version` has them: the codec refuses to encode a field a
/// version lacks.
fn encode(
    c: Described,
    request: &DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResourceResult {
    let mut result = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(c.name))
        .with_value(Some(StrBytes::from_string(c.value)))
        .with_read_only(c.read_only)
        .with_config_source(c.source);
    if request.include_synonyms {
        result = result.with_synonyms(
            c.synonyms
                .into_iter()
                .map(|(name, value, source)| {
                    DescribeConfigsSynonym::default()
                        .with_name(StrBytes::from_string(name))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_source(source)
                })
                .collect(),
        );
    }
    if version >= 3 {
        let doc = request
            .include_documentation
            .then(|| StrBytes::from_static_str(c.doc));
        result = result
            .with_config_type(c.kind as i8)
            .with_documentation(doc);
    }
    result
}
