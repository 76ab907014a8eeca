//! Fault injection: every injection point hit while registering a 64-segment buffer (GPU pages
//! and host pages interleaved) rolls back completely; a failed invalidation keeps the memory
//! where it is.

mod common;

use backend_mock::{Event, FaultPoint, Machine, MockConfig};
use common::*;
use p2pdma::core::negotiate::{AddressSpace, Backing};
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;

/// 64 pages: even pages are GPU pages (non-adjacent offsets), odd pages host RAM pages
/// (non-adjacent frames), so each page is its own run and its own mapping.
#[derive(Debug)]
struct Interleaved {
    gpu: Arc<dyn MemoryExporter>,
}

impl AddressSpace for Interleaved {
    fn page_size(&self) -> u64 {
        4096
    }
    fn backing(&self, va: VirtAddr) -> Backing {
        let page = va.0 / 4096;
        match page {
            0..=63 if page % 2 == 0 => Backing::Device {
                exporter: self.gpu.clone(),
                offset: Offset(page * 2 * 4096),
            },
            0..=63 => Backing::Host(Offset(0x100_0000 + page * 2 * 4096)),
            _ => Backing::Unmapped,
        }
    }
}

fn leftovers(m: &Machine, gpu: &backend_mock::MockGpu) -> (usize, usize, usize, usize, usize) {
    let dom = m.platform().iommu(a(NIC)).unwrap().inner();
    (
        dom.mapped_pages(),
        dom.live_iovas(),
        gpu.grants(),
        m.platform().host().grants(),
        m.negotiator().registry().len(),
    )
}

#[test]
fn every_injection_point_in_a_64_segment_map_rolls_back_completely() {
    let va = AddrRange::new(VirtAddr(0), 64 * 4096).unwrap();
    let mut fired = BTreeSet::new();
    let mut n = 1;
    loop {
        let m = Machine::new(presets::acs_switch().unwrap(), &collect(n)).unwrap();
        let gpu = m.gpu(a(GPU), 1 << 20, 1024, MemoryKind::MOVABLE).unwrap();
        let space = Interleaved { gpu: gpu.clone() };
        let nic: Arc<dyn DmaImporter> = m.nic(a(NIC), odp()).unwrap();
        m.platform().faults().fail_nth(n);
        let result = m
            .negotiator()
            .register(&space, va, &nic, RW, &Policy::default());
        let injected: Vec<FaultPoint> = m
            .platform()
            .log()
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Fault { point, .. } => Some(point),
                _ => None,
            })
            .collect();
        match result {
            Ok(reg) => {
                assert!(
                    injected.is_empty(),
                    "check {n}: an injected fault {injected:?} went unnoticed"
                );
                assert_eq!(reg.mappings().len(), 64);
                assert_eq!(reg.segments(0).unwrap().len(), 64);
                break;
            }
            Err(e) => {
                assert_eq!(injected.len(), 1, "check {n}: {e}");
                fired.insert(injected[0]);
                assert_eq!(
                    leftovers(&m, &gpu),
                    (0, 0, 0, 0, 0),
                    "check {n} ({:?}: {e}) left state behind",
                    injected[0]
                );
            }
        }
        assert!(
            m.finish().is_empty(),
            "check {n}: sanitizer findings on a rolled-back map"
        );
        n += 1;
        assert!(n < 10_000, "registration never succeeded");
    }
    for point in [
        FaultPoint::BarWindow,
        FaultPoint::PageTableAlloc,
        FaultPoint::ExporterRevoke,
    ] {
        assert!(
            fired.contains(&point),
            "{point:?} was never injected: {fired:?}"
        );
    }
    assert!(n > 128, "expected checks for every page: {n}");
}

#[test]
fn a_flush_timeout_during_teardown_still_gives_everything_back() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(40)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4 * 4096, RW).unwrap();
    m.platform()
        .faults()
        .set_rate(FaultPoint::FlushTimeout, 1_000_000);
    drop(map);
    m.platform().faults().clear();
    let dom = m.platform().iommu(a(NIC)).unwrap().clone();
    assert_eq!(
        leftovers(&m, &p.gpu),
        (0, 1, 0, 0, 0),
        "the IOVA waits for a flush that succeeds\n{}",
        m.platform().log().render()
    );
    dom.flush().unwrap();
    assert_eq!(leftovers(&m, &p.gpu), (0, 0, 0, 0, 0));
}

#[test]
fn an_importer_that_cannot_stop_blocks_the_migration() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(41)).unwrap();
    let p = pair(&m, 4, odp());
    p.gpu.cpu_write(0, b"stays");
    let map = p.map(&m, 0, 4096, RW).unwrap();
    m.platform()
        .faults()
        .set_rate(FaultPoint::ImporterInvalidate, 1_000_000);
    let err = m.migrate(&p.gpu).unwrap_err();
    assert!(matches!(err, Error::InvalidateFailed { .. }), "{err}");
    assert!(!p.gpu.in_host_ram(), "the memory did not move");
    assert!(map.is_live());
    m.platform().faults().clear();
    p.nic
        .dma_write(map.segments().unwrap()[0].addr, b"still")
        .unwrap();
    assert_eq!(p.gpu.cpu_read(0, 5), b"still");
    m.migrate(&p.gpu).unwrap();
    assert!(p.gpu.in_host_ram() && !map.is_live());
    drop(map);
    assert!(m.finish().is_empty());
}

#[test]
fn a_window_that_fills_fails_cleanly_and_recovers() {
    let m = Machine::new(presets::workstation().unwrap(), &MockConfig::new(42)).unwrap();
    let gpu = m.gpu(a(GPU), 64 * 4096, 16, MemoryKind::MOVABLE).unwrap();
    let nic = m.nic(a(NIC), odp()).unwrap();
    let (exp, imp): (Arc<dyn MemoryExporter>, Arc<dyn DmaImporter>) = (gpu.clone(), nic);
    let p = Policy::default();
    let first = m
        .negotiator()
        .map(&exp, &imp, range(0, 12 * 4096), RW, &p)
        .unwrap();
    let err = m
        .negotiator()
        .map(&exp, &imp, range(12 * 4096, 8 * 4096), RW, &p)
        .unwrap_err();
    assert!(
        matches!(err, Error::WindowFull { available, .. } if available == 4 * 4096),
        "{err}"
    );
    drop(first);
    let second = m
        .negotiator()
        .map(&exp, &imp, range(12 * 4096, 16 * 4096), RW, &p)
        .unwrap();
    drop(second);
    assert!(m.finish().is_empty());
}
