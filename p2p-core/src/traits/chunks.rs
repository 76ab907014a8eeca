//! The list of chunks [`MemoryExporter::chunks`](super::MemoryExporter::chunks) returns.

use super::Chunk;
use smallvec::SmallVec;
use std::ops::{Deref, DerefMut};

/// Chunks held without allocating: a grant of contiguous memory (a BAR, a huge page, a carved
/// bounce buffer) is one chunk, and two cover a grant that straddles a physical break.
const INLINE: usize = 2;

/// The physically contiguous pieces of a grant, in offset order.
///
/// Up to two chunks are held in the list itself, so that the common grant (one contiguous
/// piece) costs no allocation on the mapping path; more spill to the heap, as a `Vec` would
/// hold them. It reads as a slice (`len`, `iter`, `first`, indexing, `&chunks[..]` where a
/// `&[Chunk]` is wanted) and builds as a `Vec` does ([`push`](Self::push), `collect`,
/// `extend`, `From<Vec<Chunk>>`).
///
/// ```
/// # use p2p_core::prelude::*;
/// # use p2p_core::traits::{Chunk, ChunkList};
/// let page = |at: u64| Chunk {
///     offset: Offset(at),
///     len: 4096,
///     phys: PhysAddr(0x10_0000 + at),
///     bus: BusAddr(0x10_0000 + at),
///     mmio: false,
///     file: None,
/// };
/// let mut chunks = ChunkList::from(page(0));
/// chunks.push(page(4096));
/// assert_eq!(chunks.len(), 2);
/// assert_eq!(chunks.iter().map(|c| c.len).sum::<u64>(), 8192);
/// assert_eq!(chunks, vec![page(0), page(4096)]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkList(SmallVec<[Chunk; INLINE]>);

impl ChunkList {
    /// An empty list (no allocation).
    pub fn new() -> Self {
        Self(SmallVec::new())
    }

    /// Appends a chunk (after the last: keep them in offset order).
    #[inline]
    pub fn push(&mut self, chunk: Chunk) {
        self.0.push(chunk);
    }

    /// The chunks as a slice.
    pub fn as_slice(&self) -> &[Chunk] {
        &self.0
    }

    /// The chunks as a mutable slice (to name a file in each, say).
    pub fn as_mut_slice(&mut self) -> &mut [Chunk] {
        &mut self.0
    }

    /// The chunks in a `Vec` (without copying them if the list had spilled to the heap).
    pub fn into_vec(self) -> Vec<Chunk> {
        self.0.into_vec()
    }
}

impl Deref for ChunkList {
    type Target = [Chunk];
    fn deref(&self) -> &[Chunk] {
        &self.0
    }
}

impl DerefMut for ChunkList {
    fn deref_mut(&mut self) -> &mut [Chunk] {
        &mut self.0
    }
}

/// One chunk: the whole grant is contiguous.
impl From<Chunk> for ChunkList {
    fn from(chunk: Chunk) -> Self {
        let mut list = Self::new();
        list.push(chunk);
        list
    }
}

/// Takes over the `Vec`'s buffer when it holds more chunks than fit inline.
impl From<Vec<Chunk>> for ChunkList {
    fn from(chunks: Vec<Chunk>) -> Self {
        Self(SmallVec::from_vec(chunks))
    }
}

impl From<ChunkList> for Vec<Chunk> {
    fn from(chunks: ChunkList) -> Self {
        chunks.into_vec()
    }
}

impl FromIterator<Chunk> for ChunkList {
    fn from_iter<I: IntoIterator<Item = Chunk>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Extend<Chunk> for ChunkList {
    fn extend<I: IntoIterator<Item = Chunk>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl PartialEq<[Chunk]> for ChunkList {
    fn eq(&self, other: &[Chunk]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<Chunk>> for ChunkList {
    fn eq(&self, other: &Vec<Chunk>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

/// The chunks of a [`ChunkList`], by value, in offset order.
#[derive(Debug, Clone)]
pub struct ChunkListIter(smallvec::IntoIter<[Chunk; INLINE]>);

impl Iterator for ChunkListIter {
    type Item = Chunk;
    fn next(&mut self) -> Option<Chunk> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for ChunkListIter {
    fn next_back(&mut self) -> Option<Chunk> {
        self.0.next_back()
    }
}

impl ExactSizeIterator for ChunkListIter {}

impl std::iter::FusedIterator for ChunkListIter {}

impl IntoIterator for ChunkList {
    type Item = Chunk;
    type IntoIter = ChunkListIter;
    fn into_iter(self) -> ChunkListIter {
        ChunkListIter(self.0.into_iter())
    }
}

impl<'a> IntoIterator for &'a ChunkList {
    type Item = &'a Chunk;
    type IntoIter = std::slice::Iter<'a, Chunk>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a mut ChunkList {
    type Item = &'a mut Chunk;
    type IntoIter = std::slice::IterMut<'a, Chunk>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{BusAddr, Offset, PhysAddr};

    fn page(i: u64) -> Chunk {
        Chunk {
            offset: Offset(i * 4096),
            len: 4096,
            phys: PhysAddr(0x1000_0000 + i * 4096),
            bus: BusAddr(0x1000_0000 + i * 4096),
            mmio: false,
            file: None,
        }
    }

    /// Past the inline capacity the list keeps every chunk, in order, by every way of building
    /// and reading it.
    #[test]
    fn spills_past_inline_and_keeps_order() {
        let want: Vec<Chunk> = (0..5).map(page).collect();
        let mut pushed = ChunkList::new();
        for c in want.iter().cloned() {
            pushed.push(c);
        }
        let collected: ChunkList = want.iter().cloned().collect();
        let converted = ChunkList::from(want.clone());
        for list in [&pushed, &collected, &converted] {
            assert_eq!(*list, want);
            assert_eq!(list.as_slice(), &want[..]);
        }
        assert_eq!(pushed.clone().into_vec(), want);
        assert_eq!(pushed.into_iter().next_back(), Some(page(4)));
        let mut edited = converted;
        for c in &mut edited {
            c.mmio = true;
        }
        assert!(edited.iter().all(|c| c.mmio));
    }
}
