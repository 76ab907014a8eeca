//! [`OwnLines`]: a value alone on 128-byte lines (two cache lines: the adjacent-line prefetcher
//! fetches pairs).
//!
//! For what one thread writes on every map and drop while other threads work nearby: a value on
//! a line another thread writes, or reads, costs a transfer between cores at each write. The
//! values that need it are small heap blocks (a vector's slots, a map's values) that whichever
//! thread got there first allocated, next to whatever its allocator handed out around them, so
//! which of them share a line changes from one run to the next (see the `slab` module for what
//! it cost).

use std::ops::{Deref, DerefMut};

/// `T` on 128-byte lines of its own: aligned to 128 bytes, its size a multiple of 128.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[repr(align(128))]
pub(crate) struct OwnLines<T>(pub T);

impl<T> Deref for OwnLines<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for OwnLines<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::OwnLines;
    use std::mem::{align_of, size_of};

    /// What a thread writes per map and drop in a heap block of its own starts and ends on a
    /// 128-byte boundary; a change of layout that loses it shows here, not only in a benchmark.
    #[test]
    fn hot_blocks_keep_lines_of_their_own() {
        fn own_lines<T>(name: &str) {
            assert_eq!(align_of::<T>(), 128, "{name} is not 128-byte aligned");
            assert_eq!(size_of::<T>() % 128, 0, "{name} ends inside a line pair");
        }
        own_lines::<OwnLines<u8>>("OwnLines");
        own_lines::<crate::negotiate::Plan>("Plan");
        own_lines::<crate::negotiate::Sequence>("Sequence");
    }
}
