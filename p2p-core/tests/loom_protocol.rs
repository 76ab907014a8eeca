//! Loom models of the invalidation protocol (`p2p_core::negotiate::protocol`), driving the real
//! [`Negotiator`] against the in-crate test doubles. Under `--cfg loom` the registry lock and the
//! [`Sequence`](p2p_core::negotiate::Sequence) atomics are loom's (`src/sync.rs`), so loom explores
//! every interleaving of their operations up to the preemption bound.
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p p2p-core --release --test loom_protocol
//! ```
//!
//! The models run with a preemption bound of 3 (a few hundred interleavings each, well under a
//! second). `LOOM_MAX_PREEMPTIONS=100` makes the search exhaustive (3,000–6,000 interleavings a
//! model for models 1–5, about a second in all; model 6, with a set-up on each thread, about 13
//! seconds). `LOOM_LOG=trace LOOM_LOCATION=1 LOOM_MAX_PREEMPTIONS=3` prints every operation of
//! every interleaving, the failing one last.
//!
//! The test doubles (`TestExporter`, `TestDomain`, `TestImporter`, `TestPlatform`) keep their
//! state under `parking_lot` locks that loom does not see. Running them is safe: none of those
//! critical sections contains a loom operation, so loom never switches threads while one is held.
//! But loom also does not see them as shared state, so it would never put another thread's step
//! between a move and the next loom operation of the mover. Where the memory is, though, is what
//! the protocol is about: the exporter is therefore wrapped in [`Gpu`], whose every call (and
//! every move) takes a loom mutex, so loom orders each read of the residency against each move
//! like any other access. The observer ([`Recorder`]) keeps its records under a loom mutex for
//! the same reason. The domain's page table is only read after the threads are joined.
//!
//! The models:
//!
//! 1. [`establish_vs_move`]: `map` races `begin_invalidation(Move)` + `migrate_to_host` + end.
//!    Nothing is live while the memory moves; afterwards a live mapping was planned for, and
//!    points at, host RAM, and the domain maps exactly the live mappings' pages.
//! 2. [`refault_vs_move`]: `refault` of an invalidated mapping races another move. Afterwards the
//!    mapping is live at the new place or invalidated, never live and stale.
//! 3. [`drop_vs_invalidate`]: dropping a mapping (and mapping and dropping another) races an
//!    invalidation. The observer sees each mapping established once, then torn down once.
//! 4. [`overlapping_invalidations_vs_establish`]: two overlapping invalidations are running when
//!    an establish registers; the first ends before the memory moves under the second. The
//!    sequence must stay odd until both end, so the establish never publishes the old place.
//! 5. [`forced_revoke_vs_pinned_establish`]: a non-ODP importer's `map` (which pins) races a
//!    forced revoke that kills pinned mappings. Nothing is live while the memory is revoked, and
//!    afterwards nothing is live at all: the map either failed or was torn down.
//! 6. [`sequence_reuse_vs_invalidation`]: dropping a mapping and setting up another of the same
//!    range (which may take the dropped one's sequence from its shard's spares) races a move,
//!    during which the mover sets up a mapping of a range the move does not cover (which may
//!    take it too). A sequence a running invalidation holds must never be handed out: the
//!    mover's own set-up would wait for the mover forever.
#![cfg(loom)]

use loom::thread;
use p2p_core::negotiate::{MappingEvent, MappingObserver, TeardownCause};
use p2p_core::page::SZ_4K;
use p2p_core::prelude::*;
use p2p_core::testing::{TestDomain, TestExporter, TestImporter, TestPlatform};
use p2p_core::topology::presets;
use std::collections::BTreeMap;
use std::sync::Arc;

const GPU: &str = "0000:03:00.0";
const NIC: &str = "0000:05:00.0";
const RW: Access = Access::READ.union(Access::WRITE);
/// Where `TestExporter::migrate_to_host` puts the memory.
const HOST_BASE: u64 = 0x1_0000_0000;

/// What the observer was told, in the order it was told (registry order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Established,
    TornDown(TeardownCause),
}

/// What the [`Recorder`] holds.
#[derive(Debug, Default)]
struct Heard {
    events: Vec<(u64, Seen)>,
    live: BTreeMap<u64, MappingEvent>,
}

