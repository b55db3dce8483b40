//! A real Prometheus server (Debian's `prometheus`, `/usr/bin/prometheus`, listed in
//! ci/apt-packages; `CARMINE_PROMETHEUS_BIN` overrides) scrapes the monitor and three
//! `carmine-osd run` processes of the test cluster (`common::Cluster`). The monitor is a static
//! target; the OSDs are found through the monitor's HTTP service discovery
//! (`/prometheus/targets`). Checked through Prometheus's HTTP API: every target is up, the op
//! counters rose by exactly what the client did (500 writes, 500 reads of 4 KiB), the latency
//! histograms counted them, a size-3 pool's writes show as replica ops and bytes, every scrape
//! passes `promtool check metrics`, the monitor's series describe the cluster, and every metric the
//! Grafana dashboard (deploy/grafana/carmine.json) queries exists. Each wait is bounded;
//! Prometheus's log is printed when the test fails.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use carmine_client::Client;
use common::{runtime, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(120);
const WRITES: u64 = 500;
const READS: u64 = 500;
const SIZE: usize = 4096;
/// Writes to the replicated (size 3) pool.
const REP_WRITES: u64 = 50;

/// A Prometheus process, killed on drop (its log printed if the test is failing).
struct Prometheus {
    child: Option<Child>,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(mon_metrics: &str) -> Prometheus {
        let bin = std::env::var("CARMINE_PROMETHEUS_BIN")
            .unwrap_or_else(|_| "/usr/bin/prometheus".into());
        assert!(
            Path::new(&bin).exists(),
            "{bin} not found: install Debian's prometheus (ci/apt-packages lists it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: carmine-mon
    static_configs:
      - targets: ["{mon_metrics}"]
  - job_name: carmine-osd
    http_sd_configs:
      - url: "http://{mon_metrics}/prometheus/targets"
        refresh_interval: 1s
"#
            ),
        )
        .unwrap();
        // A free port: bound, then released for Prometheus (nothing else here binds ports
        // by number).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.path().join("prometheus.log");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        Prometheus {
            child: Some(child),
            addr,
            log,
            _dir: dir,
        }
    }

    /// `GET path` of Prometheus's HTTP API, its JSON `data`.
    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let body = http_get(&self.addr, path).await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The value of an instant query that gives one number (`None`: no result yet).
    async fn scalar(&self, query: &str) -> Option<f64> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let data = self.api(&format!("/api/v1/query?query={q}")).await?;
        let r = data["result"].as_array()?;
        if r.len() != 1 {
            return None;
        }
        r[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits (bounded) until `query` gives a value `ok` accepts; returns the last value seen.
    async fn wait_for(&self, query: &str, within: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let t0 = Instant::now();
        let mut last = None;
        while t0.elapsed() < within {
            last = self.scalar(query).await;
            if last.is_some_and(&ok) {
                return last.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{query}: {last:?} after {within:?}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- prometheus log ----\n{log}\n---- end of prometheus log ----");
        }
    }
}

/// A plain HTTP/1.0 GET (no chunked replies), its body when the status is 200.
async fn http_get(addr: &str, path: &str) -> Option<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8(out).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.split_whitespace()
            .nth(1)
            .filter(|c| *c == "200")
            .map(|_| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .ok()
        .flatten()
}

/// `promtool check metrics` (Prometheus's own linter: naming, units, `_total`, help) passes on
/// the scrape `text` of `addr`.
fn promtool_lint(text: &str, addr: &str) {
    use std::io::Write;
    let bin = std::env::var("CARMINE_PROMETHEUS_BIN")
        .map(|p| Path::new(&p).with_file_name("promtool"))
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/promtool"));
    let mut child = Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {addr}'s scrape: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Metric names a scrape declares (`# TYPE`), with a histogram's series names.
fn declared(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            out.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
        }
    }
    out
}

