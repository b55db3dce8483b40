//! The fixed newstyle handshake as a sans-IO state machine.
//!
//! [`Handshake::new`] queues the greeting; the caller then repeatedly writes
//! [`Handshake::take_output`] and feeds what the client sent to [`Handshake::advance`], which
//! consumes only complete messages (client flags, then whole options) and says how many bytes
//! it used. Bytes after the option that ends the handshake (GO, EXPORT_NAME) belong to the
//! transmission phase and are left to the caller.
//!
//! Invariants:
//! - An option payload is looked at only once entirely buffered, and never longer than
//!   [`MAX_OPTION_LEN`]: a longer length is a [`ProtoError`] (close) before any of it is read.
//! - Every option gets exactly one final reply (ACK or an error), preceded by INFO/SERVER
//!   replies where the option has them; unknown options get ERR_UNSUP, malformed payloads
//!   ERR_INVALID, and the haggling continues.
//! - Errors (`Err`) mean "close the connection": no fixed-newstyle client, unknown client
//!   flags, a bad option magic, an over-long option, EXPORT_NAME of a name we do not serve
//!   (that option has no way to answer an error), more than [`MAX_OPTIONS`] options,
//!   EXPORT_NAME before TLS when TLS is required, bytes after STARTTLS before TLS is up.
//! - The transmission flags sent for an export are its [`ExportInfo::flags`], plus
//!   `SEND_DF` if and only if structured replies were negotiated (DF needs them).
//!
//! TLS (proto.md "TLS support"), chosen by the [`TlsMode`] given to [`Handshake::with_tls`]:
//! - [`TlsMode::NoTls`] (NOTLS): STARTTLS gets ERR_UNSUP; ERR_TLS_REQD is never sent.
//! - [`TlsMode::Required`] (FORCEDTLS): before TLS, every option but STARTTLS and ABORT gets
//!   ERR_TLS_REQD (INFO, GO, unknown and malformed options included), and EXPORT_NAME closes
//!   (it cannot be answered with an error).
//! - [`TlsMode::Optional`] (SELECTIVETLS with no TLS-only export): the client may upgrade;
//!   options without TLS are answered as in NOTLS mode.
//! - STARTTLS before TLS is answered ACK and [`Step::StartTls`] is returned: the option's
//!   bytes and nothing after them are consumed. The caller sends the ACK, runs the TLS
//!   server handshake on the socket, and calls [`Handshake::tls_started`]. Any byte the
//!   client sent after STARTTLS in plain text is a protocol violation (a client must wait
//!   for the ACK): the caller closes, and [`Handshake::advance`] refuses it
//!   ([`ProtoError::DataBeforeTls`]) until `tls_started`.
//! - After `tls_started`, haggling restarts over TLS with no negotiation state from before
//!   (structured replies forgotten); ERR_TLS_REQD is never sent again, and a second
//!   STARTTLS gets ERR_INVALID.

use crate::consts::*;
use crate::reply;
use crate::request::be_u64;
use crate::ProtoError;

/// Options one connection may send before it is considered abusive (real clients send a few).
pub const MAX_OPTIONS: u32 = 1024;

/// An export as the handshake presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    /// Transmission flags (without `SEND_DF`, added when structured replies are negotiated).
    pub flags: u16,
}

/// An option request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    /// Decodes the 16-byte header (`IHAVEOPT`, option, length); `Ok(None)` if `buf` is short.
    pub fn decode(buf: &[u8]) -> Result<Option<OptionHeader>, ProtoError> {
        let Some(b) = buf.get(..OPTION_HEADER_LEN) else {
            return Ok(None);
        };
        let magic = be_u64(&b[0..8]);
        if magic != IHAVEOPT {
            return Err(ProtoError::BadOptionMagic(magic));
        }
        let option = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let length = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if length > MAX_OPTION_LEN {
            return Err(ProtoError::OptionTooLong {
                option,
                length,
                max: MAX_OPTION_LEN,
            });
        }
        Ok(Some(OptionHeader { option, length }))
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// The name and info requests of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a str,
    pub infos: Vec<u16>,
}

