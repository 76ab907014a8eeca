//! The software IOMMU as an `IommuDomain`: strict and lazy invalidation, concurrency, and use
//! through the negotiator.

use backend_iommu::{ArmLpaeS2, FlushPolicy, SoftIommu, VtdSecondLevel};
use p2p_core::negotiate::Negotiator;
use p2p_core::page::SZ_4K;
use p2p_core::prelude::*;
use p2p_core::testing::{TestExporter, TestHostMemory, TestImporter};
use p2p_core::topology::presets;
use std::sync::Arc;

mod common;
use common::SoftPlatform;

const RW: Access = Access::READ.union(Access::WRITE);

#[test]
fn strict_unmap_leaves_no_stale_translation() {
    let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
    let iova = d.alloc_iova(SZ_4K, u64::MAX).unwrap();
    d.map(iova, PhysAddr(0x8000), SZ_4K, RW).unwrap();
    assert_eq!(d.dma_translate(iova).unwrap().phys, PhysAddr(0x8000)); // fills the IOTLB
    assert_eq!(
        d.dma_translate(Iova(iova.0 + 8)).unwrap().phys,
        PhysAddr(0x8008)
    ); // hit
    assert_eq!(d.unmap(iova, SZ_4K).unwrap(), SZ_4K);
    assert_eq!(d.dma_translate(iova), None);
    let (hits, misses, inval) = d.iotlb_stats();
    assert_eq!((hits, misses), (1, 2));
    assert!(inval >= 1);
}

#[test]
fn lazy_unmap_keeps_the_translation_until_the_queue_drains_and_does_not_reuse_the_iova() {
    let d = SoftIommu::<ArmLpaeS2>::new(FlushPolicy::Lazy { batch: 3 }).unwrap();
    let iova = d.alloc_iova(SZ_4K, u64::MAX).unwrap();
    d.map(iova, PhysAddr(0x8000), SZ_4K, RW).unwrap();
    d.dma_translate(iova).unwrap();
    d.unmap(iova, SZ_4K).unwrap();
    d.flush().unwrap();
    d.free_iova(iova, SZ_4K).unwrap();
    assert_eq!(d.queued_flushes(), 1);
    assert_eq!(d.translate(iova), None, "the page table no longer maps it");
    assert_eq!(
        d.dma_translate(iova).unwrap().phys,
        PhysAddr(0x8000),
        "but the IOTLB still does"
    );
    assert_ne!(
        d.alloc_iova(SZ_4K, u64::MAX).unwrap(),
        iova,
        "and the IOVA is not reused yet"
    );
    d.flush().unwrap();
    d.flush().unwrap(); // the third queued flush performs the invalidation
    assert_eq!(d.queued_flushes(), 0);
    assert_eq!(d.dma_translate(iova), None);
    assert_eq!(
        d.alloc_iova(SZ_4K, u64::MAX).unwrap(),
        iova,
        "reusable after the flush"
    );
}

#[test]
fn map_checks_alignment_aperture_reserved_and_access() {
    let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
    assert!(matches!(
        d.map(Iova(0x1001), PhysAddr(0), SZ_4K, RW),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        d.map(Iova(1 << 48), PhysAddr(0), SZ_4K, RW),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        d.map(Iova(0xfee0_0000), PhysAddr(0), SZ_4K, RW),
        Err(Error::Reserved { .. })
    ));
    assert!(d
        .map(Iova(0x1000), PhysAddr(0), SZ_4K, Access::empty())
        .is_err());
    assert!(matches!(
        d.map(Iova(0x1000), PhysAddr((1 << 52) - 0x1000), 0x2000, RW),
        Err(Error::OutOfBounds { .. })
    ));
    d.map(Iova(0x1000), PhysAddr(0), SZ_4K, RW).unwrap();
    assert!(matches!(
        d.map(Iova(0x1000), PhysAddr(0), SZ_4K, RW),
        Err(Error::AlreadyMapped(0x1000))
    ));
}

