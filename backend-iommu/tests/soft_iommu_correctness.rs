//! Correctness of the software IOMMU where the first round got it wrong: unmap across leaves of
//! mixed sizes, IOTLB fills racing a strict unmap, rollbacks that free too early, MMIO memory
//! attributes. Each test is written for both page-table formats.

use backend_iommu::{ArmLpaeS2, FlushPolicy, Format, SoftIommu, VtdSecondLevel};
use p2p_core::page::{SZ_1G, SZ_2M, SZ_4K};
use p2p_core::prelude::*;
use p2p_core::traits::MapAttrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RW: Access = Access::READ.union(Access::WRITE);

fn strict<F: Format>() -> SoftIommu<F> {
    SoftIommu::new(FlushPolicy::Strict).unwrap()
}

/// A 2 MiB leaf at 1 GiB, then 2 MiB of 4 KiB pages right after it: one unmap removes both.
fn unmap_crosses_from_a_block_into_small_pages<F: Format>() {
    let d = strict::<F>();
    let base = Iova(SZ_1G);
    d.map(base, PhysAddr(0x4000_0000), SZ_2M, RW).unwrap();
    let small = Iova(SZ_1G + SZ_2M);
    for i in 0..512 {
        let at = Iova(small.0 + i * SZ_4K);
        d.map(at, PhysAddr(0x9000_0000 + i * SZ_4K), SZ_4K, RW)
            .unwrap();
    }
    assert_eq!(d.leaf(base.0).unwrap().size, SZ_2M);
    assert_eq!(d.leaf(small.0).unwrap().size, SZ_4K);
    assert_eq!(d.unmap(base, 2 * SZ_2M).unwrap(), 2 * SZ_2M, "{}", F::NAME);
    for off in (0..2 * SZ_2M).step_by(SZ_4K as usize) {
        assert_eq!(
            d.translate(Iova(base.0 + off)),
            None,
            "{} +{off:#x}",
            F::NAME
        );
    }
    d.flush_all().unwrap(); // the full flush unlinks the tables left empty
    assert_eq!(
        d.live_frames(),
        1,
        "{}: only the root table is left",
        F::NAME
    );
}

#[test]
fn unmap_crosses_leaf_sizes_vtd() {
    unmap_crosses_from_a_block_into_small_pages::<VtdSecondLevel>();
}

#[test]
fn unmap_crosses_leaf_sizes_arm() {
    unmap_crosses_from_a_block_into_small_pages::<ArmLpaeS2>();
}

/// 4 KiB pages first, then a block: the walk goes from small pages up to the block.
fn unmap_crosses_from_small_pages_into_a_block<F: Format>() {
    let d = strict::<F>();
    let base = Iova(SZ_1G - 16 * SZ_4K);
    d.map(base, PhysAddr(0x7000_0000), 16 * SZ_4K, RW).unwrap();
    d.map(Iova(SZ_1G), PhysAddr(0x4000_0000), SZ_2M, RW)
        .unwrap();
    let len = 16 * SZ_4K + SZ_2M;
    assert_eq!(d.unmap(base, len).unwrap(), len, "{}", F::NAME);
    assert_eq!(d.translate(Iova(SZ_1G + SZ_2M - 1)), None);
}

#[test]
fn unmap_crosses_small_pages_into_a_block_both_formats() {
    unmap_crosses_from_small_pages_into_a_block::<VtdSecondLevel>();
    unmap_crosses_from_small_pages_into_a_block::<ArmLpaeS2>();
}

/// `map_sg` of 2 MiB + 2 MiB + 16 KiB, unmapped, flushed and freed: nothing translates, and the
/// allocator may hand the range out again only because nothing is mapped there.
fn map_sg_of_mixed_sizes_unmaps_whole<F: Format>() {
    let d = strict::<F>();
    let pieces = [
        (PhysAddr(0x4000_0000), SZ_2M),
        (PhysAddr(0x8000_0000), SZ_2M),
        (PhysAddr(0x9000_0000), 4 * SZ_4K),
    ];
    let r = d.map_sg(&pieces, u64::MAX, RW).unwrap();
    let total = r.len();
    assert_eq!(d.unmap(r.start(), total).unwrap(), total, "{}", F::NAME);
    d.flush().unwrap();
    d.free_iova(r.start(), total).unwrap();
    let still: Vec<u64> = (0..total)
        .step_by(SZ_4K as usize)
        .filter(|off| d.translate(Iova(r.start().0 + off)).is_some())
        .collect();
    assert!(
        still.is_empty(),
        "{}: {} pages still translate",
        F::NAME,
        still.len()
    );
}

