//! The workload's oracle: self-describing object payloads and a model of every object.
//!
//! ## Payload
//!
//! Every write replaces the whole object (`write_full`) with one payload that names itself:
//!
//! ```text
//! "CTHR" | version u8 = 1 | name_len u16 | name | writer u32 | seq u64 | fill_len u32 | fill
//!        | crc32c u32 (of every byte before it)
//! ```
//!
//! (little endian). A value read back therefore identifies exactly one write, so checking a
//! read is a lookup, not a search (the "unique write values" register of Jepsen-style storage
//! checks). A payload whose CRC, magic, lengths, name or writer do not match is corrupt.
//!
//! ## Model of one object
//!
//! Each object has one owner (a writer task) that gives every mutation of it (write or remove)
//! the next sequence number, so sequence numbers order the mutations of an object. The model
//! keeps the last acknowledged mutation and the later mutations whose outcome is unknown
//! (timed out, or failed with an error that does not prove nothing was applied). A read may
//! return the last acknowledged state or the state of any later unknown mutation; anything
//! else is a violation:
//!
//! - an older value, or "not found" while the last acknowledged mutation is a write (and no
//!   later unknown remove exists): a stale read during the run, a lost write at the end;
//! - a value that is neither the acknowledged one nor a later unknown write: never written by
//!   this run, or written by a mutation known to have failed (a phantom; counted as corrupt);
//! - a payload that does not decode, or names another object or writer: corrupt.
//!
//! Invariant: `unknown` only holds sequence numbers above the acknowledged one (an
//! acknowledgement of `s` forgets every unknown mutation below `s`: they are older than an
//! acknowledged state and must not be seen again).

use std::collections::BTreeMap;

const MAGIC: &[u8; 4] = b"CTHR";
const VERSION: u8 = 1;

/// What a payload says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub name: String,
    pub writer: u32,
    pub seq: u64,
}

/// Why a payload is not one this run wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("{0} bytes: too short")]
    Short(usize),
    #[error("bad magic or version")]
    Magic,
    #[error("lengths do not add up")]
    Length,
    #[error("crc32c 0x{stored:08x} stored, 0x{computed:08x} computed")]
    Crc { stored: u32, computed: u32 },
    #[error("the name is not UTF-8")]
    Name,
}

/// The payload of write `seq` of `name` by `writer`, with `fill` as filler.
pub fn encode(name: &str, writer: u32, seq: u64, fill: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + 1 + 2 + name.len() + 4 + 8 + 4 + fill.len() + 4);
    b.extend_from_slice(MAGIC);
    b.push(VERSION);
    // Object names of this workload are short (a few bytes): u16 is never exceeded.
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&writer.to_le_bytes());
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(fill.len() as u32).to_le_bytes());
    b.extend_from_slice(fill);
    let crc = carmine_checksum::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Reads the stamp back, checking the CRC and every length.
pub fn decode(b: &[u8]) -> Result<Stamp, PayloadError> {
    if b.len() < 4 + 1 + 2 + 4 + 8 + 4 + 4 {
        return Err(PayloadError::Short(b.len()));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = carmine_checksum::crc32c(body);
    if stored != computed {
        return Err(PayloadError::Crc { stored, computed });
    }
    if &body[..4] != MAGIC || body[4] != VERSION {
        return Err(PayloadError::Magic);
    }
    let mut at = 5;
    let mut take = |n: usize| -> Result<&[u8], PayloadError> {
        let s = body.get(at..at + n).ok_or(PayloadError::Length)?;
        at += n;
        Ok(s)
    };
    let name_len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| PayloadError::Length)?);
    let name = std::str::from_utf8(take(usize::from(name_len))?)
        .map_err(|_| PayloadError::Name)?
        .to_string();
    let writer = u32::from_le_bytes(take(4)?.try_into().map_err(|_| PayloadError::Length)?);
    let seq = u64::from_le_bytes(take(8)?.try_into().map_err(|_| PayloadError::Length)?);
    let fill_len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| PayloadError::Length)?);
    take(fill_len as usize)?;
    if at != body.len() {
        return Err(PayloadError::Length);
    }
    Ok(Stamp { name, writer, seq })
}

/// A mutation of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    Write,
    Remove,
}

/// What a read of an object returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// A payload of this object by its owner, with this sequence number.
    Value(u64),
    NotFound,
    /// Not a payload of this object by its owner (the reason).
    Corrupt(String),
}

/// The judgement of one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Older than the last acknowledged state (`got`: the sequence read, `None` = not found).
    Stale {
        acked: u64,
        got: Option<u64>,
    },
    /// A value no mutation of this object could have left: never written, or its write failed
    /// for sure.
    Phantom {
        got: u64,
    },
    Corrupt(String),
}

/// The model of one object (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ObjectModel {
    /// The last acknowledged mutation (`None`: none yet; the object does not exist).
    acked: Option<(u64, Mutation)>,
    /// Mutations after `acked` whose outcome is unknown, by sequence number.
    unknown: BTreeMap<u64, Mutation>,
}

