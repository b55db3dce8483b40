//! DMA-able buffers from SPDK's hugepage heap.

use std::ptr::NonNull;

use crate::SpdkError;

/// A zeroed, aligned buffer in hugepage memory that devices can DMA into. `!Send`: it belongs
/// to the shard that allocated it (SPDK's heap is thread-safe, but keeping buffers shard-local is
/// the design).
#[derive(Debug)]
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
    _not_send: std::marker::PhantomData<*mut u8>,
}

impl DmaBuf {
    /// Allocates `len` bytes aligned to `align` (a power of two; 4096 suits every bdev).
    pub fn new(len: usize, align: usize) -> Result<Self, SpdkError> {
        // SAFETY: plain allocation from SPDK's DMA heap; NULL on failure.
        let p = unsafe {
            spdk_sys::spdk_zmalloc(
                len,
                align,
                std::ptr::null_mut(),
                spdk_sys::SPDK_ENV_SOCKET_ID_ANY,
                spdk_sys::SPDK_MALLOC_DMA,
            )
        };
        NonNull::new(p as *mut u8)
            .map(|ptr| Self {
                ptr,
                len,
                _not_send: std::marker::PhantomData,
            })
            .ok_or(SpdkError::DmaAlloc(len))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points at len initialised (zeroed at allocation) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.ptr.as_ptr() as *mut libc::c_void
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by spdk_zmalloc, freed once.
        unsafe { spdk_sys::spdk_free(self.ptr.as_ptr() as *mut libc::c_void) }
    }
}