#[test]
fn map_sg_of_mixed_sizes_unmaps_whole_both_formats() {
    map_sg_of_mixed_sizes_unmaps_whole::<VtdSecondLevel>();
    map_sg_of_mixed_sizes_unmaps_whole::<ArmLpaeS2>();
}

/// A hole still ends the unmap, and a range that would cut a block is still refused whole.
#[test]
fn unmap_still_stops_at_a_hole_and_refuses_a_split() {
    let d = strict::<VtdSecondLevel>();
    d.map(Iova(SZ_2M), PhysAddr(0x4000_0000), SZ_2M, RW)
        .unwrap();
    d.map(Iova(2 * SZ_2M + SZ_4K), PhysAddr(0x10_0000), SZ_4K, RW)
        .unwrap();
    assert_eq!(d.unmap(Iova(SZ_2M), SZ_2M + 2 * SZ_4K).unwrap(), SZ_2M);
    assert!(d.translate(Iova(2 * SZ_2M + SZ_4K)).is_some());
    d.map(Iova(SZ_1G), PhysAddr(0x4000_0000), SZ_2M, RW)
        .unwrap();
    assert!(d.unmap(Iova(SZ_1G), SZ_4K).is_err());
    assert!(d.translate(Iova(SZ_1G)).is_some(), "nothing unmapped");
}

/// One thread translates as the device would (IOTLB, then a walk that fills it) in a loop while
/// another maps `len` bytes at one IOVA to new pages, unmaps them, and checks that the unmapped
/// IOVA no longer translates through the IOTLB. One page is invalidated slot by slot; 1 MiB
/// (as many pages as the IOTLB has slots) by the IOTLB's epoch.
fn strict_unmap_is_never_undone_by_a_racing_fill<F: Format>(budget: Duration, len: u64) {
    let d = Arc::new(strict::<F>());
    let iova = d.alloc_iova(len, u64::MAX).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (d, stop) = (d.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = d.dma_translate(Iova(iova.0));
            }
        })
    };
    let start = Instant::now();
    let mut rounds = 0u64;
    while rounds < 2_000 || start.elapsed() < budget {
        let phys = PhysAddr(0x1000_0000 + (rounds % 4096) * SZ_4K);
        d.map(iova, phys, len, RW).unwrap();
        assert_eq!(d.unmap(iova, len).unwrap(), len);
        let stale = d.dma_translate(Iova(iova.0));
        assert_eq!(
            stale,
            None,
            "{}: round {rounds}: unmapped IOVA still translates",
            F::NAME
        );
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
}

#[test]
fn strict_unmap_is_never_undone_by_a_racing_fill_vtd() {
    strict_unmap_is_never_undone_by_a_racing_fill::<VtdSecondLevel>(Duration::from_secs(1), SZ_4K);
}

#[test]
fn strict_unmap_is_never_undone_by_a_racing_fill_arm() {
    strict_unmap_is_never_undone_by_a_racing_fill::<ArmLpaeS2>(Duration::from_secs(1), SZ_4K);
}

#[test]
fn a_strict_unmap_that_clears_the_whole_iotlb_is_never_undone_by_a_racing_fill() {
    strict_unmap_is_never_undone_by_a_racing_fill::<VtdSecondLevel>(
        Duration::from_secs(1),
        1 << 20,
    );
}

/// A map that fails for want of a table frame must not free the tables an earlier lazy unmap
/// left for the next flush: the IOTLB may still hold paths through them.
#[test]
fn a_failed_map_leaves_queued_tables_to_the_flush() {
    let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Lazy { batch: 8 }).unwrap();
    d.map(Iova(SZ_1G), PhysAddr(0x8000), SZ_4K, RW).unwrap();
    d.dma_translate(Iova(SZ_1G)).unwrap();
    d.unmap(Iova(SZ_1G), SZ_4K).unwrap(); // three tables left empty, kept until a full flush
    let queued = d.live_frames();
    assert_eq!(queued, 4, "root + three empty tables");
    d.set_frame_limit(Some(queued + 1));
    assert!(d.map(Iova(8 * SZ_1G), PhysAddr(0x8000), SZ_4K, RW).is_err());
    assert!(
        d.live_frames() >= queued,
        "the failed map freed tables still waiting for a flush ({} < {queued})",
        d.live_frames()
    );
    d.set_frame_limit(None);
    d.flush_all().unwrap();
    assert_eq!(d.live_frames(), 1);
}

