//! A small server application over [`NetStack`] and a kernel-socket client for it, used by the
//! integration tests and `carmine-netbench`. It is real traffic with verified content, not a
//! stand-in for the messenger.
//!
//! Protocol (little-endian), one operation at a time per connection:
//! - `'R' req_len:u32 resp_len:u32 req[req_len]` → `resp[resp_len]`, `resp[i] = req[i % req_len]
//!   ^ 0x5a` (request/response);
//! - `'U' n:u64 data[n]` → `crc32c(data):u32` (upload);
//! - `'D' n:u64 seed:u64` → `n` bytes of [`Pattern`]`(seed)` (download);
//! - `'I'` → `shard:u32` (which shard served the connection).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use carmine_reactor::Poller;

use crate::api::{ConnId, ListenerId, NetStack};
use crate::NetError;

const CHUNK: usize = 64 * 1024;

/// A deterministic byte stream (xorshift64*), identical whatever the read sizes.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    pub fn fill(&mut self, mut out: &mut [u8]) {
        // Finish the current word, then whole words, then start a new one for the tail.
        while self.used < 8 && !out.is_empty() {
            out[0] = self.word[self.used];
            self.used += 1;
            out = &mut out[1..];
        }
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word();
            let n = tail.len();
            tail.copy_from_slice(&self.word[..n]);
            self.used = n;
        }
    }
}

/// Counters the server publishes for tests (written by the shard, read anywhere).
#[derive(Debug, Default)]
pub struct Probe {
    pub sockets: AtomicU64,
    pub connections: AtomicU64,
    pub accepted: AtomicU64,
    pub reaped: AtomicU64,
    pub resets: AtomicU64,
    pub requests: AtomicU64,
    pub polls: AtomicU64,
}

enum Mode {
    Header,
    Req { req_len: usize, resp_len: usize },
    Upload { left: u64, crc: u32 },
    Download { left: u64, pat: Pattern },
}

struct AppConn {
    id: ConnId,
    hdr: [u8; 17],
    hdr_len: usize,
    mode: Mode,
    req: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
}

fn header_len(op: u8) -> Option<usize> {
    match op {
        b'R' | b'U' => Some(9),
        b'D' => Some(17),
        b'I' => Some(1),
        _ => None,
    }
}

enum Step {
    Progress(usize),
    Blocked,
    Done,
}

/// The server application as a shard poller: drives the stack, accepts, serves.
pub struct ServerPoller<S: NetStack> {
    stack: S,
    listeners: Vec<ListenerId>,
    conns: Vec<AppConn>,
    scratch: Vec<u8>,
    shard: u32,
    probe: Arc<Probe>,
}

impl<S: NetStack> ServerPoller<S> {
    pub fn new(stack: S, listeners: Vec<ListenerId>, shard: u32, probe: Arc<Probe>) -> Self {
        Self {
            stack,
            listeners,
            conns: Vec::new(),
            scratch: vec![0; CHUNK],
            shard,
            probe,
        }
    }

    pub fn stack(&self) -> &S {
        &self.stack
    }

