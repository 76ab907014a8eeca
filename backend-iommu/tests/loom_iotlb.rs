//! loom models of the software IOMMU's IOTLB protocol: a device-side translation (IOTLB lookup,
//! then a page-table walk that fills the IOTLB) racing a strict unmap, and the lazy drain.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p backend-iommu --release --test loom_iotlb`
//! (CI runs it; `LOOM_MAX_PREEMPTIONS` defaults to 3 here).
#![cfg(loom)]

use backend_iommu::{FlushPolicy, SoftIommu, VtdSecondLevel};
use loom::sync::Arc;
use p2p_core::prelude::*;

const RW: Access = Access::READ.union(Access::WRITE);
const IOVA: u64 = 0x4000_0000;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// Strict: once `unmap` has returned, no translation of the IOVA is usable, whatever a walk that
/// started before it does afterwards.
#[test]
fn a_fill_never_outlives_a_strict_unmap() {
    model(|| {
        let d = Arc::new(SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap());
        d.map(Iova(IOVA), PhysAddr(0x8000), 4096, RW).unwrap();
        let device = {
            let d = d.clone();
            loom::thread::spawn(move || {
                // Whatever it sees is either the live mapping or nothing.
                if let Some(t) = d.dma_translate(Iova(IOVA)) {
                    assert_eq!(t.phys, PhysAddr(0x8000));
                }
            })
        };
        assert_eq!(d.unmap(Iova(IOVA), 4096).unwrap(), 4096);
        assert_eq!(d.dma_translate(Iova(IOVA)), None, "stale right after unmap");
        device.join().unwrap();
        assert_eq!(
            d.dma_translate(Iova(IOVA)),
            None,
            "stale after the walk finished"
        );
    });
}

/// Strict, remapped to a new page: a translation after the remap never gives the old page.
#[test]
fn a_remap_is_never_shadowed_by_the_old_page() {
    model(|| {
        let d = Arc::new(SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap());
        d.map(Iova(IOVA), PhysAddr(0x8000), 4096, RW).unwrap();
        let device = {
            let d = d.clone();
            loom::thread::spawn(move || {
                let _ = d.dma_translate(Iova(IOVA));
            })
        };
        d.unmap(Iova(IOVA), 4096).unwrap();
        d.map(Iova(IOVA), PhysAddr(0x9000), 4096, RW).unwrap();
        device.join().unwrap();
        assert_eq!(d.dma_translate(Iova(IOVA)).unwrap().phys, PhysAddr(0x9000));
    });
}

/// Lazy: after the drain that performs the queued flush, nothing unmapped before it translates.
#[test]
fn a_lazy_drain_leaves_nothing_stale() {
    model(|| {
        let d =
            Arc::new(SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Lazy { batch: 64 }).unwrap());
        d.map(Iova(IOVA), PhysAddr(0x8000), 4096, RW).unwrap();
        let device = {
            let d = d.clone();
            loom::thread::spawn(move || {
                let _ = d.dma_translate(Iova(IOVA));
            })
        };
        d.unmap(Iova(IOVA), 4096).unwrap();
        d.flush().unwrap();
        d.drain();
        device.join().unwrap();
        assert_eq!(d.dma_translate(Iova(IOVA)), None);
    });
}

/// Strict, a range of as many pages as the IOTLB has slots: its invalidation is the epoch's
/// increment, not a write to each slot. A walk that started before it, whatever it fills
/// afterwards, fills an entry of the old epoch, which no lookup uses.
#[test]
fn a_fill_never_outlives_a_strict_unmap_that_clears_the_whole_iotlb() {
    const LEN: u64 = 4 * 4096; // the loom build's IOTLB has 4 slots
    model(|| {
        let d = Arc::new(SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap());
        d.map(Iova(IOVA), PhysAddr(0x10_0000), LEN, RW).unwrap();
        let device = {
            let d = d.clone();
            loom::thread::spawn(move || {
                if let Some(t) = d.dma_translate(Iova(IOVA + 4096)) {
                    assert_eq!(t.phys, PhysAddr(0x10_1000));
                }
            })
        };
        assert_eq!(d.unmap(Iova(IOVA), LEN).unwrap(), LEN);
        device.join().unwrap();
        for page in 0..4 {
            assert_eq!(
                d.dma_translate(Iova(IOVA + page * 4096)),
                None,
                "page {page} stale after the unmap"
            );
        }
    });
}