/// A scatter-list map that fails midway frees its IOVA range only after a flush: in a lazy
/// domain the range is not handed out again before the queued flush is performed.
#[test]
fn a_failed_map_sg_frees_its_iova_only_after_a_flush() {
    let d = SoftIommu::<ArmLpaeS2>::new(FlushPolicy::Lazy { batch: 8 }).unwrap();
    let pieces = [
        (PhysAddr(0x4000_0000), SZ_2M),
        (PhysAddr(0x8000_0000), SZ_4K),
    ];
    let total = SZ_2M + SZ_4K;
    // The allocator is deterministic: learn where the scatter list's range will go.
    let probe = d.alloc_iova(total, u64::MAX).unwrap();
    d.free_iova(probe, total).unwrap();
    // Room for the root and the two tables above the 2 MiB block only: the 4 KiB piece after
    // it needs a last-level table, and that allocation fails.
    d.set_frame_limit(Some(3));
    let err = d.map_sg(&pieces, u64::MAX, RW);
    assert!(err.is_err(), "{err:?}");
    d.set_frame_limit(None);
    assert_ne!(
        d.alloc_iova(total, u64::MAX).unwrap(),
        probe,
        "the failed range was handed out again before its flush"
    );
    d.flush_all().unwrap();
    assert_eq!(
        d.live_frames(),
        1,
        "the rollback's tables are freed by the flush"
    );
}

/// `Chunk.mmio` reaches the entry: a BAR mapped through ARM stage 2 gets device memory
/// attributes, RAM gets normal cacheable ones.
#[test]
fn mmio_mappings_get_device_attributes() {
    use backend_iommu::format::arm::{MEMATTR_DEV, MEMATTR_OIWB};
    let d = strict::<ArmLpaeS2>();
    d.map_attrs(
        Iova(SZ_2M),
        PhysAddr(0xe000_0000),
        SZ_4K,
        RW,
        MapAttrs::MMIO,
    )
    .unwrap();
    d.map(Iova(2 * SZ_2M), PhysAddr(0x8000), SZ_4K, RW).unwrap();
    let attr = |iova: u64| d.leaf(iova).unwrap().pte & (0xf << 2);
    assert_eq!(attr(SZ_2M), MEMATTR_DEV);
    assert_eq!(attr(2 * SZ_2M), MEMATTR_OIWB);
}

/// Unmaps gathered for one sync (Linux's `iommu_unmap_fast` + `iommu_iotlb_sync`): the entries
/// go at once, the IOTLB is invalidated once for the whole span, and after the sync nothing of
/// any gathered range translates.
#[test]
fn gathered_unmaps_share_one_iotlb_sync() {
    use p2p_core::traits::IotlbGather;
    let d = strict::<VtdSecondLevel>();
    let base = Iova(SZ_1G);
    for i in 0..3 {
        let at = Iova(base.0 + i * 2 * SZ_4K);
        d.map(at, PhysAddr(0x10_0000 + i * SZ_4K), SZ_4K, RW)
            .unwrap();
        d.dma_translate(at).unwrap(); // in the IOTLB
    }
    let (_, _, invalidations) = d.iotlb_stats();
    let mut gather = IotlbGather::default();
    for i in 0..3 {
        let at = Iova(base.0 + i * 2 * SZ_4K);
        assert_eq!(d.unmap_gather(at, SZ_4K, &mut gather).unwrap(), SZ_4K);
        assert_eq!(d.translate(at), None, "the entry is gone at once");
    }
    assert_eq!(gather.span(), Some((base, 5 * SZ_4K)));
    d.iotlb_sync(&gather).unwrap();
    assert_eq!(
        d.iotlb_stats().2,
        invalidations + 1,
        "one invalidation for three unmaps"
    );
    for i in 0..3 {
        assert_eq!(d.dma_translate(Iova(base.0 + i * 2 * SZ_4K)), None);
    }
}

/// A scatter map that fails on its third piece takes back the first two (the trait's default
/// `map_pieces`, as every domain gets it).
#[test]
fn map_pieces_is_all_or_nothing() {
    use p2p_core::traits::MapPiece;
    let d = strict::<ArmLpaeS2>();
    d.map(Iova(SZ_1G + 2 * SZ_4K), PhysAddr(0x9000), SZ_4K, RW)
        .unwrap();
    let piece = |phys: u64| MapPiece::at(PhysAddr(phys), SZ_4K, MapAttrs::empty());
    let pieces = [piece(0x1000), piece(0x2000), piece(0x3000)];
    assert!(d.map_pieces(Iova(SZ_1G), &pieces, RW).is_err());
    assert_eq!(d.translate(Iova(SZ_1G)), None);
    assert_eq!(d.translate(Iova(SZ_1G + SZ_4K)), None);
    assert_eq!(
        d.translate(Iova(SZ_1G + 2 * SZ_4K)).unwrap().phys,
        PhysAddr(0x9000)
    );
}
