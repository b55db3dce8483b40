//! `carmine-metrics`: the Prometheus exposition of the monitor and of each OSD.
//!
//! The daemons keep no metric objects. On each scrape they fill an [`Exposition`] from what
//! they already hold (an OSD: the counters its shards publish, see `carmine-osd`'s `perf`
//! module; the monitor: its map and PG reports), and [`Exposition::encode`] writes it in the
//! Prometheus text format (version 0.0.4) through `prometheus-client`: the snapshot is one
//! `Collector` that emits const metrics. Nothing here runs on a polling core.
//!
//! Names follow the Prometheus conventions: a `carmine_osd_` or `carmine_mon_` (or
//! `carmine_`) prefix, the unit in the name (`_seconds`, `_bytes`), and `_total` on counters,
//! which the encoder appends: a counter is declared without it. Every sample of an exposition
//! can carry constant labels ([`Exposition::const_label`], e.g. `osd="3"`).
//!
//! [`serve`] is the HTTP/1.1 server (hyper, already in the tree through tonic) that answers
//! `GET` on the paths a [`Handler`] knows, `/metrics` above all.
//!
//! Invariants: a family is declared once with one kind (a second declaration of the same name
//! adds samples to the first; a different kind is refused with a panic in debug builds and
//! ignored in release ones), and a histogram's buckets are ascending upper bounds, each with the
//! count of observations in it (not cumulative; the encoder sums them and adds `+Inf`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Exposition::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at 0 with the process); exposed as `<name>_total`.
    Counter,
    /// Any value.
    Gauge,
    /// `<name>_bucket{le=..}`, `<name>_sum`, `<name>_count`.
    Histogram,
}

impl Kind {
    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

/// A histogram's state at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Ascending upper bounds, each with the observations in it (not cumulative).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of every observation.
    pub sum: f64,
    /// Observations, including those above the last bound.
    pub count: u64,
}

/// One sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(u64),
    /// A counter of a unit that is not a whole number (seconds).
    CounterF64(f64),
    Gauge(f64),
    Histogram(Histogram),
}

/// Label names and values of one sample.
pub type Labels = Vec<(&'static str, String)>;

/// A metric family: its name (without `_total`), help, kind and samples.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<(Labels, Value)>,
}

