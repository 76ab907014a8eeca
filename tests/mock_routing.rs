//! One test per routing rule of the simulated PCIe fabric.

mod common;

use backend_mock::{DmaFault, Machine, MockConfig, Target, Via};
use common::*;
use p2pdma::core::topology::{
    presets, Bar, DeviceClass, HostBridgeAt, HostBridgeP2p, TopologyBuilder,
};
use p2pdma::prelude::*;
use std::sync::Arc;

#[test]
fn a_switch_without_acs_routes_peer_requests_itself() {
    let m = Machine::new(presets::workstation().unwrap(), &MockConfig::new(1)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4096, RW).unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::Direct);
    let addr = map.segments().unwrap()[0].addr;
    let r = m.platform().route(a(NIC), addr.0, true).unwrap();
    assert_eq!(r.via, Via::Switch(a("0000:01:00.0")));
    assert_eq!(
        r.target,
        Target::Bar {
            device: a(GPU),
            phys: p.gpu.phys_of(0).0
        }
    );
    p.nic.dma_write(addr, b"turned around").unwrap();
    assert_eq!(p.gpu.cpu_read(0, 13), b"turned around");
    assert_eq!(
        m.platform().iommu(a(NIC)).unwrap().inner().translations(),
        0,
        "the IOMMU never saw it"
    );
}

#[test]
fn acs_redirect_forces_the_iommu_path() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(2)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4096, RW).unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::ViaIommu);
    let iova = map.segments().unwrap()[0].addr;
    let r = m.platform().route(a(NIC), iova.0, true).unwrap();
    assert_eq!(
        (r.via, r.target),
        (
            Via::HostBridge,
            Target::Bar {
                device: a(GPU),
                phys: p.gpu.phys_of(0).0
            }
        )
    );
    p.nic.dma_write(iova, b"up and back").unwrap();
    assert_eq!(p.gpu.cpu_read(0, 11), b"up and back");
    // The GPU's own bus address no longer works: the request goes up, and the IOMMU has no
    // translation for it.
    let bar_bus = p.gpu.info().bus_window.start().0;
    let err = p.nic.dma_write(DmaAddr(bar_bus), b"x").unwrap_err();
    assert!(matches!(err, DmaFault::IommuFault { .. }), "{err}");
    drop(map);
    m.finish();
}

/// A NIC and a GPU on one switch with ACS off; the GPU's BAR sits just below 4 GiB, where a
/// 32-bit device's top-down IOVAs start.
fn colliding(reserve: bool) -> (Machine, Arc<backend_mock::MockNic>) {
    let mut b = TopologyBuilder::new();
    let hb = b
        .host_bridge("pci0000:00", HostBridgeAt::new(HostBridgeP2p::None))
        .unwrap();
    let rp = b.root_port(hb, a("00:01.0")).unwrap();
    let sw = b.switch(rp, a("01:00.0")).unwrap();
    let d0 = b.downstream_port(sw, a("02:00.0")).unwrap();
    let d1 = b.downstream_port(sw, a("02:01.0")).unwrap();
    b.endpoint(d0, a(NIC), DeviceClass::Nic, vec![]).unwrap();
    b.endpoint(
        d1,
        a(GPU),
        DeviceClass::Gpu,
        vec![Bar::identity(0, 0xf000_0000, 0x1000_0000)],
    )
    .unwrap();
    let config = MockConfig {
        ram_bytes: 2 << 30,
        reserve_pci_windows: reserve,
        ..collect(3)
    };
    let m = Machine::new(b.build().unwrap(), &config).unwrap();
    let nic = m.nic(a(NIC), caps(ImporterFlags::P2P, 32)).unwrap();
    (m, nic)
}

fn map_host_page(m: &Machine, nic: &Arc<backend_mock::MockNic>) -> (Mapping, DmaAddr) {
    let host = m.platform().host_memory();
    let imp: Arc<dyn DmaImporter> = nic.clone();
    let map = m
        .negotiator()
        .map(&host, &imp, range(0x10_0000, 4096), RW, &Policy::default())
        .unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::ViaIommu);
    let addr = map.segments().unwrap()[0].addr;
    (map, addr)
}

#[test]
fn an_iova_that_collides_with_a_peer_bar_is_misrouted_unless_reserved() {
    let (m, nic) = colliding(false);
    let (map, iova) = map_host_page(&m, &nic);
    assert!(
        (0xf000_0000..0x1_0000_0000).contains(&iova.0),
        "top-down IOVA {iova} lands in the BAR"
    );
    let r = m.platform().route(a(NIC), iova.0, true).unwrap();
    assert_eq!(
        r.via,
        Via::Switch(a("01:00.0")),
        "the switch claims it for the peer"
    );
    nic.dma_write(iova, b"misrouted").unwrap();
    assert_ne!(
        m.platform().memory().read(0x10_0000, 9),
        b"misrouted",
        "RAM never saw the write"
    );
    assert_eq!(
        m.platform().memory().read(iova.0, 9),
        b"misrouted",
        "the peer's BAR did"
    );
    drop(map);

    let (m, nic) = colliding(true);
    let (map, iova) = map_host_page(&m, &nic);
    assert!(
        iova.0 + 4096 <= 0xf000_0000,
        "the window is reserved: {iova}"
    );
    let r = m.platform().route(a(NIC), iova.0, true).unwrap();
    assert_eq!((r.via, r.target), (Via::HostBridge, Target::Ram(0x10_0000)));
    nic.dma_write(iova, b"to RAM").unwrap();
    assert_eq!(m.platform().memory().read(0x10_0000, 6), b"to RAM");
    drop(map);
}

