//! Block images: a byte-addressed virtual disk striped over the objects of one pool, as RBD
//! does, for front ends such as the NBD gateway (`carmine-nbd`) and `carmine image`.
//!
//! ## Layout in the pool
//!
//! - The **header** object `image_header.<name>`: one JSON document ([`ImageInfo`]: format
//!   version, name, id, size, object size, features, creation time). JSON so that an operator
//!   can read it with any tool; it is rewritten whole (`write_full`) on resize.
//! - The **data** objects `image_data.<id>.<n>`, `n` in 16 lowercase hex digits: object `n`
//!   holds bytes `[n × object_size, (n + 1) × object_size)` of the image. The id (16 random hex
//!   digits, fixed at creation) rather than the name keeps an image's data apart from any
//!   earlier image of the same name whose removal was interrupted.
//!
//! ## Rules
//!
//! - **Sparse.** A data object exists only once something was written into it. Reading an
//!   object that does not exist, or past an object's end, gives zeros. Zeroing or discarding a
//!   whole object removes it; a partial range of an existing object is overwritten with zeros.
//! - **Durable when acknowledged.** [`Image::write`] returns once every object write was
//!   acknowledged by its PG's primary, which acknowledges only after every replica of the
//!   acting set persisted it. So there is nothing to flush: [`Image::flush`] is a no-op, and a
//!   write acknowledged through one front end connection is durable for all of them.
//! - **Ranges are checked** against the image's size as read at [`Image::open`]; the
//!   pieces of one request (one per object, at most the client's `max_io_size` each) run
//!   concurrently. Writes that overlap and run concurrently land in an unspecified order,
//!   as with any block device.
//! - **Removal order.** `rm` and a shrinking `resize` remove data objects first and change
//!   the header last: an interrupted removal leaves a header to retry with, never orphaned
//!   data that a later grow would expose.
//! - Unknown feature bits in a header make [`Image::open`] refuse the image (like RBD's
//!   incompatible features): an old client must not misread a newer layout.
//!
//! Not yet: exclusive creation (the OSD has no create-if-absent op, so two `create`s of one
//! name racing each other both succeed and the later header wins; a sequential `create` of an
//! existing name is refused), snapshots, clones, an object map.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::try_join_all;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cluster::{Client, Error};
use carmine_wire::OpError;

/// RBD's default: 4 MiB objects.
pub const DEFAULT_OBJECT_SIZE: u32 = 4 << 20;
/// Smallest object size (RBD's order 12).
pub const MIN_OBJECT_SIZE: u32 = 4 << 10;
/// Largest object size (RBD's order 25).
pub const MAX_OBJECT_SIZE: u32 = 32 << 20;
/// Largest image: 1 PiB.
pub const MAX_IMAGE_SIZE: u64 = 1 << 50;
/// Longest image name (the header object's name must stay well under the wire's limit).
pub const MAX_NAME_LEN: usize = 256;
/// Feature bits this client understands. None are defined yet.
pub const KNOWN_FEATURES: u64 = 0;
/// The header's format version.
const FORMAT: u32 = 1;
const HEADER_PREFIX: &str = "image_header.";
const DATA_PREFIX: &str = "image_data.";
/// The most of a header object that is read.
const MAX_HEADER_LEN: u64 = 64 << 10;
/// Object removals (rm, shrink) kept in flight at once.
const REMOVE_CONCURRENCY: usize = 32;
/// What zeroing writes from: one shared buffer, so a zeroing request allocates nothing.
static ZEROS: [u8; 4 << 20] = [0; 4 << 20];

