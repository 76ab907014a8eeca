//! What an established mapping holds (its grant, IOVA range and pages, bounce buffer, segments)
//! and its teardown.
//!
//! A mapping's resources live in a box the registry entry points to, so that publishing them
//! and taking them out again moves a pointer, not a few hundred bytes. The box a thread's
//! teardown emptied is kept for that thread's next set-up (one per thread, freed with the
//! thread): mapping and dropping a page at a time then allocates nothing.

use super::domain_cache::DomainRef;
use super::sg::Segments;
use super::Strategy;
use crate::addr::{AddrRange, Iova};
use crate::error::Result;
use crate::traits::{ExportGrant, IommuDomain, MemoryExporter};
use smallvec::SmallVec;
use std::cell::Cell;
use std::sync::Arc;

/// The pieces of an IOVA range mapped one `map` call each: one for a one-chunk mapping, held
/// inline.
pub(crate) type MappedPieces = SmallVec<[(Iova, u64); 1]>;

/// What an established mapping holds; [`Resources::teardown`] gives all of it back. On 128-byte
/// lines of its own: the box is filled and emptied by one thread on every map and drop, and was
/// allocated wherever that thread's allocator put it, next to another thread's data as often as
/// not.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Resources {
    pub strategy: Strategy,
    pub grant: ExportGrant,
    pub bounce: Option<(Arc<dyn MemoryExporter>, ExportGrant)>,
    /// The importer's domain, as its shard wraps it (see the `domain_cache` module); `None`
    /// only in an emptied box.
    pub domain: Option<DomainRef>,
    pub iova: Option<AddrRange<Iova>>,
    /// The pieces of `iova` mapped by one `map` call each (one per chunk), unmapped the same way
    /// (as dma-debug expects every unmap to match its map).
    pub mapped: MappedPieces,
    pub segments: Segments,
}

thread_local! {
    /// The box this thread's last teardown emptied, if it has one.
    static SPARE: Cell<Option<Box<Resources>>> = const { Cell::new(None) };
}

impl Resources {
    /// `self` in a box: the one this thread's last teardown emptied, or a new one.
    pub fn boxed(self) -> Box<Self> {
        match SPARE.take() {
            Some(mut spare) => {
                *spare = self;
                spare
            }
            None => Box::new(self),
        }
    }

    /// Unmaps, flushes, frees the IOVA range and releases the grants. Every step runs even if
    /// an earlier one failed; the first error is returned. Returns the bytes unmapped. The
    /// emptied box is kept for this thread's next set-up.
    pub fn teardown(mut self: Box<Self>, exporter: &dyn MemoryExporter) -> Result<u64> {
        let mut first: Option<crate::Error> = None;
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        let mut unmapped = 0;
        if let (Some(iova), Some(domain)) = (self.iova, &self.domain) {
            let domain: &dyn IommuDomain = &***domain;
            keep(
                domain
                    .unmap_and_free(iova, &self.mapped)
                    .map(|n| unmapped = n),
            );
        }
        if let Some((host, g)) = &self.bounce {
            keep(host.release(g));
        }
        keep(exporter.release(&self.grant));
        self.empty();
        SPARE.set(Some(self));
        first.map_or(Ok(unmapped), Err)
    }

    /// Drops what the box holds, keeping the box (and any room its lists took).
    fn empty(&mut self) {
        self.domain = None;
        self.bounce = None;
        self.iova = None;
        self.mapped.clear();
        self.segments.clear();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::addr::Offset;
    use crate::testing::TestHostMemory;
    use crate::traits::ExporterId;

    fn resources() -> Resources {
        Resources {
            strategy: Strategy::Direct,
            grant: ExportGrant {
                exporter: ExporterId(1),
                id: 1,
                range: AddrRange::new(Offset(0), 4096).unwrap(),
                pinned: false,
            },
            bounce: None,
            domain: None,
            iova: None,
            mapped: MappedPieces::new(),
            segments: Segments::new(),
        }
    }

    /// A thread's second set-up reuses the box its first teardown emptied; another thread's
    /// does not see it.
    #[test]
    fn a_torn_down_box_is_reused_by_the_same_thread_only() {
        let host = TestHostMemory::new(1 << 20, 1 << 16);
        let first = resources().boxed();
        // The box's address, as a number to compare (and send to the other thread).
        let at = &*first as *const Resources as usize;
        // The grant is not the host's: its release fails, and the box is kept all the same.
        assert!(first.teardown(&host).is_err());
        let second = resources().boxed();
        assert_eq!(
            &*second as *const Resources as usize, at,
            "the emptied box was not reused"
        );
        // Kept again, in this thread: another thread does not take it.
        assert!(second.teardown(&host).is_err());
        std::thread::spawn(move || {
            let other = resources().boxed();
            assert_ne!(&*other as *const Resources as usize, at);
        })
        .join()
        .unwrap();
    }
}
