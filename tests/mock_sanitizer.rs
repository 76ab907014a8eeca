//! Each check of the DMA sanitizer, on a seeded illegal sequence.

mod common;

use backend_mock::{DomainChoice, Event, FindingKind, FlushMode, Machine, MockConfig};
use common::*;
use p2pdma::core::topology::presets;
use p2pdma::prelude::*;

fn kinds(m: Machine) -> Vec<FindingKind> {
    m.finish().into_iter().map(|f| f.kind).collect()
}

#[test]
fn legal_sequences_are_clean_even_in_panic_mode() {
    let m = Machine::new(presets::acs_switch().unwrap(), &MockConfig::new(10)).unwrap();
    let p = pair(&m, 8, odp());
    let map = p.map(&m, 0, 8 * 4096, RW).unwrap();
    for s in map.segments().unwrap() {
        p.nic.dma_write(s.addr, &vec![7; s.len as usize]).unwrap();
        assert_eq!(
            p.nic.dma_read(s.addr, s.len as usize).unwrap(),
            vec![7; s.len as usize]
        );
    }
    drop(map);
    assert!(m.finish().is_empty());
}

#[test]
#[should_panic(
    expected = "DMA sanitizer: DMA outside any mapping: device 0000:05:00.0 address 0x12340000"
)]
fn panic_mode_stops_at_the_first_finding() {
    let m = Machine::new(presets::acs_switch().unwrap(), &MockConfig::new(11)).unwrap();
    let nic = m.nic(a(NIC), odp()).unwrap();
    let _ = nic.dma_read(DmaAddr(0x1234_0000), 8);
}

#[test]
fn dma_outside_any_mapping() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(12)).unwrap();
    let nic = m.nic(a(NIC), odp()).unwrap();
    assert!(
        nic.dma_read(DmaAddr(0x1234_0000), 8).is_err(),
        "and the IOMMU faults it"
    );
    let f = m.finish();
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].kind, f[0].device, f[0].addr, f[0].mapping),
        (FindingKind::OutsideMapping, a(NIC), 0x1234_0000, None)
    );
}

#[test]
fn dma_after_unmap_names_the_mapping_and_the_event_that_made_it() {
    let m = Machine::new(presets::workstation().unwrap(), &collect(13)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4096, RW).unwrap();
    let (id, addr) = (map.id(), map.segments().unwrap()[0].addr);
    drop(map);
    // Direct (bus address): the hardware still routes it, so only the sanitizer can tell.
    p.nic.dma_read(addr, 16).unwrap();
    let events = m.platform().log().events();
    let f = m.finish();
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].kind, f[0].mapping, f[0].addr),
        (FindingKind::AfterUnmap, Some(id), addr.0)
    );
    let created = f[0].created_by.unwrap();
    assert!(
        matches!(&events[created], Event::Established { mapping, .. } if *mapping == id),
        "{:?}",
        events[created]
    );
}

#[test]
fn dma_after_revoke() {
    let m = Machine::new(presets::workstation().unwrap(), &collect(14)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4096, RW).unwrap();
    let addr = map.segments().unwrap()[0].addr;
    m.revoke(&p.gpu).unwrap();
    let _ = p.nic.dma_read(addr, 16);
    drop(map);
    assert_eq!(kinds(m), vec![FindingKind::AfterRevoke]);
}

/// A machine built with `config` whose NIC mapped one GPU page, wrote through it (filling the
/// IOTLB) and dropped the mapping: the IOVA it used, which a lazy domain may still translate.
fn unmapped_but_cached(config: &MockConfig) -> (Machine, Pair, DmaAddr) {
    let m = Machine::new(presets::acs_switch().unwrap(), config).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4096, RW).unwrap();
    let iova = map.segments().unwrap()[0].addr;
    p.nic.dma_write(iova, b"first").unwrap(); // fills the IOTLB
    drop(map);
    (m, p, iova)
}

#[test]
fn stale_iotlb_entries_are_usable_until_the_lazy_flush_and_reported() {
    let config = MockConfig {
        flush: FlushMode::Lazy { batch: 256 },
        domains: DomainChoice::Reference,
        ..collect(15)
    };
    let (m, p, iova) = unmapped_but_cached(&config);
    let dom = m.platform().mock_domain(a(NIC)).unwrap().clone();
    assert_eq!(dom.queued_flushes(), 1, "the flush is queued, not done");
    assert_eq!(
        dom.live_iovas(),
        1,
        "and the IOVA is not reusable before it"
    );
    // The hardware still translates through the stale entry: the write lands.
    p.nic.dma_write(iova, b"stale").unwrap();
    assert_eq!(p.gpu.cpu_read(0, 5), b"stale");
    dom.drain_flush_queue();
    assert_eq!(dom.live_iovas(), 0);
    assert!(
        p.nic.dma_write(iova, b"late").is_err(),
        "after the flush the IOMMU faults it"
    );
    let k = kinds(m);
    assert!(
        k.contains(&FindingKind::StaleIotlb) && k.contains(&FindingKind::AfterUnmap),
        "{k:?}"
    );
}

