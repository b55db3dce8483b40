//! Bounded drivers that poll a store until an operation completes. For boot-time work (mount,
//! tools, tests); the OSD's shard loop polls stores itself.

use crate::{Completion, Done, ObjectStore, StoreError, Ticket, Transaction};

/// Time allowed for one operation (or for draining) before giving up.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// True once `deadline` has passed (checked every 1024 polls to keep `Instant::now` cheap).
fn expired(i: u64, deadline: std::time::Instant) -> bool {
    i % 1024 == 1023 && std::time::Instant::now() > deadline
}

/// Poll `store` until `ticket` completes. Completions of other tickets are appended to `other`.
pub fn wait<S: ObjectStore + ?Sized>(
    store: &mut S,
    ticket: Ticket,
    other: &mut Vec<Completion>,
) -> Result<Done, StoreError> {
    let mut buf = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    for i in 0u64.. {
        if expired(i, deadline) {
            break;
        }
        store.poll(&mut buf);
        let mut found = None;
        for c in buf.drain(..) {
            if c.ticket == ticket {
                found = Some(c.result);
            } else {
                other.push(c);
            }
        }
        if let Some(r) = found {
            return r;
        }
    }
    Err(StoreError::Failed(format!(
        "ticket {} did not complete",
        ticket.0
    )))
}

/// Submit a transaction and wait for its commit.
pub fn commit<S: ObjectStore + ?Sized>(store: &mut S, txn: Transaction) -> Result<(), StoreError> {
    let t = store.submit(txn);
    wait(store, t, &mut Vec::new()).map(|_| ())
}

/// Read and wait for the data.
pub fn read<S: ObjectStore + ?Sized>(
    store: &mut S,
    cid: crate::CollectionId,
    oid: &crate::ObjectId,
    off: u64,
    len: u64,
) -> Result<Vec<u8>, StoreError> {
    let t = store.read(cid, oid, off, len);
    wait_data(store, t)
}

/// [`read`] through [`ObjectStore::read_lent`]: the bytes, copied out of a loan (which ends)
/// or as read into a `Vec`.
pub fn read_lent<S: ObjectStore + ?Sized>(
    store: &mut S,
    cid: crate::CollectionId,
    oid: &crate::ObjectId,
    off: u64,
    len: u64,
) -> Result<Vec<u8>, StoreError> {
    let t = store.read_lent(cid, oid, off, len);
    wait_data(store, t)
}

/// Waits for read `t` and takes its bytes.
fn wait_data<S: ObjectStore + ?Sized>(store: &mut S, t: Ticket) -> Result<Vec<u8>, StoreError> {
    let done = wait(store, t, &mut Vec::new())?;
    store
        .take_data(done)
        .ok_or_else(|| StoreError::Failed("read completed without data".into()))
}

/// Poll until the store is idle (bounded).
pub fn drain<S: ObjectStore + ?Sized>(
    store: &mut S,
    out: &mut Vec<Completion>,
) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    for i in 0u64.. {
        if expired(i, deadline) {
            break;
        }
        store.poll(out);
        if store.is_idle() {
            return Ok(());
        }
    }
    Err(StoreError::Failed("store did not become idle".into()))
}
