//! The clients: writer tasks that write, read and remove their own objects through
//! `carmine-client` and judge every read against the model ([`crate::model`]).
//!
//! Each writer owns `objects` objects (`t<writer>.<k>`) and runs one op at a time, so a read
//! of an object never overlaps a mutation of it by this run (a mutation whose outcome is
//! unknown may still land later: the model allows for that). Object choices, op kinds and
//! payload sizes come from the writer's generator, seeded from the run's seed.
//!
//! Op outcomes: `ok`; `failed` only when the request provably never reached an OSD (refused
//! before sending: `Error::Encode`); `unknown` for every other error, timeouts included (a
//! conservative reading: an OSD may have applied a mutation whose reply was lost). A remove
//! answered `NotFound` counts as done (the object is absent afterwards; a resent remove that
//! executed the first time answers that).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use carmine_client::{Client, Error};
use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;

use crate::model::{self, Mutation, ObjectModel, Observed, Verdict};

/// Biggest payload read back (payloads are far smaller).
const READ_LEN: u32 = 64 << 10;
/// Most violation examples kept per kind (all are counted).
const MAX_EXAMPLES: usize = 12;

#[derive(Debug, Default)]
pub struct Counts {
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub removes: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub unknown: AtomicU64,
}

/// What the checks found.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    pub stale_reads: u64,
    pub corrupt: u64,
    pub lost: u64,
    /// One line per (kind, object) with a violation, the first [`MAX_EXAMPLES`] of each kind.
    pub examples: Vec<String>,
    noted: std::collections::HashSet<(&'static str, String)>,
    per_kind: std::collections::HashMap<&'static str, usize>,
}

impl Findings {
    /// Keeps `line` as the example of `kind` for `object` unless it already has one or `kind`
    /// has [`MAX_EXAMPLES`].
    pub fn note(&mut self, kind: &'static str, object: &str, line: String) {
        let n = self.per_kind.entry(kind).or_default();
        if *n < MAX_EXAMPLES && self.noted.insert((kind, object.into())) {
            *n += 1;
            self.examples.push(line);
        }
    }
}

/// State shared by the writers and the run.
#[derive(Default)]
pub struct Shared {
    pub counts: Counts,
    pub findings: Mutex<Findings>,
    pub stop: AtomicBool,
    /// Milliseconds since the run started (for the examples' timestamps).
    pub started: Option<std::time::Instant>,
}

impl Shared {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn findings(&self) -> std::sync::MutexGuard<'_, Findings> {
        // Plain counters and a list: still consistent after a panic elsewhere.
        self.findings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn at(&self) -> String {
        self.started
            .map(|s| format!("{:.1}s", s.elapsed().as_secs_f64()))
            .unwrap_or_default()
    }
}

/// One object of a writer.
#[derive(Debug, Clone)]
pub struct Object {
    pub name: String,
    pub model: ObjectModel,
    next_seq: u64,
}

/// A writer: its objects and its generator.
pub struct Writer {
    pub id: u32,
    pub objects: Vec<Object>,
    rng: XorShiftRng,
}

