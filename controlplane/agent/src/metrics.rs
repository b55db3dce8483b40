//! The OSD's `/metrics` (see the crate docs, "Metrics"): the [`Stats`] provider's series plus
//! the agent's own, with the `osd` label, built on each scrape.

use std::sync::Arc;

use carmine_metrics::{Exposition, Handler, Page};

use crate::{AgentStatus, Stats};

/// One scrape.
pub(crate) fn collect(stats: &dyn Stats, status: &AgentStatus) -> Exposition {
    let mut e = Exposition::new();
    if let Some(id) = status.osd_id() {
        e.const_label("osd", id.to_string());
    }
    e.gauge(
        "carmine_osd_booted",
        "1 once the OSD has booted with the monitor (the agent's view).",
        vec![],
        f64::from(u8::from(status.osd_id().is_some())),
    );
    e.gauge(
        "carmine_osd_map_epoch",
        "Newest map epoch handed to the shards.",
        vec![],
        status.map_epoch() as f64,
    );
    e.counter(
        "carmine_osd_boots",
        "Boots with the monitor (more than one: the monitor marked this OSD down).",
        vec![],
        status.boots(),
    );
    e.counter(
        "carmine_osd_heartbeats_acked",
        "Heartbeats the monitor acknowledged.",
        vec![],
        status.heartbeats_acked(),
    );
    e.gauge(
        "carmine_osd_keyring_version",
        "The monitor's keyring version installed.",
        vec![],
        status.keyring_version() as f64,
    );
    let (used, capacity) = stats.usage();
    e.gauge(
        "carmine_osd_store_used_bytes",
        "Bytes the object store uses (all shards).",
        vec![],
        used as f64,
    );
    e.gauge(
        "carmine_osd_store_capacity_bytes",
        "Bytes the object store can hold (all shards).",
        vec![],
        capacity as f64,
    );
    e.gauge(
        "carmine_osd_store_failed",
        "1 when the object store failed (the OSD serves nothing and stays down).",
        vec![],
        f64::from(u8::from(stats.store_failure().is_some())),
    );
    stats.metrics(&mut e);
    e
}

/// The HTTP handler: `/metrics` only.
pub(crate) fn handler(stats: Arc<dyn Stats>, status: Arc<AgentStatus>) -> Handler {
    Arc::new(move |path: &str| {
        (path == "/metrics").then(|| Page::metrics(collect(stats.as_ref(), &status)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use carmine_metrics::Value;
    use std::sync::atomic::Ordering;

    struct Fixed;
    impl Stats for Fixed {
        fn counters(&self) -> Vec<(String, u64)> {
            Vec::new()
        }
        fn usage(&self) -> (u64, u64) {
            (5, 10)
        }
        fn metrics(&self, out: &mut Exposition) {
            out.counter(
                "carmine_osd_ops",
                "Ops.",
                vec![("shard", "0".into()), ("op", "write".into())],
                7,
            );
        }
    }

    #[test]
    fn a_scrape_has_the_agents_series_and_the_osd_label_once_booted() {
        let status = AgentStatus::default();
        let text = collect(&Fixed, &status).encode();
        assert!(text.contains("\ncarmine_osd_booted 0"), "{text}");
        status.id.store(4, Ordering::Release);
        status.booted.store(true, Ordering::Release);
        status.epoch.store(12, Ordering::Release);
        let e = collect(&Fixed, &status);
        assert_eq!(
            e.value("carmine_osd_map_epoch", &[]),
            Some(&Value::Gauge(12.0))
        );
        assert_eq!(
            e.value("carmine_osd_store_capacity_bytes", &[]),
            Some(&Value::Gauge(10.0))
        );
        let text = e.encode();
        assert!(text.contains("\ncarmine_osd_booted{osd=\"4\"} 1"), "{text}");
        assert!(
            text.contains("\ncarmine_osd_ops_total{osd=\"4\",shard=\"0\",op=\"write\"} 7"),
            "{text}"
        );
    }
}
