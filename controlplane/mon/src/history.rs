//! PG history: the intervals in which a PG may have accepted writes (Ceph's `up_thru` and
//! past intervals, Vitastor's `/pg/history`), recorded durably before the interval's first write.
//!
//! A PG's primary records its interval (first epoch `since`, acting set) after peering and
//! before it activates; once every member has every object it trims the history to its own
//! interval. A later primary must reach a member of every recorded interval, or the PG stays
//! incomplete. The rules below keep that history monotone:
//!
//! * intervals are kept sorted by `since`, strictly increasing;
//! * recording the newest interval again (same `since` and acting set) changes nothing, so a
//!   primary may repeat a call whose reply it lost;
//! * recording an interval older than the newest one changes nothing: a newer interval was
//!   recorded (so a newer peering happened, which already accounted for the old primary), and
//!   appending it out of order would break the sort. The caller is told
//!   (`RecordIntervalsReply.superseded`): it must not activate the PG in that interval;
//! * the same `since` with another acting set is refused: an interval's acting set follows from
//!   the map at its first epoch, so two of them mean a confused caller;
//! * trimming to `since` drops every interval older than it and keeps it and newer ones; it needs
//!   `since` to be recorded (otherwise a trim could empty the history and let an old interval be
//!   recorded again afterwards, as if it were new);
//! * at most [`MAX_INTERVALS_PER_PG`] intervals are kept per PG: a PG that changes interval that
//!   often without ever getting clean is refused more (its primary reports the error).
//!
//! These are pure functions over one PG's list; [`crate::state::Monitor`] commits their result
//! to the store ([`crate::store`], or etcd) before it changes memory or replies.

use carmine_proto::v1;

use crate::state::MonError;

/// Most intervals recorded for one PG (see the module doc).
pub const MAX_INTERVALS_PER_PG: usize = 1024;

/// What recording an interval does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The PG's new history (the interval appended).
    Appended(Vec<v1::PgInterval>),
    /// It is already the newest recorded interval: nothing changes.
    Already,
    /// A newer interval is recorded: nothing changes, and the interval must not go active.
    Superseded,
}

/// What recording `(since, acting)` does to the PG's history.
pub fn record(history: &[v1::PgInterval], iv: &v1::PgInterval) -> Result<Recorded, MonError> {
    if iv.since == 0 {
        return Err(MonError::Invalid(format!(
            "pg {}.{:x}: interval epoch 0 is not a valid epoch",
            iv.pool, iv.pg
        )));
    }
    if iv.acting.is_empty() {
        return Err(MonError::Invalid(format!(
            "pg {}.{:x}: interval since {} has an empty acting set",
            iv.pool, iv.pg, iv.since
        )));
    }
    match history.last() {
        Some(last) if iv.since < last.since => Ok(Recorded::Superseded),
        Some(last) if iv.since == last.since => {
            if last.acting == iv.acting {
                Ok(Recorded::Already)
            } else {
                Err(MonError::Precondition(format!(
                    "pg {}.{:x}: interval since {} is recorded with acting {:?}, not {:?}",
                    iv.pool, iv.pg, iv.since, last.acting, iv.acting
                )))
            }
        }
        _ => {
            if history.len() >= MAX_INTERVALS_PER_PG {
                return Err(MonError::Precondition(format!(
                    "pg {}.{:x} has {} recorded intervals and was never clean in between: \
                     no more are recorded",
                    iv.pool,
                    iv.pg,
                    history.len()
                )));
            }
            let mut next = history.to_vec();
            next.push(v1::PgInterval {
                pool: iv.pool,
                pg: iv.pg,
                since: iv.since,
                acting: iv.acting.clone(),
            });
            Ok(Recorded::Appended(next))
        }
    }
}