impl InfoRequest<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(6 + self.name.len() + 2 * self.infos.len());
        p.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        p.extend_from_slice(self.name.as_bytes());
        p.extend_from_slice(&(self.infos.len() as u16).to_be_bytes());
        for i in &self.infos {
            p.extend_from_slice(&i.to_be_bytes());
        }
        p
    }
}

/// A decoded option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption<'a> {
    ExportName(&'a str),
    Abort,
    List,
    StartTls,
    Info(InfoRequest<'a>),
    Go(InfoRequest<'a>),
    StructuredReply,
    /// Anything else: answered with ERR_UNSUP.
    Unsupported(u32),
}

/// Why an option's payload is malformed (answered with ERR_INVALID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadOption(pub &'static str);

fn name_from(bytes: &[u8]) -> Result<&str, BadOption> {
    if bytes.len() > MAX_NAME_LEN {
        return Err(BadOption("export name longer than 4096 bytes"));
    }
    std::str::from_utf8(bytes).map_err(|_| BadOption("export name is not UTF-8"))
}

impl<'a> ClientOption<'a> {
    /// Decodes the payload of option `option`.
    pub fn decode(option: u32, payload: &'a [u8]) -> Result<ClientOption<'a>, BadOption> {
        let empty = |o| {
            if payload.is_empty() {
                Ok(o)
            } else {
                Err(BadOption("this option takes no data"))
            }
        };
        match option {
            OPT_EXPORT_NAME => Ok(ClientOption::ExportName(name_from(payload)?)),
            OPT_ABORT => Ok(ClientOption::Abort),
            OPT_LIST => empty(ClientOption::List),
            OPT_STARTTLS => empty(ClientOption::StartTls),
            OPT_STRUCTURED_REPLY => empty(ClientOption::StructuredReply),
            OPT_INFO | OPT_GO => {
                let short = BadOption("truncated INFO/GO request");
                let len_bytes = payload.get(..4).ok_or(short)?;
                let nlen =
                    u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
                let nlen = usize::try_from(nlen).map_err(|_| short)?;
                let rest = &payload[4..];
                if nlen > rest.len() {
                    return Err(short);
                }
                let (name, rest) = rest.split_at(nlen);
                let name = name_from(name)?;
                let count = rest.get(..2).ok_or(short)?;
                let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
                let rest = &rest[2..];
                if rest.len() != 2 * count {
                    return Err(BadOption("INFO/GO request count does not match its length"));
                }
                let infos = rest
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                let req = InfoRequest { name, infos };
                Ok(if option == OPT_GO {
                    ClientOption::Go(req)
                } else {
                    ClientOption::Info(req)
                })
            }
            other => Ok(ClientOption::Unsupported(other)),
        }
    }
}

/// What the handshake ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Index into the exports given to [`Handshake::new`].
    pub export: usize,
    pub structured: bool,
    /// The transmission flags sent to the client.
    pub flags: u16,
}

/// What the server offers of TLS on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS (NOTLS): STARTTLS is not supported.
    NoTls,
    /// TLS at the client's choice; every export is served with or without it.
    Optional,
    /// TLS before anything else (FORCEDTLS).
    Required,
}

/// Where [`Handshake::advance`] left things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send the output and feed more input.
    NeedMore,
    /// Send the output, then enter transmission.
    Transmission(Negotiated),
    /// The client sent NBD_OPT_ABORT: send the output (the ACK), then close.
    Aborted,
    /// The client sent NBD_OPT_STARTTLS and it was accepted: send the output (the ACK),
    /// run the TLS server handshake, then call [`Handshake::tls_started`] and carry on
    /// feeding what arrives over TLS. Unconsumed input is a protocol violation (close).
    StartTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ClientFlags,
    Options,
    /// STARTTLS acknowledged, TLS not yet up.
    TlsPending,
    Finished,
}

