//! Replication end to end, as real processes: a monitor (in this process, the same
//! `carmine_mon::serve` the binary runs) and `carmine-osd run` processes on 127.0.0.1 (kernel
//! sockets), driven by the real `carmine-client`.
//!
//! - a pool of size 3 on 3 OSDs: every acknowledged write is applied by the two replicas
//!   (their counters), reads come back, removes remove everywhere;
//! - a client key cannot send replica ops: the OSD closes the connection and counts it;
//! - (bdevstore) three copies with equal versions and bytes, read from each OSD's own store
//!   with the OSD stopped (`carmine-osd list-objects`);
//! - a replica whose store fails: the write is not acknowledged as done;
//! - a primary paused (SIGSTOP) while the map moves its PGs: after SIGCONT, its writes are
//!   refused by the replicas and never acknowledged.

#[path = "../../../client/lib/tests/common/mod.rs"]
mod common;
mod common_bdev;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::{Client, ClientConfig};
use carmine_proto::v1;
use common::{authed, runtime, Cluster, Mon, OSD_TOKEN};
use common_bdev::{list_objects, BdevOsd};

/// The OSD's perf counters summed over its shards, by counter name (`shard<i>.<name>`).
async fn shard_totals(mon: &Mon, osd: u32) -> BTreeMap<String, u64> {
    let addr = mon
        .admin()
        .await
        .osd_admin_addr(authed(v1::OsdIdRequest { id: osd }))
        .await
        .unwrap()
        .into_inner()
        .admin_addr;
    let mut c = v1::osd_admin_client::OsdAdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut r = tonic::Request::new(v1::Empty {});
    r.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::bearer(OSD_TOKEN).unwrap(),
    );
    let mut out = BTreeMap::new();
    for c in c.perf_counters(r).await.unwrap().into_inner().counters {
        if let Some((shard, name)) = c.name.split_once('.') {
            if shard.starts_with("shard") {
                *out.entry(name.to_string()).or_insert(0) += c.value;
            }
        }
    }
    out
}

fn content(i: usize, salt: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k as u64 * 131 + i as u64 * 17 + salt as u64 * 101) as u8)
        .collect()
}

#[test]
fn a_size_3_pool_writes_every_copy_before_it_acknowledges() {
    runtime().block_on(async {
        let cluster = Cluster::start("single", 8, &[2, 1, 2]).await;
        cluster.mon.create_pool("rep", 16, 3).await;
        let client = Client::connect(cluster.config()).await.unwrap();
        let ids: Vec<u32> = cluster.osds.iter().map(|o| o.id).collect();
        let before: Vec<_> = futures_util_join(&cluster.mon, &ids).await;
        const N: usize = 300;
        for i in 0..N {
            client
                .write_full(
                    "rep",
                    &format!("obj-{i}"),
                    &content(i, 0, 1 + i * 37 % 9000),
                )
                .await
                .unwrap_or_else(|e| panic!("write {i}: {e}"));
        }
        for i in 0..N {
            let got = client
                .read("rep", &format!("obj-{i}"), 0, 1 << 20)
                .await
                .unwrap();
            assert_eq!(got, content(i, 0, 1 + i * 37 % 9000), "obj-{i}");
        }
        for i in 0..10 {
            client.remove("rep", &format!("obj-{i}")).await.unwrap();
            let e = client.stat("rep", &format!("obj-{i}")).await.unwrap_err();
            assert!(e.is_not_found(), "{e}");
        }
        let after: Vec<_> = futures_util_join(&cluster.mon, &ids).await;
        let delta = |name: &str| -> u64 {
            before
                .iter()
                .zip(&after)
                .map(|(b, a)| a[name] - b.get(name).copied().unwrap_or(0))
                .sum()
        };
        // Every mutation (N writes + 10 removes) was applied by exactly two replicas, and
        // nothing was refused.
        assert_eq!(delta("rep_sent"), 2 * (N as u64 + 10));
        assert_eq!(delta("rep_applied"), 2 * (N as u64 + 10));
        assert_eq!(delta("rep_refused"), 0);
        assert_eq!(delta("rep_write_failures"), 0);
    });
}

async fn futures_util_join(mon: &Mon, ids: &[u32]) -> Vec<BTreeMap<String, u64>> {
    let mut v = Vec::new();
    for &id in ids {
        v.push(shard_totals(mon, id).await);
    }
    v
}

// ------------------------------------------------------------------ three copies on bdevstore

/// Objects of the bdevstore test, and the client's ops in flight.
const REP_OBJECTS: usize = 10_000;
const IN_FLIGHT: usize = 32;

fn rep_name(i: usize) -> String {
    format!("rep-{i:05}")
}

/// Every 10th object is overwritten (generation 1), every 25th (another residue) removed.
fn overwritten(i: usize) -> bool {
    i % 10 == 3
}

fn removed(i: usize) -> bool {
    i % 25 == 7
}

/// 1 B to 8 KiB, every 1000th object 1 MiB.
fn rep_len(i: usize, gen: usize) -> usize {
    if i % 1000 == 500 && gen == 0 {
        1 << 20
    } else {
        1 + (i * 7919 + gen * 104_729) % 8192
    }
}