#[test]
fn a_host_bridge_off_the_allow_list_rejects_peer_traffic_and_touches_nothing() {
    let config = MockConfig {
        domain_kind: DomainKind::Identity,
        ..collect(4)
    };
    let m = Machine::new(presets::workstation().unwrap(), &config).unwrap();
    let gpu = m.gpu(a(GPU), 4096, 16, MemoryKind::FIXED).unwrap();
    gpu.cpu_write(0, b"untouched");
    let far = m
        .nic(a("0000:10:00.0"), caps(ImporterFlags::P2P, 64))
        .unwrap();
    let exp: Arc<dyn MemoryExporter> = gpu.clone();
    let imp: Arc<dyn DmaImporter> = far.clone();
    let err = m
        .negotiator()
        .map(&exp, &imp, range(0, 4096), RW, &Policy::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                refusal: Reason::RouteUnsupported(_),
                ..
            }
        ),
        "{err}"
    );
    // A driver that programs the bus address anyway gets an unsupported request.
    let err = far
        .dma_write(DmaAddr(gpu.info().bus_window.start().0), b"smash")
        .unwrap_err();
    assert!(matches!(err, DmaFault::UnsupportedRequest { .. }), "{err}");
    assert_eq!(gpu.cpu_read(0, 9), b"untouched");
    assert!(m.platform().log().render().contains("unsupported request"));
    let findings = m.finish();
    assert_eq!(
        findings.len(),
        1,
        "the sanitizer saw a DMA outside any mapping: {findings:?}"
    );
}

#[test]
fn a_blocked_domain_faults_every_request() {
    let config = MockConfig {
        domain_kind: DomainKind::Blocked,
        ..collect(5)
    };
    let m = Machine::new(presets::workstation().unwrap(), &config).unwrap();
    let nic = m.nic(a(NIC), odp()).unwrap();
    let err = nic.dma_read(DmaAddr(0x10_0000), 16).unwrap_err();
    assert!(matches!(err, DmaFault::IommuFault { reason, .. } if reason.contains("blocks")));
}

#[test]
fn an_unmapped_iova_is_a_remapping_fault_and_a_partial_request_moves_nothing() {
    let m = Machine::new(presets::acs_switch().unwrap(), &collect(6)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4096, RW).unwrap();
    let iova = map.segments().unwrap()[0].addr;
    // Two pages: the first is mapped, the second is not. Nothing may land.
    let err = p.nic.dma_write(iova, &[0xaa; 8192]).unwrap_err();
    assert!(matches!(err, DmaFault::IommuFault { .. }), "{err}");
    assert_eq!(p.gpu.cpu_read(0, 4), [0, 0, 0, 0]);
    drop(map);
}

#[test]
fn a_bridge_known_only_as_a_bridge_forwards_between_its_devices() {
    // A conventional PCI bridge below a root port, with a NIC and a GPU behind it (as a
    // PCIe-to-PCI bridge found in sysfs, or an NCCL file's switch, is modelled).
    let mut b = TopologyBuilder::new();
    let hb = b
        .host_bridge("pci0000:00", HostBridgeAt::new(HostBridgeP2p::None))
        .unwrap();
    let rp = b.root_port(hb, a("00:01.0")).unwrap();
    let br = b.bridge(rp, a("01:00.0")).unwrap();
    b.endpoint(br, a(NIC), DeviceClass::Nic, vec![]).unwrap();
    b.endpoint(
        br,
        a(GPU),
        DeviceClass::Gpu,
        vec![Bar::identity(0, 0x40_0000_0000, 1 << 24)],
    )
    .unwrap();
    let m = Machine::new(b.build().unwrap(), &MockConfig::new(9)).unwrap();
    let p = pair(&m, 4, odp());
    let map = p.map(&m, 0, 4096, RW).unwrap();
    assert_eq!(map.strategy().unwrap(), Strategy::Direct);
    let addr = map.segments().unwrap()[0].addr;
    let r = m.platform().route(a(NIC), addr.0, true).unwrap();
    assert_eq!(r.via, Via::Switch(a("01:00.0")));
    p.nic.dma_write(addr, b"across the bridge").unwrap();
    assert_eq!(p.gpu.cpu_read(0, 17), b"across the bridge");
    drop(map);
    m.finish();
}
