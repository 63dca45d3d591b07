//! `spate cluster info`: the cluster id, its brokers and controller, and the API versions
//! the broker answering accepts.
//!
//! JSON output: `{"cluster_id", "controller_id", "brokers": [{"node_id", "host",
//! "port"}], "apis": [{"api", "min_version", "max_version"}]}`.

use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::ApiKey;
use serde_json::json;

use crate::client_args::{print_json, print_table, say, ClientArgs, Format};

pub fn info(args: &ClientArgs) -> Result<(), String> {
    let mut client = args.connect()?;
    let version = client
        .version(ApiKey::Metadata, (1, 12))
        .map_err(|e| e.to_string())?;
    let metadata = client
        .send(
            version,
            &MetadataRequest::default().with_topics(Some(Vec::new())),
        )
        .map_err(|e| e.to_string())?;
    let cluster_id = metadata
        .cluster_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let brokers: Vec<(i32, String, i32)> = metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.to_string(), b.port))
        .collect();
    let mut apis: Vec<(String, i16, i16)> = (0..=i16::MAX)
        .filter_map(|key| {
            let api = ApiKey::try_from(key).ok()?;
            let (min, max) = client.supported(api)?;
            Some((format!("{api:?}"), min, max))
        })
        .collect();
    apis.sort_by_key(|(name, _, _)| name.clone());
    match args.format {
        Format::Json => print_json(&json!({
            "cluster_id": cluster_id,
            "controller_id": metadata.controller_id.0,
            "brokers": brokers.iter().map(|(id, host, port)| json!({"node_id": id, "host": host, "port": port})).collect::<Vec<_>>(),
            "apis": apis.iter().map(|(api, min, max)| json!({"api": api, "min_version": min, "max_version": max})).collect::<Vec<_>>(),
        })),
        Format::Text => {
            say(format!(
                "cluster {cluster_id}, controller {}",
                metadata.controller_id.0
            ));
            let rows: Vec<Vec<String>> = brokers
                .iter()
                .map(|(id, host, port)| vec![id.to_string(), format!("{host}:{port}")])
                .collect();
            print_table(&["BROKER", "ADDRESS"], &rows);
            say("");
            let rows: Vec<Vec<String>> = apis
                .iter()
                .map(|(api, min, max)| vec![api.clone(), format!("{min}-{max}")])
                .collect();
            print_table(&["API", "VERSIONS"], &rows);
        }
    }
    Ok(())
}
