//! The server against a raw NBD client over an in-memory pipe, with an in-memory export
//! whose requests can be slowed down or failed by offset.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carmine_nbd_proto::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use tokio_rustls::rustls;

use crate::{
    BlockExport, ConnError, Export, ExportError, NbdTls, Server, ServerConfig, TlsMode,
    EXPORT_FLAGS,
};

/// Offsets with special behaviour.
const SLOW: u64 = 0; // requests at offset 0 take 300 ms
const FAIL_IO: u64 = 8192;
const FAIL_SPACE: u64 = 12288;
const SIZE: u64 = 1 << 20;

#[derive(Default)]
struct Mem {
    data: Mutex<Vec<u8>>,
    active: AtomicUsize,
    peak: AtomicUsize,
}

impl Mem {
    fn new() -> Arc<Mem> {
        Arc::new(Mem {
            data: Mutex::new(vec![0; SIZE as usize]),
            ..Default::default()
        })
    }

    async fn op<T>(
        &self,
        offset: u64,
        f: impl FnOnce(&mut Vec<u8>) -> T,
    ) -> Result<T, ExportError> {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let delay = if offset == SLOW { 300 } else { 5 };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.active.fetch_sub(1, Ordering::SeqCst);
        match offset {
            FAIL_IO => Err(ExportError::Io("injected".into())),
            FAIL_SPACE => Err(ExportError::NoSpace("injected".into())),
            _ => Ok(f(&mut self.data.lock().unwrap())),
        }
    }
}

impl BlockExport for Mem {
    fn size(&self) -> u64 {
        SIZE
    }
    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ExportError> {
        self.op(offset, |d| d[offset as usize..][..len].to_vec())
            .await
    }
    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), ExportError> {
        self.op(offset, |d| {
            d[offset as usize..][..data.len()].copy_from_slice(data)
        })
        .await
    }
    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        self.op(offset, |d| d[offset as usize..][..len as usize].fill(0))
            .await
    }
    async fn discard(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        self.write_zeroes(offset, len).await
    }
    async fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
}

fn server(mem: &Arc<Mem>, cfg: ServerConfig) -> Arc<Server<Mem>> {
    Arc::new(Server::new(
        vec![
            Export {
                name: "rbd/a".into(),
                description: "test".into(),
                backend: mem.clone(),
            },
            Export {
                name: "rbd/b".into(),
                description: String::new(),
                backend: Mem::new(),
            },
        ],
        cfg,
    ))
}

/// Starts a connection; returns the client end and the server's result.
fn connect(
    srv: &Arc<Server<Mem>>,
) -> (DuplexStream, tokio::task::JoinHandle<Result<(), ConnError>>) {
    let (c, s) = tokio::io::duplex(1 << 20);
    let srv = srv.clone();
    let h = tokio::spawn(async move { srv.serve_connection(s, CancellationToken::new()).await });
    (c, h)
}

async fn send_option<S: AsyncWrite + Unpin>(c: &mut S, opt: u32, payload: &[u8]) {
    let h = OptionHeader {
        option: opt,
        length: payload.len() as u32,
    };
    c.write_all(&h.encode()).await.unwrap();
    c.write_all(payload).await.unwrap();
}

async fn read_option_reply<S: AsyncRead + Unpin>(c: &mut S) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(h[0..8].try_into().unwrap()),
        OPT_REPLY_MAGIC
    );
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut p = vec![0; len];
    c.read_exact(&mut p).await.unwrap();
    (
        u32::from_be_bytes(h[8..12].try_into().unwrap()),
        u32::from_be_bytes(h[12..16].try_into().unwrap()),
        p,
    )
}

/// Fixed newstyle + optional structured replies + GO; returns the transmission flags.
async fn handshake(c: &mut DuplexStream, name: &str, structured: bool) -> u16 {
    greet(c).await;
    go(c, name, structured).await
}

