//! Same seed, same run: two runs with one seed give identical event logs, byte for byte.

mod common;

use backend_mock::{FaultPoint, Machine};
use common::*;
use p2pdma::core::rand::SplitMix64;
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;
use std::sync::Arc;

/// A seeded workload with every fault point armed (5 %, revokes 0.2 %): maps, DMAs, migrations, drops.
fn workload(seed: u64) -> String {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(seed)).unwrap();
    for p in FaultPoint::ALL {
        // A revoke is for good: rarer, or the run ends early.
        let ppm = if p == FaultPoint::ExporterRevoke {
            2_000
        } else {
            50_000
        };
        m.platform().faults().set_rate(p, ppm);
    }
    let mut rng = SplitMix64::new(seed);
    let gpus: Vec<_> = [GPU, GPU1]
        .iter()
        .map(|g| m.gpu(a(g), 64 * 4096, 32, MemoryKind::MOVABLE).unwrap())
        .collect();
    let nic = m.nic(a(NIC), odp()).unwrap();
    let imp: Arc<dyn DmaImporter> = nic.clone();
    let mut maps: Vec<Mapping> = Vec::new();
    for _ in 0..200 {
        match rng.below(6) {
            0 | 1 => {
                let g = &gpus[rng.below(2) as usize];
                let exp: Arc<dyn MemoryExporter> = g.clone();
                let (page, pages) = (rng.below(60), 1 + rng.below(4));
                if let Ok(mm) = m.negotiator().map(
                    &exp,
                    &imp,
                    range(page * 4096, pages * 4096),
                    RW,
                    &Policy::default(),
                ) {
                    maps.push(mm);
                }
            }
            2 if !maps.is_empty() => {
                let mm = &maps[rng.below(maps.len() as u64) as usize];
                if let Ok(segs) = mm.segments() {
                    let _ = nic.dma_write(segs[0].addr, &rng.next_u64().to_le_bytes());
                }
            }
            3 => {
                let _ = m.migrate(&gpus[rng.below(2) as usize]);
            }
            4 if !maps.is_empty() => {
                let i = rng.below(maps.len() as u64) as usize;
                let _ = m.negotiator().refault(&maps[i], &Policy::default());
            }
            _ if !maps.is_empty() => {
                let i = rng.below(maps.len() as u64) as usize;
                maps.swap_remove(i);
            }
            _ => {}
        }
    }
    drop(maps);
    let log = m.platform().log().render();
    let findings = m.finish();
    assert!(
        findings.is_empty(),
        "seed {seed}: legal workload produced findings: {findings:?}"
    );
    log
}

#[test]
fn two_runs_with_one_seed_log_the_same_events() {
    for seed in [1u64, 2, 3, 0xdead_beef] {
        let (x, y) = (workload(seed), workload(seed));
        assert!(
            x.lines().count() > 100,
            "seed {seed}: the workload did little"
        );
        assert!(x.contains("injected fault"), "seed {seed}: no fault fired");
        assert_eq!(x, y, "seed {seed}: the logs differ");
    }
    assert_ne!(
        workload(1),
        workload(2),
        "different seeds should give different runs"
    );
}

#[test]
fn the_seed_story_is_deterministic() {
    let run = |seed| backend_mock::story::run(seed, &mut |_| {}).unwrap();
    let (a, b) = (run(9), run(9));
    assert_eq!(a, b);
    assert_eq!(a.findings, 0);
}
