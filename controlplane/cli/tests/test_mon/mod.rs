//! The monitor of the CLI crate's tests: the real `carmine_mon::serve`, as the binary runs it,
//! on its own runtime thread, listening on 127.0.0.1 (a port the kernel picks); stopped and
//! joined on drop. Included by path (`mod test_mon;`: a directory module, so cargo does not
//! build it as a test of its own).

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use clap::Parser;

/// A monitor serving in this process.
pub struct TestMon {
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestMon {
    /// Serves a monitor with admin token `token` over the data dir `dir`; `extra` are more
    /// `carmine-mon` flags (e.g. `["--heartbeat-ms", "100"]`).
    pub fn start(token: &str, dir: &Path, extra: &[&str]) -> TestMon {
        let dir = dir.to_str().expect("a UTF-8 data dir");
        let mut args = vec![
            "carmine-mon",
            "--plaintext",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            token,
            "--data-dir",
            dir,
        ];
        args.extend_from_slice(extra);
        let cfg = carmine_mon::MonConfig::parse_from(args);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(l.local_addr().unwrap().to_string()).unwrap();
                carmine_mon::serve(cfg, l, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        TestMon {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TestMon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Prepares OSD `uuid` (`MonAdmin.OsdNew` with admin token `token`) on the monitor at `addr`
/// and returns the credential an in-process agent presents. Runs on a thread of its own, so
/// that sync and async callers alike can use it.
pub fn osd_credential(addr: &str, token: &str, uuid: &str) -> carmine_agent::OsdCredential {
    let (addr, token, uuid) = (addr.to_string(), token.to_string(), uuid.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut req = tonic::Request::new(carmine_proto::v1::OsdNewRequest { uuid });
            req.metadata_mut().insert(
                carmine_proto::AUTH_HEADER,
                carmine_proto::bearer(&token).unwrap(),
            );
            let r = carmine_proto::v1::mon_admin_client::MonAdminClient::new(ch)
                .osd_new(req)
                .await
                .unwrap()
                .into_inner();
            carmine_agent::OsdCredential {
                id: r.key_id,
                secret: r.key.as_slice().try_into().expect("32-byte key"),
            }
        })
    })
    .join()
    .expect("osd new")
}

/// `msg` as a request carrying the admin token `token` (an admin may act for any OSD on the
/// monitor's OSD service).
pub fn as_admin<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        carmine_proto::AUTH_HEADER,
        carmine_proto::bearer(token).unwrap(),
    );
    r
}