/// A DMA-sanitizer stand-in: records every event. It keeps them under a loom mutex (taken inside
/// the registry lock, never the other way round), so that when the observer hears of a publish
/// or a teardown is an operation loom orders against the other threads' operations: a
/// negotiator that told the observer outside the registry lock would be caught.
#[derive(Debug)]
struct Recorder {
    heard: loom::sync::Mutex<Heard>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            heard: loom::sync::Mutex::new(Heard::default()),
        }
    }

    fn heard(&self) -> loom::sync::MutexGuard<'_, Heard> {
        self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn events(&self) -> Vec<(u64, Seen)> {
        self.heard().events.clone()
    }

    /// Ids the observer believes live now.
    fn live(&self) -> Vec<u64> {
        self.heard().live.keys().copied().collect()
    }
}

impl MappingObserver for Recorder {
    fn established(&self, event: &MappingEvent) {
        let mut heard = self.heard();
        heard.events.push((event.mapping, Seen::Established));
        heard.live.insert(event.mapping, event.clone());
    }

    fn torn_down(&self, event: &MappingEvent, cause: TeardownCause) {
        let mut heard = self.heard();
        heard.events.push((event.mapping, Seen::TornDown(cause)));
        heard.live.remove(&event.mapping);
    }
}

/// The `TestExporter` with every call made under a loom mutex: moves and the negotiator's
/// reads of the residency (`info`, `export`, `chunks`) become operations loom orders.
#[derive(Debug)]
struct Gpu {
    inner: TestExporter,
    seen: loom::sync::Mutex<()>,
}

impl Gpu {
    fn with<T>(&self, f: impl FnOnce(&TestExporter) -> T) -> T {
        let _seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        f(&self.inner)
    }

    fn migrate_to_host(&self) {
        self.with(TestExporter::migrate_to_host);
    }

    fn revoke(&self) {
        self.with(TestExporter::revoke);
    }

    fn grants(&self) -> usize {
        self.with(TestExporter::grants)
    }
}

impl MemoryExporter for Gpu {
    fn id(&self) -> ExporterId {
        self.inner.id()
    }
    fn info(&self) -> ExporterInfo {
        self.with(|e| e.info())
    }
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.with(|e| e.export(range, pin))
    }
    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.with(|e| e.allocate(len, pin))
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        self.with(|e| e.chunks(grant))
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.with(|e| e.release(grant))
    }
}

/// One GPU exporting movable memory, one ODP NIC importing it, on the workstation preset: while
/// the memory is in the GPU's BAR the plan is `Direct` (bus addresses through the switch); once
/// it is in host RAM the plan is `ViaIommu` (the NIC's translated domain maps it). A mapping
/// planned for the wrong place therefore has the wrong strategy, not just a wrong address.
struct Rig {
    neg: Arc<Negotiator>,
    platform: Arc<TestPlatform>,
    gpu: Arc<Gpu>,
    exporter: Arc<dyn MemoryExporter>,
    importer: Arc<dyn DmaImporter>,
    recorder: Arc<Recorder>,
    domain: Arc<TestDomain>,
}

fn pci(s: &str) -> PciAddr {
    s.parse().expect("a valid PCI address")
}

fn range(page: u64, pages: u64) -> AddrRange<Offset> {
    AddrRange::new(Offset(page * SZ_4K), pages * SZ_4K).expect("a valid range")
}

impl Rig {
    /// Movable memory that cannot be pinned, an ODP importer.
    fn new() -> Self {
        Self::with(false, ImporterFlags::ODP | ImporterFlags::P2P)
    }