/// Reads the greeting, sends the client flags.
async fn greet(c: &mut DuplexStream) {
    let mut g = [0u8; GREETING_LEN];
    c.read_exact(&mut g).await.unwrap();
    assert_eq!(&g[0..8], &NBDMAGIC.to_be_bytes());
    assert_eq!(
        u16::from_be_bytes([g[16], g[17]]),
        FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
    );
    c.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .await
        .unwrap();
}

/// Optional structured replies + GO; returns the transmission flags.
async fn go<S: AsyncRead + AsyncWrite + Unpin>(c: &mut S, name: &str, structured: bool) -> u16 {
    if structured {
        send_option(c, OPT_STRUCTURED_REPLY, &[]).await;
        assert_eq!(read_option_reply(c).await.1, REP_ACK);
    }
    let req = InfoRequest {
        name,
        infos: vec![INFO_BLOCK_SIZE],
    };
    send_option(c, OPT_GO, &req.encode()).await;
    let mut flags = None;
    loop {
        let (opt, ty, p) = read_option_reply(c).await;
        assert_eq!(opt, OPT_GO);
        match ty {
            REP_INFO if p[0..2] == INFO_EXPORT.to_be_bytes() => {
                assert_eq!(u64::from_be_bytes(p[2..10].try_into().unwrap()), SIZE);
                flags = Some(u16::from_be_bytes([p[10], p[11]]));
            }
            REP_INFO => {}
            REP_ACK => return flags.expect("INFO_EXPORT before ACK"),
            other => panic!("GO answered {other:#x}"),
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(
    c: &mut S,
    cookie: u64,
    command: Command,
    flags: u16,
    offset: u64,
    data: &[u8],
    length: u32,
) {
    let r = Request {
        cookie,
        command,
        flags,
        offset,
        length,
    };
    c.write_all(&RequestHeader::encode(&r)).await.unwrap();
    c.write_all(data).await.unwrap();
}

/// A simple reply: (cookie, error, data of `read_len` bytes if success).
async fn simple<S: AsyncRead + Unpin>(c: &mut S, read_len: usize) -> (u64, u32, Vec<u8>) {
    let mut h = [0u8; 16];
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(&h[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
    let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
    let mut d = vec![0; if err == 0 { read_len } else { 0 }];
    c.read_exact(&mut d).await.unwrap();
    (cookie, err, d)
}

/// One structured chunk: (cookie, flags, type, payload).
async fn chunk<S: AsyncRead + Unpin>(c: &mut S) -> (u64, u16, u16, Vec<u8>) {
    let mut h = [0u8; 20];
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(&h[0..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    let mut p = vec![0; len];
    c.read_exact(&mut p).await.unwrap();
    (
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
        u16::from_be_bytes([h[4], h[5]]),
        u16::from_be_bytes([h[6], h[7]]),
        p,
    )
}

async fn assert_eof<S: AsyncRead + Unpin>(c: &mut S) {
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("server closes")
        .unwrap();
    assert_eq!(n, 0, "expected the server to close");
}

#[tokio::test]
async fn simple_replies_write_read_flush_trim_zeroes() {
    let mem = Mem::new();
    let srv = server(&mem, ServerConfig::default());
    let (mut c, h) = connect(&srv);
    let flags = handshake(&mut c, "rbd/a", false).await;
    assert_eq!(
        flags,
        crate::EXPORT_FLAGS,
        "no SEND_DF without structured replies"
    );
    let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    send(&mut c, 1, Command::Write, CMD_FLAG_FUA, 1000, &data, 5000).await;
    assert_eq!(simple(&mut c, 0).await, (1, 0, vec![]));
    send(&mut c, 2, Command::Read, 0, 1000, &[], 5000).await;
    assert_eq!(simple(&mut c, 5000).await, (2, 0, data.clone()));
    send(&mut c, 3, Command::Flush, 0, 0, &[], 0).await;
    assert_eq!(simple(&mut c, 0).await.1, 0);
    send(&mut c, 4, Command::Trim, 0, 1000, &[], 100).await;
    assert_eq!(simple(&mut c, 0).await.1, 0);
    send(
        &mut c,
        5,
        Command::WriteZeroes,
        CMD_FLAG_NO_HOLE,
        1100,
        &[],
        100,
    )
    .await;
    assert_eq!(simple(&mut c, 0).await.1, 0);
    send(&mut c, 6, Command::Read, 0, 1000, &[], 300).await;
    let got = simple(&mut c, 300).await.2;
    assert!(got[..200].iter().all(|b| *b == 0));
    assert_eq!(got[200..], data[200..300]);
    send(&mut c, 7, Command::Disc, 0, 0, &[], 0).await;
    assert_eof(&mut c).await;
    h.await.unwrap().unwrap();
}

#[tokio::test]
async fn replies_come_in_completion_order() {
    let mem = Mem::new();
    let srv = server(&mem, ServerConfig::default());
    let (mut c, _h) = connect(&srv);
    handshake(&mut c, "", false).await;
    send(&mut c, 10, Command::Read, 0, SLOW, &[], 512).await;
    send(&mut c, 11, Command::Write, 0, 4096, &[7; 512], 512).await;
    send(&mut c, 12, Command::Read, 0, 4096, &[], 512).await;
    // The slow read started first but is answered last.
    let a = simple(&mut c, 0).await;
    assert_eq!((a.0, a.1), (11, 0));
    let b = simple(&mut c, 512).await;
    assert_eq!(b.0, 12);
    let slow = simple(&mut c, 512).await;
    assert_eq!((slow.0, slow.1, slow.2.len()), (10, 0, 512));
}

#[tokio::test]
async fn structured_replies_data_hole_error() {
    let mem = Mem::new();
    let srv = server(&mem, ServerConfig::default());
    let (mut c, _h) = connect(&srv);
    let flags = handshake(&mut c, "rbd/a", true).await;
    assert_eq!(flags, crate::EXPORT_FLAGS | FLAG_SEND_DF);
    send(&mut c, 1, Command::Write, 0, 4096, &[9; 100], 100).await;
    assert_eq!(
        chunk(&mut c).await,
        (1, REPLY_FLAG_DONE, REPLY_TYPE_NONE, vec![])
    );
    send(&mut c, 2, Command::Read, CMD_FLAG_DF, 4096, &[], 100).await;
    let (cookie, fl, ty, p) = chunk(&mut c).await;
    assert_eq!(
        (cookie, fl, ty),
        (2, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA)
    );
    assert_eq!(&p[..8], &4096u64.to_be_bytes());
    assert_eq!(&p[8..], &[9; 100]);
    // Never written: one hole chunk.
    send(&mut c, 3, Command::Read, 0, 65536, &[], 4096).await;
    let (_, fl, ty, p) = chunk(&mut c).await;
    assert_eq!((fl, ty), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_HOLE));
    assert_eq!(&p[8..], &4096u32.to_be_bytes());
    // Out of range: an error chunk with EINVAL.
    send(&mut c, 4, Command::Read, 0, SIZE - 1, &[], 2).await;
    let (cookie, fl, ty, p) = chunk(&mut c).await;
    assert_eq!((cookie, fl, ty), (4, REPLY_FLAG_DONE, REPLY_TYPE_ERROR));
    assert_eq!(&p[..4], &EINVAL.to_be_bytes());
    // Backend failures.
    send(&mut c, 5, Command::Read, 0, FAIL_IO, &[], 10).await;
    let (_, _, ty, p) = chunk(&mut c).await;
    assert_eq!((ty, &p[..4]), (REPLY_TYPE_ERROR, &EIO.to_be_bytes()[..]));
    send(&mut c, 6, Command::Write, 0, FAIL_SPACE, &[1; 10], 10).await;
    let (_, _, ty, p) = chunk(&mut c).await;
    assert_eq!((ty, &p[..4]), (REPLY_TYPE_ERROR, &ENOSPC.to_be_bytes()[..]));
}

#[tokio::test]
async fn invalid_requests_get_einval_and_the_stream_stays_in_step() {
    let mem = Mem::new();
    let srv = server(&mem, ServerConfig::default());
    let (mut c, _h) = connect(&srv);
    handshake(&mut c, "rbd/a", false).await;
    // Beyond the end: refused, but its payload is consumed.
    send(&mut c, 1, Command::Write, 0, SIZE - 10, &[1; 20], 20).await;
    assert_eq!(simple(&mut c, 0).await, (1, EINVAL, vec![]));
    // DF without structured replies, zero length, a flag not valid for TRIM.
    send(&mut c, 2, Command::Read, CMD_FLAG_DF, 0, &[], 1).await;
    assert_eq!(simple(&mut c, 0).await.1, EINVAL);
    send(&mut c, 3, Command::Write, 0, 64, &[], 0).await;
    assert_eq!(simple(&mut c, 0).await.1, EINVAL);
    send(&mut c, 4, Command::Trim, CMD_FLAG_NO_HOLE, 64, &[], 1).await;
    assert_eq!(simple(&mut c, 0).await.1, EINVAL);
    send(&mut c, 5, Command::Read, 0, u64::MAX, &[], 1).await;
    assert_eq!(simple(&mut c, 0).await.1, EINVAL);
    send(&mut c, 6, Command::Read, 0, 64, &[], 1).await;
    assert_eq!(simple(&mut c, 1).await, (6, 0, vec![0]));
}

#[tokio::test]
async fn protocol_violations_close_only_that_connection_after_in_flight() {
    let mem = Mem::new();
    let srv = server(&mem, ServerConfig::default());
    let (mut other, _h2) = connect(&srv);
    handshake(&mut other, "rbd/a", false).await;

    for bad in ["magic", "command", "payload"] {
        let (mut c, h) = connect(&srv);
        handshake(&mut c, "rbd/a", false).await;
        // In flight when the violation arrives: still answered.
        send(&mut c, 1, Command::Write, 0, SLOW, &[5; 8], 8).await;
        let mut hdr = RequestHeader::encode(&Request {
            cookie: 2,
            command: Command::Write,
            flags: 0,
            offset: 0,
            length: MAX_BLOCK_SIZE + 1,
        });
        match bad {
            "magic" => hdr[0] ^= 0xff,
            "command" => hdr[7] = 0x42,
            _ => {}
        }
        c.write_all(&hdr).await.unwrap();
        assert_eq!(simple(&mut c, 0).await, (1, 0, vec![]));
        assert_eof(&mut c).await;
        let err = h.await.unwrap().unwrap_err();
        assert!(matches!(err, ConnError::Proto(_)), "{bad}: {err}");
    }
    send(&mut other, 9, Command::Read, 0, 0, &[], 8).await;
    assert_eq!(simple(&mut other, 8).await, (9, 0, vec![5; 8]));
}

#[tokio::test]
async fn disc_finishes_in_flight_requests_first() {
    let mem = Mem::new();
    let srv = server(&mem, ServerConfig::default());
    let (mut c, h) = connect(&srv);
    handshake(&mut c, "rbd/a", true).await;
    send(&mut c, 1, Command::Write, 0, SLOW, &[3; 16], 16).await;
    send(&mut c, 2, Command::Disc, 0, 0, &[], 0).await;
    assert_eq!(chunk(&mut c).await.0, 1);
    assert_eof(&mut c).await;
    h.await.unwrap().unwrap();
    assert_eq!(mem.data.lock().unwrap()[..16], [3; 16]);
}

#[tokio::test]
async fn in_flight_requests_are_bounded_and_all_answered() {
    let mem = Mem::new();
    let cfg = ServerConfig {
        max_requests: 4,
        ..ServerConfig::default()
    };
    let srv = server(&mem, cfg);
    let (c, _h) = connect(&srv);
    let (mut rd, mut wr) = tokio::io::split(c);
    let n = 200u64;
    let sender = tokio::spawn(async move {
        let mut g = [0u8; GREETING_LEN];
        rd.read_exact(&mut g).await.unwrap();
        (rd, g)
    });
    let (mut rd, _) = sender.await.unwrap();
    wr.write_all(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
        .await
        .unwrap();
    let go = InfoRequest {
        name: "rbd/a",
        infos: vec![],
    }
    .encode();
    let mut opt = OptionHeader {
        option: OPT_GO,
        length: go.len() as u32,
    }
    .encode()
    .to_vec();
    opt.extend(go);
    wr.write_all(&opt).await.unwrap();
    // Pipelined: everything written at once while replies are read concurrently.
    let writer = tokio::spawn(async move {
        for i in 1..=n {
            let r = Request {
                cookie: i,
                command: Command::Write,
                flags: 0,
                offset: 16384 + 4096 * i,
                length: 4096,
            };
            wr.write_all(&RequestHeader::encode(&r)).await.unwrap();
            wr.write_all(&[i as u8; 4096]).await.unwrap();
        }
        wr
    });
    // Skip the option replies: INFO export, INFO block size, ACK.
    for _ in 0..3 {
        let mut h = [0u8; 20];
        rd.read_exact(&mut h).await.unwrap();
        let mut p = vec![0; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        rd.read_exact(&mut p).await.unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let mut h = [0u8; 16];
        rd.read_exact(&mut h).await.unwrap();
        assert_eq!(&h[4..8], &[0; 4]);
        seen.insert(u64::from_be_bytes(h[8..16].try_into().unwrap()));
    }
    writer.await.unwrap();
    assert_eq!(seen.len() as u64, n);
    let peak = mem.peak.load(Ordering::SeqCst);
    assert!(peak > 1 && peak <= 4, "peak concurrency {peak}");
    assert_eq!(mem.data.lock().unwrap()[16384 + 4096 * 200], 200);
}

#[tokio::test]
async fn export_name_and_refusals() {
    let mem = Mem::new();
    let srv = server(&mem, ServerConfig::default());
    // Old-style EXPORT_NAME with zeroes.
    let (mut c, _h) = connect(&srv);
    let mut g = [0u8; GREETING_LEN];
    c.read_exact(&mut g).await.unwrap();
    c.write_all(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
        .await
        .unwrap();
    send_option(&mut c, OPT_EXPORT_NAME, b"rbd/b").await;
    let mut r = [0u8; 134];
    c.read_exact(&mut r).await.unwrap();
    assert_eq!(&r[..8], &SIZE.to_be_bytes());
    send(&mut c, 1, Command::Read, 0, 0, &[], 4).await;
    assert_eq!(simple(&mut c, 4).await, (1, 0, vec![0; 4]));
    // A client that is not fixed newstyle is refused.
    let (mut c, h) = connect(&srv);
    c.read_exact(&mut g).await.unwrap();
    c.write_all(&0u32.to_be_bytes()).await.unwrap();
    assert_eof(&mut c).await;
    assert!(matches!(
        h.await.unwrap(),
        Err(ConnError::Proto(ProtoError::ClientFlags(0)))
    ));
    // GO to an unknown export: an error reply, and the client may try again.
    let (mut c, _h) = connect(&srv);
    c.read_exact(&mut g).await.unwrap();
    c.write_all(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
        .await
        .unwrap();
    send_option(
        &mut c,
        OPT_GO,
        &InfoRequest {
            name: "rbd/zz",
            infos: vec![],
        }
        .encode(),
    )
    .await;
    assert_eq!(read_option_reply(&mut c).await.1, REP_ERR_UNKNOWN);
    send_option(&mut c, OPT_ABORT, &[]).await;
    assert_eq!(read_option_reply(&mut c).await.1, REP_ACK);
    assert_eof(&mut c).await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains() {
    let mem = Mem::new();
    let srv = server(&mem, ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(srv.clone().run(listener, stop.clone()));
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut g = [0u8; GREETING_LEN];
    c.read_exact(&mut g).await.unwrap();
    c.write_all(&FLAG_C_FIXED_NEWSTYLE.to_be_bytes())
        .await
        .unwrap();
    let go = InfoRequest {
        name: "rbd/a",
        infos: vec![],
    }
    .encode();
    c.write_all(
        &OptionHeader {
            option: OPT_GO,
            length: go.len() as u32,
        }
        .encode(),
    )
    .await
    .unwrap();
    c.write_all(&go).await.unwrap();
    for _ in 0..3 {
        let mut h = [0u8; 20];
        c.read_exact(&mut h).await.unwrap();
        let mut p = vec![0; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        c.read_exact(&mut p).await.unwrap();
    }
    let r = Request {
        cookie: 1,
        command: Command::Write,
        flags: 0,
        offset: SLOW,
        length: 4,
    };
    c.write_all(&RequestHeader::encode(&r)).await.unwrap();
    c.write_all(&[1; 4]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    // The in-flight write is answered, then the connection closes and run returns.
    let mut h = [0u8; 16];
    c.read_exact(&mut h).await.unwrap();
    assert_eq!(
        (&h[4..8], &h[8..16]),
        (&[0u8; 4][..], &1u64.to_be_bytes()[..])
    );
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).await.unwrap(), 0);
    assert!(run.await.unwrap(), "drained");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// A CA, and a server certificate for "localhost" it issued: (server config, client
/// config trusting the CA). ring, as the server's (`carmine_proto::tls`).
#[allow(deprecated)]
fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn tls_server(mem: &Arc<Mem>, mode: TlsMode) -> (Arc<Server<Mem>>, Arc<rustls::ClientConfig>) {
    let (config, client) = tls_pair();
    let cfg = ServerConfig {
        tls: Some(NbdTls { config, mode }),
        ..ServerConfig::default()
    };
    (server(mem, cfg), client)
}

/// STARTTLS then the TLS client handshake.
async fn start_tls(
    mut c: DuplexStream,
    client: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<DuplexStream> {
    send_option(&mut c, OPT_STARTTLS, &[]).await;
    assert_eq!(
        read_option_reply(&mut c).await,
        (OPT_STARTTLS, REP_ACK, vec![])
    );
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect(name, c)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn starttls_then_haggling_and_io_over_tls() {
    for mode in [TlsMode::Required, TlsMode::Optional] {
        let mem = Mem::new();
        let (srv, client) = tls_server(&mem, mode);
        let (mut c, h) = connect(&srv);
        greet(&mut c).await;
        if mode == TlsMode::Optional {
            // Negotiated before STARTTLS: forgotten after it (no SEND_DF below).
            send_option(&mut c, OPT_STRUCTURED_REPLY, &[]).await;
            assert_eq!(read_option_reply(&mut c).await.1, REP_ACK);
        }
        let mut t = start_tls(c, client).await;
        // Over TLS: a second STARTTLS is invalid; the rest as usual.
        send_option(&mut t, OPT_STARTTLS, &[]).await;
        assert_eq!(read_option_reply(&mut t).await.1, REP_ERR_INVALID);
        let flags = go(&mut t, "rbd/a", false).await;
        assert_eq!(flags, EXPORT_FLAGS, "{mode:?}");
        // Requests pipelined in one TLS write, answered over TLS.
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        send(&mut t, 1, Command::Write, 0, 4096, &data, 8192).await;
        send(&mut t, 2, Command::Flush, 0, 0, &[], 0).await;
        t.flush().await.unwrap();
        let mut got = vec![simple(&mut t, 0).await, simple(&mut t, 0).await];
        got.sort();
        assert_eq!(got, vec![(1, 0, vec![]), (2, 0, vec![])]);
        send(&mut t, 3, Command::Read, 0, 4096, &[], 8192).await;
        t.flush().await.unwrap();
        assert_eq!(simple(&mut t, 8192).await, (3, 0, data.clone()));
        assert_eq!(&mem.data.lock().unwrap()[4096..4096 + 8192], &data[..]);
        send(&mut t, 4, Command::Disc, 0, 0, &[], 0).await;
        t.flush().await.unwrap();
        assert_eof(&mut t).await;
        h.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn forced_tls_refuses_plain_text_clients() {
    let mem = Mem::new();
    let (srv, _client) = tls_server(&mem, TlsMode::Required);
    // LIST and GO get ERR_TLS_REQD; nothing about the exports is said; ABORT works.
    let (mut c, h) = connect(&srv);
    greet(&mut c).await;
    send_option(&mut c, OPT_LIST, &[]).await;
    assert_eq!(
        read_option_reply(&mut c).await,
        (OPT_LIST, REP_ERR_TLS_REQD, b"TLS is required".to_vec())
    );
    send_option(
        &mut c,
        OPT_GO,
        &InfoRequest {
            name: "rbd/a",
            infos: vec![],
        }
        .encode(),
    )
    .await;
    assert_eq!(read_option_reply(&mut c).await.1, REP_ERR_TLS_REQD);
    send_option(&mut c, OPT_ABORT, &[]).await;
    assert_eq!(read_option_reply(&mut c).await.1, REP_ACK);
    assert_eof(&mut c).await;
    h.await.unwrap().unwrap();
    // EXPORT_NAME cannot be refused: the connection is closed.
    let (mut c, h) = connect(&srv);
    greet(&mut c).await;
    send_option(&mut c, OPT_EXPORT_NAME, b"rbd/a").await;
    assert_eof(&mut c).await;
    assert!(matches!(
        h.await.unwrap(),
        Err(ConnError::Proto(ProtoError::TlsRequired))
    ));
    // Without a certificate STARTTLS is not supported, and plain text works.
    let srv = server(&mem, ServerConfig::default());
    let (mut c, _h) = connect(&srv);
    greet(&mut c).await;
    send_option(&mut c, OPT_STARTTLS, &[]).await;
    assert_eq!(read_option_reply(&mut c).await.1, REP_ERR_UNSUP);
    go(&mut c, "rbd/a", false).await;
}

#[tokio::test]
async fn bytes_after_starttls_before_the_ack_close_the_connection() {
    let mem = Mem::new();
    let (srv, _client) = tls_server(&mem, TlsMode::Required);
    let (mut c, h) = connect(&srv);
    greet(&mut c).await;
    // STARTTLS and a GO in one write: the GO would be taken for a TLS record.
    let mut both = OptionHeader {
        option: OPT_STARTTLS,
        length: 0,
    }
    .encode()
    .to_vec();
    both.extend_from_slice(
        &OptionHeader {
            option: OPT_LIST,
            length: 0,
        }
        .encode(),
    );
    c.write_all(&both).await.unwrap();
    // No ACK, just the close.
    assert_eof(&mut c).await;
    assert!(matches!(
        h.await.unwrap(),
        Err(ConnError::Proto(ProtoError::DataBeforeTls))
    ));
    // A failed TLS handshake (garbage instead of a ClientHello) closes too.
    let (mut c, h) = connect(&srv);
    greet(&mut c).await;
    send_option(&mut c, OPT_STARTTLS, &[]).await;
    assert_eq!(read_option_reply(&mut c).await.1, REP_ACK);
    c.write_all(&[0x55; 64]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert!(matches!(h.await.unwrap(), Err(ConnError::Tls(_))));
}
