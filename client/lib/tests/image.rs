//! Block images against real processes: a monitor (in this process) and three
//! `carmine-osd run` processes (kernel sockets, memstore). What an NBD or other front end
//! relies on: byte-exact reads across object boundaries, zeros where nothing was written,
//! zeroing and discarding, resize, listing and removal of every data object.

mod common;

use std::sync::Arc;
use std::time::Duration;

use carmine_client::image::{header_object, Image, ImageError};
use carmine_client::Client;
use common::{runtime, Cluster};

const LIMIT: Duration = Duration::from_secs(60);
const OS: u32 = 64 << 10;

/// Deterministic, position-dependent bytes (a misplaced piece must show).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|k| (k.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503) ^ (k >> 9)) as u8)
        .collect()
}

/// The data objects of the pool that belong to `img`.
async fn data_objects(client: &Client, pool: &str, img: &Image) -> Vec<String> {
    let prefix = format!("image_data.{}.", img.info().id);
    let mut v: Vec<String> = client
        .list(pool)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

#[test]
fn image_io_is_byte_exact_sparse_and_removable() {
    let rt = runtime();
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let cluster = Cluster::start("rbd", 16, &[1, 1, 1]).await;
            let client = Arc::new(Client::connect(cluster.config()).await.unwrap());
            // 10 objects of 64 KiB and a partial 11th.
            let size = 10 * u64::from(OS) + 1000;
            let img = Image::create(client.clone(), "rbd", "disk", size, OS)
                .await
                .unwrap();
            assert_eq!(img.size(), size);
            // Sparse: nothing stored yet, everything reads as zeros.
            assert!(data_objects(&client, "rbd", &img).await.is_empty());
            assert_eq!(img.read(0, 200_000).await.unwrap(), vec![0u8; 200_000]);

            // A model of the disk; writes at unaligned offsets across object boundaries.
            let mut model = vec![0u8; size as usize];
            let writes: [(u64, usize); 5] = [
                (u64::from(OS) - 7, 20),          // across the 0/1 boundary
                (3 * u64::from(OS) + 5, 200_000), // spans 4 objects
                (0, 1),                           // first byte
                (size - 1500, 1500),              // up to the last byte (partial object)
                (9 * u64::from(OS) - 1, 2),       // across 8/9
            ];
            for (i, (off, len)) in writes.iter().enumerate() {
                let data = pattern(i as u64 + 1, *len);
                img.write(*off, &data).await.unwrap();
                model[*off as usize..*off as usize + len].copy_from_slice(&data);
            }
            assert_eq!(img.read(0, size as usize).await.unwrap(), model);
            // Unaligned reads inside and across objects.
            for (off, len) in [(1u64, 10usize), (u64::from(OS) - 3, 6), (200_001, 300_000)] {
                let got = img.read(off, len).await.unwrap();
                assert_eq!(
                    got,
                    model[off as usize..off as usize + len],
                    "read {off}+{len}"
                );
            }
            // Objects 2 and 7 were never written: they do not exist.
            let objs = data_objects(&client, "rbd", &img).await;
            assert!(!objs.contains(&img.info().data_object(2)), "{objs:?}");
            assert!(!objs.contains(&img.info().data_object(7)), "{objs:?}");
            assert!(objs.contains(&img.info().data_object(10)), "{objs:?}");

            // Out of range: refused, nothing written.
            assert!(matches!(
                img.write(size - 1, &[1, 2]).await,
                Err(ImageError::OutOfRange { .. })
            ));
            assert!(matches!(
                img.read(size, 1).await,
                Err(ImageError::OutOfRange { .. })
            ));
            assert!(matches!(
                img.read(u64::MAX, 2).await,
                Err(ImageError::OutOfRange { .. })
            ));

            // Zero a range covering object 4 whole and parts of 3 and 5: 4 is removed, the
            // parts read as zeros, the rest is intact.
            let (zo, zl) = (3 * u64::from(OS) + 100, 2 * u64::from(OS) + 50);
            img.discard(zo, zl).await.unwrap();
            model[zo as usize..(zo + zl) as usize].fill(0);
            assert!(!data_objects(&client, "rbd", &img)
                .await
                .contains(&img.info().data_object(4)));
            // Discard the partial last object entirely (it ends at the image's end).
            img.discard(10 * u64::from(OS), 1000).await.unwrap();
            model[10 * OS as usize..].fill(0);
            assert!(!data_objects(&client, "rbd", &img)
                .await
                .contains(&img.info().data_object(10)));
            assert_eq!(img.read(0, size as usize).await.unwrap(), model);
            // write_zeroes keeps the range allocated (NBD's NO_HOLE): object 7, never
            // written, exists afterwards and reads as zeros, as do the bytes around it.
            let (wo, wl) = (7 * u64::from(OS) - 10, u64::from(OS) + 20);
            img.write_zeroes(wo, wl).await.unwrap();
            model[wo as usize..(wo + wl) as usize].fill(0);
            assert!(data_objects(&client, "rbd", &img)
                .await
                .contains(&img.info().data_object(7)));
            assert_eq!(img.read(0, size as usize).await.unwrap(), model);

            // Another handle (what a second gateway connection is) sees the same bytes.
            let again = Image::open(client.clone(), "rbd", "disk").await.unwrap();
            assert_eq!(again.info(), img.info());
            assert_eq!(again.read(0, size as usize).await.unwrap(), model);

            // Shrink into object 3, grow back: the discarded bytes read as zeros.
            let mut img = img;
            let small = 3 * u64::from(OS) + 10;
            img.resize(small).await.unwrap();
            assert_eq!(
                Image::open(client.clone(), "rbd", "disk")
                    .await
                    .unwrap()
                    .size(),
                small
            );
            img.resize(size).await.unwrap();
            model[small as usize..].fill(0);
            assert_eq!(img.read(0, size as usize).await.unwrap(), model);

            // Listing, a second create of the same name, names that cannot be images.
            Image::create(client.clone(), "rbd", "other", 1 << 20, OS)
                .await
                .unwrap();
            assert_eq!(
                Image::list(&client, "rbd").await.unwrap(),
                vec!["disk", "other"]
            );
            assert!(matches!(
                Image::create(client.clone(), "rbd", "disk", 1, OS).await,
                Err(ImageError::Exists { .. })
            ));
            assert!(matches!(
                Image::create(client.clone(), "rbd", "bad name", 1, OS).await,
                Err(ImageError::InvalidName { .. })
            ));
            assert!(matches!(
                Image::create(client.clone(), "rbd", "x", 1, 1000).await,
                Err(ImageError::InvalidObjectSize(1000))
            ));
            assert!(matches!(
                Image::open(client.clone(), "nosuchpool", "disk").await,
                Err(ImageError::Cluster(_))
            ));

            // A header that is not ours (garbage) is refused with a clear error.
            client
                .write_full("rbd", &header_object("junk"), b"not json")
                .await
                .unwrap();
            assert!(matches!(
                Image::open(client.clone(), "rbd", "junk").await,
                Err(ImageError::BadHeader { .. })
            ));

            // Removal takes every data object and the header.
            let stored = data_objects(&client, "rbd", &img).await.len() as u64;
            assert!(stored > 0);
            let removed = Image::remove(&client, "rbd", "disk").await.unwrap();
            assert_eq!(removed, stored);
            assert!(data_objects(&client, "rbd", &img).await.is_empty());
            assert!(matches!(
                Image::open(client.clone(), "rbd", "disk").await,
                Err(ImageError::NotFound { .. })
            ));
            assert_eq!(
                Image::list(&client, "rbd").await.unwrap(),
                vec!["junk", "other"]
            );
        })
        .await
        .expect("image test timed out");
    });
}
