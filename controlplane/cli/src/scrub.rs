//! `carmine pg scrub <pgid>`: PG ids, the scrub call to the PG's primary (its own admin
//! service, `OsdAdmin.ScrubPg`) and the rendering of its result.
//!
//! A PG id is `<pool>.<pg>` as `pg dump` prints it: the pool's id (or name) and the PG number
//! in hex. `pg scrub` finds the primary in the current map and its admin address from the
//! monitor; the primary compares every acting member's copy of every object and answers with
//! the inconsistent ones. Inconsistent objects make the command exit with
//! [`CliError::Inconsistent`] (code 6), its report still on stdout.
//!
//! `pg ls` (in [`crate::pg`]) marks the PGs whose last scrub found objects that differ.

use std::fmt::Write as _;
use std::time::Duration;

use carmine_placement::{ClusterMap, Pool};
use carmine_proto::tls::ClientTls;
use carmine_proto::v1::{self, osd_admin_client::OsdAdminClient};
use serde_json::{json, Value};
use tonic::{Code, Request};

use crate::args::Format;
use crate::output::Out;
use crate::run::CliError;

/// How long a scrub may take (a big PG on busy OSDs is read in full on every member).
pub const SCRUB_TIMEOUT: Duration = Duration::from_secs(3600);

/// Parses `<pool>.<pg hex>` against `map`: the pool by id, else by name; the PG must exist.
pub fn parse_pgid<'m>(map: &'m ClusterMap, s: &str) -> Result<(&'m Pool, u32), CliError> {
    let bad = |why: &str| CliError::Rejected(format!("bad pg id {s:?}: {why} (e.g. 1.1a)"));
    let (pool, pg) = s
        .rsplit_once('.')
        .ok_or_else(|| bad("expected <pool>.<pg in hex>"))?;
    let pg = u32::from_str_radix(pg, 16).map_err(|_| bad("the pg number is not hex"))?;
    let p = pool
        .parse::<u32>()
        .ok()
        .and_then(|id| map.pools.get(&id))
        .or_else(|| map.pool_by_name(pool))
        .ok_or_else(|| CliError::Rejected(format!("no pool with id or name {pool:?}")))?;
    if pg >= p.pg_num {
        return Err(CliError::Rejected(format!(
            "pool {} ({}) has {} pgs: no pg {pg:x}",
            p.name, p.id, p.pg_num
        )));
    }
    Ok((p, pg))
}

fn pgid(pool: u32, pg: u32) -> String {
    format!("{pool}.{pg:x}")
}

/// Asks the OSD admin service at `addr` to scrub `pool`.`pg` (it must be the PG's primary).
pub async fn scrub(
    tls: &ClientTls,
    addr: &str,
    token: &str,
    pool: u32,
    pg: u32,
) -> Result<v1::ScrubPgReply, CliError> {
    let unreachable = |reason: String| CliError::Unreachable {
        addr: format!("{addr} (OSD admin service)"),
        reason,
    };
    let channel = tls
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut req = Request::new(v1::ScrubPgRequest { pool, pg });
    req.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::auth::admin_token_osd_bearer(token)
            .map_err(|e| CliError::Other(e.to_string()))?,
    );
    req.set_timeout(SCRUB_TIMEOUT);
    let r = OsdAdminClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .scrub_pg(req)
        .await
        .map_err(|s| {
            let what = format!("OSD admin service at {addr}: {}", s.message());
            match s.code() {
                Code::Unauthenticated | Code::PermissionDenied => CliError::Refused(format!(
                    "{what}; the OSD checks admins against the keyring it fetched from the monitor"
                )),
                Code::Unavailable => unreachable(s.message().to_string()),
                Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument => {
                    CliError::Rejected(what)
                }
                _ => CliError::Other(format!("{what} ({:?})", s.code())),
            }
        })?;
    Ok(r.into_inner())
}

fn problem_name(p: i32) -> &'static str {
    match v1::ScrubProblem::try_from(p).unwrap_or(v1::ScrubProblem::Unspecified) {
        v1::ScrubProblem::Missing => "missing",
        v1::ScrubProblem::Extra => "extra",
        v1::ScrubProblem::ReadError => "read_error",
        v1::ScrubProblem::Mismatch => "mismatch",
        v1::ScrubProblem::Unspecified => "unknown",
    }
}