/// The server side of one fixed newstyle handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    exports: Vec<ExportInfo>,
    state: State,
    tls_mode: TlsMode,
    /// TLS is up (after [`Handshake::tls_started`]).
    tls: bool,
    no_zeroes: bool,
    structured: bool,
    options_seen: u32,
    out: Vec<u8>,
}

impl Handshake {
    /// A handshake offering `exports` without TLS; the first is the default export (empty
    /// name).
    pub fn new(exports: Vec<ExportInfo>) -> Handshake {
        Handshake::with_tls(exports, TlsMode::NoTls)
    }

    /// A handshake offering `exports`, and TLS as `tls_mode` says.
    pub fn with_tls(exports: Vec<ExportInfo>, tls_mode: TlsMode) -> Handshake {
        let mut out = Vec::with_capacity(GREETING_LEN);
        out.extend_from_slice(&NBDMAGIC.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        Handshake {
            exports,
            state: State::ClientFlags,
            tls_mode,
            tls: false,
            no_zeroes: false,
            structured: false,
            options_seen: 0,
            out,
        }
    }

    /// TLS is up: option haggling restarts (over TLS) with no state from before STARTTLS.
    /// Call after [`Step::StartTls`] once the TLS handshake succeeded; does nothing in any
    /// other state.
    pub fn tls_started(&mut self) {
        if self.state == State::TlsPending {
            self.tls = true;
            self.structured = false;
            self.state = State::Options;
        }
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Bytes to send to the client now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Feeds input; returns how many bytes of `input` were consumed and what to do next.
    pub fn advance(&mut self, input: &[u8]) -> Result<(usize, Step), ProtoError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                State::Finished => return Err(ProtoError::HandshakeFinished),
                State::TlsPending if rest.is_empty() => return Ok((used, Step::StartTls)),
                State::TlsPending => return Err(ProtoError::DataBeforeTls),
                State::ClientFlags => {
                    let Some(b) = rest.get(..4) else {
                        return Ok((used, Step::NeedMore));
                    };
                    let flags = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    // proto.md: a client flag the server does not know means close.
                    if flags & FLAG_C_FIXED_NEWSTYLE == 0
                        || flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0
                    {
                        return Err(ProtoError::ClientFlags(flags));
                    }
                    self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                    self.state = State::Options;
                    used += 4;
                }
                State::Options => {
                    let Some(h) = OptionHeader::decode(rest)? else {
                        return Ok((used, Step::NeedMore));
                    };
                    let end = OPTION_HEADER_LEN + h.length as usize;
                    let Some(payload) = rest.get(OPTION_HEADER_LEN..end) else {
                        return Ok((used, Step::NeedMore));
                    };
                    used += end;
                    self.options_seen += 1;
                    if self.options_seen > MAX_OPTIONS {
                        return Err(ProtoError::TooManyOptions(MAX_OPTIONS));
                    }
                    let step = self.option(h.option, payload)?;
                    if step == Step::StartTls {
                        self.state = State::TlsPending;
                        return Ok((used, step));
                    }
                    if step != Step::NeedMore {
                        self.state = State::Finished;
                        return Ok((used, step));
                    }
                }
            }
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        if name.is_empty() && !self.exports.is_empty() {
            return Some(0);
        }
        self.exports.iter().position(|e| e.name == name)
    }

    fn flags_of(&self, i: usize) -> u16 {
        let f = self.exports[i].flags;
        if self.structured {
            f | FLAG_SEND_DF
        } else {
            f
        }
    }