/// The PG's history after trimming to `iv.since` (intervals older than it dropped), or `None`
/// when nothing changes. `iv.acting`, when given, must be the recorded one.
pub fn trim(
    history: &[v1::PgInterval],
    iv: &v1::PgInterval,
) -> Result<Option<Vec<v1::PgInterval>>, MonError> {
    let Some(at) = history.iter().position(|h| h.since == iv.since) else {
        return Err(MonError::Precondition(format!(
            "pg {}.{:x}: no interval since {} is recorded (recorded: {:?}); trim to a recorded one",
            iv.pool,
            iv.pg,
            iv.since,
            history.iter().map(|h| h.since).collect::<Vec<_>>()
        )));
    };
    if !iv.acting.is_empty() && history[at].acting != iv.acting {
        return Err(MonError::Precondition(format!(
            "pg {}.{:x}: interval since {} is recorded with acting {:?}, not {:?}",
            iv.pool, iv.pg, iv.since, history[at].acting, iv.acting
        )));
    }
    if at == 0 {
        return Ok(None);
    }
    Ok(Some(history[at..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(since: u64, acting: &[u32]) -> v1::PgInterval {
        v1::PgInterval {
            pool: 1,
            pg: 10,
            since,
            acting: acting.to_vec(),
        }
    }

    #[test]
    fn record_appends_newer_ignores_older_and_repeats_and_refuses_conflicts() {
        let appended = |r: Result<Recorded, MonError>| match r {
            Ok(Recorded::Appended(h)) => h,
            other => panic!("{other:?}"),
        };
        let h = appended(record(&[], &iv(5, &[1, 2])));
        assert_eq!(h, [iv(5, &[1, 2])]);
        assert_eq!(
            record(&h, &iv(5, &[1, 2])).unwrap(),
            Recorded::Already,
            "a repeat"
        );
        assert_eq!(record(&h, &iv(4, &[3, 2])).unwrap(), Recorded::Superseded);
        assert!(matches!(
            record(&h, &iv(5, &[2, 1])),
            Err(MonError::Precondition(_))
        ));
        let h = appended(record(&h, &iv(9, &[2, 3])));
        assert_eq!(h, [iv(5, &[1, 2]), iv(9, &[2, 3])]);
        assert!(matches!(
            record(&h, &iv(0, &[1])),
            Err(MonError::Invalid(_))
        ));
        assert!(matches!(
            record(&h, &iv(12, &[])),
            Err(MonError::Invalid(_))
        ));
        // Bounded.
        let full: Vec<_> = (1..=MAX_INTERVALS_PER_PG as u64)
            .map(|s| iv(s, &[1]))
            .collect();
        assert!(matches!(
            record(&full, &iv(5000, &[1])),
            Err(MonError::Precondition(_))
        ));
        assert_eq!(record(&full, &iv(3, &[1])).unwrap(), Recorded::Superseded);
    }

    #[test]
    fn trim_keeps_the_named_interval_and_newer_ones() {
        let h = vec![iv(3, &[1]), iv(5, &[1, 2]), iv(9, &[2, 3])];
        assert_eq!(
            trim(&h, &iv(5, &[])).unwrap().unwrap(),
            [iv(5, &[1, 2]), iv(9, &[2, 3])]
        );
        assert_eq!(
            trim(&h, &iv(9, &[2, 3])).unwrap().unwrap(),
            [iv(9, &[2, 3])]
        );
        assert_eq!(trim(&h, &iv(3, &[])).unwrap(), None, "nothing older");
        assert!(matches!(
            trim(&h, &iv(4, &[])),
            Err(MonError::Precondition(_))
        ));
        assert!(matches!(
            trim(&h, &iv(9, &[3, 2])),
            Err(MonError::Precondition(_))
        ));
        // After a trim, the dropped intervals cannot come back: they are older than the newest.
        let t = trim(&h, &iv(9, &[])).unwrap().unwrap();
        assert_eq!(record(&t, &iv(5, &[1, 2])).unwrap(), Recorded::Superseded);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Record(u64, Vec<u32>),
        Trim(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (1u64..40, proptest::collection::vec(0u32..4, 1..3))
                .prop_map(|(s, a)| Op::Record(s, a)),
            (1u64..40).prop_map(Op::Trim),
        ]
    }

    proptest::proptest! {
        /// Whatever the calls: the history stays sorted by a strictly increasing `since`; an
        /// interval recorded (answered Ok) stays until a trim to a newer one; nothing older than
        /// a trim comes back; the newest `since` never goes backwards.
        #[test]
        fn history_rules_hold_for_any_call_sequence(ops in proptest::collection::vec(op(), 1..60)) {
            let mut h: Vec<v1::PgInterval> = Vec::new();
            let mut floor = 0u64;
            let mut recorded: Vec<v1::PgInterval> = Vec::new();
            for o in ops {
                let newest = h.last().map(|i| i.since);
                match o {
                    Op::Record(s, a) => {
                        match record(&h, &iv(s, &a)) {
                            Ok(Recorded::Appended(n)) => {
                                h = n;
                                recorded.push(iv(s, &a));
                            }
                            Ok(Recorded::Already) => {
                                proptest::prop_assert_eq!(h.last(), Some(&iv(s, &a)));
                            }
                            Ok(Recorded::Superseded) => {
                                proptest::prop_assert!(newest.is_some_and(|n| n > s));
                            }
                            Err(_) => {}
                        }
                    }
                    Op::Trim(s) => {
                        if let Ok(next) = trim(&h, &iv(s, &[])) {
                            if let Some(n) = next {
                                h = n;
                            }
                            floor = floor.max(s);
                        }
                    }
                }
                proptest::prop_assert!(h.windows(2).all(|w| w[0].since < w[1].since), "{h:?}");
                proptest::prop_assert!(h.iter().all(|i| i.since >= floor), "{h:?} floor {floor}");
                proptest::prop_assert!(h.last().map(|i| i.since) >= newest);
                for r in &recorded {
                    if r.since >= floor {
                        proptest::prop_assert!(h.contains(r), "{r:?} lost from {h:?}");
                    }
                }
            }
        }
    }
}