    /// `pinnable` memory and an importer with `flags`.
    fn with(pinnable: bool, flags: ImporterFlags) -> Self {
        let topo = presets::workstation().expect("the preset builds");
        let gpu = Arc::new(Gpu {
            inner: TestExporter::new(
                &topo,
                pci(GPU),
                16 * SZ_4K,
                16,
                MemoryKind {
                    movable: true,
                    pinnable,
                },
            )
            .expect("the GPU exports"),
            seen: loom::sync::Mutex::new(()),
        });
        let recorder = Arc::new(Recorder::new());
        let platform = Arc::new(
            TestPlatform::new(topo, DomainKind::Translated).with_observer(recorder.clone()),
        );
        let caps = ImporterCaps {
            flags,
            dma_mask: dma_mask(64),
            max_segment: 0,
        };
        let importer: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(pci(NIC), caps));
        let domain = platform.test_domain(pci(NIC)).expect("the NIC's domain");
        Self {
            neg: Arc::new(Negotiator::new(platform.clone())),
            platform,
            exporter: gpu.clone(),
            gpu,
            importer,
            recorder,
            domain,
        }
    }

    fn map(&self, r: AddrRange<Offset>) -> Result<Mapping> {
        self.neg
            .map(&self.exporter, &self.importer, r, RW, &Policy::default())
    }

    /// The writer: begin a move of `r`, check nothing of it is live, move the memory to host
    /// RAM, end the invalidation.
    fn move_to_host(&self, r: AddrRange<Offset>) {
        let guard = self
            .neg
            .begin_invalidation(self.exporter.id(), r, InvalidationKind::Move)
            .expect("nothing pinned, the importer stops");
        self.assert_nothing_live(r);
        self.gpu.migrate_to_host();
        drop(guard);
    }

    /// The protocol's promise at the moment the memory moves: no mapping of the range is live,
    /// and the observer (the DMA sanitizer) has been told so.
    fn assert_nothing_live(&self, r: AddrRange<Offset>) {
        let live: Vec<u64> = self
            .neg
            .registry()
            .overlapping(self.exporter.id(), r)
            .into_iter()
            .filter(|m| m.live)
            .map(|m| m.id)
            .collect();
        assert!(
            live.is_empty(),
            "mappings {live:?} are live while their memory moves"
        );
        assert!(
            self.recorder.live().is_empty(),
            "the observer still believes {:?} live while the memory moves",
            self.recorder.live()
        );
    }

    /// A live mapping must describe where the memory is now: planned for the current
    /// residency (its strategy is the one a fresh plan picks) and its one segment reaches the
    /// current place (through the domain for `ViaIommu`).
    fn assert_points_at_now(&self, m: &Mapping) {
        let now = self.exporter.info().residency;
        assert!(
            matches!(now, Residency::Host { .. }),
            "every model moves the memory"
        );
        let fresh = self
            .neg
            .negotiate_uncached(&*self.exporter, &*self.importer, RW, &Policy::default())
            .expect("plans");
        let strategy = m.strategy().expect("live");
        assert_eq!(
            strategy,
            fresh.strategy,
            "mapping {} is live with a plan for another place than where the memory is now ({now})",
            m.id()
        );
        let segs = m.segments().expect("live");
        assert_eq!(segs.len(), 1, "{segs:?}");
        let want = HOST_BASE + m.range().start().0;
        let got = match strategy {
            Strategy::ViaIommu => {
                self.domain
                    .translate(Iova(segs[0].addr.0))
                    .unwrap_or_else(|| panic!("segment {:?} is not mapped", segs[0]))
                    .phys
                    .0
            }
            Strategy::Direct | Strategy::Identity => segs[0].addr.0,
            s => panic!("unexpected strategy {s}"),
        };
        assert_eq!(
            got,
            want,
            "mapping {} reaches {got:#x}, the memory is at {want:#x}",
            m.id()
        );
    }

    /// The domain maps exactly the live mappings' pages: no IOMMU mapping outlives its mapping
    /// and none is missing.
    fn assert_domain_matches(&self, mappings: &[&Mapping]) {
        let mut pages = 0;
        let mut iovas = 0;
        for m in mappings.iter().filter(|m| m.is_live()) {
            if let Some(iova) = m.iova().expect("live") {
                pages += iova.len() / SZ_4K;
                iovas += 1;
            }
        }
        assert_eq!(
            (self.domain.mapped_pages(), self.domain.live_iovas()),
            (pages as usize, iovas),
            "the NIC's domain maps (pages, IOVA ranges) other than the live mappings'"
        );
    }

    /// After every mapping is dropped: nothing left anywhere.
    fn assert_nothing_left(&self) {
        assert_eq!(self.neg.registry().len(), 0, "registry entries left");
        assert_eq!(self.neg.registry().invalidations_running(), 0);
        assert_eq!(self.gpu.grants(), 0, "GPU grants leaked");
        assert_eq!(self.platform.test_host().grants(), 0, "host grants leaked");
        assert_eq!(
            (self.domain.mapped_pages(), self.domain.live_iovas()),
            (0, 0),
            "IOMMU mappings leaked"
        );
        assert!(self.recorder.live().is_empty(), "observer: live at the end");
    }

    /// The observer saw, per mapping id, `Established` before any `TornDown`, the two
    /// alternating, and (everything being dropped) ending torn down. Returns the ids seen.
    fn assert_observer_order(&self) -> Vec<u64> {
        let mut per_id: BTreeMap<u64, Vec<Seen>> = BTreeMap::new();
        for (id, seen) in self.recorder.events() {
            per_id.entry(id).or_default().push(seen);
        }
        for (id, seen) in &per_id {
            for (i, s) in seen.iter().enumerate() {
                let want_established = i % 2 == 0;
                assert_eq!(
                    matches!(s, Seen::Established),
                    want_established,
                    "mapping {id}: the observer saw {seen:?}"
                );
            }
            assert!(
                seen.len() % 2 == 0,
                "mapping {id} was never torn down: {seen:?}"
            );
        }
        per_id.into_keys().collect()
    }
}

