//! `carmine`: the Carmine admin command line.
//!
//! Every command is one or two calls to the monitor's `MonAdmin` service with the admin token
//! (`authorization: Bearer <token>`). Placement questions (`pg map`, `pg dump`) fetch the map
//! once and run the same `carmine-placement` function the OSDs and clients run, so the answer
//! is exactly what the data path does.
//!
//! Several monitors (`--mon a,b`, etcd mode): the CLI uses the first that accepts a connection;
//! a follower answers each call with a redirect to the leader (`carmine_proto::leader_redirect`),
//! which the CLI follows, repeating the call there (a follower executed nothing).
//!
//! Where the monitor address and token come from, first match wins: the `--mon`/`--token`
//! flags, the `CARMINE_MON`/`CARMINE_TOKEN` environment variables, the config file
//! (`--config`, `CARMINE_CONFIG`, or `$XDG_CONFIG_HOME/carmine/config.toml`, or
//! `~/.config/carmine/config.toml`; keys `mon` and `token`), then `127.0.0.1:6790` for the
//! address. There is no default token.
//!
//! Transport security is chosen the same way (`--tls-ca`/`CARMINE_TLS_CA` or the file's
//! `tls_ca` for TLS, verified against that CA; `--plaintext`/`CARMINE_PLAINTEXT` or the
//! file's `plaintext = true` for none) and applies to every connection the command makes, the
//! monitor's and the OSD admin services' alike ([`carmine_proto::tls`]). Neither is an error:
//! plain text is never the silent default. `carmine cert` ([`cert`]) makes the CA and the
//! daemon certificates.
//!
//! Exit codes: 0 ok, 1 other failure, 2 bad arguments, 3 monitor unreachable, 4 credential
//! refused or missing, 5 the monitor rejected the request (not found, invalid...), 6 a scrub
//! found inconsistent objects (its report is on stdout).

pub mod args;
pub mod auth;
pub mod bench;
pub mod cert;
pub mod image;
pub mod output;
pub mod perf;
pub mod pg;
pub mod progress;
pub mod run;
pub mod scrub;
pub mod status;
pub mod units;

pub use args::Cli;
pub use run::{run, CliError};
