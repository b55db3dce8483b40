//! Size limits both ends enforce. They are checked on the header (frame size) before any
//! payload is buffered, and on each length field before it is trusted, so a hostile length can
//! never make either side allocate or wait for more than these bounds.

/// Limits on frames and on the fields inside them. Both ends should use the same values; the
/// encoder refuses to produce a message the decoder with the same limits would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame payload (bytes after the 32-byte header). Also sizes the
    /// [`FrameDecoder`](crate::FrameDecoder) buffer, allocated once per connection.
    pub max_payload: u32,
    /// Largest data carried by one write, write_full or read reply. Must leave room for the
    /// op's other fields within `max_payload`.
    pub max_io_size: u32,
    /// No write may reach past this byte of an object.
    pub max_object_size: u64,
    /// Longest object name, in bytes of UTF-8.
    pub max_name_len: u16,
    /// Longest client id, in bytes of UTF-8.
    pub max_client_id_len: u16,
    /// Longest opaque list cursor.
    pub max_cursor_len: u16,
    /// Most names one list request may ask for, and one list reply may carry.
    pub max_list_entries: u32,
}

impl Limits {
    /// 4 MiB of data per op (the largest object size the tests use), 64 KiB of
    /// headroom for names and list replies, 1 GiB objects.
    pub const DEFAULT: Limits = Limits {
        max_payload: (4 << 20) + (64 << 10),
        max_io_size: 4 << 20,
        max_object_size: 1 << 30,
        max_name_len: 1024,
        max_client_id_len: 256,
        max_cursor_len: 1024,
        max_list_entries: 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