#[test]
fn a_frame_allocation_failure_rolls_the_map_back() {
    let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
    d.set_frame_limit(Some(3));
    assert!(d.map(Iova(1 << 30), PhysAddr(0), 64 * SZ_4K, RW).is_err());
    assert_eq!(d.translate(Iova(1 << 30)), None);
    d.flush_all().unwrap(); // the full flush unlinks the tables left empty
    assert_eq!(d.live_frames(), 1);
    d.set_frame_limit(None);
    d.map(Iova(1 << 30), PhysAddr(0), 64 * SZ_4K, RW).unwrap();
}

#[test]
fn two_threads_map_and_unmap_disjoint_ranges_correctly() {
    let d = Arc::new(SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap());
    // Joined explicitly: a joined thread has run its thread-local destructors, which give its
    // cached IOVA ranges back.
    let handles: Vec<_> = (0..2u64)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    let pages = 1 + (i % 4);
                    let iova = d.alloc_iova(pages * SZ_4K, u64::MAX).unwrap();
                    let phys = PhysAddr((t << 40) | (i << 20));
                    d.map(iova, phys, pages * SZ_4K, RW).unwrap();
                    for p in 0..pages {
                        let got = d.dma_translate(Iova(iova.0 + p * SZ_4K + 7)).unwrap();
                        assert_eq!(
                            got.phys,
                            PhysAddr(phys.0 + p * SZ_4K + 7),
                            "thread {t} iteration {i}"
                        );
                    }
                    assert_eq!(d.unmap(iova, pages * SZ_4K).unwrap(), pages * SZ_4K);
                    d.flush().unwrap();
                    d.free_iova(iova, pages * SZ_4K).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    d.flush_all().unwrap(); // the full flush unlinks the tables left empty
    assert_eq!(d.live_frames(), 1, "every table freed");
    d.allocator().flush_caches();
    let reserved = 0x10_0000 + SZ_4K; // the MSI window and IOVA page 0
    assert_eq!(
        d.allocator().tree_free_bytes(),
        (1 << 48) - reserved,
        "no IOVA space lost, threads' caches included"
    );
}

#[test]
fn the_negotiator_maps_a_peer_bar_through_the_soft_iommu() {
    let topo = presets::acs_switch().unwrap();
    let gpu: PciAddr = "0000:03:00.0".parse().unwrap();
    let nic_addr: PciAddr = "0000:05:00.0".parse().unwrap();
    let exporter: Arc<dyn MemoryExporter> =
        Arc::new(TestExporter::new(&topo, gpu, 4 << 20, 2048, MemoryKind::MOVABLE).unwrap());
    let nic = Arc::new(SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap());
    let platform = Arc::new(SoftPlatform {
        topology: Arc::new(topo),
        nic: nic.clone(),
        host: Arc::new(TestHostMemory::new(1 << 30, 1 << 20)),
    });
    let neg = Negotiator::new(platform);
    let caps = ImporterCaps {
        flags: ImporterFlags::ODP | ImporterFlags::P2P,
        dma_mask: dma_mask(32),
        max_segment: 0,
    };
    let importer: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(nic_addr, caps));
    let m = neg
        .map(
            &exporter,
            &importer,
            AddrRange::new(Offset(0), 4 << 20).unwrap(),
            RW,
            &Policy::default(),
        )
        .unwrap();
    assert_eq!(m.strategy().unwrap(), Strategy::ViaIommu);
    let iova = m.iova().unwrap().unwrap();
    assert!(iova.end().0 <= 1 << 32);
    let leaf = nic.leaf(iova.start().0).unwrap();
    assert_eq!(
        leaf.size,
        2 << 20,
        "a 2 MiB-aligned BAR window gets 2 MiB leaves"
    );
    drop(m);
    nic.flush_all().unwrap(); // the full flush unlinks the tables left empty
    assert_eq!(nic.live_frames(), 1);
}

