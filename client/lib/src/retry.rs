//! The retry loop every op runs through, whatever carries its bytes.
//!
//! [`run_op`] is the one implementation of the retry rules in the crate docs (route with the
//! newest map, classify the outcome, back off, wait for a newer map, reconnect, give up by
//! deadline or budget). What it needs from a transport is the [`OpPath`] trait: the map, a
//! route cache, connections to OSD shards and calls on them, a way to wait for a newer map (it
//! doubles as the backoff sleep: a new map ends a backoff early) and a `GetMap`.
//!
//! Two transports implement it: [`crate::Client`] (tokio, kernel TCP, `Send`, shared between
//! threads) and `carmine-client-shard` (one reactor shard, smoltcp over a DPDK port, `!Send`).
//! `run_op`'s future is `Send` exactly when the path's futures are, so each keeps its own
//! threading model.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_placement::{ClusterMap, Pool};
use carmine_wire::{Epoch, HandshakeError, Op, OpError, OpRequest, PgId, PoolId, RejectReason};
use tracing::debug;

use crate::cluster::{ClientStats, Error, ListPage};
use crate::error::ClientError;
use crate::reply::Reply;
use crate::route::{self, PoolRef, RouteError, Target};

/// First pause after an `Again`, a failed connection or a map without a route; doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// How long a stale-map retry waits for the subscription to deliver the OSD's epoch before
/// asking the monitor directly (`GetMap`).
const SUBSCRIPTION_GRACE: Duration = Duration::from_millis(500);
/// How long after an op started an OSD's refusal of our key is still retried: a key the
/// monitor just issued reaches the OSDs with their next keyring refresh (about 2 s).
const AUTH_GRACE: Duration = Duration::from_secs(4);

/// The bounds of one op's retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Deadline of one op, retries included.
    pub op_timeout: Duration,
    /// Most resends of one op (see [`crate::ClientConfig::retry_budget`]).
    pub retry_budget: u32,
    /// The map follows the monitor by itself (a subscription): a stale-map retry first waits
    /// for it, then fetches.
    pub follow_map: bool,
}

/// What an op addresses: an object (placed by name) or a whole PG (list).
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    Object(&'a str),
    Pg(u32),
}

/// What one transport gives the retry loop. Every method is called from the op's task; the
/// futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait OpPath {
    /// One connection to one OSD shard.
    type Conn;
    fn policy(&self) -> RetryPolicy;
    /// The newest map the client has.
    fn map(&self) -> Arc<ClusterMap>;
    /// `route::route_pg`, memoised per epoch (see [`RouteCache`]).
    fn route(&self, map: &ClusterMap, pool: &Pool, pg: u32) -> Result<Target, RouteError>;
    /// The connection to `t` (opened if needed; concurrent callers share one attempt). A
    /// connect that does not finish by `deadline` is [`ClientError::Timeout`].
    async fn conn(&self, t: &Target, deadline: Instant) -> Result<Self::Conn, ClientError>;
    /// Forgets `conn` if it is still the one for `t`, so that the next attempt reconnects.
    fn drop_conn(&self, t: &Target, conn: &Self::Conn);
    /// Sends `req` as `tid` and waits for its reply, at most until `deadline`
    /// ([`ClientError::Timeout`]).
    async fn call(
        &self,
        conn: &Self::Conn,
        tid: u64,
        req: &OpRequest<'_>,
        deadline: Instant,
    ) -> Result<Reply, ClientError>;
    /// Waits until the map reaches `epoch`, at most until `deadline`; true if it did.
    async fn wait_epoch(&self, epoch: u64, deadline: Instant) -> bool;
    /// Asks the monitor for its map now (`GetMap`) and adopts it if newer.
    async fn fetch_map(&self) -> Result<(), Error>;
    fn counters(&self) -> &OpCounters;
}

/// Counters of what the retry loop did. Atomics, so a `Send` client can share them.
#[derive(Debug, Default)]
pub struct OpCounters {
    ops: AtomicU64,
    retries: AtomicU64,
    stale_map: AtomicU64,
    map_fetches: AtomicU64,
    again: AtomicU64,
    connects: AtomicU64,
    reconnects: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl OpCounters {
    pub fn map_fetched(&self) {
        bump(&self.map_fetches);
    }

    /// A connection was opened; `replacing` one that failed.
    pub fn connected(&self, replacing: bool) {
        bump(&self.connects);
        if replacing {
            bump(&self.reconnects);
        }
    }

    pub fn snapshot(&self, map_epoch: u64) -> ClientStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            ops: get(&self.ops),
            retries: get(&self.retries),
            stale_map_retries: get(&self.stale_map),
            map_fetches: get(&self.map_fetches),
            again_retries: get(&self.again),
            connects: get(&self.connects),
            reconnects: get(&self.reconnects),
            map_epoch,
        }
    }
}