/// The same stale window through the software IOMMU's real IOTLB (lazy flush queue): the
/// sanitizer finds it without knowing which domain it watches.
#[test]
fn stale_iotlb_entries_of_the_software_iommu_are_reported_too() {
    let config = MockConfig {
        flush: FlushMode::Lazy { batch: 256 },
        ..collect(18)
    };
    let (m, p, iova) = unmapped_but_cached(&config);
    p.nic.dma_write(iova, b"stale").unwrap();
    assert_eq!(p.gpu.cpu_read(0, 5), b"stale", "the lazy window is real");
    m.platform().iommu(a(NIC)).unwrap().flush_all().unwrap();
    assert!(p.nic.dma_write(iova, b"late").is_err());
    let k = kinds(m);
    assert!(
        k.contains(&FindingKind::StaleIotlb) && k.contains(&FindingKind::AfterUnmap),
        "{k:?}"
    );
}

#[test]
fn wrong_direction() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(16)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4096, Access::READ).unwrap();
    let iova = map.segments().unwrap()[0].addr;
    assert!(
        p.nic.dma_write(iova, b"no").is_err(),
        "the IOMMU refuses a write to a read-only page"
    );
    drop(map);
    assert_eq!(kinds(m), vec![FindingKind::WrongDirection]);
}

#[test]
fn double_unmap_and_unmap_of_the_wrong_size() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(17)).unwrap();
    let dom = m.platform().iommu(a(NIC)).unwrap().clone();
    dom.map(Iova(0x10_0000), PhysAddr(0x20_0000), 0x2000, RW)
        .unwrap();
    assert_eq!(
        dom.unmap(Iova(0x10_0000), 0x1000).unwrap(),
        0x1000,
        "a wrong-size unmap still unmaps what it covers"
    );
    assert_eq!(dom.unmap(Iova(0x30_0000), 0x1000).unwrap(), 0);
    let f = m.finish();
    assert_eq!(
        f.iter().map(|f| f.kind).collect::<Vec<_>>(),
        vec![FindingKind::WrongUnmapSize, FindingKind::DoubleUnmap]
    );
    assert!(f[0].created_by.is_some(), "names the map it mismatches");
}

#[test]
fn a_mapping_alive_when_the_machine_goes_is_leaked() {
    let m = Machine::new(presets::workstation().unwrap(), &collect(18)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 8192, RW).unwrap();
    let f = m.finish();
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].kind, f[0].mapping, f[0].len),
        (FindingKind::Leaked, Some(map.id()), 8192)
    );
}

#[test]
fn an_address_above_the_dma_mask_never_leaves_the_device() {
    let m = Machine::new(presets::workstation().unwrap(), &collect(19)).unwrap();
    let nic = m.nic(a(NIC), caps(ImporterFlags::P2P, 32)).unwrap();
    let err = nic.dma_write(DmaAddr(0xffff_fff0), &[1; 32]).unwrap_err();
    assert!(
        matches!(err, backend_mock::DmaFault::AboveMask { .. }),
        "{err}"
    );
    assert_eq!(m.platform().memory().read(0xffff_fff0, 16), vec![0; 16]);
    assert_eq!(kinds(m), vec![FindingKind::AboveMask]);
}

/// An exporter whose memory comes in page-sized chunks (as scattered VRAM or host pages do):
/// the GPU's own chunks, split per page.
#[derive(Debug)]
struct PerPage(std::sync::Arc<backend_mock::MockGpu>);

impl MemoryExporter for PerPage {
    fn id(&self) -> ExporterId {
        self.0.id()
    }
    fn info(&self) -> ExporterInfo {
        self.0.info()
    }
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.0.export(range, pin)
    }
    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.0.allocate(len, pin)
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        let mut out = ChunkList::new();
        for c in self.0.chunks(grant)? {
            for p in 0..c.len / 4096 {
                out.push(Chunk {
                    offset: Offset(c.offset.0 + p * 4096),
                    len: 4096,
                    phys: PhysAddr(c.phys.0 + p * 4096),
                    bus: BusAddr(c.bus.0 + p * 4096),
                    mmio: c.mmio,
                    file: None,
                });
            }
        }
        Ok(out)
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.0.release(grant)
    }
}

/// A mapping of an exporter with several chunks is unmapped chunk by chunk, as it was mapped:
/// the sanitizer's unmap checks (dma-debug's `check_unmap`) find nothing.
#[test]
fn a_multi_chunk_mapping_is_unmapped_as_it_was_mapped() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(15)).unwrap();
    let p = pair(&m, 8, odp());
    let exporter: std::sync::Arc<dyn MemoryExporter> = std::sync::Arc::new(PerPage(p.gpu.clone()));
    let map = m
        .negotiator()
        .map(
            &exporter,
            &p.importer,
            range(0, 4 * 4096),
            RW,
            &Policy::default(),
        )
        .unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::ViaIommu);
    let seg = map.segments().unwrap()[0];
    p.nic.dma_write(seg.addr, &[9; 4 * 4096]).unwrap();
    drop(map);
    let f = m.finish();
    assert!(f.is_empty(), "{f:?}");
}
