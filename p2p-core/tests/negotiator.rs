//! The negotiator end to end against the in-crate test doubles: establish for every strategy,
//! rollback, the registry, invalidation and re-fault, the plan cache. Address spaces are in
//! `address_space.rs`; the rig is in `common`.

mod common;

use common::*;

use p2p_core::negotiate::Registry;
use p2p_core::page::SZ_4K;
use p2p_core::prelude::*;
use p2p_core::testing::*;
use p2p_core::topology::presets;
use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, ProptestConfig};
use std::sync::Arc;

#[test]
fn direct_programs_bus_addresses_and_drop_releases() {
    let r = movable_rig(presets::workstation().unwrap());
    let (_, imp) = importer(odp(), 64);
    let m = r.map(&imp, range(0, 1 << 20)).unwrap();
    assert_eq!(m.strategy().unwrap(), Strategy::Direct);
    let segs = m.segments().unwrap();
    assert_eq!(segs.len(), 16, "1 MiB split at the 64 KiB segment limit");
    assert_eq!(total(&segs), 1 << 20);
    let bar = r.platform.topology().endpoint(a(GPU)).unwrap().bars[0];
    assert!(segs
        .iter()
        .all(|s| s.addr.0 >= bar.bus.0 && s.addr.0 + s.len <= bar.bus.0 + bar.size));
    assert_eq!(m.iova().unwrap(), None);
    assert_eq!(
        r.platform.test_domain(a(NIC)).unwrap().mapped_pages(),
        0,
        "no IOMMU on the path"
    );
    assert_eq!((r.neg.registry().len(), r.gpu.grants()), (1, 1));
    drop(m);
    assert_eq!((r.neg.registry().len(), r.gpu.grants()), (0, 0));
}

#[test]
fn via_iommu_maps_the_bar_cpu_address_and_unmaps_on_drop() {
    let r = movable_rig(presets::acs_switch().unwrap());
    let (_, imp) = importer(odp(), 32);
    let m = r.map(&imp, range(0, 256 << 10)).unwrap();
    assert_eq!(m.strategy().unwrap(), Strategy::ViaIommu);
    let iova = m.iova().unwrap().unwrap();
    assert!(
        iova.end().0 <= 1 << 32,
        "32-bit importer gets IOVAs below 4 GiB: {iova:?}"
    );
    let dom = r.platform.test_domain(a(NIC)).unwrap();
    assert_eq!(dom.mapped_pages(), 64);
    let bar = r.platform.topology().endpoint(a(GPU)).unwrap().bars[0];
    let t = dom.translate(iova.start()).unwrap();
    assert!(
        t.phys.0 >= bar.cpu.0 && t.phys.0 < bar.cpu.0 + bar.size,
        "maps the BAR's CPU physical address"
    );
    assert_eq!(t.access, RW);
    assert_eq!(m.segments().unwrap()[0].addr.0, iova.start().0);
    let flushes = dom.flushes();
    drop(m);
    assert_eq!((dom.mapped_pages(), dom.live_iovas()), (0, 0));
    assert!(dom.flushes() > flushes);
}

#[test]
fn identity_domain_programs_bus_addresses_through_the_host_bridge() {
    let r = rig(
        presets::acs_switch().unwrap(),
        DomainKind::Identity,
        1024,
        false,
        true,
    );
    let (_, imp) = importer(ImporterFlags::P2P, 64);
    let m = r.map(&imp, range(0, 8 * SZ_4K)).unwrap();
    assert_eq!(m.strategy().unwrap(), Strategy::Identity);
    let bar = r.platform.topology().endpoint(a(GPU)).unwrap().bars[0];
    assert!(m.segments().unwrap()[0].addr.0 >= bar.bus.0);
}