/// Every family of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: Vec<Family>,
    index: HashMap<&'static str, usize>,
    const_labels: Labels,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name="value"` before the labels of every sample (e.g. `osd="3"`).
    pub fn const_label(&mut self, name: &'static str, value: impl Into<String>) {
        self.const_labels.push((name, value.into()));
    }

    /// Declares a family with no sample yet (it is written with its help and type), so that
    /// dashboards find it even before anything happened.
    pub fn declare(&mut self, name: &'static str, help: &'static str, kind: Kind) {
        self.family(name, help, kind);
    }

    fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
    ) -> Option<&mut Family> {
        let i = *self.index.entry(name).or_insert_with(|| {
            self.families.push(Family {
                name,
                help,
                kind,
                samples: Vec::new(),
            });
            self.families.len() - 1
        });
        let f = &mut self.families[i];
        debug_assert_eq!(f.kind, kind, "{name} declared with two kinds");
        (f.kind == kind).then_some(f)
    }

    fn push(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: Labels,
        v: Value,
    ) {
        if let Some(f) = self.family(name, help, kind) {
            f.samples.push((labels, v));
        }
    }

    /// A counter sample (`name` without `_total`).
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, v: u64) {
        self.push(name, help, Kind::Counter, labels, Value::Counter(v));
    }

    /// A counter sample with a fractional value (e.g. `_seconds`).
    pub fn counter_f64(&mut self, name: &'static str, help: &'static str, labels: Labels, v: f64) {
        self.push(name, help, Kind::Counter, labels, Value::CounterF64(v));
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, v: f64) {
        self.push(name, help, Kind::Gauge, labels, Value::Gauge(v));
    }

    /// A histogram sample.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        h: Histogram,
    ) {
        self.push(name, help, Kind::Histogram, labels, Value::Histogram(h));
    }

    /// The families, in the order they were first declared.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// The value of the sample of `name` whose labels are exactly `labels` (constant labels
    /// not included).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        let f = self.families.iter().find(|f| f.name == name)?;
        f.samples.iter().find_map(|(l, v)| {
            (l.len() == labels.len()
                && l.iter()
                    .zip(labels)
                    .all(|((a, b), (c, d))| a == c && b == d))
            .then_some(v)
        })
    }

    /// The Prometheus text format (version 0.0.4) of every family.
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot(self)));
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a name.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// One scrape's snapshot as a `prometheus-client` collector of const metrics.
#[derive(Debug)]
struct Snapshot(Exposition);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let consts = &self.0.const_labels;
        for f in &self.0.families {
            let mut metric =
                encoder.encode_descriptor(f.name, f.help, None, f.kind.metric_type())?;
            for (labels, v) in &f.samples {
                let all: Vec<(&str, &str)> = consts
                    .iter()
                    .chain(labels.iter())
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                let mut m = metric.encode_family(&all)?;
                match v {
                    Value::Counter(n) => m.encode_counter::<NoLabelSet, _, u64>(n, None)?,
                    Value::CounterF64(x) => m.encode_counter::<NoLabelSet, _, f64>(x, None)?,
                    Value::Gauge(x) => m.encode_gauge(x)?,
                    Value::Histogram(h) => {
                        m.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// A reply of the metrics server.
#[derive(Debug, Clone)]
pub struct Page {
    pub content_type: &'static str,
    pub body: String,
}

impl Page {
    /// `/metrics`'s page.
    pub fn metrics(e: Exposition) -> Page {
        Page {
            content_type: CONTENT_TYPE,
            body: e.encode(),
        }
    }
}

/// Connections the metrics server keeps open at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 16;
/// A request's headers must arrive within this long.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A (keep-alive) connection is closed after this long; a scraper simply reconnects.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

/// Answers a `GET` of a path (`None`: 404). Called on the server's runtime for each request.
pub type Handler = Arc<dyn Fn(&str) -> Option<Page> + Send + Sync>;

/// Serves `handler` over HTTP/1.1 on `listener` until `shutdown` resolves (connections still
/// open then are dropped with the runtime). `GET` and `HEAD` only; a path the handler does not
/// know is 404.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // A scraper needs one connection; slow or idle peers must not pile up in the daemon
    // (the OSD's agent shares its descriptors and runtime with this server).
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: go on.
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: {MAX_CONNECTIONS} connections open, refusing");
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(answer(&req, &handler)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection ended"),
                Err(_) => tracing::debug!(%peer, "metrics connection closed after its lifetime"),
                Ok(Ok(())) => {}
            }
        });
    }
}

fn answer<B>(req: &Request<B>, handler: &Handler) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ct: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ct) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match handler(req.uri().path()) {
        Some(p) => reply(StatusCode::OK, p.content_type, p.body),
        None => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
    }
}

/// Log2 latency buckets: bound `i` is `2^i` microseconds, `i < LATENCY_BUCKETS` (1 µs ..
/// about 16.8 s); an op of `us` microseconds falls in bucket [`latency_bucket`]`(us)`.
pub const LATENCY_BUCKETS: usize = 25;

/// The bucket of an op that took `us` microseconds: the smallest `i` with `us <= 2^i`
/// (`LATENCY_BUCKETS` when above every bound: counted in `+Inf` only). No branch on the data
/// beyond one compare; no allocation.
#[inline]
pub fn latency_bucket(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    let i = (64 - (us - 1).leading_zeros()) as usize;
    i.min(LATENCY_BUCKETS)
}

/// The Prometheus histogram of log2 microsecond buckets: `counts[i]` ops in bucket `i`
/// ([`latency_bucket`]), `over` above the last bound, `sum_us` their total time.
pub fn latency_histogram(counts: &[u64], over: u64, sum_us: u64) -> Histogram {
    let buckets: Vec<(f64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| ((1u64 << i) as f64 / 1e6, *c))
        .collect();
    let count = buckets.iter().map(|(_, c)| c).sum::<u64>() + over;
    Histogram {
        buckets,
        sum: sum_us as f64 / 1e6,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name{labels} value` lines of a Prometheus text exposition (comments skipped).
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("sample line");
                (k.to_string(), v.parse().expect("value"))
            })
            .collect()
    }

    #[test]
    fn counters_gauges_and_histograms_are_encoded_with_their_labels() {
        let mut e = Exposition::new();
        e.const_label("osd", "3");
        e.counter(
            "carmine_osd_ops",
            "Ops answered.",
            vec![("shard", "0".into()), ("op", "write".into())],
            42,
        );
        e.counter(
            "carmine_osd_ops",
            "Ops answered.",
            vec![("shard", "1".into()), ("op", "write".into())],
            8,
        );
        e.gauge("carmine_osd_up", "Up.", vec![], 1.0);
        e.declare("carmine_osd_empty", "Nothing yet.", Kind::Counter);
        e.histogram(
            "carmine_osd_op_latency_seconds",
            "Latency.",
            vec![("op", "read".into())],
            latency_histogram(&[1, 0, 2], 1, 10),
        );
        assert_eq!(
            e.value("carmine_osd_ops", &[("shard", "1"), ("op", "write")]),
            Some(&Value::Counter(8))
        );
        let text = e.encode();
        assert!(
            text.contains("# TYPE carmine_osd_ops_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP carmine_osd_empty_total Nothing yet."),
            "{text}"
        );
        let s = samples(&text);
        let get = |k: &str| {
            s.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no {k} in\n{text}"))
        };
        assert_eq!(
            get(r#"carmine_osd_ops_total{osd="3",shard="0",op="write"}"#),
            42.0
        );
        assert_eq!(
            get(r#"carmine_osd_ops_total{osd="3",shard="1",op="write"}"#),
            8.0
        );
        assert_eq!(get(r#"carmine_osd_up{osd="3"}"#), 1.0);
        // Cumulative buckets: 1 op <= 1 µs, 0 more <= 2 µs, 2 more <= 4 µs, 1 above.
        let b = |le: &str| {
            get(&format!(
                r#"carmine_osd_op_latency_seconds_bucket{{osd="3",op="read",le="{le}"}}"#
            ))
        };
        assert_eq!(b("1e-06"), 1.0);
        assert_eq!(b("2e-06"), 1.0);
        assert_eq!(b("4e-06"), 3.0);
        assert_eq!(b("+Inf"), 4.0);
        assert_eq!(
            get(r#"carmine_osd_op_latency_seconds_count{osd="3",op="read"}"#),
            4.0
        );
        assert!(
            (get(r#"carmine_osd_op_latency_seconds_sum{osd="3",op="read"}"#) - 1e-5).abs() < 1e-12
        );
    }

    #[test]
    fn latency_buckets_are_log2_microseconds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(4), 2);
        assert_eq!(latency_bucket(5), 3);
        assert_eq!(latency_bucket(1 << 24), 24);
        assert_eq!(latency_bucket((1 << 24) + 1), LATENCY_BUCKETS);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS);
    }

    #[test]
    fn the_server_answers_get_on_known_paths() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let handler: Handler = Arc::new(|p: &str| {
                (p == "/metrics").then(|| {
                    let mut e = Exposition::new();
                    e.gauge("carmine_test", "Test.", vec![], 7.0);
                    Page::metrics(e)
                })
            });
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(l, handler, async {
                let _ = rx.await;
            }));
            let get = |path: &'static str| async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            };
            let ok = get("/metrics").await;
            assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
            assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
            assert!(ok.contains("\ncarmine_test 7"), "{ok}");
            let missing = get("/nope").await;
            assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
            tx.send(()).unwrap();
            server.await.unwrap();
        });
    }
}