    fn serve(&mut self, i: usize) -> Result<Step, NetError> {
        let c = &mut self.conns[i];
        let stack = &mut self.stack;
        let mut work = 0;
        for _ in 0..64 {
            if c.out_pos < c.out.len() {
                let n = stack.write(c.id, &c.out[c.out_pos..])?;
                c.out_pos += n;
                work += n;
                if c.out_pos < c.out.len() {
                    return Ok(if work > 0 {
                        Step::Progress(work)
                    } else {
                        Step::Blocked
                    });
                }
                c.out.clear();
                c.out_pos = 0;
            }
            match &mut c.mode {
                Mode::Download { left, pat } => {
                    if *left == 0 {
                        c.mode = Mode::Header;
                        continue;
                    }
                    let n = (*left).min(CHUNK as u64) as usize;
                    c.out.resize(n, 0);
                    pat.fill(&mut c.out);
                    *left -= n as u64;
                }
                Mode::Header => {
                    let need = if c.hdr_len == 0 {
                        1
                    } else {
                        header_len(c.hdr[0]).unwrap_or(1)
                    };
                    let n = match stack.read(c.id, &mut c.hdr[c.hdr_len..need]) {
                        Ok(n) => n,
                        Err(NetError::Eof) if c.hdr_len == 0 => return Ok(Step::Done),
                        Err(e) => return Err(e),
                    };
                    if n == 0 {
                        break;
                    }
                    work += n;
                    c.hdr_len += n;
                    let Some(full) = header_len(c.hdr[0]) else {
                        return Err(NetError::Config("bad opcode"));
                    };
                    if c.hdr_len < full {
                        continue;
                    }
                    let h = &c.hdr;
                    let u32_at =
                        |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
                    let u64_at = |o: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&h[o..o + 8]);
                        u64::from_le_bytes(b)
                    };
                    c.mode = match h[0] {
                        b'R' => {
                            c.req.clear();
                            Mode::Req {
                                req_len: u32_at(1) as usize,
                                resp_len: u32_at(5) as usize,
                            }
                        }
                        b'U' => Mode::Upload {
                            left: u64_at(1),
                            crc: 0,
                        },
                        b'D' => Mode::Download {
                            left: u64_at(1),
                            pat: Pattern::new(u64_at(9)),
                        },
                        _ => {
                            c.out.extend_from_slice(&self.shard.to_le_bytes());
                            Mode::Header
                        }
                    };
                    c.hdr_len = 0;
                }
                Mode::Req { req_len, resp_len } => {
                    let want = (*req_len - c.req.len()).min(CHUNK);
                    if want > 0 {
                        let n = stack.read(c.id, &mut self.scratch[..want])?;
                        if n == 0 {
                            break;
                        }
                        work += n;
                        c.req.extend_from_slice(&self.scratch[..n]);
                    }
                    if c.req.len() == *req_len {
                        let (rl, sl) = (*req_len, *resp_len);
                        c.out.clear();
                        c.out.extend(
                            (0..sl).map(|i| if rl == 0 { 0 } else { c.req[i % rl] ^ 0x5a }),
                        );
                        c.mode = Mode::Header;
                        self.probe.requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Mode::Upload { left, crc } => {
                    if *left > 0 {
                        let want = (*left).min(CHUNK as u64) as usize;
                        let n = stack.read(c.id, &mut self.scratch[..want])?;
                        if n == 0 {
                            break;
                        }
                        work += n;
                        *crc = carmine_checksum::crc32c_append(*crc, &self.scratch[..n]);
                        *left -= n as u64;
                    }
                    if *left == 0 {
                        c.out.extend_from_slice(&crc.to_le_bytes());
                        c.mode = Mode::Header;
                    }
                }
            }
        }
        Ok(if work > 0 {
            Step::Progress(work)
        } else {
            Step::Blocked
        })
    }
}

impl<S: NetStack> Poller for ServerPoller<S> {
    fn poll(&mut self) -> usize {
        let mut work = self.stack.poll();
        for li in 0..self.listeners.len() {
            while let Ok(Some(id)) = self.stack.accept(self.listeners[li]) {
                work += 1;
                self.conns.push(AppConn {
                    id,
                    hdr: [0; 17],
                    hdr_len: 0,
                    mode: Mode::Header,
                    req: Vec::with_capacity(CHUNK),
                    out: Vec::with_capacity(CHUNK),
                    out_pos: 0,
                });
            }
        }
        let mut i = 0;
        let mut app_work = 0;
        while i < self.conns.len() {
            match self.serve(i) {
                Ok(Step::Progress(n)) => {
                    app_work += n;
                    i += 1;
                }
                Ok(Step::Blocked) => i += 1,
                Ok(Step::Done) | Err(_) => {
                    let c = self.conns.swap_remove(i);
                    let _ = self.stack.close(c.id);
                    app_work += 1;
                }
            }
        }
        if app_work > 0 {
            // Push what the application just queued out now rather than next iteration.
            work += app_work + self.stack.poll();
        }
        let st = self.stack.stats();
        let p = &self.probe;
        p.sockets.store(st.sockets, Ordering::Relaxed);
        p.connections.store(st.connections, Ordering::Relaxed);
        p.accepted.store(st.accepted, Ordering::Relaxed);
        p.reaped.store(st.reaped, Ordering::Relaxed);
        p.resets.store(st.resets, Ordering::Relaxed);
        p.polls.fetch_add(1, Ordering::Relaxed);
        work
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.stack.next_deadline()
    }