#[test]
fn map_sg_maps_a_scatter_list_contiguously_or_not_at_all() {
    let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
    let pieces = [
        (PhysAddr(0x10_0000), 2 * SZ_4K),
        (PhysAddr(0x80_0000), SZ_4K),
        (PhysAddr(0x40_0000), 3 * SZ_4K),
    ];
    let r = d.map_sg(&pieces, dma_mask(32), RW).unwrap();
    assert_eq!(r.len(), 6 * SZ_4K);
    assert!(r.end().0 <= 1 << 32);
    assert_eq!(
        d.translate(Iova(r.start().0 + 2 * SZ_4K)).unwrap().phys,
        PhysAddr(0x80_0000)
    );
    assert_eq!(
        d.translate(Iova(r.start().0 + 5 * SZ_4K + 1)).unwrap().phys,
        PhysAddr(0x40_2001)
    );
    assert_eq!(d.unmap(r.start(), r.len()).unwrap(), 6 * SZ_4K);
    d.free_iova(r.start(), r.len()).unwrap();
    // A piece that cannot be mapped: nothing stays, the IOVA range comes back.
    d.allocator().flush_caches();
    let before = d.allocator().tree_free_bytes();
    d.set_frame_limit(Some(1));
    let far = [(PhysAddr(0x10_0000), SZ_4K), (PhysAddr(0x20_0000), SZ_4K)];
    assert!(d.map_sg(&far, u64::MAX, RW).is_err());
    d.set_frame_limit(None);
    d.flush_all().unwrap(); // the full flush unlinks the tables left empty
    assert_eq!(d.live_frames(), 1);
    d.allocator().flush_caches();
    assert_eq!(d.allocator().tree_free_bytes(), before);
    assert!(matches!(
        d.map_sg(&[(PhysAddr(0x1001), SZ_4K)], u64::MAX, RW),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        d.map_sg(&[], u64::MAX, RW),
        Err(Error::EmptyRange { .. })
    ));
}

/// `unmap_and_free` (one pass when strict, the trait's steps when lazy) unmaps every piece,
/// counts their bytes, stops at nothing on the way (a piece already unmapped counts 0), and
/// gives the whole allocation back; a piece that would split a larger page fails it, after the
/// other pieces were unmapped and the range freed.
#[test]
fn unmap_and_free_unmaps_every_piece_and_gives_the_range_back() {
    for policy in [FlushPolicy::Strict, FlushPolicy::Lazy { batch: 2 }] {
        let d = SoftIommu::<VtdSecondLevel>::new(policy).unwrap();
        d.allocator().flush_caches();
        let before = d.allocator().tree_free_bytes();
        let len = 8 * SZ_4K;
        let iova = d.alloc_iova(len, u64::MAX).unwrap();
        let range = AddrRange::new(iova, len).unwrap();
        let at = |page: u64| Iova(iova.0 + page * SZ_4K);
        d.map(at(0), PhysAddr(0x10_0000), 2 * SZ_4K, RW).unwrap();
        d.map(at(2), PhysAddr(0x40_0000), SZ_4K, RW).unwrap();
        d.dma_translate(at(1)).unwrap();
        let pieces = [(at(0), 2 * SZ_4K), (at(2), SZ_4K), (at(5), SZ_4K)];
        assert_eq!(
            d.unmap_and_free(range, &pieces).unwrap(),
            3 * SZ_4K,
            "{policy:?}"
        );
        d.flush_all().unwrap();
        for page in 0..3 {
            assert_eq!(d.dma_translate(at(page)), None, "{policy:?}: page {page}");
        }
        d.allocator().flush_caches();
        assert_eq!(d.allocator().tree_free_bytes(), before, "{policy:?}");

        // A 2 MiB leaf that a piece would cut: that piece fails, the others go, the range is
        // given back.
        let big = d.alloc_iova(4 << 20, u64::MAX).unwrap();
        let range = AddrRange::new(big, 4 << 20).unwrap();
        d.map(big, PhysAddr(0x20_0000), 2 << 20, RW).unwrap();
        let next = Iova(big.0 + (2 << 20));
        d.map(next, PhysAddr(0x60_0000), SZ_4K, RW).unwrap();
        let err = d
            .unmap_and_free(range, &[(big, SZ_4K), (next, SZ_4K)])
            .unwrap_err();
        assert!(matches!(err, Error::WouldSplit { .. }), "{policy:?}: {err}");
        d.flush_all().unwrap();
        assert_eq!(d.translate(next), None, "{policy:?}");
        assert!(
            d.translate(big).is_some(),
            "{policy:?}: the refused piece stays"
        );
        d.unmap(big, 2 << 20).unwrap();
        d.flush_all().unwrap();
        d.allocator().flush_caches();
        assert_eq!(d.allocator().tree_free_bytes(), before, "{policy:?}");
    }
}