#[test]
fn bounce_stages_through_host_memory() {
    let r = rig(
        presets::workstation().unwrap(),
        DomainKind::Translated,
        1024,
        false,
        true,
    );
    let (_, imp) = importer(ImporterFlags::ODP, 64); // no P2P
    let policy = Policy {
        fallback: Fallback::Bounce,
        ..Policy::default()
    };
    let m = r
        .neg
        .map(&r.exporter, &imp, range(0, 16 * SZ_4K), RW, &policy)
        .unwrap();
    assert_eq!(m.strategy().unwrap(), Strategy::Bounce);
    let dom = r.platform.test_domain(a(NIC)).unwrap();
    let iova = m.iova().unwrap().unwrap();
    let host = r.platform.test_host();
    assert_eq!(host.grants(), 1);
    assert!(
        dom.translate(iova.start()).unwrap().phys.0 >= (64u64 << 30) - (64 << 20),
        "in the bounce pool"
    );
    drop(m);
    assert_eq!(
        (host.grants(), r.gpu.grants(), dom.mapped_pages()),
        (0, 0, 0)
    );
}

#[test]
fn refused_plans_do_not_establish() {
    let r = rig(
        presets::workstation().unwrap(),
        DomainKind::Translated,
        1024,
        true,
        false,
    );
    let (_, imp) = importer(ImporterFlags::P2P, 64); // no ODP, memory unpinnable
    let err = r.map(&imp, range(0, SZ_4K)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                refusal: Reason::MovableNeedsOdp,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ODP"));
    assert!(r.neg.registry().is_empty());
}

#[test]
fn full_window_fails_cleanly() {
    let r = rig(
        presets::workstation().unwrap(),
        DomainKind::Translated,
        16,
        true,
        true,
    );
    let (_, imp) = importer(odp(), 64);
    let m = r.map(&imp, range(0, 12 * SZ_4K)).unwrap();
    let err = r.map(&imp, range(0, 8 * SZ_4K)).unwrap_err();
    assert_eq!(
        err,
        Error::WindowFull {
            exporter: r.exporter.id(),
            requested: 8 * SZ_4K,
            available: 4 * SZ_4K
        }
    );
    assert_eq!((r.neg.registry().len(), r.gpu.grants()), (1, 1));
    drop(m);
    r.map(&imp, range(0, 16 * SZ_4K)).unwrap();
}

#[test]
fn failed_iommu_map_rolls_back_everything() {
    let r = movable_rig(presets::acs_switch().unwrap());
    let (_, imp) = importer(odp(), 64);
    let dom = r.platform.test_domain(a(NIC)).unwrap();
    for fail_at in [0, 1, 50, 99] {
        dom.fail_nth(fail_at + 1);
        let err = r.map(&imp, range(0, 100 * SZ_4K)).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(r.leftovers(), (0, 0, 0, 0), "fail at {fail_at}");
    }
}

#[test]
fn bad_ranges_are_typed_errors() {
    let r = movable_rig(presets::workstation().unwrap());
    let (_, imp) = importer(odp(), 64);
    let p = Policy::default();
    assert!(matches!(
        r.neg.map(&r.exporter, &imp, range(0, 0), RW, &p),
        Err(Error::EmptyRange { .. })
    ));
    let past = r
        .neg
        .map(&r.exporter, &imp, range(64 << 20, SZ_4K), RW, &p)
        .unwrap_err();
    assert!(
        matches!(past, Error::OutOfBounds { start, .. } if start == 64 << 20),
        "{past}"
    );
    // A plan made for another importer.
    let other: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(a("0000:04:00.0"), imp.caps()));
    let plan = r.neg.negotiate(&*r.exporter, &*imp, RW, &p).unwrap();
    assert!(matches!(
        r.neg.establish(&plan, &r.exporter, &other, range(0, SZ_4K)),
        Err(Error::PlanMismatch { .. })
    ));
    assert!(r.neg.registry().is_empty());
}

