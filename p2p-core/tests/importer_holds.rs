//! A registry shard holds each importer once, not once per mapping: mappings through one importer
//! do not move its reference count, an importer is kept while mapped or while its caller still
//! holds it, and one nobody else holds is let go (at its last mapping's drop, or within the
//! shard's next drops if the caller let go later), never while a mapping uses it.

use p2p_core::prelude::*;
use p2p_core::rand::SplitMix64;
use p2p_core::testing::*;
use p2p_core::topology::presets;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const RW: Access = Access::READ.union(Access::WRITE);

fn page(i: u64) -> AddrRange<Offset> {
    AddrRange::new(Offset(i * 4096), 4096).unwrap()
}

/// An importer object for the NIC (several objects may stand for it: the registry tells
/// importers apart by object, not by address).
fn nic() -> Arc<TestImporter> {
    let caps = ImporterCaps {
        flags: ImporterFlags::P2P | ImporterFlags::ODP,
        ..ImporterCaps::default()
    };
    Arc::new(TestImporter::new("0000:05:00.0".parse().unwrap(), caps))
}

/// GPUs behind an ACS switch (mapped through the importers' domains), fixed memory.
fn rig(gpus: usize) -> (Negotiator, Vec<Arc<TestExporter>>) {
    let topo = presets::acs_switch().unwrap();
    let exporters = (0..gpus)
        .map(|g| {
            let addr = ["0000:03:00.0", "0000:04:00.0"][g % 2].parse().unwrap();
            Arc::new(TestExporter::new(&topo, addr, 1 << 20, 256, MemoryKind::FIXED).unwrap())
        })
        .collect();
    let platform = Arc::new(TestPlatform::new(topo, DomainKind::Translated));
    (Negotiator::new(platform), exporters)
}

#[test]
fn mappings_through_one_importer_do_not_move_its_count() {
    let (neg, gpus) = rig(1);
    let nic = nic();
    let first = neg
        .map(&gpus[0], &nic, page(0), RW, &Policy::default())
        .unwrap();
    assert_eq!(Arc::strong_count(&nic), 2, "the caller's and the shard's");
    let more: Vec<Mapping> = (1..16)
        .map(|i| {
            neg.map(&gpus[0], &nic, page(i), RW, &Policy::default())
                .unwrap()
        })
        .collect();
    assert_eq!(
        Arc::strong_count(&nic),
        2,
        "15 more mappings took references"
    );
    drop(more);
    drop(first);
    assert_eq!(
        Arc::strong_count(&nic),
        2,
        "kept after its last mapping while the caller holds it"
    );
}

#[test]
fn an_importer_nobody_else_holds_goes_with_its_last_mapping() {
    let (neg, gpus) = rig(1);
    let nic = nic();
    let weak: Weak<TestImporter> = Arc::downgrade(&nic);
    let first = neg
        .map(&gpus[0], &nic, page(0), RW, &Policy::default())
        .unwrap();
    let last = neg
        .map(&gpus[0], &nic, page(1), RW, &Policy::default())
        .unwrap();
    drop(nic);
    drop(first);
    assert!(weak.upgrade().is_some(), "a mapping still uses it");
    // An invalidation still reaches it.
    neg.invalidate(gpus[0].id(), page(1), InvalidationKind::Move)
        .unwrap();
    assert_eq!(weak.upgrade().unwrap().invalidations().len(), 1);
    drop(last);
    assert!(
        weak.upgrade().is_none(),
        "held after its last mapping and its caller went"
    );
}

#[test]
fn an_importer_let_go_after_its_last_mapping_goes_at_the_shards_next_drop() {
    let (neg, gpus) = rig(1);
    let (kept, other) = (nic(), nic());
    let weak = Arc::downgrade(&kept);
    drop(
        neg.map(&gpus[0], &kept, page(0), RW, &Policy::default())
            .unwrap(),
    );
    drop(kept);
    assert!(
        weak.upgrade().is_some(),
        "nothing has happened in the shard since"
    );
    drop(
        neg.map(&gpus[0], &other, page(1), RW, &Policy::default())
            .unwrap(),
    );
    assert!(weak.upgrade().is_none(), "the shard's next drop let it go");
    // And the registry lets go of everything with the negotiator.
    let weak_other = Arc::downgrade(&other);
    drop(other);
    assert!(weak_other.upgrade().is_some());
    drop(neg);
    assert!(weak_other.upgrade().is_none());
}

/// Threads map and drop pages of several exporters through several importers, in seeded random
/// order, holding a few mappings at a time; an invalidating thread moves one exporter's memory
/// meanwhile (its importers are called through the registry's hold). After join: no mapping is
/// left, each importer is referenced by its caller and at most once by the registry, and once
/// the callers let go and every shard drops a mapping, by nothing.
#[test]
fn importers_are_held_once_per_shard_and_let_go_under_concurrent_maps() {
    let seed = std::env::var("P2P_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1a2b_3c4d);
    let deadline = Instant::now() + Duration::from_secs(20);
    for round in 0..100u64 {
        if Instant::now() > deadline {
            break;
        }
        let seed = seed ^ round;
        let (neg, gpus) = rig(4);
        let nics: Vec<Arc<TestImporter>> = (0..3).map(|_| nic()).collect();
        std::thread::scope(|s| {
            let (neg_ref, moved) = (&neg, &gpus[0]);
            s.spawn(move || {
                let whole = AddrRange::new(Offset(0), 64 * 4096).unwrap();
                for _ in 0..100 {
                    if let Err(e) = neg_ref.invalidate(moved.id(), whole, InvalidationKind::Move) {
                        panic!("seed {seed:#x}: invalidate failed: {e}");
                    }
                    std::thread::yield_now();
                }
            });
            for t in 0..4u64 {
                let (neg, gpus, nics) = (&neg, &gpus, &nics);
                s.spawn(move || {
                    let mut rng = SplitMix64::new(seed.wrapping_mul(31).wrapping_add(t));
                    let mut held: Vec<Mapping> = Vec::new();
                    for _ in 0..300 {
                        let g = &gpus[rng.below(gpus.len() as u64) as usize];
                        let n = &nics[rng.below(nics.len() as u64) as usize];
                        let at = page(rng.below(64));
                        match neg.map(g, n, at, RW, &Policy::default()) {
                            Ok(m) => held.push(m),
                            Err(e) => panic!("seed {seed:#x}: map failed: {e}"),
                        }
                        if held.len() > 3 || rng.below(2) == 0 {
                            let i = rng.below(held.len() as u64) as usize;
                            drop(held.swap_remove(i));
                        }
                    }
                });
            }
        });
        assert!(neg.registry().is_empty(), "seed {seed:#x}");
        for n in &nics {
            // The caller's reference, and the registry's if a shard still has a share.
            assert!(
                Arc::strong_count(n) <= 2,
                "seed {seed:#x}: {} references",
                Arc::strong_count(n)
            );
        }
        let weaks: Vec<Weak<TestImporter>> = nics.iter().map(Arc::downgrade).collect();
        drop(nics);
        // Each removal looks at two of its shard's importers: as many drops per exporter as
        // there are importers let every shard let go of those nobody else holds.
        let fresh = nic();
        for (i, g) in gpus.iter().enumerate() {
            for _ in 0..=weaks.len() {
                drop(
                    neg.map(g, &fresh, page(i as u64), RW, &Policy::default())
                        .unwrap(),
                );
            }
        }
        for (i, w) in weaks.iter().enumerate() {
            assert!(
                w.upgrade().is_none(),
                "seed {seed:#x}: importer {i} still held after its callers let go"
            );
        }
    }
}