impl ObjectModel {
    /// Mutation `seq` was acknowledged.
    pub fn acked(&mut self, seq: u64, m: Mutation) {
        if self.acked.is_some_and(|(s, _)| s > seq) {
            return;
        }
        self.acked = Some((seq, m));
        self.unknown.retain(|&s, _| s > seq);
    }

    /// Mutation `seq` may or may not have been applied.
    pub fn unknown(&mut self, seq: u64, m: Mutation) {
        if self.acked.is_none_or(|(s, _)| seq > s) {
            self.unknown.insert(seq, m);
        }
    }

    /// The last acknowledged mutation.
    pub fn last_acked(&self) -> Option<(u64, Mutation)> {
        self.acked
    }

    /// How many later mutations have an unknown outcome.
    pub fn unknown_count(&self) -> usize {
        self.unknown.len()
    }

    /// Whether a read that saw `o` (and started after every mutation the model knows of was
    /// answered) is allowed.
    pub fn check(&self, o: &Observed) -> Verdict {
        let acked_seq = self.acked.map_or(0, |(s, _)| s);
        match *o {
            Observed::Corrupt(ref why) => Verdict::Corrupt(why.clone()),
            Observed::Value(seq) => {
                if self.acked == Some((seq, Mutation::Write))
                    || self.unknown.get(&seq) == Some(&Mutation::Write)
                {
                    Verdict::Ok
                } else if seq <= acked_seq {
                    Verdict::Stale {
                        acked: acked_seq,
                        got: Some(seq),
                    }
                } else {
                    Verdict::Phantom { got: seq }
                }
            }
            Observed::NotFound => {
                let absent = matches!(self.acked, None | Some((_, Mutation::Remove)));
                if absent || self.unknown.values().any(|m| *m == Mutation::Remove) {
                    Verdict::Ok
                } else {
                    Verdict::Stale {
                        acked: acked_seq,
                        got: None,
                    }
                }
            }
        }
    }
}