/// Runs a model with a preemption bound of 3 (`LOOM_MAX_PREEMPTIONS` overrides it). With
/// `LOOM_LOG` set, runs it through `loom::model` instead, which prints every operation of every
/// interleaving (set `LOOM_MAX_PREEMPTIONS` too, or the search is unbounded).
fn check(f: impl Fn() + Sync + Send + 'static) {
    if std::env::var_os("LOOM_LOG").is_some() {
        return loom::model(f);
    }
    let mut b = loom::model::Builder::new();
    b.preemption_bound = b.preemption_bound.or(Some(3));
    b.check(f);
}

/// Model 1: an establish (`map`) races a move of its range. Whatever the plan the mapping is
/// published with — including one negotiated before the entry was registered — it must be for
/// where the memory is when it is published.
#[test]
fn establish_vs_move() {
    check(|| {
        let rig = Arc::new(Rig::new());
        let r = range(1, 1);
        let mapper = {
            let rig = rig.clone();
            thread::spawn(move || rig.map(r))
        };
        rig.move_to_host(range(0, 4));
        let m = mapper
            .join()
            .expect("no panic")
            .expect("a map that races one move succeeds");
        if m.is_live() {
            rig.assert_points_at_now(&m);
        }
        rig.assert_domain_matches(&[&m]);
        drop(m);
        rig.assert_observer_order();
        rig.assert_nothing_left();
    });
}

/// Model 2: a re-fault of an invalidated mapping races another move.
#[test]
fn refault_vs_move() {
    check(|| {
        let rig = Arc::new(Rig::new());
        let r = range(1, 1);
        let m = rig.map(r).expect("maps");
        // Invalidated in place (the "move" here moved nothing): the mapping may re-fault.
        rig.neg
            .invalidate(rig.exporter.id(), r, InvalidationKind::Move)
            .expect("invalidates");
        assert!(!m.is_live());
        let refaulter = {
            let rig = rig.clone();
            thread::spawn(move || {
                let plan = rig.neg.refault(&m, &Policy::default());
                (m, plan)
            })
        };
        rig.move_to_host(r);
        let (m, plan) = refaulter.join().expect("no panic");
        let plan = plan.expect("a re-fault that races one move succeeds");
        if m.is_live() {
            assert_eq!(
                plan.residency,
                rig.exporter.info().residency,
                "live with a plan for where the memory was"
            );
            rig.assert_points_at_now(&m);
        }
        rig.assert_domain_matches(&[&m]);
        drop(m);
        rig.assert_observer_order();
        rig.assert_nothing_left();
    });
}