/// Errors of the image layer.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid image spec {0:?}: expected <pool>/<name>")]
    InvalidSpec(String),
    #[error(
        "invalid object size {0}: a power of two from {MIN_OBJECT_SIZE} (4 KiB) to {MAX_OBJECT_SIZE} (32 MiB)"
    )]
    InvalidObjectSize(u64),
    #[error("image size {0} is larger than the largest image ({MAX_IMAGE_SIZE} bytes)")]
    TooLarge(u64),
    #[error("image {pool}/{name} already exists")]
    Exists { pool: String, name: String },
    #[error("no image {pool}/{name}")]
    NotFound { pool: String, name: String },
    #[error("image {pool}/{name}: unreadable header: {source}")]
    BadHeader {
        pool: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {pool}/{name}: header format {format} is not {FORMAT}")]
    BadFormat {
        pool: String,
        name: String,
        format: u32,
    },
    #[error("image {pool}/{name} uses feature bits {features:#x} this client does not know")]
    UnsupportedFeatures {
        pool: String,
        name: String,
        features: u64,
    },
    #[error("bytes {offset}..{offset}+{len} are beyond the end of the image ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error(transparent)]
    Cluster(#[from] Error),
}

impl ImageError {
    /// The cluster is out of space (an OSD answered `NoSpace`).
    pub fn is_no_space(&self) -> bool {
        matches!(self, ImageError::Cluster(Error::Op(OpError::NoSpace)))
    }
}

/// `<pool>/<name>`, as the CLI and the gateway name images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub pool: String,
    pub name: String,
}

impl ImageSpec {
    /// Parses `<pool>/<name>`: the pool is everything before the first `/`.
    pub fn parse(s: &str) -> Result<ImageSpec, ImageError> {
        let (pool, name) = s
            .split_once('/')
            .ok_or_else(|| ImageError::InvalidSpec(s.to_string()))?;
        if pool.is_empty() {
            return Err(ImageError::InvalidSpec(s.to_string()));
        }
        check_name(name)?;
        Ok(ImageSpec {
            pool: pool.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.name)
    }
}

/// What the header holds, plus the pool it was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Not stored: the pool the header was read from.
    #[serde(skip)]
    pub pool: String,
    pub format: u32,
    pub name: String,
    /// 16 hex digits, fixed at creation: the data objects' prefix.
    pub id: String,
    pub size: u64,
    pub object_size: u32,
    pub features: u64,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
}

impl ImageInfo {
    /// Data objects the image can have (the last one may be partly beyond the end).
    pub fn object_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.object_size))
    }

    /// The name of data object `n`.
    pub fn data_object(&self, n: u64) -> String {
        format!("{DATA_PREFIX}{}.{n:016x}", self.id)
    }
}

/// The header object of image `name`.
pub fn header_object(name: &str) -> String {
    format!("{HEADER_PREFIX}{name}")
}

/// One piece of a byte range of the image, inside one data object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The data object's number.
    pub object: u64,
    /// Offset in that object.
    pub offset: u64,
    pub len: u64,
    /// Offset of this piece in the caller's range.
    pub at: u64,
}

/// Splits `len` bytes at image offset `offset` into pieces that stay inside one object and
/// are at most `max_piece` long, in order.
pub fn extents(
    offset: u64,
    len: u64,
    object_size: u32,
    max_piece: u64,
) -> impl Iterator<Item = Extent> {
    let os = u64::from(object_size);
    let max_piece = max_piece.max(1);
    let mut at = 0u64;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let pos = offset + at;
        let in_obj = pos % os;
        let n = (len - at).min(os - in_obj).min(max_piece);
        let e = Extent {
            object: pos / os,
            offset: in_obj,
            len: n,
            at,
        };
        at += n;
        Some(e)
    })
}