/// What a read returned, as the model sees it: `name` and `writer` are the object's.
pub fn observe(name: &str, writer: u32, data: Option<&[u8]>) -> Observed {
    let Some(data) = data else {
        return Observed::NotFound;
    };
    match decode(data) {
        Err(e) => Observed::Corrupt(e.to_string()),
        Ok(s) if s.name != name || s.writer != writer => Observed::Corrupt(format!(
            "payload of {:?} by writer {} (seq {})",
            s.name, s.writer, s.seq
        )),
        Ok(s) => Observed::Value(s.seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_every_flipped_byte_is_caught() {
        let p = encode("t1.7", 1, 42, &[7u8; 100]);
        assert_eq!(
            decode(&p),
            Ok(Stamp {
                name: "t1.7".into(),
                writer: 1,
                seq: 42
            })
        );
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 0x10;
            assert!(decode(&q).is_err(), "flip at {i} not caught");
        }
        assert!(decode(&p[..p.len() - 1]).is_err());
        assert!(matches!(decode(b"short"), Err(PayloadError::Short(5))));
        assert_eq!(observe("t1.7", 1, Some(&p)), Observed::Value(42));
        assert!(matches!(observe("t1.8", 1, Some(&p)), Observed::Corrupt(_)));
        assert!(matches!(observe("t1.7", 2, Some(&p)), Observed::Corrupt(_)));
        assert_eq!(observe("t1.7", 1, None), Observed::NotFound);
    }

    #[test]
    fn acknowledged_unknown_and_stale_reads_are_told_apart() {
        let mut m = ObjectModel::default();
        // Nothing written: not found is right, any value is a phantom.
        assert_eq!(m.check(&Observed::NotFound), Verdict::Ok);
        assert_eq!(m.check(&Observed::Value(1)), Verdict::Phantom { got: 1 });

        m.acked(1, Mutation::Write);
        m.unknown(2, Mutation::Write);
        m.unknown(3, Mutation::Write);
        // The acknowledged write and either later unknown one.
        for s in [1, 2, 3] {
            assert_eq!(m.check(&Observed::Value(s)), Verdict::Ok, "seq {s}");
        }
        // Not found: the acknowledged write is gone.
        assert_eq!(
            m.check(&Observed::NotFound),
            Verdict::Stale {
                acked: 1,
                got: None
            }
        );
        // A sequence number never issued.
        assert_eq!(m.check(&Observed::Value(9)), Verdict::Phantom { got: 9 });

        // Acknowledging 4 forgets the unknown 2 and 3: seeing them now is stale.
        m.acked(4, Mutation::Write);
        assert_eq!(m.unknown_count(), 0);
        assert_eq!(m.check(&Observed::Value(4)), Verdict::Ok);
        assert_eq!(
            m.check(&Observed::Value(3)),
            Verdict::Stale {
                acked: 4,
                got: Some(3)
            }
        );
        assert_eq!(
            m.check(&Observed::Value(1)),
            Verdict::Stale {
                acked: 4,
                got: Some(1)
            }
        );
        // A late acknowledgement of an older mutation does not move the model back.
        m.acked(2, Mutation::Write);
        assert_eq!(m.last_acked(), Some((4, Mutation::Write)));
        // An unknown mutation older than the acknowledged one is not kept.
        m.unknown(3, Mutation::Write);
        assert_eq!(m.unknown_count(), 0);
        assert!(matches!(
            m.check(&Observed::Corrupt("x".into())),
            Verdict::Corrupt(_)
        ));
    }

    #[test]
    fn removes_acknowledged_and_unknown() {
        let mut m = ObjectModel::default();
        m.acked(1, Mutation::Write);
        // An unknown remove allows not found, and still the acknowledged value.
        m.unknown(2, Mutation::Remove);
        assert_eq!(m.check(&Observed::NotFound), Verdict::Ok);
        assert_eq!(m.check(&Observed::Value(1)), Verdict::Ok);
        // An acknowledged remove: only not found (or a later unknown write).
        m.acked(3, Mutation::Remove);
        assert_eq!(m.check(&Observed::NotFound), Verdict::Ok);
        assert_eq!(
            m.check(&Observed::Value(1)),
            Verdict::Stale {
                acked: 3,
                got: Some(1)
            }
        );
        m.unknown(4, Mutation::Write);
        assert_eq!(m.check(&Observed::Value(4)), Verdict::Ok);
        assert_eq!(m.check(&Observed::NotFound), Verdict::Ok);
        // An unknown remove is not a value: reading its sequence number is a phantom.
        m.unknown(5, Mutation::Remove);
        assert_eq!(m.check(&Observed::Value(5)), Verdict::Phantom { got: 5 });
    }

    use proptest::prelude::*;

    /// One mutation of a history: what it was, how the client saw it end, and (for an
    /// unknown outcome) whether the store applied it.
    #[derive(Debug, Clone, Copy)]
    struct Step {
        remove: bool,
        /// 0 ok, 1 unknown, 2 failed for sure.
        outcome: u8,
        applied_if_unknown: bool,
    }

    fn step() -> impl Strategy<Value = Step> {
        (any::<bool>(), 0u8..3, any::<bool>()).prop_map(|(remove, outcome, applied)| Step {
            remove,
            outcome,
            applied_if_unknown: applied,
        })
    }

    fn kind(s: &Step) -> Mutation {
        if s.remove {
            Mutation::Remove
        } else {
            Mutation::Write
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A store that applies every acknowledged mutation and any subset of the unknown ones,
        /// in order, is never blamed; the same store showing the state before the last
        /// acknowledged mutation (or, when that was a write, any older state) always is.
        #[test]
        fn a_correct_store_passes_and_an_older_state_is_caught(
            steps in prop::collection::vec(step(), 1..40)
        ) {
            let mut m = ObjectModel::default();
            // The store: the last applied mutation, and the one before the last acknowledged.
            let mut state: Option<(u64, Mutation)> = None;
            let mut before_ack: Option<Option<(u64, Mutation)>> = None;
            for (i, st) in steps.iter().enumerate() {
                let seq = i as u64 + 1;
                let applied = match st.outcome {
                    0 => {
                        before_ack = Some(state);
                        m.acked(seq, kind(st));
                        true
                    }
                    1 => {
                        m.unknown(seq, kind(st));
                        st.applied_if_unknown
                    }
                    _ => false,
                };
                if applied {
                    state = Some((seq, kind(st)));
                }
                let seen = match state {
                    Some((s, Mutation::Write)) => Observed::Value(s),
                    _ => Observed::NotFound,
                };
                prop_assert_eq!(m.check(&seen), Verdict::Ok, "after step {}: {:?}", seq, state);

                // The state before the last acknowledged mutation, where it differs.
                if let (Some(old), Some((acked_seq, acked_kind))) = (before_ack, m.last_acked()) {
                    let old_seen = match old {
                        Some((s, Mutation::Write)) => Observed::Value(s),
                        _ => Observed::NotFound,
                    };
                    let later_unknown_remove = steps[acked_seq as usize..=i]
                        .iter()
                        .any(|s| s.outcome == 1 && s.remove);
                    let differs = match (&old_seen, acked_kind) {
                        (Observed::Value(_), _) => true,
                        (Observed::NotFound, Mutation::Write) => !later_unknown_remove,
                        (Observed::NotFound, Mutation::Remove) => false,
                        (Observed::Corrupt(_), _) => unreachable!(),
                    };
                    if differs {
                        prop_assert!(
                            matches!(m.check(&old_seen), Verdict::Stale { .. }),
                            "after step {}: {:?} should be stale", seq, old_seen
                        );
                    }
                }
            }
        }
    }
}