/// Model 3: dropping a live mapping, then mapping and dropping another, races an invalidation.
#[test]
fn drop_vs_invalidate() {
    check(|| {
        let rig = Arc::new(Rig::new());
        let r = range(1, 1);
        let first = rig.map(r).expect("maps");
        let first_id = first.id();
        let dropper = {
            let rig = rig.clone();
            thread::spawn(move || {
                drop(first);
                let second = rig.map(r).expect("maps");
                let id = second.id();
                drop(second);
                id
            })
        };
        rig.move_to_host(r);
        let second_id = dropper.join().expect("no panic");
        let ids = rig.assert_observer_order();
        // Both were established at least once (the second may have been invalidated, but an
        // establish that raced the move retried and published).
        assert_eq!(
            ids,
            vec![first_id, second_id],
            "{:?}",
            rig.recorder.events()
        );
        rig.assert_nothing_left();
    });
}

/// Model 4: two overlapping invalidations, the first ending before the memory moves under the
/// second, race an establish (of a plan made before either began).
///
/// It uses `establish` with a plan made before the threads, not `map`, so that what it checks
/// is the sequence alone: an establish that (correctly) waits for both invalidations finds the
/// memory moved and fails with `StalePlan`; one that publishes between the two ends publishes
/// the old place.
#[test]
fn overlapping_invalidations_vs_establish() {
    check(|| {
        let rig = Arc::new(Rig::new());
        let r = range(1, 1);
        let plan = rig
            .neg
            .negotiate(&*rig.exporter, &*rig.importer, RW, &Policy::default())
            .expect("plans");
        let first = rig
            .neg
            .begin_invalidation(rig.exporter.id(), range(0, 2), InvalidationKind::Move)
            .expect("begins");
        let establisher = {
            let rig = rig.clone();
            thread::spawn(move || {
                rig.neg
                    .establish(&plan, &rig.exporter, &rig.importer, r)
                    .ok()
            })
        };
        let second = rig
            .neg
            .begin_invalidation(rig.exporter.id(), range(1, 2), InvalidationKind::Move)
            .expect("begins");
        drop(first);
        rig.assert_nothing_live(r);
        rig.gpu.migrate_to_host();
        drop(second);
        let m = establisher.join().expect("no panic");
        if let Some(m) = &m {
            if m.is_live() {
                rig.assert_points_at_now(m);
            }
            rig.assert_domain_matches(&[m]);
        }
        drop(m);
        rig.assert_observer_order();
        rig.assert_nothing_left();
    });
}

/// Model 5: a pinning `map` of a non-ODP importer races a forced revoke of the whole object
/// (a device reset). The revoke does not wait for the pin: nothing may be live while the memory
/// goes, and since the exporter refuses grants from then on, nothing is live afterwards either.
#[test]
fn forced_revoke_vs_pinned_establish() {
    check(|| {
        let rig = Arc::new(Rig::with(true, ImporterFlags::P2P));
        let r = range(1, 1);
        let mapper = {
            let rig = rig.clone();
            thread::spawn(move || rig.map(r))
        };
        let guard = rig
            .neg
            .begin_forced_revoke(rig.exporter.id(), range(0, 4))
            .expect("a forced revoke is not refused");
        rig.assert_nothing_live(range(0, 4));
        rig.gpu.revoke();
        let report = guard.end();
        assert_eq!(report.unacknowledged, 0, "the test importer always stops");
        match mapper.join().expect("no panic") {
            Ok(m) => {
                assert!(!m.is_live(), "a pinned mapping survived a forced revoke");
                assert!(rig.neg.refault(&m, &Policy::default()).is_err());
                rig.assert_domain_matches(&[&m]);
            }
            Err(e) => assert!(matches!(e, Error::Revoked(_)), "{e}"),
        }
        rig.assert_observer_order();
        rig.assert_nothing_left();
    });
}