fn rep_data(i: usize, gen: usize) -> Vec<u8> {
    content(i, gen + 1, rep_len(i, gen))
}

/// The generation object `i` holds at the end (`None`: removed).
fn final_gen(i: usize) -> Option<usize> {
    if removed(i) {
        None
    } else if overwritten(i) {
        Some(1)
    } else {
        Some(0)
    }
}

/// Runs `op(i)` for every `i` in `0..n`, `IN_FLIGHT` at a time.
async fn for_all<F, Fut>(n: usize, op: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (next, op) = (next.clone(), op.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                op(i).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a client task panicked");
    }
}

/// Issue 11: a pool of size 3 on three bdevstore OSDs; 10,000 objects written, 1,000 of them
/// overwritten and 400 removed, all read back through the client; then, with the OSDs
/// stopped, each OSD's own store read by `carmine-osd list-objects`: every live object is on
/// all three with the same version, size, CRC-32C and xxh64, that of what the client wrote;
/// removed objects are on none; versions are one per mutation in each PG.
#[test]
fn bdev_size_3_every_object_on_all_three_stores_with_one_version_and_the_same_bytes() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root: run through ci/test"
    );
    const LIMIT: Duration = Duration::from_secs(150);
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Shards of each OSD: the second has two, so a listing covers several partitions.
    const SHARDS: [usize; 3] = [1, 2, 1];
    // Space: each OSD holds every object. Worst case, a small write is its own journal record
    // (a header block, up to two data blocks) on every OSD: 10,000 writes, 1,000 overwrites
    // and 400 removes are < 35,000 blocks (< 140 MiB), plus ten 1 MiB objects and the PG log
    // in the records' headers. 512 MiB leaves the two-shard OSD ~250 MiB per partition (60
    // segments of 4 MiB + 64 KiB, of which the cleaner keeps 1/8 free), two checkpoint slots
    // of 1/32 of it each, and the cleaner nothing to do.
    const IMAGE_MIB: u64 = 512;
    let (listings, expect, pg_of, mutations_per_pg, pool_id) = runtime().block_on(async {
        tokio::time::timeout(LIMIT, async {
            let mon = Mon::start();
            let creds = mon.add_key("client.rep").await;
            let mut osds: Vec<BdevOsd> = SHARDS
                .iter()
                .enumerate()
                .map(|(i, &n)| BdevOsd::start(&mon, dir.path(), &format!("osd{i}"), IMAGE_MIB, n))
                .collect();
            mon.wait_up(3).await;
            let pool_id = mon.create_pool("rep", 32, 3).await;
            let ids: Vec<u32> = osds.iter().map(|o| o.id).collect();
            let epoch = mon.map().await.epoch;
            mon.wait_osds_at(&ids, epoch).await;
            let mut cfg = ClientConfig::new(mon.addr.clone(), creds);
            cfg.op_timeout = Duration::from_secs(20);
            let client = Arc::new(Client::connect(cfg).await.unwrap());

            let c = client.clone();
            for_all(REP_OBJECTS, move |i| {
                let c = c.clone();
                async move {
                    c.write_full("rep", &rep_name(i), &rep_data(i, 0))
                        .await
                        .unwrap_or_else(|e| panic!("write {}: {e}", rep_name(i)));
                }
            })
            .await;
            let written = t0.elapsed();
            let c = client.clone();
            for_all(REP_OBJECTS, move |i| {
                let c = c.clone();
                async move {
                    if overwritten(i) {
                        c.write_full("rep", &rep_name(i), &rep_data(i, 1))
                            .await
                            .unwrap_or_else(|e| panic!("overwrite {}: {e}", rep_name(i)));
                    } else if removed(i) {
                        c.remove("rep", &rep_name(i))
                            .await
                            .unwrap_or_else(|e| panic!("remove {}: {e}", rep_name(i)));
                    }
                }
            })
            .await;
            let mutated = t0.elapsed();
            let c = client.clone();
            for_all(REP_OBJECTS, move |i| {
                let c = c.clone();
                async move {
                    let got = c.read("rep", &rep_name(i), 0, 2 << 20).await;
                    match (final_gen(i), got) {
                        (Some(g), Ok(got)) => {
                            assert!(got == rep_data(i, g), "{}: wrong bytes", rep_name(i))
                        }
                        (None, Err(e)) => assert!(e.is_not_found(), "{}: {e}", rep_name(i)),
                        (None, Ok(_)) => panic!("{} was removed but reads", rep_name(i)),
                        (Some(_), Err(e)) => panic!("read {}: {e}", rep_name(i)),
                    }
                }
            })
            .await;
            let read = t0.elapsed();

            // What each object's PG is, and how many mutations each PG applied.
            let mut pg_of = HashMap::new();
            let mut mutations_per_pg: BTreeMap<u32, u64> = BTreeMap::new();
            for i in 0..REP_OBJECTS {
                let pg = client.locate("rep", &rep_name(i)).unwrap().pg;
                pg_of.insert(rep_name(i), pg);
                *mutations_per_pg.entry(pg).or_default() +=
                    1 + u64::from(overwritten(i) || removed(i));
            }
            let expect: BTreeMap<String, Vec<u8>> = (0..REP_OBJECTS)
                .filter_map(|i| final_gen(i).map(|g| (rep_name(i), rep_data(i, g))))
                .collect();
            drop(client);

            for o in &mut osds {
                o.stop(true);
            }
            let stopped = t0.elapsed();
            let listings: Vec<(u32, usize, Vec<serde_json::Value>)> = osds
                .iter()
                .map(|o| {
                    let (status, objects) = list_objects(&o.img, o.shards, Duration::from_secs(60));
                    let bad: Vec<_> = objects.iter().filter(|v| !v["error"].is_null()).collect();
                    assert!(
                        status.success(),
                        "list-objects of osd.{}: {status} {bad:?}",
                        o.id
                    );
                    assert!(bad.is_empty(), "osd.{}: objects in error: {bad:?}", o.id);
                    (o.id, o.shards, objects)
                })
                .collect();
            eprintln!(
                "size 3 on bdevstore: {REP_OBJECTS} written by {written:?}, overwrites and \
                 removes by {mutated:?}, read back by {read:?}, OSDs stopped by {stopped:?}, \
                 listed by {:?}",
                t0.elapsed()
            );
            (listings, expect, pg_of, mutations_per_pg, pool_id)
        })
        .await
        .expect("test time limit")
    });

    // Per object name: what each OSD's store holds, (version, size, crc32c, xxh64).
    type Copy = (serde_json::Value, u64, u64, String);
    let mut copies: BTreeMap<String, BTreeMap<u32, Copy>> = BTreeMap::new();
    for (osd, shards, objects) in &listings {
        assert_eq!(
            objects.len(),
            expect.len(),
            "osd.{osd} holds every live object, and nothing else"
        );
        for o in objects {
            let name = o["name"].as_str().expect("a name").to_string();
            let pg = o["pg"].as_u64().expect("a pg") as u32;
            assert_eq!(o["pool"], pool_id, "{o}");
            assert_eq!(
                pg_of.get(&name),
                Some(&pg),
                "{name} is in its PG's collection: {o}"
            );
            // On the shard that owns its PG on this OSD.
            let shard = carmine_placement::pg_to_shard(pg, *shards as u32);
            assert_eq!(o["shard"], shard, "{o}");
            assert!(o["version"].is_object(), "a version attribute: {o}");
            let copy = (
                o["version"].clone(),
                o["size"].as_u64().expect("a size"),
                o["crc32c"].as_u64().expect("a crc32c"),
                o["xxh64"].as_str().expect("an xxh64").to_string(),
            );
            let prev = copies.entry(name.clone()).or_default().insert(*osd, copy);
            assert!(prev.is_none(), "{name} twice on osd.{osd}");
        }
    }
    let osd_ids: BTreeSet<u32> = listings.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(osd_ids.len(), 3);
    for (name, data) in &expect {
        let on = copies
            .get(name)
            .unwrap_or_else(|| panic!("{name} is on no OSD"));
        assert_eq!(
            on.keys().copied().collect::<BTreeSet<_>>(),
            osd_ids,
            "{name} is on all three OSDs"
        );
        let want = (
            data.len() as u64,
            u64::from(crc32c::crc32c(data)),
            format!("{:016x}", xxhash_rust::xxh64::xxh64(data, 0)),
        );
        let mut versions = BTreeSet::new();
        for (osd, (version, size, crc, xxh)) in on {
            assert_eq!(
                (*size, *crc, xxh.clone()),
                want,
                "{name} on osd.{osd}: the bytes the client wrote"
            );
            versions.insert(version.to_string());
        }
        assert_eq!(
            versions.len(),
            1,
            "{name}: one version on every copy: {on:?}"
        );
    }
    for name in copies.keys() {
        assert!(
            expect.contains_key(name),
            "{name} was removed (or never written) but is stored"
        );
    }
    // One version per mutation: no two objects of a PG share one, and no PG handed out more
    // sequence numbers than it applied mutations (each write and remove takes one).
    let mut seen: HashMap<(u32, u64, u64), &str> = HashMap::new();
    for o in &listings[0].2 {
        let pg = o["pg"].as_u64().unwrap() as u32;
        let (epoch, seq) = (
            o["version"]["epoch"].as_u64().unwrap(),
            o["version"]["seq"].as_u64().unwrap(),
        );
        let name = o["name"].as_str().unwrap();
        if let Some(other) = seen.insert((pg, epoch, seq), name) {
            panic!("{name} and {other} have the same version {epoch}'{seq} in PG {pg}");
        }
        assert!(
            (1..=mutations_per_pg[&pg]).contains(&seq),
            "{name}: seq {seq} in PG {pg}, which applied {} mutations",
            mutations_per_pg[&pg]
        );
    }
    eprintln!(
        "{} live objects on 3 OSDs, {} removed on none, in {} PGs; total {:?}",
        expect.len(),
        REP_OBJECTS - expect.len(),
        mutations_per_pg.len(),
        t0.elapsed()
    );
}
