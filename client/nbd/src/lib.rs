//! # carmine-nbd
//!
//! An NBD server exporting Carmine block images (`carmine-nbd --image POOL/NAME`), so that
//! qemu, nbd-client (the kernel's `/dev/nbdX`), libnbd tools and fio can use them.
//!
//! - The protocol is `carmine-nbd-proto`: sans-IO, unit- and property-tested, fuzzed. This
//!   crate only moves bytes and calls the backend.
//! - [`server`]: the tokio server. Per connection, one reader task (decodes requests, reads
//!   write payloads, applies backpressure through a per-connection budget), one task per
//!   request, one writer task answering in completion order. Its module docs state the rules.
//! - TLS: NBD_OPT_STARTTLS with [`NbdTls`] in [`ServerConfig::tls`] (required or optional);
//!   the handshake runs on the raw stream, and after STARTTLS on a tokio-rustls stream, so a
//!   connection is generic over its stream.
//! - [`export`]: the [`BlockExport`] trait the server is generic over, and its durability
//!   contract (an acknowledged write is durable, so FLUSH/FUA have nothing left to do and
//!   several connections may share an export: CAN_MULTI_CONN).
//! - [`image_export`]: [`BlockExport`] for `carmine_client::image::Image`.
//!
//! The binary (`src/main.rs`) parses the command line, connects to the cluster, opens the
//! images, and runs [`Server::run`] until SIGTERM/SIGINT.

pub mod export;
pub mod image_export;
pub mod server;

pub use export::{BlockExport, ExportError};
pub use server::{ConnError, Export, NbdTls, Server, ServerConfig, TlsMode, EXPORT_FLAGS};

#[cfg(test)]
mod tests;