#[test]
fn move_invalidates_then_odp_refaults_into_host_memory() {
    let r = movable_rig(presets::acs_switch().unwrap());
    let (nic, imp) = importer(odp(), 64);
    let m = r.map(&imp, range(0, 32 * SZ_4K)).unwrap();
    let dom = r.platform.test_domain(a(NIC)).unwrap();
    let seq = m.read_begin();
    assert_eq!(seq % 2, 0);

    let report = r
        .neg
        .invalidate(r.exporter.id(), range(0, 64 << 20), InvalidationKind::Move)
        .unwrap();
    assert_eq!(report.mappings, 1);
    assert_eq!(report.bytes_unmapped, 32 * SZ_4K);
    let notices = nic.invalidations();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].mapping, m.id());
    assert_eq!(notices[0].seq % 2, 1, "odd during the invalidation");
    assert!(m.read_retry(seq));
    assert!(matches!(m.segments(), Err(Error::Invalidated(_))));
    assert_eq!(
        (dom.mapped_pages(), dom.live_iovas(), r.gpu.grants()),
        (0, 0, 0)
    );
    assert_eq!(
        r.neg.registry().len(),
        1,
        "the mapping stays registered, invalidated"
    );

    r.gpu.migrate_to_host();
    let plan = r.neg.refault(&m, &Policy::default()).unwrap();
    assert!(plan.reasons.contains(&Reason::HostMemory));
    assert_eq!(plan.strategy, Strategy::ViaIommu);
    let iova = m.iova().unwrap().unwrap();
    assert!(
        dom.translate(iova.start()).unwrap().phys.0 >= 0x1_0000_0000,
        "now backed by host RAM"
    );
    assert!(m.is_live());
    drop(m);
    assert_eq!(r.leftovers(), (0, 0, 0, 0));
}

#[test]
fn invalidation_touches_only_overlapping_mappings() {
    let r = movable_rig(presets::workstation().unwrap());
    let (nic, imp) = importer(odp(), 64);
    let p = Policy::default();
    let m1 = r
        .neg
        .map(&r.exporter, &imp, range(0, 4 * SZ_4K), RW, &p)
        .unwrap();
    let m2 = r
        .neg
        .map(&r.exporter, &imp, range(4 * SZ_4K, 4 * SZ_4K), RW, &p)
        .unwrap();
    assert_eq!(
        r.neg
            .registry()
            .overlapping(r.exporter.id(), range(3 * SZ_4K, 2 * SZ_4K))
            .len(),
        2
    );
    r.neg
        .invalidate(
            r.exporter.id(),
            range(4 * SZ_4K, SZ_4K),
            InvalidationKind::Move,
        )
        .unwrap();
    assert!(m1.is_live() && !m2.is_live());
    assert_eq!(nic.invalidations().len(), 1);
}

#[test]
fn pinned_memory_refuses_to_move() {
    let r = movable_rig(presets::workstation().unwrap());
    let (nic, imp) = importer(ImporterFlags::P2P, 64); // no ODP: pinned
    let m = r.map(&imp, range(0, SZ_4K)).unwrap();
    let err = r
        .neg
        .invalidate(r.exporter.id(), range(0, 64 << 20), InvalidationKind::Move)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Pinned { importer, .. } if *importer == a(NIC)),
        "{err}"
    );
    assert!(m.is_live());
    assert!(nic.invalidations().is_empty());
}

#[test]
fn revoked_memory_cannot_be_refaulted() {
    let r = movable_rig(presets::workstation().unwrap());
    let (_, imp) = importer(odp(), 64);
    let m = r.map(&imp, range(0, SZ_4K)).unwrap();
    r.neg
        .invalidate(r.exporter.id(), range(0, SZ_4K), InvalidationKind::Revoke)
        .unwrap();
    r.gpu.revoke();
    assert!(matches!(
        r.neg.refault(&m, &Policy::default()),
        Err(Error::CannotRefault { .. })
    ));
    assert_eq!(
        r.map(&imp, range(0, SZ_4K)).unwrap_err(),
        Error::Revoked(r.exporter.id())
    );
}

