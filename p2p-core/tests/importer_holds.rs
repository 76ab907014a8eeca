//! The library holds each importer once, not once per mapping: mappings through one importer do
//! not move its reference count, an importer is kept while mapped or while its caller still
//! holds it, and one nobody else holds is let go (at its last mapping's drop, within the shard's
//! next drops if the caller let go later, or when asked), never while a mapping uses it, and
//! never under a registry lock.

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

/// An importer object for the NIC (several objects may stand for it: the library tells
/// importers apart by object, not by address).
fn nic() -> Arc<TestImporter> {
    Arc::new(TestImporter::new("0000:05:00.0".parse().unwrap(), caps()))
}

fn caps() -> ImporterCaps {
    ImporterCaps {
        flags: ImporterFlags::P2P | ImporterFlags::ODP,
        ..ImporterCaps::default()
    }
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

fn map<I: DmaImporter + 'static>(
    neg: &Negotiator,
    gpu: &Arc<TestExporter>,
    nic: &Arc<I>,
    at: u64,
) -> Mapping {
    neg.map(gpu, nic, page(at), RW, &Policy::default())
        .unwrap_or_else(|e| panic!("map: {e}"))
}

#[test]
fn mappings_through_one_importer_do_not_move_its_count() {
    let (neg, gpus) = rig(1);
    let nic = nic();
    let first = map(&neg, &gpus[0], &nic, 0);
    assert_eq!(Arc::strong_count(&nic), 2, "the caller's and the library's");
    let more: Vec<Mapping> = (1..16).map(|i| map(&neg, &gpus[0], &nic, i)).collect();
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
    let first = map(&neg, &gpus[0], &nic, 0);
    let last = map(&neg, &gpus[0], &nic, 1);
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
        "held after its last mapping and caller went"
    );
}

#[test]
fn an_importer_let_go_after_its_last_mapping_goes_at_the_shards_next_drop() {
    let (neg, gpus) = rig(1);
    let (kept, other) = (nic(), nic());
    let weak = Arc::downgrade(&kept);
    drop(map(&neg, &gpus[0], &kept, 0));
    drop(kept);
    assert!(
        weak.upgrade().is_some(),
        "nothing has happened in the shard since"
    );
    drop(map(&neg, &gpus[0], &other, 1));
    assert!(weak.upgrade().is_none(), "the shard's next drop let it go");
    // Or at once, when asked; and everything goes with the negotiator.
    let weak_other = Arc::downgrade(&other);
    drop(other);
    assert!(weak_other.upgrade().is_some());
    assert_eq!(neg.registry().let_go_of_unused_importers(), 1);
    assert!(weak_other.upgrade().is_none());
    let third = nic();
    let weak_third = Arc::downgrade(&third);
    drop(map(&neg, &gpus[0], &third, 2));
    drop(third);
    drop(neg);
    assert!(weak_third.upgrade().is_none());
}

/// Two negotiators mapping through one importer hold it once between them: when its caller lets
/// go, each lets go at its next drop, and the importer goes with the second.
#[test]
fn two_negotiators_let_go_of_a_shared_importer() {
    let (a, gpus_a) = rig(1);
    let (b, gpus_b) = rig(1);
    let shared = nic();
    let weak = Arc::downgrade(&shared);
    drop(map(&a, &gpus_a[0], &shared, 0));
    drop(map(&b, &gpus_b[0], &shared, 0));
    assert_eq!(
        Arc::strong_count(&shared),
        2,
        "the caller's and the library's"
    );
    drop(shared);
    let other = nic();
    drop(map(&a, &gpus_a[0], &other, 1));
    assert!(weak.upgrade().is_some(), "b still holds it");
    drop(map(&b, &gpus_b[0], &other, 1));
    assert!(weak.upgrade().is_none(), "held after both let go");
}

/// An importer whose `Drop` takes every registry shard's lock: dropped under one, it would
/// deadlock (reported as a failure after ten seconds, not a hang).
#[derive(Debug)]
struct LocksOnDrop {
    nic: TestImporter,
    neg: Weak<Negotiator>,
}

impl LocksOnDrop {
    fn new(neg: &Arc<Negotiator>) -> Arc<Self> {
        Arc::new(Self {
            nic: TestImporter::new("0000:05:00.0".parse().unwrap(), caps()),
            neg: Arc::downgrade(neg),
        })
    }
}

impl DmaImporter for LocksOnDrop {
    fn device(&self) -> PciAddr {
        self.nic.device()
    }
    fn caps(&self) -> ImporterCaps {
        self.nic.caps()
    }
    fn invalidate(&self, notice: &Invalidation) -> Result<()> {
        self.nic.invalidate(notice)
    }
}

impl Drop for LocksOnDrop {
    fn drop(&mut self) {
        if let Some(neg) = self.neg.upgrade() {
            neg.registry().len();
        }
    }
}

