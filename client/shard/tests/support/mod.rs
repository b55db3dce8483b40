//! Runs a test's body on a real reactor shard with a `ShardClient` over the stack the test
//! chooses, and hands its result back to the test's tokio runtime (which runs the map client).

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use carmine_client::{Client, ClientConfig};
use carmine_client_shard::ShardClient;
use carmine_net::{AsyncNet, NetStack};
use carmine_reactor::{IdlePolicy, Reactor, ReactorConfig};

pub type Body<S, T> =
    Box<dyn Fn(Rc<ShardClient<S>>) -> Pin<Box<dyn Future<Output = T>>> + Send + Sync>;

/// Starts one unpinned adaptive shard, builds its stack with `make_stack` there, creates a
/// `ShardClient` on it and runs `body`; returns what `body` returned, once the shard stopped.
pub async fn on_shard<S, T>(
    make_stack: impl Fn() -> Result<S, String> + Send + Sync + 'static,
    maps: Arc<Client>,
    cfg: ClientConfig,
    body: Body<S, T>,
) -> T
where
    S: NetStack + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<T>();
    let tx = Mutex::new(Some(tx));
    let runtime = tokio::runtime::Handle::current();
    let init = move |setup: &mut carmine_reactor::ShardSetup<()>| {
        let (net, poller) = AsyncNet::new(make_stack()?, 64);
        setup.add_poller(Box::new(poller));
        let client = ShardClient::new(net, maps.clone(), runtime.clone(), &cfg)
            .map_err(|e| e.to_string())?;
        let fut = body(Rc::new(client));
        let tx = tx.lock().unwrap().take().ok_or("one shard")?;
        carmine_reactor::spawn_local(async move {
            let _ = tx.send(fut.await);
        })
        .map_err(|e| e.to_string())?;
        Ok(())
    };
    let config = ReactorConfig {
        cores: vec![0],
        pin: false,
        idle: IdlePolicy::adaptive(),
        ..ReactorConfig::default()
    };
    let (reactor, _control) = Reactor::start(config, init).expect("the test shard starts");
    let out = rx.await.expect("the test body ran to its end");
    reactor.request_stop();
    reactor.shutdown().expect("the test shard stops");
    out
}

/// Deterministic content of object `i` (not all one byte: a misplaced chunk must show).
pub fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (k as u64 * 31 + i as u64 * 7 + (k >> 12) as u64) as u8)
        .collect()
}
