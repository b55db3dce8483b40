//! `carmine image`: block images (`carmine_client::image`), the disks the NBD gateway serves.
//!
//! Images live in the data path, so these commands use client credentials like `carmine
//! bench`: a key file (`--keyfile`, `CARMINE_KEYFILE`), or else the admin token, which stands
//! for the `client.admin` key (`carmine_proto::auth::admin_token_secret`) that every OSD
//! accepts.

use std::path::PathBuf;
use std::sync::Arc;

use carmine_client::image::{Image, ImageError, ImageInfo, ImageSpec, DEFAULT_OBJECT_SIZE};
use carmine_client::{AuthKey, Client, ClientConfig, Credentials};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::args::Format;
use crate::run::CliError;

/// `carmine image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Create an image (sparse: no space is used until it is written).
    Create {
        /// `<pool>/<name>`.
        spec: String,
        /// Size: bytes, or with a K, M, G, T suffix (KiB...).
        #[arg(long, value_parser = crate::units::parse_bytes)]
        size: u64,
        /// Object size: a power of two from 4K to 32M.
        #[arg(long, default_value_t = u64::from(DEFAULT_OBJECT_SIZE), value_parser = crate::units::parse_bytes)]
        object_size: u64,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// The images of a pool.
    Ls {
        /// Pool name.
        pool: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Size, object size, id, features and creation time of an image.
    Info {
        /// `<pool>/<name>`.
        spec: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Change the size. Shrinking discards the data past the new end and needs
    /// --allow-shrink.
    Resize {
        /// `<pool>/<name>`.
        spec: String,
        /// New size: bytes, or with a K, M, G, T suffix.
        #[arg(long, value_parser = crate::units::parse_bytes)]
        size: u64,
        /// Allow a smaller size (the data past it is lost).
        #[arg(long)]
        allow_shrink: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Remove an image and all its data.
    Rm {
        /// `<pool>/<name>`.
        spec: String,
        #[command(flatten)]
        key: KeyArgs,
    },
}

/// The client credentials of an image command.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Client key file (TOML `id`, `key`) from `carmine auth add --keyfile`; without it, the
    /// admin token's key is used.
    #[arg(long, env = "CARMINE_KEYFILE")]
    pub keyfile: Option<PathBuf>,
}

impl ImageCmd {
    fn key(&self) -> &KeyArgs {
        match self {
            ImageCmd::Create { key, .. }
            | ImageCmd::Ls { key, .. }
            | ImageCmd::Info { key, .. }
            | ImageCmd::Resize { key, .. }
            | ImageCmd::Rm { key, .. } => key,
        }
    }
}

fn credentials(key: &KeyArgs, token: Option<&str>) -> Result<Credentials, CliError> {
    match (&key.keyfile, token) {
        (Some(path), _) => Credentials::load(path).map_err(|e| CliError::Other(e.to_string())),
        (None, Some(token)) => Ok(Credentials {
            id: carmine_proto::auth::ADMIN_KEY_ID.to_string(),
            key: AuthKey::new(carmine_proto::auth::admin_token_secret(token)),
        }),
        (None, None) => Err(CliError::NoToken),
    }
}

fn spec(s: &str) -> Result<ImageSpec, CliError> {
    Ok(ImageSpec::parse(s)?)
}

fn info_json(i: &ImageInfo) -> serde_json::Value {
    json!({
        "pool": i.pool,
        "name": i.name,
        "id": i.id,
        "size": i.size,
        "object_size": i.object_size,
        "objects": i.object_count(),
        "features": i.features,
        "created_unix": i.created_unix,
        "format": i.format,
    })
}

fn info_text(i: &ImageInfo) -> String {
    format!(
        "image {}/{}\n  size {} ({} bytes) in {} objects of {}\n  id {}\n  features {:#x}\n  created {} (unix)\n",
        i.pool,
        i.name,
        crate::units::format_bytes(i.size),
        i.size,
        i.object_count(),
        crate::units::format_bytes(u64::from(i.object_size)),
        i.id,
        i.features,
        i.created_unix,
    )
}

fn render(format: Format, v: serde_json::Value, text: String) -> String {
    match format {
        Format::Json => {
            // Serialising a Value cannot fail.
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Plain => text,
    }
}

/// Runs an image command against the monitor(s) `mon`. `tls_ca`: the cluster CA, `None` for
/// plain text (already chosen); `token`: the admin token if one was given.
pub async fn run(
    mon: &str,
    tls_ca: Option<PathBuf>,
    token: Option<&str>,
    cmd: &ImageCmd,
    format: Format,
) -> Result<String, CliError> {
    let creds = credentials(cmd.key(), token)?;
    let cfg = ClientConfig::new(mon, creds);
    let cfg = match tls_ca {
        Some(ca) => cfg.with_ca(ca),
        None => cfg.plaintext(),
    };
    let client = Arc::new(
        Client::connect(cfg)
            .await
            .map_err(|e| CliError::Unreachable {
                addr: mon.to_string(),
                reason: e.to_string(),
            })?,
    );
    Ok(match cmd {
        ImageCmd::Create {
            spec: s,
            size,
            object_size,
            ..
        } => {
            let s = spec(s)?;
            let os = u32::try_from(*object_size)
                .map_err(|_| ImageError::InvalidObjectSize(*object_size))?;
            let img = Image::create(client, &s.pool, &s.name, *size, os).await?;
            let i = img.info();
            render(
                format,
                info_json(i),
                format!("created {}\n{}", s, info_text(i)),
            )
        }
        ImageCmd::Ls { pool, .. } => {
            let names = Image::list(&client, pool).await?;
            let text: String = names.iter().map(|n| format!("{n}\n")).collect();
            render(format, json!(names), text)
        }
        ImageCmd::Info { spec: s, .. } => {
            let s = spec(s)?;
            let img = Image::open(client, &s.pool, &s.name).await?;
            render(format, info_json(img.info()), info_text(img.info()))
        }
        ImageCmd::Resize {
            spec: s,
            size,
            allow_shrink,
            ..
        } => {
            let s = spec(s)?;
            let mut img = Image::open(client, &s.pool, &s.name).await?;
            let old = img.size();
            if *size < old && !allow_shrink {
                return Err(CliError::Rejected(format!(
                    "{s}: {size} is smaller than the image ({old} bytes); pass --allow-shrink to discard the data past it"
                )));
            }
            let bar = (*size < old)
                .then(|| {
                    let os = u64::from(img.info().object_size);
                    let gone = old.div_ceil(os) - size.div_ceil(os);
                    crate::progress::bar(gone, "objects", &format!("shrinking {s}"))
                })
                .flatten();
            let r = img
                .resize_reporting(*size, &|done, _| {
                    if let Some(b) = &bar {
                        b.set_position(done);
                    }
                })
                .await;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            r?;
            render(
                format,
                info_json(img.info()),
                format!("resized {s} from {old} to {size} bytes\n"),
            )
        }
        ImageCmd::Rm { spec: s, .. } => {
            let s = spec(s)?;
            let bar = std::sync::OnceLock::new();
            let r = Image::remove_reporting(&client, &s.pool, &s.name, &|done, total| {
                // The total is known once the header is read: the bar starts then.
                let b = bar.get_or_init(|| {
                    crate::progress::bar(total, "objects", &format!("removing {s}"))
                });
                if let Some(b) = b {
                    b.set_position(done);
                }
            })
            .await;
            if let Some(Some(b)) = bar.get() {
                b.finish_and_clear();
            }
            let objects = r?;
            render(
                format,
                json!({"removed": s.to_string(), "data_objects": objects}),
                format!("removed {s} ({objects} data objects)\n"),
            )
        }
    })
}