#[test]
fn importer_that_cannot_stop_keeps_its_mapping_and_blocks_the_move() {
    let r = movable_rig(presets::workstation().unwrap());
    let (_, good) = importer(odp(), 64);
    let bad_nic = Arc::new(TestImporter::new(a("0000:04:00.0"), good.caps()));
    let bad: Arc<dyn DmaImporter> = bad_nic.clone();
    let p = Policy::default();
    let m_good = r
        .neg
        .map(&r.exporter, &good, range(0, SZ_4K), RW, &p)
        .unwrap();
    let m_bad = r
        .neg
        .map(&r.exporter, &bad, range(0, SZ_4K), RW, &p)
        .unwrap();
    bad_nic.set_failing(true);
    let err = r
        .neg
        .invalidate(r.exporter.id(), range(0, SZ_4K), InvalidationKind::Move)
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidateFailed { device, .. } if *device == a("0000:04:00.0")),
        "{err}"
    );
    assert!(!m_good.is_live());
    assert!(m_bad.is_live());
    assert_eq!(
        m_bad.read_begin() % 2,
        0,
        "sequence even again after the failed attempt"
    );
}

#[test]
fn refault_needs_odp() {
    let r = rig(
        presets::workstation().unwrap(),
        DomainKind::Translated,
        1024,
        false,
        true,
    );
    let (_, imp) = importer(ImporterFlags::P2P, 64);
    // Static memory: not pinned-refusing, but the importer still pins (no ODP).
    let m = r.map(&imp, range(0, SZ_4K)).unwrap();
    assert!(r
        .neg
        .invalidate(r.exporter.id(), range(0, SZ_4K), InvalidationKind::Move)
        .is_err());
    drop(m);
    let (_, odp_imp) = importer(odp(), 64);
    let m = r.map(&odp_imp, range(0, SZ_4K)).unwrap();
    assert_eq!(
        r.neg.refault(&m, &Policy::default()).unwrap().strategy,
        Strategy::Direct,
        "live: nothing to do"
    );
}

#[test]
fn plan_cache_hits_and_drops_on_topology_change() {
    let r = movable_rig(presets::workstation().unwrap());
    let (_, imp) = importer(odp(), 64);
    let p = Policy::default();
    let first = r.neg.negotiate(&*r.exporter, &*imp, RW, &p).unwrap();
    let second = r.neg.negotiate(&*r.exporter, &*imp, RW, &p).unwrap();
    assert_eq!(first, second);
    let s = r.neg.cache_stats();
    assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
    // The same machine with ACS redirect on: the cached Direct plan must not survive.
    r.platform.set_topology(presets::acs_switch().unwrap());
    let third = r.neg.negotiate(&*r.exporter, &*imp, RW, &p).unwrap();
    assert_eq!(third.strategy, Strategy::ViaIommu);
    assert_eq!(r.neg.cache_stats().misses, 2);
}

#[test]
fn readers_retry_across_a_concurrent_invalidation() {
    let r = movable_rig(presets::workstation().unwrap());
    let (_, imp) = importer(odp(), 64);
    let m = r.map(&imp, range(0, SZ_4K)).unwrap();
    let seq = m.read_begin();
    std::thread::scope(|s| {
        s.spawn(|| {
            r.neg
                .invalidate(r.exporter.id(), range(0, SZ_4K), InvalidationKind::Move)
                .unwrap()
        });
    });
    assert!(
        m.read_retry(seq),
        "a fault handler that read before must retry"
    );
    let again = m.read_begin();
    assert!(!m.read_retry(again));
}