/// Model 6: a registry shard hands a removed entry's sequence to a later entry only when no
/// running invalidation holds it (`Inner::remove` checks that the entry and its caller are its
/// only holders). Thread A drops a live mapping of page 1, then maps page 1 again: the new
/// entry may take the dropped one's sequence. The main thread moves pages 0–3 and, while its
/// invalidation is still running, maps page 8, which the move does not cover: that entry may
/// take the dropped sequence too.
///
/// If A drops the first mapping after the move began, the move holds its sequence odd. Were that
/// sequence handed out anyway, a new entry would start odd, held by an invalidation that does
/// not cover it: the mover's set-up of page 8 would wait in `read_begin` for the mover itself
/// (loom reports the endless spin as a model exceeding its maximum number of branches). A's
/// set-up of page 1 taking it would go unnoticed: the move covers page 1, so that set-up waits
/// for the move's end either way. What must hold instead:
///
/// - nothing over pages 0–3 is live while the memory moves (as in model 1), and the mapping of
///   page 8 is set up during the move without waiting for it;
/// - afterwards the new mapping of page 1, if live, points at where the memory is now (it was
///   torn down, or its set-up retried, if it raced the move), and the mapping of page 8 is live
///   and points there too;
/// - the move's report counts only mappings of pages 0–3 (at most one: A never has two at
///   once), and matches the teardowns the observer heard; the mapping of page 8 was never torn
///   down by it;
/// - both new mappings' sequences are even, and stay so, once the move has ended.
///
/// Runs with [`check`]'s default bound like the others; exhaustive with
/// `LOOM_MAX_PREEMPTIONS=100` in about 13 seconds (release build, one core).
#[test]
fn sequence_reuse_vs_invalidation() {
    check(|| {
        let rig = Arc::new(Rig::new());
        let r = range(1, 1);
        let moved = range(0, 4);
        let outside = range(8, 1);
        let first = rig.map(r).expect("maps");
        let first_id = first.id();
        let remapper = {
            let rig = rig.clone();
            thread::spawn(move || {
                drop(first);
                rig.map(r).expect("a map that races one move succeeds")
            })
        };
        let guard = rig
            .neg
            .begin_invalidation(rig.exporter.id(), moved, InvalidationKind::Move)
            .expect("nothing pinned, the importer stops");
        rig.assert_nothing_live(moved);
        rig.gpu.migrate_to_host();
        // Still inside the invalidation: a range it does not cover is set up at once.
        let bystander = rig
            .map(outside)
            .expect("a map of a range no invalidation covers succeeds");
        assert!(
            bystander.is_live(),
            "a mapping no invalidation covers is not live"
        );
        let report = guard.end();
        let second = remapper.join().expect("no panic");
        let (second_id, bystander_id) = (second.id(), bystander.id());
        assert!(
            second_id != first_id && bystander_id != first_id && second_id != bystander_id,
            "ids reused: {first_id} {second_id} {bystander_id}"
        );

        if second.is_live() {
            rig.assert_points_at_now(&second);
        }
        assert!(
            bystander.is_live(),
            "the move tore down a range it does not cover"
        );
        rig.assert_points_at_now(&bystander);
        rig.assert_domain_matches(&[&second, &bystander]);

        let events = rig.recorder.events();
        let invalidated: Vec<u64> = events
            .iter()
            .filter(|(_, s)| {
                *s == Seen::TornDown(TeardownCause::Invalidated(InvalidationKind::Move))
            })
            .map(|&(id, _)| id)
            .collect();
        assert!(
            invalidated
                .iter()
                .all(|&id| id == first_id || id == second_id),
            "the move tore down a mapping outside its range: {events:?}"
        );
        assert!(
            report.mappings <= 1,
            "the move counted {} mappings; at most one of page 1 was ever live at once: {events:?}",
            report.mappings
        );
        assert_eq!(
            report.mappings,
            invalidated.len(),
            "the move's report and the observer disagree: {events:?}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|(id, _)| *id == bystander_id)
                .map(|&(_, s)| s)
                .collect::<Vec<_>>(),
            vec![Seen::Established],
            "the mapping of page 8: {events:?}"
        );

        // Nothing runs any more: every sequence is even and stays so.
        for m in [&second, &bystander] {
            let seq = m.read_begin();
            assert_eq!(seq % 2, 0, "mapping {}: odd sequence {seq}", m.id());
            assert!(!m.read_retry(seq), "mapping {}: the sequence moved", m.id());
        }
        assert_eq!(rig.neg.registry().invalidations_running(), 0);

        drop(second);
        drop(bystander);
        rig.assert_observer_order();
        rig.assert_nothing_left();
    });
}