#[test]
fn an_importer_is_dropped_outside_the_registrys_locks() {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (neg, gpus) = rig(1);
        let neg = Arc::new(neg);
        // Its last mapping goes after its caller let go: that drop drops it.
        let importer = LocksOnDrop::new(&neg);
        let m = map(&neg, &gpus[0], &importer, 0);
        drop(importer);
        drop(m);
        // Kept after its last mapping; another importer's drop lets it go.
        let kept = LocksOnDrop::new(&neg);
        drop(map(&neg, &gpus[0], &kept, 0));
        drop(kept);
        drop(map(&neg, &gpus[0], &nic(), 1));
        // Kept, then let go when asked.
        let asked = LocksOnDrop::new(&neg);
        drop(map(&neg, &gpus[0], &asked, 0));
        drop(asked);
        neg.registry().let_go_of_unused_importers();
        let _ = done.send(());
    });
    assert!(
        wait.recv_timeout(Duration::from_secs(10)).is_ok(),
        "an importer was dropped under a registry lock (deadlock)"
    );
}

/// Threads map and drop pages of several exporters through several importers, in seeded random
/// order, holding a few mappings at a time; each thread also maps through an importer of its
/// own and lets go of it halfway, so that shards let go of importers while the others run; an
/// invalidating thread moves one exporter's memory meanwhile. Every invalidated mapping must
/// have reached its importer (one let go too early would be skipped). After join: no mapping is
/// left, each importer is referenced by its caller and at most once by the library, and once
/// the callers let go and every shard drops mappings, by nothing.
#[test]
fn importers_are_held_once_and_let_go_under_concurrent_maps() {
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
        let moved = gpus[0].id();
        std::thread::scope(|s| {
            let neg = &neg;
            s.spawn(move || {
                let whole = AddrRange::new(Offset(0), 64 * 4096).unwrap();
                for _ in 0..100 {
                    if let Err(e) = neg.invalidate(moved, whole, InvalidationKind::Move) {
                        panic!("seed {seed:#x}: invalidate failed: {e}");
                    }
                    std::thread::yield_now();
                }
            });
            for t in 0..4u64 {
                let (gpus, nics) = (&gpus, &nics);
                s.spawn(move || worker(neg, gpus, nics, seed, t, moved));
            }
        });
        assert!(neg.registry().is_empty(), "seed {seed:#x}");
        for n in &nics {
            assert!(
                Arc::strong_count(n) <= 2,
                "seed {seed:#x}: {} references",
                Arc::strong_count(n)
            );
        }
        let weaks: Vec<Weak<TestImporter>> = nics.iter().map(Arc::downgrade).collect();
        drop(nics);
        // Each removal looks at two of its shard's importers: as many drops per exporter as
        // there are importers (the threads' own too) let every shard let go of them.
        let fresh = nic();
        for (i, g) in gpus.iter().enumerate() {
            for _ in 0..weaks.len() + 5 {
                drop(map(&neg, g, &fresh, i as u64));
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

/// One thread of the test above: 300 maps, a few held at a time; its own importer is let go of
/// after 150 (its mappings keep it, through the library, until they are dropped).
fn worker(
    neg: &Negotiator,
    gpus: &[Arc<TestExporter>],
    nics: &[Arc<TestImporter>],
    seed: u64,
    t: u64,
    moved: ExporterId,
) {
    let mut rng = SplitMix64::new(seed.wrapping_mul(31).wrapping_add(t));
    let mut own = Some(nic());
    // Each mapping with a weak reference to its importer, to check its invalidations after.
    let mut held: Vec<(Mapping, Weak<TestImporter>)> = Vec::new();
    for i in 0..300 {
        if i == 150 {
            own = None;
        }
        let g = &gpus[rng.below(gpus.len() as u64) as usize];
        let pick = rng.below(nics.len() as u64 + 1) as usize;
        let n = match (nics.get(pick), &own) {
            (Some(n), _) | (None, Some(n)) => n.clone(),
            (None, None) => nics[0].clone(),
        };
        let m = map(neg, g, &n, rng.below(64));
        held.push((m, Arc::downgrade(&n)));
        drop(n);
        if held.len() > 3 || rng.below(2) == 0 {
            let (m, n) = held.swap_remove(rng.below(held.len() as u64) as usize);
            // Alive: the mapping holds it, through the library. Live first: an invalidation
            // tells the importer before it tears the mapping down, so a mapping found dead was
            // told of by then.
            let importer = n.upgrade().expect("a mapped importer was let go");
            let live = m.is_live();
            let told = importer
                .invalidations()
                .iter()
                .any(|inv| inv.mapping == m.id() && inv.exporter == moved);
            assert!(
                live || told,
                "seed {seed:#x}: mapping {} invalidated without its importer told",
                m.id()
            );
        }
    }
}
