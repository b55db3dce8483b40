//! [`BlockExport`] for a Carmine block image (`carmine_client::image::Image`).
//!
//! The image keeps the export contract by construction: `Image::write` (and write-zeroes,
//! discard) returns only when every object op it issued was acknowledged, and an OSD
//! acknowledges a write only after every replica of the PG persisted it. So FLUSH maps to
//! `Image::flush`, a no-op kept for front ends, and FUA needs nothing.

use carmine_client::image::{Image, ImageError};

use crate::export::{BlockExport, ExportError};

fn map(e: ImageError) -> ExportError {
    if e.is_no_space() {
        ExportError::NoSpace(Box::new(e))
    } else {
        ExportError::Io(Box::new(e))
    }
}

impl BlockExport for Image {
    fn size(&self) -> u64 {
        Image::size(self)
    }

    async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, ExportError> {
        Image::read(self, offset, len).await.map_err(map)
    }

    async fn write(&self, offset: u64, data: &[u8]) -> Result<(), ExportError> {
        Image::write(self, offset, data).await.map_err(map)
    }

    async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        Image::write_zeroes(self, offset, len).await.map_err(map)
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        Image::discard(self, offset, len).await.map_err(map)
    }

    async fn flush(&self) -> Result<(), ExportError> {
        Image::flush(self).await.map_err(map)
    }
}
