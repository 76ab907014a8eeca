//! The registry's own tests: mapping ids across threads and registries, and the shard's
//! exporter index against a model.

use super::*;
use crate::negotiate::importers::Lend;
use std::collections::HashSet;

/// A building entry of `range` for `exporter` and `importer`, the importer held in `inner`'s
/// table as a set-up holds it.
fn building(
    inner: &mut Inner,
    id: u64,
    (exporter, importer): (&Arc<dyn MemoryExporter>, &Arc<dyn DmaImporter>),
    range: AddrRange<Offset>,
) -> Entry {
    let share = || importer.clone();
    let lent = Lend {
        importer: &**importer,
        share: &share,
    };
    let slot = inner.importers.hold(&lent);
    Entry::building(
        id,
        (exporter.clone(), exporter.id()),
        (slot, importer.device()),
        range,
        crate::Access::READ,
        Arc::default(),
    )
}

/// Several threads take ids from two registries, interleaved (so each thread's block cache
/// keeps switching registry): after join, every id is unique in its registry, and each
/// thread saw its ids of one registry increase.
#[test]
fn ids_are_unique_per_registry_across_threads_and_registries() {
    for round in 0..20 {
        let regs = [Registry::with_observer(None), Registry::with_observer(None)];
        let per_thread: Vec<[Vec<u64>; 2]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let regs = &regs;
                    s.spawn(move || {
                        let mut got = [Vec::new(), Vec::new()];
                        for i in 0..500 {
                            // A pattern that differs per thread: runs on one registry of
                            // 1 to 7 ids, then a switch.
                            let r = ((i / (1 + (i + t) % 7)) + t) % 2;
                            got[r].push(regs[r].next_id());
                        }
                        got
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in 0..2 {
            let mut seen = HashSet::new();
            for (t, got) in per_thread.iter().enumerate() {
                assert!(
                    got[r].windows(2).all(|w| w[0] < w[1]),
                    "round {round} thread {t} registry {r}: ids not increasing"
                );
                for &id in &got[r] {
                    assert!(id > 0, "round {round}: id 0 handed out");
                    assert!(seen.insert(id), "round {round} registry {r}: id {id} twice");
                }
            }
        }
    }
}

/// Exporters that come and go through one shard: each maps a range and drops it. The
/// index keeps the emptied exporters' keys only up to a bound, and a search still finds
/// exactly the live mappings (one long-lived exporter keeps two throughout).
#[test]
fn emptied_exporters_are_swept_from_the_index() {
    use crate::testing::{TestHostMemory, TestImporter};
    let importer: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(
        "0000:01:00.0".parse().unwrap(),
        crate::traits::ImporterCaps::default(),
    ));
    let range = |page: u64| AddrRange::new(Offset(page * 4096), 4096).unwrap();
    let mut inner = Inner::default();
    let entry = |inner: &mut Inner, id, exporter: &Arc<dyn MemoryExporter>, page| {
        building(inner, id, (exporter, &importer), range(page))
    };
    let keeper: Arc<dyn MemoryExporter> = Arc::new(TestHostMemory::new(1 << 20, 0));
    let kept = [
        {
            let e = entry(&mut inner, 1, &keeper, 0);
            inner.insert(e)
        }
        .unwrap(),
        {
            let e = entry(&mut inner, 2, &keeper, 3);
            inner.insert(e)
        }
        .unwrap(),
    ];
    for n in 0..500u64 {
        let e: Arc<dyn MemoryExporter> = Arc::new(TestHostMemory::new(1 << 20, 0));
        let built = entry(&mut inner, 10 + n, &e, n % 7);
        let k = inner.insert(built).unwrap();
        assert_eq!(inner.overlapping(e.id(), &range(n % 7)), [k]);
        assert!(inner.remove(k).is_some());
        assert!(inner.overlapping(e.id(), &range(n % 7)).is_empty());
        assert!(
            inner.heads.len() <= 2 * EMPTY_HEADS_KEPT + 2,
            "after {n}: {} heads",
            inner.heads.len()
        );
        let all = AddrRange::new(Offset(0), 1 << 20).unwrap();
        assert_eq!(inner.overlapping(keeper.id(), &all), kept);
    }
    assert_eq!(inner.entries.len(), 2);
}

proptest::proptest! {
    /// Inserts and removes in any order over three exporters (slots reused, heads emptied
    /// and refilled): after every step, each exporter's search finds exactly its entries in
    /// the model, in order of start then id, and `empty_heads` counts the `None` heads.
    #[test]
    fn the_index_matches_a_model(
        ops in proptest::collection::vec(
            (0..3usize, 0..8u64, proptest::bool::ANY, 0..64usize),
            1..120,
        ),
    ) {
        use crate::testing::{TestHostMemory, TestImporter};
        let importer: Arc<dyn DmaImporter> = Arc::new(TestImporter::new(
            "0000:01:00.0".parse().unwrap(),
            crate::traits::ImporterCaps::default(),
        ));
        let exporters: Vec<Arc<dyn MemoryExporter>> = (0..3)
            .map(|_| Arc::new(TestHostMemory::new(1 << 20, 0)) as _)
            .collect();
        let all = AddrRange::new(Offset(0), 1 << 20).unwrap();
        let mut inner = Inner::default();
        let mut model: Vec<(Key, usize, u64)> = Vec::new();
        for (n, (which, page, insert, pick)) in ops.into_iter().enumerate() {
            if insert || model.is_empty() {
                let range = AddrRange::new(Offset(page * 4096), 4096).unwrap();
                let e = building(&mut inner, n as u64 + 1, (&exporters[which], &importer), range);
                model.push((inner.insert(e).unwrap(), which, page));
            } else {
                let (key, _, _) = model.remove(pick % model.len());
                proptest::prop_assert!(inner.remove(key).is_some());
                proptest::prop_assert!(inner.remove(key).is_none(), "removed twice");
            }
            for (i, e) in exporters.iter().enumerate() {
                let mut want: Vec<(u64, Key)> = model
                    .iter()
                    .filter(|m| m.1 == i)
                    .map(|m| (m.2, m.0))
                    .collect();
                want.sort_by_key(|&(page, key)| (page, key.id));
                let want: Vec<Key> = want.into_iter().map(|(_, k)| k).collect();
                proptest::prop_assert_eq!(inner.overlapping(e.id(), &all), want);
            }
            let nones = inner.heads.values().filter(|h| h.is_none()).count();
            proptest::prop_assert_eq!(inner.empty_heads, nones);
            proptest::prop_assert_eq!(inner.entries.len(), model.len());
        }
    }
}

/// One thread on one registry gets 1, 2, 3, ...: the ids a program's event log shows do not
/// depend on the block size.
#[test]
fn one_thread_gets_dense_ids_in_order() {
    let r = Registry::with_observer(None);
    let ids: Vec<u64> = (0..200).map(|_| r.next_id()).collect();
    assert_eq!(ids, (1..=200).collect::<Vec<_>>());
}
