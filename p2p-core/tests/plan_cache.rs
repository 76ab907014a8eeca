//! The plan cache from several threads at once: each keeps a memo of its own and counts its
//! hits in a counter of its own, in front of one shared map. After the threads join, the
//! counters add up to the calls made, the shared map holds one plan per key, and every thread
//! got the plan a cold negotiation gives.

use p2p_core::prelude::*;
use p2p_core::testing::*;
use p2p_core::topology::presets;
use std::sync::Arc;

const THREADS: usize = 4;
const CALLS: usize = 2_000;

#[test]
fn threads_sharing_a_plan_cache_agree_with_a_cold_negotiation() {
    let topo = presets::acs_switch().unwrap();
    let neg = Arc::new(Negotiator::new(Arc::new(TestPlatform::new(
        topo.clone(),
        DomainKind::Translated,
    ))));
    let exporters: Vec<Arc<TestExporter>> = ["0000:03:00.0", "0000:04:00.0"]
        .iter()
        .map(|d| {
            let e = TestExporter::new(&topo, d.parse().unwrap(), 1 << 20, 64, MemoryKind::MOVABLE);
            Arc::new(e.unwrap())
        })
        .collect();
    let caps = ImporterCaps {
        flags: ImporterFlags::ODP | ImporterFlags::P2P,
        dma_mask: dma_mask(64),
        max_segment: 0,
    };
    let importer = Arc::new(TestImporter::new("0000:05:00.0".parse().unwrap(), caps));
    let rw = Access::READ | Access::WRITE;
    let want: Vec<Plan> = exporters
        .iter()
        .map(|e| {
            neg.negotiate_uncached(&**e, &*importer, rw, &Policy::default())
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (neg, exporters, importer, want) = (
                neg.clone(),
                exporters.clone(),
                importer.clone(),
                want.clone(),
            );
            std::thread::spawn(move || {
                for i in 0..CALLS {
                    let k = (i + t) % exporters.len();
                    let p = neg
                        .negotiate(&*exporters[k], &*importer, rw, &Policy::default())
                        .unwrap();
                    assert_eq!(p, want[k], "thread {t} call {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = neg.cache_stats();
    assert_eq!(s.hits + s.misses, (THREADS * CALLS) as u64, "{s:?}");
    assert_eq!(s.entries, exporters.len(), "{s:?}");
    assert!(
        s.misses >= exporters.len() as u64 && s.misses <= (THREADS * exporters.len()) as u64,
        "{s:?}"
    );
}

/// Threads that come and go (a server that makes a thread per request): every hit is counted,
/// including those of threads that have exited, across waves of short-lived threads.
#[test]
fn hits_of_exited_threads_still_count() {
    let topo = presets::acs_switch().unwrap();
    let neg = Arc::new(Negotiator::new(Arc::new(TestPlatform::new(
        topo.clone(),
        DomainKind::Translated,
    ))));
    let gpu = TestExporter::new(
        &topo,
        "0000:03:00.0".parse().unwrap(),
        1 << 20,
        64,
        MemoryKind::MOVABLE,
    );
    let gpu = Arc::new(gpu.unwrap());
    let nic = Arc::new(TestImporter::new(
        "0000:05:00.0".parse().unwrap(),
        ImporterCaps::default(),
    ));
    const WAVES: usize = 25;
    const PER_THREAD: usize = 7;
    for wave in 0..WAVES {
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (neg, gpu, nic) = (neg.clone(), gpu.clone(), nic.clone());
                std::thread::spawn(move || {
                    for _ in 0..PER_THREAD {
                        neg.negotiate(&*gpu, &*nic, Access::READ, &Policy::default())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = neg.cache_stats();
        assert_eq!(
            s.hits + s.misses,
            ((wave + 1) * 2 * PER_THREAD) as u64,
            "wave {wave}: {s:?}"
        );
    }
}