    fn option(&mut self, opt: u32, payload: &[u8]) -> Result<Step, ProtoError> {
        if self.tls_mode == TlsMode::Required
            && !self.tls
            && opt != OPT_STARTTLS
            && opt != OPT_ABORT
        {
            if opt == OPT_EXPORT_NAME {
                return Err(ProtoError::TlsRequired);
            }
            reply::option_error(&mut self.out, opt, REP_ERR_TLS_REQD, "TLS is required");
            return Ok(Step::NeedMore);
        }
        let o = match ClientOption::decode(opt, payload) {
            Ok(o) => o,
            Err(BadOption(why)) if opt == OPT_EXPORT_NAME => {
                return Err(ProtoError::BadExportName(why))
            }
            Err(BadOption(why)) => {
                reply::option_error(&mut self.out, opt, REP_ERR_INVALID, why);
                return Ok(Step::NeedMore);
            }
        };
        match o {
            ClientOption::ExportName(name) => {
                let i = self
                    .find(name)
                    .ok_or_else(|| ProtoError::UnknownExport(name.to_owned()))?;
                let flags = self.flags_of(i);
                reply::export_name_reply(
                    &mut self.out,
                    self.exports[i].size,
                    flags,
                    self.no_zeroes,
                );
                Ok(Step::Transmission(Negotiated {
                    export: i,
                    structured: self.structured,
                    flags,
                }))
            }
            ClientOption::Abort => {
                reply::option_reply(&mut self.out, opt, REP_ACK, &[]);
                Ok(Step::Aborted)
            }
            ClientOption::List => {
                for e in &self.exports {
                    reply::rep_server(&mut self.out, &e.name, &e.description);
                }
                reply::option_reply(&mut self.out, opt, REP_ACK, &[]);
                Ok(Step::NeedMore)
            }
            ClientOption::StartTls if self.tls_mode == TlsMode::NoTls => {
                reply::option_error(&mut self.out, opt, REP_ERR_UNSUP, "TLS is not offered");
                Ok(Step::NeedMore)
            }
            ClientOption::StartTls if self.tls => {
                reply::option_error(&mut self.out, opt, REP_ERR_INVALID, "TLS is already up");
                Ok(Step::NeedMore)
            }
            ClientOption::StartTls => {
                reply::option_reply(&mut self.out, opt, REP_ACK, &[]);
                Ok(Step::StartTls)
            }
            ClientOption::StructuredReply => {
                self.structured = true;
                reply::option_reply(&mut self.out, opt, REP_ACK, &[]);
                Ok(Step::NeedMore)
            }
            ClientOption::Info(req) | ClientOption::Go(req) => {
                let Some(i) = self.find(req.name) else {
                    let msg = format!("no export named {:?}", req.name);
                    reply::option_error(&mut self.out, opt, REP_ERR_UNKNOWN, &msg);
                    return Ok(Step::NeedMore);
                };
                let flags = self.flags_of(i);
                let e = &self.exports[i];
                reply::info_export(&mut self.out, opt, e.size, flags);
                if req.infos.contains(&INFO_NAME) {
                    reply::info_string(&mut self.out, opt, INFO_NAME, &e.name);
                }
                if req.infos.contains(&INFO_DESCRIPTION) && !e.description.is_empty() {
                    reply::info_string(&mut self.out, opt, INFO_DESCRIPTION, &e.description);
                }
                // Sent even unasked (allowed): our constraints are permissive (any byte
                // granularity), so a client ignoring it loses nothing but the 32 MiB cap,
                // which it must respect anyway by default (proto.md's default maximum).
                reply::info_block_size(
                    &mut self.out,
                    opt,
                    MIN_BLOCK_SIZE,
                    PREFERRED_BLOCK_SIZE,
                    MAX_BLOCK_SIZE,
                );
                reply::option_reply(&mut self.out, opt, REP_ACK, &[]);
                if opt == OPT_GO {
                    Ok(Step::Transmission(Negotiated {
                        export: i,
                        structured: self.structured,
                        flags,
                    }))
                } else {
                    Ok(Step::NeedMore)
                }
            }
            ClientOption::Unsupported(code) => {
                let msg = format!("option {code} is not supported");
                reply::option_error(&mut self.out, opt, REP_ERR_UNSUP, &msg);
                Ok(Step::NeedMore)
            }
        }
    }
}
