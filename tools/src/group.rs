//! `spate group`: list, describe (committed offsets, log end, lag), delete, and reset the
//! committed offsets of consumer groups, as `kafka-consumer-groups.sh` does.
//!
//! JSON output (`--format json`):
//! - `list`: `[{"group", "state", "protocol_type"}]`
//! - `describe`: `{"group", "state", "protocol", "members": [{"member_id", "client_id",
//!   "host", "assignment": [{"topic", "partition"}]}], "offsets": [{"topic",
//!   "partition", "committed", "log_end", "lag", "member_id"}]}` (`committed` and `lag`
//!   are null without a commit)
//! - `delete`: `[{"group", "error"}]` (`error` null on success)
//! - `reset-offsets`: `{"group", "executed", "offsets": [{"topic", "partition",
//!   "current", "new"}]}`

use std::collections::{BTreeMap, BTreeSet};

use clap::{Args, Subcommand};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::{ApiKey, GroupId};
use kafka_protocol::protocol::StrBytes;
use serde_json::json;
use spate_net::client::Client;
use spate_net::group::consumer_protocol;

use crate::client_args::{failure, print_json, print_table, report, say, ClientArgs, Format};
use spate_net::client::lookup::{
    broker_addresses, commit_offsets, coordinator_of, metadata_of, offsets_at, partitions_of,
    EARLIEST, LATEST,
};

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List consumer groups and their states.
    List(ClientArgs),
    /// Members, assignments, and per partition the committed offset, log end and lag.
    Describe {
        group: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete groups that have no members, with their committed offsets.
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move a group's committed offsets. The group must have no active members.
    ResetOffsets(ResetArgs),
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    group: String,
    /// Topic whose partitions are reset (repeatable).
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    #[command(flatten)]
    target: Target,
    /// Commit the new offsets; without it, only print them (a dry run).
    #[arg(long)]
    execute: bool,
    /// Print the plan without committing (the default).
    #[arg(long, conflicts_with = "execute")]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Target {
    /// The log start of each partition.
    #[arg(long)]
    to_earliest: bool,
    /// The log end of each partition.
    #[arg(long)]
    to_latest: bool,
    /// This offset, clamped to each partition's log.
    #[arg(long, value_name = "N")]
    to_offset: Option<i64>,
    /// The committed offset moved by N (negative: back), clamped to the log.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
    /// The first offset at or after this time (RFC 3339, e.g. 2026-01-02T03:04:05Z).
    #[arg(long, value_name = "TIME")]
    to_datetime: Option<String>,
}