fn registry_consistent(reg: &Registry) -> bool {
    reg.all().iter().all(|i| !i.range.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A cached plan always equals the plan computed from scratch, across topology changes.
    #[test]
    fn cache_equals_cold(seed in any::<u64>(), steps in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<bool>()), 1..40)) {
        let topo = presets::random(seed).unwrap();
        let eps: Vec<PciAddr> = topo.endpoints().map(|(a, _)| a).collect();
        let with_bar: Vec<PciAddr> = topo.endpoints().filter(|(_, e)| !e.bars.is_empty()).map(|(a, _)| a).collect();
        let exporters: Vec<Arc<TestExporter>> = with_bar.iter().map(|&d| Arc::new(TestExporter::new(&topo, d, 1 << 20, 256, MemoryKind::MOVABLE).unwrap())).collect();
        let platform = Arc::new(TestPlatform::new(topo, DomainKind::Translated));
        let neg = Negotiator::new(platform.clone());
        for (i, (e, imp_pick, pol, change)) in steps.into_iter().enumerate() {
            if change && i % 7 == 0 {
                platform.set_topology(presets::random(seed ^ i as u64).unwrap_or_else(|_| presets::workstation().unwrap()));
            }
            let exp = &exporters[e as usize % exporters.len()];
            let flags = ImporterFlags::from_bits_truncate(imp_pick);
            let imp = TestImporter::new(eps[imp_pick as usize % eps.len()], ImporterCaps { flags, dma_mask: dma_mask(32 + (imp_pick as u32 % 33)), max_segment: 0 });
            let policy = Policy {
                max_path: PathClass::ALL[pol as usize % 6],
                allow_host_bridge: pol & 8 != 0,
                fallback: if pol & 16 != 0 { Fallback::Bounce } else { Fallback::Refuse },
                require_iommu_isolation: pol & 32 != 0,
            };
            let cached = neg.negotiate(&**exp, &imp, RW, &policy);
            let cold = neg.negotiate_uncached(&**exp, &imp, RW, &policy);
            prop_assert_eq!(cached, cold, "seed {} step {}", seed, i);
        }
        prop_assert!(registry_consistent(neg.registry()));
    }
}

/// Records what a sanitizer would be told.
#[derive(Debug, Default)]
struct Recorder(parking_lot::Mutex<Vec<String>>);

impl p2p_core::negotiate::MappingObserver for Recorder {
    fn established(&self, ev: &p2p_core::negotiate::MappingEvent) {
        self.0.lock().push(format!(
            "up {} {} {}",
            ev.mapping,
            ev.strategy,
            ev.segments.len()
        ));
    }
    fn torn_down(
        &self,
        ev: &p2p_core::negotiate::MappingEvent,
        cause: p2p_core::negotiate::TeardownCause,
    ) {
        self.0.lock().push(format!("down {} {cause:?}", ev.mapping));
    }
}

#[test]
fn the_observer_sees_every_mapping_come_and_go() {
    let topo = presets::acs_switch().unwrap();
    let gpu = Arc::new(TestExporter::new(&topo, a(GPU), 1 << 20, 64, MemoryKind::MOVABLE).unwrap());
    let exporter: Arc<dyn MemoryExporter> = gpu.clone();
    let rec = Arc::new(Recorder::default());
    let neg = Negotiator::new(Arc::new(
        TestPlatform::new(topo, DomainKind::Translated).with_observer(rec.clone()),
    ));
    let (_, imp) = importer(odp(), 64);
    let p = Policy::default();
    let m1 = neg.map(&exporter, &imp, range(0, SZ_4K), RW, &p).unwrap();
    let m2 = neg
        .map(&exporter, &imp, range(SZ_4K, SZ_4K), RW, &p)
        .unwrap();
    neg.invalidate(exporter.id(), range(0, SZ_4K), InvalidationKind::Move)
        .unwrap();
    gpu.migrate_to_host();
    neg.refault(&m1, &p).unwrap();
    let (id1, id2) = (m1.id(), m2.id());
    drop(m2);
    drop(m1);
    let want: Vec<String> = [
        format!("up {id1} via-iommu 1"),
        format!("up {id2} via-iommu 1"),
        format!("down {id1} Invalidated(Move)"),
        format!("up {id1} via-iommu 1"),
        format!("down {id2} Dropped"),
        format!("down {id1} Dropped"),
    ]
    .into();
    assert_eq!(*rec.0.lock(), want);
}