fn osds(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| format!("osd.{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders a scrub's result; `Err(CliError::Inconsistent)` (with the same text) when it found
/// inconsistent objects.
pub fn render(o: &Out, primary: u32, r: &v1::ScrubPgReply) -> Result<String, CliError> {
    let id = pgid(r.pool, r.pg);
    let text = if o.format == Format::Json {
        let v = json!({
            "pgid": id,
            "primary": primary,
            "epoch": r.epoch,
            "acting": r.acting,
            "objects": r.objects,
            "consistent": r.inconsistent.is_empty(),
            "inconsistent": r.inconsistent.iter().map(|i| json!({
                "name": i.name,
                "auth_osds": i.auth_osds,
                "problems": i.problems.iter().map(|p| json!({
                    "osd": p.osd,
                    "problem": problem_name(p.problem),
                    "detail": p.detail,
                })).collect::<Vec<Value>>(),
            })).collect::<Vec<Value>>(),
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    } else {
        let mut t = format!(
            "pg {id} scrubbed by osd.{primary} (epoch {}, acting [{}]): {} objects, ",
            r.epoch,
            osds(&r.acting),
            r.objects
        );
        if r.inconsistent.is_empty() {
            t.push_str("consistent\n");
        } else {
            let _ = writeln!(t, "{} inconsistent", r.inconsistent.len());
            for i in &r.inconsistent {
                let auth = if i.auth_osds.is_empty() {
                    "no readable copy".to_string()
                } else {
                    format!("authoritative: {}", osds(&i.auth_osds))
                };
                let _ = writeln!(t, "  {} ({auth})", i.name);
                for p in &i.problems {
                    let _ = writeln!(t, "    osd.{}: {}", p.osd, p.detail);
                }
            }
        }
        t
    };
    if r.inconsistent.is_empty() {
        Ok(text)
    } else {
        Err(CliError::Inconsistent {
            pg: id,
            objects: r.inconsistent.len(),
            output: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_placement::Osd;

    fn map() -> ClusterMap {
        let mut m = ClusterMap {
            epoch: 4,
            ..Default::default()
        };
        for id in 0..2 {
            m.osds.insert(
                id,
                Osd {
                    id,
                    uuid: format!("u{id}"),
                    host: format!("h{id}"),
                    public_addr: String::new(),
                    cluster_addr: String::new(),
                    shard_count: 1,
                    shard_ports: vec![1],
                    up: true,
                    in_: true,
                    weight: 1.0,
                    up_from: 0,
                },
            );
        }
        for (id, name, size, min_size) in [(1, "rbd", 3, 2), (7, "data", 2, 1), (8, "one", 3, 3)] {
            m.pools.insert(
                id,
                Pool {
                    id,
                    name: name.into(),
                    size,
                    min_size,
                    pg_num: 32,
                },
            );
        }
        m
    }

    #[test]
    fn pg_ids_parse_by_pool_id_or_name_with_a_hex_pg() {
        let m = map();
        let (p, pg) = parse_pgid(&m, "1.1a").unwrap();
        assert_eq!((p.id, pg), (1, 26));
        let (p, pg) = parse_pgid(&m, "data.f").unwrap();
        assert_eq!((p.id, pg), (7, 15));
        for bad in ["1", "1.zz", "9.1", "nope.1", "1.20", ".1", "1."] {
            assert!(
                matches!(parse_pgid(&m, bad), Err(CliError::Rejected(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_inconsistent_scrub_is_an_error_that_keeps_its_report() {
        let out = Out {
            format: Format::Plain,
        };
        let mut r = v1::ScrubPgReply {
            pool: 1,
            pg: 26,
            epoch: 9,
            acting: vec![0, 2, 1],
            objects: 12,
            inconsistent: vec![],
        };
        let t = render(&out, 0, &r).unwrap();
        assert_eq!(
            t,
            "pg 1.1a scrubbed by osd.0 (epoch 9, acting [osd.0, osd.2, osd.1]): 12 objects, consistent\n"
        );
        r.inconsistent.push(v1::InconsistentObject {
            name: "victim".into(),
            auth_osds: vec![0, 1],
            problems: vec![v1::ScrubObjectProblem {
                osd: 2,
                problem: v1::ScrubProblem::ReadError.into(),
                detail: "read error: checksum mismatch".into(),
            }],
        });
        match render(&out, 0, &r) {
            Err(e @ CliError::Inconsistent { .. }) => {
                assert_eq!(e.exit_code(), 6);
                let text = e.stdout().unwrap();
                assert!(text.contains("12 objects, 1 inconsistent"), "{text}");
                assert!(
                    text.contains("  victim (authoritative: osd.0, osd.1)"),
                    "{text}"
                );
                assert!(
                    text.contains("    osd.2: read error: checksum mismatch"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        let json = Out {
            format: Format::Json,
        };
        let Err(e) = render(&json, 0, &r) else {
            panic!("inconsistent")
        };
        let v: Value = serde_json::from_str(e.stdout().unwrap()).unwrap();
        assert_eq!(v["consistent"], false);
        assert_eq!(v["inconsistent"][0]["problems"][0]["problem"], "read_error");
    }
}