    fn wait_fd(&self) -> Option<RawFd> {
        self.stack.wait_fd()
    }
}

/// Client side (blocking kernel sockets) of the protocol.
pub mod client {
    use super::*;

    fn bad(msg: String) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
    }

    /// One request/response round trip; verifies every reply byte.
    pub fn request(s: &mut TcpStream, req: &[u8], resp_len: usize) -> std::io::Result<()> {
        let mut hdr = [0u8; 9];
        hdr[0] = b'R';
        hdr[1..5].copy_from_slice(&(req.len() as u32).to_le_bytes());
        hdr[5..9].copy_from_slice(&(resp_len as u32).to_le_bytes());
        s.write_all(&hdr)?;
        s.write_all(req)?;
        let mut resp = vec![0u8; resp_len];
        s.read_exact(&mut resp)?;
        for (i, b) in resp.iter().enumerate() {
            let want = if req.is_empty() {
                0
            } else {
                req[i % req.len()] ^ 0x5a
            };
            if *b != want {
                return Err(bad(format!("reply byte {i} is {b:#x}, want {want:#x}")));
            }
        }
        Ok(())
    }

    /// Sends `n` bytes of `Pattern(seed)`; checks the server's crc32c against ours.
    pub fn upload(s: &mut TcpStream, n: u64, seed: u64) -> std::io::Result<u32> {
        let mut hdr = [0u8; 9];
        hdr[0] = b'U';
        hdr[1..9].copy_from_slice(&n.to_le_bytes());
        s.write_all(&hdr)?;
        let mut pat = Pattern::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let (mut left, mut crc) = (n, 0u32);
        while left > 0 {
            let k = left.min(CHUNK as u64) as usize;
            pat.fill(&mut buf[..k]);
            crc = carmine_checksum::crc32c_append(crc, &buf[..k]);
            s.write_all(&buf[..k])?;
            left -= k as u64;
        }
        let mut got = [0u8; 4];
        s.read_exact(&mut got)?;
        let got = u32::from_le_bytes(got);
        if got != crc {
            return Err(bad(format!("server crc {got:#x}, sent {crc:#x}")));
        }
        Ok(crc)
    }

    /// Receives `n` bytes of `Pattern(seed)` and checks their crc32c.
    pub fn download(s: &mut TcpStream, n: u64, seed: u64) -> std::io::Result<u32> {
        let mut hdr = [0u8; 17];
        hdr[0] = b'D';
        hdr[1..9].copy_from_slice(&n.to_le_bytes());
        hdr[9..17].copy_from_slice(&seed.to_le_bytes());
        s.write_all(&hdr)?;
        let mut pat = Pattern::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut want = vec![0u8; CHUNK];
        let (mut left, mut crc_got, mut crc_want) = (n, 0u32, 0u32);
        while left > 0 {
            let k = left.min(CHUNK as u64) as usize;
            let r = s.read(&mut buf[..k])?;
            if r == 0 {
                return Err(bad(format!("stream ended with {left} bytes to go")));
            }
            pat.fill(&mut want[..r]);
            crc_got = carmine_checksum::crc32c_append(crc_got, &buf[..r]);
            crc_want = carmine_checksum::crc32c_append(crc_want, &want[..r]);
            left -= r as u64;
        }
        if crc_got != crc_want {
            return Err(bad(format!("crc {crc_got:#x}, expected {crc_want:#x}")));
        }
        Ok(crc_got)
    }

    /// Asks which shard serves this connection.
    pub fn shard_id(s: &mut TcpStream) -> std::io::Result<u32> {
        s.write_all(b"I")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn pattern_is_independent_of_read_sizes() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(9).fill(&mut whole);
        let mut parts = vec![0u8; 1000];
        let mut p = Pattern::new(9);
        let mut off = 0;
        for (i, step) in [1usize, 7, 8, 3, 100, 13, 64].iter().cycle().enumerate() {
            let end = (off + step + i % 2).min(1000);
            p.fill(&mut parts[off..end]);
            off = end;
            if off == 1000 {
                break;
            }
        }
        assert_eq!(whole, parts);
        assert_ne!(whole[..8], whole[8..16]);
    }
}