/// Every `carmine_*` name in the dashboard's queries.
fn dashboard_metrics(dash: &serde_json::Value, out: &mut BTreeSet<String>) {
    match dash {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if let (true, Some(expr)) = (k == "expr", v.as_str()) {
                    let mut rest = expr;
                    while let Some(i) = rest.find("carmine_") {
                        let name: String = rest[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        rest = &rest[i + name.len()..];
                        out.insert(name);
                    }
                } else {
                    dashboard_metrics(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_metrics(v, out)),
        _ => {}
    }
}

#[test]
fn prometheus_scrapes_every_daemon_and_counts_the_ops_a_client_did() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let t0 = Instant::now();
            let cluster = Cluster::start("metrics", 16, &[1, 2, 1]).await;
            let osd_metrics: Vec<String> = cluster
                .osds
                .iter()
                .map(|o| o.metrics.clone().expect("the OSD printed its metrics address"))
                .collect();
            let prom = Prometheus::start(&cluster.mon.metrics);

            // Every target up: the monitor (static) and the three OSDs (from the monitor's
            // service discovery).
            let within = Duration::from_secs(30);
            let started = Instant::now();
            let targets = loop {
                let t = prom.api("/api/v1/targets").await;
                let active = t
                    .as_ref()
                    .and_then(|t| t["activeTargets"].as_array().cloned())
                    .unwrap_or_default();
                if active.len() == 4 && active.iter().all(|a| a["health"] == "up") {
                    break active;
                }
                assert!(
                    started.elapsed() < within,
                    "targets not all up after {within:?}: {active:#?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let scraped: BTreeSet<String> = targets
                .iter()
                .filter(|a| a["labels"]["job"] == "carmine-osd")
                .filter_map(|a| a["labels"]["instance"].as_str().map(String::from))
                .collect();
            assert_eq!(scraped, osd_metrics.iter().cloned().collect(), "{targets:#?}");

            // The counters before the client's ops (from a scrape of every OSD).
            let writes_q = r#"sum(carmine_osd_ops_total{op="write"})"#;
            let reads_q = r#"sum(carmine_osd_ops_total{op="read"})"#;
            let wbytes_q = r#"sum(carmine_osd_op_bytes_total{op="write"})"#;
            let rbytes_q = r#"sum(carmine_osd_op_bytes_total{op="read"})"#;
            let wlat_q = r#"sum(carmine_osd_op_latency_seconds_count{op="write"})"#;
            let rlat_q = r#"sum(carmine_osd_op_latency_seconds_count{op="read"})"#;
            let errors_q = "sum(carmine_osd_op_errors_total)";
            let shards_q = "count(carmine_osd_ops_total)";
            // 4 shards, 5 op kinds.
            prom.wait_for(shards_q, within, |v| v == 20.0).await;
            let before: Vec<f64> = {
                let mut v = Vec::new();
                for q in [writes_q, reads_q, wbytes_q, rbytes_q, wlat_q, rlat_q, errors_q] {
                    v.push(prom.wait_for(q, within, |_| true).await);
                }
                v
            };

            let client = Arc::new(Client::connect(cluster.config()).await.unwrap());
            let data = Arc::new(vec![0x5au8; SIZE]);
            let mut set = tokio::task::JoinSet::new();
            let sem = Arc::new(tokio::sync::Semaphore::new(16));
            for i in 0..WRITES {
                let (client, data, sem) = (client.clone(), data.clone(), sem.clone());
                set.spawn(async move {
                    let _p = sem.acquire_owned().await.unwrap();
                    client.write_full("metrics", &format!("obj{i}"), &data).await
                });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap().unwrap();
            }
            let mut set = tokio::task::JoinSet::new();
            for i in 0..READS {
                let (client, sem) = (client.clone(), sem.clone());
                set.spawn(async move {
                    let _p = sem.acquire_owned().await.unwrap();
                    let name = format!("obj{}", i % WRITES);
                    client.read("metrics", &name, 0, SIZE as u32).await.map(|d| d.len())
                });
            }
            while let Some(r) = set.join_next().await {
                assert_eq!(r.unwrap().unwrap(), SIZE);
            }
            let ops_done = Instant::now();

            // Exactly what the client did: every op answered once, without error.
            let w = WRITES as f64;
            let r = READS as f64;
            let size = SIZE as f64;
            let expect = [
                (writes_q, 0, w),
                (reads_q, 1, r),
                (wbytes_q, 2, w * size),
                (rbytes_q, 3, r * size),
                (wlat_q, 4, w),
                (rlat_q, 5, r),
            ];
            for (q, i, by) in expect {
                let before = before.clone();
                prom.wait_for(q, Duration::from_secs(20), move |v| v - before[i] == by)
                    .await;
            }
            let errors = prom.wait_for(errors_q, within, |_| true).await;
            assert_eq!(errors - before[6], 0.0, "op errors during the run");
            let counted_after = ops_done.elapsed();
            // Quantiles from the buckets: a 4 KiB op on a loopback memstore OSD takes well
            // under a second.
            let p99 = r#"histogram_quantile(0.99, sum by (le) (rate(carmine_osd_op_latency_seconds_bucket{op="write"}[1m])))"#;
            prom.wait_for(p99, within, |v| v > 0.0 && v < 1.0).await;

            // Replication: a size-3 pool; each write goes to two replicas.
            let rep_bytes_q = "sum(carmine_osd_replica_sent_bytes_total)";
            let rep_applied_q = "sum(carmine_osd_replica_ops_applied_total)";
            let rep_before = (
                prom.wait_for(rep_bytes_q, within, |_| true).await,
                prom.wait_for(rep_applied_q, within, |_| true).await,
            );
            cluster.mon.create_pool("rep3", 8, 3).await;
            for i in 0..REP_WRITES {
                client
                    .write_full("rep3", &format!("r{i}"), &data)
                    .await
                    .unwrap();
            }
            let rep = REP_WRITES as f64;
            prom.wait_for(rep_bytes_q, within, |v| v - rep_before.0 == rep * 2.0 * size)
                .await;
            prom.wait_for(rep_applied_q, within, |v| v - rep_before.1 == rep * 2.0)
                .await;

            // The monitor's view.
            prom.wait_for("carmine_mon_leader", within, |v| v == 1.0).await;
            prom.wait_for(r#"carmine_osds{state="up"}"#, within, |v| v == 3.0).await;
            prom.wait_for(r#"carmine_osds{state="in"}"#, within, |v| v == 3.0).await;
            prom.wait_for("sum(carmine_osd_up)", within, |v| v == 3.0).await;
            prom.wait_for(r#"carmine_pool_pgs{name="metrics"}"#, within, |v| v == 16.0)
                .await;
            prom.wait_for(r#"carmine_pgs{state="active"}"#, within, |v| v == 24.0)
                .await;
            prom.wait_for("carmine_map_epoch", within, |v| v > 1.0).await;
            // (Object counts come from the primaries' last peering, not from each write.)
            prom.wait_for(r#"carmine_pool_objects{name="metrics"}"#, within, |v| v >= 0.0)
                .await;
            prom.wait_for(r#"count(carmine_osd_booted == 1)"#, within, |v| v == 3.0)
                .await;

            // Every metric the dashboard queries exists: in Prometheus, or declared by a scrape
            // (families that only a bdevstore OSD fills, such as write amplification).
            let dash_path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/carmine.json");
            let dash: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&dash_path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", dash_path.display()));
            let mut wanted = BTreeSet::new();
            dashboard_metrics(&dash, &mut wanted);
            assert!(wanted.len() > 10, "{wanted:?}");
            let mut known: BTreeSet<String> = prom
                .api("/api/v1/label/__name__/values")
                .await
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            for a in osd_metrics.iter().chain([&cluster.mon.metrics]) {
                let text = http_get(a, "/metrics").await.expect("a scrape");
                promtool_lint(&text, a);
                known.extend(declared(&text));
            }
            let missing: Vec<&String> = wanted.difference(&known).collect();
            assert!(missing.is_empty(), "the dashboard queries unknown metrics: {missing:?}");
            eprintln!(
                "prometheus test: {:?} in all, counters seen by Prometheus {:?} after the ops",
                t0.elapsed(),
                counted_after
            );
        })
        .await
        .expect("the Prometheus test took too long");
    });
}
