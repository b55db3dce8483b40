//! A deliberately small NBD client over a blocking `TcpStream`, written from the protocol
//! document (NetworkBlockDevice/nbd `doc/proto.md`) rather than with the gateway's own
//! encoders: a bug shared by both sides would not show. Used where the tests must control the
//! bytes on the wire: malformed requests, many READs in flight on one connection, and
//! TRIM / WRITE_ZEROES sent as exactly those commands (qemu falls back to writing zeros when a
//! server does not advertise WRITE_ZEROES, which would hide a missing command).
//!
//! Fixed newstyle, `NBD_OPT_GO`, simple replies only (no `NBD_OPT_STRUCTURED_REPLY`): a server
//! must then answer every request with a simple reply.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub const OPT_GO: u32 = 7;
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const INFO_EXPORT: u16 = 0;

pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FUA: u16 = 1 << 0;

pub const EINVAL: u32 = 22;

/// One transmission-phase connection.
pub struct Conn {
    s: TcpStream,
    /// Export size and transmission flags from `NBD_INFO_EXPORT`.
    pub size: u64,
    pub flags: u16,
    next_handle: u64,
}

/// The greeting and client flags: everything up to the first option.
pub fn greet(addr: SocketAddr) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    // Bounded reads and writes: a wedged server fails the test instead of hanging it.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    let mut g = [0u8; 18];
    s.read_exact(&mut g)?;
    let magic = u64::from_be_bytes(g[0..8].try_into().unwrap());
    let opt = u64::from_be_bytes(g[8..16].try_into().unwrap());
    let hflags = u16::from_be_bytes([g[16], g[17]]);
    if magic != NBDMAGIC || opt != IHAVEOPT || hflags & 1 == 0 {
        return Err(bad(format!("not a fixed-newstyle greeting: {g:02x?}")));
    }
    // FIXED_NEWSTYLE, and NO_ZEROES only when offered.
    let cflags: u32 = 1 | u32::from(hflags & 2);
    s.write_all(&cflags.to_be_bytes())?;
    Ok(s)
}

/// An option request header and payload as sent by a client.
pub fn option(opt: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + payload.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// A transmission request header (28 bytes).
pub fn request(flags: u16, typ: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&typ.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Conn {
    /// Greeting, then `NBD_OPT_GO` for `export`: the transmission phase.
    pub fn open(addr: SocketAddr, export: &str) -> io::Result<Conn> {
        let mut s = greet(addr)?;
        let mut p = Vec::new();
        p.extend_from_slice(&(export.len() as u32).to_be_bytes());
        p.extend_from_slice(export.as_bytes());
        p.extend_from_slice(&0u16.to_be_bytes()); // no explicit info requests
        s.write_all(&option(OPT_GO, &p))?;
        let mut export_info = None;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            let magic = u64::from_be_bytes(h[0..8].try_into().unwrap());
            let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
            let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            if magic != OPT_REPLY_MAGIC || opt != OPT_GO || len > 64 * 1024 {
                return Err(bad(format!("bad option reply header {h:02x?}")));
            }
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data)?;
            match typ {
                REP_ACK => break,
                REP_INFO if data.len() == 12 && data[0..2] == INFO_EXPORT.to_be_bytes() => {
                    let size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    let flags = u16::from_be_bytes([data[10], data[11]]);
                    export_info = Some((size, flags));
                }
                REP_INFO => {}
                t if t & (1 << 31) != 0 => {
                    return Err(bad(format!(
                        "NBD_OPT_GO {export:?} refused: reply type {t:#x} {:?}",
                        String::from_utf8_lossy(&data)
                    )))
                }
                t => return Err(bad(format!("unexpected option reply type {t:#x}"))),
            }
        }
        let (size, flags) =
            export_info.ok_or_else(|| bad("NBD_OPT_GO acked without NBD_INFO_EXPORT".into()))?;
        Ok(Conn {
            s,
            size,
            flags,
            next_handle: 1,
        })
    }

    /// The raw socket, for sending what no well-behaved client sends.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.s
    }

    fn handle(&mut self) -> u64 {
        self.next_handle += 1;
        // Not small integers only: a server that truncates the handle must show.
        self.next_handle.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// Sends a request (and its payload, for WRITE) without waiting; its handle.
    pub fn send(&mut self, flags: u16, typ: u16, offset: u64, len: u32, data: &[u8]) -> u64 {
        let h = self.handle();
        let mut b = request(flags, typ, h, offset, len).to_vec();
        b.extend_from_slice(data);
        self.s.write_all(&b).expect("send an NBD request");
        h
    }

    /// The next simple reply: (handle, error).
    pub fn reply(&mut self) -> io::Result<(u64, u32)> {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r)?;
        let magic = u32::from_be_bytes(r[0..4].try_into().unwrap());
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(bad(format!(
                "not a simple reply (structured replies were not negotiated): {r:02x?}"
            )));
        }
        let err = u32::from_be_bytes(r[4..8].try_into().unwrap());
        let handle = u64::from_be_bytes(r[8..16].try_into().unwrap());
        Ok((handle, err))
    }

    /// One request answered by one reply with no payload; the NBD error (0: success).
    pub fn call(&mut self, flags: u16, typ: u16, offset: u64, len: u32, data: &[u8]) -> u32 {
        let h = self.send(flags, typ, offset, len, data);
        let (got, err) = self.reply().expect("a reply");
        assert_eq!(got, h, "the reply's handle");
        err
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.call(0, CMD_WRITE, offset, data.len() as u32, data)
    }

    /// READ: the data, or the NBD error.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        let mut v = self.read_many(&[(offset, len)]);
        v.pop().expect("one result")
    }

    /// Every READ of `ranges` sent before the first reply is read (the server has them all
    /// in flight and may answer in any order); the results in the order of `ranges`.
    pub fn read_many(&mut self, ranges: &[(u64, u32)]) -> Vec<Result<Vec<u8>, u32>> {
        let mut want = HashMap::new();
        for (i, &(off, len)) in ranges.iter().enumerate() {
            let h = self.send(0, CMD_READ, off, len, &[]);
            want.insert(h, (i, len));
        }
        let mut out: Vec<Option<Result<Vec<u8>, u32>>> = vec![None; ranges.len()];
        while !want.is_empty() {
            let (h, err) = self.reply().expect("a READ reply");
            let (i, len) = want
                .remove(&h)
                .unwrap_or_else(|| panic!("a reply for an unknown or answered handle {h:#x}"));
            out[i] = Some(if err == 0 {
                let mut d = vec![0u8; len as usize];
                self.s.read_exact(&mut d).expect("the READ's data");
                Ok(d)
            } else {
                Err(err)
            });
        }
        out.into_iter().map(|r| r.expect("answered")).collect()
    }

    /// NBD_CMD_DISC: the server closes after the requests in flight.
    pub fn disconnect(mut self) {
        let h = self.handle();
        let _ = self.s.write_all(&request(0, CMD_DISC, h, 0, 0));
        let _ = self.s.shutdown(Shutdown::Write);
    }
}

/// Reads until the peer closes (EOF or reset) and returns what it sent first; an error if it
/// is still open after `within`. A server may answer a malformed request before closing.
pub fn wait_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "still open after {within:?} ({} bytes received: {:02x?})",
                got.len(),
                &got[..got.len().min(64)]
            ));
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500))))
            .expect("set a read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // Reset or aborted: closed too (the server may close with data unread).
            Err(_) => return Ok(got),
        }
    }
}