/// Routes computed with the map of one epoch, by (pool, PG). Placement ranks every host and
/// OSD, worth doing once per PG and epoch rather than once per op. Errors are not kept.
#[derive(Debug, Default)]
pub struct RouteCache {
    epoch: u64,
    routes: HashMap<(u32, u32), Target>,
}

impl RouteCache {
    /// The cached route, if it was computed with `epoch` (a new epoch empties the cache).
    pub fn get(&mut self, epoch: u64, pool: u32, pg: u32) -> Option<Target> {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.routes.clear();
        }
        self.routes.get(&(pool, pg)).copied()
    }

    /// Keeps `t`, computed with `epoch`, unless the cache moved on to another epoch.
    pub fn put(&mut self, epoch: u64, pool: u32, pg: u32, t: Target) {
        if self.epoch == epoch {
            self.routes.insert((pool, pg), t);
        }
    }

    /// Get, or compute with `route::route_pg` and keep.
    pub fn route(&mut self, map: &ClusterMap, pool: &Pool, pg: u32) -> Result<Target, RouteError> {
        if let Some(t) = self.get(map.epoch, pool.id, pg) {
            return Ok(t);
        }
        let t = route::route_pg(map, pool, pg)?;
        self.put(map.epoch, pool.id, pg, t);
        Ok(t)
    }
}

/// What to do after a failed attempt.
enum Next {
    /// Give this error to the caller.
    Fail(Error),
    /// Pause (growing backoff), then resend.
    Backoff(String),
    /// Wait for the map to reach this epoch, then resend.
    AwaitEpoch(u64, String),
}

/// The current map if it has `pool`, else a freshly fetched one (a pool created after our
/// last update); [`Error::NoSuchPool`] if that one has not either.
pub async fn pool_map<P: OpPath>(p: &P, pool: PoolRef<'_>) -> Result<Arc<ClusterMap>, Error> {
    let map = p.map();
    if pool.find(&map).is_some() {
        return Ok(map);
    }
    p.counters().map_fetched();
    p.fetch_map().await?;
    let map = p.map();
    match pool.find(&map) {
        Some(_) => Ok(map),
        None => Err(Error::NoSuchPool {
            pool: pool.to_string(),
            epoch: map.epoch,
        }),
    }
}

/// The route of `place` with `map`.
fn target<P: OpPath>(
    p: &P,
    map: &ClusterMap,
    pool: PoolRef<'_>,
    place: Place<'_>,
) -> Result<Target, Next> {
    // `run_op` made sure the pool existed: it was removed since.
    let pl = pool.find(map).ok_or_else(|| {
        Next::Fail(Error::NoSuchPool {
            pool: pool.to_string(),
            epoch: map.epoch,
        })
    })?;
    let r = match place {
        Place::Object(o) => route::object_pg(pl, o),
        Place::Pg(pg) => Ok(pg),
    }
    .and_then(|pg| p.route(map, pl, pg));
    r.map_err(|e| match e {
        // Cannot get better with another map of the same pool.
        RouteError::NoSuchPg { .. } | RouteError::NoPgs { .. } => {
            Next::Fail(Error::Protocol(e.to_string()))
        }
        // A newer map may bring an OSD back, or a valid announcement.
        e => Next::Backoff(format!("{e} (map epoch {})", map.epoch)),
    })
}