fn check_name(name: &str) -> Result<(), ImageError> {
    let bad = |reason| {
        Err(ImageError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 256 bytes");
    }
    if name.contains('/') {
        return bad("contains '/'");
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("contains whitespace or control characters");
    }
    Ok(())
}

fn check_object_size(object_size: u64) -> Result<u32, ImageError> {
    let ok = object_size.is_power_of_two()
        && (u64::from(MIN_OBJECT_SIZE)..=u64::from(MAX_OBJECT_SIZE)).contains(&object_size);
    if ok {
        u32::try_from(object_size).map_err(|_| ImageError::InvalidObjectSize(object_size))
    } else {
        Err(ImageError::InvalidObjectSize(object_size))
    }
}

fn check_size(size: u64) -> Result<(), ImageError> {
    if size > MAX_IMAGE_SIZE {
        return Err(ImageError::TooLarge(size));
    }
    Ok(())
}

fn random_id() -> String {
    let mut b = [0u8; 8];
    // Without the OS generator, the time and pid still make a collision within one pool
    // (the only place ids must differ) practically impossible.
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ (u64::from(std::process::id()) << 40)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An open image: its header and the client that reaches its pool.
pub struct Image {
    client: Arc<Client>,
    info: ImageInfo,
    /// Largest piece one op carries (the client's wire limit).
    max_piece: u64,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("info", &self.info).finish()
    }
}

impl Image {
    /// Creates image `name` of `size` bytes in `pool` (no data objects yet) and opens it.
    pub async fn create(
        client: Arc<Client>,
        pool: &str,
        name: &str,
        size: u64,
        object_size: u32,
    ) -> Result<Image, ImageError> {
        check_name(name)?;
        check_size(size)?;
        let object_size = check_object_size(u64::from(object_size))?;
        let header = header_object(name);
        match client.stat(pool, &header).await {
            Ok(_) => {
                return Err(ImageError::Exists {
                    pool: pool.into(),
                    name: name.into(),
                })
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let info = ImageInfo {
            pool: pool.to_string(),
            format: FORMAT,
            name: name.to_string(),
            id: random_id(),
            size,
            object_size,
            features: 0,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        write_header(&client, &info).await?;
        Ok(Image::with(client, info))
    }

    /// Opens image `name` of `pool`: reads and checks its header.
    pub async fn open(client: Arc<Client>, pool: &str, name: &str) -> Result<Image, ImageError> {
        let info = read_header(&client, pool, name).await?;
        Ok(Image::with(client, info))
    }

    fn with(client: Arc<Client>, info: ImageInfo) -> Image {
        let max_piece = u64::from(client.limits().max_io_size);
        Image {
            client,
            info,
            max_piece,
        }
    }

    /// The names of the images in `pool`, sorted. Lists the whole pool (headers are found by
    /// their prefix).
    pub async fn list(client: &Client, pool: &str) -> Result<Vec<String>, ImageError> {
        let mut names: Vec<String> = client
            .list(pool)
            .await?
            .into_iter()
            .filter_map(|o| o.strip_prefix(HEADER_PREFIX).map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes image `name` of `pool`: every data object, then the header. Returns how many
    /// data objects existed.
    pub async fn remove(client: &Client, pool: &str, name: &str) -> Result<u64, ImageError> {
        Self::remove_reporting(client, pool, name, &|_, _| {}).await
    }

    /// [`Image::remove`], calling `progress(done, total)` as data objects are removed (every
    /// object slot counts, whether it existed or not).
    pub async fn remove_reporting(
        client: &Client,
        pool: &str,
        name: &str,
        progress: &Progress<'_>,
    ) -> Result<u64, ImageError> {
        let info = read_header(client, pool, name).await?;
        let removed = remove_objects(client, &info, 0..info.object_count(), progress).await?;
        match client.remove(pool, &header_object(name)).await {
            Ok(()) => Ok(removed),
            // Removed by a concurrent `rm`: the result is the same.
            Err(e) if e.is_not_found() => Ok(removed),
            Err(e) => Err(e.into()),
        }
    }

    pub fn info(&self) -> &ImageInfo {
        &self.info
    }

    pub fn size(&self) -> u64 {
        self.info.size
    }

    /// Changes the size. Shrinking removes the data beyond the new end first (whole objects
    /// removed, the last partial object zeroed past the end) so that growing again reads
    /// zeros there; the header is written last.
    pub async fn resize(&mut self, new_size: u64) -> Result<(), ImageError> {
        self.resize_reporting(new_size, &|_, _| {}).await
    }

    /// [`Image::resize`], calling `progress(done, total)` as a shrink removes data objects.
    pub async fn resize_reporting(
        &mut self,
        new_size: u64,
        progress: &Progress<'_>,
    ) -> Result<(), ImageError> {
        check_size(new_size)?;
        if new_size < self.info.size {
            let os = u64::from(self.info.object_size);
            let first_whole = new_size.div_ceil(os);
            remove_objects(
                &self.client,
                &self.info,
                first_whole..self.info.object_count(),
                progress,
            )
            .await?;
            let tail_end = (first_whole * os).min(self.info.size);
            if tail_end > new_size {
                self.zero_range(new_size, tail_end - new_size).await?;
            }
        }
        let mut info = self.info.clone();
        info.size = new_size;
        write_header(&self.client, &info).await?;
        self.info = info;
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.info.size => Ok(()),
            _ => Err(ImageError::OutOfRange {
                offset,
                len,
                size: self.info.size,
            }),
        }
    }

    /// Reads `len` bytes at `offset`; never-written parts read as zeros.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ImageError> {
        self.check_range(offset, len as u64)?;
        let pieces: Vec<Extent> =
            extents(offset, len as u64, self.info.object_size, self.max_piece).collect();
        if let [e] = pieces.as_slice() {
            // One piece (the common case): the reply's buffer is the result.
            let mut data = self.read_piece(e).await?;
            data.resize(len, 0);
            return Ok(data);
        }
        let parts = try_join_all(pieces.iter().map(|e| self.read_piece(e))).await?;
        let mut out = vec![0u8; len];
        for (e, data) in pieces.iter().zip(parts) {
            let at = e.at as usize;
            out[at..at + data.len()].copy_from_slice(&data);
        }
        Ok(out)
    }

    /// The piece's bytes as stored: possibly shorter than asked (the rest reads as zeros).
    async fn read_piece(&self, e: &Extent) -> Result<Vec<u8>, ImageError> {
        let object = self.info.data_object(e.object);
        match self
            .client
            .read(self.info.pool.as_str(), &object, e.offset, e.len as u32)
            .await
        {
            Ok(mut data) => {
                data.truncate(e.len as usize);
                Ok(data)
            }
            Err(err) if err.is_not_found() => Ok(Vec::new()),
            Err(err) => Err(err.into()),
        }
    }

    /// Writes `data` at `offset`. Returns once every piece is durable on every replica.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), ImageError> {
        self.check_range(offset, data.len() as u64)?;
        let pieces = extents(
            offset,
            data.len() as u64,
            self.info.object_size,
            self.max_piece,
        );
        try_join_all(pieces.map(|e| {
            let object = self.info.data_object(e.object);
            let piece = &data[e.at as usize..(e.at + e.len) as usize];
            async move {
                self.client
                    .write(self.info.pool.as_str(), &object, e.offset, piece)
                    .await
            }
        }))
        .await?;
        Ok(())
    }

    /// Writes zeros over `len` bytes at `offset`, keeping the range allocated (NBD's
    /// WRITE_ZEROES with NO_HOLE). [`Image::discard`] frees instead.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        let piece = self.max_piece.min(ZEROS.len() as u64);
        stream::iter(extents(offset, len, self.info.object_size, piece).map(Ok))
            .try_for_each_concurrent(REMOVE_CONCURRENCY, |e| async move {
                let object = self.info.data_object(e.object);
                self.client
                    .write(
                        self.info.pool.as_str(),
                        &object,
                        e.offset,
                        &ZEROS[..e.len as usize],
                    )
                    .await
                    .map_err(ImageError::from)
            })
            .await
    }

    /// Discards (trims) `len` bytes at `offset`: they read as zeros afterwards. Objects
    /// wholly inside the range are removed; partial ranges of existing objects are
    /// overwritten with zeros (a trim that left old data for a later read would surprise a
    /// block device user).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_range(offset, len)?;
        self.zero_range(offset, len).await
    }

    /// Nothing to do: acknowledged writes are already durable on every replica.
    pub async fn flush(&self) -> Result<(), ImageError> {
        Ok(())
    }

    async fn zero_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        let os = u64::from(self.info.object_size);
        // Per object (not per wire piece): a whole object is one remove. Lazily: a huge
        // range is not materialized.
        stream::iter(extents(offset, len, self.info.object_size, os).map(Ok))
            .try_for_each_concurrent(REMOVE_CONCURRENCY, |e| self.zero_in_object(e))
            .await
    }

    async fn zero_in_object(&self, e: Extent) -> Result<(), ImageError> {
        let os = u64::from(self.info.object_size);
        let object = self.info.data_object(e.object);
        let pool = self.info.pool.as_str();
        // The last object of an image whose size is not a multiple of the object size
        // holds no bytes past the end: covering up to the end is covering it all.
        let object_end = (e.object * os + os).min(self.info.size) - e.object * os;
        if e.offset == 0 && e.len >= object_end {
            return match self.client.remove(pool, &object).await {
                Err(err) if !err.is_not_found() => Err(err.into()),
                _ => Ok(()),
            };
        }
        // Partial: only an existing object needs zeros (a missing one already reads so).
        let stored = match self.client.stat(pool, &object).await {
            Ok(size) => size,
            Err(err) if err.is_not_found() => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        // Bytes past the object's stored end already read as zeros.
        let end = (e.offset + e.len).min(stored);
        if end <= e.offset {
            return Ok(());
        }
        let piece = self.max_piece.min(ZEROS.len() as u64);
        let mut at = e.offset;
        while at < end {
            let n = (end - at).min(piece) as usize;
            self.client.write(pool, &object, at, &ZEROS[..n]).await?;
            at += n as u64;
        }
        Ok(())
    }
}

async fn read_header(client: &Client, pool: &str, name: &str) -> Result<ImageInfo, ImageError> {
    check_name(name)?;
    let header = header_object(name);
    let not_found = || ImageError::NotFound {
        pool: pool.into(),
        name: name.into(),
    };
    let size = match client.stat(pool, &header).await {
        Ok(size) => size,
        Err(e) if e.is_not_found() => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    // A real header is a few hundred bytes; anything longer than this fails to parse.
    let len = size.min(MAX_HEADER_LEN) as u32;
    let bytes = match client.read(pool, &header, 0, len).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    decode_header(pool, name, &bytes)
}

/// Decodes and checks a header read from `pool` for image `name`.
pub fn decode_header(pool: &str, name: &str, bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    let mut info: ImageInfo =
        serde_json::from_slice(bytes).map_err(|source| ImageError::BadHeader {
            pool: pool.into(),
            name: name.into(),
            source,
        })?;
    info.pool = pool.to_string();
    if info.format != FORMAT {
        return Err(ImageError::BadFormat {
            pool: pool.into(),
            name: name.into(),
            format: info.format,
        });
    }
    if info.features & !KNOWN_FEATURES != 0 {
        return Err(ImageError::UnsupportedFeatures {
            pool: pool.into(),
            name: name.into(),
            features: info.features & !KNOWN_FEATURES,
        });
    }
    check_object_size(u64::from(info.object_size))?;
    check_size(info.size)?;
    let id_ok = info.id.len() == 16 && info.id.bytes().all(|b| b.is_ascii_hexdigit());
    if info.name != name || !id_ok {
        // A header copied under another name, or edited by hand: its data objects would be
        // someone else's.
        return Err(ImageError::InvalidName {
            name: name.into(),
            reason: "the header names another image or has no valid id",
        });
    }
    Ok(info)
}

fn encode_header(info: &ImageInfo) -> Vec<u8> {
    // A plain struct of strings and integers always serializes.
    serde_json::to_vec(info).unwrap_or_default()
}

async fn write_header(client: &Client, info: &ImageInfo) -> Result<(), ImageError> {
    client
        .write_full(
            info.pool.as_str(),
            &header_object(&info.name),
            &encode_header(info),
        )
        .await?;
    Ok(())
}

/// A progress callback of a long image operation: `(done, total)` in object slots.
pub type Progress<'a> = dyn Fn(u64, u64) + Sync + 'a;

/// Removes data objects `range` of `info`'s image, `REMOVE_CONCURRENCY` at a time; counts
/// those that existed.
async fn remove_objects(
    client: &Client,
    info: &ImageInfo,
    range: std::ops::Range<u64>,
    progress: &Progress<'_>,
) -> Result<u64, ImageError> {
    let pool = info.pool.as_str();
    let total = range.end.saturating_sub(range.start);
    stream::iter(range)
        .map(|n| async move {
            match client.remove(pool, &info.data_object(n)).await {
                Ok(()) => Ok(1u64),
                Err(e) if e.is_not_found() => Ok(0),
                Err(e) => Err(ImageError::from(e)),
            }
        })
        .buffer_unordered(REMOVE_CONCURRENCY)
        .try_fold((0u64, 0u64), |(removed, done), n| async move {
            progress(done + 1, total);
            Ok((removed + n, done + 1))
        })
        .await
        .map(|(removed, _)| removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_parses_pool_and_name() {
        let s = ImageSpec::parse("rbd/vm-1").unwrap();
        assert_eq!((s.pool.as_str(), s.name.as_str()), ("rbd", "vm-1"));
        assert_eq!(s.to_string(), "rbd/vm-1");
        for bad in ["rbd", "/x", "rbd/", "rbd/a/b", "rbd/a b", "rbd/a\n"] {
            assert!(ImageSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn object_sizes_are_powers_of_two_in_range() {
        assert_eq!(check_object_size(4 << 20).unwrap(), 4 << 20);
        assert!(check_object_size(4096).is_ok());
        assert!(check_object_size(32 << 20).is_ok());
        for bad in [0, 2048, 3 << 20, 64 << 20, u64::MAX] {
            assert!(check_object_size(bad).is_err(), "{bad} accepted");
        }
    }

    fn info(size: u64, object_size: u32) -> ImageInfo {
        ImageInfo {
            pool: "p".into(),
            format: FORMAT,
            name: "img".into(),
            id: "0123456789abcdef".into(),
            size,
            object_size,
            features: 0,
            created_unix: 1,
        }
    }

    #[test]
    fn header_round_trips_and_is_checked() {
        let i = info(10 << 30, 4 << 20);
        let bytes = encode_header(&i);
        assert_eq!(decode_header("p", "img", &bytes).unwrap(), i);
        // Read from another pool: the pool comes from where it was read.
        assert_eq!(decode_header("q", "img", &bytes).unwrap().pool, "q");
        // Another image's header, unknown features, a newer format, garbage.
        assert!(decode_header("p", "other", &bytes).is_err());
        let mut f = i.clone();
        f.features = 1 << 3;
        assert!(matches!(
            decode_header("p", "img", &encode_header(&f)),
            Err(ImageError::UnsupportedFeatures { features: 8, .. })
        ));
        let mut v = i.clone();
        v.format = 2;
        assert!(matches!(
            decode_header("p", "img", &encode_header(&v)),
            Err(ImageError::BadFormat { format: 2, .. })
        ));
        assert!(matches!(
            decode_header("p", "img", b"\x00garbage"),
            Err(ImageError::BadHeader { .. })
        ));
        let mut o = i;
        o.object_size = 3000;
        assert!(decode_header("p", "img", &encode_header(&o)).is_err());
    }

    #[test]
    fn data_object_names() {
        let i = info(1 << 30, 4 << 20);
        assert_eq!(
            i.data_object(0),
            "image_data.0123456789abcdef.0000000000000000"
        );
        assert_eq!(
            i.data_object(255),
            "image_data.0123456789abcdef.00000000000000ff"
        );
        assert_eq!(i.object_count(), 256);
        assert_eq!(info((1 << 30) + 1, 4 << 20).object_count(), 257);
        assert_eq!(info(0, 4 << 20).object_count(), 0);
    }

    #[test]
    fn extents_split_at_object_boundaries() {
        let os = 4 << 20;
        let e: Vec<Extent> = extents(os as u64 - 100, 300, os, 1 << 30).collect();
        assert_eq!(
            e,
            vec![
                Extent {
                    object: 0,
                    offset: os as u64 - 100,
                    len: 100,
                    at: 0
                },
                Extent {
                    object: 1,
                    offset: 0,
                    len: 200,
                    at: 100
                },
            ]
        );
        assert_eq!(extents(5, 0, os, 1 << 20).count(), 0);
    }

    proptest! {
        /// The pieces cover the range exactly, in order, each inside one object and no
        /// longer than the wire limit.
        #[test]
        fn extents_tile_the_range(
            offset in 0u64..(1 << 40),
            len in 0u64..(64 << 20),
            order in 12u32..=25,
            max_piece in 1u64..(8 << 20),
        ) {
            let os = 1u32 << order;
            let mut next = 0u64;
            for e in extents(offset, len, os, max_piece) {
                prop_assert_eq!(e.at, next);
                prop_assert!(e.len > 0 && e.len <= max_piece);
                prop_assert!(e.offset + e.len <= u64::from(os));
                prop_assert_eq!(e.object * u64::from(os) + e.offset, offset + e.at);
                next += e.len;
            }
            prop_assert_eq!(next, len);
        }

        /// Names that parse come back the same; nothing panics.
        #[test]
        fn spec_parse_never_panics(s in "\\PC{0,40}") {
            if let Ok(spec) = ImageSpec::parse(&s) {
                prop_assert_eq!(spec.to_string(), s);
            }
        }
    }
}
