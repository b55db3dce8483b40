//! `carmine osd perf`: one OSD's perf counters, read from the OSD's own admin service
//! (`OsdAdmin.PerfCounters`, served by its agent), shown per shard.
//!
//! Counter names `shard<N>.<name>` belong to shard N; every other name is OSD-wide. The plain
//! table has one row per shard and one column per counter name (sorted; `-` where a shard
//! lacks one), the OSD-wide counters below it; JSON is
//! `{"osd": id|null, "admin_addr": "...", "metrics_addr": "ip:port"|null, "shards": [{"shard":
//! 0, "<name>": value, ..}, ..], "other": {"<name>": value, ..}}` (`metrics_addr`: where the
//! OSD serves Prometheus metrics, as the monitor knows it; null when not served or addressed
//! by `--admin-addr`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use carmine_proto::tls::ClientTls;
use carmine_proto::v1::{self, osd_admin_client::OsdAdminClient};
use serde_json::{json, Map, Value};
use tonic::{Code, Request};

use crate::args::Format;
use crate::output::Out;
use crate::run::CliError;

/// Counters split into per-shard and OSD-wide ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PerfTable {
    /// shard → counter name (without the `shard<N>.` prefix) → value.
    pub shards: BTreeMap<u32, BTreeMap<String, u64>>,
    /// Counters without a shard prefix.
    pub other: BTreeMap<String, u64>,
}

impl PerfTable {
    /// Splits `counters` by their `shard<N>.` prefix.
    pub fn from_counters(counters: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut t = PerfTable::default();
        for (name, value) in counters {
            let shard = name
                .strip_prefix("shard")
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(n, rest)| Some((n.parse::<u32>().ok()?, rest)))
                .filter(|(_, rest)| !rest.is_empty());
            match shard {
                Some((n, rest)) => {
                    t.shards
                        .entry(n)
                        .or_default()
                        .insert(rest.to_string(), value);
                }
                None => {
                    t.other.insert(name, value);
                }
            }
        }
        t
    }

    /// Every per-shard counter name, sorted.
    fn columns(&self) -> BTreeSet<&str> {
        self.shards
            .values()
            .flat_map(|c| c.keys().map(String::as_str))
            .collect()
    }
}

/// Fetches the counters of the OSD admin service at `addr` with `token`.
pub async fn fetch(tls: &ClientTls, addr: &str, token: &str) -> Result<PerfTable, CliError> {
    let unreachable = |reason: String| CliError::Unreachable {
        addr: format!("{addr} (OSD admin service)"),
        reason,
    };
    let endpoint = tls.endpoint(addr)?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| {
            let mut reason = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                reason = format!("{reason}: {s}");
                src = s.source();
            }
            unreachable(reason)
        })?;
    let mut req = Request::new(v1::Empty {});
    req.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::auth::admin_token_osd_bearer(token)
            .map_err(|e| CliError::Other(e.to_string()))?,
    );
    req.set_timeout(Duration::from_secs(10));
    let reply = OsdAdminClient::new(channel)
        .perf_counters(req)
        .await
        .map_err(|s| match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => CliError::Refused(format!(
                "OSD admin service at {addr}: {}; the OSD checks admins against the keyring it fetched from the monitor",
                s.message()
            )),
            Code::Unavailable => unreachable(s.message().to_string()),
            _ => CliError::Other(format!(
                "OSD admin service at {addr}: {:?}: {}",
                s.code(),
                s.message()
            )),
        })?
        .into_inner();
    Ok(PerfTable::from_counters(
        reply.counters.into_iter().map(|c| (c.name, c.value)),
    ))
}

/// Renders `t` for OSD `osd` (None when addressed by `--admin-addr`), whose metrics are
/// served on `metrics` (JSON only).
pub fn render(
    o: &Out,
    osd: Option<u32>,
    addr: &str,
    metrics: Option<&str>,
    t: &PerfTable,
) -> String {
    if o.format == Format::Json {
        let shards: Vec<Value> = t
            .shards
            .iter()
            .map(|(n, c)| {
                let mut m = Map::new();
                m.insert("shard".into(), json!(n));
                for (k, v) in c {
                    m.insert(k.clone(), json!(v));
                }
                Value::Object(m)
            })
            .collect();
        let mut s = serde_json::to_string_pretty(&json!({
            "osd": osd,
            "admin_addr": addr,
            "metrics_addr": metrics,
            "shards": shards,
            "other": t.other,
        }))
        .unwrap_or_default();
        s.push('\n');
        return s;
    }
    let mut out = String::new();
    let cols: Vec<&str> = t.columns().into_iter().collect();
    if !t.shards.is_empty() {
        let mut rows: Vec<Vec<String>> = vec![std::iter::once("shard".to_string())
            .chain(cols.iter().map(|c| c.to_string()))
            .collect()];
        for (n, c) in &t.shards {
            rows.push(
                std::iter::once(n.to_string())
                    .chain(
                        cols.iter()
                            .map(|k| c.get(*k).map_or("-".to_string(), u64::to_string)),
                    )
                    .collect(),
            );
        }
        let widths: Vec<usize> = (0..=cols.len())
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    if i == 0 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
    }
    if !t.other.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        let w = t.other.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &t.other {
            let _ = writeln!(out, "{k:<w$}  {v}");
        }
    }
    if out.is_empty() {
        let who = osd.map_or_else(|| addr.to_string(), |id| format!("osd.{id}"));
        let _ = writeln!(out, "{who} publishes no counters");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_by_shard_prefix_and_renders_a_table() {
        let t = PerfTable::from_counters(
            [
                ("shard1.ops", 7),
                ("shard0.ops", 12),
                ("shard0.lat_p99_us", 250),
                ("shard10.ops", 1),
                ("msgr.conns", 3),
                ("shardx.ops", 9),
                ("shard2.", 4),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        assert_eq!(t.shards.keys().copied().collect::<Vec<_>>(), [0, 1, 10]);
        assert_eq!(t.shards[&0]["lat_p99_us"], 250);
        assert_eq!(
            t.other.keys().map(String::as_str).collect::<Vec<_>>(),
            ["msgr.conns", "shard2.", "shardx.ops"]
        );
        let text = render(
            &Out {
                format: Format::Plain,
            },
            Some(3),
            "x",
            None,
            &t,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "shard  lat_p99_us  ops");
        assert_eq!(lines[1], "0             250   12");
        assert_eq!(lines[2], "1               -    7");
        assert_eq!(lines[3], "10              -    1");
        assert_eq!(lines[4], "");
        assert_eq!(lines[5], "msgr.conns  3");
    }
}