/// A range that straddles a page boundary gets every page it touches: `[0x800..0x1800)` is two
/// pages, not one (the second page's bytes were lost), and its segments start at the byte asked.
#[test]
fn an_unaligned_range_gets_every_page_it_touches() {
    for topo in [
        presets::workstation().unwrap(),
        presets::acs_switch().unwrap(),
    ] {
        let r = movable_rig(topo);
        let (_, imp) = importer(ImporterFlags::ODP | ImporterFlags::P2P, 64);
        let m = r
            .map(&imp, AddrRange::new(Offset(0x800), 0x1000).unwrap())
            .unwrap();
        // The segments describe exactly the bytes asked for; the pages behind them are both.
        let segs = m.segments().unwrap();
        let covered: u64 = segs.iter().map(|s| s.len).sum();
        assert_eq!(covered, 0x1000, "{}", m.strategy().unwrap());
        assert_eq!(
            segs[0].addr.0 & 0xfff,
            0x800,
            "the first byte's in-page offset"
        );
        let g = r
            .exporter
            .export(AddrRange::new(Offset(0x800), 0x1000).unwrap(), false);
        let chunks = r.exporter.chunks(&g.unwrap()).unwrap();
        assert_eq!((chunks[0].offset, chunks[0].len), (Offset(0), 2 * SZ_4K));
    }
}

/// The plan cache is bounded: a long-running process that makes exporters without end does not
/// grow it without end.
#[test]
fn the_plan_cache_stays_bounded_as_exporters_come_and_go() {
    let topo = presets::workstation().unwrap();
    let platform = Arc::new(TestPlatform::new(topo.clone(), DomainKind::Translated));
    let neg = Negotiator::new(platform);
    let (_, imp) = importer(ImporterFlags::ODP | ImporterFlags::P2P, 64);
    let n = p2p_core::negotiate::PLAN_CACHE_CAPACITY + 100;
    for _ in 0..n {
        let gpu = TestExporter::new(&topo, a(GPU), 1 << 20, 16, MemoryKind::MOVABLE).unwrap();
        neg.negotiate(&gpu, &*imp, RW, &Policy::default()).unwrap();
    }
    let stats = neg.cache_stats();
    assert_eq!(stats.misses, n as u64);
    assert!(
        stats.entries <= p2p_core::negotiate::PLAN_CACHE_CAPACITY,
        "{stats:?}"
    );
    assert_eq!(stats.evictions, 1);
}

/// An establish with a plan made before the memory moved is refused with a typed error, not
/// set up at the old place; `map` plans again.
#[test]
fn a_plan_made_before_a_move_is_refused_after_it() {
    let r = movable_rig(presets::workstation().unwrap());
    let (_, imp) = importer(ImporterFlags::ODP | ImporterFlags::P2P, 64);
    let plan = r
        .neg
        .negotiate(&*r.exporter, &*imp, RW, &Policy::default())
        .unwrap();
    let whole = AddrRange::new(Offset(0), 64 << 20).unwrap();
    let inv = r
        .neg
        .begin_invalidation(r.exporter.id(), whole, InvalidationKind::Move)
        .unwrap();
    assert_eq!(r.neg.registry().invalidations_running(), 1);
    r.gpu.migrate_to_host();
    drop(inv);
    assert_eq!(r.neg.registry().invalidations_running(), 0);
    let range = AddrRange::new(Offset(0), SZ_4K).unwrap();
    assert!(matches!(
        r.neg.establish(&plan, &r.exporter, &imp, range),
        Err(Error::StalePlan { .. })
    ));
    assert_eq!(r.neg.registry().len(), 0, "nothing left registered");
    let m = r.map(&imp, range).unwrap();
    assert!(m.is_live());
}

/// The conformance stress check on the in-crate test domain.
#[test]
fn the_test_domain_passes_the_concurrent_stress_check() {
    for seed in 0..3 {
        let d = Arc::new(TestDomain::new(DomainKind::Translated));
        p2p_core::conformance::stress_domain(
            d.clone(),
            &p2p_core::conformance::StressConfig::quick(seed),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.mapped_pages(), d.live_iovas()), (0, 0));
    }
}
