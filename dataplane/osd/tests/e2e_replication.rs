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

use std::collections::BTreeMap;

use carmine_client::Client;
use carmine_proto::v1;
use common::{authed, runtime, Cluster, Mon, OSD_TOKEN};

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
