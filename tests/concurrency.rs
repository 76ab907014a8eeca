//! The core promise under concurrency, on the simulated machine: mappings made, re-faulted and
//! dropped by several threads while another migrates or invalidates the memory. After the threads
//! join, a model check: every mapping that says it is live reaches the memory where it is now, and
//! the sanitizer saw every set-up before its teardown.
//!
//! Each test runs many machines (seeded, the seed in every assertion) within a time bound, so a
//! race that needs a rare interleaving gets many chances without making the suite slow. Set
//! `P2PDMA_SOAK_SECS` for a longer soak.

mod common;

use backend_mock::{Machine, MockConfig};
use common::*;
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long each race test keeps starting new machines.
fn budget() -> Duration {
    let secs = std::env::var("P2PDMA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    Duration::from_secs(secs)
}

/// Runs `round(seed)` on fresh seeds until the budget is spent (at least `min` rounds).
fn rounds(min: u64, mut round: impl FnMut(u64)) -> u64 {
    let start = Instant::now();
    let mut seed = 0;
    while seed < min || start.elapsed() < budget() {
        round(seed);
        seed += 1;
    }
    seed
}

const PAGES: u64 = 64;
const RANGE_PAGES: u64 = 16;

/// The offset of range `i` of a thread: ranges of different threads overlap.
fn offset(thread: u64, i: u64) -> u64 {
    ((thread * 7 + i * 5) % (PAGES - RANGE_PAGES)) * 4096
}

/// Three threads map 16-page ranges of a movable GPU through an ODP NIC while the main thread
/// migrates it; afterwards every live mapping must reach host RAM, where the memory now is.
#[test]
fn a_mapping_made_during_a_migration_points_where_the_memory_is_now() {
    let n = rounds(100, |seed| {
        let m = Machine::new(presets::acs_switch().unwrap(), &MockConfig::new(seed)).unwrap();
        let p = Arc::new(pair(&m, PAGES, odp()));
        let m = Arc::new(m);
        let go = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|t| {
                let (m, p, go) = (m.clone(), p.clone(), go.clone());
                std::thread::spawn(move || {
                    while !go.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    (0..12)
                        .filter_map(|i| {
                            let off = offset(t, i);
                            p.map(&m, off, RANGE_PAGES * 4096, RW)
                                .ok()
                                .map(|map| (off, map))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        go.store(true, Ordering::Release);
        m.migrate(&p.gpu).unwrap();
        let maps: Vec<_> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        assert!(p.gpu.in_host_ram(), "seed {seed}");
        // The CPU writes a pattern where the memory is now; every live mapping must read it.
        let pattern: Vec<u8> = (0..PAGES * 4096).map(|i| (i % 251) as u8).collect();
        p.gpu.cpu_write(0, &pattern);
        for (off, map) in &maps {
            if !map.is_live() {
                continue;
            }
            let seg = &map.segments().unwrap()[0];
            let got = p.nic.dma_read(seg.addr, 64).unwrap();
            let want = &pattern[*off as usize..*off as usize + 64];
            assert_eq!(
                got,
                want,
                "seed {seed}: live mapping {} at {off:#x} ({}) reads stale memory",
                map.id(),
                map.strategy().unwrap()
            );
        }
        drop(maps);
        let m = Arc::into_inner(m).unwrap();
        let findings = m.finish();
        assert!(findings.is_empty(), "seed {seed}: {findings:?}");
    });
    eprintln!("{n} machines");
}

/// Four threads map, re-fault and drop while another invalidates (`Move`) over and over; then
/// the registry, grants and IOVAs are empty and the sanitizer must report nothing: every
/// teardown it saw came after the set-up it undoes.
#[test]
fn the_sanitizer_sees_every_mapping_event_in_registry_order() {
    let n = rounds(50, |seed| {
        let m = Machine::new(presets::acs_switch().unwrap(), &collect(seed)).unwrap();
        let p = Arc::new(pair(&m, PAGES, odp()));
        let m = Arc::new(m);
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (m, p) = (m.clone(), p.clone());
                std::thread::spawn(move || {
                    for i in 0..16 {
                        let Ok(map) = p.map(&m, offset(t, i), RANGE_PAGES * 4096, RW) else {
                            continue;
                        };
                        if !map.is_live() {
                            let _ = m.negotiator().refault(&map, &Policy::default());
                        }
                    }
                })
            })
            .collect();
        let invalidator = {
            let (m, p, stop) = (m.clone(), p.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let r = range(0, PAGES * 4096);
                    m.negotiator()
                        .invalidate(p.gpu.id(), r, InvalidationKind::Move)
                        .unwrap();
                }
            })
        };
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Release);
        invalidator.join().unwrap();
        assert!(m.negotiator().registry().is_empty(), "seed {seed}");
        assert_eq!(p.gpu.grants(), 0, "seed {seed}");
        let m = Arc::into_inner(m).unwrap();
        let findings = m.finish();
        assert!(findings.is_empty(), "seed {seed}: {findings:?}");
    });
    eprintln!("{n} machines");
}

/// The conformance stress check on a device's domain as the machine holds it (the fault
/// injector around the sanitizer around the implementation), for the default `SoftIommu` and the
/// reference domain, with the sanitizer watching the map/unmap pairs (no finding allowed).
#[test]
fn the_machines_domains_pass_the_concurrent_stress_check() {
    use backend_mock::DomainChoice;
    use p2pdma::core::conformance::{stress_domain, StressConfig};
    for choice in [
        DomainChoice::SoftVtd,
        DomainChoice::SoftArm,
        DomainChoice::Reference,
    ] {
        for seed in 0..2 {
            let config = MockConfig {
                domains: choice.clone(),
                ..collect(seed)
            };
            let m = Machine::new(presets::acs_switch().unwrap(), &config).unwrap();
            let d = m.platform().iommu(a(NIC)).unwrap().clone();
            stress_domain(d.clone(), &StressConfig::quick(seed))
                .unwrap_or_else(|e| panic!("{choice:?}: {e}"));
            assert_eq!((d.inner().mapped_pages(), d.inner().live_iovas()), (0, 0));
            let f = m.finish();
            assert!(f.is_empty(), "{choice:?} seed {seed}: {f:?}");
        }
    }
}