/// One attempt: route with the current map, send, classify the outcome.
async fn attempt<P: OpPath>(
    p: &P,
    pool: PoolRef<'_>,
    place: Place<'_>,
    op: Op<'_>,
    tid: u64,
    started: Instant,
    deadline: Instant,
) -> Result<Reply, Next> {
    let map = p.map();
    let t = target(p, &map, pool, place)?;
    let conn = match p.conn(&t, deadline).await {
        Err(ClientError::Timeout(_)) => {
            return Err(Next::Backoff(format!(
                "connecting to {}: timed out",
                t.addr
            )))
        }
        Err(ClientError::Handshake(source)) => {
            let why = format!("osd.{} ({}): {source}", t.osd, t.addr);
            // A fresh key may not have reached the OSD yet: retried for a while.
            let key_refused = matches!(
                source,
                HandshakeError::BadCredentials
                    | HandshakeError::Rejected {
                        reason: RejectReason::BadCredentials,
                        ..
                    }
            );
            return Err(if key_refused && started.elapsed() < AUTH_GRACE {
                Next::Backoff(why)
            } else {
                Next::Fail(Error::Auth {
                    osd: t.osd,
                    addr: t.addr,
                    source,
                })
            });
        }
        Err(e) => {
            return Err(Next::Backoff(format!(
                "osd.{} shard {} ({}): {e}",
                t.osd, t.shard, t.addr
            )))
        }
        Ok(c) => c,
    };
    let req = OpRequest {
        pool: PoolId(u64::from(t.pool)),
        pg: PgId(t.pg),
        epoch: Epoch(map.epoch),
        op,
    };
    let e = match p.call(&conn, tid, &req, deadline).await {
        Ok(reply) => return Ok(reply),
        Err(e) => e,
    };
    let counters = p.counters();
    let here = format!("osd.{} shard {} ({})", t.osd, t.shard, t.addr);
    Err(match e {
        ClientError::Op(OpError::StaleMap { osd_epoch }) => {
            bump(&counters.stale_map);
            // The OSD has a newer map: get there. An OSD behind us catches up by itself.
            let why = format!(
                "{here}: stale map (ours {}, the OSD's {})",
                map.epoch, osd_epoch.0
            );
            if osd_epoch.0 > map.epoch {
                Next::AwaitEpoch(osd_epoch.0, why)
            } else {
                Next::Backoff(why)
            }
        }
        ClientError::Op(OpError::Again) => {
            bump(&counters.again);
            Next::Backoff(format!("{here}: again"))
        }
        ClientError::Op(e) => Next::Fail(Error::Op(e)),
        ClientError::Encode(e) => Next::Fail(Error::Encode(e)),
        ClientError::Protocol(why) => {
            p.drop_conn(&t, &conn);
            Next::Fail(Error::Protocol(format!("{here}: {why}")))
        }
        // Closed, I/O, bad frame, timeout: this connection is done; a new one may work.
        e => {
            p.drop_conn(&t, &conn);
            Next::Backoff(format!("{here}: {e}"))
        }
    })
}

