//! The registry's exporter index against a model: after any sequence of set-ups and drops over
//! many exporters (more than there are shards, so some share one), `Registry::overlapping`
//! finds exactly the live mappings of the exporter that overlap the range, in order of range
//! start then id.

use p2p_core::prelude::*;
use p2p_core::testing::*;
use p2p_core::topology::presets;
use proptest::prelude::{prop_assert_eq, proptest, ProptestConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

/// More exporters than the registry has shards.
const EXPORTERS: usize = 17;
const PAGES: u64 = 32;

fn range(first: u64, pages: u64) -> AddrRange<Offset> {
    AddrRange::new(Offset(first * 4096), pages * 4096).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Each step maps `pages` pages at `first` of exporter `which`, or drops the mapping at
    /// `pick` (modulo the live ones); then every exporter is searched for a random range.
    #[test]
    fn overlapping_matches_a_model(
        steps in proptest::collection::vec(
            (0..EXPORTERS, 0..PAGES, 1..4u64, proptest::bool::ANY, 0..64usize),
            1..60,
        ),
        query in (0..PAGES, 1..8u64),
    ) {
        let topo = presets::workstation().unwrap();
        let gpus: Vec<Arc<TestExporter>> = (0..EXPORTERS)
            .map(|_| {
                let gpu = "0000:03:00.0".parse().unwrap();
                Arc::new(TestExporter::new(&topo, gpu, PAGES * 4096 + (8 << 12), 256, MemoryKind::FIXED).unwrap())
            })
            .collect();
        let nic = Arc::new(TestImporter::new(
            "0000:05:00.0".parse().unwrap(),
            ImporterCaps { flags: ImporterFlags::P2P, ..ImporterCaps::default() },
        ));
        let neg = Negotiator::new(Arc::new(TestPlatform::new(topo, DomainKind::Translated)));
        // id -> (exporter index, range, handle)
        let mut live: BTreeMap<u64, (usize, AddrRange<Offset>, Mapping)> = BTreeMap::new();
        for (which, first, pages, drop_one, pick) in steps {
            if drop_one && !live.is_empty() {
                let id = *live.keys().nth(pick % live.len()).unwrap();
                live.remove(&id);
            } else {
                let r = range(first, pages);
                let m = neg.map(&gpus[which], &nic, r, Access::READ, &Policy::default()).unwrap();
                live.insert(m.id(), (which, r, m));
            }
        }
        let q = range(query.0, query.1);
        for (which, gpu) in gpus.iter().enumerate() {
            let mut want: Vec<(Offset, u64)> = live
                .iter()
                .filter(|(_, (w, r, _))| *w == which && r.overlaps(&q))
                .map(|(&id, (_, r, _))| (r.start(), id))
                .collect();
            want.sort();
            let got: Vec<(Offset, u64)> = neg
                .registry()
                .overlapping(gpu.id(), q)
                .into_iter()
                .map(|m| (m.range.start(), m.id))
                .collect();
            prop_assert_eq!(got, want, "exporter {}", which);
        }
        prop_assert_eq!(neg.registry().len(), live.len());
    }
}