pub fn run(command: GroupCommand) -> Result<(), String> {
    match command {
        GroupCommand::List(client) => list(&client),
        GroupCommand::Describe { group, client } => describe(&client, &group),
        GroupCommand::Delete { groups, client } => delete(&client, &groups),
        GroupCommand::ResetOffsets(args) => reset(&args),
    }
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

/// A connection to `group`'s coordinator.
fn coordinator(args: &ClientArgs, group: &str) -> Result<Client, String> {
    coordinator_of(args.connect()?, group)
}

/// The groups one broker coordinates: (group, state, protocol type).
fn groups_of(client: &mut Client) -> Result<Vec<(String, String, String)>, String> {
    let version = client
        .version(ApiKey::ListGroups, (0, 4))
        .map_err(|e| e.to_string())?;
    let listed = client
        .send(version, &ListGroupsRequest::default())
        .map_err(|e| e.to_string())?;
    if listed.error_code != 0 {
        return Err(failure(
            &format!("could not list the groups of {}", client.address()),
            listed.error_code,
        ));
    }
    Ok(listed
        .groups
        .iter()
        .map(|g| {
            let state = if version >= 4 {
                g.group_state.to_string()
            } else {
                String::new()
            };
            (g.group_id.to_string(), state, g.protocol_type.to_string())
        })
        .collect())
}

/// Every broker's groups: each broker lists those it coordinates, as in Kafka. A broker
/// that cannot be asked is reported on standard error, and the others' groups are
/// listed; if none can be, that is the error.
fn list(args: &ClientArgs) -> Result<(), String> {
    let mut client = args.connect()?;
    let metadata = metadata_of(&mut client, &[])?;
    let mut groups = Vec::new();
    let mut failures = Vec::new();
    let addresses = broker_addresses(&metadata);
    for address in addresses.values() {
        let listed = if address == client.address() {
            groups_of(&mut client)
        } else {
            client
                .connect_like(address)
                .map_err(|e| e.to_string())
                .and_then(|mut other| groups_of(&mut other))
        };
        match listed {
            Ok(listed) => groups.extend(listed),
            Err(why) => failures.push(why),
        }
    }
    if addresses.is_empty() {
        groups.extend(groups_of(&mut client)?);
    } else if failures.len() == addresses.len() {
        return Err(failures.join("; "));
    }
    for why in &failures {
        eprintln!("warning: groups left out: {why}");
    }
    groups.sort();
    match args.format {
        Format::Json => print_json(&json!(groups
            .iter()
            .map(|(g, s, t)| json!({"group": g, "state": s, "protocol_type": t}))
            .collect::<Vec<_>>())),
        Format::Text => print_table(
            &["GROUP", "STATE", "PROTOCOL-TYPE"],
            &groups
                .into_iter()
                .map(|(g, s, t)| vec![g, s, t])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

/// A member's partitions, from its consumer-protocol assignment; empty if it is not one.
pub(crate) fn assigned_partitions(assignment: &[u8]) -> Vec<(String, i32)> {
    consumer_protocol::assignment_partitions(assignment).unwrap_or_default()
}

fn describe_group(client: &mut Client, group: &str) -> Result<DescribedGroup, String> {
    let version = client
        .version(ApiKey::DescribeGroups, (0, 5))
        .map_err(|e| e.to_string())?;
    let described = client
        .send(
            version,
            &DescribeGroupsRequest::default().with_groups(vec![group_id(group)]),
        )
        .map_err(|e| e.to_string())?;
    let described = described
        .groups
        .into_iter()
        .next()
        .ok_or("the broker described no group")?;
    if described.error_code != 0 {
        return Err(failure(
            &format!("could not describe group \"{group}\""),
            described.error_code,
        ));
    }
    Ok(described)
}

/// The group's committed offsets, by (topic, partition).
fn committed(client: &mut Client, group: &str) -> Result<BTreeMap<(String, i32), i64>, String> {
    let version = client
        .version(ApiKey::OffsetFetch, (2, 7))
        .map_err(|e| e.to_string())?;
    let fetched = client
        .send(
            version,
            &OffsetFetchRequest::default()
                .with_group_id(group_id(group))
                .with_topics(None),
        )
        .map_err(|e| e.to_string())?;
    if fetched.error_code != 0 {
        return Err(failure(
            &format!("could not fetch the offsets of group \"{group}\""),
            fetched.error_code,
        ));
    }
    let mut out = BTreeMap::new();
    for topic in &fetched.topics {
        for p in &topic.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.insert(
                    (topic.name.to_string(), p.partition_index),
                    p.committed_offset,
                );
            }
        }
    }
    Ok(out)
}

/// A member: id, client id, host, and its assigned partitions.
type MemberInfo = (String, String, String, Vec<(String, i32)>);

/// A partition's line: topic, partition, committed offset, log end, owning member.
type OffsetRow = (String, i32, Option<i64>, i64, Option<usize>);

fn describe(args: &ClientArgs, group: &str) -> Result<(), String> {
    let mut client = coordinator(args, group)?;
    let described = describe_group(&mut client, group)?;
    let committed = committed(&mut client, group)?;
    let mut owner: BTreeMap<(String, i32), usize> = BTreeMap::new();
    let members: Vec<MemberInfo> = described
        .members
        .iter()
        .map(|m| {
            let partitions = if described.protocol_type.as_str() == "consumer" {
                assigned_partitions(&m.member_assignment)
            } else {
                Vec::new()
            };
            (
                m.member_id.to_string(),
                m.client_id.to_string(),
                m.client_host.to_string(),
                partitions,
            )
        })
        .collect();
    for (i, (_, _, _, partitions)) in members.iter().enumerate() {
        for tp in partitions {
            owner.insert(tp.clone(), i);
        }
    }
    let partitions: BTreeSet<(String, i32)> =
        committed.keys().chain(owner.keys()).cloned().collect();
    let ends = if partitions.is_empty() {
        BTreeMap::new()
    } else {
        offsets_at(&mut client, &partitions, LATEST)?
    };
    let rows: Vec<OffsetRow> = partitions
        .iter()
        .map(|tp| {
            (
                tp.0.clone(),
                tp.1,
                committed.get(tp).copied(),
                ends.get(tp).copied().unwrap_or(-1),
                owner.get(tp).copied(),
            )
        })
        .collect();
    let lag = |c: Option<i64>, end: i64| c.map(|c| (end - c).max(0));
    match args.format {
        Format::Json => print_json(&json!({
            "group": group,
            "state": described.group_state.as_str(),
            "protocol": described.protocol_data.as_str(),
            "members": members.iter().map(|(id, client_id, host, ps)| json!({
                "member_id": id, "client_id": client_id, "host": host,
                "assignment": ps.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "offsets": rows.iter().map(|(t, p, c, end, o)| json!({
                "topic": t, "partition": p, "committed": c, "log_end": end, "lag": lag(*c, *end),
                "member_id": o.map(|i| members[i].0.clone()),
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            say(format!(
                "group {group}: {}, {} member(s){}",
                described.group_state.as_str(),
                members.len(),
                if described.protocol_data.is_empty() {
                    String::new()
                } else {
                    format!(", protocol {}", described.protocol_data.as_str())
                }
            ));
            let dash = || "-".to_string();
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|(t, p, c, end, o)| {
                    let member = o.map(|i| &members[i]);
                    vec![
                        t.clone(),
                        p.to_string(),
                        c.map_or_else(dash, |c| c.to_string()),
                        end.to_string(),
                        lag(*c, *end).map_or_else(dash, |l| l.to_string()),
                        member.map_or_else(dash, |m| m.0.clone()),
                        member.map_or_else(dash, |m| m.2.clone()),
                        member.map_or_else(dash, |m| m.1.clone()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TOPIC",
                    "PARTITION",
                    "CURRENT-OFFSET",
                    "LOG-END-OFFSET",
                    "LAG",
                    "CONSUMER-ID",
                    "HOST",
                    "CLIENT-ID",
                ],
                &table,
            );
        }
    }
    Ok(())
}

fn delete(args: &ClientArgs, groups: &[String]) -> Result<(), String> {
    let mut results = Vec::new();
    for group in groups {
        let mut client = coordinator(args, group)?;
        let version = client
            .version(ApiKey::DeleteGroups, (0, 2))
            .map_err(|e| e.to_string())?;
        let deleted = client
            .send(
                version,
                &DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]),
            )
            .map_err(|e| e.to_string())?;
        let code = deleted.results.first().map_or(0, |r| r.error_code);
        results.push((
            group.clone(),
            (code != 0).then(|| failure(&format!("could not delete group \"{group}\""), code)),
        ));
    }
    report(args.format, "deleted group", "group", &results)
}

/// Milliseconds since the epoch of an RFC 3339 time (`2026-01-02T03:04:05Z`, with
/// optional fraction and `±HH:MM` offset).
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let bad = || None::<i64>;
    let (date, rest) = text.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let zone_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    let mut t = time.splitn(3, ':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let seconds: f64 = t.next().unwrap_or("0").parse().ok()?;
    let offset_minutes = match zone {
        "" | "Z" | "z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (oh, om) = z[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?)
        }
    };
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || !(0.0..61.0).contains(&seconds)
    {
        return bad();
    }
    // Days from 1970-01-01 to y-m-day (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms =
        ((days * 86_400 + hh * 3600 + mm * 60 - offset_minutes * 60) as f64 + seconds) * 1000.0;
    Some(ms.round() as i64)
}

fn reset(args: &ResetArgs) -> Result<(), String> {
    let group = &args.group;
    let mut client = coordinator(&args.client, group)?;
    let described = describe_group(&mut client, group)?;
    let state = described.group_state.as_str();
    if !matches!(state, "Empty" | "Dead") {
        return Err(format!(
            "group \"{group}\" has {} active member(s) (state {state}); stop them before resetting its offsets",
            described.members.len()
        ));
    }
    let partitions = partitions_of(&mut client, &args.topics)?;
    let current = committed(&mut client, group)?;
    let starts = offsets_at(&mut client, &partitions, EARLIEST)?;
    let ends = offsets_at(&mut client, &partitions, LATEST)?;
    let clamp = |tp: &(String, i32), offset: i64| offset.clamp(starts[tp], ends[tp]);
    let target = &args.target;
    let new: BTreeMap<(String, i32), i64> = if target.to_earliest {
        starts.clone()
    } else if target.to_latest {
        ends.clone()
    } else if let Some(n) = target.to_offset {
        partitions
            .iter()
            .map(|tp| (tp.clone(), clamp(tp, n)))
            .collect()
    } else if let Some(shift) = target.shift_by {
        partitions
            .iter()
            .map(|tp| {
                let from = current.get(tp).copied().unwrap_or(starts[tp]);
                (tp.clone(), clamp(tp, from.saturating_add(shift)))
            })
            .collect()
    } else if let Some(time) = &target.to_datetime {
        let ms = parse_rfc3339(time).ok_or_else(|| {
            format!("invalid time \"{time}\": expected RFC 3339, e.g. 2026-01-02T03:04:05Z")
        })?;
        let at = offsets_at(&mut client, &partitions, ms)?;
        // No record at or after the time: the log end.
        partitions
            .iter()
            .map(|tp| (tp.clone(), if at[tp] < 0 { ends[tp] } else { at[tp] }))
            .collect()
    } else {
        unreachable!("clap requires one target")
    };
    if args.execute {
        commit(&mut client, group, &new)?;
    }
    match args.client.format {
        Format::Json => print_json(&json!({
            "group": group,
            "executed": args.execute,
            "offsets": new.iter().map(|((t, p), o)| json!({
                "topic": t, "partition": p, "current": current.get(&(t.clone(), *p)), "new": o,
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            let rows: Vec<Vec<String>> = new
                .iter()
                .map(|((t, p), o)| {
                    let now = current
                        .get(&(t.clone(), *p))
                        .map_or("-".to_string(), |c| c.to_string());
                    vec![t.clone(), p.to_string(), now, o.to_string()]
                })
                .collect();
            print_table(
                &["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"],
                &rows,
            );
            if !args.execute {
                say("dry run: nothing committed (add --execute to commit these offsets)");
            }
        }
    }
    Ok(())
}

/// Commits `offsets` for `group` as a client managing its own assignment.
fn commit(
    client: &mut Client,
    group: &str,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<(), String> {
    match commit_offsets(client, group, -1, "", offsets)? {
        0 => Ok(()),
        code => Err(failure(
            &format!("could not commit the offsets of group \"{group}\""),
            code,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_convert_to_epoch_milliseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-22T10:00:00Z"),
            Some(1_795_341_600_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T12:00:00.5+02:00"),
            Some(1_795_341_600_500)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59-01:00"),
            Some(951_872_399_000)
        );
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn consumer_assignments_parse_and_bad_ones_are_empty() {
        let mut bytes = vec![
            0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 5,
        ];
        assert_eq!(
            assigned_partitions(&bytes),
            vec![("t".to_string(), 3), ("t".to_string(), 5)]
        );
        bytes.truncate(15);
        assert_eq!(assigned_partitions(&bytes), vec![]);
        assert_eq!(assigned_partitions(&[]), vec![]);
    }
}