/// The generator of stream `stream` of the run seeded `seed` (writers, nemesis, ...).
pub fn rng_for(seed: u64, stream: u64) -> XorShiftRng {
    // Distinct streams from one seed: mix the stream in (splitmix64's odd constant).
    XorShiftRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn outcome(e: &Error) -> Outcome {
    match e {
        Error::Encode(_) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

enum Outcome {
    Failed,
    Unknown,
}

impl Writer {
    pub fn new(seed: u64, id: u32, objects: usize) -> Writer {
        Writer {
            id,
            objects: (0..objects)
                .map(|k| Object {
                    name: format!("t{id}.{k}"),
                    model: ObjectModel::default(),
                    next_seq: 1,
                })
                .collect(),
            rng: rng_for(seed, 1000 + u64::from(id)),
        }
    }

    /// Writes every object once, then runs ops until `shared.stop`.
    ///
    /// The first half of the objects is hot (80% of the ops: half writes, 40% reads, 10%
    /// removes); the other half is cold (3% writes, 96% reads, 1% removes), so that acknowledged
    /// writes also sit through several faults before the final read-back rather than being
    /// overwritten within seconds.
    pub async fn run(mut self, client: Arc<Client>, pool: u32, shared: Arc<Shared>) -> Writer {
        for k in 0..self.objects.len() {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            self.write(&client, pool, &shared, k).await;
        }
        let n = self.objects.len();
        let hot = n.div_ceil(2);
        while !shared.stop.load(Ordering::Relaxed) {
            let (k, write, read) = if hot == n || self.rng.random_range(0..100u32) < 80 {
                (self.rng.random_range(0..hot), 50, 90)
            } else {
                (self.rng.random_range(hot..n), 3, 99)
            };
            let roll = self.rng.random_range(0..100u32);
            if roll < write {
                self.write(&client, pool, &shared, k).await;
            } else if roll < read {
                self.read(&client, pool, &shared, k, false).await;
            } else {
                self.remove(&client, pool, &shared, k).await;
            }
        }
        self
    }

    async fn write(&mut self, client: &Client, pool: u32, shared: &Shared, k: usize) {
        let len = self.rng.random_range(16..4096usize);
        let mut fill = vec![0u8; len];
        self.rng.fill(&mut fill[..]);
        let o = &mut self.objects[k];
        let seq = o.next_seq;
        o.next_seq += 1;
        let payload = model::encode(&o.name, self.id, seq, &fill);
        Shared::bump(&shared.counts.writes);
        match client.write_full(pool, &o.name, &payload).await {
            Ok(()) => {
                Shared::bump(&shared.counts.ok);
                o.model.acked(seq, Mutation::Write);
            }
            Err(e) => match outcome(&e) {
                Outcome::Failed => Shared::bump(&shared.counts.failed),
                Outcome::Unknown => {
                    Shared::bump(&shared.counts.unknown);
                    o.model.unknown(seq, Mutation::Write);
                }
            },
        }
    }

    async fn remove(&mut self, client: &Client, pool: u32, shared: &Shared, k: usize) {
        let o = &mut self.objects[k];
        let seq = o.next_seq;
        o.next_seq += 1;
        Shared::bump(&shared.counts.removes);
        match client.remove(pool, &o.name).await {
            Ok(()) => {
                Shared::bump(&shared.counts.ok);
                o.model.acked(seq, Mutation::Remove);
            }
            Err(e) if e.is_not_found() => {
                Shared::bump(&shared.counts.ok);
                o.model.acked(seq, Mutation::Remove);
            }
            Err(e) => match outcome(&e) {
                Outcome::Failed => Shared::bump(&shared.counts.failed),
                Outcome::Unknown => {
                    Shared::bump(&shared.counts.unknown);
                    o.model.unknown(seq, Mutation::Remove);
                }
            },
        }
    }

    /// Reads object `k` and judges the value. `last`: the final read-back (after every fault
    /// ended), where an older value means a lost mutation rather than a stale read.
    pub async fn read(
        &mut self,
        client: &Client,
        pool: u32,
        shared: &Shared,
        k: usize,
        last: bool,
    ) {
        let o = &self.objects[k];
        Shared::bump(&shared.counts.reads);
        let data = match client.read(pool, &o.name, 0, READ_LEN).await {
            Ok(d) => Some(d),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                Shared::bump(&shared.counts.unknown);
                if last {
                    // Every fault is over: an object that cannot be read is not there for us.
                    if matches!(o.model.last_acked(), Some((_, Mutation::Write))) {
                        let mut f = shared.findings();
                        f.lost += 1;
                        f.note(
                            "lost",
                            &o.name,
                            format!(
                                "lost: {} (acked seq {:?}) unreadable at the end: {e}",
                                o.name,
                                o.model.last_acked()
                            ),
                        );
                    }
                }
                return;
            }
        };
        Shared::bump(&shared.counts.ok);
        let observed = model::observe(&o.name, self.id, data.as_deref());
        let verdict = o.model.check(&observed);
        let what = match &observed {
            Observed::Value(s) => format!("seq {s}"),
            Observed::NotFound => "not found".into(),
            Observed::Corrupt(why) => format!("corrupt ({why})"),
        };
        let (acked, unknown) = (o.model.last_acked(), o.model.unknown_count());
        let line = |kind: &str| {
            format!(
                "{kind} at {}: {} read {what}; last acked {acked:?}, {unknown} later unknown",
                shared.at(),
                o.name,
            )
        };
        match verdict {
            Verdict::Ok => {}
            Verdict::Stale { .. } => {
                let mut f = shared.findings();
                if last {
                    f.lost += 1;
                    f.note("lost", &o.name, line("lost"));
                } else {
                    f.stale_reads += 1;
                    f.note("stale", &o.name, line("stale_read"));
                }
            }
            Verdict::Phantom { .. } => {
                let mut f = shared.findings();
                f.corrupt += 1;
                f.note(
                    "corrupt",
                    &o.name,
                    line("corrupt (phantom: never written or failed for sure)"),
                );
            }
            Verdict::Corrupt(_) => {
                let mut f = shared.findings();
                f.corrupt += 1;
                f.note("corrupt", &o.name, line("corrupt"));
            }
        }
    }
}