/// Runs `op` as `tid` until it succeeds, fails for good, the deadline passes or the retry
/// budget is spent. Every attempt routes with the newest map. The caller gives every op its
/// own tid and keeps it over all attempts: a retried mutation is recognised by the OSD, not
/// applied twice.
pub async fn run_op<P: OpPath>(
    p: &P,
    pool: PoolRef<'_>,
    place: Place<'_>,
    op: Op<'_>,
    tid: u64,
) -> Result<Reply, Error> {
    // A pool unknown to our map may be newer than it: one fetch, then NoSuchPool.
    pool_map(p, pool).await?;
    let policy = p.policy();
    let counters = p.counters();
    let start = Instant::now();
    let deadline = start + policy.op_timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts: u32 = 0;
    let result = loop {
        attempts += 1;
        let next = match attempt(p, pool, place, op, tid, start, deadline).await {
            Ok(r) => break Ok(r),
            Err(Next::Fail(e)) => break Err(e),
            Err(n) => n,
        };
        let last = match &next {
            Next::Backoff(w) | Next::AwaitEpoch(_, w) => w.clone(),
            Next::Fail(_) => String::new(),
        };
        if attempts > policy.retry_budget {
            break Err(Error::RetriesExhausted { attempts, last });
        }
        let timeout = || Error::Timeout {
            after: policy.op_timeout,
            attempts,
            last: last.clone(),
        };
        if Instant::now() >= deadline {
            break Err(timeout());
        }
        debug!(attempts, reason = %last, "retrying op");
        bump(&counters.retries);
        match next {
            Next::AwaitEpoch(epoch, _) => {
                let grace = (Instant::now() + SUBSCRIPTION_GRACE).min(deadline);
                let followed = policy.follow_map && p.wait_epoch(epoch, grace).await;
                if !followed {
                    // The subscription is slow or broken: ask the monitor.
                    counters.map_fetched();
                    if let Err(e) = p.fetch_map().await {
                        debug!(error = %e, "map refresh failed");
                    }
                }
            }
            Next::Backoff(_) => {
                let now = Instant::now();
                if now + backoff >= deadline {
                    break Err(timeout());
                }
                // A new map may end the wait early (e.g. the OSD we failed to reach was
                // marked out), so wait on the map, bounded by the backoff.
                let epoch = p.map().epoch;
                let _ = p.wait_epoch(epoch + 1, now + backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Next::Fail(_) => {}
        }
        if Instant::now() >= deadline {
            break Err(timeout());
        }
    };
    bump(&counters.ops);
    result
}

/// The typed ops, over any path: every client's `write`, `read`, ... is one of these, so what
/// an op sends and what it accepts back is written once. `tid` names the op (see [`run_op`]).
pub async fn write<P: OpPath>(
    p: &P,
    tid: u64,
    pool: PoolRef<'_>,
    object: &str,
    offset: u64,
    data: &[u8],
) -> Result<(), Error> {
    let op = Op::Write {
        object,
        offset,
        data,
    };
    run_op(p, pool, Place::Object(object), op, tid).await?;
    Ok(())
}

/// Replaces the whole content of `object` with `data`.
pub async fn write_full<P: OpPath>(
    p: &P,
    tid: u64,
    pool: PoolRef<'_>,
    object: &str,
    data: &[u8],
) -> Result<(), Error> {
    let op = Op::WriteFull { object, data };
    run_op(p, pool, Place::Object(object), op, tid).await?;
    Ok(())
}

/// Up to `len` bytes at `offset` (fewer at the end of the object).
pub async fn read<P: OpPath>(
    p: &P,
    tid: u64,
    pool: PoolRef<'_>,
    object: &str,
    offset: u64,
    len: u32,
) -> Result<Vec<u8>, Error> {
    let op = Op::Read {
        object,
        offset,
        len,
    };
    match run_op(p, pool, Place::Object(object), op, tid).await? {
        Reply::Read(data) => Ok(data),
        other => Err(unexpected(&other)),
    }
}

/// The object's size.
pub async fn stat<P: OpPath>(
    p: &P,
    tid: u64,
    pool: PoolRef<'_>,
    object: &str,
) -> Result<u64, Error> {
    match run_op(p, pool, Place::Object(object), Op::Stat { object }, tid).await? {
        Reply::Stat { size } => Ok(size),
        other => Err(unexpected(&other)),
    }
}

/// Removes the object.
pub async fn remove<P: OpPath>(
    p: &P,
    tid: u64,
    pool: PoolRef<'_>,
    object: &str,
) -> Result<(), Error> {
    run_op(p, pool, Place::Object(object), Op::Remove { object }, tid).await?;
    Ok(())
}

/// One page (at most `max` names) of PG `pg`, after `cursor` (empty to start).
pub async fn list_pg<P: OpPath>(
    p: &P,
    tid: u64,
    pool: PoolRef<'_>,
    pg: u32,
    cursor: &[u8],
    max: u32,
) -> Result<ListPage, Error> {
    let op = Op::List {
        cursor,
        max_entries: max,
    };
    match run_op(p, pool, Place::Pg(pg), op, tid).await? {
        Reply::List { names, next_cursor } => Ok(ListPage { names, next_cursor }),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Reply) -> Error {
    Error::Protocol(format!("unexpected {:?} reply", r.kind()))
}

/// A reply frame's result for a call of `kind`: the OSD's error, or the body copied out of
/// the receive buffer (one place for both transports' readers).
pub fn reply_result(
    tid: u64,
    kind: carmine_wire::OpKind,
    reply: &carmine_wire::OpReply<'_>,
) -> Result<Reply, ClientError> {
    match &reply.result {
        Ok(body) if body.kind() != kind => Err(ClientError::Protocol(format!(
            "tid {tid}: a {kind:?} request answered with a {:?} reply",
            body.kind()
        ))),
        Ok(body) => Ok(Reply::from_body(body)),
        Err(e) => Err(ClientError::Op(*e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_cache_forgets_an_older_epoch() {
        let mut c = RouteCache::default();
        let t = Target {
            pool: 1,
            pg: 2,
            osd: 3,
            shard: 0,
            addr: "10.0.0.1:6800".parse().unwrap(),
        };
        assert_eq!(c.get(5, 1, 2), None);
        c.put(5, 1, 2, t);
        assert_eq!(c.get(5, 1, 2), Some(t));
        // A newer epoch empties the cache; a route of the old epoch is then not kept.
        assert_eq!(c.get(6, 1, 2), None);
        c.put(5, 1, 2, t);
        assert_eq!(c.get(6, 1, 2), None);
    }
}
